//! The TCP proxy network filter.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto

use super::access_log::{translate_access_logs, AccessLog};
use super::error::{FieldPath, Result};
use super::fields::{check, Acknowledged};
use super::resolver::Resolver;
use super::route_action::NamedCluster;
use super::values::optional_duration;
use std::sync::Arc;
use std::time::Duration;
use xds_proto::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    tcp_proxy::ClusterSpecifier, TcpProxy as ProtoTcpProxy,
};

#[derive(Debug)]
pub struct TcpProxy {
    pub stat_prefix: String,
    /// One cluster, or several with weights. A cluster unknown at config time has no index:
    /// its connections are closed (Envoy's behaviour; the cluster may arrive later by CDS).
    pub clusters: Vec<(NamedCluster, u64)>,
    pub total_weight: u64,
    /// None: no idle timeout (`idle_timeout: 0s`). Envoy's default is one hour.
    pub idle_timeout: Option<Duration>,
    /// Connection attempts before giving up (Envoy's default: 1).
    pub max_connect_attempts: u32,
    pub access_logs: Vec<Arc<AccessLog>>,
    /// Istio's TCP metrics, when `istio.stats` precedes the filter in its chain.
    pub istio: Option<Arc<super::istio_tcp::IstioTcp>>,
}

impl TcpProxy {
    /// The cluster for `draw` in `0..total_weight`.
    pub fn pick(&self, draw: u64) -> Option<&NamedCluster> {
        let mut acc = 0;
        self.clusters
            .iter()
            .find(|(_, w)| {
                acc += w;
                draw < acc
            })
            .map(|(c, _)| c)
    }
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
    let named = |name: &str| NamedCluster {
        slot: resolve.cluster_slot(name),
    };
    let clusters = match &t.cluster_specifier {
        Some(ClusterSpecifier::Cluster(c)) if !c.is_empty() => vec![(named(c), 1)],
        Some(ClusterSpecifier::Cluster(_)) => {
            return Err(path.field("cluster").error("must not be empty"))
        }
        Some(ClusterSpecifier::WeightedClusters(w)) => {
            let p = path.field("weighted_clusters").field("clusters");
            if w.clusters.len() < 2 {
                return Err(p.error("at least 2 clusters are required"));
            }
            w.clusters
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    if c.name.is_empty() {
                        return Err(p.index(i).field("name").error("must not be empty"));
                    }
                    if c.weight == 0 {
                        return Err(p
                            .index(i)
                            .field("weight")
                            .error("value must be greater than or equal to 1"));
                    }
                    Ok((named(&c.name), u64::from(c.weight)))
                })
                .collect::<Result<Vec<_>>>()?
        }
        None => return Err(path.error("a cluster is required")),
    };
    let idle_timeout = optional_duration(t.idle_timeout.as_ref(), &path.field("idle_timeout"))?
        .or(Some(Duration::from_secs(3600)))
        .filter(|d| !d.is_zero());
    let max_connect_attempts = t
        .max_connect_attempts
        .as_ref()
        .map(|v| v.value)
        .unwrap_or(1);
    if max_connect_attempts < 1 {
        return Err(path
            .field("max_connect_attempts")
            .error("value must be greater than or equal to 1"));
    }
    Ok(TcpProxy {
        stat_prefix: t.stat_prefix.clone(),
        total_weight: clusters.iter().map(|(_, w)| w).sum(),
        clusters,
        idle_timeout,
        max_connect_attempts,
        access_logs: translate_access_logs(
            &t.access_log,
            &path.field("access_log"),
            resolve,
            acks,
        )?,
        istio: None,
    })
}
