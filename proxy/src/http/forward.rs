//! Forwarding a request to its route's cluster: pick the cluster (named, from a header, or
//! weighted), then make attempts — pick a host, build the upstream request, send it within the
//! per-try and route timeouts — until one is final under the retry policy, and turn its
//! response (or failure) into what the client gets.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/router_filter

use super::attempt::{back_off, failed_attempt, send_attempt, Attempts, Prepared};
use super::connection::HttpContext;
use super::local_reply::{local_reply, ResponseFlag};
use super::replay_body::Replay;
use super::retry::{self, Attempt, Decision};
use super::router::{BoxError, Outcome, RequestExtras, RequestInfo, ResponseBody};
use super::stream_timeouts::{CountedBody, StreamProgress};
use super::tunnel::{splice_upgrade, TunnelTimers};
use super::upstream_failure::{count_failure, failure_reply};
use super::upstream_request::{strip_hop_by_hop, X_ENVOY_ATTEMPT_COUNT};
use crate::config::cluster::UpstreamProtocol;
use crate::config::hash_policy::{HashInput, RequestHash};
use crate::config::hcm::{HttpConnectionManager, ServerHeader};
use crate::config::route::{
    ClusterTarget, Forward, Route, RouteConfig, VirtualHost, WeightedTarget,
};
use crate::format::ResponseFlags;
use crate::stats::responses::Origin;
use crate::upstream::transport::Via;
use crate::upstream::UpstreamIncoming;
use crate::upstream::{ClusterRuntime, Host, HostResult, HostStats, UpstreamError};
use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use hyper::body::Incoming;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

static X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName =
    HeaderName::from_static("x-envoy-upstream-service-time");

/// Where one request goes: the route's pieces and, for weighted routes, the picked cluster.
pub(super) struct Target<'a> {
    pub rc: &'a RouteConfig,
    pub vh: &'a VirtualHost,
    pub route: &'a Route,
    pub forward: &'a Forward,
    pub weighted: Option<&'a WeightedTarget>,
    /// An allowed upgrade (websocket): `Upgrade` and `Connection` go upstream.
    pub upgrade: bool,
    pub info: RequestInfo,
    /// Whether the connection manager marked the request internal: the cluster counts its
    /// response under `internal.` or `external.`.
    pub origin: Origin,
    /// The router's `suppress_envoy_headers` is off.
    pub envoy_headers: bool,
}

/// The cluster a route sends this request to (for a weighted route, by `draw`, else a new
/// draw), and the weighted target picked.
pub fn pick_cluster<'f>(
    ctx: &HttpContext,
    f: &'f Forward,
    headers: &http::HeaderMap,
    draw: Option<u64>,
) -> (Option<Arc<ClusterRuntime>>, Option<&'f WeightedTarget>) {
    match &f.target {
        ClusterTarget::Named(c) => (c.current(), None),
        ClusterTarget::Header(name) => {
            let cluster = headers.get(name).and_then(|v| v.to_str().ok());
            (cluster.and_then(|c| ctx.clusters.by_name(c)), None)
        }
        ClusterTarget::Weighted { total, .. } => {
            let draw = draw.unwrap_or_else(|| crate::random::below(*total));
            let picked = f.target.weighted_pick(draw);
            (picked.and_then(|w| w.cluster.current()), picked)
        }
    }
}

/// Names the route's cluster in a local reply's stream info (for access logs, Istio's
/// metrics and spans), as Envoy knows the cluster once the route is resolved.
pub fn note_route_cluster(
    ctx: &HttpContext,
    outcome: &mut Outcome,
    route: &Route,
    headers: &http::HeaderMap,
    draw: Option<u64>,
) {
    let crate::config::route::Action::Forward(f) = &route.action else {
        return;
    };
    if let (Some(cluster), _) = pick_cluster(ctx, f, headers, draw) {
        outcome.info.upstream_cluster = Some(cluster.log_names.0.clone());
        outcome.info.upstream_cluster_alt = cluster.log_names.1.clone();
        outcome.info.istio_cluster = cluster.config.istio.clone();
    }
}

