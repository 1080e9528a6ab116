//! One downstream HTTP connection: the codec (AUTO sniffs the HTTP/2 preface for h2c prior
//! knowledge, else HTTP/1.1), per-request stats, and graceful close when listeners drain.

use super::access_log::{default_details, flag_bits, LoggedBody, Pending, TunnelLog};
use super::codec::{NotAdmitted, Served, HYPER_MAX_HEADERS};
use super::downstream_cx::{ConnectionLife, Counted, Lives, StreamEnd, Tracked};
use super::local_reply::ResponseFlag;
use super::router::{route_request, ResetStream, ResponseBody};
use super::stats::HcmStats;
use super::stream_timeouts::{StreamProgress, TimedBody};
use crate::config::hcm::HttpConnectionManager;
use crate::upstream::ClusterManager;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};

/// What a connection manager needs, shared by all its connections.
#[derive(Debug)]
pub struct HttpContext {
    pub hcm: Arc<HttpConnectionManager>,
    pub clusters: Arc<ClusterManager>,
    pub stats: HcmStats,
    pub access_logs: crate::access_log::AccessLogs,
    /// Present when the chain has fault injection filters.
    pub fault_stats: Option<super::fault::FaultStats>,
    /// The chain's JWT authentication filters, in chain order.
    pub jwt_authn: Vec<super::jwt_authn::JwtFilterRuntime>,
    /// The counters of the chain's RBAC filters, in chain order.
    pub rbac_stats: Vec<crate::rbac::RbacStats>,
    /// The chain's network RBAC filters, which decide the connection before any request.
    pub connection_rbac: Vec<crate::rbac::ConnectionRbac>,
    pub compressors: super::Compressors,
    /// The server, for state connections follow (a failed health check drains them).
    pub server: Arc<crate::server::Server>,
    /// Istio's metadata exchange and metrics, when the chain has them.
    pub istio: Option<super::istio::IstioRuntime>,
    /// The connection manager's `tracing`, when it has one.
    pub tracing: Option<super::tracing::HcmTracer>,
}

impl HttpContext {
    /// Whether streams are followed to their end: for access logs or Istio's metrics.
    pub fn records_streams(&self) -> bool {
        !self.access_logs.is_empty()
            || self
                .istio
                .as_ref()
                .is_some_and(|i| i.config.stats.is_some())
    }
}

