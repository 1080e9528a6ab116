//! What a failed upstream attempt counts and, when it is final, the local reply the client
//! gets, with Envoy's status, body, response flag and details.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/observability/access_log/usage#config-access-log-format-response-flags

use super::local_reply::{local_reply, ResponseFlag};
use super::router::Outcome;
use crate::stats::responses::Origin;
use crate::upstream::{ClusterRuntime, HostStats, UpstreamError};
use http::{HeaderName, HeaderValue, StatusCode};
use std::sync::atomic::Ordering::Relaxed;

static X_ENVOY_OVERLOADED: HeaderName = HeaderName::from_static("x-envoy-overloaded");

/// Counts a failed attempt, final or retried: connect failures, timeouts, the host's errors.
pub fn count_failure(cluster: &ClusterRuntime, host: &HostStats, error: &UpstreamError) {
    // An overflowed request never reached the host.
    if *error == UpstreamError::Overflow {
        return;
    }
    host.rq_error.fetch_add(1, Relaxed);
    match error {
        UpstreamError::Timeout => {
            cluster.stats.upstream_rq_timeout.inc();
            host.rq_timeout.fetch_add(1, Relaxed);
        }
        UpstreamError::PerTryTimeout => {
            cluster.stats.retry.upstream_rq_per_try_timeout.inc();
            host.rq_timeout.fetch_add(1, Relaxed);
        }
        UpstreamError::PerTryIdleTimeout => {
            cluster.stats.retry.upstream_rq_per_try_idle_timeout.inc();
            host.rq_timeout.fetch_add(1, Relaxed);
        }
        UpstreamError::ConnectFailure(_) => {
            cluster.stats.upstream_cx_connect_fail.inc();
            host.cx_connect_fail.fetch_add(1, Relaxed);
        }
        UpstreamError::Protocol => cluster.stats.upstream_cx_protocol_error.inc(),
        UpstreamError::MaxStreamDuration => cluster.stats.upstream_rq_max_duration_reached.inc(),
        UpstreamError::Reset(_)
        | UpstreamError::StreamReset
        | UpstreamError::NoHealthyUpstream
        | UpstreamError::Overflow
        | UpstreamError::UnsupportedTransport(_) => {}
    }
}

/// The local reply for a final failed attempt. After retries Envoy's body says so
/// ("retried and the latest reset reason").
pub fn failure_reply(
    cluster: &ClusterRuntime,
    error: UpstreamError,
    hcm: &crate::config::hcm::HttpConnectionManager,
    retried: bool,
    origin: Origin,
) -> Outcome {
    let server = &hcm.server_name;
    let mut transport_failure = None;
    let mut details = None;
    let reset = |reason: &str| {
        let lead = if retried {
            "retried and the latest reset reason"
        } else {
            "reset reason"
        };
        format!("upstream connect error or disconnect/reset before headers. {lead}: {reason}")
    };
    let (status, body, flag) = match error {
        UpstreamError::Timeout => (
            StatusCode::GATEWAY_TIMEOUT,
            "upstream request timeout".to_string(),
            ResponseFlag::UpstreamRequestTimeout,
        ),
        UpstreamError::PerTryIdleTimeout => {
            details = Some("upstream_per_try_idle_timeout");
            (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream request timeout".to_string(),
                ResponseFlag::UpstreamRequestTimeout,
            )
        }
        UpstreamError::PerTryTimeout => {
            details = Some("upstream_per_try_timeout");
            (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream request timeout".to_string(),
                ResponseFlag::UpstreamRequestTimeout,
            )
        }
        UpstreamError::ConnectFailure(reason) => {
            tracing::debug!(target: "router", "upstream connect failure: {reason}");
            transport_failure = Some(super::access_log::transport_failure_reason(&reason));
            // Envoy 1.40's body names the reset reason only.
            (
                StatusCode::SERVICE_UNAVAILABLE,
                reset("remote connection failure"),
                ResponseFlag::UpstreamConnectionFailure,
            )
        }
        UpstreamError::Reset(reason) => {
            tracing::debug!(target: "router", "upstream reset: {reason}");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                reset("connection termination"),
                // Envoy flags a connection that closed before the response UC (checked against
                // Envoy 1.40); UR is a reset stream.
                ResponseFlag::UpstreamConnectionTermination,
            )
        }
        UpstreamError::Protocol => (
            StatusCode::BAD_GATEWAY,
            reset("protocol error"),
            ResponseFlag::UpstreamProtocolError,
        ),
        UpstreamError::MaxStreamDuration => (
            StatusCode::GATEWAY_TIMEOUT,
            "upstream max stream duration reached".to_string(),
            ResponseFlag::UpstreamMaxStreamDurationReached,
        ),
        UpstreamError::StreamReset => (
            StatusCode::SERVICE_UNAVAILABLE,
            reset("remote reset"),
            ResponseFlag::UpstreamRemoteReset,
        ),
        UpstreamError::NoHealthyUpstream => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no healthy upstream".to_string(),
            ResponseFlag::NoHealthyUpstream,
        ),
        // A circuit breaker is open: Envoy's body, `x-envoy-overloaded: true` and UO.
        // https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/router_filter#x-envoy-overloaded
        UpstreamError::Overflow => (
            StatusCode::SERVICE_UNAVAILABLE,
            reset("overflow"),
            ResponseFlag::UpstreamOverflow,
        ),
        UpstreamError::UnsupportedTransport(t) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("upstream connect error or disconnect/reset before headers. transport {t} is not supported"),
            ResponseFlag::UpstreamConnectionFailure,
        ),
    };
    // Envoy charges a local reply for an upstream failure like a response from the cluster,
    // but for the stream duration's (checked with Envoy 1.40).
    if flag != ResponseFlag::UpstreamMaxStreamDurationReached {
        cluster.stats.responses.completed(status, origin);
    }
    let mut response = local_reply(status, body, server);
    if flag == ResponseFlag::UpstreamOverflow && !hcm.suppress_envoy_headers {
        response
            .headers_mut()
            .insert(X_ENVOY_OVERLOADED.clone(), HeaderValue::from_static("true"));
    }
    let mut outcome = Outcome {
        response,
        flag: Some(flag),
        upstream: None,
        info: Default::default(),
    };
    outcome.info.upstream_transport_failure_reason = transport_failure;
    outcome.info.response_code_details = details.map(Into::into);
    outcome
}
