//! Dynamic configuration from a control plane over ADS: the stream client, the application of
//! resources (with warming), and the records `/config_dump` shows.

mod ads;
pub mod agent_types;
pub mod apply;
mod files;
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
/// then watched; the ADS client starts when the bootstrap has `ads_config`. Returns whether
/// ADS runs (the server then reaches LIVE only when the initial resources are warm).
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
    tokio::spawn(start_secret_streams(
        server.clone(),
        clusters.clone(),
        applier.clone(),
        config.clone(),
        node.clone(),
    ));
    let Some(ads) = config.dynamic.ads.clone() else {
        return false;
    };
    let client = ads::AdsClient::new(
        ads::Role::Aggregated,
        ads,
        node,
        server.clone(),
        clusters.clone(),
        applier,
        server.xds.clone(),
        config,
    );
    tokio::spawn(client.run());
    true
}

/// Starts one `SecretDiscoveryService` stream per gRPC source the TLS contexts name (Istio's
/// `sds-grpc`), now and whenever a new listener or cluster names another.
async fn start_secret_streams(
    server: Arc<Server>,
    clusters: Arc<ClusterManager>,
    applier: apply::SharedApplier,
    config: Arc<Config>,
    node: xds_proto::pb::envoy::config::core::v3::Node,
) {
    let mut started: Vec<crate::config::dynamic::AdsConfig> = Vec::new();
    loop {
        for source in config.secret_slots.grpc_sources() {
            if started.contains(&source) {
                continue;
            }
            started.push(source.clone());
            let client = ads::AdsClient::new(
                ads::Role::Secrets,
                source,
                node.clone(),
                server.clone(),
                clusters.clone(),
                applier.clone(),
                server.xds.clone(),
                &config,
            );
            tokio::spawn(client.run());
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
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
