//! The agent's status server (pilot-agent's :15020): readiness for the kubelet (through the
//! proxy's :15021 route), the merged Prometheus metrics, the rewritten application probes,
//! `/quitquitquit` and `/drain` for the pod lifecycle, and the DNS table for debugging.

mod client;
pub mod config;
mod metrics;
mod probe;
mod ready;

pub use config::{AppProbers, ScrapeConfig, StatusOptions};
pub use ready::ReadinessCheck;

use crate::server::{DrainRequest, Server};
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

/// Called when `/drain` has started the drain (the sidecar's own bookkeeping).
pub type Hook = Box<dyn Fn() + Send + Sync>;
/// Renders the DNS name table as JSON for `/debug/ndsz`; `None` while there is none.
pub type NdszProvider = Box<dyn Fn() -> Option<String> + Send + Sync>;
/// More agent metrics in Prometheus text (the DNS proxy's `istio_agent_dns_*`).
pub type MetricsProvider = Box<dyn Fn() -> String + Send + Sync>;

type StatusResponse = Response<Full<Bytes>>;

/// What the status server serves from. Build it with [`StatusContext::new`] and the `with_*`
/// methods, share it as `Arc`, and ask [`StatusContext::skip_drain`] at SIGTERM.
pub struct StatusContext {
    pub server: Arc<Server>,
    pub options: StatusOptions,
    checks: Vec<ReadinessCheck>,
    ndsz: Option<NdszProvider>,
    extra_metrics: Vec<MetricsProvider>,
    on_drain: Option<Hook>,
    readiness: ready::Readiness,
    metrics: metrics::AgentMetrics,
    skip_drain: AtomicBool,
    quit_cause: Mutex<Option<String>>,
    status_port: AtomicU16,
}

impl std::fmt::Debug for StatusContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusContext")
            .field("options", &self.options)
            .field("checks", &self.checks.len())
            .finish_non_exhaustive()
    }
}

impl StatusContext {
    pub fn new(server: Arc<Server>, options: StatusOptions) -> Self {
        let started = server.started_at;
        let status_port = options.status_port;
        Self {
            server,
            options,
            checks: Vec::new(),
            ndsz: None,
            extra_metrics: Vec::new(),
            on_drain: None,
            readiness: ready::Readiness::new(started),
            metrics: metrics::AgentMetrics::default(),
            skip_drain: AtomicBool::new(false),
            quit_cause: Mutex::new(None),
            status_port: AtomicU16::new(status_port),
        }
    }

    /// Adds a readiness condition checked after the proxy's (pilot-agent's agent prober: the
    /// DNS name table must have arrived when DNS capture is on).
    pub fn with_readiness_check(mut self, check: ReadinessCheck) -> Self {
        self.checks.push(check);
        self
    }

    pub fn with_ndsz(mut self, provider: NdszProvider) -> Self {
        self.ndsz = Some(provider);
        self
    }

    /// Adds agent metrics rendered after the agent's own.
    pub fn with_agent_metrics(mut self, provider: MetricsProvider) -> Self {
        self.extra_metrics.push(provider);
        self
    }

    /// Runs `hook` after `/drain` started the inbound drain.
    pub fn on_drain(mut self, hook: Hook) -> Self {
        self.on_drain = Some(hook);
        self
    }

    /// True once `/drain` or `/quitquitquit` was called: on SIGTERM the sidecar must then exit
    /// at once instead of draining again for the termination drain duration (pilot-agent's
    /// `skipDrain`).
    pub fn skip_drain(&self) -> bool {
        self.skip_drain.load(Ordering::Acquire)
    }

    /// The readiness verdict as `/healthz/ready` computes it (for the sidecar's own use).
    pub fn ready(&self) -> Result<(), String> {
        let terminated = self.terminated();
        self.readiness
            .check(&self.server, terminated.as_deref(), &self.checks)
    }

    fn terminated(&self) -> Option<String> {
        if !*self.server.shutdown_signal().borrow() {
            return None;
        }
        let cause = self.quit_cause.lock().unwrap_or_else(|e| e.into_inner());
        // What Go prints for a context cancelled without a cause (SIGTERM).
        Some(
            cause
                .clone()
                .unwrap_or_else(|| "context canceled".to_string()),
        )
    }

    fn status_port(&self) -> u16 {
        self.status_port.load(Ordering::Relaxed)
    }
}

/// Serves the status API on `listener` until the server shuts down. Every connection is
/// HTTP/1.1, as pilot-agent's.
pub async fn serve(listener: tokio::net::TcpListener, ctx: Arc<StatusContext>) {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    if let Ok(addr) = listener.local_addr() {
        ctx.status_port.store(addr.port(), Ordering::Relaxed);
        tracing::info!(target: "agent", "Opening status port {}", addr.port());
    }
    let mut shutdown = ctx.server.shutdown_signal();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(target: "agent", "status server accept failed: {e}");
                    continue;
                }
            },
            _ = shutdown.wait_for(|s| *s) => {
                tracing::info!(target: "agent", "Status server has successfully terminated");
                return;
            }
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let ctx = ctx.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&ctx, peer, request).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(target: "agent", "status connection from {peer}: {e}");
            }
        });
    }
}

