//! Host health: which hosts of a cluster take traffic, and how that changes without a lock or
//! a scan on the request path.
//!
//! A host's health is a set of flags in one atomic on the [`Host`] (Envoy's health flags:
//! failed active health check, failed outlier check, ...); a host with none set is healthy.
//! Whoever changes a flag (the outlier detector, active health checking) rebuilds
//! the cluster's [`HostSet`] afterwards: the set keeps every host (for `/clusters` and the
//! stats) and a balancer built over the healthy ones, and is swapped in whole through the
//! cluster's `ArcSwap`, so a pick reads one pointer and a prebuilt structure. Rebuilds (flag
//! changes and discovery updates alike) take one mutex so a slow one never overwrites a newer
//! set; none of them runs on a request.
//!
//! Priority levels and panic (`common_lb_config.healthy_panic_threshold`, default 50%): the set
//! splits load between priorities by their overprovisioned health and puts a level in panic
//! (all its hosts, healthy or not, counting `lb_healthy_panic` per pick) as Envoy does; the
//! arithmetic is `priority.rs`. A threshold of 0 disables panic mode.
//! https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/load_balancing/panic_threshold
//!
//! EDS `health_status`: endpoints an assignment marks UNHEALTHY, DRAINING or TIMEOUT are left
//! out when the assignment is translated (as before this module); they do not count towards
//! the panic threshold and `/clusters` does not list them.

use super::host::{Host, HostSet, PriorityPolicy, Standing};
use crate::config::cluster::Cluster;
use crate::stats::{Counter, Gauge, Store};
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Envoy's host health flags, in the order `/clusters` prints them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum HealthFlag {
    FailedActiveHc = 1,
    FailedOutlierCheck = 2,
    /// The last active check passed with `x-envoy-degraded`: not healthy, not failed.
    DegradedActiveHc = 4,
    /// A check failed with `x-envoy-immediate-health-check-fail`: the host is left out of
    /// the cluster entirely (not counted for the panic threshold) until it passes again.
    ExcludedViaImmediateHcFail = 8,
    /// The last failed check timed out; informational (`/clusters`), no effect on balancing.
    ActiveHcTimeout = 16,
    /// The endpoint's EDS `health_status` is UNHEALTHY or TIMEOUT.
    FailedEdsHealth = 32,
    /// EDS says DEGRADED: served from the degraded list.
    DegradedEdsHealth = 64,
    /// EDS says DRAINING: left out of balancing, as an excluded host.
    EdsStatusDraining = 128,
}

impl HealthFlag {
    const ALL: [(HealthFlag, &'static str); 8] = [
        (HealthFlag::FailedActiveHc, "/failed_active_hc"),
        (HealthFlag::FailedOutlierCheck, "/failed_outlier_check"),
        (HealthFlag::FailedEdsHealth, "/failed_eds_health"),
        (HealthFlag::DegradedActiveHc, "/degraded_active_hc"),
        (HealthFlag::DegradedEdsHealth, "/degraded_eds_health"),
        (
            HealthFlag::ExcludedViaImmediateHcFail,
            "/excluded_via_immediate_hc_fail",
        ),
        (HealthFlag::ActiveHcTimeout, "/active_hc_timeout"),
        (HealthFlag::EdsStatusDraining, "/eds_status_draining"),
    ];

    /// The flag an endpoint's EDS `health_status` sets, if any (UNKNOWN and HEALTHY: none).
    pub fn of_eds(status: crate::config::cluster::EdsHealth) -> Option<HealthFlag> {
        use crate::config::cluster::EdsHealth;
        match status {
            EdsHealth::Healthy => None,
            EdsHealth::Unhealthy => Some(HealthFlag::FailedEdsHealth),
            EdsHealth::Degraded => Some(HealthFlag::DegradedEdsHealth),
            EdsHealth::Draining => Some(HealthFlag::EdsStatusDraining),
        }
    }
}

/// Flags that only inform: a host with just these is healthy.
const INFORMATIONAL: u32 = HealthFlag::ActiveHcTimeout as u32;

/// The per-host state health features keep: the flags, and the outlier detector's monitor.
#[derive(Debug, Default)]
pub struct HostHealth {
    flags: AtomicU32,
    /// Made by the cluster's outlier detector when it first sees the host: most clusters
    /// have no detector, and a mesh has tens of thousands of hosts.
    outlier: OnceLock<Box<super::outlier::HostMonitor>>,
}

impl HostHealth {
    /// A host whose active checks have yet to pass (clusters with health checks).
    pub(super) fn failing_active_hc() -> Self {
        let health = Self::default();
        health.set(HealthFlag::FailedActiveHc, true);
        health
    }

