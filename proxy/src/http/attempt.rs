//! One attempt of a forwarded request: what every attempt shares (the request's head, its
//! body kept for a replay, the hash, the route timeout), and the steps of one try — pick a
//! host, build the upstream request, send it (under the per-try idle timer when the policy
//! has one). The plain retry loop (`forward.rs`) and the hedged one (`hedge.rs`) both use
//! them.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/router_filter

use super::connection::HttpContext;
use super::forward::{attempt_count_in_response, Target};
use super::local_reply::{local_reply, ResponseFlag};
use super::replay_body::Replay;
use super::retry::{Attempt, RetryState};
use super::router::Outcome;
use super::upstream_request::{copy_head, upstream_request};
use crate::config::circuit_breakers::Priority;
use crate::upstream::transport::Via;
use crate::upstream::UpstreamIncoming;
use crate::upstream::{ClusterRuntime, Host, UpstreamBody, UpstreamError};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// What the attempts of one request share.
pub(super) struct Attempts<'a> {
    pub ctx: &'a HttpContext,
    pub cluster: &'a Arc<ClusterRuntime>,
    pub target: &'a Target<'a>,
    /// The request's head, copied for each attempt (taken by the only one without a policy).
    pub head: http::request::Parts,
    /// The body kept for replays (requests with a retry policy and a body).
    pub replay: Option<Replay>,
    /// The body of the only attempt (no policy) or an empty one.
    pub once: Option<UpstreamBody>,
    pub hash: Option<u64>,
    pub set_cookie: Option<http::HeaderValue>,
    pub use_h2: bool,
    /// How the upstream connection is made: Istio's per-request ALPN offer, the client's
    /// address with `original_src`.
    pub via: Via<'a>,
    /// Each attempt writes its expected timeout in `grpc-timeout` (`max_grpc_timeout`).
    pub grpc_header: bool,
    /// The route timeout (None: none).
    pub route_timeout: Option<Duration>,
}

/// One attempt, ready to send.
pub(super) struct Prepared {
    pub host: Arc<Host>,
    pub request: Request<UpstreamBody>,
    /// Fires when the request body has gone upstream whole (only asked for with an idle
    /// timer, and only for requests with a body).
    pub sent: Option<Arc<Notify>>,
}

impl Attempts<'_> {
    /// Picks the host of attempt number `attempt` and builds its request, telling the upstream
    /// `expected` as its timeout. Err is the reply when no host is left or the request cannot
    /// be sent (boxed: rare, and large).
    pub fn prepare(
        &mut self,
        mut retry: Option<&mut RetryState<'_>>,
        expected: Option<Duration>,
        attempt: u32,
        idle: bool,
    ) -> Result<Prepared, Box<Outcome>> {
        let server = &self.ctx.hcm.server_name;
        let Some(host) = pick_host(
            self.cluster,
            self.target,
            &self.head,
            self.hash,
            retry.as_deref(),
        ) else {
            self.cluster.stats.upstream_cx_none_healthy.inc();
            // Envoy charges its 503 to the cluster like an upstream's (checked with 1.40).
            self.cluster
                .stats
                .responses
                .completed(StatusCode::SERVICE_UNAVAILABLE, self.target.origin);
            let mut outcome = Outcome {
                response: local_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no healthy upstream",
                    server,
                ),
                flag: Some(ResponseFlag::NoHealthyUpstream),
                upstream: None,
                info: Default::default(),
            };
            attempt_count_in_response(&mut outcome, self.target, attempt);
            return Err(Box::new(outcome));
        };
        if let Some(r) = retry.as_deref_mut() {
            r.tried(&host.authority);
        }
        // Without a policy there is one attempt: it takes the head itself (the empty head left
        // behind allocates nothing).
        let head = match retry {
            Some(_) => copy_head(&self.head),
            None => std::mem::replace(&mut self.head, Request::new(()).into_parts().0),
        };
        let body = match (&self.replay, self.once.take()) {
            (Some(r), _) => r.next_attempt().boxed_unsync(),
            (None, Some(b)) => b,
            (None, None) => super::router::empty_body(),
        };
        let (body, sent) = match idle {
            true => super::attempt_idle::SentBody::wrap(body),
            false => (body, None),
        };
        let Some(mut request) = upstream_request(
            head,
            body,
            self.target,
            &host.hostname,
            host.authority.as_str(),
            expected,
            attempt,
        ) else {
            return Err(Box::new(Outcome {
                response: local_reply(StatusCode::BAD_REQUEST, Bytes::new(), server),
                flag: None,
                upstream: None,
                info: Default::default(),
            }));
        };
        // Envoy rewrites `grpc-timeout` to what the attempt may take, so the server knows
        // its real deadline.
        if let (true, Some(expected)) = (self.grpc_header, expected) {
            super::stream_timeouts::set_grpc_timeout(request.headers_mut(), expected);
        }
        Ok(Prepared {
            host,
            request,
            sent,
        })
    }
}

