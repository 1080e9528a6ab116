//! A cluster's upstream HTTP options: which protocol its connections speak, their HTTP/2
//! settings and how long a connection lives (idle timeout, requests per connection, maximum
//! duration), from the deprecated cluster fields or the typed
//! `envoy.extensions.upstreams.http.v3.HttpProtocolOptions`.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/upstreams/http/v3/http_protocol_options.proto
//! and https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/protocol.proto#envoy-v3-api-msg-config-core-v3-httpprotocoloptions
#![allow(deprecated)]

use super::cluster::UpstreamProtocol;
use super::error::{FieldPath, Result};
use super::fields::{check, Acknowledged};
use super::hcm_options::{http2_settings, Http2Settings};
use super::transport_match::{TransportSockets, UpstreamSocket};
use super::values::optional_duration;
use std::num::NonZeroU32;
use std::time::Duration;
use xds_proto::pb::envoy::config::cluster::v3::Cluster as ProtoCluster;
use xds_proto::pb::envoy::extensions::upstreams::http::v3::{
    http_protocol_options, HttpProtocolOptions,
};

const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// What the cluster's upstream HTTP connections speak and how long each one lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamHttp {
    pub protocol: UpstreamProtocol,
    pub http2: Http2Settings,
    pub limits: ConnectionLimits,
    pub streams: StreamLimits,
}

/// What each upstream stream may take (`common_http_protocol_options`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamLimits {
    /// `max_stream_duration`, from the attempt's start to the response's end (None: unset or
    /// `0s`). Before the response head it ends the attempt with 504 UMSDR; after, the
    /// response is cut.
    pub max_stream_duration: Option<Duration>,
    /// `max_headers_count`: a response with more headers is a protocol error (502 UPE).
    pub max_headers_count: Option<u32>,
}

/// When the pool stops using an upstream connection. Envoy's defaults: one hour idle, no
/// request cap, no maximum duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// `common_http_protocol_options.idle_timeout` (None: `0s`, never).
    pub idle_timeout: Option<Duration>,
    /// `max_requests_per_connection` (None: unset or 0, no cap). 1 disables reuse.
    pub max_requests: Option<NonZeroU32>,
    /// `common_http_protocol_options.max_connection_duration`, since the connection was
    /// established (None: unset or `0s`).
    pub max_duration: Option<Duration>,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            idle_timeout: Some(Duration::from_secs(3600)),
            max_requests: None,
            max_duration: None,
        }
    }
}

