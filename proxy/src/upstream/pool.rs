//! Connection pools per cluster: HTTP/1.1 keep-alive connections per host (hyper-util's
//! pool), and one multiplexed HTTP/2 connection per host, as Envoy keeps.

use super::connector::Connector;
use super::host::Host;
use crate::config::cluster::Cluster;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower::Service;

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
    /// The cluster needs a transport socket Outrigger does not speak yet.
    UnsupportedTransport(String),
}

pub struct Pool {
    http1: Client<Connector, UpstreamBody>,
    connector: Connector,
    http2_settings: crate::config::hcm_options::Http2Settings,
    http2: std::sync::Mutex<std::collections::HashMap<http::uri::Authority, Http2Connection>>,
}

/// A pooled HTTP/2 connection and its local address (for `%UPSTREAM_LOCAL_ADDRESS%`).
#[derive(Clone)]
struct Http2Connection {
    sender: http2::SendRequest<UpstreamBody>,
    local: Option<std::net::SocketAddr>,
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
        tls: Option<std::sync::Arc<crate::tls::ClientTls>>,
    ) -> Self {
        let connector = Connector {
            connect_timeout: cluster.connect_timeout,
            keepalive: cluster.tcp_keepalive,
            source: cluster.source_address,
            accounting,
            tls,
        };
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(cluster.idle_timeout);
        if cluster.max_requests_per_connection == Some(1) {
            // One request per connection: never return a connection to the pool.
            builder.pool_max_idle_per_host(0);
        }
        Self {
            http1: builder.build(connector.clone()),
            connector,
            http2_settings: cluster.http2,
            http2: Default::default(),
        }
    }

    /// Sends `request` (absolute-form URI carrying the downstream authority) to `host`.
    pub async fn send(
        &self,
        host: &Host,
        mut request: http::Request<UpstreamBody>,
        http2: bool,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        if http2 {
            *request.version_mut() = http::Version::HTTP_2;
            // HTTP/2 carries the authority in `:authority` (from the URI); no `host` header.
            request.headers_mut().remove(http::header::HOST);
            return self.send_http2(host, request).await;
        }
        *request.version_mut() = http::Version::HTTP_11;
        // The pool keys connections by the URI's authority: put the host's there, keeping the
        // downstream authority in the Host header.
        let original = request.uri().clone();
        if !request.headers().contains_key(http::header::HOST) {
            if let Some(a) = original.authority() {
                if let Ok(v) = http::HeaderValue::from_str(a.as_str()) {
                    request.headers_mut().insert(http::header::HOST, v);
                }
            }
        }
        let mut parts = original.into_parts();
        parts.authority = Some(host.authority.clone());
        parts.scheme = Some(http::uri::Scheme::HTTP);
        *request.uri_mut() =
            http::Uri::from_parts(parts).map_err(|e| UpstreamError::Reset(e.to_string()))?;
        self.http1.request(request).await.map_err(|e| {
            if e.is_connect() {
                UpstreamError::ConnectFailure(connect_reason(&e))
            } else {
                UpstreamError::Reset(reset_reason(&e))
            }
        })
    }

    async fn send_http2(
        &self,
        host: &Host,
        request: http::Request<UpstreamBody>,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        let Http2Connection { mut sender, local } = self.http2_sender(host).await?;
        sender
            .ready()
            .await
            .map_err(|e| UpstreamError::Reset(reset_reason(&e)))?;
        let mut response = sender
            .send_request(request)
            .await
            .map_err(|e| UpstreamError::Reset(reset_reason(&e)))?;
        if let Some(local) = local {
            response
                .extensions_mut()
                .insert(super::connector::UpstreamLocalAddress(local));
        }
        Ok(response)
    }

    async fn http2_sender(&self, host: &Host) -> Result<Http2Connection, UpstreamError> {
        if let Some(s) = self.lock_http2().get(&host.authority) {
            if !s.sender.is_closed() {
                return Ok(s.clone());
            }
        }
        let uri = http::Uri::builder()
            .scheme("http")
            .authority(host.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| UpstreamError::ConnectFailure(e.to_string()))?;
        let io = self
            .connector
            .clone()
            .call(uri)
            .await
            .map_err(|e| UpstreamError::ConnectFailure(io_reason(&e)))?;
        let local = io.inner().stream.local_addr();
        let settings = self.http2_settings;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(settings.initial_stream_window_size)
            .initial_connection_window_size(settings.initial_connection_window_size)
            .handshake(io)
            .await
            .map_err(|e| UpstreamError::ConnectFailure(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(target: "pool", "HTTP/2 upstream connection ended: {e}");
            }
        });
        // Two requests racing here may both connect; the later one wins the slot and the
        // other connection closes when its last stream ends.
        let connection = Http2Connection { sender, local };
        self.lock_http2()
            .insert(host.authority.clone(), connection.clone());
        Ok(connection)
    }

    fn lock_http2(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<http::uri::Authority, Http2Connection>>
    {
        self.http2.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Envoy's transport failure reason for refused connections reads "delayed connect error: 111".
fn io_reason(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => format!("delayed connect error: {code}"),
        None if e.kind() == std::io::ErrorKind::TimedOut => "connection timeout".to_string(),
        None => e.to_string(),
    }
}

fn connect_reason(e: &hyper_util::client::legacy::Error) -> String {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io_reason(io);
        }
        source = s.source();
    }
    e.to_string()
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
