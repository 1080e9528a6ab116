//! The agent's DNS metrics under Istio's names (pkg/dns/client/monitoring.go), kept as plain
//! atomics and rendered in Prometheus text with pilot-agent's `istio_agent_` prefix for the
//! status server's merged `/stats/prometheus`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Istio's buckets for `dns_upstream_request_duration_seconds`.
const BUCKETS: [f64; 6] = [0.001, 0.005, 0.01, 0.1, 1.0, 5.0];

#[derive(Debug, Default)]
pub struct DnsMetrics {
    /// Every well-formed query received (`dns_requests_total`).
    requests: AtomicU64,
    /// Queries sent upstream, counted once however many nameservers were tried.
    upstream_requests: AtomicU64,
    /// Forwarded queries no nameserver answered (the client got SERVFAIL).
    upstream_failures: AtomicU64,
    /// Per bucket (not cumulative; summed when rendered), then +Inf.
    duration_buckets: [AtomicU64; BUCKETS.len() + 1],
    duration_sum_nanos: AtomicU64,
    duration_count: AtomicU64,
}

impl DnsMetrics {
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
    pub fn upstream_requests(&self) -> u64 {
        self.upstream_requests.load(Ordering::Relaxed)
    }
    pub fn upstream_failures(&self) -> u64 {
        self.upstream_failures.load(Ordering::Relaxed)
    }

    pub(super) fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }
    pub(super) fn count_upstream(&self) {
        self.upstream_requests.fetch_add(1, Ordering::Relaxed);
    }
    pub(super) fn count_failure(&self) {
        self.upstream_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn record_duration(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|le| seconds <= *le)
            .unwrap_or(BUCKETS.len());
        self.duration_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.duration_sum_nanos
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        self.duration_count.fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text exposition (0.0.4) of the four metrics.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        for (name, help, value) in [
            (
                "istio_agent_dns_requests_total",
                "Total number of DNS requests.",
                self.requests(),
            ),
            (
                "istio_agent_dns_upstream_requests_total",
                "Total number of DNS requests forwarded to upstream.",
                self.upstream_requests(),
            ),
            (
                "istio_agent_dns_upstream_failures_total",
                "Total number of DNS failures forwarding to upstream.",
                self.upstream_failures(),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        let name = "istio_agent_dns_upstream_request_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Total time in seconds Istio takes to get DNS response from upstream.\n# TYPE {name} histogram"
        );
        let mut cumulative = 0;
        for (i, le) in BUCKETS.iter().enumerate() {
            cumulative += self.duration_buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        cumulative += self.duration_buckets[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.duration_sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}");
        let count = self.duration_count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_count {count}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let m = DnsMetrics::default();
        m.count_request();
        m.count_request();
        m.count_upstream();
        m.record_duration(Duration::from_millis(3));
        m.record_duration(Duration::from_secs(10));
        let text = m.render_prometheus();
        assert!(
            text.contains("istio_agent_dns_requests_total 2\n"),
            "{text}"
        );
        assert!(text.contains("istio_agent_dns_upstream_requests_total 1\n"));
        assert!(text.contains("istio_agent_dns_upstream_failures_total 0\n"));
        assert!(text.contains("_bucket{le=\"0.001\"} 0\n"));
        assert!(text.contains("_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("_bucket{le=\"5\"} 1\n"));
        assert!(text.contains("_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("_count 2\n"));
    }
}
