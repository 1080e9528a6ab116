//! How a stream moves on after each response: the names EDS and RDS need, LDS once the
//! clusters are initialised, and the server's initialisation (PRE_INITIALIZING,
//! INITIALIZING, LIVE).

use super::{holds_cds_answer, AdsClient, Kind, Outbound, Role, ServerState};
use xds_proto::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;

impl AdsClient {
    /// After each response: follow the names EDS and RDS need, start LDS once clusters are
    /// initialised, and report LIVE once everything initial is warm.
    pub(super) fn progress(&mut self, out: &Outbound) {
        let wanted = match &self.role {
            Role::Aggregated => {
                let applier = self.applier();
                vec![
                    (Kind::Endpoint, applier.wanted_endpoints(None)),
                    (
                        Kind::Route,
                        applier.wanted_routes(&self.static_listeners, None),
                    ),
                    (Kind::Secret, self.secrets.names_from(None)),
                ]
            }
            Role::Secrets => vec![(Kind::Secret, self.secrets.names_from(Some(&self.ads)))],
            // One resource, or a wildcard type: the names never change on the stream.
            Role::Single(..) => Vec::new(),
        };
        for (kind, wanted) in wanted {
            let sub = self.sub(kind);
            if wanted == sub.names {
                continue;
            }
            if wanted.is_empty() && !self.ads.delta {
                continue;
            }
            let sub = self.sub(kind);
            let before = std::mem::replace(&mut sub.names, wanted.clone());
            if !wanted.is_empty() {
                self.start(kind);
            }
            if !self.subscriptions[&kind].started {
                continue;
            }
            match out {
                Outbound::Sotw(_) => {
                    // An empty name list would mean "everything" in the state of the world, so
                    // the last names stay subscribed (Envoy too keeps them until the listeners
                    // using them are gone after draining).
                    if !wanted.is_empty() {
                        self.send_subscription(kind, out, false);
                    }
                }
                Outbound::Delta(tx) => {
                    let subscribe: Vec<String> = wanted.difference(&before).cloned().collect();
                    let unsubscribe: Vec<String> = before.difference(&wanted).cloned().collect();
                    let held = &mut self.sub(kind).held;
                    for name in &unsubscribe {
                        held.remove(name);
                    }
                    let node = self.node_for_request();
                    let _ = tx.send(DeltaDiscoveryRequest {
                        node,
                        type_url: kind.type_url().to_string(),
                        resource_names_subscribe: subscribe,
                        resource_names_unsubscribe: unsubscribe,
                        ..Default::default()
                    });
                }
            }
        }
        if self.held_cds.is_some() && !holds_cds_answer(&self.applier()) {
            if let Some(held) = self.held_cds.take() {
                let node = self.node_for_request();
                let cds = Kind::Cluster.type_url();
                self.send_ack(out, cds, held.version, &held.nonce, node, held.error);
            }
        }
        let lds_started = self.subscriptions[&Kind::Listener].started;
        self.progress_init();
        if !lds_started && self.subscriptions[&Kind::Listener].started {
            self.send_subscription(Kind::Listener, out, false);
        }
    }

    /// Advances the server's initialisation (shared by the streams carrying CDS and LDS):
    /// counts initial fetch timeouts, starts LDS once the clusters are warm, and reports LIVE
    /// once the listeners are (once; later warming does not take the server back).
    pub(super) fn progress_init(&mut self) {
        let drives = match &self.role {
            Role::Aggregated => true,
            Role::Single(kind, _) => matches!(kind, Kind::Cluster | Kind::Listener),
            // Secret streams do not take part in the server's initialisation.
            Role::Secrets => false,
        };
        if !drives {
            return;
        }
        let (became_live, lds_started, clusters_initialized) = {
            let mut applier = self.applier();
            for kind in applier.init.new_timeouts() {
                if let Some(stats) = applier.type_stats(kind) {
                    stats.init_fetch_timeout.inc();
                }
            }
            let (clusters, listeners) = (applier.clusters_warming(), applier.listeners_warming());
            let live = applier.init.advance(clusters, listeners);
            (
                live,
                applier.init.started(Kind::Listener),
                applier.init.clusters_initialized(),
            )
        };
        // Envoy's server stays PRE_INITIALIZING while the cluster manager initialises (CDS and
        // the clusters' EDS), then INITIALIZING while the listeners warm.
        if clusters_initialized && self.server.state() == ServerState::PreInitializing {
            self.server.set_state(ServerState::Initializing);
        }
        if lds_started && self.lds.is_some() {
            self.start(Kind::Listener);
        }
        if became_live {
            self.server.go_live();
            tracing::info!(target: "main", "all dependencies initialized. starting workers");
        }
    }
}
