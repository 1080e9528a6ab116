//! The small HTTP client the status server needs to reach the application: one connection per
//! request (kubelet's probes and pilot-agent's scrapes do not keep connections), optionally
//! from a fixed source address, over plain TCP or TLS without verification, HTTP/1.1 or h2.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};

/// Resolves `host` (an IP or a name such as `localhost`) and connects to the first address
/// that accepts, from `source` when given (only addresses of the source's family are tried).
pub async fn connect(host: &str, port: u16, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await?
        .filter(|a| source.is_none_or(|s| s.is_ipv4() == a.is_ipv4()))
        .collect();
    let mut last = std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("no address of the source's family for {host}"),
    );
    for addr in addrs {
        match connect_addr(addr, source).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

async fn connect_addr(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    // A probe every few seconds would otherwise leave a socket in TIME-WAIT for a minute each
    // (kubernetes#89898); lingering one second still closes with a FIN, not a reset. A close
    // only waits when unsent data remains, and a probe has sent everything by then.
    socket2::SockRef::from(&socket).set_linger(Some(Duration::from_secs(1)))?;
    socket.connect(addr).await
}

/// Which HTTP version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http1,
    H2,
}

/// A connection ready for requests: the stream, after TLS if asked, and the version agreed.
pub struct Connected {
    io: Box<dyn Io>,
    version: Version,
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

impl Connected {
    pub fn plain(stream: TcpStream, version: Version) -> Self {
        Self {
            io: Box::new(stream),
            version,
        }
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// TLS without any verification of the server (kubelet does not verify HTTPS probes), to
    /// `host` as the server name when it is a DNS name (no SNI for an IP, as Go's client).
    /// With `offer_h2`, h2 is offered by ALPN and used when the server picks it.
    pub async fn tls(stream: TcpStream, host: &str, offer_h2: bool) -> std::io::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(std::io::Error::other)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(crate::tls::AcceptAnyServer(provider)))
            .with_no_client_auth();
        if offer_h2 {
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        }
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(std::io::Error::other)?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, stream)
            .await?;
        let version = if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
            Version::H2
        } else {
            Version::Http1
        };
        Ok(Self {
            io: Box::new(tls),
            version,
        })
    }

    /// Sends one request and returns the response head with its body still to read.
    pub async fn send(
        self,
        request: http::Request<Full<Bytes>>,
    ) -> Result<http::Response<Incoming>, String> {
        let io = TokioIo::new(self.io);
        match self.version {
            Version::Http1 => {
                let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                sender
                    .send_request(request)
                    .await
                    .map_err(|e| e.to_string())
            }
            Version::H2 => {
                let (mut sender, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                        .await
                        .map_err(|e| e.to_string())?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                sender
                    .send_request(request)
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    }
}

/// Reads at most `limit` bytes of `body`; `Err(true)` when there was more.
pub async fn read_limited(mut body: Incoming, limit: usize) -> Result<Vec<u8>, ReadError> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ReadError::Failed(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                let room = limit - out.len();
                out.extend_from_slice(&data[..room]);
                return Err(ReadError::TooLong(out));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

#[derive(Debug)]
pub enum ReadError {
    /// The first `limit` bytes; there were more.
    TooLong(Vec<u8>),
    Failed(String),
}