pub async fn forward(
    ctx: &HttpContext,
    rc: &RouteConfig,
    vh: &VirtualHost,
    route: &Route,
    f: &Forward,
    request: Request<Incoming>,
    extras: RequestExtras,
) -> Outcome {
    let RequestExtras {
        on_upgrade,
        info,
        weighted_draw,
    } = extras;
    let server = &ctx.hcm.server_name;
    let (cluster, weighted) = pick_cluster(ctx, f, request.headers(), weighted_draw);
    if let (Some(call), Some(cluster)) = (
        request
            .extensions()
            .get::<Arc<super::grpc_stats::GrpcCall>>(),
        &cluster,
    ) {
        call.bind(cluster);
    }
    // Istio's periodic reports before the response starts name the service by this.
    if let (Some(slot), Some(cluster)) = (
        request.extensions().get::<super::istio::RoutedSlot>(),
        &cluster,
    ) {
        let _ = slot.set(super::istio::Routed {
            route_name: Some(Arc::from(route.name.as_str())),
            cluster: cluster.config.istio.clone(),
        });
    }
    let Some(cluster) = cluster else {
        ctx.stats.no_cluster.inc();
        return Outcome {
            response: local_reply(f.cluster_not_found, Bytes::new(), server),
            flag: Some(ResponseFlag::NoClusterFound),
            upstream: None,
            info: Default::default(),
        };
    };
    let target = Target {
        rc,
        vh,
        route,
        forward: f,
        weighted,
        upgrade: on_upgrade.is_some(),
        info,
        origin: Origin::of(request.headers()),
        envoy_headers: !ctx.hcm.suppress_envoy_headers,
    };
    // The tunnel of an upgrade ends on the stream's timers (forwarding takes the progress
    // from the request to count its body).
    let timers = on_upgrade.as_ref().and_then(|_| {
        let progress = request.extensions().get::<Arc<StreamProgress>>()?.clone();
        Some(TunnelTimers {
            progress,
            idle: ctx.stats.downstream_rq_idle_timeout.clone(),
            duration: ctx.stats.downstream_rq_max_duration_reached.clone(),
        })
    });
    let mut outcome = send_to_cluster(ctx, &cluster, &target, request).await;
    if ctx.records_streams() || target.info.traced {
        outcome.info.upstream_cluster = Some(cluster.log_names.0.clone());
        outcome.info.upstream_cluster_alt = cluster.log_names.1.clone();
        outcome.info.istio_cluster = cluster.config.istio.clone();
    }
    if let Some(downstream) = on_upgrade {
        splice_upgrade(&mut outcome, downstream, timers);
    }
    if let Some(w) = weighted {
        let upstream = outcome.upstream.clone();
        let format = target.info.format_context(
            http::Version::HTTP_11,
            upstream.as_ref().map(|a| a.as_str()),
            None,
        );
        w.response_headers
            .apply(outcome.response.headers_mut(), &format);
    }
    outcome
}

/// The request body as it goes upstream, counted for the stream's progress when it has one.
fn counted<B>(body: B, progress: Option<Arc<StreamProgress>>) -> ResponseBody
where
    B: hyper::body::Body<Data = Bytes, Error = BoxError> + Send + Unpin + 'static,
{
    match progress {
        Some(progress) => CountedBody::new(body, progress).boxed_unsync(),
        None => body.boxed_unsync(),
    }
}