/// Routes one request as pilot-agent's mux does (exact paths, plus the two probe prefixes).
async fn handle<B>(ctx: &StatusContext, peer: SocketAddr, request: Request<B>) -> StatusResponse {
    let path = request.uri().path().to_string();
    let method = request.method().clone();
    let response = match path.as_str() {
        "/healthz/ready" => readiness(ctx),
        "/metrics" | "/stats/prometheus" => {
            if ctx.options.metrics_localhost_only && !is_loopback(peer) {
                return localhost_only();
            }
            let merged = metrics::merged(ctx, request.uri().query(), request.headers()).await;
            let mut r = Response::new(Full::new(Bytes::from(merged.body)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(merged.content_type),
            );
            r
        }
        "/quitquitquit" => lifecycle(ctx, peer, &method, |ctx| {
            tracing::info!(target: "agent", "handling /quitquitquit, notifying pilot-agent to exit");
            ctx.skip_drain.store(true, Ordering::Release);
            *ctx.quit_cause.lock().unwrap_or_else(|e| e.into_inner()) =
                Some("/quitquitquit called".to_string());
            ctx.server.shutdown();
        }),
        "/drain" => lifecycle(ctx, peer, &method, |ctx| {
            tracing::info!(target: "agent", "handling /drain, starting drain");
            ctx.server.drain_listeners(DrainRequest {
                inbound_only: true,
                graceful: true,
            });
            ctx.skip_drain.store(true, Ordering::Release);
            if let Some(hook) = &ctx.on_drain {
                hook();
            }
        }),
        "/debug/ndsz" => ndsz(ctx, peer),
        p if p.starts_with("/app-health/") || p.starts_with("/app-lifecycle/") => {
            match ctx.options.probers.get(p) {
                Some(prober) => {
                    let host = request
                        .headers()
                        .get(header::HOST)
                        .and_then(|v| v.to_str().ok())
                        .or_else(|| request.uri().authority().map(|a| a.as_str()));
                    probe::run(ctx, p, prober, host, request.headers()).await
                }
                None => {
                    tracing::error!(target: "agent", "Prober does not exists url {p}");
                    plain(
                        StatusCode::BAD_REQUEST,
                        format!("app prober config does not exists for {p}"),
                    )
                }
            }
        }
        _ => error(StatusCode::NOT_FOUND, "404 page not found"),
    };
    gzip_if_accepted(request.headers(), response)
}

fn readiness(ctx: &StatusContext) -> StatusResponse {
    let result = ctx.ready();
    ctx.readiness.record(&result);
    match result {
        Ok(()) => plain(StatusCode::OK, ""),
        // pilot-agent only logs the reason; it is in the body too, for whoever curls it.
        Err(reason) => plain(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}

/// `/quitquitquit` and `/drain`: loopback callers only, POST only, then `OK`.
fn lifecycle(
    ctx: &StatusContext,
    peer: SocketAddr,
    method: &Method,
    act: impl FnOnce(&StatusContext),
) -> StatusResponse {
    if !is_loopback(peer) {
        return localhost_only();
    }
    if method != Method::POST {
        return error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
    }
    act(ctx);
    plain(StatusCode::OK, "OK")
}

fn ndsz(ctx: &StatusContext, peer: SocketAddr) -> StatusResponse {
    if !is_loopback(peer) {
        return localhost_only();
    }
    match ctx.ndsz.as_ref().and_then(|provider| provider()) {
        Some(json) => {
            let mut r = Response::new(Full::new(Bytes::from(json)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        None => plain(StatusCode::NOT_FOUND, "{}"),
    }
}

/// Loopback, including an IPv4-mapped loopback address on a dual-stack socket.
fn is_loopback(peer: SocketAddr) -> bool {
    peer.ip().to_canonical().is_loopback()
}

fn localhost_only() -> StatusResponse {
    error(
        StatusCode::FORBIDDEN,
        "Only requests from localhost are allowed",
    )
}

fn plain(status: StatusCode, body: impl Into<Bytes>) -> StatusResponse {
    let body = body.into();
    let empty = body.is_empty();
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    if !empty {
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    r
}

/// Go's `http.Error`: the message and a newline, marked not to be sniffed.
fn error(status: StatusCode, message: &str) -> StatusResponse {
    let mut r = plain(status, format!("{message}\n"));
    r.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// Bodies below this are not worth compressing (gzhttp's default, which pilot-agent wraps
/// its mux in).
const GZIP_MIN: usize = 1024;

fn gzip_if_accepted(request: &http::HeaderMap, response: StatusResponse) -> StatusResponse {
    use http_body_util::BodyExt;
    use std::io::Write;
    let accepts = request
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or_default().trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    == Some(0.0)
            });
            name.eq_ignore_ascii_case("gzip") && !refused
        });
    if !accepts || response.headers().contains_key(header::CONTENT_ENCODING) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // A `Full` body is one frame that is ready now.
    let bytes = match futures_now(body.collect()) {
        Some(Ok(c)) => c.to_bytes(),
        _ => Bytes::new(),
    };
    if bytes.len() < GZIP_MIN {
        return Response::from_parts(parts, Full::new(bytes));
    }
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let compressed = encoder.write_all(&bytes).and_then(|()| encoder.finish());
    match compressed {
        Ok(gz) => {
            parts
                .headers
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            parts
                .headers
                .insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
            Response::from_parts(parts, Full::new(Bytes::from(gz)))
        }
        Err(_) => Response::from_parts(parts, Full::new(bytes)),
    }
}

/// Polls a future once; `Full` bodies complete immediately.
fn futures_now<F: std::future::Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}
