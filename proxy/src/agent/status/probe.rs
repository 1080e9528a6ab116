//! Running a rewritten kubelet probe against the application, as pilot-agent does: HTTP(S)
//! GET to the pod IP with the kubelet's headers (redirects count as success, the body is cut
//! at 10 KiB), a TCP connect, or a `grpc.health.v1.Health/Check` over h2c; every connection
//! leaves from 127.0.0.6 (::6) so the inbound capture lets it reach the application directly.

use super::client::{self, Connected, ReadError, Version};
use super::config::{AppProber, ProbeAction};
use super::StatusContext;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use std::net::IpAddr;

/// The most of the application's answer that goes back to the kubelet.
const MAX_BODY: usize = 10 * 1024;
/// Redirects to the same host are followed at most this often (kubelet's limit).
const MAX_REDIRECTS: usize = 10;

pub type ProbeResponse = Response<Full<Bytes>>;

fn status_only(status: StatusCode) -> ProbeResponse {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

/// Where probes go: the pod IP (what kubelet would probe), `localhost` in the legacy mode, or
/// loopback when the pod IP is unknown.
fn destination(ctx: &StatusContext, source: IpAddr) -> String {
    if ctx.options.probe_localhost {
        return "localhost".to_string();
    }
    match ctx.options.pod_ip {
        Some(ip) => ip.to_string(),
        None if source.is_ipv6() => "::1".to_string(),
        None => "127.0.0.1".to_string(),
    }
}

/// Runs `prober` for the kubelet request with `host` (its Host header) and `headers`.
pub async fn run(
    ctx: &StatusContext,
    path: &str,
    prober: &AppProber,
    host: Option<&str>,
    headers: &HeaderMap,
) -> ProbeResponse {
    let source = ctx.options.probe_source();
    let dest = destination(ctx, source);
    match &prober.action {
        ProbeAction::Http {
            path: app_path,
            port,
            https,
        } => {
            let host = host_header(host, ctx.status_port(), *port);
            let probe = HttpProbe {
                dest: &dest,
                source,
                headers,
                host,
                offer_h2: ctx.options.http2_probing,
            };
            match tokio::time::timeout(prober.timeout, probe.run(*https, *port, app_path)).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    tracing::error!(target: "agent", "Request to probe app failed: {e}, original URL path = {path}\napp URL path = {app_path}");
                    status_only(StatusCode::INTERNAL_SERVER_ERROR)
                }
                Err(_) => {
                    tracing::error!(target: "agent", "Request to probe app failed: timeout after {:?}, original URL path = {path}\napp URL path = {app_path}", prober.timeout);
                    status_only(StatusCode::INTERNAL_SERVER_ERROR)
                }
            }
        }
        ProbeAction::Tcp { port } => {
            let connect = client::connect(&dest, *port, Some(source));
            match tokio::time::timeout(prober.timeout, connect).await {
                Ok(Ok(_stream)) => status_only(StatusCode::OK),
                Ok(Err(e)) => {
                    tracing::debug!(target: "agent", "tcp probe of {dest}:{port} failed: {e}");
                    status_only(StatusCode::INTERNAL_SERVER_ERROR)
                }
                Err(_) => status_only(StatusCode::INTERNAL_SERVER_ERROR),
            }
        }
        ProbeAction::Grpc { port, service } => {
            let agent = headers.get(http::header::USER_AGENT);
            let check = grpc_check(&dest, *port, source, service, agent);
            match tokio::time::timeout(prober.timeout, check).await {
                Ok(Ok(())) => status_only(StatusCode::OK),
                Ok(Err(e)) => {
                    tracing::error!(target: "agent", "grpc probe failed: {e}");
                    status_only(StatusCode::INTERNAL_SERVER_ERROR)
                }
                Err(_) => {
                    tracing::error!(target: "agent", "grpc request not finished within timeout");
                    status_only(StatusCode::INTERNAL_SERVER_ERROR)
                }
            }
        }
    }
}

