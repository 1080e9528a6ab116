//! `Cluster.health_checks`: active health checking settings (HTTP, TCP and gRPC checkers), with
//! Envoy's defaults and validation. Fields outside this subset are refused by the field table.
//! https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/health_check.proto
//! https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/health_checking

use super::error::{FieldPath, Result};
use super::values::{duration, optional_duration};
use std::time::Duration;
use xds_proto::pb::envoy::config::core::v3::health_check::{
    payload, GrpcHealthCheck, HealthChecker, HttpHealthCheck, Payload, TcpHealthCheck,
};
use xds_proto::pb::envoy::config::core::v3::{HeaderValueOption, HealthCheck};
use xds_proto::pb::envoy::r#type::v3::CodecClientType;

/// One cluster's active health check, defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckConfig {
    pub timeout: Duration,
    pub interval: Duration,
    /// Up to this much (uniformly drawn) is added to every interval.
    pub interval_jitter: Duration,
    /// Up to this percentage of the interval is added as well.
    pub interval_jitter_percent: u32,
    /// The first check of a host waits up to this long (uniformly drawn).
    pub initial_jitter: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    /// Used instead of the others until the cluster has made a connection for traffic.
    pub no_traffic_interval: Duration,
    /// As `no_traffic_interval`, after a successful check.
    pub no_traffic_healthy_interval: Duration,
    pub unhealthy_interval: Duration,
    pub unhealthy_edge_interval: Duration,
    pub healthy_edge_interval: Duration,
    pub reuse_connection: bool,
    pub always_log_failures: bool,
    pub checker: Checker,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Checker {
    Http(HttpCheck),
    Tcp(TcpCheck),
    Grpc(GrpcCheck),
}

