//! The router: picks the route, then answers directly, redirects, or forwards to a host of
//! the route's cluster and streams the response back.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/router_filter

use super::connection::HttpContext;
use super::forwarding::{append_via, mutate_request_headers, Downstream, X_REQUEST_ID};
use super::local_reply::{local_reply, ResponseFlag};
use crate::config::hcm::ServerHeader;
use crate::config::route::{
    Action, Forward, HostRewrite, PathMatch, Redirect, RedirectPath, Route, RouteConfig,
    VirtualHost,
};
use crate::upstream::{ClusterRuntime, UpstreamBody, UpstreamError};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::time::Instant;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// The outcome of a request, for stats (and access logs later).
pub struct Outcome {
    pub response: Response<ResponseBody>,
    pub flag: Option<ResponseFlag>,
}

static X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName =
    HeaderName::from_static("x-envoy-upstream-service-time");
static X_ENVOY_EXPECTED_RQ_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-expected-rq-timeout-ms");

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

pub async fn route_request(
    ctx: &HttpContext,
    downstream: &Downstream,
    mut request: Request<Incoming>,
) -> Outcome {
    let forwarding = &ctx.hcm.forwarding;
    mutate_request_headers(forwarding, request.headers_mut(), downstream);
    let request_id = forwarding
        .always_set_request_id_in_response
        .then(|| request.headers().get(&X_REQUEST_ID).cloned())
        .flatten();
    let mut outcome = route_and_act(ctx, request).await;
    let headers = outcome.response.headers_mut();
    if let Some(via) = &forwarding.via {
        append_via(headers, via);
    }
    if let Some(id) = request_id {
        headers.insert(X_REQUEST_ID.clone(), id);
    }
    outcome
}

async fn route_and_act(ctx: &HttpContext, request: Request<Incoming>) -> Outcome {
    let server = &ctx.hcm.server_name;
    let route_config = &ctx.hcm.route_config;
    let Some(host) = authority(&request) else {
        return Outcome {
            response: local_reply(
                StatusCode::BAD_REQUEST,
                "missing required header: host",
                server,
            ),
            flag: None,
        };
    };
    let selected = route_config.find_route(host, request.uri().path(), request.headers());
    let Some((vh, route)) = selected else {
        ctx.stats.no_route.inc();
        return Outcome {
            response: local_reply(StatusCode::NOT_FOUND, Bytes::new(), server),
            flag: Some(ResponseFlag::NoRouteFound),
        };
    };
    let mut outcome = match &route.action {
        Action::DirectResponse { status, body } => {
            ctx.stats.rq_direct_response.inc();
            Outcome {
                response: local_reply(*status, body.clone(), server),
                flag: None,
            }
        }
        Action::Redirect(r) => {
            ctx.stats.rq_redirect.inc();
            Outcome {
                response: redirect(r, route, &request, host, server),
                flag: None,
            }
        }
        Action::Forward(f) => forward(ctx, route_config, vh, route, f, request).await,
    };
    // Response headers: route first, then virtual host, then route configuration (Envoy's
    // default order, where the least specific level has the last word).
    let headers = outcome.response.headers_mut();
    route.response_headers.apply(headers);
    vh.response_headers.apply(headers);
    route_config.response_headers.apply(headers);
    outcome
}

