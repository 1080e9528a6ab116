//! Active health checking (`Cluster.health_checks`): every host of a cluster is checked on its
//! own schedule by a task of its own; the results move the host's `FailedActiveHc` flag (see
//! `state.rs` for the thresholds and intervals) and a change rebuilds the cluster's host set
//! off the request path (`health.rs`). A host of such a cluster starts failed until its first
//! check passes, as in Envoy.
//! https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/health_checking
//!
//! One supervisor task per cluster follows the host set: a host that arrives (EDS, DNS) gets a
//! session, one that leaves loses it. The tasks hold the cluster weakly and end with it
//! (replaced or removed): the watch channel they wait on closes when it is dropped.

mod grpc;
mod probe;
pub mod state;

use super::health::HealthFlag;
use super::host::Host;
use super::manager::ClusterRuntime;
use crate::config::health_check::HealthCheckConfig;
use crate::stats::{Counter, Gauge, Store};
use state::{Counts, Outcome, Transition};
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use tokio::sync::watch;

/// `cluster.<name>.health_check.*`, Envoy's names.
#[derive(Debug)]
pub struct CheckStats {
    attempt: Arc<Counter>,
    success: Arc<Counter>,
    failure: Arc<Counter>,
    network_failure: Arc<Counter>,
    /// A response to a request (not a check) said `x-envoy-immediate-health-check-fail`.
    passive_failure: Arc<Counter>,
    /// Envoy's count of checks that verified `service_name_matcher` (refused here).
    _verify_cluster: Arc<Counter>,
    healthy: Arc<Gauge>,
    degraded: Arc<Gauge>,
}

/// A cluster's active checker: its settings, stats, and the signal of host set changes.
#[derive(Debug)]
pub struct ActiveChecker {
    config: Arc<HealthCheckConfig>,
    stats: CheckStats,
    hosts_changed: watch::Sender<()>,
}

impl ActiveChecker {
    pub fn new(config: Arc<HealthCheckConfig>, store: &Store, prefix: &str) -> Self {
        let c = |s: &str| store.counter(&format!("{prefix}health_check.{s}"));
        let g = |s: &str| store.gauge(&format!("{prefix}health_check.{s}"));
        Self {
            config,
            stats: CheckStats {
                attempt: c("attempt"),
                success: c("success"),
                failure: c("failure"),
                network_failure: c("network_failure"),
                passive_failure: c("passive_failure"),
                _verify_cluster: c("verify_cluster"),
                healthy: g("healthy"),
                degraded: g("degraded"),
            },
            hosts_changed: watch::channel(()).0,
        }
    }

    /// Called after every host set install: updates the gauges and wakes the supervisor,
    /// which starts or stops sessions when hosts came or went.
    pub(super) fn installed(&self, hosts: &[Arc<Host>]) {
        let healthy = hosts
            .iter()
            .filter(|h| !h.health.has(HealthFlag::FailedActiveHc))
            .count();
        let degraded = hosts
            .iter()
            .filter(|h| h.health.has(HealthFlag::DegradedActiveHc))
            .count();
        self.stats.healthy.set(healthy as u64);
        self.stats.degraded.set(degraded as u64);
        self.hosts_changed.send_replace(());
    }
}

impl ActiveChecker {
    /// A response from `host` carried `x-envoy-immediate-health-check-fail` (the upstream's
    /// health check filter is failing): Envoy fails the host's active check at once and
    /// excludes it until checks pass again. True when the host set must be rebuilt.
    pub(super) fn passive_failure(&self, host: &Host) -> bool {
        self.stats.failure.inc();
        self.stats.passive_failure.inc();
        let excluded = host
            .health
            .set(HealthFlag::ExcludedViaImmediateHcFail, true);
        host.health.set(HealthFlag::FailedActiveHc, true) || excluded
    }
}