pub fn translate(
    c: &ProtoCluster,
    path: &FieldPath,
    acks: &mut Vec<Acknowledged>,
) -> Result<UpstreamHttp> {
    let mut protocol = if c.http2_protocol_options.is_some() {
        UpstreamProtocol::Http2
    } else {
        UpstreamProtocol::Http1
    };
    let mut common = c.common_http_protocol_options;
    let mut common_path = path.field("common_http_protocol_options");
    let top_max_requests = c.max_requests_per_connection.as_ref().map(|v| v.value);
    let mut max_requests = top_max_requests;
    let mut http2 = http2_settings(
        c.http2_protocol_options.as_ref(),
        &path.field("http2_protocol_options"),
    )?;
    for (key, any) in &c.typed_extension_protocol_options {
        let p = path.field("typed_extension_protocol_options").key(key);
        if key != HTTP_PROTOCOL_OPTIONS {
            return Err(p.error(format!("unsupported protocol options extension {key}")));
        }
        let options: HttpProtocolOptions = match super::extension::decode(any, &p)? {
            Some(xds_proto::Extension::HttpProtocolOptions(o)) => *o,
            _ => {
                return Err(p.error(format!(
                    "unsupported protocol options type {}",
                    xds_proto::type_name_of_url(&any.type_url)
                )))
            }
        };
        check(&options, &p, acks)?;
        protocol = upstream_protocol(&options, &p, &mut http2)?;
        if let Some(o) = options.common_http_protocol_options {
            common_path = p.field("common_http_protocol_options");
            if let Some(m) = o.max_requests_per_connection.as_ref() {
                // Envoy's rule: one place or the other, never both.
                if top_max_requests.is_some() {
                    return Err(common_path.field("max_requests_per_connection").error(
                        "only one of max_requests_per_connection from Cluster or \
                         HttpProtocolOptions can be specified",
                    ));
                }
                max_requests = Some(m.value);
            }
            common = Some(o);
        }
    }
    let common = common.unwrap_or_default();
    let streams = StreamLimits {
        max_stream_duration: optional_duration(
            common.max_stream_duration.as_ref(),
            &common_path.field("max_stream_duration"),
        )?
        .filter(|d| !d.is_zero()),
        max_headers_count: match common.max_headers_count.as_ref().map(|v| v.value) {
            Some(0) => {
                return Err(common_path
                    .field("max_headers_count")
                    .error("value must be greater than or equal to 1"))
            }
            other => other,
        },
    };
    // `headers_with_underscores_action` needs nothing here: Envoy applies it to the requests
    // it receives, and passes upstream response headers with underscores whatever the
    // cluster says (seen with Envoy 1.40 and DROP_HEADER on the cluster).
    let idle_timeout = match common.idle_timeout.as_ref() {
        Some(d) => optional_duration(Some(d), &common_path.field("idle_timeout"))?,
        None => ConnectionLimits::default().idle_timeout,
    };
    let max_duration = optional_duration(
        common.max_connection_duration.as_ref(),
        &common_path.field("max_connection_duration"),
    )?;
    Ok(UpstreamHttp {
        protocol,
        http2,
        limits: ConnectionLimits {
            // `0s` turns either timer off, as in Envoy.
            idle_timeout: idle_timeout.filter(|d| !d.is_zero()),
            max_requests: max_requests.and_then(NonZeroU32::new),
            max_duration: max_duration.filter(|d| !d.is_zero()),
        },
        streams,
    })
}

/// The protocol the typed options choose, updating the HTTP/2 settings when they carry some.
fn upstream_protocol(
    options: &HttpProtocolOptions,
    p: &FieldPath,
    http2: &mut Http2Settings,
) -> Result<UpstreamProtocol> {
    use http_protocol_options::UpstreamProtocolOptions as U;
    Ok(match &options.upstream_protocol_options {
        Some(U::ExplicitHttpConfig(e)) => {
            use http_protocol_options::explicit_http_config::ProtocolConfig as P;
            match &e.protocol_config {
                Some(P::Http2ProtocolOptions(o)) => {
                    *http2 = http2_settings(
                        Some(o),
                        &p.field("explicit_http_config")
                            .field("http2_protocol_options"),
                    )?;
                    UpstreamProtocol::Http2
                }
                Some(P::HttpProtocolOptions(_)) => UpstreamProtocol::Http1,
                Some(P::Http3ProtocolOptions(_)) => {
                    return Err(p
                        .field("explicit_http_config")
                        .error("HTTP/3 is not supported"))
                }
                None => {
                    return Err(p
                        .field("explicit_http_config")
                        .error("a protocol is required"))
                }
            }
        }
        Some(U::UseDownstreamProtocolConfig(d)) => {
            let d_path = p
                .field("use_downstream_protocol_config")
                .field("http2_protocol_options");
            *http2 = http2_settings(d.http2_protocol_options.as_ref(), &d_path)?;
            UpstreamProtocol::UseDownstream
        }
        // Whether the cluster's transport sockets can negotiate is checked with them
        // (cluster.rs).
        Some(U::AutoConfig(a)) => {
            *http2 = http2_settings(
                a.http2_protocol_options.as_ref(),
                &p.field("auto_config").field("http2_protocol_options"),
            )?;
            UpstreamProtocol::Auto
        }
        None => return Err(p.field("upstream_protocol_options").error("is required")),
    })
}