async fn send_to_cluster(
    ctx: &HttpContext,
    cluster: &Arc<ClusterRuntime>,
    target: &Target<'_>,
    request: Request<Incoming>,
) -> Outcome {
    let server = &ctx.hcm.server_name;
    if let Some(transport) = &cluster.config.unsupported_transport {
        cluster.stats.upstream_rq_total.inc();
        cluster.stats.upstream_cx_connect_fail.inc();
        let body = format!(
            "upstream connect error or disconnect/reset before headers. reset reason: connection failure, transport failure reason: {transport} is not supported by Outrigger yet"
        );
        return Outcome {
            response: local_reply(StatusCode::SERVICE_UNAVAILABLE, body, server),
            flag: Some(ResponseFlag::UpstreamConnectionFailure),
            upstream: None,
            info: Default::default(),
        };
    }
    // The hash is computed only for a balancer that uses it (a cookie is generated only then).
    let hashed = if cluster.config.lb.uses_hash() && !target.forward.hash_policy.is_empty() {
        target.forward.hash_policy.compute(&HashInput {
            headers: request.headers(),
            query: request.uri().query().unwrap_or(""),
            remote: target.info.downstream.remote,
        })
    } else {
        RequestHash::default()
    };
    let use_h2 = match cluster.config.protocol {
        // An `auto_config` cluster's pool learns the protocol from each connection's ALPN.
        UpstreamProtocol::Http1 | UpstreamProtocol::Auto => false,
        UpstreamProtocol::Http2 => true,
        UpstreamProtocol::UseDownstream => request.version() == http::Version::HTTP_2,
    };
    // Istio's istio.alpn: the upstream TLS handshake offers the list for this protocol.
    let alpn = match &ctx.hcm.istio_alpn {
        Some(istio) if cluster.config.istio_alpn_override => istio.offer(use_h2),
        _ => None,
    };
    let via = Via {
        alpn,
        source: target.info.downstream.original_src,
    };
    let (mut head, body) = request.into_parts();
    let body = body.map_err(|e| Box::new(e) as BoxError);
    let progress = head.extensions.remove::<Arc<StreamProgress>>();
    // The gRPC statistics filter counts the request's messages as they go upstream.
    let body = match head.extensions.remove::<Arc<super::grpc_stats::GrpcCall>>() {
        Some(call) => counted(call.request_body(body), progress),
        None => counted(body, progress),
    };
    // A gRPC request on a route with `max_grpc_timeout` takes its route timeout from its
    // `grpc-timeout`, and each attempt tells the upstream its deadline in that header.
    let grpc_timeout = target
        .forward
        .grpc_timeout
        .filter(|_| super::grpc_reply::is_grpc(&head.headers));
    let grpc_header = grpc_timeout.is_some();
    let route_timeout = match grpc_timeout {
        Some(g) => g.route_timeout(super::stream_timeouts::grpc_timeout(&head.headers)),
        None => target.forward.timeout,
    };
    let controls = retry::controls(
        &mut head.headers,
        target.forward.retry.as_deref(),
        route_timeout,
    );
    // Mirrors copy the request as it goes to the first attempt (never an upgrade).
    let body = if target.forward.mirrors.is_empty() || target.upgrade {
        body
    } else {
        super::mirror::start(
            ctx,
            target,
            &head,
            body,
            controls.timeout,
            cluster.stats.retry.retry_or_shadow_abandoned.clone(),
        )
    };
    // An upgraded connection cannot be replayed; a policy may exclude the request.
    let mut retry = controls
        .retry
        .filter(|r| !target.upgrade && r.applies_to(&head.headers));
    // A request that may be retried keeps its body (up to the limit) while it streams; one
    // without a body sends an empty one each time. Without a policy nothing is kept.
    let mut once = Some(body);
    let replay = match &retry {
        Some(_) if !once.as_ref().is_some_and(|b| b.is_end_stream()) => once.take().map(|b| {
            Replay::new(
                b,
                target.forward.buffer_limit,
                cluster.stats.retry.retry_or_shadow_abandoned.clone(),
            )
        }),
        _ => None,
    };
    let mut attempts = Attempts {
        ctx,
        cluster,
        target,
        head,
        replay,
        once,
        hash: hashed.hash,
        set_cookie: hashed.set_cookie,
        use_h2,
        via,
        grpc_header,
        route_timeout: controls.timeout,
    };
    if target.forward.hedge_on_per_try_timeout
        && retry.as_ref().is_some_and(|r| r.per_try_timeout.is_some())
    {
        if let Some(r) = retry {
            return super::hedge::hedged(attempts, r).await;
        }
    }
    let deadline = controls.timeout.map(|t| Instant::now() + t);
    let idle = retry.as_ref().and_then(|r| r.per_try_idle_timeout());
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        // The attempt's timeout: the per-try one, else what is left of the route timeout.
        // The first attempt has the whole route timeout (Envoy's expected timeout header says
        // exactly the route timeout then).
        let remaining = match attempt {
            1 => controls.timeout,
            _ => deadline.map(|d| d.saturating_duration_since(Instant::now())),
        };
        let per_try = retry
            .as_ref()
            .and_then(|r| r.per_try_timeout)
            .filter(|p| remaining.is_none_or(|r| *p < r));
        let attempt_timeout = per_try.or(remaining);
        let Prepared {
            host,
            request: upstream_request,
            sent,
        } = match attempts.prepare(retry.as_mut(), attempt_timeout, attempt, idle.is_some()) {
            Ok(p) => p,
            Err(outcome) => return *outcome,
        };
        let started = Instant::now();
        cluster.stats.upstream_rq_active.inc();
        host.stats.rq_active.fetch_add(1, Relaxed);
        // The pool counts `upstream_rq_total` (and the host's) when the request gets a
        // connection, as Envoy does: not when connecting failed or a breaker refused it.
        let send = send_attempt(
            cluster,
            &host,
            upstream_request,
            use_h2,
            target.forward.priority,
            via,
            idle.map(|d| (d, sent)),
        );
        let result = match attempt_timeout {
            Some(t) => tokio::time::timeout(t, send)
                .await
                .unwrap_or(Err(if per_try.is_some() {
                    UpstreamError::PerTryTimeout
                } else {
                    UpstreamError::Timeout
                })),
            None => send.await,
        };
        cluster.stats.upstream_rq_active.dec();
        host.stats.rq_active.fetch_sub(1, Relaxed);
        // Every attempt's result feeds outlier detection (and an immediate health check
        // failure header takes the host out at once).
        match &result {
            Ok(response) => {
                cluster
                    .health
                    .report(&host, HostResult::Http(response.status().as_u16()));
                cluster.response_headers(&host, response.headers());
            }
            Err(e) => {
                if let Some(r) = HostResult::from_error(e) {
                    cluster.health.report(&host, r);
                }
            }
        }
        let body_kept = attempts.replay.as_ref().is_none_or(Replay::retriable);
        let breakers = cluster.breakers.priority(target.forward.priority);
        let admit = || breakers.try_acquire_retry().map(Some).ok_or(());
        let decision = match (&mut retry, &result) {
            (Some(r), Ok(response)) => r.decide_admitted(
                Attempt::Response(response.status(), response.headers()),
                body_kept,
                &cluster.stats,
                admit,
            ),
            (Some(r), Err(e)) => match failed_attempt(e) {
                Some(a) => r.decide_admitted(a, body_kept, &cluster.stats, admit),
                None => Decision::NoRetry,
            },
            (None, _) => Decision::NoRetry,
        };
        if let Decision::Retry(wait) = decision {
            match &result {
                Ok(response) => {
                    cluster.stats.responses.retried(response.status());
                    count_host_response(&host.stats, response.status());
                }
                Err(e) => count_failure(cluster, &host.stats, e),
            }
            drop(result);
            if back_off(wait, deadline).await {
                continue;
            }
            // The route timeout ran out while waiting for the retry.
            cluster.stats.upstream_rq_timeout.inc();
            let mut outcome = failure_reply(
                cluster,
                UpstreamError::Timeout,
                &ctx.hcm,
                true,
                target.origin,
            );
            outcome.info.upstream_host = Some(host.authority.clone());
            attempt_count_in_response(&mut outcome, target, attempt);
            return outcome;
        }
        if let Some(r) = &attempts.replay {
            r.release();
        }
        let retried = retry.as_ref().is_some_and(|r| r.retries > 0);
        let mut outcome = match result {
            Ok(response) => {
                if retried && decision == Decision::NoRetry {
                    cluster.stats.retry.upstream_rq_retry_success.inc();
                }
                let idle = idle.map(|d| (d, &cluster.stats.retry.upstream_rq_per_try_idle_timeout));
                answered(&mut attempts, &host, response, started, idle)
            }
            Err(e) => {
                count_failure(cluster, &host.stats, &e);
                let mut outcome = failure_reply(cluster, e, &ctx.hcm, retried, target.origin);
                // Envoy names the host it tried even when it never answered.
                outcome.info.upstream_host = Some(host.authority.clone());
                outcome
            }
        };
        let flag = match decision {
            Decision::LimitExceeded => ResponseFlags::named("URX"),
            Decision::Overflow => ResponseFlags::named("UO"),
            _ => None,
        };
        if let Some(flag) = flag {
            outcome.info.response_flags = outcome.info.response_flags.with(flag);
        }
        attempt_count_in_response(&mut outcome, target, attempt);
        return outcome;
    }
}

