//! `/stats` (text, `?format=json|prometheus`, `?filter`, `?usedonly`, `?type`,
//! `?histogram_buckets`) and
//! `/stats/prometheus`.
//! https://www.envoyproxy.io/docs/envoy/latest/operations/admin#get--stats
//!
//! Histograms keep fixed buckets, not Envoy's log-linear ones, so quantiles are interpolated
//! within a bucket, and there is no per-flush interval: the interval value prints as `nan`
//! (text) or `null` (JSON), which is what Envoy prints for an interval with no samples.

use super::histogram_buckets::{self, Buckets};
use super::{respond, text, AdminResponse, Query, JSON, TEXT};
use crate::server::Server;
use crate::stats::{HistogramSnapshot, Metric, DEFAULT_BUCKETS};
use http::StatusCode;
use serde_json::{json, Value};

/// Envoy's supported quantiles, in percent.
const QUANTILES: [f64; 10] = [0.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 100.0];

struct Selection {
    filter: Option<regex::Regex>,
    used_only: bool,
    types: String,
    buckets: Buckets,
}

impl Selection {
    /// The error is the 400 body.
    fn parse(query: &Query) -> Result<Self, String> {
        let filter = match query.get("filter").filter(|f| !f.is_empty()) {
            Some(f) => Some(regex::Regex::new(f).map_err(|e| format!("Invalid re2 regex: {e}"))?),
            None => None,
        };
        Ok(Self {
            filter,
            used_only: query.has("usedonly"),
            types: query.get("type").unwrap_or("All").to_string(),
            buckets: Buckets::Summary,
        })
    }

    fn wants(&self, name: &str, metric: &Metric) -> bool {
        let kind = match metric {
            Metric::Counter(_) => "Counters",
            Metric::Gauge(_) => "Gauges",
            Metric::Histogram(_) => "Histograms",
            Metric::Text(_) => "TextReadouts",
        };
        if self.types != "All" && self.types != kind {
            return false;
        }
        if self.filter.as_ref().is_some_and(|re| !re.is_match(name)) {
            return false;
        }
        !self.used_only || used(metric)
    }
}

/// Envoy's "used": written at least once since start. Counters have no flag here, so a
/// counter counts as used once non-zero (as in `stats::prometheus`).
fn used(metric: &Metric) -> bool {
    match metric {
        Metric::Counter(c) => c.value() > 0,
        Metric::Gauge(g) => g.used(),
        Metric::Histogram(h) => h.snapshot().count > 0,
        Metric::Text(t) => t.used(),
    }
}

pub fn handle(server: &Server, query: &Query) -> AdminResponse {
    let mut selection = match Selection::parse(query) {
        Ok(s) => s,
        Err(message) => return text(StatusCode::BAD_REQUEST, message),
    };
    if query.get("format") != Some("prometheus") {
        selection.buckets = match Buckets::parse(query.get("histogram_buckets")) {
            Ok(b) => b,
            Err(message) => return text(StatusCode::BAD_REQUEST, message),
        };
    }
    let mut texts = Vec::new();
    let mut scalars = Vec::new();
    let mut histograms = Vec::new();
    for (name, metric) in server.stats.snapshot() {
        if !selection.wants(&name, &metric) {
            continue;
        }
        match metric {
            Metric::Counter(c) => scalars.push((name, c.value())),
            Metric::Gauge(g) => scalars.push((name, g.value())),
            Metric::Histogram(h) => histograms.push((name, h.snapshot())),
            Metric::Text(t) => texts.push((name, t.value())),
        }
    }
    match query.get("format").unwrap_or("text") {
        "text" | "" => text(
            StatusCode::OK,
            render_text(&texts, &scalars, &histograms, selection.buckets),
        ),
        "json" => respond(
            StatusCode::OK,
            JSON,
            render_json(&texts, &scalars, &histograms, selection.buckets).to_string(),
        ),
        "prometheus" => prometheus(server, query),
        _ => text(
            StatusCode::BAD_REQUEST,
            "usage: /stats?format=(json|prometheus|text)\n\n",
        ),
    }
}

