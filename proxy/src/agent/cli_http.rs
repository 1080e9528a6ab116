//! One HTTP/1.1 request for the `wait` and `request` subcommands, which run before or beside
//! the proxy and need nothing more than a method, a URL, a body and a deadline.

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::time::Duration;

/// Sends `method url` with `body` and reads the whole answer, all within `timeout` (as Go's
/// `http.Client.Timeout` covers the body too). Only `http://` URLs.
pub async fn fetch(
    method: &Method,
    url: &Uri,
    body: Bytes,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), String> {
    let work = async {
        if url.scheme_str().unwrap_or("http") != "http" {
            return Err(format!("unsupported protocol scheme in {url}"));
        }
        let host = url.host().ok_or_else(|| format!("no host in {url}"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = url.port_u16().unwrap_or(80);
        let stream = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("dial tcp {host}:{port}: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let path = url.path_and_query().map_or("/", |pq| pq.as_str());
        let authority = url.authority().map_or(host, |a| a.as_str());
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, authority)
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| {
        format!("Get {url:?}: context deadline exceeded (Client.Timeout exceeded while awaiting headers)")
    })?
}

/// A current-thread runtime for a subcommand; `None` (after printing why) if it cannot start.
pub fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            None
        }
    }
}

/// pilot-agent exits with `os.Exit(-1)` on a command error, which the shell sees as 255.
pub const FAILURE: u8 = 255;
