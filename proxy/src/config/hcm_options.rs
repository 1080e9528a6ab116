//! The connection manager's protocol limits, timeouts, HTTP/2 settings, path normalisation and
//! upgrades, compiled from the HCM proto.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto
//! and https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/protocol.proto

use super::error::{FieldPath, Result};
use super::values::optional_duration;
use std::time::Duration;
use xds_proto::pb::envoy::config::core::v3::{
    http_protocol_options::HeadersWithUnderscoresAction, Http2ProtocolOptions, HttpProtocolOptions,
};
use xds_proto::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::PathWithEscapedSlashesAction as Escaped,
    HttpConnectionManager as ProtoHcm,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// `max_request_headers_kb` in bytes (Envoy's default: 60 KiB). Over it: 431.
    pub max_request_headers_bytes: usize,
    /// `max_headers_count` (default 100). Over it: 431.
    pub max_headers_count: usize,
    pub headers_with_underscores: UnderscoreAction,
    /// `request_headers_timeout`: time to receive a request's headers (default: none).
    pub request_headers_timeout: Option<Duration>,
    /// `common_http_protocol_options.idle_timeout`: close a connection with no active
    /// request for this long (default 1 h).
    pub idle_timeout: Option<Duration>,
    /// `common_http_protocol_options.max_connection_duration` (default: none).
    pub max_connection_duration: Option<Duration>,
    /// `common_http_protocol_options.max_requests_per_connection` (None: unset or 0, no
    /// limit): the connection closes after the request that reaches it.
    /// https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/protocol.proto#envoy-v3-api-field-config-core-v3-httpprotocoloptions-max-requests-per-connection
    pub max_requests_per_connection: Option<u64>,
    /// `drain_timeout` (default 5 s): how long a connection the connection manager decided to
    /// close (idle timeout, maximum duration) still answers, with `Connection: close`, on
    /// HTTP/1.1. On HTTP/2 the grace between the two GOAWAYs is hyper's (one round trip).
    /// https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto#envoy-v3-api-field-extensions-filters-network-http-connection-manager-v3-httpconnectionmanager-drain-timeout
    pub drain_timeout: Duration,
    /// The stream timeouts, before a route overrides them.
    pub stream: StreamTimeouts,
    /// `http_protocol_options.accept_http_10`: HTTP/1.0 requests are served (else 426), with
    /// `default_host_for_http_10` as the Host of those that name none.
    /// https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/protocol.proto#envoy-v3-api-field-config-core-v3-http1protocoloptions-accept-http-10
    pub http_10: Option<Http10>,
    /// `http_protocol_options.allow_chunked_length`: a chunked request that also carries
    /// `Content-Length` is served with that header removed (else 400).
    /// https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/protocol.proto#envoy-v3-api-field-config-core-v3-http1protocoloptions-allow-chunked-length
    pub allow_chunked_length: bool,
}

/// How HTTP/1.0 requests are accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http10 {
    pub default_host: Option<http::HeaderValue>,
}