/// Envoy lists text readouts first (`name: "value"`), then counters and gauges, then
/// histograms.
fn render_text(
    texts: &[(String, String)],
    scalars: &[(String, u64)],
    histograms: &[(String, HistogramSnapshot)],
    buckets: Buckets,
) -> String {
    let mut out = String::new();
    for (name, value) in texts {
        out.push_str(&format!("{name}: \"{}\"\n", value.escape_default()));
    }
    for (name, value) in scalars {
        out.push_str(&format!("{name}: {value}\n"));
    }
    for (name, h) in histograms {
        let values: Vec<String> = QUANTILES
            .iter()
            .map(|q| format!("P{q}(nan,{})", quantile(h, *q / 100.0)))
            .collect();
        if buckets != Buckets::Summary {
            out.push_str(&histogram_buckets::text(
                name,
                h,
                buckets,
                &values.join(" "),
            ));
            continue;
        }
        if h.count == 0 {
            out.push_str(&format!("{name}: No recorded values\n"));
            continue;
        }
        out.push_str(&format!("{name}: {}\n", values.join(" ")));
    }
    out
}

fn render_json(
    texts: &[(String, String)],
    scalars: &[(String, u64)],
    histograms: &[(String, HistogramSnapshot)],
    buckets: Buckets,
) -> Value {
    let mut stats: Vec<Value> = texts
        .iter()
        .map(|(name, value)| json!({"name": name, "value": value}))
        .chain(
            scalars
                .iter()
                .map(|(name, value)| json!({"name": name, "value": value})),
        )
        .collect();
    if !histograms.is_empty() && buckets != Buckets::Summary {
        let quantiles = |h: &HistogramSnapshot| {
            QUANTILES
                .iter()
                .map(|q| (h.count > 0).then(|| quantile(h, *q / 100.0)))
                .collect()
        };
        stats.push(json!({"histograms": histogram_buckets::json(histograms, buckets, &QUANTILES, quantiles)}));
    } else if !histograms.is_empty() {
        let computed: Vec<Value> = histograms
            .iter()
            .map(|(name, h)| {
                let values: Vec<Value> = QUANTILES
                    .iter()
                    .map(|q| {
                        let cumulative = (h.count > 0).then(|| quantile(h, *q / 100.0));
                        json!({"cumulative": cumulative, "interval": null})
                    })
                    .collect();
                json!({"name": name, "values": values})
            })
            .collect();
        stats.push(json!({"histograms": {
            "supported_quantiles": QUANTILES,
            "computed_quantiles": computed,
        }}));
    }
    json!({ "stats": stats })
}

/// The value below which a fraction `q` of samples fall, interpolated linearly inside the
/// bucket that holds it. The overflow bucket reports its lower bound.
fn quantile(h: &HistogramSnapshot, q: f64) -> f64 {
    let target = (q * h.count as f64).max(f64::MIN_POSITIVE);
    let mut lower = 0.0;
    let mut below = 0u64;
    for (bound, cumulative) in DEFAULT_BUCKETS.iter().zip(&h.cumulative) {
        if *cumulative as f64 >= target {
            if bound.is_infinite() {
                return lower;
            }
            let in_bucket = (cumulative - below) as f64;
            let fraction = if in_bucket > 0.0 {
                (target - below as f64) / in_bucket
            } else {
                1.0
            };
            return lower + (bound - lower) * fraction.clamp(0.0, 1.0);
        }
        lower = *bound;
        below = *cumulative;
    }
    lower
}

/// `/stats/prometheus`: names and labels from the tags extracted when each stat was created;
/// `?filter` is matched against Envoy's full stat name, as Envoy does.
pub fn prometheus(server: &Server, query: &Query) -> AdminResponse {
    let selection = match Selection::parse(query) {
        Ok(s) => s,
        Err(message) => return text(StatusCode::BAD_REQUEST, message),
    };
    let options = crate::stats::prometheus::Options {
        used_only: selection.used_only,
        filter: selection.filter.as_ref(),
        // Envoy leaves text readouts out of Prometheus output unless asked.
        text_readouts: query.has("text_readouts"),
    };
    respond(
        StatusCode::OK,
        TEXT,
        crate::stats::prometheus::render(&server.stats, &options),
    )
}

#[cfg(test)]
mod tests {
    use super::super::handle;
    use super::super::test_support::{body, json, server};
    use http::Method;

