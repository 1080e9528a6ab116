//! Forwarding a request to its route's cluster: pick the cluster (named, from a header, or
//! weighted) and a host, build the upstream request, send it within the route timeout, and
//! turn the response (or the failure) into what the client gets.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/router_filter

use super::connection::HttpContext;
use super::local_reply::{local_reply, ResponseFlag};
use super::router::{BoxError, Outcome, RequestExtras, RequestInfo, ResponseBody};
use crate::config::cluster::UpstreamProtocol;
use crate::config::hash_policy::{HashInput, RequestHash};
use crate::config::hcm::ServerHeader;
use crate::config::route::{
    ClusterTarget, Forward, HostRewrite, PathMatch, Route, RouteConfig, VirtualHost, WeightedTarget,
};
use crate::upstream::{ClusterRuntime, HostStats, UpstreamBody, UpstreamError};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

static X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName =
    HeaderName::from_static("x-envoy-upstream-service-time");
static X_ENVOY_EXPECTED_RQ_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-expected-rq-timeout-ms");
static X_ENVOY_ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");
static X_ENVOY_ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");
static X_ENVOY_ORIGINAL_HOST: HeaderName = HeaderName::from_static("x-envoy-original-host");
static X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-upstream-rq-timeout-ms");

/// Headers that describe one hop and are never forwarded (RFC 9110 §7.6.1).
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
    header::TRAILER,
];

/// Where one request goes: the route's pieces and, for weighted routes, the picked cluster.
struct Target<'a> {
    rc: &'a RouteConfig,
    vh: &'a VirtualHost,
    route: &'a Route,
    forward: &'a Forward,
    weighted: Option<&'a WeightedTarget>,
    /// An allowed upgrade (websocket): `Upgrade` and `Connection` go upstream.
    upgrade: bool,
    info: RequestInfo,
}

/// After a `101 Switching Protocols`, joins the two upgraded connections and copies bytes
/// both ways until either side closes.
fn splice_upgrade(outcome: &mut Outcome, downstream: hyper::upgrade::OnUpgrade) {
    if outcome.response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    let Some(upstream) = outcome
        .response
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
    else {
        return;
    };
    tokio::spawn(async move {
        let (Ok(down), Ok(up)) = tokio::join!(downstream, upstream) else {
            tracing::debug!(target: "http", "upgrade failed on one side");
            return;
        };
        let mut down = hyper_util::rt::TokioIo::new(down);
        let mut up = hyper_util::rt::TokioIo::new(up);
        if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
            tracing::debug!(target: "http", "upgraded connection ended: {e}");
        }
    });
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
    let (cluster, weighted) = match &f.target {
        ClusterTarget::Named(c) => (c.current(), None),
        ClusterTarget::Header(name) => {
            let cluster = request.headers().get(name).and_then(|v| v.to_str().ok());
            (cluster.and_then(|c| ctx.clusters.by_name(c)), None)
        }
        ClusterTarget::Weighted { total, .. } => {
            let draw = weighted_draw.unwrap_or_else(|| crate::random::below(*total));
            let picked = f.target.weighted_pick(draw);
            (picked.and_then(|w| w.cluster.current()), picked)
        }
    };
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
    };
    let mut outcome = send_to_cluster(ctx, &cluster, &target, request).await;
    if ctx.records_streams() {
        outcome.info.upstream_cluster = Some(cluster.log_names.0.clone());
        outcome.info.upstream_cluster_alt = cluster.log_names.1.clone();
        outcome.info.istio_cluster = cluster.config.istio.clone();
    }
    if let Some(downstream) = on_upgrade {
        splice_upgrade(&mut outcome, downstream);
    }
    if let Some(w) = weighted {
        let upstream = outcome.upstream.clone();
        let format = info.format_context(
            http::Version::HTTP_11,
            upstream.as_ref().map(|a| a.as_str()),
            None,
        );
        w.response_headers
            .apply(outcome.response.headers_mut(), &format);
    }
    outcome
}

