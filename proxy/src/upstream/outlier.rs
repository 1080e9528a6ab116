//! Outlier detection (passive health checking): the router and tcp_proxy report each result
//! of a host; consecutive errors eject it at once, success rate and failure percentage are
//! judged every `interval`, and an ejected host returns after
//! `min(base_ejection_time * backoff, max_ejection_time)`, checked on the same interval.
//! https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/outlier
//!
//! The request path only bumps a host's atomic counters; reaching a consecutive threshold
//! posts the host to the cluster's detector task (as Envoy posts to its main thread), which
//! decides, sets the host's flag and rebuilds the host set (see `health.rs`).

use super::health::HealthFlag;
use super::host::Host;
use super::manager::ClusterRuntime;
use crate::config::outlier::OutlierConfig;
use crate::stats::{Counter, Gauge, Store};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What became of one request or connection to a host (Envoy's outlier `Result`s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostResult {
    /// The host answered with this HTTP status.
    Http(u16),
    /// Connecting failed, or the connection was reset before a response.
    ConnectFailed,
    /// No response in time.
    Timeout,
    /// A tcp_proxy connection was established: the whole transaction, for a TCP host.
    Connected,
}

impl HostResult {
    /// The result a failed exchange reports, as Envoy's router does: a reset counts as a
    /// connect failure. None when no host was tried.
    pub fn from_error(error: &super::UpstreamError) -> Option<HostResult> {
        use super::UpstreamError as E;
        match error {
            E::Timeout | E::PerTryTimeout | E::PerTryIdleTimeout => Some(HostResult::Timeout),
            E::ConnectFailure(_) | E::Reset(_) | E::Protocol | E::StreamReset => {
                Some(HostResult::ConnectFailed)
            }
            E::MaxStreamDuration => Some(HostResult::Timeout),
            // A circuit breaker refusal never reached the host.
            E::NoHealthyUpstream | E::UnsupportedTransport(_) | E::Overflow => None,
        }
    }
}

/// Why a host is ejected; indexes the per-kind stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ejection {
    Consecutive5xx,
    ConsecutiveGatewayFailure,
    ConsecutiveLocalOriginFailure,
    SuccessRate,
    LocalOriginSuccessRate,
    FailurePercentage,
    LocalOriginFailurePercentage,
}

const KINDS: [&str; 7] = [
    "consecutive_5xx",
    "consecutive_gateway_failure",
    "consecutive_local_origin_failure",
    "success_rate",
    "local_origin_success_rate",
    "failure_percentage",
    "local_origin_failure_percentage",
];

/// A host's counters, written by requests with relaxed atomics.
#[derive(Debug)]
pub struct HostMonitor {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_local: AtomicU32,
    /// This interval's (total, successes) for external then local origin results.
    buckets: [(AtomicU64, AtomicU64); 2],
    /// The last interval's success rates as f64 bits (-1: not enough volume).
    success_rate: [AtomicU64; 2],
    ejection: Mutex<EjectionState>,
}

#[derive(Debug, Default, Clone, Copy)]
struct EjectionState {
    /// Envoy's backoff multiplier: grows per ejection (bounded by max_ejection_time), shrinks
    /// by one per interval the host spends healthy.
    backoff: u32,
    ejected_at: Option<Instant>,
    jitter: Duration,
}

impl Default for HostMonitor {
    fn default() -> Self {
        let unknown = || AtomicU64::new((-1.0f64).to_bits());
        Self {
            consecutive_5xx: AtomicU32::new(0),
            consecutive_gateway: AtomicU32::new(0),
            consecutive_local: AtomicU32::new(0),
            buckets: Default::default(),
            success_rate: [unknown(), unknown()],
            ejection: Mutex::new(EjectionState::default()),
        }
    }
}

impl HostMonitor {
    pub(super) fn success_rate(&self, local: bool) -> f64 {
        f64::from_bits(self.success_rate[usize::from(local)].load(Relaxed))
    }