    #[test]
    fn text_filter_and_usedonly() {
        let s = server();
        s.stats.counter("cluster.backend.upstream_rq_total").add(3);
        s.stats
            .histogram("cluster.backend.upstream_rq_time")
            .record(7.0);
        let b = body(handle(
            &s,
            &Method::GET,
            "/stats?filter=cluster%5C.backend%5C.upstream_rq_t",
        ));
        assert!(
            b.starts_with(
                "cluster.backend.upstream_rq_timeout: 0\ncluster.backend.upstream_rq_total: 3\n\
                 cluster.backend.upstream_rq_tx_reset: 0\n\
                 cluster.backend.upstream_rq_time: P0(nan,5) P25(nan,6.25) P50(nan,7.5) P75(nan,8.75) "
            ),
            "{b}"
        );
        assert!(b.ends_with(" P100(nan,10)\n"), "{b}");
        let b = body(handle(
            &s,
            &Method::GET,
            "/stats?usedonly&filter=^cluster\\.backend",
        ));
        assert!(b.contains("cluster.backend.upstream_rq_total: 3\n"));
        assert!(b.contains("cluster.backend.membership_total: 2\n"));
        assert!(!b.contains("upstream_rq_timeout"));
        let r = handle(&s, &Method::GET, "/stats?filter=(");
        assert_eq!(r.status(), http::StatusCode::BAD_REQUEST);
        assert!(body(r).starts_with("Invalid re2 regex"));
    }

    #[test]
    fn histogram_buckets_cumulative_disjoint_and_detailed() {
        let s = server();
        let h = s.stats.histogram("cluster.backend.upstream_rq_time");
        for v in [0.2, 0.7, 3.0, 3.0] {
            h.record(v);
        }
        let get = |q: &str| body(handle(&s, &Method::GET, q));
        let b = get(
            "/stats?filter=^cluster%5C.backend%5C.upstream_rq_time$&histogram_buckets=cumulative",
        );
        assert!(
            b.starts_with("cluster.backend.upstream_rq_time: B0.5(0,1) B1(0,2) B5(0,4) B10(0,4)"),
            "{b}"
        );
        assert!(b.ends_with(" B1.8e+06(0,4) B3.6e+06(0,4)\n"), "{b}");
        let b = get(
            "/stats?filter=^cluster%5C.backend%5C.upstream_rq_time$&histogram_buckets=disjoint",
        );
        assert!(b.contains("B0.5(0,1) B1(0,1) B5(0,2) B10(0,0)"), "{b}");
        let b = get(
            "/stats?filter=^cluster%5C.backend%5C.upstream_rq_time$&histogram_buckets=detailed",
        );
        assert!(
            b.starts_with("cluster.backend.upstream_rq_time:\n  totals=0,0.5:1, 0.5,0.5:1, 1,4:2\n  intervals=\n  summary=P0(nan,"),
            "{b}"
        );
        let v = json(handle(
            &s,
            &Method::GET,
            "/stats?format=json&filter=^cluster%5C.backend%5C.upstream_rq_time$&histogram_buckets=cumulative",
        ));
        assert_eq!(
            v["stats"][0]["histograms"][0]["buckets"][2],
            serde_json::json!({"upper_bound": 5.0, "interval": 0, "cumulative": 4})
        );
        let r = handle(
            &s,
            &Method::GET,
            "/stats?histogram_buckets=prometheusnative",
        );
        assert_eq!(r.status(), http::StatusCode::BAD_REQUEST);
    }

    #[test]
    fn json_and_prometheus() {
        let s = server();
        let v = json(handle(
            &s,
            &Method::GET,
            "/stats?format=json&filter=membership_total",
        ));
        assert_eq!(
            v,
            serde_json::json!({"stats": [
                {"name": "cluster.backend.membership_total", "value": 2},
                {"name": "cluster.tls_backend.membership_total", "value": 1},
            ]})
        );
        let b = body(handle(
            &s,
            &Method::GET,
            "/stats/prometheus?filter=backend%5C.membership_total",
        ));
        assert_eq!(
            b,
            "# TYPE envoy_cluster_membership_total gauge\n\
             envoy_cluster_membership_total{envoy_cluster_name=\"backend\"} 2\n\
             envoy_cluster_membership_total{envoy_cluster_name=\"tls_backend\"} 1\n"
        );
        let r = handle(&s, &Method::GET, "/stats?format=xml");
        assert_eq!(r.status(), http::StatusCode::BAD_REQUEST);
    }
}