/// `x-envoy-attempt-count` on the response, when the virtual host asks for it (Envoy adds it
/// to local replies too).
pub(super) fn attempt_count_in_response(outcome: &mut Outcome, target: &Target<'_>, attempt: u32) {
    if target.vh.include_attempt_count_in_response {
        outcome
            .response
            .headers_mut()
            .insert(X_ENVOY_ATTEMPT_COUNT.clone(), HeaderValue::from(attempt));
    }
}

pub(super) fn count_host_response(host: &HostStats, status: StatusCode) {
    let counter = if status.is_server_error() {
        &host.rq_error
    } else {
        &host.rq_success
    };
    counter.fetch_add(1, Relaxed);
}

/// The final upstream response, as the client gets it (with the request's hash cookie, if
/// it has one to set); `idle` puts its body under the attempt's per-try idle timer (with the
/// counter to bump when it fires).
pub(super) fn answered(
    a: &mut Attempts<'_>,
    host: &Host,
    mut response: Response<UpstreamIncoming>,
    started: Instant,
    idle: Option<(Duration, &Arc<crate::stats::Counter>)>,
) -> Outcome {
    let (ctx, cluster, origin) = (a.ctx, a.cluster, a.target.origin);
    let set_cookie = a.set_cookie.take();
    let elapsed = started.elapsed();
    let responses = &cluster.stats.responses;
    responses.timed(elapsed.as_secs_f64() * 1000.0, origin);
    responses.completed(response.status(), origin);
    count_host_response(&host.stats, response.status());
    let facts = response
        .extensions_mut()
        .remove::<crate::upstream::ConnectionFacts>()
        .unwrap_or_default();
    let mut response = downstream_response(response, elapsed, &ctx.hcm);
    if let Some((idle, counter)) = idle {
        response = response.map(|body| {
            super::attempt_idle::TimerBody::idle(body, idle, counter.clone()).boxed_unsync()
        });
    }
    // The cluster's `max_stream_duration` runs from the attempt's start to the response's end.
    if let Some(max) = cluster.config.stream_limits.max_stream_duration {
        let counter = cluster.stats.upstream_rq_max_duration_reached.clone();
        let at = tokio::time::Instant::from_std(started + max);
        response = response
            .map(|body| super::attempt_idle::TimerBody::deadline(body, at, counter).boxed_unsync());
    }
    if let Some(cookie) = set_cookie {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    let mut outcome = Outcome {
        response,
        flag: None,
        upstream: Some(host.authority.clone()),
        info: Default::default(),
    };
    outcome.info.upstream_host = Some(host.authority.clone());
    outcome.info.upstream_local_address = facts.local;
    outcome.info.upstream_identities = facts.identities;
    if ctx.records_streams() {
        outcome.info.upstream_istio_peer = host.istio_peer.clone();
    }
    outcome
}

fn downstream_response(
    response: Response<UpstreamIncoming>,
    elapsed: Duration,
    hcm: &HttpConnectionManager,
) -> Response<ResponseBody> {
    let server = &hcm.server_name;
    let (mut parts, body) = response.into_parts();
    let switching = parts.status == StatusCode::SWITCHING_PROTOCOLS;
    let upgrade = parts.headers.get(header::UPGRADE).cloned();
    let connection = parts.headers.get(header::CONNECTION).cloned();
    strip_hop_by_hop(&mut parts.headers);
    if let (true, Some(kind)) = (switching, upgrade) {
        // The handshake goes back as the upstream wrote it (Envoy does the same).
        parts.headers.insert(header::UPGRADE, kind);
        parts.headers.insert(
            header::CONNECTION,
            connection.unwrap_or(HeaderValue::from_static("upgrade")),
        );
        parts.headers.insert(header::SERVER, server.clone());
        parts.version = http::Version::default();
        return Response::from_parts(
            parts,
            body.map_err(|e| Box::new(e) as BoxError).boxed_unsync(),
        );
    }
    if !hcm.suppress_envoy_headers {
        parts.headers.insert(
            X_ENVOY_UPSTREAM_SERVICE_TIME.clone(),
            HeaderValue::from(elapsed.as_millis() as u64),
        );
    }
    match hcm.server_header {
        ServerHeader::Overwrite => {
            parts.headers.insert(header::SERVER, server.clone());
        }
        ServerHeader::AppendIfAbsent if !parts.headers.contains_key(header::SERVER) => {
            parts.headers.insert(header::SERVER, server.clone());
        }
        ServerHeader::AppendIfAbsent | ServerHeader::PassThrough => {}
    }
    parts.version = http::Version::default();
    Response::from_parts(
        parts,
        body.map_err(|e| Box::new(e) as BoxError).boxed_unsync(),
    )
}
