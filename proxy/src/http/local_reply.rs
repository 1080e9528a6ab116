//! Responses Outrigger generates itself, with Envoy's status codes, bodies and response flags.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/observability/access_log/usage#config-access-log-format-response-flags

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::router::ResponseBody;

/// Envoy's response flags for the local replies Outrigger makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFlag {
    /// NR: no route.
    NoRouteFound,
    /// UH: no healthy upstream host.
    NoHealthyUpstream,
    /// UF: upstream connection failure.
    UpstreamConnectionFailure,
    /// UR: upstream reset.
    UpstreamRemoteReset,
    /// UC: the upstream connection closed before the response.
    UpstreamConnectionTermination,
    /// UT: upstream request timeout.
    UpstreamRequestTimeout,
    /// NC: no cluster.
    NoClusterFound,
    /// UO: a circuit breaker overflowed.
    UpstreamOverflow,
    /// SI: the stream idle timeout ended the stream.
    StreamIdleTimeout,
    /// UPE: the upstream's response broke the protocol (a malformed head, too many headers).
    UpstreamProtocolError,
    /// UMSDR: the cluster's `max_stream_duration` ended the upstream stream.
    UpstreamMaxStreamDurationReached,
}

impl ResponseFlag {
    pub fn short(self) -> &'static str {
        match self {
            ResponseFlag::NoRouteFound => "NR",
            ResponseFlag::NoHealthyUpstream => "UH",
            ResponseFlag::UpstreamConnectionFailure => "UF",
            ResponseFlag::UpstreamRemoteReset => "UR",
            ResponseFlag::UpstreamConnectionTermination => "UC",
            ResponseFlag::UpstreamRequestTimeout => "UT",
            ResponseFlag::NoClusterFound => "NC",
            ResponseFlag::UpstreamOverflow => "UO",
            ResponseFlag::StreamIdleTimeout => "SI",
            ResponseFlag::UpstreamProtocolError => "UPE",
            ResponseFlag::UpstreamMaxStreamDurationReached => "UMSDR",
        }
    }
}

/// A local reply: `text/plain` when it has a body, as Envoy sends them.
pub fn local_reply(
    status: StatusCode,
    body: impl Into<Bytes>,
    server: &HeaderValue,
) -> Response<ResponseBody> {
    let body: Bytes = body.into();
    let mut response = Response::new(
        Full::new(body.clone())
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    let headers = response.headers_mut();
    if !body.is_empty() {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    // hyper writes the length from the body (`content-length: 0` on HTTP/1.1, nothing on
    // HTTP/2 for an empty body, as Envoy).
    headers.insert(header::SERVER, server.clone());
    response
}
