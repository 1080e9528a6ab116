//! Hosts and the set a cluster balances over. A set is immutable: discovery builds a new one
//! and swaps it in, with its priority loads and balancers built, so a pick reads one `Arc`,
//! draws a priority against the prebuilt loads and asks that level's prebuilt balancer, with
//! no lock.

use super::balancer::Balancer;
use super::health::HostHealth;
use super::priority::LevelCounts;
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
    /// The EDS priority of the host's locality (0 is the highest).
    pub priority: u32,
    /// Its locality and the locality's weight, for locality-weighted balancing.
    pub locality: Locality,
    /// The URI authority the connection pool keys this host by.
    pub authority: http::uri::Authority,
    /// Its transport socket, chosen by the cluster's `transport_socket_matches` when the host
    /// was created.
    pub transport: super::transport::Transport,
    pub stats: HostStats,
    /// Health flags and the outlier detector's counters (see `health.rs`).
    pub health: HostHealth,
    /// The host's connection pools, reached from the pick without a lookup.
    pub pools: super::host_pool::HostPools,
    /// The workload its `istio.workload` metadata names (Istio's metrics fallback peer).
    pub istio_peer: Option<Arc<crate::stats::istio::Peer>>,
}

/// The hosts of a cluster and what picks among them: per priority level a list of hosts and
/// its balancer, and the cumulative loads a draw chooses a level by.
#[derive(Debug, Default)]
pub struct HostSet {
    /// Every host, healthy or not, of every priority, in priority order.
    pub hosts: Vec<Arc<Host>>,
    /// What the set was built under, kept for rebuilds after a health change.
    pub priorities: PriorityPolicy,
    /// Hosts a pick may land on: per priority its healthy hosts (all but the excluded ones in
    /// panic), then per priority its degraded hosts, where loads send traffic.
    levels: Box<[Level]>,
    /// (cumulative percent, index into `levels`), levels without load left out. A draw of
    /// 1..=100 takes the first entry at or above it; one entry needs no draw.
    choice: Box<[(u32, u32)]>,
}

#[derive(Debug)]
struct Level {
    hosts: Vec<Arc<Host>>,
    balancer: Balancer,
    /// With locality-weighted balancing, the level's localities (picked before a host).
    localities: Option<super::locality::Localities>,
    /// The level is in panic: every pick counts `lb_healthy_panic`.
    panic: Option<Arc<Counter>>,
}

pub use crate::config::cluster::{Locality, PriorityPolicy};

/// A host as discovery describes it, before it becomes a [`Host`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    pub address: Endpoint,
    /// The DNS name it was resolved from (empty for STATIC and EDS hosts).
    pub hostname: String,
    pub weight: u32,
    pub priority: u32,
    pub locality: Locality,
    pub eds_health: crate::config::cluster::EdsHealth,
    /// The transport socket its endpoint's labels select.
    pub transport: crate::config::transport_match::Selected,
    pub istio_peer: Option<Arc<crate::stats::istio::Peer>>,
}

/// Where a host stands for balancing (Envoy's coarse health).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Standing {
    Healthy,
    Degraded,
    Unhealthy,
    /// Left out altogether (`excluded_via_immediate_hc_fail`).
    Excluded,
}

impl HostSet {
    /// A set balanced by (smooth weighted) round robin.
    pub fn new(hosts: Vec<Arc<Host>>) -> Self {
        Self::with_policy(hosts, &LbPolicy::RoundRobin)
    }

    /// One level over all `hosts`, health aside, balanced by `policy` (benchmarks, tests).
    pub fn with_policy(hosts: Vec<Arc<Host>>, policy: &LbPolicy) -> Self {
        let level = Level {
            balancer: Balancer::build(policy, &hosts),
            hosts: hosts.clone(),
            localities: None,
            panic: None,
        };
        Self {
            hosts,
            priorities: PriorityPolicy::default(),
            levels: Box::new([level]),
            choice: Box::new([(100, 0)]),
        }
    }