/// Serves `io` until the peer closes, or `drain` fires (then in-flight requests finish and
/// the connection closes gracefully: `Connection: close` on HTTP/1.1, GOAWAY on HTTP/2).
pub async fn serve_connection<I>(
    io: I,
    ctx: Arc<HttpContext>,
    downstream: super::Downstream,
    mut drain: crate::server::Drain,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = &ctx.hcm.limits;
    // hyper buffers a request head up to this size; the connection's copy of it the same.
    let max_head = (limits.max_request_headers_bytes + 16 * 1024).max(8192);
    let life = ConnectionLife::new(ctx.clone(), downstream.tls.is_some());
    let activity = Arc::new(Activity::new(max_head, life));
    let io = Counted::new(io, activity.clone());
    // Envoy's network RBAC decides on the connection's first bytes; before a connection
    // manager, Outrigger decides when the connection is accepted (a client that never sends
    // is closed here, where Envoy would wait).
    if let Err(details) = crate::rbac::check_connection(&ctx.connection_rbac, &downstream) {
        tracing::debug!(target: "http", "closing a downstream connection: {details}");
        activity.life.closing();
        return;
    }
    let service_ctx = ctx.clone();
    let service_activity = activity.clone();
    // For the access log of a request hyper refuses (a clone of a few handles).
    let refused_downstream = ctx.records_streams().then(|| downstream.clone());
    let service = service_fn(move |mut request: hyper::Request<Incoming>| {
        let ctx = service_ctx.clone();
        let activity = service_activity.clone();
        let downstream = downstream.clone();
        let connect = request.method() == http::Method::CONNECT;
        async move {
            let http1 = request.version() != http::Version::HTTP_2;
            let mut stream = StreamEnd::start(activity.clone(), !http1);
            // Upgrades are rare: only a request with the header pays for the check.
            if (request.headers().contains_key(http::header::UPGRADE)
                && matches!(
                    super::request_checks::is_allowed_upgrade(&ctx.hcm, request.headers()),
                    Ok(true)
                ))
                || (connect && ctx.hcm.upgrades.iter().any(|u| u == "connect"))
            {
                stream.upgrade();
            }
            // A client that asks to close: the connection ends after this response, by
            // Outrigger (Envoy closes it once the response is out).
            let client_closes = http1 && asks_close(request.headers());
            // hyper removes `Content-Length` from a chunked request; Envoy's codec refuses
            // it unless `allow_chunked_length` (hyper's chunked bodies have no exact size).
            if http1
                && hyper::body::Body::size_hint(request.body())
                    .exact()
                    .is_none()
                && !ctx.hcm.limits.allow_chunked_length
                && activity
                    .codec
                    .head
                    .content_length_beside_chunked(request.method())
            {
                request
                    .extensions_mut()
                    .insert(super::request_checks::ContentLengthBesideChunked);
            }
            // While `/healthcheck/fail` holds, Envoy closes connections as if draining:
            // `Connection: close` on HTTP/1.1, and on HTTP/2 a GOAWAY that goes out before
            // the response.
            let health_check_failed = ctx.server.health_check_failed();
            // The request that reaches `max_requests_per_connection` ends the connection the
            // same way, each one at or past it counted.
            let last_request = ctx
                .hcm
                .limits
                .max_requests_per_connection
                .is_some_and(|max| activity.requests.fetch_add(1, Ordering::Relaxed) + 1 >= max);
            if last_request {
                ctx.stats.cx.max_requests_reached.inc();
            }
            if !http1 && (health_check_failed || last_request) {
                activity.goaway.notify_one();
            }
            let mut response = handle(&ctx, downstream, request).await;
            activity.codec.answered();
            // A tunnel's bytes are not responses: none can be hyper's reply to a request.
            if response.status() == http::StatusCode::SWITCHING_PROTOCOLS
                || (connect && response.status().is_success())
            {
                activity.codec.disarm();
            }
            if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                stream.upgraded();
            }
            if http1 && (activity.draining.load(Ordering::Relaxed) || health_check_failed) {
                // The client learns with this response that the connection ends, so it never
                // sends a request into a close (Envoy's drain of HTTP/1.1 connections).
                response.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
                ctx.stats.cx.drain_close.inc();
            } else if http1 && last_request {
                response.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            if client_closes || (http1 && asks_close(response.headers())) {
                activity.life.closes_after_response();
            }
            // Envoy's HTTP/2 codec resets a stream it refuses (header limits): an error
            // from the service makes hyper do the same.
            if response.extensions().get::<ResetStream>().is_some() {
                return Err(StreamRefused);
            }
            let (parts, body) = response.into_parts();
            Ok(hyper::Response::from_parts(
                parts,
                Tracked::new(body, stream),
            ))
        }
    });
    // A peer that sends nothing is bounded as hyper would bound it: by the header timeout,
    // else the idle timeout; a drain that starts meanwhile ends it when the drain time is up,
    // as it ends an idle HTTP/1.1 connection. A connection accepted during a graceful drain is
    // served (its answer closes it), not dropped unread.
    let accepted_draining = *drain.signal.borrow();
    let admitted = tokio::select! {
        admitted = super::codec::admit(io, ctx.hcm.codec) => admitted,
        _ = sleep_or_forever(limits.request_headers_timeout.or(limits.idle_timeout)) => {
            activity.life.closing();
            Err(NotAdmitted::Gone)
        }
        _ = drain.expired(), if !accepted_draining => {
            activity.life.closing();
            Err(NotAdmitted::Gone)
        }
    };
    let admitted = match admitted {
        Ok(admitted) => admitted,
        Err(NotAdmitted::OtherProtocol(io)) => {
            tracing::debug!(target: "http", "closing a downstream connection in a protocol its codec does not serve");
            // Envoy's codec for the configured protocol read the bytes and refused them.
            activity
                .life
                .codec(ctx.hcm.codec == crate::config::hcm::Codec::Http2);
            activity.life.closing();
            super::codec::refuse(io, ctx.hcm.codec, ctx.hcm.server_name.as_bytes()).await;
            return;
        }
        Err(NotAdmitted::Gone) => return,
    };
    // Envoy creates the codec on the connection's first bytes.
    activity.life.codec(admitted.http2);
    if admitted.http2 {
        activity.http2.store(true, Ordering::Relaxed);
        activity.codec.disarm();
    }
    // hyper answers a request it cannot parse itself; the guard holds that answer back for
    // Envoy's (below).
    let io = TokioIo::new(super::codec_error::Guarded::new(
        admitted.io,
        activity.clone(),
    ));
    let connection = if admitted.http2 {
        let h2 = &ctx.hcm.http2;
        let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            // Envoy's default is 2^31-1 concurrent streams; hyper's would be 200.
            .max_concurrent_streams(h2.max_concurrent_streams.unwrap_or(i32::MAX as u32))
            .initial_stream_window_size(h2.initial_stream_window_size)
            .initial_connection_window_size(h2.initial_connection_window_size)
            // Above the limit, which the connection manager checks itself (it resets the
            // stream, as Envoy; h2 would answer 431): HPACK counts 32 more bytes per header.
            .max_header_list_size(
                (limits.max_request_headers_bytes + 32 * limits.max_headers_count.max(100) + 4096)
                    as u32,
            )
            .serve_connection(io, service);
        Served::Http2 { connection }
    } else {
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            // hyper's default of 30 s also runs while a keep-alive connection waits for its
            // next request; Envoy only bounds header reading when request_headers_timeout is
            // set.
            .header_read_timeout(limits.request_headers_timeout)
            .max_buf_size(max_head)
            // Envoy's parser takes runs of spaces between the request line's parts.
            .allow_multiple_spaces_in_request_line_delimiters(true);
        // hyper parses at most 100 headers unless told otherwise, Envoy's default too; a
        // lower limit is checked per request, a higher one raises hyper's. Only a different
        // limit is passed on: an explicit one, even 100, makes hyper size its header arrays
        // per request instead of keeping them inline (1% of a request's CPU).
        if limits.max_headers_count > HYPER_MAX_HEADERS {
            http1.max_headers(limits.max_headers_count);
        }
        Served::Http1 {
            connection: http1.serve_connection(io, service).with_upgrades(),
        }
    };
    tokio::pin!(connection);
    let drain_activity = activity.clone();
    let close_reason = async {
        let reason = tokio::select! {
            // With the gradual strategy, each connection's turn comes within the drain time.
            _ = drain.told() => {
                if !drain_activity.http2.load(Ordering::Relaxed) {
                    // HTTP/1.1: closing an idle keep-alive connection now races with the
                    // client's next request. Each response says `Connection: close` instead,
                    // and the connection ends with it or when the drain time is up.
                    drain_activity.draining.store(true, Ordering::Relaxed);
                    drain.expired().await;
                    return "drain time elapsed";
                }
                "drain"
            },
            _ = activity.life.idle_for(limits.idle_timeout) => {
                ctx.stats.cx.idle_timeout.inc();
                "idle timeout"
            },
            _ = activity.goaway.notified() => "health check failed or max requests reached",
            _ = sleep_or_forever(limits.max_connection_duration) => {
                ctx.stats.cx.max_duration_reached.inc();
                "max connection duration"
            },
        };
        // Envoy's connection manager drains before it closes for these: an HTTP/1.1
        // connection answers what still comes with `Connection: close` for `drain_timeout`,
        // then closes. (HTTP/2 gets its GOAWAY now; the grace before the final one is hyper's.)
        if matches!(reason, "idle timeout" | "max connection duration")
            && !drain_activity.http2.load(Ordering::Relaxed)
        {
            drain_activity.draining.store(true, Ordering::Relaxed);
            tokio::time::sleep(limits.drain_timeout).await;
        }
        reason
    };
    let result = tokio::select! {
        result = connection.as_mut() => result,
        reason = close_reason => {
            tracing::debug!(target: "http", "closing downstream connection: {reason}");
            activity.life.closing();
            if reason == "drain time elapsed" {
                return;
            }
            connection.as_mut().graceful_shutdown();
            // In-flight requests get the drain window to finish; then the connection closes.
            tokio::select! {
                result = connection.as_mut() => result,
                _ = drain.expired() => {
                    tracing::debug!(target: "http", "drain time is up: closing a downstream connection");
                    Ok(())
                }
            }
        }
    };
    if let Err(e) = &result {
        tracing::debug!(target: "http", "downstream connection ended with an error: {e}");
        // hyper's `header_read_timeout` is Envoy's `request_headers_timeout`.
        if e.is_timeout() {
            ctx.stats.cx.rq_header_timeout.inc();
        }
        activity.life.closing();
    }
    // Bytes of a request that never reached the service: Envoy's codec had a stream for it.
    // A head hyper refused to parse is counted as the refusal below.
    let refused = matches!(&result, Err(e) if e.is_parse() || e.is_parse_too_large());
    if !admitted.http2
        && !refused
        && activity.life.in_flight() == 0
        && !activity.codec.head.is_empty()
    {
        activity.life.partial_request();
    }
    if let Some(orphan) = activity.codec.take() {
        let refusal = result.err().and_then(|e| orphan.refusal(&e));
        let reply = refusal.map(|r| {
            on_refusal(&ctx, &activity, refused_downstream, r);
            super::codec_error::reply_bytes(r, ctx.hcm.server_name.as_bytes())
        });
        orphan.finish(reply).await;
    }
}