async fn send_to_cluster(
    ctx: &HttpContext,
    cluster: &Arc<ClusterRuntime>,
    target: &Target<'_>,
    request: Request<Incoming>,
) -> Outcome {
    let server = &ctx.hcm.server_name;
    cluster.stats.upstream_rq_total.inc();
    if let Some(transport) = &cluster.config.unsupported_transport {
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
    let Some(host) = cluster.choose_host(
        target.info.downstream.local,
        Some(request.headers()),
        hashed.hash,
    ) else {
        cluster.stats.upstream_cx_none_healthy.inc();
        return Outcome {
            response: local_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "no healthy upstream",
                server,
            ),
            flag: Some(ResponseFlag::NoHealthyUpstream),
            upstream: None,
            info: Default::default(),
        };
    };
    let use_h2 = match cluster.config.protocol {
        UpstreamProtocol::Http1 => false,
        UpstreamProtocol::Http2 => true,
        UpstreamProtocol::UseDownstream => request.version() == http::Version::HTTP_2,
    };
    // Envoy 1.40 consumes `x-envoy-upstream-rq-timeout-ms` without honouring it on these routes
    // (checked against Envoy; honouring it for trusted requests comes with issue 4).
    let mut request = request;
    request
        .headers_mut()
        .remove(&X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS);
    let timeout = target.forward.timeout;
    let Some(upstream_request) = upstream_request(
        request,
        target,
        &host.hostname,
        host.authority.as_str(),
        timeout,
    ) else {
        return Outcome {
            response: local_reply(StatusCode::BAD_REQUEST, Bytes::new(), server),
            flag: None,
            upstream: None,
            info: Default::default(),
        };
    };
    let started = Instant::now();
    cluster.stats.upstream_rq_active.inc();
    host.stats.rq_active.fetch_add(1, Relaxed);
    host.stats.rq_total.fetch_add(1, Relaxed);
    let send = cluster.pool.send(&host, upstream_request, use_h2);
    let result = match timeout {
        Some(t) => tokio::time::timeout(t, send)
            .await
            .unwrap_or(Err(UpstreamError::Timeout)),
        None => send.await,
    };
    cluster.stats.upstream_rq_active.dec();
    host.stats.rq_active.fetch_sub(1, Relaxed);
    match result {
        Ok(response) => {
            let elapsed = started.elapsed();
            cluster
                .stats
                .upstream_rq_time
                .record(elapsed.as_secs_f64() * 1000.0);
            cluster.stats.upstream_rq_completed.inc();
            cluster.stats.response(response.status());
            let counter = if response.status().is_server_error() {
                &host.stats.rq_error
            } else {
                &host.stats.rq_success
            };
            counter.fetch_add(1, Relaxed);
            let upstream_local = response
                .extensions()
                .get::<crate::upstream::connector::UpstreamLocalAddress>()
                .map(|a| a.0);
            let mut response =
                downstream_response(response, elapsed, server, ctx.hcm.server_header);
            if let Some(cookie) = hashed.set_cookie {
                response.headers_mut().append(header::SET_COOKIE, cookie);
            }
            let mut outcome = Outcome {
                response,
                flag: None,
                upstream: Some(host.authority.clone()),
                info: Default::default(),
            };
            outcome.info.upstream_host = Some(host.authority.clone());
            outcome.info.upstream_local_address = upstream_local;
            outcome
        }
        Err(e) => {
            let mut outcome = upstream_failure(cluster, &host.stats, e, server);
            // Envoy names the host it tried even when it never answered.
            outcome.info.upstream_host = Some(host.authority.clone());
            outcome
        }
    }
}