    /// The set over `hosts` (sorted by priority) as Envoy balances it: loads per priority from
    /// each level's health (`priority.rs`), a balancer per level over the hosts that take
    /// traffic there. `standing` rates each host; `panic_threshold` in percent; with
    /// `locality_weighted` a level outside panic picks a locality first (`locality.rs`).
    #[allow(clippy::too_many_arguments)] // One call site (health.rs), each a distinct input.
    pub(super) fn build(
        mut hosts: Vec<Arc<Host>>,
        policy: &LbPolicy,
        priorities: PriorityPolicy,
        panic_threshold: f64,
        locality_weighted: bool,
        lb_healthy_panic: &Arc<Counter>,
        standing: impl Fn(&Host) -> Standing,
    ) -> Self {
        hosts.sort_by_key(|h| h.priority);
        let count = hosts.last().map_or(0, |h| h.priority as usize + 1);
        let mut counts = vec![LevelCounts::default(); count];
        let standings: Vec<Standing> = hosts.iter().map(|h| standing(h)).collect();
        for (h, s) in hosts.iter().zip(&standings) {
            let c = &mut counts[h.priority as usize];
            let w = if priorities.weighted_priority_health {
                u64::from(h.weight)
            } else {
                1
            };
            c.hosts += 1;
            match s {
                Standing::Excluded => c.excluded += 1,
                Standing::Healthy => {
                    c.healthy += 1;
                    c.healthy_weight += w;
                }
                Standing::Degraded => {
                    c.degraded += 1;
                    c.degraded_weight += w;
                }
                Standing::Unhealthy => {}
            }
            if *s != Standing::Excluded {
                c.total_weight += w;
            }
        }
        let loads =
            super::priority::loads(&counts, priorities.overprovisioning_factor, panic_threshold);
        let members = |p: usize, keep: &dyn Fn(Standing) -> bool| -> Vec<Arc<Host>> {
            hosts
                .iter()
                .zip(&standings)
                .filter(|(h, s)| h.priority as usize == p && keep(**s))
                .map(|(h, _)| h.clone())
                .collect()
        };
        let mut levels = Vec::new();
        let mut choice = Vec::new();
        let mut bound = 0;
        let sources = (0..count)
            .map(|p| (p, loads.healthy[p], false))
            .chain((0..count).map(|p| (p, loads.degraded[p], true)));
        for (p, load, degraded) in sources {
            if load == 0 {
                continue;
            }
            let panic = !degraded && loads.panic[p];
            let members = if degraded {
                members(p, &|s| s == Standing::Degraded)
            } else if panic {
                // Excluded hosts stay out even in panic (see `health.rs`).
                members(p, &|s| s != Standing::Excluded)
            } else {
                members(p, &|s| s == Standing::Healthy)
            };
            bound += load;
            choice.push((bound, levels.len() as u32));
            let localities = if locality_weighted && !panic {
                let all: Vec<&Arc<Host>> =
                    hosts.iter().filter(|h| h.priority as usize == p).collect();
                super::locality::Localities::build(
                    &members,
                    &all,
                    priorities.overprovisioning_factor,
                    policy,
                )
            } else {
                None
            };
            levels.push(Level {
                // A level that picks localities first balances within each of them instead.
                balancer: if localities.is_some() {
                    Balancer::default()
                } else {
                    Balancer::build(policy, &members)
                },
                hosts: members,
                localities,
                panic: panic.then(|| lb_healthy_panic.clone()),
            });
        }
        // A cluster without hosts is in panic (none of its hosts is healthy): Envoy 1.40
        // counts `lb_healthy_panic` for each pick that finds nothing.
        if hosts.is_empty() {
            levels.push(Level {
                hosts: Vec::new(),
                balancer: Balancer::default(),
                localities: None,
                panic: Some(lb_healthy_panic.clone()),
            });
            choice.push((100, 0));
        }
        Self {
            hosts,
            priorities,
            levels: levels.into(),
            choice: choice.into(),
        }
    }

    /// The balancer's pick without a request hash. None when there are no hosts.
    pub fn pick(&self) -> Option<&Arc<Host>> {
        self.pick_hashed(None)
    }

    /// The pick: a priority level by a draw against the loads (the request hash when there is
    /// one, as Envoy's hashing balancers do), then that level's balancer; `hash` (from the
    /// route's hash policy) also steers RING_HASH and MAGLEV within the level.
    #[inline]
    pub fn pick_hashed(&self, hash: Option<u64>) -> Option<&Arc<Host>> {
        let level = match &*self.choice {
            [] => return None,
            [(_, only)] => *only,
            many => {
                let draw = (hash.unwrap_or_else(crate::random::next_u64) % 100) as u32 + 1;
                many.iter()
                    .find(|(bound, _)| draw <= *bound)
                    .map_or(0, |(_, level)| *level)
            }
        };
        let level = self.levels.get(level as usize)?;
        if let Some(panic) = &level.panic {
            panic.inc();
        }
        if level.hosts.is_empty() {
            return None;
        }
        if let Some(localities) = &level.localities {
            return localities.pick(hash);
        }
        level.hosts.get(level.balancer.pick(&level.hosts, hash))
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
            priority: 0,
            locality: Default::default(),
            authority: format!("127.0.0.1:{port}").parse().expect("authority"),
            transport: crate::upstream::transport::Transport::Plain,
            stats: HostStats::default(),
            health: HostHealth::default(),
            pools: Default::default(),
            istio_peer: None,
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
