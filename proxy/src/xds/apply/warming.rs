//! Warming: clusters wait for their endpoints and secrets, listeners for their route tables
//! and secrets, each until its initial fetch timeout; what is ready is activated, and the
//! warming gauges follow.

use super::Applier;
use crate::config::cluster::{Cluster, Discovery};
use crate::config::listener::Listener;
use crate::upstream::fed_by::FedBy;
use crate::xds::records::Kind;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// Clusters CDS brought that wait for their endpoints or secrets, by name, with when they
/// started waiting, and which of them each EDS service feeds.
#[derive(Debug, Default)]
pub(super) struct WarmingClusters {
    by_name: BTreeMap<String, (Arc<Cluster>, Instant)>,
    fed_by: FedBy,
}

impl WarmingClusters {
    pub(super) fn insert(&mut self, name: String, warming: (Arc<Cluster>, Instant)) {
        let cluster = warming.0.clone();
        if let Some(old) = self.by_name.insert(name, warming) {
            self.fed_by.remove(&old.0);
        }
        self.fed_by.add(&cluster);
    }

    pub(super) fn remove(&mut self, name: &str) -> Option<(Arc<Cluster>, Instant)> {
        let removed = self.by_name.remove(name)?;
        self.fed_by.remove(&removed.0);
        Some(removed)
    }

    pub(super) fn contains_key(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    pub(super) fn len(&self) -> usize {
        self.by_name.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&String, &(Arc<Cluster>, Instant))> {
        self.by_name.iter()
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &(Arc<Cluster>, Instant)> {
        self.by_name.values()
    }

    /// The warming clusters whose endpoints come from EDS under `service_name`.
    pub(super) fn fed_by<'a>(
        &'a self,
        service_name: &str,
    ) -> impl Iterator<Item = &'a Arc<Cluster>> {
        self.fed_by
            .names(service_name)
            .filter_map(|name| self.by_name.get(name).map(|(c, _)| c))
    }
}

impl Applier {
    /// `cluster_manager.warming_clusters` and `listener_manager.total_listeners_warming`. As in
    /// Envoy, listeners that warm during the server's initialisation are not counted: they are
    /// what the server waits for before it starts its workers.
    pub(super) fn count_warming(&self) {
        let warming = self.warming_clusters.len() as u64;
        self.clusters.stats.warming_clusters.set(warming);
        let listeners = if self.init.is_live() {
            self.warming_listeners.len() as u64
        } else {
            0
        };
        self.store
            .gauge("listener_manager.total_listeners_warming")
            .set(listeners);
    }

    /// Whether clusters are still warming (the cluster manager is not initialised yet).
    pub fn clusters_warming(&self) -> bool {
        !self.warming_clusters.is_empty()
    }

    pub fn listeners_warming(&self) -> bool {
        !self.warming_listeners.is_empty()
    }

    /// Whether one of the secrets a cluster or listener waits for is still missing after its
    /// source's initial fetch timeout; it then starts, and handshakes needing it fail.
    pub(super) fn secret_timed_out(
        &self,
        secrets: &[Arc<crate::config::slots::Slot<crate::config::tls::Secret>>],
        waited: std::time::Duration,
    ) -> bool {
        secrets
            .iter()
            .any(|s| s.get().is_none() && self.secret_slots.fetch_timed_out(&s.name, waited))
    }

    /// Ends warming that waited longer than the initial fetch timeout: the cluster starts with
    /// no endpoints, the listener with an empty route table (Envoy's behaviour on timeout).
    pub fn expire_warming(&mut self) {
        let now = Instant::now();
        let expired: Vec<String> = self
            .warming_clusters
            .iter()
            .filter(|(_, (c, since))| {
                let waited = now.duration_since(*since);
                let endpoints_timed_out = match &c.discovery {
                    Discovery::Eds {
                        initial_fetch_timeout: Some(t),
                        service_name,
                        ..
                    } => waited >= *t && !self.clusters.has_assignment(service_name),
                    _ => false,
                };
                let secret_timed_out = self.secret_timed_out(&c.transports.sds_secrets(), waited);
                endpoints_timed_out || secret_timed_out
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in expired {
            if let Some((cluster, _)) = self.warming_clusters.remove(&name) {
                self.clusters.add_or_update(cluster);
                self.records.promote(Kind::Cluster, &name);
            }
        }
        let expired: Vec<String> = self
            .warming_listeners
            .iter()
            .filter(|(_, (l, since))| {
                let waited = now.duration_since(*since);
                let route_timed_out = l.rds_routes().iter().any(|(slot, source)| {
                    slot.get().is_none()
                        && source.initial_fetch_timeout.is_some_and(|t| waited >= t)
                });
                let secret_timed_out = self.secret_timed_out(&l.sds_secrets(), waited);
                route_timed_out || secret_timed_out
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in expired {
            if let Some((listener, _)) = self.warming_listeners.remove(&name) {
                self.activate_listener(&name, listener);
            }
        }
        self.count_warming();
    }

    /// Whether a cluster has what it warms for: its EDS endpoints, and the secrets its
    /// transport sockets read (Envoy warms clusters on both).
    pub(super) fn cluster_ready(&self, cluster: &Cluster) -> bool {
        let endpoints = match &cluster.discovery {
            Discovery::Eds { service_name, .. } => self.clusters.has_assignment(service_name),
            _ => true,
        };
        endpoints
            && cluster
                .transports
                .sds_secrets()
                .iter()
                .all(|s| s.get().is_some())
    }

    /// Starts the warming clusters that have all they wait for.
    pub(super) fn activate_ready_clusters(&mut self) {
        let ready: Vec<String> = self
            .warming_clusters
            .iter()
            .filter(|(_, (c, _))| self.cluster_ready(c))
            .map(|(n, _)| n.clone())
            .collect();
        self.activate_clusters(ready);
    }

    /// Starts the warming clusters an assignment for `service_name` made ready.
    pub(super) fn activate_clusters_fed_by(&mut self, service_name: &str) {
        let ready: Vec<String> = self
            .warming_clusters
            .fed_by(service_name)
            .filter(|c| self.cluster_ready(c))
            .map(|c| c.name.clone())
            .collect();
        self.activate_clusters(ready);
    }

    fn activate_clusters(&mut self, ready: Vec<String>) {
        for name in ready {
            if let Some((cluster, _)) = self.warming_clusters.remove(&name) {
                self.clusters.add_or_update(cluster);
                self.records.promote(Kind::Cluster, &name);
            }
        }
    }

    /// Starts the warming listeners whose route tables and secrets have all arrived.
    pub(super) fn activate_ready_listeners(&mut self) {
        let ready: Vec<String> = self
            .warming_listeners
            .iter()
            .filter(|(_, (l, _))| l.dependencies_ready())
            .map(|(n, _)| n.clone())
            .collect();
        for name in ready {
            if let Some((listener, _)) = self.warming_listeners.remove(&name) {
                self.activate_listener(&name, listener);
            }
        }
    }

    pub(super) fn activate_listener(&mut self, name: &str, listener: Arc<Listener>) {
        match self.listeners.add_or_update(listener, false) {
            Ok(()) => self.records.promote(Kind::Listener, name),
            Err(e) => {
                tracing::warn!(target: "config", "listener '{name}' could not start after warming: {e}");
                self.records.remove(Kind::Listener, name);
            }
        }
    }
}