/// Sends one attempt and waits for its response head, under the per-try idle timer when
/// `idle` is given (with the request's "sent" signal) and the cluster's
/// `max_stream_duration` when it has one.
pub(super) async fn send_attempt(
    cluster: &ClusterRuntime,
    host: &Host,
    request: Request<UpstreamBody>,
    use_h2: bool,
    priority: Priority,
    via: Via<'_>,
    idle: Option<(Duration, Option<Arc<Notify>>)>,
) -> Result<Response<UpstreamIncoming>, UpstreamError> {
    let send = cluster.pool.send(host, request, use_h2, priority, via);
    let head = async {
        match idle {
            Some((idle, sent)) => super::attempt_idle::head_within(send, idle, sent).await,
            None => send.await,
        }
    };
    match cluster.config.stream_limits.max_stream_duration {
        Some(max) => tokio::time::timeout(max, head)
            .await
            .unwrap_or(Err(UpstreamError::MaxStreamDuration)),
        None => head.await,
    }
}

/// Picks the attempt's host. A retry under the previous-hosts predicate re-picks, up to
/// `host_selection_retry_max_attempts` times, while the pick is a host already tried; the
/// last pick stands if every one was.
fn pick_host(
    cluster: &ClusterRuntime,
    target: &Target<'_>,
    head: &http::request::Parts,
    hash: Option<u64>,
    retry: Option<&RetryState<'_>>,
) -> Option<Arc<Host>> {
    let picks = retry.map_or(1, RetryState::host_picks);
    let mut picked = None;
    for _ in 0..picks {
        let host = cluster.choose_host(target.info.downstream.local, Some(&head.headers), hash)?;
        let rejected = retry.is_some_and(|r| r.rejects(&host.authority));
        picked = Some(host);
        if !rejected {
            break;
        }
    }
    picked
}

/// How a failed attempt reads to the retry decision (None: never retried).
pub(super) fn failed_attempt(e: &UpstreamError) -> Option<Attempt<'static>> {
    match e {
        UpstreamError::ConnectFailure(_) => Some(Attempt::ConnectFailure),
        UpstreamError::Reset(reason) => Some(Attempt::Reset {
            refused: reason.contains("refused"),
        }),
        UpstreamError::Protocol | UpstreamError::StreamReset => {
            Some(Attempt::Reset { refused: false })
        }
        // An idle attempt is retried like a timed-out one (checked against Envoy 1.40).
        UpstreamError::PerTryTimeout | UpstreamError::PerTryIdleTimeout => {
            Some(Attempt::PerTryTimeout)
        }
        // A circuit breaker's refusal is answered at once (UO), as Envoy does.
        UpstreamError::Timeout
        | UpstreamError::NoHealthyUpstream
        | UpstreamError::Overflow
        | UpstreamError::MaxStreamDuration
        | UpstreamError::UnsupportedTransport(_) => None,
    }
}

/// Waits the back-off, or until the route timeout; false when the route timeout came first.
pub(super) async fn back_off(wait: Duration, deadline: Option<Instant>) -> bool {
    match deadline {
        Some(d) if Instant::now() + wait >= d => {
            tokio::time::sleep_until(d.into()).await;
            false
        }
        _ => {
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            true
        }
    }
}
