//! What a translator may look up while compiling a resource: the cluster slots routes point
//! at, which clusters exist now, and static runtime values. All of it is resolved at config
//! time so the data path never looks up by name.

use super::bootstrap::RuntimeLayer;
use super::route::RouteConfig;
use super::slots::{Slot, Slots};
use crate::upstream::ClusterRuntime;
use std::collections::HashSet;
use std::sync::Arc;

#[derive(Clone, Copy)]
pub struct Resolver<'a> {
    /// The slot every cluster name resolves to, whether or not the cluster exists yet.
    pub slots: &'a Slots<ClusterRuntime>,
    /// The slot every RDS route configuration name resolves to.
    pub route_slots: &'a Slots<RouteConfig>,
    /// The clusters that exist when the resource is translated (`validate_clusters`).
    pub known_clusters: &'a HashSet<String>,
    pub runtime: &'a [RuntimeLayer],
    /// The slot every SDS secret name resolves to.
    pub secrets: &'a super::tls::SecretSlots,
    /// The bootstrap node as Istio's filters read it.
    pub local: &'a Arc<super::istio_node::LocalWorkload>,
    /// The resource is (in) a listener with `traffic_direction: INBOUND`.
    pub inbound: bool,
    /// The resource is (in) a listener with `traffic_direction: OUTBOUND` (egress spans).
    pub outbound: bool,
    /// The bootstrap's tracing provider and the node's facts spans carry.
    pub tracing: &'a super::tracing::TracingDefaults,
}

impl Resolver<'_> {
    pub fn tls(&self) -> super::tls::TlsResolve<'_> {
        super::tls::TlsResolve {
            secrets: self.secrets,
        }
    }

    pub fn cluster_slot(&self, name: &str) -> Arc<Slot<ClusterRuntime>> {
        self.slots.slot(name)
    }

    pub fn route_slot(&self, name: &str) -> Arc<Slot<RouteConfig>> {
        self.route_slots.slot(name)
    }

    pub fn cluster_exists(&self, name: &str) -> bool {
        self.known_clusters.contains(name)
    }

    /// The value of a runtime key: the last layer that sets it wins (Envoy's layering).
    pub fn runtime(&self, key: &str) -> Option<&serde_json::Value> {
        self.runtime
            .iter()
            .rev()
            .find_map(|layer| layer.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v))
    }

    /// A runtime key read as an unsigned integer (Envoy's `getInteger`).
    pub fn runtime_u64(&self, key: &str) -> Option<u64> {
        match self.runtime(key)? {
            serde_json::Value::Number(n) => n.as_u64().or_else(|| n.as_f64().map(|f| f as u64)),
            serde_json::Value::String(s) => s.parse().ok(),
            _ => None,
        }
    }
}