    pub fn healthy(&self) -> bool {
        self.flags.load(Ordering::Acquire) & !INFORMATIONAL == 0
    }

    /// Envoy's coarse health: a failed or excluded host is out of the healthy list; one whose
    /// only flag is degradation serves from the degraded list.
    pub(super) fn standing(&self) -> Standing {
        let flags = self.flags.load(Ordering::Acquire) & !INFORMATIONAL;
        let excluded =
            HealthFlag::ExcludedViaImmediateHcFail as u32 | HealthFlag::EdsStatusDraining as u32;
        let degraded = HealthFlag::DegradedActiveHc as u32 | HealthFlag::DegradedEdsHealth as u32;
        if flags & excluded != 0 {
            Standing::Excluded
        } else if flags == 0 {
            Standing::Healthy
        } else if flags & !degraded == 0 {
            Standing::Degraded
        } else {
            Standing::Unhealthy
        }
    }

    /// The EDS health status the flags record.
    pub(super) fn eds(&self) -> crate::config::cluster::EdsHealth {
        use crate::config::cluster::EdsHealth;
        if self.has(HealthFlag::FailedEdsHealth) {
            EdsHealth::Unhealthy
        } else if self.has(HealthFlag::DegradedEdsHealth) {
            EdsHealth::Degraded
        } else if self.has(HealthFlag::EdsStatusDraining) {
            EdsHealth::Draining
        } else {
            EdsHealth::Healthy
        }
    }

    /// Sets the flag of an EDS health status (clearing the others).
    pub(super) fn set_eds(&self, status: crate::config::cluster::EdsHealth) {
        let wanted = HealthFlag::of_eds(status);
        for flag in [
            HealthFlag::FailedEdsHealth,
            HealthFlag::DegradedEdsHealth,
            HealthFlag::EdsStatusDraining,
        ] {
            self.set(flag, Some(flag) == wanted);
        }
    }

    pub fn has(&self, flag: HealthFlag) -> bool {
        self.flags.load(Ordering::Acquire) & flag as u32 != 0
    }

    /// Sets or clears `flag`; true when that changed it. The caller rebuilds the host set.
    pub(super) fn set(&self, flag: HealthFlag, on: bool) -> bool {
        let bit = flag as u32;
        let before = if on {
            self.flags.fetch_or(bit, Ordering::AcqRel)
        } else {
            self.flags.fetch_and(!bit, Ordering::AcqRel)
        };
        (before & bit != 0) != on
    }

    /// `/clusters`' `health_flags`: `healthy`, or each set flag as `/name`, in Envoy's order.
    pub fn flags_text(&self) -> String {
        let flags = self.flags.load(Ordering::Acquire);
        if flags & !INFORMATIONAL == 0 {
            return "healthy".into();
        }
        HealthFlag::ALL
            .iter()
            .filter(|(f, _)| flags & *f as u32 != 0)
            .map(|(_, name)| *name)
            .collect()
    }

    /// The success rate of the last outlier detection interval (`/clusters`' `success_rate`),
    /// -1 when there was too little traffic or no detection.
    pub fn success_rate(&self) -> f64 {
        self.outlier.get().map_or(-1.0, |m| m.success_rate(false))
    }

    /// As [`Self::success_rate`], for locally originated results.
    pub fn local_origin_success_rate(&self) -> f64 {
        self.outlier.get().map_or(-1.0, |m| m.success_rate(true))
    }

    /// The outlier detector's record of this host (only the detector calls this).
    pub(super) fn outlier(&self) -> &super::outlier::HostMonitor {
        self.outlier.get_or_init(Box::default)
    }
}

/// The health side of a cluster: its outlier detector, its active checker and the one path
/// host sets are installed through.
pub struct ClusterHealth {
    /// Boxed: most clusters have none, and a detector is a few hundred bytes.
    pub(super) outlier: Option<Box<super::outlier::Detector>>,
    pub(super) active: Option<super::health_check::ActiveChecker>,
    panic_threshold: f64,
    locality_weighted: bool,
    lb_healthy_panic: Arc<Counter>,
    membership_healthy: Arc<Gauge>,
    membership_degraded: Arc<Gauge>,
    membership_excluded: Arc<Gauge>,
    /// Serialises installs, so a flag change and a discovery update never lose each other.
    install: Mutex<()>,
}

impl std::fmt::Debug for ClusterHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterHealth").finish_non_exhaustive()
    }
}

