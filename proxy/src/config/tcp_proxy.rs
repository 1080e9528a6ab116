//! The TCP proxy network filter.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto

use super::error::{FieldPath, Result};
use super::fields::{check, Acknowledged};
use super::resolver::Resolver;
use super::values::optional_duration;
use std::sync::Arc;
use std::time::Duration;
use xds_proto::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    tcp_proxy::ClusterSpecifier, TcpProxy as ProtoTcpProxy,
};

#[derive(Debug)]
pub struct TcpProxy {
    pub stat_prefix: String,
    /// None when the cluster is unknown at config time: connections are then closed (Envoy).
    pub cluster: Option<usize>,
    pub cluster_name: Arc<str>,
    /// None: no idle timeout (`idle_timeout: 0s`). Envoy's default is one hour.
    pub idle_timeout: Option<Duration>,
}

pub fn translate_tcp_proxy(
    t: &ProtoTcpProxy,
    path: &FieldPath,
    resolve: &Resolver<'_>,
    acks: &mut Vec<Acknowledged>,
) -> Result<TcpProxy> {
    check(t, path, acks)?;
    if t.stat_prefix.is_empty() {
        return Err(path.field("stat_prefix").error("must not be empty"));
    }
    let name = match &t.cluster_specifier {
        Some(ClusterSpecifier::Cluster(c)) if !c.is_empty() => c.clone(),
        Some(ClusterSpecifier::Cluster(_)) => {
            return Err(path.field("cluster").error("must not be empty"))
        }
        Some(ClusterSpecifier::WeightedClusters(_)) => {
            return Err(path
                .field("weighted_clusters")
                .error("weighted clusters are not supported yet (issue 3)"))
        }
        None => return Err(path.error("a cluster is required")),
    };
    let cluster = resolve.cluster(&name);
    let idle_timeout = optional_duration(t.idle_timeout.as_ref(), &path.field("idle_timeout"))?
        .or(Some(Duration::from_secs(3600)))
        .filter(|d| !d.is_zero());
    Ok(TcpProxy {
        stat_prefix: t.stat_prefix.clone(),
        cluster,
        cluster_name: Arc::from(name.as_str()),
        idle_timeout,
    })
}
