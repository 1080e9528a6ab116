//! The top of the translation: a Bootstrap becomes a [`Config`].
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/bootstrap/v3/bootstrap.proto

use super::address::{resolved, Endpoint};
use super::cluster::{translate_cluster, Cluster};
use super::dynamic::{dynamic_resources, DynamicResources};
use super::error::{FieldPath, Result};
use super::fields::{check, Acknowledged};
use super::listener::{translate_listener, Listener};
use super::route::RouteConfig;
use super::slots::Slots;
use crate::upstream::ClusterRuntime;
use std::collections::HashSet;
use std::sync::Arc;
use xds_proto::pb::envoy::config::bootstrap::v3::{runtime_layer::LayerSpecifier, Bootstrap};

/// A validated configuration, ready to run.
#[derive(Debug)]
pub struct Config {
    pub node: NodeInfo,
    pub admin_address: Option<Endpoint>,
    pub listeners: Vec<Arc<Listener>>,
    pub clusters: Vec<Arc<Cluster>>,
    /// The slots routes resolved their cluster names to; the cluster manager fills them.
    pub cluster_slots: Arc<Slots<ClusterRuntime>>,
    /// The slots HTTP connection managers resolved their RDS names to.
    pub route_slots: Arc<Slots<RouteConfig>>,
    /// The slots TLS contexts resolved their SDS secret names to, static secrets filled in;
    /// the xDS client fills the rest as SDS delivers.
    pub secret_slots: Arc<super::tls::SecretSlots>,
    /// The ADS stream and the LDS/CDS sources, when the bootstrap has `dynamic_resources`.
    pub dynamic: DynamicResources,
    pub runtime: Vec<RuntimeLayer>,
    /// `stats_config`: tag extractors and the stats matcher, compiled.
    pub stats: Arc<crate::stats::StatsConfig>,
    /// The bootstrap's tracing provider, which connection managers fall back on (xDS ones too).
    pub tracing: super::tracing::TracingDefaults,
    /// Fields accepted without being acted on; logged at startup and by `--mode validate`.
    pub acknowledged: Vec<Acknowledged>,
}

#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    pub id: String,
    pub cluster: String,
    pub zone: String,
    /// The node as Istio's metadata exchange and metrics see it.
    pub workload: Arc<super::istio_node::LocalWorkload>,
}

/// A static runtime layer: its name and its flattened `key: value` entries.
#[derive(Debug, Clone)]
pub struct RuntimeLayer {
    pub name: String,
    pub entries: Vec<(String, serde_json::Value)>,
}