fn upstream_failure(
    cluster: &ClusterRuntime,
    host: &HostStats,
    error: UpstreamError,
    server: &HeaderValue,
) -> Outcome {
    host.rq_error.fetch_add(1, Relaxed);
    let mut transport_failure = None;
    let (status, body, flag) = match error {
        UpstreamError::Timeout => {
            cluster.stats.upstream_rq_timeout.inc();
            host.rq_timeout.fetch_add(1, Relaxed);
            (StatusCode::GATEWAY_TIMEOUT, "upstream request timeout".to_string(), ResponseFlag::UpstreamRequestTimeout)
        }
        UpstreamError::ConnectFailure(reason) => {
            cluster.stats.upstream_cx_connect_fail.inc();
            host.cx_connect_fail.fetch_add(1, Relaxed);
            (
                StatusCode::SERVICE_UNAVAILABLE,
                {
                    tracing::debug!(target: "router", "upstream connect failure: {reason}");
                    transport_failure = Some(super::access_log::transport_failure_reason(&reason));
                    // Envoy 1.40's body names the reset reason only.
                    "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure".to_string()
                },
                ResponseFlag::UpstreamConnectionFailure,
            )
        }
        UpstreamError::Reset(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            {
                tracing::debug!(target: "router", "upstream reset: {reason}");
                "upstream connect error or disconnect/reset before headers. reset reason: connection termination".to_string()
            },
            // Envoy flags a connection that closed before the response UC (checked against
            // Envoy 1.40); UR is a reset stream.
            ResponseFlag::UpstreamConnectionTermination,
        ),
        UpstreamError::NoHealthyUpstream => {
            (StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream".to_string(), ResponseFlag::NoHealthyUpstream)
        }
        UpstreamError::UnsupportedTransport(t) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("upstream connect error or disconnect/reset before headers. transport {t} is not supported"),
            ResponseFlag::UpstreamConnectionFailure,
        ),
    };
    cluster.stats.response(status);
    let mut outcome = Outcome {
        response: local_reply(status, body, server),
        flag: Some(flag),
        upstream: None,
        info: Default::default(),
    };
    outcome.info.upstream_transport_failure_reason = transport_failure;
    outcome
}

