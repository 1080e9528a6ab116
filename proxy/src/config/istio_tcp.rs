//! Istio's network filters on TCP and HTTP filter chains, ahead of `tcp_proxy` or the
//! connection manager: the TCP metadata exchange (`envoy.tcp.metadataexchange.config.MetadataExchange`)
//! and the TCP side of `istio.stats` (`stats.PluginConfig`), both `TypedStruct`-wrapped.
//! Istio puts them on every inbound chain, so refusing them would refuse Istio's listeners.
//!
//! The exchange is spoken only when TLS negotiated ALPN `istio-peer-exchange`, which Outrigger
//! never selects (see `config::tls`), so the peer never starts it either: it is acknowledged,
//! and TCP peers stay unknown (as Istio reports a peer without the exchange). `istio.stats`
//! ahead of `tcp_proxy` turns on Istio's TCP metrics (`istio_tcp_*`); ahead of a connection
//! manager it is acknowledged (the HTTP filters report those connections' requests).
//! contrib: envoyproxy/envoy `contrib/istio/filters/network/metadata_exchange`.

use super::error::{FieldPath, Result};
use super::fields::Acknowledged;
use super::istio::StatsPlugin;
use super::istio_node::LocalWorkload;
use super::resolver::Resolver;
use std::sync::Arc;
use xds_proto::pb::google::protobuf::Any;

pub const TCP_METADATA_EXCHANGE: &str = "envoy.tcp.metadataexchange.config.MetadataExchange";

/// Istio's TCP metrics for one `tcp_proxy`, with the local workload they speak for.
#[derive(Debug)]
pub struct IstioTcp {
    pub local: Arc<LocalWorkload>,
    pub stats: StatsPlugin,
}

/// What one of Istio's network filters asks of its chain.
#[derive(Debug)]
pub enum IstioNetworkFilter {
    /// Nothing (the metadata exchange): acknowledged.
    Nothing,
    /// TCP metrics, if the chain ends in `tcp_proxy`.
    Stats(StatsPlugin),
}

/// `Some` when `any` is one of Istio's network filters; None for any other filter, which the
/// caller translates or refuses.
pub fn translate(
    any: &Any,
    path: &FieldPath,
    resolve: &Resolver<'_>,
    acks: &mut Vec<Acknowledged>,
) -> Result<Option<IstioNetworkFilter>> {
    let type_name = xds_proto::type_name_of_url(&any.type_url);
    let wrapper = <xds_proto::TypedStruct as xds_proto::XdsMessage>::FULL_NAME;
    if type_name != wrapper && type_name != xds_proto::XDS_TYPED_STRUCT {
        return Ok(None);
    }
    let typed = <xds_proto::TypedStruct as xds_proto::XdsMessage>::decode_bytes(&any.value)
        .map_err(|e| path.error(format!("invalid TypedStruct: {e}")))?;
    match xds_proto::type_name_of_url(&typed.type_url) {
        TCP_METADATA_EXCHANGE => {
            acks.push(Acknowledged {
                path: path.to_string(),
                reason: "the TCP metadata exchange runs only on ALPN istio-peer-exchange, which Outrigger never negotiates: the filter has nothing to do",
            });
            Ok(Some(IstioNetworkFilter::Nothing))
        }
        super::istio::STATS => {
            let empty = Default::default();
            let value = typed.value.as_ref().unwrap_or(&empty);
            let stats =
                super::istio::stats_plugin(value, &path.field("value"), resolve.inbound, acks)?;
            Ok(Some(IstioNetworkFilter::Stats(stats)))
        }
        _ => Ok(None),
    }
}

/// Acknowledges TCP stats ahead of a connection manager, which reports its requests itself.
pub fn acknowledge_on_http_chain(path: &FieldPath, acks: &mut Vec<Acknowledged>) {
    acks.push(Acknowledged {
        path: path.to_string(),
        reason: "Istio's TCP metrics are reported for tcp_proxy chains; on an HTTP chain the connection manager's istio.stats filter reports the requests",
    });
}
