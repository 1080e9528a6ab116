//! Dynamic configuration from a control plane over ADS: the stream client, the application of
//! resources (with warming), and the records `/config_dump` shows.

mod acknowledged;
mod ads;
pub mod agent_types;
pub mod apply;
mod files;
pub mod google_grpc;
mod init;
pub mod records;
mod stats;

pub use agent_types::{AgentType, AgentTypes};
pub use records::{Kind, Records};

use crate::config::Config;
use crate::listener::ListenerManager;
use crate::server::Server;
use crate::upstream::ClusterManager;
use std::sync::Arc;
use xds_proto::pb::google::protobuf::Any;

/// Starts dynamic configuration: LDS and CDS files are read once now (clusters first) and
/// then watched; the ADS client starts when the bootstrap has `ads_config`, and a stream of its
/// own for CDS and LDS when they name an `api_config_source`. Returns whether a stream carries
/// CDS or LDS, or ADS runs (the server then reaches LIVE only when the initial resources are
/// warm).
pub fn spawn(
    server: &Arc<Server>,
    clusters: &Arc<ClusterManager>,
    listeners: &Arc<ListenerManager>,
    config: &Arc<Config>,
) -> bool {
    let dynamic = &config.dynamic;
    let secrets = &config.secret_slots;
    let sds_needed = !secrets.grpc_sources().is_empty() || !secrets.names_from(None).is_empty();
    if dynamic.ads.is_none() && dynamic.cds.is_none() && dynamic.lds.is_none() && !sds_needed {
        // Nothing dynamic: no subscription stats either, as in Envoy.
        return false;
    }
    let applier = Arc::new(std::sync::Mutex::new(apply::Applier::new(
        clusters.clone(),
        listeners.clone(),
        config,
        server.xds.clone(),
        server.stats.clone(),
    )));
    apply::lock(&applier).add_static_route_stats(&config.listeners);
    let files = [
        (Kind::Cluster, &config.dynamic.cds),
        (Kind::Listener, &config.dynamic.lds),
    ];
    for (kind, source) in files {
        if let Some(path) = source.as_ref().and_then(|s| s.path.clone()) {
            let mut file = files::FileSource::new(kind, path, applier.clone(), server.xds.clone());
            file.poll();
            tokio::spawn(file.watch());
        }
    }
    let node = crate::admin::server_info::node(server);
    let spawner = Spawner {
        server: server.clone(),
        clusters: clusters.clone(),
        applier: applier.clone(),
        config: config.clone(),
        node,
    };
    for (kind, source) in [
        (Kind::Cluster, &config.dynamic.cds),
        (Kind::Listener, &config.dynamic.lds),
    ] {
        if let Some(grpc) = source.as_ref().and_then(|s| s.grpc.clone()) {
            spawner.spawn(ads::Role::Single(kind, None), grpc);
        }
    }
    let streamed = apply::lock(&applier).init.streamed();
    let ads = config.dynamic.ads.clone();
    if let Some(ads) = ads.clone() {
        spawner.spawn(ads::Role::Aggregated, ads);
    }
    tokio::spawn(spawner.follow());
    ads.is_some() || streamed
}

/// Starts the streams resources ask for as they come and go.
struct Spawner {
    server: Arc<Server>,
    clusters: Arc<ClusterManager>,
    applier: apply::SharedApplier,
    config: Arc<Config>,
    node: xds_proto::pb::envoy::config::core::v3::Node,
}

impl Spawner {
    fn spawn(&self, role: ads::Role, source: crate::config::dynamic::AdsConfig) {
        let client = ads::AdsClient::new(
            role,
            source,
            self.node.clone(),
            self.server.clone(),
            self.clusters.clone(),
            self.applier.clone(),
            self.server.xds.clone(),
            &self.config,
        );
        tokio::spawn(client.run());
    }

    /// Starts one `SecretDiscoveryService` stream per gRPC source the TLS contexts name
    /// (Istio's `sds-grpc`), and one EDS or RDS stream per cluster or route table whose config
    /// source is an `api_config_source`, now and whenever a new one is named. A per-resource
    /// stream ends itself when its resource is no longer named; it is started again if it is.
    async fn follow(self) {
        let mut secrets: Vec<crate::config::dynamic::AdsConfig> = Vec::new();
        let mut streams: std::collections::BTreeMap<_, tokio::task::JoinHandle<()>> =
            std::collections::BTreeMap::new();
        loop {
            for source in self.config.secret_slots.grpc_sources() {
                if secrets.contains(&source) {
                    continue;
                }
                secrets.push(source.clone());
                self.spawn(ads::Role::Secrets, source);
            }
            let wanted: Vec<(Kind, crate::config::dynamic::AdsConfig, String)> = {
                let applier = apply::lock(&self.applier);
                let endpoints = applier
                    .per_type_endpoint_sources()
                    .into_iter()
                    .map(|(source, name)| (Kind::Endpoint, (Some(source), name)));
                let routes = applier
                    .route_sources(&self.config.listeners)
                    .into_iter()
                    .map(|s| (Kind::Route, s));
                endpoints
                    .chain(routes)
                    .filter_map(|(kind, (source, name))| Some((kind, source?, name)))
                    .collect()
            };
            streams.retain(|_, task: &mut tokio::task::JoinHandle<()>| !task.is_finished());
            for key in wanted {
                if streams.contains_key(&key) {
                    continue;
                }
                let (kind, source, name) = key.clone();
                let client = ads::AdsClient::new(
                    ads::Role::Single(kind, Some(name)),
                    source,
                    self.node.clone(),
                    self.server.clone(),
                    self.clusters.clone(),
                    self.applier.clone(),
                    self.server.xds.clone(),
                    &self.config,
                );
                streams.insert(key, tokio::spawn(client.run()));
            }
            // Short: a cluster's or listener's warming waits for the stream started here.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// The name inside a state-of-the-world resource. Every type Outrigger subscribes to keeps its
/// name in field 1 (`name`, or `cluster_name` for an assignment), so only that field is read.
pub fn resource_name(resource: &Any) -> String {
    #[derive(Clone, PartialEq, prost::Message)]
    struct NameOnly {
        #[prost(string, tag = "1")]
        name: String,
    }
    <NameOnly as prost::Message>::decode(resource.value.as_slice())
        .map(|n| n.name)
        .unwrap_or_default()
}
