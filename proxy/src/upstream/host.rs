//! Hosts and the set a cluster balances over. A set is immutable: discovery builds a new one
//! and swaps it in, with its balancer built, so a pick reads one `Arc` and the prebuilt
//! balancer, with no lock.

use super::balancer::Balancer;
use super::health::HostHealth;
use crate::config::address::Endpoint;
use crate::config::load_balancing::LbPolicy;
use crate::stats::Counter;
use std::sync::atomic::AtomicU64;
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
    /// Health flags and the outlier detector's counters (see `health.rs`).
    pub health: HostHealth,
}

/// The hosts of a cluster and the balancer built for them.
#[derive(Debug, Default)]
pub struct HostSet {
    /// Every host, healthy or not.
    pub hosts: Vec<Arc<Host>>,
    /// The hosts the balancer picks among when some are unhealthy (None: all of `hosts`).
    routable: Option<Vec<Arc<Host>>>,
    /// Set in panic mode: every pick counts `lb_healthy_panic`.
    panic: Option<Arc<Counter>>,
    balancer: Balancer,
}

impl HostSet {
    /// A set balanced by (smooth weighted) round robin.
    pub fn new(hosts: Vec<Arc<Host>>) -> Self {
        Self::with_policy(hosts, &LbPolicy::RoundRobin)
    }

    /// A set balanced by `policy`; the ring or table of a hashing policy is built here.
    pub fn with_policy(hosts: Vec<Arc<Host>>, policy: &LbPolicy) -> Self {
        let balancer = Balancer::build(policy, &hosts);
        Self {
            hosts,
            routable: None,
            panic: None,
            balancer,
        }
    }

    /// Some hosts are unhealthy: the balancer covers `routable` (the healthy ones) only.
    pub(super) fn partial(
        hosts: Vec<Arc<Host>>,
        routable: Vec<Arc<Host>>,
        policy: &LbPolicy,
    ) -> Self {
        let balancer = Balancer::build(policy, &routable);
        Self {
            hosts,
            routable: Some(routable),
            panic: None,
            balancer,
        }
    }

    /// Too few hosts are healthy (panic threshold): balance over all, counting each pick.
    pub(super) fn panicking(
        hosts: Vec<Arc<Host>>,
        policy: &LbPolicy,
        counter: Arc<Counter>,
    ) -> Self {
        Self {
            panic: Some(counter),
            ..Self::with_policy(hosts, policy)
        }
    }

    /// Panic with some hosts excluded: balance over all the others, counting each pick.
    pub(super) fn partial_panicking(
        hosts: Vec<Arc<Host>>,
        routable: Vec<Arc<Host>>,
        policy: &LbPolicy,
        counter: Arc<Counter>,
    ) -> Self {
        Self {
            panic: Some(counter),
            ..Self::partial(hosts, routable, policy)
        }
    }

    /// The balancer's pick without a request hash. None when there are no hosts.
    pub fn pick(&self) -> Option<&Arc<Host>> {
        self.pick_hashed(None)
    }

    /// The balancer's pick; `hash` (from the route's hash policy) steers RING_HASH and MAGLEV.
    #[inline]
    pub fn pick_hashed(&self, hash: Option<u64>) -> Option<&Arc<Host>> {
        let hosts = self.routable.as_ref().unwrap_or(&self.hosts);
        if hosts.is_empty() {
            return None;
        }
        if let Some(panic) = &self.panic {
            panic.inc();
        }
        hosts.get(self.balancer.pick(hosts, hash))
    }
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
            health: HostHealth::default(),
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
