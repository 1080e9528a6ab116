//! A cluster's circuit breakers at runtime: per routing priority, lock-free counters of open
//! connections, pending requests, active requests, active retries and connection pools, each
//! taken by a guard that gives it back when dropped, with Envoy's `circuit_breakers.*` gauges.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/circuit_breaking
//! and https://www.envoyproxy.io/docs/envoy/latest/configuration/upstream/cluster_manager/cluster_stats#circuit-breakers-statistics

use crate::config::circuit_breakers::{CircuitBreakers as Config, Priority, RetryBudget};
use crate::stats::{Gauge, Store};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// One limited resource: a count, its limit, the `*_open` gauge (1 while the count is at the
/// limit) and, with `track_remaining`, the `remaining_*` gauge.
#[derive(Debug)]
pub struct Resource {
    current: AtomicU64,
    max: u64,
    open: Arc<Gauge>,
    remaining: Option<Arc<Gauge>>,
}

impl Resource {
    fn new(max: u64, open: Arc<Gauge>, remaining: Option<Arc<Gauge>>) -> Arc<Self> {
        open.set(0);
        if let Some(r) = &remaining {
            r.set(max);
        }
        Arc::new(Resource {
            current: AtomicU64::new(0),
            max,
            open,
            remaining,
        })
    }

    pub fn count(&self) -> u64 {
        self.current.load(Relaxed)
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// Takes one unit if the count is under `limit`.
    fn try_acquire_under(self: &Arc<Self>, limit: u64) -> Option<Guard> {
        self.current
            .fetch_update(Relaxed, Relaxed, |c| (c < limit).then_some(c + 1))
            .ok()?;
        self.publish();
        Some(Guard(self.clone()))
    }

    /// Takes one unit if the count is under the limit.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Guard> {
        self.try_acquire_under(self.max)
    }

    /// Takes one unit whatever the count (Envoy opens a host's first connection even over
    /// `max_connections`, so requests to it are never stuck).
    pub fn acquire(self: &Arc<Self>) -> Guard {
        self.current.fetch_add(1, Relaxed);
        self.publish();
        Guard(self.clone())
    }

    /// Brings the gauges to the count. Two updates racing may publish out of order, so the
    /// count is read again until it holds still.
    fn publish(&self) {
        loop {
            let current = self.count();
            self.open.set(u64::from(current >= self.max));
            if let Some(r) = &self.remaining {
                r.set(self.max.saturating_sub(current));
            }
            if self.count() == current {
                return;
            }
        }
    }
}

/// One unit of a [`Resource`], given back when dropped.
#[derive(Debug)]
pub struct Guard(Arc<Resource>);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self
            .0
            .current
            .fetch_update(Relaxed, Relaxed, |c| Some(c.saturating_sub(1)));
        self.0.publish();
    }
}

/// A retry admitted by [`PriorityBreakers::try_acquire_retry`]; the retry counts as active
/// until this is dropped.
pub type RetryGuard = Guard;

/// The resources of one priority.
#[derive(Debug)]
pub struct PriorityBreakers {
    pub connections: Arc<Resource>,
    pub pending_requests: Arc<Resource>,
    pub requests: Arc<Resource>,
    /// `max_retries`; with a retry budget it still counts retries and drives `rq_retry_open`.
    pub retries: Arc<Resource>,
    pub connection_pools: Arc<Resource>,
    retry_budget: Option<RetryBudget>,
}

impl PriorityBreakers {
    /// Admits one retry, or None when the cluster is at its retry limit (the caller counts
    /// `upstream_rq_retry_overflow` and does not retry). Without a retry budget the limit is
    /// `max_retries`; with one it is `budget_percent` of the requests active and pending,
    /// rounded down, and never below `min_retry_concurrency`.
    pub fn try_acquire_retry(&self) -> Option<RetryGuard> {
        match self.retry_budget {
            None => self.retries.try_acquire(),
            Some(budget) => {
                let limit = retry_budget_limit(
                    budget,
                    self.requests.count() + self.pending_requests.count(),
                );
                self.retries.try_acquire_under(limit)
            }
        }
    }
}