fn authority(request: &Request<Incoming>) -> Option<&str> {
    request.uri().authority().map(|a| a.as_str()).or_else(|| {
        request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

async fn forward(
    ctx: &HttpContext,
    rc: &RouteConfig,
    vh: &VirtualHost,
    route: &Route,
    f: &Forward,
    request: Request<Incoming>,
) -> Outcome {
    let server = &ctx.hcm.server_name;
    let Some(cluster) = f.cluster.and_then(|i| ctx.clusters.get(i)) else {
        ctx.stats.no_cluster.inc();
        return Outcome {
            response: local_reply(StatusCode::SERVICE_UNAVAILABLE, Bytes::new(), server),
            flag: Some(ResponseFlag::NoClusterFound),
        };
    };
    cluster.stats.upstream_rq_total.inc();
    if let Some(transport) = &cluster.config.unsupported_transport {
        cluster.stats.upstream_cx_connect_fail.inc();
        let body = format!(
            "upstream connect error or disconnect/reset before headers. reset reason: connection failure, transport failure reason: {transport} is not supported by Outrigger yet"
        );
        return Outcome {
            response: local_reply(StatusCode::SERVICE_UNAVAILABLE, body, server),
            flag: Some(ResponseFlag::UpstreamConnectionFailure),
        };
    }
    let hosts = cluster.hosts();
    let Some(host) = hosts.pick().cloned() else {
        cluster.stats.upstream_cx_none_healthy.inc();
        return Outcome {
            response: local_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "no healthy upstream",
                server,
            ),
            flag: Some(ResponseFlag::NoHealthyUpstream),
        };
    };
    drop(hosts);
    let downstream_h2 = request.version() == http::Version::HTTP_2;
    let use_h2 = match cluster.config.protocol {
        crate::config::cluster::UpstreamProtocol::Http1 => false,
        crate::config::cluster::UpstreamProtocol::Http2 => true,
        crate::config::cluster::UpstreamProtocol::UseDownstream => downstream_h2,
    };
    let upstream_request = match upstream_request(request, rc, vh, route, f, &host.hostname) {
        Ok(r) => r,
        Err(()) => {
            return Outcome {
                response: local_reply(StatusCode::BAD_REQUEST, Bytes::new(), server),
                flag: None,
            }
        }
    };
    let started = Instant::now();
    cluster.stats.upstream_rq_active.inc();
    host.stats
        .rq_active
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    host.stats
        .rq_total
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let send = cluster.pool.send(&host, upstream_request, use_h2);
    let result = match f.timeout {
        Some(t) => tokio::time::timeout(t, send)
            .await
            .unwrap_or(Err(UpstreamError::Timeout)),
        None => send.await,
    };
    cluster.stats.upstream_rq_active.dec();
    host.stats
        .rq_active
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    match result {
        Ok(response) => {
            let elapsed = started.elapsed();
            cluster
                .stats
                .upstream_rq_time
                .record(elapsed.as_secs_f64() * 1000.0);
            cluster.stats.upstream_rq_completed.inc();
            cluster.stats.response(response.status());
            if response.status().is_server_error() {
                host.stats
                    .rq_error
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            } else {
                host.stats
                    .rq_success
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Outcome {
                response: downstream_response(response, elapsed, server, ctx.hcm.server_header),
                flag: None,
            }
        }
        Err(e) => upstream_failure(cluster, &host.stats, e, server),
    }
}

fn upstream_failure(
    cluster: &ClusterRuntime,
    host: &crate::upstream::HostStats,
    error: UpstreamError,
    server: &HeaderValue,
) -> Outcome {
    use std::sync::atomic::Ordering::Relaxed;
    host.rq_error.fetch_add(1, Relaxed);
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
                format!("upstream connect error or disconnect/reset before headers. reset reason: remote connection failure, transport failure reason: {reason}"),
                ResponseFlag::UpstreamConnectionFailure,
            )
        }
        UpstreamError::Reset(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("upstream connect error or disconnect/reset before headers. reset reason: connection termination, transport failure reason: {reason}"),
            ResponseFlag::UpstreamRemoteReset,
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
    Outcome {
        response: local_reply(status, body, server),
        flag: Some(flag),
    }
}

/// Builds the request sent upstream: rewritten path and authority, hop-by-hop headers gone,
/// Envoy's added headers, and the header mutations (route, then virtual host, then route
/// configuration).
fn upstream_request(
    request: Request<Incoming>,
    rc: &RouteConfig,
    vh: &VirtualHost,
    route: &Route,
    f: &Forward,
    upstream_hostname: &str,
) -> Result<Request<UpstreamBody>, ()> {
    let (mut parts, body) = request.into_parts();
    let original_authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .ok_or(())?;
    let authority = match &f.host_rewrite {
        HostRewrite::None => original_authority,
        HostRewrite::Literal(v) => v.to_str().map_err(|_| ())?.to_string(),
        HostRewrite::Auto if !upstream_hostname.is_empty() => upstream_hostname.to_string(),
        HostRewrite::Auto => original_authority,
    };
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let rewritten = match (&f.prefix_rewrite, &route.path) {
        (Some(new_prefix), PathMatch::Prefix { prefix, .. })
        | (Some(new_prefix), PathMatch::SeparatedPrefix { prefix, .. }) => {
            let rest = path_and_query.get(prefix.len()..).unwrap_or("");
            format!("{new_prefix}{rest}")
        }
        (Some(new_prefix), PathMatch::Exact { .. }) => {
            let query = path_and_query
                .find('?')
                .map(|i| &path_and_query[i..])
                .unwrap_or("");
            format!("{new_prefix}{query}")
        }
        _ => path_and_query.to_string(),
    };
    parts.uri = http::Uri::builder()
        .scheme("http")
        .authority(authority.as_str())
        .path_and_query(rewritten.as_str())
        .build()
        .map_err(|_| ())?;
    let keep_te_trailers = parts
        .headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    strip_hop_by_hop(&mut parts.headers);
    if keep_te_trailers {
        // `te: trailers` is the one TE value that is end to end (gRPC needs it).
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if parts.headers.get(header::HOST).map(|h| h.as_bytes()) != Some(authority.as_bytes()) {
        if let Ok(v) = HeaderValue::from_str(&authority) {
            parts.headers.insert(header::HOST, v);
        }
    }
    if let Some(t) = f.timeout {
        parts.headers.insert(
            X_ENVOY_EXPECTED_RQ_TIMEOUT_MS.clone(),
            HeaderValue::from(t.as_millis() as u64),
        );
    }
    route.request_headers.apply(&mut parts.headers);
    vh.request_headers.apply(&mut parts.headers);
    rc.request_headers.apply(&mut parts.headers);
    Ok(Request::from_parts(
        parts,
        body.map_err(|e| Box::new(e) as BoxError).boxed_unsync(),
    ))
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
    elapsed: std::time::Duration,
    server: &HeaderValue,
    transformation: ServerHeader,
) -> Response<ResponseBody> {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
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

fn redirect(
    r: &Redirect,
    route: &Route,
    request: &Request<Incoming>,
    host: &str,
    server: &HeaderValue,
) -> Response<ResponseBody> {
    let scheme = r.scheme.as_deref().unwrap_or("http");
    let (bare_host, original_port) = split_host_port(host);
    let new_host = r.host.as_deref().unwrap_or(bare_host);
    let port = match (r.port, r.scheme.as_deref()) {
        (Some(p), _) => Some(p.to_string()),
        // Changing scheme drops the original port; Envoy does the same.
        (None, Some(_)) => None,
        (None, None) if r.host.is_some() => None,
        (None, None) => original_port.map(str::to_string),
    };
    let path_and_query = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let mut location = format!("{scheme}://{new_host}");
    if let Some(p) = port {
        location.push(':');
        location.push_str(&p);
    }
    match &r.path {
        RedirectPath::Keep => location.push_str(path),
        RedirectPath::Replace(p) => location.push_str(p),
        RedirectPath::PrefixRewrite(p) => {
            // The prefix the route matched is replaced; other path matches keep the path.
            let rest = match &route.path {
                PathMatch::Prefix { prefix, .. } | PathMatch::SeparatedPrefix { prefix, .. } => {
                    path.get(prefix.len()..).unwrap_or("")
                }
                _ => path,
            };
            location.push_str(p);
            location.push_str(rest);
        }
    }
    let replaced_has_query = matches!(&r.path, RedirectPath::Replace(p) if p.contains('?'));
    if let (Some(q), false, false) = (query, r.strip_query, replaced_has_query) {
        location.push('?');
        location.push_str(q);
    }
    let mut response = local_reply(r.status, Bytes::new(), server);
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

/// `host:port`, `[v6]:port`, or a bare host.
fn split_host_port(authority: &str) -> (&str, Option<&str>) {
    if let Some(end) = authority.find("]:") {
        return (&authority[..end + 1], Some(&authority[end + 2..]));
    }
    match authority.split_once(':') {
        Some((h, p)) if !p.contains(':') => (h, Some(p)),
        _ => (authority, None),
    }
}
