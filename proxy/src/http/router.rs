//! The router: picks the route, then answers directly, redirects, or forwards to a host of
//! the route's cluster and streams the response back.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/router_filter

use super::connection::HttpContext;
use super::fault::{self, RouteLevels};
use super::forward::forward;
use super::forwarding::{append_via, mutate_request_headers, Downstream, X_REQUEST_ID};
use super::local_reply::{local_reply, ResponseFlag};
use super::redirect::redirect;
use super::request_checks::{self, Refusal};
use super::stream_timeouts::{set_grpc_timeout, Expiry, StreamProgress};
use crate::config::matcher::RequestHead;
use crate::config::route::Action;
use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use std::sync::Arc;

/// What a request carries beside itself into forwarding.
pub struct RequestExtras {
    /// The downstream's half of an allowed upgrade (websocket).
    pub on_upgrade: Option<hyper::upgrade::OnUpgrade>,
    pub info: RequestInfo,
    /// For a weighted route, the draw already made (by the fault filter, to know the cluster).
    pub weighted_draw: Option<u64>,
}

/// Facts about a request that command operators read.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    /// The connection it came on (its local address is where the client meant to connect,
    /// which ORIGINAL_DST clusters send to).
    pub downstream: Downstream,
    /// When the request started, for `%START_TIME%`.
    pub start: std::time::SystemTime,
    /// The client's address after `x-forwarded-for` processing (RBAC's `remote_ip`).
    pub client: Option<std::net::IpAddr>,
    /// The request is sampled for tracing: its span reads the upstream cluster.
    pub traced: bool,
}

impl RequestInfo {
    /// The context command operators in header values read.
    pub fn format_context<'a>(
        &'a self,
        version: http::Version,
        upstream: Option<&'a str>,
        request_headers: Option<&'a http::HeaderMap>,
    ) -> crate::format::Context<'a> {
        crate::format::Context {
            downstream_remote: self.downstream.remote,
            downstream_local: self.downstream.local,
            upstream_remote: upstream,
            start: self.start,
            protocol: Some(version),
            request_headers: request_headers.map(crate::format::HeaderSource::Map),
            stream: None,
            downstream_tls: self.downstream.tls.as_deref(),
        }
    }
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

static X_ENVOY_FORCE_TRACE: http::HeaderName = http::HeaderName::from_static("x-envoy-force-trace");

