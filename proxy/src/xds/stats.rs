//! Envoy's stats for a subscription: `cluster_manager.cds.*`, `listener_manager.lds.*`, and
//! per route table `http.<stat_prefix>.rds.<name>.*`. The `version` gauge carries a hash of the
//! accepted version, the `version_text` text readout the version itself.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/overview/mgmt_server#xds-subscription-statistics

use crate::stats::{Counter, Gauge, Histogram, Store, TextReadout};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug)]
pub struct SubscriptionStats {
    pub attempt: Arc<Counter>,
    pub success: Arc<Counter>,
    pub rejected: Arc<Counter>,
    pub failure: Arc<Counter>,
    pub init_fetch_timeout: Arc<Counter>,
    /// CDS and RDS count reloads; Envoy's LDS does not have these two.
    config_reload: Option<(Arc<Counter>, Arc<Gauge>)>,
    update_time: Arc<Gauge>,
    update_duration: Arc<Histogram>,
    version: Arc<Gauge>,
    version_text: Arc<TextReadout>,
}

impl SubscriptionStats {
    pub fn cds(store: &Store) -> Self {
        Self::new(store, "cluster_manager.cds", true)
    }

    pub fn lds(store: &Store) -> Self {
        Self::new(store, "listener_manager.lds", false)
    }

    /// `http.<stat_prefix>.rds.<name>`; RDS also has `update_empty` (never counted: a route
    /// table response always holds the table).
    pub fn rds(store: &Store, stat_prefix: &str, name: &str) -> Self {
        let prefix = format!("http.{stat_prefix}.rds.{name}");
        store.counter(&format!("{prefix}.update_empty"));
        Self::new(store, &prefix, true)
    }

    /// `prefix` without the trailing dot: `cluster_manager.cds`.
    fn new(store: &Store, prefix: &str, reloads: bool) -> Self {
        let c = |s: &str| store.counter(&format!("{prefix}.{s}"));
        let g = |s: &str| store.gauge(&format!("{prefix}.{s}"));
        Self {
            attempt: c("update_attempt"),
            success: c("update_success"),
            rejected: c("update_rejected"),
            failure: c("update_failure"),
            init_fetch_timeout: c("init_fetch_timeout"),
            config_reload: reloads.then(|| (c("config_reload"), g("config_reload_time_ms"))),
            update_time: g("update_time"),
            update_duration: store.histogram(&format!("{prefix}.update_duration")),
            version: g("version"),
            version_text: store.text_readout(&format!("{prefix}.version_text")),
        }
    }

    /// An update was accepted; `reloaded` when it changed the configuration.
    pub fn accepted(&self, version: &str, started: Instant, reloaded: bool) {
        let now = epoch_ms();
        self.success.inc();
        self.update_time.set(now);
        self.update_duration
            .record(started.elapsed().as_secs_f64() * 1000.0);
        self.version.set(version_hash(version));
        self.version_text.set(version);
        if let (true, Some((count, time))) = (reloaded, &self.config_reload) {
            count.inc();
            time.set(now);
        }
    }

    pub fn refused(&self, started: Instant) {
        self.rejected.inc();
        self.update_duration
            .record(started.elapsed().as_secs_f64() * 1000.0);
    }
}

pub fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Envoy's `version` stat: the xxHash64 (seed 0) of the version string, so that dashboards
/// comparing proxies' versions see the same numbers.
pub fn version_hash(version: &str) -> u64 {
    xxhash_rust::xxh64::xxh64(version.as_bytes(), 0)
}
