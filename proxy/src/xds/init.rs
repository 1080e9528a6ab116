//! The server's initialisation over xDS: CDS first, LDS once the clusters are warm, LIVE once
//! the listeners are. Shared by every stream that carries CDS or LDS, because with per-type
//! `api_config_source`s they are different streams.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/operations/init

use super::records::Kind;
use crate::config::dynamic::ConfigSource;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

#[derive(Debug, Default)]
pub struct Init {
    /// CDS and LDS when a gRPC stream (aggregated or not) carries them; files are read before.
    cds: Option<ConfigSource>,
    lds: Option<ConfigSource>,
    /// When the initial fetch of each type started.
    started_at: BTreeMap<Kind, Instant>,
    /// Types whose first response arrived (accepted or not).
    responded: BTreeSet<Kind>,
    /// Types whose `init_fetch_timeout` was counted.
    timeout_counted: BTreeSet<Kind>,
    /// The initial clusters are warm (Envoy's cluster manager is initialised).
    clusters_initialized: bool,
    live: bool,
}

impl Init {
    pub fn new(config: &crate::config::Config) -> Self {
        let streamed = |s: &Option<ConfigSource>| s.clone().filter(|s| s.path.is_none());
        Self {
            cds: streamed(&config.dynamic.cds),
            lds: streamed(&config.dynamic.lds),
            ..Default::default()
        }
    }

    /// Whether a gRPC stream carries CDS or LDS (the server then waits for them).
    pub fn streamed(&self) -> bool {
        self.cds.is_some() || self.lds.is_some()
    }

    pub fn start(&mut self, kind: Kind) {
        self.started_at.entry(kind).or_insert_with(Instant::now);
    }

    pub fn started(&self, kind: Kind) -> bool {
        self.started_at.contains_key(&kind)
    }

    pub fn responded(&mut self, kind: Kind) {
        self.responded.insert(kind);
    }

    pub fn is_live(&self) -> bool {
        self.live
    }

    /// Whether the initial clusters are warm: clusters that come later warm on their own
    /// (and hold their CDS answer), not as part of the server's initialisation.
    pub fn clusters_initialized(&self) -> bool {
        self.clusters_initialized
    }

    fn source(&self, kind: Kind) -> Option<&ConfigSource> {
        match kind {
            Kind::Cluster => self.cds.as_ref(),
            Kind::Listener => self.lds.as_ref(),
            _ => None,
        }
    }

    fn timed_out(&self, kind: Kind) -> bool {
        matches!(
            (self.source(kind).and_then(|s| s.initial_fetch_timeout), self.started_at.get(&kind)),
            (Some(t), Some(at)) if at.elapsed() >= t
        )
    }

    /// The first fetch of `kind` is over: answered, timed out, or not streamed at all.
    pub fn fetched(&self, kind: Kind) -> bool {
        self.source(kind).is_none() || self.responded.contains(&kind) || self.timed_out(kind)
    }

    /// The types whose first fetch has just timed out (each reported once, to count
    /// `init_fetch_timeout`).
    pub fn new_timeouts(&mut self) -> Vec<Kind> {
        let mut out = Vec::new();
        for kind in [Kind::Cluster, Kind::Listener] {
            if !self.responded.contains(&kind)
                && !self.timeout_counted.contains(&kind)
                && self.timed_out(kind)
            {
                self.timeout_counted.insert(kind);
                out.push(kind);
            }
        }
        out
    }

    /// LDS starts once the clusters are initialised; LIVE follows once the listeners are.
    /// Returns true when the server has just become LIVE.
    pub fn advance(&mut self, clusters_warming: bool, listeners_warming: bool) -> bool {
        if self.live {
            return false;
        }
        let clusters_done = self.fetched(Kind::Cluster) && !clusters_warming;
        self.clusters_initialized |= clusters_done;
        // Its initial fetch timeout then runs even while the control plane is unreachable.
        if self.lds.is_some() && clusters_done {
            self.start(Kind::Listener);
        }
        if clusters_done && self.fetched(Kind::Listener) && !listeners_warming {
            self.live = true;
            return true;
        }
        false
    }
}