/// A body with nothing in it (the type of request and response bodies alike).
pub fn empty_body() -> ResponseBody {
    use http_body_util::BodyExt;
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// The outcome of a request, for stats and access logs.
pub struct Outcome {
    pub response: Response<ResponseBody>,
    pub flag: Option<ResponseFlag>,
    /// The upstream host that answered, if any (for `%UPSTREAM_REMOTE_ADDRESS%`).
    pub upstream: Option<http::uri::Authority>,
    /// What access logs read; filled only when the connection manager has access logs.
    pub info: crate::format::StreamInfo,
}

/// The request's parts access logs read, kept before the request is forwarded.
struct LoggedRequest {
    headers: crate::format::KeptHeaders,
    method: http::Method,
    path: Option<http::uri::PathAndQuery>,
    authority: Option<http::HeaderValue>,
}

impl LoggedRequest {
    fn new(request: &Request<Incoming>, ctx: &HttpContext) -> Self {
        Self {
            headers: crate::format::KeptHeaders::keep(
                request.headers(),
                &ctx.access_logs.request_headers,
            ),
            method: request.method().clone(),
            path: request.uri().path_and_query().cloned(),
            // HTTP/1.1's authority is its Host header: shared, not copied.
            authority: match request.uri().authority() {
                Some(a) => http::HeaderValue::from_str(a.as_str()).ok(),
                None => request.headers().get(header::HOST).cloned(),
            },
        }
    }

    fn fill(self, info: &mut crate::format::StreamInfo) {
        info.method = Some(self.method);
        info.path = self.path;
        info.authority = self.authority;
        info.scheme = Some("http");
        info.request_headers = self.headers;
    }
}

pub async fn route_request(
    ctx: &HttpContext,
    downstream: &Downstream,
    mut request: Request<Incoming>,
) -> Outcome {
    let server = &ctx.hcm.server_name;
    let upgrade = match request_checks::check(&ctx.hcm, &ctx.stats, &mut request)
        .and_then(|()| request_checks::is_allowed_upgrade(&ctx.hcm, request.headers()))
    {
        Ok(upgrade) => upgrade,
        Err(refusal) => {
            if refusal.is_protocol_error() {
                ctx.stats.downstream_cx_protocol_error.inc();
            }
            let mut outcome = request_checks::refused(refusal, server);
            // Envoy answers these before it has taken the whole request (no request duration);
            // path normalisation runs on a complete request.
            let normalisation =
                outcome.info.response_code_details.as_deref() == Some("path_normalization_failed");
            if let (false, Some(p)) = (
                normalisation,
                request.extensions().get::<Arc<StreamProgress>>(),
            ) {
                p.abandon();
            }
            // A request Envoy's codec refuses is logged without its method, path or headers.
            let parsed = outcome.info.response_flags.is_empty();
            if parsed && !ctx.access_logs.is_empty() {
                LoggedRequest::new(&request, ctx).fill(&mut outcome.info);
            }
            return outcome;
        }
    };
    let forwarding = &ctx.hcm.forwarding;
    let client = mutate_request_headers(forwarding, request.headers_mut(), downstream);
    let extras = RequestExtras {
        on_upgrade: upgrade.then(|| hyper::upgrade::on(&mut request)),
        weighted_draw: None,
        info: RequestInfo {
            downstream: downstream.clone(),
            start: std::time::SystemTime::now(),
            client,
            traced: false,
        },
    };
    // Access logs see the request as the connection manager left it (x-request-id set, ...).
    let logged_request = (!ctx.access_logs.is_empty()).then(|| LoggedRequest::new(&request, ctx));
    // A forced trace (from an internal request; sanitising removed it from others) also
    // returns the request id, as Envoy does.
    let request_id = (forwarding.always_set_request_id_in_response
        || request.headers().contains_key(&X_ENVOY_FORCE_TRACE))
    .then(|| request.headers().get(&X_REQUEST_ID).cloned())
    .flatten();
    // Envoy closes an HTTP/1.1 connection after answering locally before reading a request
    // body it did not consume.
    let closes_after_local_reply = request.method() == http::Method::CONNECT;
    let has_body = request.version() < http::Version::HTTP_2
        && (request
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
            || request.headers().contains_key(header::TRANSFER_ENCODING));
    let grpc = super::grpc_reply::is_grpc(request.headers());
    let compressing = !ctx.compressors.is_empty();
    let accepted = compressing.then(|| ctx.compressors.on_request(request.headers_mut()));
    let head = request.method() == http::Method::HEAD;
    let progress = request.extensions().get::<Arc<StreamProgress>>().cloned();
    let http1 = request.version() < http::Version::HTTP_2;
    let (mut outcome, timed_out) = match progress {
        // Biased: the route's work is polled first, so the route has set the stream's timers
        // (`StreamProgress::on_route`) before the timers are first read.
        Some(progress) => tokio::select! {
            biased;
            outcome = route_and_act(ctx, request, extras) => (outcome, false),
            expiry = progress.expired(ctx) => (timeout_reply(expiry, &progress, grpc, http1, server), true),
        },
        None => (route_and_act(ctx, request, extras).await, false),
    };
    if grpc && outcome.upstream.is_none() {
        super::grpc_reply::into_grpc(&mut outcome.response).await;
    }
    if let Some(accepted) = accepted {
        let no_body = head || hyper::body::Body::is_end_stream(outcome.response.body());
        ctx.compressors
            .on_response(&accepted, &mut outcome.response, no_body);
    }
    if let Some(r) = logged_request {
        r.fill(&mut outcome.info);
    }
    if outcome.upstream.is_none() && !timed_out {
        // Replies made before any upstream attempt leave the body unread; after an attempt
        // (UF, UR, UT) it was consumed.
        let before_upstream = !matches!(
            outcome.flag,
            Some(
                ResponseFlag::UpstreamConnectionFailure
                    | ResponseFlag::UpstreamRemoteReset
                    | ResponseFlag::UpstreamConnectionTermination
                    | ResponseFlag::UpstreamRequestTimeout
                    | ResponseFlag::UpstreamProtocolError
                    | ResponseFlag::UpstreamMaxStreamDurationReached
            )
        );
        if (has_body && before_upstream) || closes_after_local_reply {
            outcome
                .response
                .headers_mut()
                .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
        }
    }
    if outcome.upstream.is_none()
        && ctx.hcm.server_header == crate::config::hcm::ServerHeader::PassThrough
    {
        outcome.response.headers_mut().remove(header::SERVER);
    }
    let headers = outcome.response.headers_mut();
    if let Some(via) = &forwarding.via {
        append_via(headers, via);
    }
    if let Some(id) = request_id {
        headers.insert(X_REQUEST_ID.clone(), id);
    }
    outcome
}

/// The local reply when a stream's timer fires before its response: Envoy's status and body
/// for the timer; a stream duration ends a gRPC call with DEADLINE_EXCEEDED. An HTTP/1.1
/// request cut off before its end leaves the connection unusable, so it closes.
fn timeout_reply(
    expiry: Expiry,
    progress: &StreamProgress,
    grpc: bool,
    http1: bool,
    server: &http::HeaderValue,
) -> Outcome {
    let status = progress.reply_status();
    let mut response = local_reply(status, expiry.body(), server);
    if grpc && expiry == Expiry::Duration {
        const DEADLINE_EXCEEDED: u32 = 4;
        super::grpc_reply::set_grpc_status(
            &mut response,
            DEADLINE_EXCEEDED,
            expiry.body().as_bytes(),
        );
    }
    if http1 && status == StatusCode::REQUEST_TIMEOUT {
        response
            .headers_mut()
            .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    }
    Outcome {
        response,
        flag: (expiry == Expiry::Idle).then_some(ResponseFlag::StreamIdleTimeout),
        upstream: None,
        info: crate::format::StreamInfo {
            response_code_details: Some(expiry.details().into()),
            ..Default::default()
        },
    }
}

/// Marks a response that is not to be sent: the connection resets the stream instead.
#[derive(Debug, Clone, Copy)]
pub struct ResetStream;

async fn route_and_act(
    ctx: &HttpContext,
    mut request: Request<Incoming>,
    mut extras: RequestExtras,
) -> Outcome {
    let server = &ctx.hcm.server_name;
    let route_config = &ctx.hcm.routes.current();
    let Some(host) = authority(&request) else {
        return Outcome {
            // Envoy: 400, empty body, and the connection closes.
            response: request_checks::refused(
                Refusal::Local {
                    status: StatusCode::BAD_REQUEST,
                    body: "",
                    close: true,
                    details: "missing_host_header",
                    protocol_error: false,
                },
                server,
            )
            .response,
            flag: None,
            upstream: None,
            info: Default::default(),
        };
    };
    let selected = {
        let uri = request.uri();
        let head = request_head(&request, host, &extras.info.downstream);
        route_config.find_route(host, uri.path(), uri.query().unwrap_or(""), &head)
    };
    // Tracing decides once the route is known (its sampling and decorator apply; without a
    // route, the connection manager's), before any filter, so local replies are traced too.
    // It marks the request's headers.
    let route = selected.map(|(_, route)| route);
    let mut trace = ctx
        .tracing
        .as_ref()
        .map(|tracer| (tracer, tracer.start(request.headers_mut(), route)));
    let span = match &mut trace {
        Some((tracer, started)) => started.sampled.take().and_then(|sampled| {
            tracer.span(
                sampled,
                route,
                request.headers(),
                super::tracing::RequestFacts {
                    host: authority(&request).unwrap_or_default(),
                    method: request.method(),
                    path_and_query: request.uri().path_and_query().map_or("/", |p| p.as_str()),
                    version: request.version(),
                    peer: extras.info.downstream.remote.map(|a| a.ip()),
                    local_address: extras.info.downstream.node_address,
                    start: extras.info.start,
                },
            )
        }),
        None => None,
    };
    extras.info.traced = span.is_some();
    // The stream's dynamic metadata: what the JWT filters write (RBAC reads it), and what the
    // RBAC filters write when a sampled span's metadata tags may read it.
    let mut metadata = crate::metadata::DynamicMetadata::default();
    let keep_rbac_results = span.is_some() && !ctx.hcm.rbac.is_empty();
    let mut outcome = filter_and_act(
        ctx,
        request,
        extras,
        route_config,
        selected,
        &mut metadata,
        keep_rbac_results,
    )
    .await;
    if let Some(op) = trace.and_then(|(_, started)| started.response_operation) {
        outcome
            .response
            .headers_mut()
            .insert(super::tracing::X_ENVOY_DECORATOR_OPERATION.clone(), op);
    }
    if let Some(mut span) = span {
        span.on_metadata(&metadata);
        span.upstream_cluster = outcome
            .info
            .upstream_cluster
            .clone()
            .map(|c| (c, outcome.info.upstream_cluster_alt.clone()));
        outcome
            .response
            .extensions_mut()
            .insert(super::tracing::TraceSlot::new(span));
    }
    outcome
}

/// The request as header matchers see it, with its pseudo-headers.
fn request_head<'r>(
    request: &'r Request<Incoming>,
    host: &'r str,
    downstream: &Downstream,
) -> RequestHead<'r> {
    let uri = request.uri();
    let scheme = uri.scheme_str().unwrap_or(if downstream.tls.is_some() {
        "https"
    } else {
        "http"
    });
    RequestHead {
        headers: request.headers(),
        method: Some(request.method().as_str()),
        authority: Some(host),
        path: uri.path_and_query().map(|p| p.as_str()),
        scheme: Some(scheme),
    }
}