/// A stream's own timers (a route may override the idle timeout and the duration):
/// https://www.envoyproxy.io/docs/envoy/latest/faq/configuration/timeouts#stream-timeouts
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamTimeouts {
    /// `stream_idle_timeout`: no bytes either way for this long ends the stream (default
    /// 5 min; 0 disables).
    pub idle: Option<Duration>,
    /// `request_timeout`: the whole request must arrive within this (default: none).
    pub request: Option<Duration>,
    /// `common_http_protocol_options.max_stream_duration` (default: none).
    pub max_duration: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnderscoreAction {
    Allow,
    RejectRequest,
    DropHeader,
}

/// HTTP/2 settings (downstream here; the cluster's own for upstream).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Http2Settings {
    pub max_concurrent_streams: Option<u32>,
    pub initial_stream_window_size: Option<u32>,
    pub initial_connection_window_size: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathHandling {
    /// RFC 3986 normalisation: remove `.` and `..` segments.
    pub normalize: bool,
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashes,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EscapedSlashes {
    #[default]
    Keep,
    Reject,
    UnescapeAndRedirect,
    UnescapeAndForward,
}

pub fn limits(hcm: &ProtoHcm, path: &FieldPath) -> Result<Limits> {
    let kb = hcm
        .max_request_headers_kb
        .as_ref()
        .map(|v| v.value)
        .unwrap_or(60);
    if !(1..=8192).contains(&kb) {
        return Err(path
            .field("max_request_headers_kb")
            .error("value must be in [1, 8192]"));
    }
    let common = hcm.common_http_protocol_options.unwrap_or_default();
    let c_path = path.field("common_http_protocol_options");
    let count = common
        .max_headers_count
        .as_ref()
        .map(|v| v.value)
        .unwrap_or(100);
    if count < 1 {
        return Err(c_path
            .field("max_headers_count")
            .error("value must be greater than or equal to 1"));
    }
    let idle = match common.idle_timeout.as_ref() {
        Some(d) => optional_duration(Some(d), &c_path.field("idle_timeout"))?,
        None => Some(Duration::from_secs(3600)),
    };
    let http1 = hcm.http_protocol_options.clone().unwrap_or_default();
    let http_10 = match http1.accept_http_10 {
        false => None,
        true if http1.default_host_for_http_10.is_empty() => Some(Http10 { default_host: None }),
        true => Some(Http10 {
            default_host: Some(
                http::HeaderValue::from_str(&http1.default_host_for_http_10).map_err(|_| {
                    path.field("http_protocol_options")
                        .field("default_host_for_http_10")
                        .error("is not a valid host")
                })?,
            ),
        }),
    };
    Ok(Limits {
        http_10,
        allow_chunked_length: http1.allow_chunked_length,
        max_request_headers_bytes: kb as usize * 1024,
        max_headers_count: count as usize,
        headers_with_underscores: underscore_action(&common, &c_path)?,
        request_headers_timeout: optional_duration(
            hcm.request_headers_timeout.as_ref(),
            &path.field("request_headers_timeout"),
        )?
        .filter(|d| !d.is_zero()),
        idle_timeout: idle.filter(|d| !d.is_zero()),
        max_connection_duration: optional_duration(
            common.max_connection_duration.as_ref(),
            &c_path.field("max_connection_duration"),
        )?
        .filter(|d| !d.is_zero()),
        drain_timeout: optional_duration(hcm.drain_timeout.as_ref(), &path.field("drain_timeout"))?
            .unwrap_or(Duration::from_secs(5)),
        max_requests_per_connection: common
            .max_requests_per_connection
            .as_ref()
            .map(|v| u64::from(v.value))
            .filter(|&n| n > 0),
        stream: StreamTimeouts {
            idle: match hcm.stream_idle_timeout.as_ref() {
                Some(d) => optional_duration(Some(d), &path.field("stream_idle_timeout"))?,
                None => Some(Duration::from_secs(300)),
            }
            .filter(|d| !d.is_zero()),
            request: optional_duration(
                hcm.request_timeout.as_ref(),
                &path.field("request_timeout"),
            )?
            .filter(|d| !d.is_zero()),
            max_duration: optional_duration(
                common.max_stream_duration.as_ref(),
                &c_path.field("max_stream_duration"),
            )?
            .filter(|d| !d.is_zero()),
        },
    })
}

fn underscore_action(common: &HttpProtocolOptions, path: &FieldPath) -> Result<UnderscoreAction> {
    match HeadersWithUnderscoresAction::try_from(common.headers_with_underscores_action) {
        Ok(HeadersWithUnderscoresAction::Allow) => Ok(UnderscoreAction::Allow),
        Ok(HeadersWithUnderscoresAction::RejectRequest) => Ok(UnderscoreAction::RejectRequest),
        Ok(HeadersWithUnderscoresAction::DropHeader) => Ok(UnderscoreAction::DropHeader),
        Err(_) => Err(path
            .field("headers_with_underscores_action")
            .error("unknown action")),
    }
}

/// HTTP/2 windows and stream limits, with Envoy's bounds.
pub fn http2_settings(
    options: Option<&Http2ProtocolOptions>,
    path: &FieldPath,
) -> Result<Http2Settings> {
    let Some(o) = options else {
        return Ok(Http2Settings::default());
    };
    let window = |v: Option<u32>, field: &str| -> Result<Option<u32>> {
        match v {
            Some(w) if !(65_535..=2_147_483_647).contains(&w) => Err(path
                .field(field)
                .error("value must be in [65535, 2147483647]")),
            other => Ok(other),
        }
    };
    let streams = o.max_concurrent_streams.as_ref().map(|v| v.value);
    if streams.is_some_and(|s| s == 0) {
        return Err(path
            .field("max_concurrent_streams")
            .error("value must be in [1, 2147483647]"));
    }
    Ok(Http2Settings {
        max_concurrent_streams: streams,
        initial_stream_window_size: window(
            o.initial_stream_window_size.as_ref().map(|v| v.value),
            "initial_stream_window_size",
        )?,
        initial_connection_window_size: window(
            o.initial_connection_window_size.as_ref().map(|v| v.value),
            "initial_connection_window_size",
        )?,
    })
}

pub fn path_handling(hcm: &ProtoHcm, path: &FieldPath) -> Result<PathHandling> {
    let escaped_slashes = match Escaped::try_from(hcm.path_with_escaped_slashes_action) {
        Ok(Escaped::ImplementationSpecificDefault | Escaped::KeepUnchanged) => EscapedSlashes::Keep,
        Ok(Escaped::RejectRequest) => EscapedSlashes::Reject,
        Ok(Escaped::UnescapeAndRedirect) => EscapedSlashes::UnescapeAndRedirect,
        Ok(Escaped::UnescapeAndForward) => EscapedSlashes::UnescapeAndForward,
        Err(_) => {
            return Err(path
                .field("path_with_escaped_slashes_action")
                .error("unknown action"))
        }
    };
    Ok(PathHandling {
        normalize: hcm.normalize_path.as_ref().is_some_and(|b| b.value),
        merge_slashes: hcm.merge_slashes,
        escaped_slashes,
    })
}

/// `upgrade_configs`: which upgrade types (e.g. `websocket`) are proxied, lowercased.
pub fn upgrades(hcm: &ProtoHcm, path: &FieldPath) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (i, u) in hcm.upgrade_configs.iter().enumerate() {
        let p = path.field("upgrade_configs").index(i);
        if !u.filters.is_empty() {
            return Err(p
                .field("filters")
                .error("per-upgrade filter chains are not supported"));
        }
        if u.enabled.as_ref().is_none_or(|b| b.value) {
            out.push(u.upgrade_type.to_ascii_lowercase());
        }
    }
    Ok(out)
}