/// Counts and logs a request hyper could not parse, as Envoy's HTTP/1 codec error: a stream
/// with no request headers, a local reply, `DPE`.
fn on_refusal(
    ctx: &HttpContext,
    activity: &Activity,
    downstream: Option<super::Downstream>,
    refusal: super::codec_error::Refusal,
) {
    let stats = &ctx.stats;
    activity.life.codec(false);
    stats.downstream_cx_protocol_error.inc();
    stats.downstream_rq_total.inc();
    stats.downstream_rq_http1_total.inc();
    stats.response(refusal.status);
    let Some(downstream) = downstream else {
        return;
    };
    let info = crate::format::StreamInfo {
        response_code: refusal.status.as_u16(),
        response_flags: dpe(),
        response_code_details: Some(refusal.details.into()),
        bytes_sent: refusal
            .status
            .canonical_reason()
            .map_or(0, |r| r.len() as u64),
        duration: Some(Duration::ZERO),
        connection_id: Some(downstream.connection_id),
        requested_server_name: downstream.requested_server_name.clone(),
        ..Default::default()
    };
    let log = crate::format::Context {
        downstream_remote: downstream.remote,
        downstream_local: downstream.local,
        upstream_remote: None,
        start: std::time::SystemTime::now(),
        protocol: Some(http::Version::HTTP_11),
        request_headers: None,
        stream: Some(&info),
        downstream_tls: downstream.tls.as_deref(),
    };
    ctx.access_logs.log(&log);
}