/// Starts the cluster's checker (when it has one). Call inside the runtime.
pub fn spawn(cluster: &Arc<ClusterRuntime>) {
    let Some(active) = &cluster.health.active else {
        return;
    };
    let mut changed = active.hosts_changed.subscribe();
    let prober = Arc::new(probe::Prober {
        checker: active.config.checker.clone(),
        default_host: cluster.config.name.clone(),
        timeout: active.config.timeout,
    });
    let config = active.config.clone();
    let weak = Arc::downgrade(cluster);
    tokio::spawn(async move {
        // Dropping the set aborts every session: the cluster is gone.
        let mut sessions = tokio::task::JoinSet::new();
        let mut running: HashMap<usize, (Arc<Host>, tokio::task::AbortHandle)> = HashMap::new();
        loop {
            {
                let Some(cluster) = weak.upgrade() else {
                    return;
                };
                let set = cluster.hosts();
                let current: HashMap<usize, &Arc<Host>> = set
                    .hosts
                    .iter()
                    .map(|h| (Arc::as_ptr(h) as usize, h))
                    .collect();
                running.retain(|key, (_, abort)| {
                    let keep = current.contains_key(key);
                    if !keep {
                        abort.abort();
                    }
                    keep
                });
                for (key, host) in current {
                    if running.contains_key(&key) {
                        continue;
                    }
                    let abort = sessions.spawn(session(
                        weak.clone(),
                        host.clone(),
                        config.clone(),
                        prober.clone(),
                    ));
                    running.insert(key, (host.clone(), abort));
                }
            }
            // Reap finished sessions so the set does not grow with removed hosts.
            while sessions.try_join_next().is_some() {}
            if changed.changed().await.is_err() {
                return;
            }
        }
    });
}

/// Checks one host until it leaves the cluster or the cluster goes.
async fn session(
    cluster: Weak<ClusterRuntime>,
    host: Arc<Host>,
    config: Arc<HealthCheckConfig>,
    prober: Arc<probe::Prober>,
) {
    let initial = config.initial_jitter.as_millis() as u64;
    if initial > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(crate::random::below(
            initial,
        )))
        .await;
    }
    let mut counts = Counts::default();
    let mut conn = None;
    loop {
        match cluster.upgrade() {
            Some(c) => match &c.health.active {
                Some(active) => active.stats.attempt.inc(),
                None => return,
            },
            None => return,
        }
        let outcome =
            match tokio::time::timeout(config.timeout, prober.check(&host, &mut conn)).await {
                Ok(outcome) => outcome,
                Err(_) => Outcome::Timeout,
            };
        if !config.reuse_connection || !outcome.is_success() {
            // A failed exchange leaves the connection in an unknown state; the next check
            // starts afresh.
            conn = None;
        }
        let Some(c) = cluster.upgrade() else {
            return;
        };
        let Some(active) = &c.health.active else {
            return;
        };
        let transition = record(&c, active, &host, &mut counts, outcome);
        let traffic = c.stats.upstream_cx_total.value() > 0;
        drop(c);
        let base = state::base_interval(&config, traffic, outcome, transition);
        let wait = state::with_jitter(&config, base, crate::random::below);
        tokio::time::sleep(wait).await;
    }
}

/// Applies one outcome to the host: counts, flags, stats, and a rebuild when its health changed.
fn record(
    cluster: &ClusterRuntime,
    active: &ActiveChecker,
    host: &Host,
    counts: &mut Counts,
    outcome: Outcome,
) -> Transition {
    let health = &host.health;
    let failed = health.has(HealthFlag::FailedActiveHc);
    let transition = counts.apply(
        outcome,
        failed,
        active.config.healthy_threshold,
        active.config.unhealthy_threshold,
    );
    let mut changed = false;
    match outcome {
        Outcome::Healthy { degraded } => {
            active.stats.success.inc();
            if transition == Transition::Changed {
                health.set(HealthFlag::ActiveHcTimeout, false);
                health.set(HealthFlag::ExcludedViaImmediateHcFail, false);
                changed |= health.set(HealthFlag::FailedActiveHc, false);
            }
            changed |= health.set(HealthFlag::DegradedActiveHc, degraded);
        }
        Outcome::Unhealthy { exclude } => {
            active.stats.failure.inc();
            if exclude {
                changed |= health.set(HealthFlag::ExcludedViaImmediateHcFail, true);
            }
            if transition == Transition::Changed {
                changed |= health.set(HealthFlag::FailedActiveHc, true);
            }
        }
        Outcome::Network | Outcome::Timeout => {
            active.stats.failure.inc();
            active.stats.network_failure.inc();
            if outcome == Outcome::Timeout {
                health.set(HealthFlag::ActiveHcTimeout, true);
            }
            if transition == Transition::Changed {
                changed |= health.set(HealthFlag::FailedActiveHc, true);
            }
        }
    }
    if !outcome.is_success()
        && (active.config.always_log_failures || transition == Transition::Changed)
    {
        tracing::warn!(target: "hc", "health check failed for {} in cluster {}: {outcome:?}", host.authority, cluster.config.name);
    } else if transition == Transition::Changed {
        tracing::info!(target: "hc", "host {} in cluster {} is healthy", host.authority, cluster.config.name);
    }
    if changed {
        cluster.refresh_health();
    }
    transition
}
