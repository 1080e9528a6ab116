//! Opens upstream connections for the pool: TCP with the cluster's connect timeout, keepalive
//! and source address, or a Unix socket. The pool keys connections by URI authority; a Unix
//! socket's path is carried in the authority as `u<hex of path>.unix`.

use super::transport::{Destination, Transport};
use crate::config::cluster::TcpKeepalive;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream, UnixStream};

#[derive(Debug, Clone)]
pub struct Connector {
    pub connect_timeout: Duration,
    pub keepalive: Option<TcpKeepalive>,
    pub source: Option<SocketAddr>,
    pub accounting: super::ConnectionAccounting,
    /// The cluster's own transport socket, for connections made by URI (the xDS gRPC
    /// client); pooled and proxied connections name their host's (see [`Connector::connect`]).
    pub transport: Transport,
}

/// The authority a Unix socket path is pooled under.
pub fn unix_authority(path: &std::path::Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let hex: String = path
        .as_os_str()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("u{hex}.unix")
}

fn unix_path(host: &str) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    let hex = host.strip_prefix('u')?.strip_suffix(".unix")?;
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()?;
    Some(PathBuf::from(std::ffi::OsString::from_vec(bytes)))
}

impl tower::Service<http::Uri> for Connector {
    type Response = TokioIo<CountedStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let authority = uri
                .authority()
                .ok_or_else(|| io::Error::other("upstream URI has no authority"))?;
            let destination = Destination {
                authority: authority.clone(),
                transport: this.transport.clone(),
                alpn: None,
                source: None,
            };
            this.connect(&destination).await
        })
    }
}

impl Connector {
    /// Connects to `destination` over its transport. The TLS handshake counts against the
    /// connect timeout, as in Envoy, where a connection is "connected" once its transport
    /// socket is.
    pub async fn connect(&self, destination: &Destination) -> io::Result<TokioIo<CountedStream>> {
        let authority = &destination.authority;
        if let Transport::Unsupported(name) = &destination.transport {
            return Err(io::Error::other(format!(
                "{name} is not supported by Outrigger yet"
            )));
        }
        let connect = async {
            let (stream, peer) = if let Some(path) = unix_path(authority.host()) {
                (
                    UnixStream::connect(path).await.map(UpstreamStream::Unix)?,
                    None,
                )
            } else {
                let addr: SocketAddr = authority.as_str().parse().map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "upstream address is not an IP:port",
                    )
                })?;
                (
                    self.connect_tcp(addr, destination.source)
                        .await
                        .map(UpstreamStream::Tcp)?,
                    Some(addr.ip()),
                )
            };
            match &destination.transport {
                Transport::Tls(tls) => tls
                    .connect_with_identities(stream, peer, destination.alpn.as_ref())
                    .await
                    .map(|(s, identities)| {
                        (
                            UpstreamStream::Tls(Box::new(tokio_rustls::TlsStream::Client(s))),
                            Some(Arc::new(identities)),
                        )
                    }),
                _ => Ok((stream, None)),
            }
        };
        // Counted from the attempt: a connection that fails is created and destroyed too
        // (refused, by the peer; timed out, by Outrigger).
        let guard = self.accounting.opened(authority.as_str());
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(result) => result.map(|(stream, identities)| {
                guard.connected();
                TokioIo::new(CountedStream {
                    stream,
                    identities,
                    guard,
                })
            }),
            Err(_) => {
                guard.timed_out();
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection timeout",
                ))
            }
        }
    }

    async fn connect_tcp(
        &self,
        addr: SocketAddr,
        original: Option<super::transport::OriginalSource>,
    ) -> io::Result<TcpStream> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(original) = original.filter(|o| o.ip.is_ipv4() == addr.is_ipv4()) {
            // The client's address is not ours: a transparent socket may bind it (this needs
            // CAP_NET_ADMIN, as Istio grants the sidecar in TPROXY mode), and the mark lets
            // policy routing bring the answers back here.
            let sock = socket2::SockRef::from(&socket);
            if addr.is_ipv4() {
                sock.set_ip_transparent_v4(true)?;
            } else {
                sock.set_ip_transparent_v6(true)?;
            }
            if original.mark != 0 {
                sock.set_mark(original.mark)?;
            }
            socket.bind(SocketAddr::new(original.ip, 0))?;
        } else if let Some(source) = self.source {
            socket.bind(source)?;
        }
        if let Some(k) = self.keepalive {
            let sock = socket2::SockRef::from(&socket);
            let mut params = socket2::TcpKeepalive::new();
            if let Some(t) = k.time {
                params = params.with_time(t);
            }
            if let Some(i) = k.interval {
                params = params.with_interval(i);
            }
            if let Some(p) = k.probes {
                params = params.with_retries(p);
            }
            sock.set_tcp_keepalive(&params)?;
        }
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// A connected socket, upstream or downstream.
#[derive(Debug)]
pub enum UpstreamStream {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// TLS over one of the others: client side upstream, server side downstream.
    Tls(Box<tokio_rustls::TlsStream<UpstreamStream>>),
}