/// `downstream_rq_active` for a request being routed.
struct ActiveRequest<'a>(&'a crate::stats::Gauge);

impl<'a> ActiveRequest<'a> {
    fn new(gauge: &'a crate::stats::Gauge) -> Self {
        gauge.inc();
        ActiveRequest(gauge)
    }
}

impl Drop for ActiveRequest<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The service's error for a stream it resets instead of answering.
#[derive(Debug)]
struct StreamRefused;

impl std::fmt::Display for StreamRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stream refused by the connection manager")
    }
}

impl std::error::Error for StreamRefused {}

/// Whether an HTTP/1.1 message's `Connection` header says the connection ends with it.
fn asks_close(headers: &http::HeaderMap) -> bool {
    super::connection_tokens::has_token(headers, "close")
}

/// Whether an HTTP/1.0 request's `Connection` header asks for keep-alive.
fn asks_keep_alive(headers: &http::HeaderMap) -> bool {
    super::connection_tokens::has_token(headers, "keep-alive")
}

async fn handle(
    ctx: &Arc<HttpContext>,
    downstream: super::Downstream,
    mut request: hyper::Request<Incoming>,
) -> hyper::Response<ResponseBody> {
    let started = Instant::now();
    let logging = ctx.records_streams();
    let mut istio = ctx.istio.as_ref().map(|i| {
        let uri = request.uri().clone();
        i.on_request(&uri, request.headers_mut())
    });
    let start = std::time::SystemTime::now();
    let protocol = request.version();
    // Envoy answers an HTTP/1.0 request (`accept_http_10`) that did not ask to be kept alive
    // with `connection: close`.
    let close_http_10 = protocol == http::Version::HTTP_10 && !asks_keep_alive(request.headers());
    // Every stream has its timers (Envoy's stream idle timeout is on by default) and counts
    // its request body for the access log.
    let progress = Arc::new(StreamProgress::new(started, &ctx.hcm.limits.stream));
    if hyper::body::Body::is_end_stream(request.body()) {
        progress.finish();
    }
    request.extensions_mut().insert(progress.clone());
    // The gRPC statistics filter: the router binds the call to its cluster.
    let grpc_call = ctx
        .hcm
        .grpc_stats
        .as_ref()
        .and_then(|g| super::grpc_stats::GrpcCall::start(g, request.uri(), request.headers()));
    if let Some(call) = &grpc_call {
        request.extensions_mut().insert(call.clone());
    }
    let stats = &ctx.stats;
    stats.downstream_rq_total.inc();
    // Until routing ends, also when the client goes first and the future is dropped.
    let rq_active = ActiveRequest::new(&stats.downstream_rq_active);
    if request.version() == http::Version::HTTP_2 {
        stats.downstream_rq_http2_total.inc();
    } else {
        stats.downstream_rq_http1_total.inc();
    }
    // A gRPC stream whose peer is known reports its messages every period from the start,
    // also while the response has not started.
    let routed_slot = match (&ctx.istio, istio.as_mut()) {
        (Some(runtime), Some(r)) => {
            r.grpc_call = grpc_call.clone();
            runtime.routed_slot(r)
        }
        _ => None,
    };
    let mut outcome = match (&ctx.istio, istio.as_mut(), routed_slot) {
        (Some(runtime), Some(r), Some(slot)) => {
            request.extensions_mut().insert(slot.clone());
            let tls = downstream.tls.as_deref();
            let routing = route_request(ctx, &downstream, request);
            runtime.while_routing(r, started, tls, &slot, routing).await
        }
        _ => route_request(ctx, &downstream, request).await,
    };
    if close_http_10 {
        outcome.response.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    if let (Some(runtime), Some(r)) = (&ctx.istio, istio.as_mut()) {
        runtime.on_response(
            r,
            outcome.response.headers_mut(),
            outcome.upstream.is_some(),
        );
    }
    if let Some(call) = &grpc_call {
        let from_upstream = outcome.upstream.is_some();
        let response = std::mem::take(&mut outcome.response);
        outcome.response = call
            .on_response(response, from_upstream)
            .map(|b| b.boxed_unsync());
    }
    let reset = outcome.response.extensions().get::<ResetStream>().is_some();
    if !reset {
        stats.response(outcome.response.status());
    }
    drop(rq_active);
    stats
        .downstream_rq_time
        .record(started.elapsed().as_secs_f64() * 1000.0);
    if let Some(flag) = outcome.flag {
        tracing::debug!(target: "http", "local reply {} ({})", outcome.response.status(), flag.short());
    }
    if progress.has_response_timers() {
        let (parts, body) = outcome.response.into_parts();
        let timed = TimedBody::new(body, progress.clone(), ctx.clone());
        outcome.response = hyper::Response::from_parts(parts, timed.boxed_unsync());
    }
    if let Some(slot) = outcome
        .response
        .extensions_mut()
        .remove::<super::tracing::TraceSlot>()
    {
        if let Some(mut span) = slot.take() {
            let flags = outcome.info.response_flags.with(flag_bits(outcome.flag));
            span.on_response(
                (!reset).then(|| outcome.response.status()),
                flags.short_string(),
            );
            let (parts, body) = outcome.response.into_parts();
            let traced = super::tracing::TracedBody::new(body, span, progress.clone());
            outcome.response = hyper::Response::from_parts(parts, traced.boxed_unsync());
        }
    }
    if !logging {
        return outcome.response;
    }
    let mut info = std::mem::take(&mut outcome.info);
    info.response_code = if reset {
        0
    } else {
        outcome.response.status().as_u16()
    };
    info.response_flags = info.response_flags.with(flag_bits(outcome.flag));
    // Envoy's HTTP/1 codec reports HTTP/1.1 for a request it refused while parsing, HTTP/1.0
    // included.
    let protocol = if info.response_flags.intersects(dpe()) && protocol == http::Version::HTTP_10 {
        http::Version::HTTP_11
    } else {
        protocol
    };
    if outcome.upstream.is_some() {
        info.response_duration = Some(started.elapsed());
    }
    if info.response_code_details.is_none() {
        info.response_code_details = default_details(
            outcome.flag,
            outcome.upstream.is_some(),
            info.upstream_transport_failure_reason.as_deref(),
        );
    }
    if !ctx.access_logs.response_headers.is_empty() {
        info.response_headers = crate::format::KeptHeaders::keep(
            outcome.response.headers(),
            &ctx.access_logs.response_headers,
        );
    }
    info.connection_id = Some(downstream.connection_id);
    info.requested_server_name = downstream.requested_server_name.clone();
    let connected = outcome.upstream.is_some()
        || matches!(
            outcome.flag,
            Some(
                ResponseFlag::UpstreamRequestTimeout
                    | ResponseFlag::UpstreamRemoteReset
                    | ResponseFlag::UpstreamConnectionTermination
                    | ResponseFlag::UpstreamProtocolError
                    | ResponseFlag::UpstreamMaxStreamDurationReached
            )
        );
    let pending = Box::new(Pending {
        connected,
        ctx: ctx.clone(),
        downstream,
        start,
        started,
        protocol,
        request: progress,
        info,
        istio: istio.map(Box::new),
    });
    let tunnel = outcome.response.extensions_mut().remove::<TunnelLog>();
    let (parts, body) = outcome.response.into_parts();
    hyper::Response::from_parts(parts, LoggedBody::new(body, pending, tunnel).boxed_unsync())
}

fn dpe() -> crate::format::ResponseFlags {
    crate::format::ResponseFlags::named("DPE").unwrap_or_default()
}

async fn sleep_or_forever(duration: Option<Duration>) {
    match duration {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// What a connection's service, socket and task share: its life (streams in flight, who
/// closes), its drain state, and the watch on hyper's own replies.
struct Activity {
    life: ConnectionLife,
    /// Set once the codec is known to be HTTP/2.
    http2: std::sync::atomic::AtomicBool,
    /// The listener is draining: HTTP/1.1 responses carry `Connection: close`.
    draining: std::sync::atomic::AtomicBool,
    /// An HTTP/2 connection is to end gracefully (GOAWAY): the server fails health checks, or
    /// the connection reached `max_requests_per_connection`.
    goaway: tokio::sync::Notify,
    /// Requests the connection took, for `max_requests_per_connection`.
    requests: std::sync::atomic::AtomicU64,
    /// Tells hyper's own replies to unparsable requests from responses.
    codec: super::codec_error::Watch,
}

impl super::codec_error::Watched for Activity {
    fn watch(&self) -> &super::codec_error::Watch {
        &self.codec
    }
}

impl Lives for Activity {
    fn life(&self) -> &ConnectionLife {
        &self.life
    }
}

impl Activity {
    fn new(max_head: usize, life: ConnectionLife) -> Self {
        Self {
            life,
            http2: std::sync::atomic::AtomicBool::new(false),
            draining: std::sync::atomic::AtomicBool::new(false),
            goaway: tokio::sync::Notify::new(),
            requests: std::sync::atomic::AtomicU64::new(0),
            codec: super::codec_error::Watch::new(max_head),
        }
    }
}