/// `auto_config` chooses the protocol by ALPN, so every transport socket the cluster may use
/// must be TLS (Envoy's check and wording, checked with Envoy 1.40).
pub(super) fn alpn_capable(
    transports: &TransportSockets,
    name: &str,
    path: &FieldPath,
) -> Result<()> {
    let at = || {
        path.field("typed_extension_protocol_options")
            .key("envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
            .field("auto_config")
    };
    if !matches!(transports.default, UpstreamSocket::Tls(_)) {
        return Err(at().error(format!(
            "ALPN configured for cluster {name} which has a non-ALPN transport socket"
        )));
    }
    if transports
        .matches
        .iter()
        .any(|m| !matches!(m.socket, UpstreamSocket::Tls(_)))
    {
        return Err(at().error(format!(
            "ALPN configured for cluster {name} which has a non-ALPN transport socket matcher"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootstrap::{load, Sources};

    /// A bootstrap with one cluster carrying `fields` (YAML lines at the cluster's level).
    fn cluster(fields: &str) -> std::result::Result<super::super::Config, String> {
        let yaml = format!(
            "static_resources:\n  clusters:\n  - name: c\n{}    load_assignment: {{ cluster_name: c }}\n",
            fields
                .lines()
                .map(|l| format!("    {l}\n"))
                .collect::<String>()
        );
        let sources = Sources {
            config_yaml: Some(&yaml),
            ..Default::default()
        };
        let loaded = load(&sources).map_err(|e| e.to_string())?;
        super::super::translate_bootstrap(&loaded.bootstrap).map_err(|e| e.to_string())
    }

    fn typed(common: &str) -> String {
        format!(
            "typed_extension_protocol_options:\n  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n    \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n    common_http_protocol_options: {common}\n    explicit_http_config: {{ http2_protocol_options: {{}} }}\n"
        )
    }

    fn limits(fields: &str) -> ConnectionLimits {
        cluster(fields).expect("accepted").clusters[0].connection_limits
    }

    #[test]
    fn every_limit_reaches_the_pool() {
        let l = limits(&typed(
            "{ idle_timeout: 2s, max_requests_per_connection: 7, max_connection_duration: 30s }",
        ));
        assert_eq!(l.idle_timeout, Some(Duration::from_secs(2)));
        assert_eq!(l.max_requests, NonZeroU32::new(7));
        assert_eq!(l.max_duration, Some(Duration::from_secs(30)));
        let config = cluster(&typed("{ max_connection_duration: 1s }")).expect("accepted");
        assert!(config.acknowledged.is_empty(), "{:?}", config.acknowledged);
    }

    #[test]
    fn defaults_and_zeroes_mean_no_limit_as_in_envoy() {
        assert_eq!(limits(""), ConnectionLimits::default());
        let l = limits(&typed(
            "{ idle_timeout: 0s, max_requests_per_connection: 0, max_connection_duration: 0s }",
        ));
        assert_eq!(
            (l.idle_timeout, l.max_requests, l.max_duration),
            (None, None, None)
        );
        assert_eq!(
            limits("max_requests_per_connection: 1").max_requests,
            NonZeroU32::new(1)
        );
    }

    #[test]
    fn max_requests_in_both_places_is_refused_as_envoy_does() {
        let e = cluster(&format!(
            "max_requests_per_connection: 5\n{}",
            typed("{ max_requests_per_connection: 3 }")
        ))
        .expect_err("refused");
        assert!(
            e.contains("common_http_protocol_options.max_requests_per_connection: only one of"),
            "{e}"
        );
    }

    #[test]
    fn stream_limits_reach_the_cluster() {
        let config =
            cluster(&typed("{ max_headers_count: 5, max_stream_duration: 1s }")).expect("accepted");
        assert!(config.acknowledged.is_empty(), "{:?}", config.acknowledged);
        let limits = config.clusters[0].stream_limits;
        assert_eq!(limits.max_headers_count, Some(5));
        assert_eq!(limits.max_stream_duration, Some(Duration::from_secs(1)));
        // `0s` is no limit; a count of 0 is refused, as Envoy's validation does.
        let off = cluster(&typed("{ max_stream_duration: 0s }")).expect("accepted");
        assert_eq!(off.clusters[0].stream_limits.max_stream_duration, None);
        let err = cluster(&typed("{ max_headers_count: 0 }")).expect_err("refused");
        assert!(err.contains("max_headers_count"), "{err}");
    }
}