/// `grpc_health_check`: `grpc.health.v1.Health/Check` over HTTP/2; healthy when the answer
/// is SERVING with gRPC status OK.
#[derive(Debug, Clone, PartialEq)]
pub struct GrpcCheck {
    /// `service_name`, sent in the request (empty: the server's overall health).
    pub service: String,
    /// The `:authority`; None: the cluster's name (Envoy's default).
    pub authority: Option<String>,
    /// `initial_metadata`: (name, value, append).
    pub metadata: Vec<(http::HeaderName, http::HeaderValue, bool)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpCheck {
    /// The `:authority`/`Host` of the check; None: the cluster's name (Envoy's default).
    pub host: Option<String>,
    pub path: String,
    /// Half-open ranges `[start, end)` of statuses that pass; default `[200, 201)`.
    pub expected_statuses: Vec<(u16, u16)>,
    /// Headers to add: (name, value, append).
    pub headers_to_add: Vec<(http::HeaderName, http::HeaderValue, bool)>,
    pub headers_to_remove: Vec<http::HeaderName>,
    pub http2: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TcpCheck {
    /// Written on each check; empty: the check is a connect only.
    pub send: Vec<u8>,
    /// Each must appear in what the host answers, in this order.
    pub receive: Vec<Vec<u8>>,
}

/// Envoy's `no_traffic_interval` default.
const NO_TRAFFIC_INTERVAL: Duration = Duration::from_secs(60);

/// `Cluster.health_checks`: Envoy takes at most one.
pub fn translate_all(
    checks: &[HealthCheck],
    path: &FieldPath,
) -> Result<Option<HealthCheckConfig>> {
    match checks {
        [] => Ok(None),
        [one] => translate(one, &path.index(0)).map(Some),
        _ => Err(path.error("Multiple health checks not supported")),
    }
}

pub fn translate(h: &HealthCheck, path: &FieldPath) -> Result<HealthCheckConfig> {
    let required = |d: Option<&xds_proto::pb::google::protobuf::Duration>, name: &str| {
        let p = path.field(name);
        match optional_duration(d, &p)? {
            None => Err(p.error("value is required")),
            Some(d) if d.is_zero() => Err(p.error("value must be greater than 0s")),
            Some(d) => Ok(d),
        }
    };
    let positive_or =
        |d: Option<&xds_proto::pb::google::protobuf::Duration>, name: &str, default: Duration| {
            let p = path.field(name);
            match d {
                None => Ok(default),
                Some(d) => {
                    let d = duration(d, &p)?;
                    if d.is_zero() {
                        Err(p.error("value must be greater than 0s"))
                    } else {
                        Ok(d)
                    }
                }
            }
        };
    let threshold = |v: Option<&xds_proto::pb::google::protobuf::UInt32Value>, name: &str| {
        v.map(|v| v.value)
            .ok_or_else(|| path.field(name).error("value is required"))
    };
    let timeout = required(h.timeout.as_ref(), "timeout")?;
    let interval = required(h.interval.as_ref(), "interval")?;
    let no_traffic_interval = positive_or(
        h.no_traffic_interval.as_ref(),
        "no_traffic_interval",
        NO_TRAFFIC_INTERVAL,
    )?;
    let unhealthy_interval = positive_or(
        h.unhealthy_interval.as_ref(),
        "unhealthy_interval",
        interval,
    )?;
    let checker = match &h.health_checker {
        Some(HealthChecker::HttpHealthCheck(c)) => {
            Checker::Http(http_check(c, &path.field("http_health_check"))?)
        }
        Some(HealthChecker::TcpHealthCheck(c)) => {
            Checker::Tcp(tcp_check(c, &path.field("tcp_health_check"))?)
        }
        Some(HealthChecker::GrpcHealthCheck(c)) => {
            Checker::Grpc(grpc_check(c, &path.field("grpc_health_check"))?)
        }
        Some(HealthChecker::CustomHealthCheck(_)) => {
            return Err(path
                .field("custom_health_check")
                .error("custom health checkers are not supported"))
        }
        None => {
            return Err(
                path.error("a health checker (http_health_check, tcp_health_check or grpc_health_check) is required")
            )
        }
    };
    Ok(HealthCheckConfig {
        timeout,
        interval,
        interval_jitter: optional_duration(
            h.interval_jitter.as_ref(),
            &path.field("interval_jitter"),
        )?
        .unwrap_or_default(),
        interval_jitter_percent: h.interval_jitter_percent,
        initial_jitter: optional_duration(
            h.initial_jitter.as_ref(),
            &path.field("initial_jitter"),
        )?
        .unwrap_or_default(),
        unhealthy_threshold: threshold(h.unhealthy_threshold.as_ref(), "unhealthy_threshold")?,
        healthy_threshold: threshold(h.healthy_threshold.as_ref(), "healthy_threshold")?,
        no_traffic_interval,
        no_traffic_healthy_interval: positive_or(
            h.no_traffic_healthy_interval.as_ref(),
            "no_traffic_healthy_interval",
            no_traffic_interval,
        )?,
        unhealthy_interval,
        unhealthy_edge_interval: positive_or(
            h.unhealthy_edge_interval.as_ref(),
            "unhealthy_edge_interval",
            unhealthy_interval,
        )?,
        healthy_edge_interval: positive_or(
            h.healthy_edge_interval.as_ref(),
            "healthy_edge_interval",
            interval,
        )?,
        reuse_connection: h.reuse_connection.as_ref().is_none_or(|b| b.value),
        always_log_failures: h.always_log_health_check_failures,
        checker,
    })
}

fn http_check(c: &HttpHealthCheck, path: &FieldPath) -> Result<HttpCheck> {
    if c.path.is_empty() {
        return Err(path
            .field("path")
            .error("value length must be at least 1 characters"));
    }
    http::uri::PathAndQuery::try_from(c.path.as_str())
        .map_err(|_| path.field("path").error("not a valid request path"))?;
    let host = (!c.host.is_empty()).then(|| c.host.clone());
    if let Some(h) = &host {
        http::HeaderValue::from_str(h)
            .map_err(|_| path.field("host").error("not a valid header value"))?;
    }
    let mut expected_statuses = Vec::new();
    for (i, r) in c.expected_statuses.iter().enumerate() {
        let p = path.field("expected_statuses").index(i);
        // Envoy: start in [100, 600), end in (100, 600], start < end.
        if !(100..600).contains(&r.start) || !(101..=600).contains(&r.end) || r.start >= r.end {
            return Err(p.error(format!(
                "Invalid http expected status range: expecting start < end, 100 <= start < 600 and 100 < end <= 600, got [{}, {})",
                r.start, r.end
            )));
        }
        expected_statuses.push((r.start as u16, r.end as u16));
    }
    if expected_statuses.is_empty() {
        expected_statuses.push((200, 201));
    }
    let headers_to_add = headers_to_add(
        &c.request_headers_to_add,
        &path.field("request_headers_to_add"),
    )?;
    let headers_to_remove = c
        .request_headers_to_remove
        .iter()
        .enumerate()
        .map(|(i, n)| {
            http::HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()).map_err(|_| {
                path.field("request_headers_to_remove")
                    .index(i)
                    .error("invalid header name")
            })
        })
        .collect::<Result<_>>()?;
    let http2 = match CodecClientType::try_from(c.codec_client_type) {
        Ok(CodecClientType::Http1) => false,
        Ok(CodecClientType::Http2) => true,
        _ => {
            return Err(path
                .field("codec_client_type")
                .error("only HTTP1 and HTTP2 health checks are supported"))
        }
    };
    Ok(HttpCheck {
        host,
        path: c.path.clone(),
        expected_statuses,
        headers_to_add,
        headers_to_remove,
        http2,
    })
}

fn grpc_check(c: &GrpcHealthCheck, path: &FieldPath) -> Result<GrpcCheck> {
    let authority = (!c.authority.is_empty()).then(|| c.authority.clone());
    if let Some(a) = &authority {
        http::uri::Authority::try_from(a.as_str())
            .map_err(|_| path.field("authority").error("not a valid authority"))?;
    }
    Ok(GrpcCheck {
        service: c.service_name.clone(),
        authority,
        metadata: headers_to_add(&c.initial_metadata, &path.field("initial_metadata"))?,
    })
}

/// Headers a check adds, as (name, value, append).
fn headers_to_add(
    options: &[HeaderValueOption],
    path: &FieldPath,
) -> Result<Vec<(http::HeaderName, http::HeaderValue, bool)>> {
    let mut headers_to_add = Vec::new();
    for (i, o) in options.iter().enumerate() {
        let p = path.index(i).field("header");
        let Some(h) = &o.header else {
            return Err(p.error("value is required"));
        };
        // Envoy formats `%...%` commands in these values; Outrigger sends them literally, so
        // it refuses what it would send wrong.
        if h.value.contains('%') {
            return Err(p
                .field("value")
                .error("header formatters (%...%) are not supported in health check headers"));
        }
        let name = http::HeaderName::from_bytes(h.key.to_ascii_lowercase().as_bytes())
            .map_err(|_| p.field("key").error("invalid header name"))?;
        let value = http::HeaderValue::from_str(&h.value)
            .map_err(|_| p.field("value").error("invalid header value"))?;
        #[allow(deprecated)]
        let append = match o.append_action {
            // APPEND_IF_EXISTS_OR_ADD, unless the deprecated `append` says otherwise.
            0 => o.append.as_ref().is_none_or(|a| a.value),
            _ => false,
        };
        headers_to_add.push((name, value, append));
    }
    Ok(headers_to_add)
}

fn tcp_check(c: &TcpHealthCheck, path: &FieldPath) -> Result<TcpCheck> {
    let send = match &c.send {
        Some(p) => payload_bytes(p, &path.field("send"))?,
        None => Vec::new(),
    };
    let receive = c
        .receive
        .iter()
        .enumerate()
        .map(|(i, p)| payload_bytes(p, &path.field("receive").index(i)))
        .collect::<Result<_>>()?;
    Ok(TcpCheck { send, receive })
}

/// A payload's bytes: `text` is hex (Envoy's encoding for it), `binary` is raw.
fn payload_bytes(p: &Payload, path: &FieldPath) -> Result<Vec<u8>> {
    match &p.payload {
        Some(payload::Payload::Text(hex)) => decode_hex(hex).ok_or_else(|| {
            path.field("text")
                .error(format!("invalid hex string '{hex}'"))
        }),
        Some(payload::Payload::Binary(b)) => Ok(b.clone()),
        None => Err(path.error("a payload (text or binary) is required")),
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() || !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
#[path = "health_check_tests.rs"]
mod tests;