/// A filter's own reply (a JWT or RBAC denial, a fault's abort), made after routing: when the
/// stream is recorded, it names the route and its cluster, as Envoy knows them by then.
fn filter_reply(
    ctx: &HttpContext,
    mut outcome: Outcome,
    route: Option<&crate::config::route::Route>,
    headers: &http::HeaderMap,
    extras: &RequestExtras,
) -> Outcome {
    if let Some(route) = route {
        if ctx.records_streams() || extras.info.traced {
            super::forward::note_route_cluster(
                ctx,
                &mut outcome,
                route,
                headers,
                extras.weighted_draw,
            );
            if !route.name.is_empty() {
                outcome.info.route_name = Some(Arc::from(route.name.as_str()));
            }
        }
    }
    outcome
}

/// The connection manager's filters (JWT, RBAC, faults) and then the router's action for the
/// selected route.
async fn filter_and_act(
    ctx: &HttpContext,
    mut request: Request<Incoming>,
    mut extras: RequestExtras,
    route_config: &crate::config::route::RouteConfig,
    selected: Option<(
        &crate::config::route::VirtualHost,
        &crate::config::route::Route,
    )>,
    metadata: &mut crate::metadata::DynamicMetadata,
    keep_rbac_results: bool,
) -> Outcome {
    let server = &ctx.hcm.server_name;
    let levels =
        selected.map(|(vh, route)| [&route.per_filter, &vh.per_filter, &route_config.per_filter]);
    // The JWT filters run first (Istio's order), then RBAC reads what they wrote.
    if !ctx.jwt_authn.is_empty() {
        let host = authority(&request).unwrap_or_default().to_string();
        let scheme = request
            .uri()
            .scheme_str()
            .unwrap_or(if extras.info.downstream.tls.is_some() {
                "https"
            } else {
                "http"
            })
            .to_string();
        let method = request.method().clone();
        let path_and_query = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let facts = super::jwt_authn::RequestFacts {
            method: &method,
            host: &host,
            scheme: &scheme,
            path_and_query: &path_and_query,
        };
        if let Err(outcome) = super::jwt_authn::apply(
            &ctx.jwt_authn,
            levels,
            request.headers_mut(),
            &facts,
            server,
            metadata,
        )
        .await
        {
            let route = selected.map(|(_, route)| route);
            return filter_reply(ctx, *outcome, route, request.headers(), &extras);
        }
    }
    let host = authority(&request).unwrap_or_default();
    // The RBAC filters run before the router answers, also when no route matched.
    if !ctx.hcm.rbac.is_empty() {
        let downstream = &extras.info.downstream;
        let head = request_head(&request, host, downstream);
        let facts = crate::rbac::Facts {
            request: Some(&head),
            local: downstream.local,
            direct_remote: downstream.remote,
            remote: extras.info.client.or(downstream.remote.map(|a| a.ip())),
            tls: downstream.tls.as_deref(),
            server_name: downstream.requested_server_name.as_deref(),
            metadata: (!metadata.is_empty()).then_some(&*metadata),
        };
        let mut results = keep_rbac_results.then(crate::rbac::RbacMetadata::default);
        let decided = super::rbac::apply(
            &ctx.hcm.rbac,
            &ctx.rbac_stats,
            levels,
            &facts,
            server,
            results.as_mut(),
        );
        // The RBAC filters' results join the stream's metadata once they have decided (no
        // RBAC matcher may read them: refused at config time).
        if let Some(results) = results {
            metadata.merge("envoy.filters.http.rbac", results.into_fields());
        }
        if let Err(outcome) = decided {
            let route = selected.map(|(_, route)| route);
            return filter_reply(ctx, *outcome, route, request.headers(), &extras);
        }
    }
    let Some((vh, route)) = selected else {
        ctx.stats.no_route.inc();
        return Outcome {
            response: local_reply(StatusCode::NOT_FOUND, Bytes::new(), server),
            flag: Some(ResponseFlag::NoRouteFound),
            upstream: None,
            info: Default::default(),
        };
    };
    // The route's timers apply from here, before any filter (a fault's delay) runs.
    let grpc_timeout = match (
        &route.action,
        request.extensions().get::<Arc<StreamProgress>>(),
    ) {
        (Action::Forward(f), Some(progress)) => {
            progress.on_route(f, &ctx.hcm.limits.stream, request.headers())
        }
        _ => None,
    };
    let info = extras.info.clone();
    let version = request.version();
    let reads_request = [
        &route.response_headers,
        &vh.response_headers,
        &route_config.response_headers,
    ]
    .iter()
    .any(|m| m.reads_request_headers());
    let request_headers = reads_request.then(|| request.headers().clone());
    let logging = ctx.records_streams();
    let injected = match &ctx.fault_stats {
        None => None,
        Some(stats) => {
            let (cluster, draw) = fault_target(&route.action, request.headers());
            extras.weighted_draw = draw;
            let levels = RouteLevels {
                levels: [&route.per_filter, &vh.per_filter, &route_config.per_filter],
                cluster,
            };
            let applied = fault::apply(
                &ctx.hcm.faults,
                stats,
                &levels,
                request.headers(),
                server,
                metadata,
            );
            match applied.await {
                Ok(injected) => Some(injected),
                Err(outcome) => {
                    // The abort is the fault filter's reply: the router, which adds the
                    // route's response headers, never sees the request.
                    return filter_reply(ctx, outcome, Some(route), request.headers(), &extras);
                }
            }
        }
    };
    let mut outcome = match &route.action {
        Action::DirectResponse { status, body } => {
            ctx.stats.rq_direct_response.inc();
            Outcome {
                response: local_reply(*status, body.clone(), server),
                flag: None,
                upstream: None,
                info: Default::default(),
            }
        }
        Action::Redirect(r) => {
            ctx.stats.rq_redirect.inc();
            Outcome {
                response: redirect(r, route, &request, host, server),
                flag: None,
                upstream: None,
                info: Default::default(),
            }
        }
        Action::Forward(f) => {
            if let Some(timeout) = grpc_timeout {
                set_grpc_timeout(request.headers_mut(), timeout);
            }
            forward(ctx, route_config, vh, route, f, request, extras).await
        }
    };
    if logging {
        if !route.name.is_empty() {
            outcome.info.route_name = Some(Arc::from(route.name.as_str()));
        }
        if matches!(
            route.action,
            Action::DirectResponse { .. } | Action::Redirect(_)
        ) {
            outcome.info.response_code_details = Some("direct_response".into());
        }
    }
    // Response headers: route first, then virtual host, then route configuration (Envoy's
    // default order, where the least specific level has the last word).
    let upstream = outcome.upstream.as_ref().map(|a| a.as_str());
    let format = info.format_context(version, upstream, request_headers.as_ref());
    let headers = outcome.response.headers_mut();
    route.response_headers.apply(headers, &format);
    vh.response_headers.apply(headers, &format);
    route_config.response_headers.apply(headers, &format);
    if let Some(injected) = injected {
        outcome.info.response_flags = outcome.info.response_flags.with(injected.flags);
        injected.wrap(&mut outcome.response);
    }
    outcome
}

/// The cluster a fault filter's `upstream_cluster` compares with, and for a weighted route
/// the draw that picked it (the router then sends to that same cluster).
fn fault_target<'a>(
    action: &'a Action,
    headers: &'a http::HeaderMap,
) -> (Option<&'a str>, Option<u64>) {
    use crate::config::route::ClusterTarget;
    let Action::Forward(f) = action else {
        return (None, None);
    };
    match &f.target {
        ClusterTarget::Named(c) => (Some(c.name()), None),
        ClusterTarget::Header(name) => (headers.get(name).and_then(|v| v.to_str().ok()), None),
        ClusterTarget::Weighted { total, .. } => {
            let draw = crate::random::below(*total);
            (
                f.target.weighted_pick(draw).map(|w| w.cluster.name()),
                Some(draw),
            )
        }
    }
}

fn authority(request: &Request<Incoming>) -> Option<&str> {
    request.uri().authority().map(|a| a.as_str()).or_else(|| {
        request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}
