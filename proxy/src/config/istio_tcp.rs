//! Istio's network filters on TCP and HTTP filter chains, ahead of `tcp_proxy` or the
//! connection manager: the TCP metadata exchange (`envoy.tcp.metadataexchange.config.MetadataExchange`)
//! and the TCP side of `istio.stats` (`stats.PluginConfig`), both `TypedStruct`-wrapped.
//! Istio puts them on every inbound chain, so refusing them would refuse Istio's listeners.
//!
//! Neither changes the bytes of a connection Outrigger serves: the exchange is spoken only
//! when TLS negotiated ALPN `istio-peer-exchange`, which Outrigger never selects (see
//! `config::tls`), so the peer never starts it either; the TCP metrics are simply not
//! emitted yet. Both are acknowledged with those reasons.
//! contrib: envoyproxy/envoy `contrib/istio/filters/network/metadata_exchange`.

use super::error::{FieldPath, Result};
use super::fields::Acknowledged;
use xds_proto::pb::google::protobuf::Any;

pub const TCP_METADATA_EXCHANGE: &str = "envoy.tcp.metadataexchange.config.MetadataExchange";

/// True when `any` is one of Istio's network filters (acknowledged here); false for any other
/// filter, which the caller translates or refuses.
pub fn acknowledge(any: &Any, path: &FieldPath, acks: &mut Vec<Acknowledged>) -> Result<bool> {
    let type_name = xds_proto::type_name_of_url(&any.type_url);
    let wrapper = <xds_proto::TypedStruct as xds_proto::XdsMessage>::FULL_NAME;
    if type_name != wrapper && type_name != xds_proto::XDS_TYPED_STRUCT {
        return Ok(false);
    }
    let typed = <xds_proto::TypedStruct as xds_proto::XdsMessage>::decode_bytes(&any.value)
        .map_err(|e| path.error(format!("invalid TypedStruct: {e}")))?;
    let reason = match xds_proto::type_name_of_url(&typed.type_url) {
        TCP_METADATA_EXCHANGE => {
            "the TCP metadata exchange runs only on ALPN istio-peer-exchange, which Outrigger never negotiates: the filter has nothing to do"
        }
        super::istio::STATS => {
            "Istio's TCP metrics (istio_tcp_*) are not emitted yet; connections pass untouched"
        }
        _ => return Ok(false),
    };
    acks.push(Acknowledged {
        path: path.to_string(),
        reason,
    });
    Ok(true)
}