/// How many retries may be active under `budget` with `active` requests active or pending.
pub fn retry_budget_limit(budget: RetryBudget, active: u64) -> u64 {
    // Envoy truncates the share toward zero before applying the floor.
    let share = (budget.budget_percent / 100.0 * active as f64) as u64;
    share.max(u64::from(budget.min_retry_concurrency))
}

#[derive(Debug)]
pub struct CircuitBreakers {
    default: PriorityBreakers,
    high: PriorityBreakers,
}

impl CircuitBreakers {
    /// The counters for `config`, with their gauges under `cluster.<stat_name>.`.
    pub fn new(config: &Config, store: &Store, stat_prefix: &str) -> Self {
        let build = |priority: Priority| {
            let t = config.thresholds(priority);
            let p = format!("{stat_prefix}circuit_breakers.{}.", priority.stat_word());
            let open = |name: &str| store.gauge(&format!("{p}{name}"));
            let remaining = |name: &str| {
                t.track_remaining
                    .then(|| store.gauge(&format!("{p}{name}")))
            };
            // With a retry budget the remaining retries depend on other counts; Envoy shows 0.
            let retries_remaining = if t.retry_budget.is_some() {
                remaining("remaining_retries").inspect(|g| g.set(0));
                None
            } else {
                remaining("remaining_retries")
            };
            PriorityBreakers {
                connections: Resource::new(
                    t.max_connections.into(),
                    open("cx_open"),
                    remaining("remaining_cx"),
                ),
                pending_requests: Resource::new(
                    t.max_pending_requests.into(),
                    open("rq_pending_open"),
                    remaining("remaining_pending"),
                ),
                requests: Resource::new(
                    t.max_requests.into(),
                    open("rq_open"),
                    remaining("remaining_rq"),
                ),
                retries: Resource::new(
                    t.max_retries.into(),
                    open("rq_retry_open"),
                    retries_remaining,
                ),
                // `max_connection_pools` is refused at translation: unlimited, as Envoy's default.
                connection_pools: Resource::new(
                    u64::MAX,
                    open("cx_pool_open"),
                    remaining("remaining_cx_pools"),
                ),
                retry_budget: t.retry_budget,
            }
        };
        CircuitBreakers {
            default: build(Priority::Default),
            high: build(Priority::High),
        }
    }

    pub fn priority(&self, priority: Priority) -> &PriorityBreakers {
        match priority {
            Priority::Default => &self.default,
            Priority::High => &self.high,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::circuit_breakers::Thresholds;

    fn breakers(default: Thresholds) -> (Arc<Store>, CircuitBreakers) {
        let store = Store::new();
        let config = Config {
            default,
            high: Thresholds::default(),
        };
        let cb = CircuitBreakers::new(&config, &store, "cluster.c.");
        (store, cb)
    }

    fn gauge(store: &Store, name: &str) -> Option<u64> {
        store
            .snapshot()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, m)| match m {
                crate::stats::Metric::Gauge(g) => g.value(),
                other => panic!("{name} is not a gauge: {other:?}"),
            })
    }

    #[test]
    fn a_resource_opens_at_its_limit_and_closes_when_given_back() {
        let (store, cb) = breakers(Thresholds {
            max_requests: 2,
            track_remaining: true,
            ..Thresholds::default()
        });
        let rq = &cb.priority(Priority::Default).requests;
        let a = rq.try_acquire().expect("first");
        assert_eq!(
            gauge(&store, "cluster.c.circuit_breakers.default.rq_open"),
            Some(0)
        );
        let b = rq.try_acquire().expect("second");
        assert!(rq.try_acquire().is_none(), "over the limit");
        assert_eq!(
            gauge(&store, "cluster.c.circuit_breakers.default.rq_open"),
            Some(1)
        );
        assert_eq!(
            gauge(&store, "cluster.c.circuit_breakers.default.remaining_rq"),
            Some(0)
        );
        drop(a);
        assert_eq!(
            gauge(&store, "cluster.c.circuit_breakers.default.rq_open"),
            Some(0)
        );
        assert_eq!(
            gauge(&store, "cluster.c.circuit_breakers.default.remaining_rq"),
            Some(1)
        );
        let forced = [rq.acquire(), rq.acquire()];
        assert_eq!(rq.count(), 3);
        drop((b, forced));
        assert_eq!(rq.count(), 0);
    }

