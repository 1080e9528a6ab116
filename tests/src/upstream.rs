//! A tiny upstream HTTP server for traffic tests: HTTP/1.1 and h2c (prior knowledge) on
//! 127.0.0.1, answering every request with one configured response (late, when the request
//! asks with [`DELAY_HEADER`]) and recording what it received. Its tokio runtime lives on a thread of its own, so synchronous tests can use it;
//! dropping the server stops it.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// A request header: the upstream waits this many milliseconds (at most 10 s) before it
/// answers.
pub const DELAY_HEADER: &str = "x-upstream-delay-ms";

/// What the server answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    /// 200 with `body` as text/plain.
    pub fn text(body: &str) -> Reply {
        Reply {
            status: 200,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: body.into(),
        }
    }
}

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    /// Path and query.
    pub path: String,
    /// `HTTP/1.1`, `HTTP/2.0`.
    pub version: String,
    /// Lower-case names, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Received {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Default)]
struct Shared {
    received: Mutex<Vec<Received>>,
    connections: AtomicUsize,
}

/// A running upstream; stops when dropped.
#[derive(Debug)]
pub struct Upstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Upstream {
    /// An upstream answering every request with 200 and `body`.
    pub fn start(body: &str) -> Upstream {
        Self::start_with(Reply::text(body))
    }

    /// An upstream answering every request with `reply`.
    pub fn start_with(reply: Reply) -> Upstream {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind the upstream on 127.0.0.1");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let addr = listener.local_addr().expect("a bound address");
        let shared = Arc::new(Shared::default());
        let (stop, stopped) = oneshot::channel();
        let thread = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name(format!("upstream-{}", addr.port()))
                .spawn(move || serve(listener, reply, shared, stopped))
                .expect("spawn the upstream thread")
        };
        Upstream {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Received> {
        self.shared
            .received
            .lock()
            .expect("no panic while holding the request log")
            .clone()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Waits up to `timeout` until at least `n` requests have arrived; returns them all.
    pub fn wait_for_requests(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let received = self.requests();
            if received.len() >= n || Instant::now() >= deadline {
                return received;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(
    listener: std::net::TcpListener,
    reply: Reply,
    shared: Arc<Shared>,
    mut stopped: oneshot::Receiver<()>,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime for the upstream");
    runtime.block_on(async move {
        let listener =
            tokio::net::TcpListener::from_std(listener).expect("a tokio listener for the upstream");
        let reply = Arc::new(reply);
        loop {
            let (stream, _) = tokio::select! {
                _ = &mut stopped => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(_) => continue,
                },
            };
            shared.connections.fetch_add(1, Ordering::SeqCst);
            let shared = Arc::clone(&shared);
            let reply = Arc::clone(&reply);
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let shared = Arc::clone(&shared);
                    let reply = Arc::clone(&reply);
                    async move { Ok::<_, Infallible>(answer(request, &reply, &shared).await) }
                });
                // A client that goes away mid-request is not the upstream's problem.
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

async fn answer(
    request: Request<Incoming>,
    reply: &Reply,
    shared: &Shared,
) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    // A request can ask to be answered late, so that tests have requests in flight.
    let delay = parts
        .headers
        .get(DELAY_HEADER)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(ms) = delay {
        tokio::time::sleep(Duration::from_millis(ms.min(10_000))).await;
    }
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let received = Received {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_string(), |p| p.to_string()),
        version: format!("{:?}", parts.version),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
    };
    shared
        .received
        .lock()
        .expect("no panic while holding the request log")
        .push(received);
    let mut response = Response::builder().status(reply.status);
    for (name, value) in &reply.headers {
        response = response.header(name, value);
    }
    response
        .body(Full::new(Bytes::from(reply.body.clone())))
        .unwrap_or_else(|e| panic!("the test's Reply is not a valid response: {e}"))
}

#[cfg(test)]
mod tests {
    use super::Upstream;
    use crate::curl;

    #[test]
    fn answers_and_records_requests() {
        let upstream = Upstream::start("hello\n");
        let url = format!("http://{}/a/b?c=d", upstream.addr());
        let r =
            curl::request("PUT", &url, &["-H", "x-test: 1", "--data", "xyz"]).expect("a response");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, "hello\n");
        let received = upstream.requests();
        assert_eq!(received.len(), 1);
        assert_eq!(received[0].method, "PUT");
        assert_eq!(received[0].path, "/a/b?c=d");
        assert_eq!(received[0].version, "HTTP/1.1");
        assert_eq!(received[0].header("X-Test"), Some("1"));
        assert_eq!(&received[0].body[..], b"xyz");
        assert_eq!(upstream.connections(), 1);
    }
}