pub fn translate_bootstrap(b: &Bootstrap) -> Result<Config> {
    let root = FieldPath::root("");
    let mut acks = Vec::new();
    // Static listeners and clusters are checked by their own translators below.
    let mut top = b.clone();
    if let Some(sr) = top.static_resources.as_mut() {
        sr.listeners.clear();
        sr.clusters.clear();
        sr.secrets.clear();
    }
    check(&top, &root, &mut acks)?;
    let node = b.node.as_ref().map(|n| NodeInfo {
        id: n.id.clone(),
        cluster: n.cluster.clone(),
        zone: n
            .locality
            .as_ref()
            .map(|l| l.zone.clone())
            .unwrap_or_default(),
        workload: Arc::new(super::istio_node::LocalWorkload::new(
            &n.id,
            n.metadata.as_ref(),
            n.locality.as_ref().map_or("", |l| l.region.as_str()),
            n.locality.as_ref().map_or("", |l| l.zone.as_str()),
        )),
    });
    let local = node
        .as_ref()
        .map(|n| n.workload.clone())
        .unwrap_or_default();
    let admin_address = match b.admin.as_ref() {
        Some(admin) if admin.address.is_some() => Some(resolved(
            admin.address.as_ref(),
            &root.field("admin").field("address"),
        )?),
        _ => None,
    };
    let statics = b.static_resources.clone().unwrap_or_default();
    let sr = root.field("static_resources");

    let secret_slots = Arc::new(super::tls::SecretSlots::default());
    for (i, s) in statics.secrets.iter().enumerate() {
        let path = sr.field("secrets").index(i);
        let secret = super::tls::translate_secret(s, &path, &mut acks)?;
        let slot = secret_slots.slot(&s.name);
        if slot.get().is_some() {
            return Err(path.field("name").error(format!(
                "Duplicate static TlsCertificate secret name {}",
                s.name
            )));
        }
        slot.set(Some(Arc::new(secret)));
    }
    let mut clusters = Vec::with_capacity(statics.clusters.len());
    let mut known_clusters = HashSet::new();
    for (i, c) in statics.clusters.iter().enumerate() {
        let path = sr.field("clusters").index(i);
        let cluster = translate_cluster(c, &path, &secret_slots, &mut acks)?;
        if !known_clusters.insert(cluster.name.clone()) {
            return Err(path.field("name").error(format!(
                "cluster manager: duplicate cluster '{}' found",
                cluster.name
            )));
        }
        clusters.push(Arc::new(cluster));
    }
    let runtime = runtime_layers(b, &root)?;
    let cluster_slots = Arc::new(Slots::default());
    let route_slots = Arc::new(Slots::default());
    let dynamic = match &b.dynamic_resources {
        Some(d) => dynamic_resources(d, &root.field("dynamic_resources"), &known_clusters)?,
        None => DynamicResources::default(),
    };
    let stats = Arc::new(super::stats::translate_stats_config(
        b.stats_config.as_ref(),
        &root.field("stats_config"),
    )?);
    let no_tracing = super::tracing::TracingDefaults::default();
    let mut resolve = super::resolver::Resolver {
        slots: &cluster_slots,
        route_slots: &route_slots,
        known_clusters: &known_clusters,
        runtime: &runtime,
        secrets: &secret_slots,
        local: &local,
        inbound: false,
        outbound: false,
        tracing: &no_tracing,
    };
    let node_facts =
        Arc::new(
            node.as_ref()
                .map_or_else(Default::default, |n| super::tracing::NodeFacts {
                    id: n.id.clone(),
                    cluster: n.cluster.clone(),
                    zone: n.zone.clone(),
                }),
        );
    #[allow(deprecated)] // Istio's bootstrap still configures the default tracer here.
    let bootstrap_tracing = b.tracing.as_ref();
    let tracing = super::tracing::translate_bootstrap_tracing(
        bootstrap_tracing,
        &root.field("tracing"),
        &resolve,
        node_facts,
        &mut acks,
    )?;
    resolve.tracing = &tracing;

    let mut listeners: Vec<Arc<Listener>> = Vec::with_capacity(statics.listeners.len());
    for (i, l) in statics.listeners.iter().enumerate() {
        let path = sr.field("listeners").index(i);
        let listener = translate_listener(l, &path, &resolve, &mut acks)?;
        if listeners.iter().any(|other| other.name == listener.name) {
            // Envoy 1.40 keeps the first listener of a name and skips later ones.
            acks.push(Acknowledged {
                path: path.to_string(),
                reason: "a static listener of the same name comes first; this one is skipped, as Envoy does",
            });
            continue;
        }
        if let Some(other) = listeners
            .iter()
            .find(|o| o.address == listener.address && !is_port_zero(&o.address))
        {
            return Err(path.field("address").error(format!(
                "error adding listener '{}': listener '{}' has duplicate address '{}' as existing listener",
                listener.address, listener.name, other.address
            )));
        }
        listeners.push(Arc::new(listener));
    }

    Ok(Config {
        node: node.unwrap_or_default(),
        admin_address,
        listeners,
        clusters,
        cluster_slots,
        route_slots,
        secret_slots,
        dynamic,
        runtime,
        stats,
        tracing,
        acknowledged: acks,
    })
}

fn is_port_zero(address: &Endpoint) -> bool {
    matches!(address, Endpoint::Tcp(a) if a.port() == 0)
}

fn runtime_layers(b: &Bootstrap, root: &FieldPath) -> Result<Vec<RuntimeLayer>> {
    let Some(lr) = b.layered_runtime.as_ref() else {
        return Ok(Vec::new());
    };
    let mut layers = Vec::new();
    for (i, layer) in lr.layers.iter().enumerate() {
        let path = root.field("layered_runtime").field("layers").index(i);
        if layers.iter().any(|l: &RuntimeLayer| l.name == layer.name) {
            return Err(path
                .field("name")
                .error(format!("duplicate layer name: {}", layer.name)));
        }
        let mut entries = Vec::new();
        if layer.layer_specifier.is_none() {
            return Err(path.field("layer_specifier").error("is required"));
        }
        if let Some(LayerSpecifier::StaticLayer(s)) = &layer.layer_specifier {
            let json =
                xds_proto::to_json_value(s).map_err(|e| path.field("static_layer").error(e))?;
            flatten("", &json, &mut entries);
        }
        layers.push(RuntimeLayer {
            name: layer.name.clone(),
            entries,
        });
    }
    Ok(layers)
}

/// Envoy flattens nested runtime objects into dotted keys.
fn flatten(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, serde_json::Value)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => out.push((prefix.to_string(), other.clone())),
    }
}