/// The kubelet's Host header, with the status port swapped for the application's port (the
/// kubelet addressed the status server; the application expects its own port).
fn host_header(host: Option<&str>, status_port: u16, app_port: u16) -> Option<String> {
    let host = host?;
    let Some((name, port)) = host.rsplit_once(':') else {
        return Some(host.to_string());
    };
    if port.parse::<u16>().ok() == Some(status_port) && !name.is_empty() {
        return Some(format!("{name}:{app_port}"));
    }
    Some(host.to_string())
}

struct HttpProbe<'a> {
    dest: &'a str,
    source: IpAddr,
    headers: &'a HeaderMap,
    host: Option<String>,
    offer_h2: bool,
}

impl HttpProbe<'_> {
    async fn run(&self, https: bool, port: u16, path: &str) -> Result<ProbeResponse, String> {
        let (mut https, mut port, mut path) = (https, port, path.to_string());
        for _ in 0..=MAX_REDIRECTS {
            let response = self.once(https, port, &path).await?;
            let status = response.status();
            if !status.is_redirection() {
                let body = match client::read_limited(response.into_body(), MAX_BODY).await {
                    Ok(b) | Err(ReadError::TooLong(b)) => b,
                    Err(ReadError::Failed(_)) => Vec::new(),
                };
                let mut r = status_only(status);
                *r.body_mut() = Full::new(Bytes::from(body));
                return Ok(r);
            }
            let location = response
                .headers()
                .get(http::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<http::Uri>().ok());
            let Some(location) = location else {
                return Ok(status_only(StatusCode::OK));
            };
            match location.host() {
                // A redirect elsewhere is a success without following it, as in kubelet.
                Some(h) if h.trim_matches(['[', ']']) != self.dest => {
                    return Ok(status_only(StatusCode::OK))
                }
                Some(_) => {
                    https = location.scheme_str() == Some("https");
                    port = location.port_u16().unwrap_or(if https { 443 } else { 80 });
                    path = location
                        .path_and_query()
                        .map_or("/".to_string(), |pq| pq.as_str().to_string());
                }
                None => {
                    let next = location.to_string();
                    path = if next.starts_with('/') {
                        next
                    } else {
                        let dir = path.split('?').next().unwrap_or("/");
                        let dir = &dir[..dir.rfind('/').map_or(0, |i| i + 1)];
                        format!("{dir}{next}")
                    };
                }
            }
        }
        Err(format!("stopped after {MAX_REDIRECTS} redirects"))
    }

    async fn once(
        &self,
        https: bool,
        port: u16,
        path: &str,
    ) -> Result<Response<hyper::body::Incoming>, String> {
        let stream = client::connect(self.dest, port, Some(self.source))
            .await
            .map_err(|e| e.to_string())?;
        let conn = if https {
            Connected::tls(stream, self.dest, self.offer_h2)
                .await
                .map_err(|e| e.to_string())?
        } else {
            Connected::plain(stream, Version::Http1)
        };
        let authority = match self.dest.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
            _ => format!("{}:{port}", self.dest),
        };
        let scheme = if https { "https" } else { "http" };
        let mut request = Request::get(format!("{scheme}://{authority}{path}"));
        for (name, value) in self.headers {
            if !is_hop_by_hop(name) {
                request = request.header(name, value);
            }
        }
        request = request.header(http::header::HOST, self.host.clone().unwrap_or(authority));
        // kubelet closes probe connections; the application should not keep one idle for us.
        request = request.header(http::header::CONNECTION, "close");
        let mut request = request
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        conn.send_adapted(&mut request).await
    }
}

fn is_hop_by_hop(name: &http::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
            | "te"
            | "content-length"
    )
}

