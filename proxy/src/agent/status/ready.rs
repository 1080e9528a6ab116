//! `/healthz/ready`: pilot-agent's readiness algorithm, computed from the proxy's stats in this
//! process instead of by polling the admin API: the first CDS and LDS updates must have been
//! accepted, then the server LIVE with workers started; both are remembered once they pass.

use crate::server::Server;
use crate::stats::{Metric, Store};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// An extra readiness condition (the DNS proxy's name table, ...): `Err` is the reason.
pub type ReadinessCheck = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The cached parts of the algorithm: pilot-agent asks the proxy for its config status only
/// until the first update arrived, and for LIVE only until it was seen once (the proxy does
/// not go back from either without a restart).
#[derive(Debug)]
pub struct Readiness {
    config_received: AtomicBool,
    live_once: AtomicBool,
    /// When readiness first passed, counted from `started` (`istio_agent_startup_duration_seconds`).
    startup: Mutex<Option<Duration>>,
    started: Instant,
    last_ok: AtomicBool,
}

impl Readiness {
    pub fn new(started: Instant) -> Self {
        Self {
            config_received: AtomicBool::new(false),
            live_once: AtomicBool::new(false),
            startup: Mutex::new(None),
            started,
            last_ok: AtomicBool::new(false),
        }
    }

    /// The seconds from process start to the first LIVE, once known.
    pub fn startup_duration(&self) -> Option<Duration> {
        *self.startup.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs the probers in pilot-agent's order: the proxy's (config, then LIVE), then the
    /// extra checks. `terminated` is the reason the server is shutting down, if it is.
    pub fn check(
        &self,
        server: &Server,
        terminated: Option<&str>,
        extra: &[ReadinessCheck],
    ) -> Result<(), String> {
        self.check_config(&server.stats)?;
        if let Some(cause) = terminated {
            return Err(format!("server is terminated: {cause}"));
        }
        if !self.live_once.load(Ordering::Acquire) {
            check_live(&server.stats)?;
            self.live_once.store(true, Ordering::Release);
            let took = self.started.elapsed();
            *self.startup.lock().unwrap_or_else(|e| e.into_inner()) = Some(took);
            tracing::info!(target: "agent", "Readiness succeeded in {took:?}");
        }
        for check in extra {
            check()?;
        }
        Ok(())
    }

    /// Logs as pilot-agent does: every failure, and the first success after failures.
    pub fn record(&self, result: &Result<(), String>) {
        match result {
            Ok(()) => {
                if !self.last_ok.swap(true, Ordering::AcqRel) {
                    tracing::info!(target: "agent", "Envoy proxy is ready");
                }
            }
            Err(reason) => {
                self.last_ok.store(false, Ordering::Release);
                tracing::warn!(target: "agent", "Envoy proxy is NOT ready: {reason}");
            }
        }
    }

    fn check_config(&self, stats: &Store) -> Result<(), String> {
        if self.config_received.load(Ordering::Acquire) {
            return Ok(());
        }
        let s = UpdateStats::read(stats);
        let cds = s.cds_success > 0;
        let lds = s.lds_success > 0;
        if cds && lds {
            self.config_received.store(true, Ordering::Release);
            return Ok(());
        }
        Err(if !cds && !lds {
            format!("config not received from XDS server (is Istiod running?): {s}")
        } else if s.cds_rejected > 0 || s.lds_rejected > 0 {
            format!("config received from XDS server, but was rejected: {s}")
        } else {
            format!("config not fully received from XDS server: {s}")
        })
    }
}

/// The four counters pilot-agent reads with `/stats?usedonly&filter=...`; a stat that does not
/// exist or was never written reads as 0, as it is absent from that output.
struct UpdateStats {
    cds_success: u64,
    cds_rejected: u64,
    lds_success: u64,
    lds_rejected: u64,
}

impl UpdateStats {
    fn read(stats: &Store) -> Self {
        let v = |name: &str| used_value(stats, name).unwrap_or(0);
        Self {
            cds_success: v("cluster_manager.cds.update_success"),
            cds_rejected: v("cluster_manager.cds.update_rejected"),
            lds_success: v("listener_manager.lds.update_success"),
            lds_rejected: v("listener_manager.lds.update_rejected"),
        }
    }
}

impl std::fmt::Display for UpdateStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cds updates: {} successful, {} rejected; lds updates: {} successful, {} rejected",
            self.cds_success, self.cds_rejected, self.lds_success, self.lds_rejected
        )
    }
}