impl ClusterHealth {
    pub(super) fn new(
        config: &Cluster,
        store: &Arc<Store>,
        membership_healthy: Arc<Gauge>,
    ) -> Self {
        let prefix = format!("cluster.{}.", config.stat_name);
        Self {
            outlier: config
                .outlier
                .as_ref()
                .map(|o| Box::new(super::outlier::Detector::new(o.clone(), store, &prefix))),
            active: config
                .health_check
                .as_ref()
                .map(|h| super::health_check::ActiveChecker::new(h.clone(), store, &prefix)),
            panic_threshold: config.panic_threshold,
            locality_weighted: config.locality_weighted,
            lb_healthy_panic: store.counter(&format!("{prefix}lb_healthy_panic")),
            membership_healthy,
            membership_degraded: store.gauge(&format!("{prefix}membership_degraded")),
            membership_excluded: store.gauge(&format!("{prefix}membership_excluded")),
            install: Mutex::new(()),
        }
    }

    /// Feeds one result of `host` to the outlier detector, when the cluster has one (request
    /// path: a few atomics).
    #[inline]
    pub fn report(&self, host: &Arc<Host>, result: super::outlier::HostResult) {
        if let Some(detector) = &self.outlier {
            detector.report(host, result);
        }
    }

    /// The outlier detector's last success-rate mean and threshold (external, then local
    /// origin), when the cluster has a detector.
    pub fn outlier_averages(&self) -> Option<[f64; 4]> {
        self.outlier.as_ref().map(|d| d.averages())
    }

    /// Builds and swaps in a host set over `hosts`: priority loads and a balancer per level
    /// (`HostSet::build`). Off the request path (discovery, health changes).
    pub(super) fn install(
        &self,
        slot: &ArcSwap<HostSet>,
        hosts: Vec<Arc<Host>>,
        policy: &crate::config::load_balancing::LbPolicy,
        priorities: PriorityPolicy,
    ) {
        let _guard = self.install.lock().unwrap_or_else(|e| e.into_inner());
        self.install_locked(slot, hosts, policy, priorities);
    }

    /// Rebuilds the current set after a flag changed.
    pub(super) fn refresh(
        &self,
        slot: &ArcSwap<HostSet>,
        policy: &crate::config::load_balancing::LbPolicy,
    ) {
        let _guard = self.install.lock().unwrap_or_else(|e| e.into_inner());
        let current = slot.load();
        let (hosts, priorities) = (current.hosts.clone(), current.priorities);
        self.install_locked(slot, hosts, policy, priorities);
    }

    fn install_locked(
        &self,
        slot: &ArcSwap<HostSet>,
        hosts: Vec<Arc<Host>>,
        policy: &crate::config::load_balancing::LbPolicy,
        priorities: PriorityPolicy,
    ) {
        // Envoy counts healthy hosts of every priority.
        let healthy = hosts.iter().filter(|h| h.health.healthy()).count();
        self.membership_healthy.set(healthy as u64);
        let standing = |s: Standing| hosts.iter().filter(|h| h.health.standing() == s).count();
        self.membership_degraded
            .set(standing(Standing::Degraded) as u64);
        self.membership_excluded
            .set(standing(Standing::Excluded) as u64);
        if let Some(detector) = &self.outlier {
            detector.count_active(&hosts);
        }
        if let Some(active) = &self.active {
            active.installed(&hosts);
        }
        let set = HostSet::build(
            hosts,
            policy,
            priorities,
            self.panic_threshold,
            self.locality_weighted,
            &self.lb_healthy_panic,
            |h| h.health.standing(),
        );
        slot.store(Arc::new(set));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_print_as_envoy_does() {
        let h = HostHealth::default();
        assert_eq!(h.flags_text(), "healthy");
        assert!(h.set(HealthFlag::FailedOutlierCheck, true));
        assert!(!h.set(HealthFlag::FailedOutlierCheck, true));
        assert!(h.set(HealthFlag::FailedActiveHc, true));
        assert_eq!(h.flags_text(), "/failed_active_hc/failed_outlier_check");
        assert!(h.set(HealthFlag::FailedActiveHc, false));
        assert!(!h.healthy());
        assert!(h.set(HealthFlag::FailedOutlierCheck, false));
        assert!(h.healthy());
        // A timeout flag alone informs, it does not make the host unhealthy.
        h.set(HealthFlag::ActiveHcTimeout, true);
        assert!(h.healthy());
        assert_eq!(h.flags_text(), "healthy");
        h.set(HealthFlag::FailedActiveHc, true);
        h.set(HealthFlag::ExcludedViaImmediateHcFail, true);
        assert_eq!(
            h.flags_text(),
            "/failed_active_hc/excluded_via_immediate_hc_fail/active_hc_timeout"
        );
    }
}
