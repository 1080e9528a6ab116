//! One downstream HTTP connection: the codec (AUTO sniffs the HTTP/2 preface for h2c prior
//! knowledge, else HTTP/1.1), per-request stats, and graceful close when listeners drain.

use super::router::{route_request, ResponseBody};
use super::stats::HcmStats;
use crate::config::hcm::{Codec, HttpConnectionManager};
use crate::upstream::ClusterManager;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite};

/// What a connection manager needs, shared by all its connections.
#[derive(Debug)]
pub struct HttpContext {
    pub hcm: Arc<HttpConnectionManager>,
    pub clusters: Arc<ClusterManager>,
    pub stats: HcmStats,
}

/// Serves `io` until the peer closes, or `drain` fires (then in-flight requests finish and
/// the connection closes gracefully: `Connection: close` on HTTP/1.1, GOAWAY on HTTP/2).
pub async fn serve_connection<I>(
    io: I,
    ctx: Arc<HttpContext>,
    downstream: super::Downstream,
    mut drain: tokio::sync::watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    ctx.stats.downstream_cx_total.inc();
    ctx.stats.downstream_cx_active.inc();
    let service_ctx = ctx.clone();
    let service = service_fn(move |request: hyper::Request<Incoming>| {
        let ctx = service_ctx.clone();
        async move { Ok::<_, Infallible>(handle(&ctx, downstream, request).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .preserve_header_case(false);
    builder.http2().timer(TokioTimer::new());
    let builder = match ctx.hcm.codec {
        Codec::Auto => builder,
        Codec::Http1 => builder.http1_only(),
        Codec::Http2 => builder.http2_only(),
    };
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = crate::server::wait_drain(&mut drain) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(target: "http", "downstream connection ended with an error: {e}");
    }
    ctx.stats.downstream_cx_active.dec();
}

async fn handle(
    ctx: &HttpContext,
    downstream: super::Downstream,
    request: hyper::Request<Incoming>,
) -> hyper::Response<ResponseBody> {
    let started = Instant::now();
    let stats = &ctx.stats;
    stats.downstream_rq_total.inc();
    stats.downstream_rq_active.inc();
    if request.version() == http::Version::HTTP_2 {
        stats.downstream_rq_http2_total.inc();
    } else {
        stats.downstream_rq_http1_total.inc();
    }
    let outcome = route_request(ctx, &downstream, request).await;
    stats.response(outcome.response.status());
    stats.downstream_rq_active.dec();
    stats
        .downstream_rq_time
        .record(started.elapsed().as_secs_f64() * 1000.0);
    if let Some(flag) = outcome.flag {
        tracing::debug!(target: "http", "local reply {} ({})", outcome.response.status(), flag.short());
    }
    outcome.response
}
