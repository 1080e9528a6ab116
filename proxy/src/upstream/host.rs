//! Hosts and the set a cluster balances over. A set is immutable: discovery builds a new one
//! and swaps it in, so a pick reads one `Arc` and a counter, with no lock.

use crate::config::address::Endpoint;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct HostStats {
    pub cx_total: AtomicU64,
    pub cx_active: AtomicU64,
    pub cx_connect_fail: AtomicU64,
    pub rq_total: AtomicU64,
    pub rq_success: AtomicU64,
    pub rq_error: AtomicU64,
    pub rq_active: AtomicU64,
    pub rq_timeout: AtomicU64,
}

#[derive(Debug)]
pub struct Host {
    pub address: Endpoint,
    /// The DNS name it was resolved from (empty for STATIC hosts); `auto_host_rewrite` uses it.
    pub hostname: String,
    pub weight: u32,
    /// The URI authority the connection pool keys this host by.
    pub authority: http::uri::Authority,
    pub stats: HostStats,
}

/// The hosts of a cluster and a precomputed weighted round-robin schedule.
#[derive(Debug, Default)]
pub struct HostSet {
    pub hosts: Vec<Arc<Host>>,
    /// Indexes into `hosts` in smooth weighted round-robin order; empty when all weights are
    /// equal, in which case plain rotation is used.
    schedule: Vec<u32>,
    next: AtomicUsize,
}

/// Longest schedule precomputed; larger weight sums are scaled down to fit.
const MAX_SCHEDULE: u64 = 4096;

impl HostSet {
    pub fn new(hosts: Vec<Arc<Host>>) -> Self {
        let equal = hosts.windows(2).all(|w| w[0].weight == w[1].weight);
        let schedule = if equal {
            Vec::new()
        } else {
            smooth_schedule(&hosts)
        };
        Self {
            hosts,
            schedule,
            next: AtomicUsize::new(0),
        }
    }

    /// Round robin, weighted when weights differ. None when there are no hosts.
    pub fn pick(&self) -> Option<&Arc<Host>> {
        if self.hosts.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        if self.schedule.is_empty() {
            self.hosts.get(n % self.hosts.len())
        } else {
            let i = self.schedule[n % self.schedule.len()] as usize;
            self.hosts.get(i)
        }
    }
}

/// Nginx's smooth weighted round robin, unrolled once over a full period.
fn smooth_schedule(hosts: &[Arc<Host>]) -> Vec<u32> {
    let total: u64 = hosts.iter().map(|h| u64::from(h.weight)).sum();
    let scale = total.div_ceil(MAX_SCHEDULE).max(1);
    let weights: Vec<i64> = hosts
        .iter()
        .map(|h| (u64::from(h.weight) / scale).max(1) as i64)
        .collect();
    let period: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(period as usize);
    for _ in 0..period {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += w;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= period;
        schedule.push(best as u32);
    }
    schedule
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(port: u16, weight: u32) -> Arc<Host> {
        Arc::new(Host {
            address: Endpoint::Tcp(([127, 0, 0, 1], port).into()),
            hostname: String::new(),
            weight,
            authority: format!("127.0.0.1:{port}").parse().expect("authority"),
            stats: HostStats::default(),
        })
    }

    #[test]
    fn weighted_round_robin_follows_weights_exactly_per_period() {
        let set = HostSet::new(vec![host(1, 5), host(2, 1), host(3, 1)]);
        let mut counts = [0; 3];
        for _ in 0..70 {
            let h = set.pick().expect("host");
            counts[usize::from(h.authority.port_u16().expect("port")) - 1] += 1;
        }
        assert_eq!(counts, [50, 10, 10]);
    }

    #[test]
    fn equal_weights_rotate() {
        let set = HostSet::new(vec![host(1, 1), host(2, 1)]);
        let a = set.pick().expect("host").authority.clone();
        let b = set.pick().expect("host").authority.clone();
        assert_ne!(a, b);
        assert!(HostSet::new(Vec::new()).pick().is_none());
    }
}