    #[test]
    fn remaining_gauges_exist_only_with_track_remaining() {
        let (store, _cb) = breakers(Thresholds::default());
        assert_eq!(
            gauge(&store, "cluster.c.circuit_breakers.default.cx_open"),
            Some(0)
        );
        assert_eq!(
            gauge(&store, "cluster.c.circuit_breakers.high.rq_retry_open"),
            Some(0)
        );
        assert_eq!(
            gauge(&store, "cluster.c.circuit_breakers.default.remaining_cx"),
            None
        );
        let (store, _cb) = breakers(Thresholds {
            track_remaining: true,
            ..Thresholds::default()
        });
        assert_eq!(
            gauge(&store, "cluster.c.circuit_breakers.default.remaining_cx"),
            Some(1024)
        );
        assert_eq!(
            gauge(
                &store,
                "cluster.c.circuit_breakers.default.remaining_retries"
            ),
            Some(3)
        );
        assert_eq!(
            gauge(
                &store,
                "cluster.c.circuit_breakers.default.remaining_cx_pools"
            ),
            Some(u64::MAX)
        );
        assert_eq!(
            gauge(&store, "cluster.c.circuit_breakers.high.remaining_cx"),
            None
        );
    }

    #[test]
    fn max_retries_limits_retries_without_a_budget() {
        let (_store, cb) = breakers(Thresholds {
            max_retries: 2,
            ..Thresholds::default()
        });
        let p = cb.priority(Priority::Default);
        let held = [p.try_acquire_retry(), p.try_acquire_retry()];
        assert!(held.iter().all(Option::is_some));
        assert!(p.try_acquire_retry().is_none());
        drop(held);
        assert!(p.try_acquire_retry().is_some());
    }

    #[test]
    fn the_retry_budget_is_a_share_of_active_and_pending_with_a_floor() {
        let budget = |percent, min| RetryBudget {
            budget_percent: percent,
            min_retry_concurrency: min,
        };
        // The floor applies while the share is smaller.
        assert_eq!(retry_budget_limit(budget(20.0, 3), 0), 3);
        assert_eq!(retry_budget_limit(budget(20.0, 3), 19), 3);
        // 20% of 20 is 4; of 24 is 4.8, rounded down.
        assert_eq!(retry_budget_limit(budget(20.0, 3), 20), 4);
        assert_eq!(retry_budget_limit(budget(20.0, 3), 24), 4);
        assert_eq!(retry_budget_limit(budget(100.0, 0), 7), 7);
        assert_eq!(retry_budget_limit(budget(0.0, 0), 100), 0);
        assert_eq!(retry_budget_limit(budget(50.0, 1), 1), 1);
    }

    #[test]
    fn a_budget_admits_retries_by_the_requests_in_flight_not_max_retries() {
        let (store, cb) = breakers(Thresholds {
            max_retries: 1,
            retry_budget: Some(RetryBudget {
                budget_percent: 50.0,
                min_retry_concurrency: 1,
            }),
            track_remaining: true,
            ..Thresholds::default()
        });
        let p = cb.priority(Priority::Default);
        // Nothing in flight: the floor of 1.
        let first = p.try_acquire_retry().expect("the floor admits one");
        assert!(p.try_acquire_retry().is_none());
        // Six requests active and two pending: half of eight is four.
        let active: Vec<_> = (0..6).map(|_| p.requests.acquire()).collect();
        let pending: Vec<_> = (0..2).map(|_| p.pending_requests.acquire()).collect();
        let more: Vec<_> = (0..3).map(|_| p.try_acquire_retry()).collect();
        assert!(more.iter().all(Option::is_some));
        assert!(
            p.try_acquire_retry().is_none(),
            "four retries are the budget"
        );
        // With a budget Envoy keeps remaining_retries at 0.
        assert_eq!(
            gauge(
                &store,
                "cluster.c.circuit_breakers.default.remaining_retries"
            ),
            Some(0)
        );
        drop((active, pending, more, first));
        assert_eq!(p.retries.count(), 0);
    }
}
