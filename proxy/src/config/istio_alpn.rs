//! Istio's `istio.alpn` HTTP filter: a request's upstream TLS handshake offers an ALPN list
//! chosen by the request's upstream protocol (`istio-http/1.1`, `istio-h2`, ...) instead of the
//! cluster's own, so an Istio server's inbound listener can tell mTLS HTTP from mTLS TCP by
//! ALPN alone. A cluster opts out with metadata `istio.alpn_override: "false"`.
//!
//! The filter's config is a small proto (`istio.envoy.config.filter.http.alpn.v2alpha1`) that
//! the API descriptors lack; it is decoded here from its documented fields: a repeated
//! `alpn_override` (1) of `{ upstream_protocol (1): HTTP10 | HTTP11 | HTTP2, alpn_override (2):
//! repeated string }`.

use super::error::{FieldPath, Result};
use super::fields::Acknowledged;
use super::tls::ISTIO_PEER_EXCHANGE;
use crate::tls::AlpnOffer;
use xds_proto::pb::envoy::config::core::v3::Metadata;
use xds_proto::pb::google::protobuf::value::Kind;

#[derive(Clone, PartialEq, prost::Message)]
struct FilterConfig {
    #[prost(message, repeated, tag = "1")]
    alpn_override: Vec<ProtocolOverride>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ProtocolOverride {
    #[prost(int32, tag = "1")]
    upstream_protocol: i32,
    #[prost(string, repeated, tag = "2")]
    alpn_override: Vec<String>,
}

const HTTP10: i32 = 0;
const HTTP11: i32 = 1;
const HTTP2: i32 = 2;

/// The offers by upstream protocol, made once so that requests share them (and their pools).
#[derive(Debug, Clone, Default)]
pub struct IstioAlpn {
    http11: Option<AlpnOffer>,
    http2: Option<AlpnOffer>,
}

impl IstioAlpn {
    /// The offer for a request going upstream as HTTP/2 or HTTP/1.1. An upstream request is
    /// never HTTP/1.0 (Envoy sends HTTP/1.0 downstream requests upstream as HTTP/1.1), so the
    /// HTTP10 entry is read but never offered.
    #[inline]
    pub fn offer(&self, http2: bool) -> Option<&AlpnOffer> {
        if http2 {
            self.http2.as_ref()
        } else {
            self.http11.as_ref()
        }
    }
}

/// The filter's config at `path` (its `typed_config`).
pub fn translate(
    bytes: &[u8],
    path: &FieldPath,
    acks: &mut Vec<Acknowledged>,
) -> Result<IstioAlpn> {
    let config = <FilterConfig as prost::Message>::decode(bytes)
        .map_err(|e| path.error(format!("invalid istio.alpn FilterConfig: {e}")))?;
    let mut out = IstioAlpn::default();
    for (i, entry) in config.alpn_override.iter().enumerate() {
        let p = path.field("alpn_override").index(i);
        let mut protocols = Vec::with_capacity(entry.alpn_override.len());
        for (j, protocol) in entry.alpn_override.iter().enumerate() {
            let pp = p.field("alpn_override").index(j);
            if protocol == ISTIO_PEER_EXCHANGE {
                // A server that picked it would expect the TCP metadata exchange, which
                // Outrigger does not speak.
                acks.push(Acknowledged {
                    path: pp.to_string(),
                    reason: "istio-peer-exchange is never offered: the TCP metadata exchange behind it is not implemented",
                });
                continue;
            }
            if protocol.is_empty() || protocol.len() > 255 {
                return Err(pp.error("an ALPN protocol is 1 to 255 bytes"));
            }
            protocols.push(protocol.as_bytes().to_vec());
        }
        let slot = match entry.upstream_protocol {
            HTTP10 => continue,
            HTTP11 => &mut out.http11,
            HTTP2 => &mut out.http2,
            other => {
                return Err(p
                    .field("upstream_protocol")
                    .error(format!("unknown protocol {other}")))
            }
        };
        // The first entry for a protocol wins, as in Istio's filter. An empty list overrides
        // nothing.
        if slot.is_none() && !protocols.is_empty() {
            *slot = Some(AlpnOffer::new(protocols));
        }
    }
    Ok(out)
}

/// False when the cluster's metadata says `istio.alpn_override: "false"`: its requests keep
/// the cluster's own ALPN list.
pub fn cluster_allows_override(metadata: Option<&Metadata>) -> bool {
    let value = metadata
        .and_then(|m| m.filter_metadata.get("istio"))
        .and_then(|istio| istio.fields.get("alpn_override"))
        .and_then(|v| v.kind.as_ref());
    !matches!(value, Some(Kind::StringValue(s)) if s == "false")
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn encode(entries: &[(i32, &[&str])]) -> Vec<u8> {
        FilterConfig {
            alpn_override: entries
                .iter()
                .map(|(p, list)| ProtocolOverride {
                    upstream_protocol: *p,
                    alpn_override: list.iter().map(|s| s.to_string()).collect(),
                })
                .collect(),
        }
        .encode_to_vec()
    }

    #[test]
    fn istios_three_entries_give_offers_by_upstream_protocol() {
        let bytes = encode(&[
            (HTTP10, &["istio-http/1.0", "istio", "http/1.0"]),
            (HTTP11, &["istio-http/1.1", "istio", "http/1.1"]),
            (HTTP2, &["istio-h2", "istio", "h2"]),
        ]);
        let alpn = translate(&bytes, &FieldPath::root("f"), &mut Vec::new()).expect("decodes");
        let list = |o: Option<&AlpnOffer>| -> Vec<String> {
            o.expect("an offer")
                .protocols()
                .iter()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect()
        };
        assert_eq!(
            list(alpn.offer(false)),
            ["istio-http/1.1", "istio", "http/1.1"]
        );
        assert_eq!(list(alpn.offer(true)), ["istio-h2", "istio", "h2"]);
        // The same offer each time: requests share connections.
        assert_eq!(alpn.offer(true), alpn.offer(true));
    }

    #[test]
    fn istio_peer_exchange_is_never_offered_and_bad_entries_name_their_path() {
        let mut acks = Vec::new();
        let bytes = encode(&[(HTTP11, &["istio-peer-exchange", "istio"])]);
        let alpn = translate(&bytes, &FieldPath::root("f"), &mut acks).expect("decodes");
        assert_eq!(
            alpn.offer(false).expect("offer").protocols(),
            [b"istio".to_vec()]
        );
        assert_eq!(acks[0].path, "f.alpn_override[0].alpn_override[0]");
        let err = translate(&encode(&[(7, &["x"])]), &FieldPath::root("f"), &mut acks)
            .expect_err("refused");
        assert_eq!(err.path, "f.alpn_override[0].upstream_protocol");
        let err = translate(&[0xff, 0xff], &FieldPath::root("f"), &mut acks).expect_err("refused");
        assert_eq!(err.path, "f");
    }

    #[test]
    fn cluster_metadata_can_opt_out() {
        use xds_proto::pb::google::protobuf::{Struct, Value};
        let metadata = |v: &str| Metadata {
            filter_metadata: [(
                "istio".to_string(),
                Struct {
                    fields: [(
                        "alpn_override".to_string(),
                        Value {
                            kind: Some(Kind::StringValue(v.to_string())),
                        },
                    )]
                    .into_iter()
                    .collect(),
                },
            )]
            .into_iter()
            .collect(),
            ..Default::default()
        };
        assert!(!cluster_allows_override(Some(&metadata("false"))));
        assert!(cluster_allows_override(Some(&metadata("true"))));
        assert!(cluster_allows_override(None));
    }
}