/// The value of a counter or gauge as `/stats?usedonly` shows it: `None` when never written.
fn used_value(stats: &Store, name: &str) -> Option<u64> {
    match stats.find(name)? {
        Metric::Counter(c) => Some(c.value()).filter(|v| *v > 0),
        Metric::Gauge(g) => g.used().then(|| g.value()),
        Metric::Histogram(_) | Metric::Text(_) => None,
    }
}

fn check_live(stats: &Store) -> Result<(), String> {
    let state = used_value(stats, "server.state");
    let workers = used_value(stats, "listener_manager.workers_started");
    // pilot-agent quotes the stats text it got when a line is missing.
    let seen = || {
        let mut text = String::new();
        if let Some(s) = state {
            text.push_str(&format!("server.state: {s}\n"));
        }
        if let Some(w) = workers {
            text.push_str(&format!("listener_manager.workers_started: {w}\n"));
        }
        text
    };
    let Some(state) = state else {
        return Err(format!(
            "failed to get readiness stats: server.state is not yet updated: {}",
            seen()
        ));
    };
    if workers.is_none() {
        return Err(format!(
            "failed to get readiness stats: listener_manager.workers_started is not yet updated: {}",
            seen()
        ));
    }
    if state != 0 {
        let name = match state {
            1 => "DRAINING",
            2 => "PRE_INITIALIZING",
            3 => "INITIALIZING",
            _ => "UNKNOWN",
        };
        return Err(format!("server is not live, current state is: {name}"));
    }
    if workers != Some(1) {
        return Err("workers have not yet started".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_then_live_then_cached() {
        let stats = Store::new();
        let r = Readiness::new(Instant::now());
        let e = r.check_config(&stats).expect_err("nothing yet");
        assert_eq!(
            e,
            "config not received from XDS server (is Istiod running?): cds updates: 0 \
             successful, 0 rejected; lds updates: 0 successful, 0 rejected"
        );
        // Looking must not create the stats.
        assert!(stats.find("cluster_manager.cds.update_success").is_none());
        stats.counter("cluster_manager.cds.update_success").inc();
        stats.counter("listener_manager.lds.update_rejected").inc();
        let e = r.check_config(&stats).expect_err("lds rejected");
        assert!(
            e.starts_with("config received from XDS server, but was rejected: "),
            "{e}"
        );
        stats.counter("listener_manager.lds.update_rejected");
        let fresh = Store::new();
        fresh.counter("cluster_manager.cds.update_success").inc();
        let e = r.check_config(&fresh).expect_err("lds missing");
        assert!(e.starts_with("config not fully received"), "{e}");
        stats.counter("listener_manager.lds.update_success").inc();
        assert_eq!(r.check_config(&stats), Ok(()));
        // Cached: a store without the counters passes now.
        assert_eq!(r.check_config(&Store::new()), Ok(()));

        let live = Store::new();
        assert!(check_live(&live)
            .expect_err("no state")
            .contains("server.state is not yet updated"));
        live.gauge("server.state").set(3);
        assert!(check_live(&live)
            .expect_err("no workers")
            .contains("workers_started is not yet updated: server.state: 3\n"));
        live.gauge("listener_manager.workers_started").set(1);
        assert_eq!(
            check_live(&live),
            Err("server is not live, current state is: INITIALIZING".to_string())
        );
        live.gauge("server.state").set(0);
        assert_eq!(check_live(&live), Ok(()));
    }
}