/// Builds the request sent upstream: rewritten path and authority, hop-by-hop headers gone,
/// Envoy's added headers, then the header mutations from the most specific level to the
/// least (weighted cluster, route, virtual host, route configuration).
fn upstream_request(
    request: Request<Incoming>,
    t: &Target<'_>,
    upstream_hostname: &str,
    upstream_authority: &str,
    timeout: Option<Duration>,
) -> Option<Request<UpstreamBody>> {
    let (mut parts, body) = request.into_parts();
    let original_authority = parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        })?
        .to_string();
    let original_authority_text = original_authority.clone();
    let authority = match (
        &t.forward.host_rewrite,
        t.weighted.and_then(|w| w.host_rewrite.as_ref()),
    ) {
        (_, Some(literal)) => literal.to_str().ok()?.to_string(),
        (HostRewrite::None, None) => original_authority,
        (HostRewrite::Literal(v), None) => v.to_str().ok()?.to_string(),
        (HostRewrite::Auto, None) if !upstream_hostname.is_empty() => upstream_hostname.to_string(),
        (HostRewrite::Auto, None) => original_authority,
        (HostRewrite::Header(name), None) => {
            match parts.headers.get(name).and_then(|v| v.to_str().ok()) {
                Some(v) if !v.is_empty() => v.to_string(),
                _ => original_authority,
            }
        }
    };
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let rewritten = rewrite_path(path_and_query, t.route, t.forward);
    // Envoy tells the upstream what a rewrite replaced.
    let original_path = (t.forward.prefix_rewrite.is_some() || t.forward.regex_rewrite.is_some())
        .then(|| HeaderValue::from_str(path_and_query).ok())
        .flatten();
    // Only a route-level host rewrite is reported (not a weighted cluster's own).
    let original_host = (!matches!(t.forward.host_rewrite, HostRewrite::None)
        && authority != original_authority_text)
        .then(|| HeaderValue::from_str(&original_authority_text).ok())
        .flatten();
    parts.uri = http::Uri::builder()
        .scheme("http")
        .authority(authority.as_str())
        .path_and_query(rewritten.as_deref().unwrap_or(path_and_query))
        .build()
        .ok()?;
    let keep_te_trailers = parts
        .headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    let upgrade = if t.upgrade {
        parts.headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    strip_hop_by_hop(&mut parts.headers);
    if let Some(kind) = upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, kind);
    }
    if keep_te_trailers {
        // `te: trailers` is the one TE value that is end to end (gRPC needs it).
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if parts.headers.get(header::HOST).map(|h| h.as_bytes()) != Some(authority.as_bytes()) {
        parts
            .headers
            .insert(header::HOST, HeaderValue::from_str(&authority).ok()?);
    }
    if let Some(path) = original_path {
        parts.headers.insert(X_ENVOY_ORIGINAL_PATH.clone(), path);
    }
    if let Some(host) = original_host {
        parts.headers.insert(X_ENVOY_ORIGINAL_HOST.clone(), host);
    }
    if let Some(timeout) = timeout {
        parts.headers.insert(
            X_ENVOY_EXPECTED_RQ_TIMEOUT_MS.clone(),
            HeaderValue::from(timeout.as_millis() as u64),
        );
    }
    if t.vh.include_request_attempt_count {
        parts
            .headers
            .insert(X_ENVOY_ATTEMPT_COUNT.clone(), HeaderValue::from_static("1"));
    }
    let mutations = [
        t.weighted.map(|w| &w.request_headers),
        Some(&t.route.request_headers),
        Some(&t.vh.request_headers),
        Some(&t.rc.request_headers),
    ];
    // Values reading request headers see them as they arrived (a copy, made only then).
    let snapshot = mutations
        .iter()
        .flatten()
        .any(|m| m.reads_request_headers())
        .then(|| parts.headers.clone());
    let format = t
        .info
        .format_context(parts.version, Some(upstream_authority), snapshot.as_ref());
    for mutation in mutations.into_iter().flatten() {
        mutation.apply(&mut parts.headers, &format);
    }
    let body = body.map_err(|e| Box::new(e) as BoxError);
    let body = match parts
        .extensions
        .remove::<Arc<super::access_log::RequestProgress>>()
    {
        Some(progress) => super::access_log::CountedBody::new(body, progress).boxed_unsync(),
        None => body.boxed_unsync(),
    };
    Some(Request::from_parts(parts, body))
}

/// The path after `prefix_rewrite` or `regex_rewrite`, or None when it stays as it is.
fn rewrite_path(path_and_query: &str, route: &Route, f: &Forward) -> Option<String> {
    let (path, query) = match path_and_query.find('?') {
        Some(i) => path_and_query.split_at(i),
        None => (path_and_query, ""),
    };
    if let Some((regex, substitution)) = &f.regex_rewrite {
        return Some(format!(
            "{}{query}",
            regex.replace_all(path, substitution.as_str())
        ));
    }
    let new_prefix = f.prefix_rewrite.as_ref()?;
    match &route.path {
        PathMatch::Prefix { prefix, .. } | PathMatch::SeparatedPrefix { prefix, .. } => {
            Some(format!(
                "{new_prefix}{}",
                path_and_query.get(prefix.len()..).unwrap_or("")
            ))
        }
        PathMatch::Exact { .. } | PathMatch::Regex(_) => Some(format!("{new_prefix}{query}")),
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

fn downstream_response(
    response: Response<Incoming>,
    elapsed: Duration,
    server: &HeaderValue,
    transformation: ServerHeader,
) -> Response<ResponseBody> {
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
    parts.headers.insert(
        X_ENVOY_UPSTREAM_SERVICE_TIME.clone(),
        HeaderValue::from(elapsed.as_millis() as u64),
    );
    match transformation {
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
