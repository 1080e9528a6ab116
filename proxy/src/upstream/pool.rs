//! Connection pools per cluster: HTTP/1.1 keep-alive connections per host, and one multiplexed
//! HTTP/2 connection per host, as Envoy keeps; the pool logic (pending requests, circuit
//! breakers) is in host_pool.rs, the connecting and request sending here.

use super::circuit_breakers::CircuitBreakers;
use super::connector::Connector;
use super::host::Host;
use super::host_pool::{
    self, Attached, ClusterPools, ConnectionClosed, Opener, PoolStats, Sender, Wire,
};
use super::response_body::UpstreamIncoming;
use super::transport::Via;
use super::transport::{Destination, Transport};
use crate::config::circuit_breakers::Priority;
use crate::config::cluster::{Cluster, UpstreamProtocol};
use crate::http::codec::HYPER_MAX_HEADERS;
use crate::tls::AlpnOffer;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::sync::Arc;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Request bodies sent upstream: the downstream body passed through, or one built here.
pub type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;

/// Why a request could not get a response from upstream; each maps to an Envoy local reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamError {
    /// No host to send to (UH).
    NoHealthyUpstream,
    /// The connection could not be made (UF); the text is the transport failure reason.
    ConnectFailure(String),
    /// The connection broke before a response arrived (UR).
    Reset(String),
    /// The route timeout fired (UT).
    Timeout,
    /// The retry policy's per-try timeout fired (UT, `upstream_rq_per_try_timeout`).
    PerTryTimeout,
    /// The retry policy's per-try idle timeout fired before the response head (UT,
    /// `upstream_rq_per_try_idle_timeout`).
    PerTryIdleTimeout,
    /// The cluster needs a transport socket Outrigger does not speak yet.
    UnsupportedTransport(String),
    /// A circuit breaker is open (`max_pending_requests` or `max_requests`): UO.
    Overflow,
    /// The response head broke the protocol (malformed, or more headers than the cluster's
    /// `max_headers_count`): UPE.
    Protocol,
    /// The cluster's `max_stream_duration` passed before the response head: UMSDR.
    MaxStreamDuration,
    /// The HTTP/2 stream was reset before its response head (UR): Envoy's HTTP/2 codec
    /// resets a response with more headers than `max_headers_count`.
    StreamReset,
}

pub struct Pool {
    connector: Connector,
    pools: Arc<ClusterPools>,
    /// `auto_config`: every connection's protocol comes from its ALPN, whatever the request's.
    auto: bool,
    /// The cluster's `max_headers_count` for responses (None: Envoy's default of 100, which
    /// is hyper's too).
    max_headers_count: Option<u32>,
}

/// Opens the cluster's connections: TCP (and TLS) by the connector, then the HTTP/1.1 or
/// HTTP/2 handshake, with the connection driven by a task of its own.
struct Connecting {
    connector: Connector,
    http2_settings: crate::config::hcm_options::Http2Settings,
    /// hyper's HTTP/1.1 parser limit: above 100 when the cluster allows more headers (a lower
    /// limit is checked per response).
    http1_max_headers: usize,
    /// What an `auto_config` connection offers when neither its TLS context nor the request
    /// names protocols: Envoy's `h2,http/1.1`.
    alpn_fallback: AlpnOffer,
}