impl Connected {
    /// Sends a request built in absolute form: HTTP/1.1 wants the origin form with a Host
    /// header; h2 wants the authority in the URI and no connection-specific headers.
    async fn send_adapted(
        self,
        request: &mut Request<Full<Bytes>>,
    ) -> Result<Response<hyper::body::Incoming>, String> {
        let mut taken = std::mem::replace(request, Request::new(Full::new(Bytes::new())));
        if self.version() == Version::Http1 {
            let origin = taken
                .uri()
                .path_and_query()
                .map_or("/", |pq| pq.as_str())
                .parse::<http::Uri>()
                .map_err(|e| e.to_string())?;
            *taken.uri_mut() = origin;
        } else {
            taken.headers_mut().remove(http::header::CONNECTION);
            taken.headers_mut().remove(http::header::HOST);
        }
        self.send(taken).await
    }
}

/// `grpc.health.v1.Health/Check` for `service`: success only for a response with gRPC
/// status OK and serving status SERVING (1).
async fn grpc_check(
    dest: &str,
    port: u16,
    source: IpAddr,
    service: &str,
    user_agent: Option<&http::HeaderValue>,
) -> Result<(), String> {
    let stream = client::connect(dest, port, Some(source))
        .await
        .map_err(|e| format!("failed to connect: {e}"))?;
    // HealthCheckRequest { service = 1 }, length-prefixed as a gRPC message.
    let mut message = Vec::new();
    if !service.is_empty() {
        message.push(0x0a);
        put_varint(&mut message, service.len() as u64);
        message.extend_from_slice(service.as_bytes());
    }
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(&message);
    let authority = match dest.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
        _ => format!("{dest}:{port}"),
    };
    let mut request = Request::post(format!("http://{authority}/grpc.health.v1.Health/Check"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers");
    if let Some(agent) = user_agent {
        request = request.header(http::header::USER_AGENT, agent);
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = Connected::plain(stream, Version::H2).send(request).await?;
    let headers = response.headers().clone();
    let status = response.status();
    let collected = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let grpc_status = trailers
        .get("grpc-status")
        .or_else(|| headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if status != StatusCode::OK || grpc_status != "0" {
        return Err(match grpc_status {
            "12" => "server does not implement the grpc health protocol (grpc.health.v1.Health)"
                .to_string(),
            _ => format!("http status {status}, grpc-status {grpc_status:?}"),
        });
    }
    let data = collected.to_bytes();
    let serving = data.get(5..).and_then(serving_status);
    if serving == Some(1) {
        Ok(())
    } else {
        Err(format!(
            "service not serving (status {})",
            serving.unwrap_or(0)
        ))
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Field 1 (`status`, varint) of a `HealthCheckResponse`; absent means UNKNOWN (0).
fn serving_status(mut message: &[u8]) -> Option<u64> {
    let mut status = 0;
    while let Some((&tag, rest)) = message.split_first() {
        message = rest;
        let (value, used) = varint(message)?;
        match (tag >> 3, tag & 7) {
            (1, 0) => {
                status = value;
                message = &message[used..];
            }
            (_, 0) => message = &message[used..],
            (_, 2) => message = message.get(used + usize::try_from(value).ok()?..)?,
            _ => return None,
        }
    }
    Some(status)
}

fn varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, b) in bytes.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_header_swaps_the_status_port() {
        assert_eq!(
            host_header(Some("10.0.0.5:15020"), 15020, 8080).as_deref(),
            Some("10.0.0.5:8080")
        );
        assert_eq!(
            host_header(Some("example:99"), 15020, 8080).as_deref(),
            Some("example:99")
        );
        assert_eq!(
            host_header(Some("example"), 15020, 8080).as_deref(),
            Some("example")
        );
        assert_eq!(host_header(None, 15020, 8080), None);
    }

    #[test]
    fn health_response_decoding() {
        assert_eq!(serving_status(&[0x08, 0x01]), Some(1));
        assert_eq!(serving_status(&[0x08, 0x02]), Some(2));
        assert_eq!(serving_status(&[]), Some(0));
        assert_eq!(serving_status(&[0x12, 0x01, b'x', 0x08, 0x01]), Some(1));
        assert_eq!(serving_status(&[0x08]), None);
    }
}
