//! The per-host decisions of active health checking, as pure functions: how a check's result
//! moves a host between healthy and failed (consecutive thresholds, first check), and how long
//! to wait for the next check. No I/O, no clock: the session in `mod.rs` applies them.
//! https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/health_checking
//! and the `HealthCheck` API page (thresholds and the interval fields).

use crate::config::health_check::HealthCheckConfig;
use std::time::Duration;

/// What one check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The host answered as expected; `degraded` when it said `x-envoy-degraded`.
    Healthy { degraded: bool },
    /// The host answered, wrongly (an HTTP status not expected). `exclude` when the answer
    /// carried `x-envoy-immediate-health-check-fail`.
    Unhealthy { exclude: bool },
    /// Connecting failed, or the connection closed before a complete answer.
    Network,
    /// No complete answer within `timeout` (a network failure that also flags the host).
    Timeout,
}

impl Outcome {
    pub fn is_success(self) -> bool {
        matches!(self, Outcome::Healthy { .. })
    }

    /// Network failures (timeouts included) wait for `unhealthy_threshold`; an answer that is
    /// wrong fails the host at once (Envoy's docs on `unhealthy_threshold`).
    pub fn is_network(self) -> bool {
        matches!(self, Outcome::Network | Outcome::Timeout)
    }
}

/// How a result changed the host's failed-active-hc state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Unchanged,
    /// Moving towards a change: some, not all, of the threshold's results in a row.
    Pending,
    Changed,
}

/// The consecutive counts of one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counts {
    healthy: u32,
    unhealthy: u32,
    /// No result yet: the first success marks a failed host healthy at once (Envoy does so to
    /// bring hosts up fast at startup).
    first: bool,
}

impl Default for Counts {
    fn default() -> Self {
        Self {
            healthy: 0,
            unhealthy: 0,
            first: true,
        }
    }
}

impl Counts {
    /// Applies `outcome` to a host that is (`failed`) or is not failing its active check;
    /// returns how that state changes (the caller flips the flag on `Changed`).
    pub fn apply(
        &mut self,
        outcome: Outcome,
        failed: bool,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> Transition {
        let first = std::mem::replace(&mut self.first, false);
        if outcome.is_success() {
            self.unhealthy = 0;
            if !failed {
                return Transition::Unchanged;
            }
            self.healthy += 1;
            if first || self.healthy >= healthy_threshold {
                self.healthy = 0;
                Transition::Changed
            } else {
                Transition::Pending
            }
        } else {
            self.healthy = 0;
            if failed {
                return Transition::Unchanged;
            }
            self.unhealthy += 1;
            if !outcome.is_network() || self.unhealthy >= unhealthy_threshold {
                self.unhealthy = 0;
                Transition::Changed
            } else {
                Transition::Pending
            }
        }
    }
}

/// The wait before the next check, before jitter. Until the cluster has carried traffic
/// (made a connection for a request) Envoy checks at `no_traffic_interval`; then by the last
/// result: a success waits `interval` (`healthy_edge_interval` while on the way to healthy),
/// a failure `unhealthy_interval` (`unhealthy_edge_interval` on the way to unhealthy).
pub fn base_interval(
    config: &HealthCheckConfig,
    traffic: bool,
    outcome: Outcome,
    transition: Transition,
) -> Duration {
    let pending = transition == Transition::Pending;
    match (traffic, outcome.is_success(), pending) {
        (false, true, _) => config.no_traffic_healthy_interval,
        (false, false, _) => config.no_traffic_interval,
        (true, true, true) => config.healthy_edge_interval,
        (true, true, false) => config.interval,
        (true, false, true) => config.unhealthy_edge_interval,
        (true, false, false) => config.unhealthy_interval,
    }
}

/// `base` plus Envoy's jitter: up to `interval_jitter_percent` of it and up to
/// `interval_jitter`, each drawn from `draw` (uniform below its argument); at least 1 ms.
pub fn with_jitter(
    config: &HealthCheckConfig,
    base: Duration,
    mut draw: impl FnMut(u64) -> u64,
) -> Duration {
    let base_ms = base.as_millis() as u64;
    let mut ms = base_ms;
    let percent = u64::from(config.interval_jitter_percent) * base_ms / 100;
    if percent > 0 {
        ms += draw(percent);
    }
    let jitter = config.interval_jitter.as_millis() as u64;
    if jitter > 0 {
        ms += draw(jitter);
    }
    Duration::from_millis(ms.max(1))
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