    fn set_success_rate(&self, local: bool, rate: f64) {
        self.success_rate[usize::from(local)].store(rate.to_bits(), Relaxed);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, EjectionState> {
        self.ejection.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes this interval's (total, successes) and starts the next.
    fn take_bucket(&self, local: bool) -> (u64, u64) {
        let (total, ok) = &self.buckets[usize::from(local)];
        (total.swap(0, Relaxed), ok.swap(0, Relaxed))
    }
}

/// `cluster.<name>.outlier_detection.*`, Envoy's names.
struct DetectorStats {
    active: Arc<Gauge>,
    enforced_total: Arc<Counter>,
    overflow: Arc<Counter>,
    detected: [Arc<Counter>; 7],
    enforced: [Arc<Counter>; 7],
    /// Deprecated in Envoy, still counted: ejections of the 5xx and success-rate kinds that
    /// passed the percentage check, and detections of those kinds.
    total: Arc<Counter>,
    consecutive_5xx: Arc<Counter>,
    success_rate: Arc<Counter>,
}

/// A host that reached a consecutive-error threshold, posted to the detector task.
type Posted = (Arc<Host>, Ejection);

/// One cluster's detector: its configuration, stats and the channel requests post to.
pub struct Detector {
    config: OutlierConfig,
    stats: DetectorStats,
    events: mpsc::UnboundedSender<Posted>,
    /// The last sweep's success-rate mean and ejection threshold, external then local origin,
    /// as f64 bits (-1: not computed); `/clusters` prints them.
    averages: [AtomicU64; 4],
    /// Taken by the task when it starts.
    receiver: Mutex<Option<mpsc::UnboundedReceiver<Posted>>>,
}

impl Detector {
    pub(super) fn new(config: OutlierConfig, store: &Arc<Store>, cluster_prefix: &str) -> Self {
        let prefix = format!("{cluster_prefix}outlier_detection.");
        let c = |s: &str| store.counter(&format!("{prefix}{s}"));
        // Envoy declares these with the others; degraded detection is refused at translation.
        c("ejections_detected_degradation");
        let (events, receiver) = mpsc::unbounded_channel();
        Self {
            stats: DetectorStats {
                active: store.gauge(&format!("{prefix}ejections_active")),
                enforced_total: c("ejections_enforced_total"),
                overflow: c("ejections_overflow"),
                detected: KINDS.map(|k| c(&format!("ejections_detected_{k}"))),
                enforced: KINDS.map(|k| c(&format!("ejections_enforced_{k}"))),
                total: c("ejections_total"),
                consecutive_5xx: c("ejections_consecutive_5xx"),
                success_rate: c("ejections_success_rate"),
            },
            config,
            averages: std::array::from_fn(|_| AtomicU64::new((-1.0f64).to_bits())),
            events,
            receiver: Mutex::new(Some(receiver)),
        }
    }

    /// Records one result of `host` (request path: atomics only, and a post to the detector
    /// task when a consecutive threshold is reached).
    pub fn report(&self, host: &Arc<Host>, result: HostResult) {
        let split = self.config.split_external_local_origin_errors;
        match result {
            HostResult::Http(code) => {
                // A response means the connection worked.
                if split {
                    self.local_origin(host, true);
                }
                self.http_code(host, code);
            }
            HostResult::ConnectFailed | HostResult::Timeout if split => {
                self.local_origin(host, false)
            }
            // Without the split, local failures count as the gateway errors a proxy would
            // answer with.
            HostResult::ConnectFailed => self.http_code(host, 503),
            HostResult::Timeout => self.http_code(host, 504),
            HostResult::Connected if split => self.local_origin(host, true),
            HostResult::Connected => self.http_code(host, 200),
        }
    }

    fn http_code(&self, host: &Arc<Host>, code: u16) {
        let m = host.health.outlier();
        m.buckets[0].0.fetch_add(1, Relaxed);
        if !(500..600).contains(&code) {
            m.buckets[0].1.fetch_add(1, Relaxed);
            m.consecutive_5xx.store(0, Relaxed);
            m.consecutive_gateway.store(0, Relaxed);
            return;
        }
        if matches!(code, 502..=504) {
            let n = m.consecutive_gateway.fetch_add(1, Relaxed) + 1;
            if n == self.config.consecutive_gateway_failure {
                self.post(host, Ejection::ConsecutiveGatewayFailure);
            }
        } else {
            m.consecutive_gateway.store(0, Relaxed);
        }
        let n = m.consecutive_5xx.fetch_add(1, Relaxed) + 1;
        if n == self.config.consecutive_5xx {
            self.post(host, Ejection::Consecutive5xx);
        }
    }

    fn local_origin(&self, host: &Arc<Host>, success: bool) {
        let m = host.health.outlier();
        m.buckets[1].0.fetch_add(1, Relaxed);
        if success {
            m.buckets[1].1.fetch_add(1, Relaxed);
            m.consecutive_local.store(0, Relaxed);
            return;
        }
        let n = m.consecutive_local.fetch_add(1, Relaxed) + 1;
        if n == self.config.consecutive_local_origin_failure {
            self.post(host, Ejection::ConsecutiveLocalOriginFailure);
        }
    }

    fn post(&self, host: &Arc<Host>, kind: Ejection) {
        // Fails only when the task has ended with its cluster; nothing is left to eject then.
        let _ = self.events.send((host.clone(), kind));
    }

    /// `[average, threshold]` of the last sweep for external, then local origin results.
    pub fn averages(&self) -> [f64; 4] {
        self.averages
            .each_ref()
            .map(|a| f64::from_bits(a.load(Relaxed)))
    }

    /// Sets `ejections_active` from the current hosts (an install may have removed some).
    pub(super) fn count_active(&self, hosts: &[Arc<Host>]) {
        let active = hosts
            .iter()
            .filter(|h| h.health.has(HealthFlag::FailedOutlierCheck))
            .count();
        self.stats.active.set(active as u64);
    }

    fn enforced(&self, kind: Ejection) -> bool {
        let c = &self.config;
        let percent = match kind {
            Ejection::Consecutive5xx => c.enforcing_consecutive_5xx,
            Ejection::ConsecutiveGatewayFailure => c.enforcing_consecutive_gateway_failure,
            Ejection::ConsecutiveLocalOriginFailure => c.enforcing_consecutive_local_origin_failure,
            Ejection::SuccessRate => c.enforcing_success_rate,
            Ejection::LocalOriginSuccessRate => c.enforcing_local_origin_success_rate,
            Ejection::FailurePercentage => c.enforcing_failure_percentage,
            Ejection::LocalOriginFailurePercentage => c.enforcing_failure_percentage_local_origin,
        };
        crate::random::below(100) < u64::from(percent)
    }

    /// Ejects `host` when the cluster's ejection budget and the enforcement roll allow it.
    /// True when the host's flag changed.
    fn eject(&self, host: &Host, kind: Ejection, hosts: &[Arc<Host>], now: Instant) -> bool {
        let c = &self.config;
        let active = hosts
            .iter()
            .filter(|h| h.health.has(HealthFlag::FailedOutlierCheck))
            .count();
        // Envoy 1.40 admits an ejection when the share ejected *after* it stays within the
        // budget (checked against Envoy: with the default 10%, a cluster of fewer than ten
        // hosts ejects none unless `always_eject_one_host`).
        let ejected_after = 100.0 * (active + 1) as f64 / hosts.len().max(1) as f64;
        let allowed = ejected_after <= f64::from(c.max_ejection_percent.min(100))
            || (c.always_eject_one_host && active == 0);
        if !allowed {
            self.stats.overflow.inc();
            return false;
        }
        if matches!(kind, Ejection::Consecutive5xx | Ejection::SuccessRate) {
            self.stats.total.inc();
        }
        if !self.enforced(kind) {
            return false;
        }
        host.health.set(HealthFlag::FailedOutlierCheck, true);
        self.stats.active.set(active as u64 + 1);
        self.stats.enforced_total.inc();
        self.stats.enforced[kind as usize].inc();
        let mut state = host.health.outlier().state();
        state.ejected_at = Some(now);
        // The multiplier stops growing once it covers max_ejection_time.
        if c.base_ejection_time * state.backoff < c.max_ejection_time + c.base_ejection_time {
            state.backoff += 1;
        }
        let jitter_ms = c.max_ejection_time_jitter.as_millis() as u64;
        state.jitter = Duration::from_millis(if jitter_ms == 0 {
            0
        } else {
            crate::random::below(jitter_ms)
        });
        tracing::debug!(target: "upstream", "outlier detection ejects {} ({})", host.authority, KINDS[kind as usize]);
        true
    }

    /// A consecutive-error threshold was reached on a request (handled on the task).
    fn on_consecutive(
        &self,
        host: &Arc<Host>,
        kind: Ejection,
        hosts: &[Arc<Host>],
        now: Instant,
    ) -> bool {
        if !hosts.iter().any(|h| Arc::ptr_eq(h, host))
            || host.health.has(HealthFlag::FailedOutlierCheck)
        {
            return false;
        }
        self.stats.detected[kind as usize].inc();
        let changed = self.eject(host, kind, hosts, now);
        let m = host.health.outlier();
        match kind {
            Ejection::Consecutive5xx => {
                self.stats.consecutive_5xx.inc();
                m.consecutive_5xx.store(0, Relaxed);
            }
            Ejection::ConsecutiveGatewayFailure => m.consecutive_gateway.store(0, Relaxed),
            _ => m.consecutive_local.store(0, Relaxed),
        }
        changed
    }

    /// The interval sweep: returns hosts whose ejection is over, then judges success rate and
    /// failure percentage over the interval just ended. True when any flag changed.
    fn on_interval(&self, hosts: &[Arc<Host>], now: Instant) -> bool {
        let c = &self.config;
        let mut changed = false;
        for host in hosts {
            let m = host.health.outlier();
            let mut state = m.state();
            if !host.health.has(HealthFlag::FailedOutlierCheck) {
                state.backoff = state.backoff.saturating_sub(1);
            } else if let Some(at) = state.ejected_at {
                let ejection =
                    (c.base_ejection_time * state.backoff).min(c.max_ejection_time) + state.jitter;
                if now.duration_since(at) >= ejection {
                    host.health.set(HealthFlag::FailedOutlierCheck, false);
                    // A host back from ejection starts its consecutive counts afresh.
                    m.consecutive_5xx.store(0, Relaxed);
                    m.consecutive_gateway.store(0, Relaxed);
                    changed = true;
                    tracing::debug!(target: "upstream", "outlier detection returns {}", host.authority);
                }
            }
            drop(state);
            m.set_success_rate(false, -1.0);
            m.set_success_rate(true, -1.0);
        }
        if changed {
            self.count_active(hosts);
        }
        let buckets: Vec<[(u64, u64); 2]> = hosts
            .iter()
            .map(|h| {
                let m = h.health.outlier();
                [m.take_bucket(false), m.take_bucket(true)]
            })
            .collect();
        for local in [false, true] {
            changed |= self.judge_rates(hosts, &buckets, local, now);
        }
        changed
    }

    /// Success-rate and failure-percentage ejection for one origin (external or local).
    fn judge_rates(
        &self,
        hosts: &[Arc<Host>],
        buckets: &[[(u64, u64); 2]],
        local: bool,
        now: Instant,
    ) -> bool {
        let c = &self.config;
        let slot = if local { 2 } else { 0 };
        for a in &self.averages[slot..slot + 2] {
            a.store((-1.0f64).to_bits(), Relaxed);
        }
        let n = hosts.len() as u64;
        if n < c.success_rate_minimum_hosts && n < c.failure_percentage_minimum_hosts {
            return false;
        }
        let mut for_sr = Vec::new();
        let mut for_fp = Vec::new();
        for (host, b) in hosts.iter().zip(buckets) {
            if host.health.has(HealthFlag::FailedOutlierCheck) {
                continue;
            }
            let (total, ok) = b[usize::from(local)];
            if total == 0 {
                continue;
            }
            let rate = ok as f64 * 100.0 / total as f64;
            if total
                >= c.success_rate_request_volume
                    .min(c.failure_percentage_request_volume)
            {
                host.health.outlier().set_success_rate(local, rate);
            }
            if total >= c.success_rate_request_volume {
                for_sr.push((host, rate));
            }
            if total >= c.failure_percentage_request_volume {
                for_fp.push((host, rate));
            }
        }
        let mut changed = false;
        if !for_sr.is_empty() && for_sr.len() as u64 >= c.success_rate_minimum_hosts {
            let (mean, threshold) = success_rate_threshold(
                &for_sr.iter().map(|(_, r)| *r).collect::<Vec<_>>(),
                f64::from(c.success_rate_stdev_factor) / 1000.0,
            );
            self.averages[slot].store(mean.to_bits(), Relaxed);
            self.averages[slot + 1].store(threshold.to_bits(), Relaxed);
            let kind = if local {
                Ejection::LocalOriginSuccessRate
            } else {
                Ejection::SuccessRate
            };
            for (host, rate) in &for_sr {
                if *rate < threshold {
                    self.stats.success_rate.inc();
                    self.stats.detected[kind as usize].inc();
                    changed |= self.eject(host, kind, hosts, now);
                }
            }
        }
        if !for_fp.is_empty() && for_fp.len() as u64 >= c.failure_percentage_minimum_hosts {
            let kind = if local {
                Ejection::LocalOriginFailurePercentage
            } else {
                Ejection::FailurePercentage
            };
            for (host, rate) in &for_fp {
                if 100.0 - rate >= f64::from(c.failure_percentage_threshold) {
                    self.stats.detected[kind as usize].inc();
                    changed |= self.eject(host, kind, hosts, now);
                }
            }
        }
        changed
    }
}

/// Envoy's success-rate outlier threshold: (mean, mean - factor * population standard
/// deviation).
fn success_rate_threshold(rates: &[f64], factor: f64) -> (f64, f64) {
    let n = rates.len() as f64;
    let mean = rates.iter().sum::<f64>() / n;
    let variance = rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n;
    (mean, mean - factor * variance.sqrt())
}

/// Runs a cluster's detector: consecutive-error posts and the interval sweep, until the
/// cluster is replaced or removed (the task holds it weakly; its channel closes with it).
pub fn spawn(cluster: &Arc<ClusterRuntime>) {
    let Some(detector) = &cluster.health.outlier else {
        return;
    };
    let Some(mut events) = detector
        .receiver
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    else {
        return;
    };
    let interval = detector.config.interval;
    let weak = Arc::downgrade(cluster);
    tokio::spawn(async move {
        // Envoy arms its timer once the detector exists: the first sweep is one interval in.
        let mut tick = tokio::time::interval_at(Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let event = tokio::select! {
                event = events.recv() => match event {
                    Some(event) => Some(event),
                    None => return,
                },
                _ = tick.tick() => None,
            };
            let Some(cluster) = weak.upgrade() else {
                return;
            };
            let Some(detector) = &cluster.health.outlier else {
                return;
            };
            let set = cluster.hosts();
            let now = Instant::now();
            let changed = match event {
                Some((host, kind)) => detector.on_consecutive(&host, kind, &set.hosts, now),
                None => detector.on_interval(&set.hosts, now),
            };
            drop(set);
            if changed {
                cluster.refresh_health();
            }
        }
    });
}

#[cfg(test)]
#[path = "outlier_tests.rs"]
mod tests;
