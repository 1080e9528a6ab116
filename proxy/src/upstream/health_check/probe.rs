//! One health check of one host over its own connection (never the request pool's, and not
//! counted in the cluster's connection stats, as in Envoy): an HTTP GET judged by its status,
//! TCP bytes written and looked for in the answer, or a gRPC health call (`grpc.rs`). The connection is kept for the next
//! check when `reuse_connection` allows and the exchange left it usable.

use super::state::Outcome;
use crate::config::address::Endpoint;
use crate::config::health_check::{Checker, HttpCheck, TcpCheck};
use crate::upstream::connector::UpstreamStream;
use crate::upstream::transport::Transport;
use crate::upstream::Host;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::io;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A connection kept between checks.
pub enum Connection {
    Http1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
    Tcp(UpstreamStream),
    Grpc(hyper::client::conn::http2::SendRequest<super::grpc::CallBody>),
}

/// What a check needs besides the host: the checker and the default `Host` header (the
/// cluster's name). Checks use the host's transport socket, as its requests do.
pub struct Prober {
    pub checker: Checker,
    pub default_host: String,
    /// The check's timeout (a gRPC check sends it as `grpc-timeout`).
    pub timeout: std::time::Duration,
}

impl Prober {
    /// Runs one check on `conn` (connecting first when there is none). The caller bounds it
    /// with the timeout and drops the connection when it is not to be reused.
    pub async fn check(&self, host: &Host, conn: &mut Option<Connection>) -> Outcome {
        match &self.checker {
            Checker::Http(http) => self.http(http, host, conn).await,
            Checker::Tcp(tcp) => self.tcp(tcp, host, conn).await,
            Checker::Grpc(grpc) => self.grpc(grpc, host, conn).await,
        }
    }

    pub(super) async fn connect(&self, host: &Host) -> io::Result<UpstreamStream> {
        let (stream, peer) = match &host.address {
            Endpoint::Tcp(addr) => {
                let s = tokio::net::TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                (UpstreamStream::Tcp(s), Some(addr.ip()))
            }
            Endpoint::Unix(path) => (
                UpstreamStream::Unix(tokio::net::UnixStream::connect(path).await?),
                None,
            ),
        };
        match &host.transport {
            Transport::Plain => Ok(stream),
            Transport::Tls(tls) => {
                let s = tls.connect(stream, peer, None).await?;
                Ok(UpstreamStream::Tls(Box::new(
                    tokio_rustls::TlsStream::Client(s),
                )))
            }
            Transport::Unsupported(name) => Err(io::Error::other(format!(
                "{name} is not supported by Outrigger yet"
            ))),
        }
    }

    async fn http(&self, check: &HttpCheck, host: &Host, conn: &mut Option<Connection>) -> Outcome {
        let usable = match conn {
            Some(Connection::Http1(s)) => s.ready().await.is_ok(),
            Some(Connection::Http2(s)) => s.ready().await.is_ok(),
            _ => false,
        };
        if !usable {
            *conn = None;
            let Ok(stream) = self.connect(host).await else {
                return Outcome::Network;
            };
            let io = TokioIo::new(stream);
            *conn = if check.http2 {
                match hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await {
                    Ok((send, driver)) => {
                        tokio::spawn(driver);
                        Some(Connection::Http2(send))
                    }
                    Err(_) => return Outcome::Network,
                }
            } else {
                match hyper::client::conn::http1::handshake(io).await {
                    Ok((send, driver)) => {
                        tokio::spawn(driver);
                        Some(Connection::Http1(send))
                    }
                    Err(_) => return Outcome::Network,
                }
            };
        }
        let request = match self.request(check) {
            Some(r) => r,
            None => return Outcome::Network,
        };
        let response = match conn {
            Some(Connection::Http1(s)) => s.send_request(request).await,
            Some(Connection::Http2(s)) => s.send_request(request).await,
            _ => return Outcome::Network,
        };
        let Ok(response) = response else {
            *conn = None;
            return Outcome::Network;
        };
        let (parts, body) = response.into_parts();
        // The answer is complete with its body; a connection cut before then is a network
        // failure.
        if body.collect().await.is_err() {
            *conn = None;
            return Outcome::Network;
        }
        if parts
            .headers
            .get(http::header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"))
        {
            *conn = None;
        }
        let status = parts.status.as_u16();
        if check
            .expected_statuses
            .iter()
            .any(|(start, end)| (*start..*end).contains(&status))
        {
            Outcome::Healthy {
                degraded: parts.headers.contains_key("x-envoy-degraded"),
            }
        } else {
            Outcome::Unhealthy {
                exclude: parts
                    .headers
                    .contains_key("x-envoy-immediate-health-check-fail"),
            }
        }
    }

    fn request(&self, check: &HttpCheck) -> Option<http::Request<Empty<Bytes>>> {
        let authority = check.host.as_deref().unwrap_or(&self.default_host);
        let mut request = http::Request::get(check.path.as_str());
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::HOST, authority.parse().ok()?);
        headers.insert(
            http::header::USER_AGENT,
            http::HeaderValue::from_static("Envoy/HC"),
        );
        for (name, value, append) in &check.headers_to_add {
            if *append {
                headers.append(name.clone(), value.clone());
            } else {
                headers.insert(name.clone(), value.clone());
            }
        }
        for name in &check.headers_to_remove {
            headers.remove(name);
        }
        if check.http2 {
            // HTTP/2 carries the host as :authority.
            request = request.uri(format!("http://{authority}{}", check.path));
            headers.remove(http::header::HOST);
        }
        if let Some(h) = request.headers_mut() {
            *h = headers;
        }
        request.body(Empty::new()).ok()
    }

    async fn tcp(&self, check: &TcpCheck, host: &Host, conn: &mut Option<Connection>) -> Outcome {
        let mut stream = match conn.take() {
            Some(Connection::Tcp(s)) => s,
            _ => match self.connect(host).await {
                Ok(s) => s,
                Err(_) => return Outcome::Network,
            },
        };
        if !check.send.is_empty() && stream.write_all(&check.send).await.is_err() {
            return Outcome::Network;
        }
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 4096];
        while !contains_in_order(&buffer, &check.receive) {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return Outcome::Network,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        *conn = Some(Connection::Tcp(stream));
        Outcome::Healthy { degraded: false }
    }
}

/// Whether every payload occurs in `buffer`, each after the previous one (Envoy's matching
/// of `receive`); true for no payloads.
pub fn contains_in_order(buffer: &[u8], payloads: &[Vec<u8>]) -> bool {
    let mut from = 0;
    for p in payloads {
        if p.is_empty() {
            continue;
        }
        match buffer
            .get(from..)
            .and_then(|rest| rest.windows(p.len()).position(|w| w == p.as_slice()))
        {
            Some(at) => from += at + p.len(),
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receive_payloads_match_in_order_anywhere() {
        let ps = |v: &[&[u8]]| v.iter().map(|p| p.to_vec()).collect::<Vec<_>>();
        assert!(contains_in_order(b"xxpongyy", &ps(&[b"pong"])));
        assert!(contains_in_order(b"abcdef", &ps(&[b"ab", b"ef"])));
        assert!(!contains_in_order(b"abcdef", &ps(&[b"ef", b"ab"])));
        assert!(!contains_in_order(b"pon", &ps(&[b"pong"])));
        assert!(contains_in_order(b"", &[]));
    }
}