impl Opener for Connecting {
    fn open(
        &self,
        mut destination: Destination,
        wire: Wire,
        closed: ConnectionClosed,
    ) -> host_pool::Opening {
        let connector = self.connector.clone();
        let settings = self.http2_settings;
        let max_headers = self.http1_max_headers;
        if wire == Wire::Alpn && destination.alpn.is_none() {
            if let Transport::Tls(tls) = &destination.transport {
                if !tls.offers_alpn() {
                    destination.alpn = Some(self.alpn_fallback.clone());
                }
            }
        }
        Box::pin(async move {
            // Envoy counts a connection by its protocol when it creates it, before it
            // connects; under ALPN the protocol is known once the handshake has picked it.
            let lifecycle = &connector.accounting.lifecycle;
            match wire {
                Wire::Http1 => lifecycle.http1_total.inc(),
                Wire::Http2 => lifecycle.http2_total.inc(),
                Wire::Alpn => {}
            }
            let io = connector
                .connect(&destination)
                .await
                .map_err(|e| UpstreamError::ConnectFailure(io_reason(&e)))?;
            // Under ALPN, HTTP/2 only when the server picked it; none picked is HTTP/1.1.
            let http2 = match wire {
                Wire::Http1 => false,
                Wire::Http2 => true,
                Wire::Alpn => {
                    let h2 = io.inner().negotiated_alpn() == Some(b"h2".as_slice());
                    match h2 {
                        true => lifecycle.http2_total.inc(),
                        false => lifecycle.http1_total.inc(),
                    }
                    h2
                }
            };
            let facts = super::pool_conn::ConnectionFacts {
                local: io.inner().stream.local_addr(),
                identities: io.inner().identities.clone(),
            };
            let fate = Some(io.inner().fate().clone());
            if http2 {
                let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .initial_stream_window_size(settings.initial_stream_window_size)
                    .initial_connection_window_size(settings.initial_connection_window_size)
                    .handshake(io)
                    .await
                    .map_err(|e| UpstreamError::ConnectFailure(e.to_string()))?;
                tokio::spawn(async move {
                    let _closed = closed;
                    if let Err(e) = connection.await {
                        tracing::debug!(target: "pool", "HTTP/2 upstream connection ended: {e}");
                    }
                });
                return Ok((Sender::Http2(sender), facts, fate));
            }
            let mut builder = http1::Builder::new();
            // hyper's own limit is 100: telling it 100 again would make it size its header
            // arrays per response instead of keeping them inline (1% of a request's CPU).
            if max_headers != HYPER_MAX_HEADERS {
                builder.max_headers(max_headers);
            }
            let (sender, connection) = builder
                .handshake(io)
                .await
                .map_err(|e| UpstreamError::ConnectFailure(e.to_string()))?;
            tokio::spawn(async move {
                let _closed = closed;
                if let Err(e) = connection.with_upgrades().await {
                    tracing::debug!(target: "pool", "HTTP/1.1 upstream connection ended: {e}");
                }
            });
            Ok((Sender::Http1(sender), facts, fate))
        })
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").finish_non_exhaustive()
    }
}

impl Pool {
    /// A connector with the cluster's socket options and accounting (the TCP proxy's too).
    pub fn connector(&self) -> Connector {
        self.connector.clone()
    }

    pub fn new(
        cluster: &Cluster,
        accounting: super::ConnectionAccounting,
        transport: Transport,
        breakers: Arc<CircuitBreakers>,
        stats: PoolStats,
    ) -> Self {
        let connector = Connector {
            connect_timeout: cluster.connect_timeout,
            keepalive: cluster.tcp_keepalive,
            source: cluster.source_address,
            accounting,
            transport,
        };
        let opener = Arc::new(Connecting {
            connector: connector.clone(),
            http2_settings: cluster.http2,
            http1_max_headers: cluster
                .stream_limits
                .max_headers_count
                .map_or(HYPER_MAX_HEADERS, |n| (n as usize).max(HYPER_MAX_HEADERS)),
            alpn_fallback: AlpnOffer::new(vec![b"h2".to_vec(), b"http/1.1".to_vec()]),
        });
        let pools = Arc::new_cyclic(|myself| {
            ClusterPools::new(
                breakers,
                stats,
                opener,
                cluster.connection_limits,
                cluster.http2.max_concurrent_streams,
                myself.clone(),
            )
        });
        Self {
            connector,
            pools,
            auto: cluster.protocol == UpstreamProtocol::Auto,
            max_headers_count: cluster.stream_limits.max_headers_count,
        }
    }