impl UpstreamStream {
    /// The socket's local address (TCP, under TLS or not); None for a Unix socket.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            UpstreamStream::Tcp(s) => s.local_addr().ok(),
            UpstreamStream::Unix(_) => None,
            UpstreamStream::Tls(s) => s.get_ref().0.local_addr(),
        }
    }
}

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Unix(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_paths_round_trip_through_the_authority() {
        let path = std::path::Path::new("./etc/istio/proxy/XDS");
        let authority = unix_authority(path);
        let parsed: http::uri::Authority = authority.parse().expect("valid authority");
        assert_eq!(unix_path(parsed.host()).as_deref(), Some(path));
        assert_eq!(unix_path("127.0.0.1"), None);
    }
}

/// An upstream connection counted in its cluster's and host's stats while it lives, and its
/// bytes as they pass.
#[derive(Debug)]
pub struct CountedStream {
    pub stream: UpstreamStream,
    /// Who is at either end of a TLS connection.
    pub identities: Option<Arc<crate::tls::UpstreamIdentities>>,
    guard: super::accounting::ConnectionGuard,
}

impl CountedStream {
    /// The protocol the TLS handshake agreed on by ALPN, if any.
    /// How the connection lives and ends, shared with its pool.
    pub fn fate(&self) -> &Arc<super::lifecycle::ConnectionFate> {
        self.guard.fate()
    }

    pub fn negotiated_alpn(&self) -> Option<&[u8]> {
        match &self.stream {
            UpstreamStream::Tls(tls) => tls.get_ref().1.alpn_protocol(),
            _ => None,
        }
    }
}

/// The local address of the upstream connection a response came on, which the HTTP/1.1
/// pool puts in the response's extensions (for `%UPSTREAM_LOCAL_ADDRESS%`).
#[derive(Debug, Clone, Copy)]
pub struct UpstreamLocalAddress(pub std::net::SocketAddr);

impl Connection for CountedStream {
    fn connected(&self) -> Connected {
        match self.stream.local_addr() {
            Some(a) => Connected::new().extra(UpstreamLocalAddress(a)),
            None => Connected::new(),
        }
    }
}

impl AsyncRead for CountedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        match &polled {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                this.guard.received(n);
                // Nothing read into room for something: the peer's end of stream.
                if n == 0 && buf.remaining() > 0 {
                    this.guard.fate().peer_closed(true);
                }
            }
            Poll::Ready(Err(_)) => this.guard.fate().peer_closed(false),
            Poll::Pending => {}
        }
        polled
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write(cx, buf);
        match polled {
            Poll::Ready(Ok(n)) => this.guard.sent(n, buf.len()),
            Poll::Pending => this.guard.blocked(buf.len()),
            Poll::Ready(Err(_)) => {}
        }
        polled
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.guard.fate().write_shut();
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}
