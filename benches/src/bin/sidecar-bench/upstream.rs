//! The upstreams, run as helper processes on the load core: an HTTP server (HTTP/1.1
//! keep-alive and h2c, one fixed body for every request) and a TCP bulk source.

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::io::Write;
use std::net::TcpListener;

/// Serves `bytes`-byte responses on 127.0.0.1:`port` until killed. One thread: the
/// upstream shares the load core with the generator and should not spread further.
pub fn serve_http(port: u16, bytes: usize) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let body = Bytes::from(vec![b'x'; bytes]);
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    let body = body.clone();
                    async move {
                        let mut response = hyper::Response::new(Full::new(body));
                        response.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("text/plain"),
                        );
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// Writes zeros to every accepted connection until the peer goes away.
pub fn serve_tcp(port: u16) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    let chunk = vec![0u8; 64 * 1024];
    for stream in listener.incoming() {
        let mut stream = stream?;
        let chunk = chunk.clone();
        std::thread::spawn(move || while stream.write_all(&chunk).is_ok() {});
    }
    Ok(())
}