    /// Sends `request` (absolute-form URI carrying the downstream authority) to `host`, on a
    /// connection of the pool for `priority`, within the cluster's circuit breakers. With
    /// `alpn`, a TLS connection offers that list (Istio's `istio.alpn`), on connections of its
    /// own.
    pub async fn send(
        &self,
        host: &Host,
        mut request: http::Request<UpstreamBody>,
        http2: bool,
        priority: Priority,
        via: Via<'_>,
    ) -> Result<http::Response<UpstreamIncoming>, UpstreamError> {
        if let Transport::Unsupported(name) = &host.transport {
            return Err(UpstreamError::UnsupportedTransport(name.to_string()));
        }
        let wire = match (self.auto, http2) {
            (true, _) => Wire::Alpn,
            (false, true) => Wire::Http2,
            (false, false) => Wire::Http1,
        };
        let attached = self.pools.attach(host, via, priority, wire).await?;
        host.stats
            .rq_total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Attached {
            mut conn,
            pool,
            request: active,
            mut in_flight,
        } = attached;
        // The connection says the protocol: under ALPN it is known only now.
        let http2 = matches!(conn.sender, Sender::Http2(_));
        if let Err(e) = shape(&mut request, http2) {
            // Never sent: the connection is not given up with it.
            if let Some(f) = &mut in_flight {
                f.finished();
            }
            drop(pool.finish(conn, active));
            return Err(e);
        }
        let sent = match &mut conn.sender {
            Sender::Http1(s) => s.send_request(request).await,
            Sender::Http2(s) => {
                s.ready()
                    .await
                    .map_err(|e| UpstreamError::Reset(reset_reason(&e)))?;
                s.send_request(request).await
            }
        };
        // Dropping `in_flight` on an error gives the request up; a reset the upstream sent
        // is counted as its own first.
        let mut response = sent.map_err(|e| {
            if let Some(f) = in_flight.as_mut().filter(|_| reset_by_peer(&e)) {
                f.reset_by_peer();
            }
            match e.is_parse() {
                true => UpstreamError::Protocol,
                false => UpstreamError::Reset(reset_reason(&e)),
            }
        })?;
        if !http2 && announces_close(&response) {
            self.connector.accounting.lifecycle.close_notify.inc();
        }
        // Envoy's codecs count a response's headers against `max_headers_count`; the
        // connection goes with the response's body, not back to the pool.
        if self
            .max_headers_count
            .is_some_and(|max| response.headers().len() > max as usize)
        {
            return Err(match http2 {
                true => UpstreamError::StreamReset,
                false => UpstreamError::Protocol,
            });
        }
        // One extension for all the router reads of the connection (one allocation).
        if conn.facts.local.is_some() || conn.facts.identities.is_some() {
            response.extensions_mut().insert(conn.facts.clone());
        }
        let stream = pool.finish(conn, active);
        Ok(response.map(|body| UpstreamIncoming::new(body, stream, in_flight)))
    }
}

/// An HTTP/1.1 response that says the upstream will close the connection after it:
/// `connection: close`, or HTTP/1.0 without `keep-alive` (Envoy's `upstream_cx_close_notify`).
/// One header lookup per HTTP/1.1 response, no allocation.
fn announces_close<B>(response: &http::Response<B>) -> bool {
    let has = |token| crate::http::connection_tokens::has_token(response.headers(), token);
    match response.version() {
        http::Version::HTTP_10 => !has("keep-alive"),
        _ => has("close"),
    }
}

/// The error is an HTTP/2 stream reset that the upstream sent (`RST_STREAM`).
pub(super) fn reset_by_peer(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2.is_reset() && h2.is_remote();
        }
        source = s.source();
    }
    false
}

/// Puts `request` in the form its connection's protocol carries.
fn shape(request: &mut http::Request<UpstreamBody>, http2: bool) -> Result<(), UpstreamError> {
    if http2 {
        *request.version_mut() = http::Version::HTTP_2;
        // HTTP/2 carries the authority in `:authority` (from the URI); no `host` header.
        request.headers_mut().remove(http::header::HOST);
        return Ok(());
    }
    *request.version_mut() = http::Version::HTTP_11;
    // The downstream authority goes in the Host header, the path in origin form.
    if !request.headers().contains_key(http::header::HOST) {
        if let Some(a) = request.uri().authority() {
            if let Ok(v) = http::HeaderValue::from_str(a.as_str()) {
                request.headers_mut().insert(http::header::HOST, v);
            }
        }
    }
    let origin = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse::<http::Uri>()
        .map_err(|e| UpstreamError::Reset(e.to_string()))?;
    *request.uri_mut() = origin;
    Ok(())
}

/// Envoy's transport failure reason for refused connections reads "delayed connect error: 111".
fn io_reason(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => format!("delayed connect error: {code}"),
        None if e.kind() == std::io::ErrorKind::TimedOut => "connection timeout".to_string(),
        None => e.to_string(),
    }
}

fn reset_reason(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = s.to_string();
        source = s.source();
    }
    text
}
