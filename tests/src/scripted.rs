//! A scripted upstream for differential traffic tests: like [`crate::upstream::Upstream`] it
//! records every request it receives, but each instance follows a [`Behaviour`] (a fixed reply,
//! echo, a slow answer, an early close, a streamed body, trailers, a websocket upgrade, or raw
//! TCP for tcp_proxy), and tags its HTTP answers with `x-upstream: <name>` so a test sees which
//! cluster a request went to. Its tokio runtime lives on a thread of its own; dropping the
//! server stops it.

use crate::upstream::{Received, Reply};
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

/// What the upstream does with each request or connection.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// Answers every request with this reply.
    Reply(Reply),
    /// 200 with the request body as the response body.
    Echo,
    /// Waits this long, then answers 200 `slow\n` (for route timeouts).
    Delay(Duration),
    /// Reads the request head and closes the connection without answering (raw TCP).
    CloseBeforeResponse,
    /// Reads the request head, writes these bytes as the answer and closes (a malformed
    /// response, raw TCP).
    RawReply(&'static [u8]),
    /// Reads the request head, writes these bytes as the answer, and closes the connection
    /// after this long (a whole keep-alive response, then an upstream closing its idle
    /// connection; raw TCP).
    RawReplyThenClose(&'static [u8], Duration),
    /// 200 with a body of this many bytes (`x` repeated), sent in 64 KiB chunks.
    Stream(u64),
    /// 200 with `content-length: 20`: `first half` at once, then after this long
    /// `and more..` (a response that stalls mid-body, for stream timeouts).
    SlowBody(Duration),
    /// 200 with a body of `chunks` bytes `x`, one every `every` (a slow but steady stream).
    Trickle { chunks: u32, every: Duration },
    /// A `grpc.health.v1.Health/Check` server answering this status (1 SERVING, 2 NOT_SERVING)
    /// with gRPC status OK; `None`: a trailers-only UNIMPLEMENTED (grpc-status 12).
    GrpcHealth(Option<u8>),
    /// 200 `with trailers\n` followed by the trailer `x-trailer: yes`.
    Trailers,
    /// Answers a websocket upgrade with 101 and then echoes bytes until the peer closes;
    /// any other request gets 200 `no upgrade\n`.
    WebsocketEcho,
    /// Raw TCP: echoes bytes until the peer half-closes, then closes.
    TcpEcho,
    /// Raw TCP: reads until the peer half-closes, then writes `got <n> bytes\n` and closes.
    TcpHalfClose,
    /// Health checks on `path` get 200 while `healthy` is set and 503 otherwise (the test
    /// flips it while running); every other request gets 200 `<name>\n`.
    HealthSwitch {
        path: String,
        healthy: Arc<std::sync::atomic::AtomicBool>,
    },
    /// Fails the first `failures` requests (counted over the upstream's life) as `failure`
    /// says, then answers 200 `from <name>\n` (retry tests: a flaky, resetting or slow host).
    Flaky { failures: usize, failure: Failure },
}

/// How a [`Behaviour::Flaky`] upstream fails a request.
#[derive(Debug, Clone)]
pub enum Failure {
    /// Answers with this reply.
    Reply(Reply),
    /// Closes the connection without answering, once the request has been read.
    Reset,
    /// Answers 200 `from <name>\n`, after this long.
    Delay(Duration),
}

#[derive(Debug, Default)]
struct Shared {
    received: Mutex<Vec<Received>>,
    connections: AtomicUsize,
    /// Per accepted connection, in order: the requests it carried and whether it is open.
    per_connection: Mutex<Vec<ConnectionRecord>>,
}

/// What one accepted connection carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnectionRecord {
    pub requests: usize,
    pub open: bool,
}

/// A running scripted upstream; stops when dropped.
#[derive(Debug)]
pub struct Scripted {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Scripted {
    /// Starts an upstream named `name` (the value of its `x-upstream` header) on `listener`
    /// (bound by the caller, so a bootstrap can name the port before the server starts).
    pub fn start_on(listener: std::net::TcpListener, name: &str, behaviour: Behaviour) -> Scripted {
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let addr = listener.local_addr().expect("a bound address");
        let shared = Arc::new(Shared::default());
        let (stop, stopped) = oneshot::channel();
        let thread = {
            let shared = Arc::clone(&shared);
            let name = name.to_string();
            thread::Builder::new()
                .name(format!("scripted-{}", addr.port()))
                .spawn(move || serve(listener, name, behaviour, shared, stopped))
                .expect("spawn the upstream thread")
        };
        Scripted {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Starts on a fresh port of 127.0.0.1.
    pub fn start(name: &str, behaviour: Behaviour) -> Scripted {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        Self::start_on(listener, name, behaviour)
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

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Every connection accepted so far, in order: how many requests it carried and whether
    /// the peer still holds it open (HTTP behaviours only).
    pub fn connection_log(&self) -> Vec<ConnectionRecord> {
        self.shared
            .per_connection
            .lock()
            .expect("no panic while holding the connection log")
            .clone()
    }
}

impl Drop for Scripted {
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
    name: String,
    behaviour: Behaviour,
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
        let behaviour = Arc::new(behaviour);
        let name = Arc::new(name);
        loop {
            let (stream, _) = tokio::select! {
                _ = &mut stopped => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(_) => continue,
                },
            };
            shared.connections.fetch_add(1, Ordering::SeqCst);
            let index = {
                let mut log = shared
                    .per_connection
                    .lock()
                    .expect("no panic while holding the connection log");
                log.push(ConnectionRecord {
                    requests: 0,
                    open: true,
                });
                log.len() - 1
            };
            let shared = Arc::clone(&shared);
            let behaviour = Arc::clone(&behaviour);
            let name = Arc::clone(&name);
            tokio::spawn(async move {
                match &*behaviour {
                    Behaviour::CloseBeforeResponse => close_before_response(stream, &shared).await,
                    Behaviour::RawReply(bytes) => {
                        let mut stream = stream;
                        read_head(&mut stream, &shared).await;
                        let _ = stream.write_all(bytes).await;
                    }
                    Behaviour::RawReplyThenClose(bytes, after) => {
                        let mut stream = stream;
                        read_head(&mut stream, &shared).await;
                        let _ = stream.write_all(bytes).await;
                        tokio::time::sleep(*after).await;
                    }
                    Behaviour::TcpEcho => tcp_echo(stream).await,
                    Behaviour::TcpHalfClose => tcp_half_close(stream).await,
                    _ => {
                        let record =
                            move |shared: &Shared, change: &dyn Fn(&mut ConnectionRecord)| {
                                let mut log = shared
                                    .per_connection
                                    .lock()
                                    .expect("no panic while holding the connection log");
                                if let Some(r) = log.get_mut(index) {
                                    change(r);
                                }
                            };
                        let conn_shared = Arc::clone(&shared);
                        let service = service_fn(move |request| {
                            let shared = Arc::clone(&shared);
                            record(&shared, &|r| r.requests += 1);
                            let behaviour = Arc::clone(&behaviour);
                            let name = Arc::clone(&name);
                            async move {
                                // No response: hyper closes the connection unanswered.
                                answer(request, &behaviour, &name, &shared)
                                    .await
                                    .ok_or(ScriptedReset)
                            }
                        });
                        // A client that goes away mid-request is not the upstream's problem.
                        let _ = auto::Builder::new(TokioExecutor::new())
                            .serve_connection_with_upgrades(TokioIo::new(stream), service)
                            .await;
                        record(&conn_shared, &|r| r.open = false);
                    }
                }
            });
        }
    });
}

type Body = BoxBody<Bytes, Infallible>;

/// The error a service returns to have hyper drop the connection without an answer.
#[derive(Debug)]
struct ScriptedReset;

impl std::fmt::Display for ScriptedReset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("scripted reset")
    }
}

impl std::error::Error for ScriptedReset {}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed()
}

async fn answer(
    mut request: Request<Incoming>,
    behaviour: &Behaviour,
    name: &str,
    shared: &Shared,
) -> Option<Response<Body>> {
    let on_upgrade = hyper::upgrade::on(&mut request);
    let (parts, body) = request.into_parts();
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
        body: body.clone(),
    };
    let seen = {
        let mut log = shared
            .received
            .lock()
            .expect("no panic while holding the request log");
        log.push(received);
        log.len()
    };
    let ok = || {
        Response::builder()
            .status(200)
            .header("x-upstream", name)
            .header("content-type", "text/plain")
    };
    let built = match behaviour {
        Behaviour::Reply(reply) => {
            let mut response = Response::builder()
                .status(reply.status)
                .header("x-upstream", name);
            for (n, v) in &reply.headers {
                response = response.header(n, v);
            }
            response.body(full(reply.body.clone()))
        }
        Behaviour::Echo => ok().body(full(body)),
        Behaviour::HealthSwitch { path, healthy } => {
            if parts.uri.path() == path && !healthy.load(Ordering::SeqCst) {
                Response::builder()
                    .status(503)
                    .header("x-upstream", name)
                    .body(full("unhealthy\n"))
            } else {
                ok().body(full(format!("{name}\n")))
            }
        }
        Behaviour::Delay(delay) => {
            tokio::time::sleep(*delay).await;
            ok().body(full("slow\n"))
        }
        Behaviour::Stream(total) => {
            let total = *total;
            ok().body(chunks(total, Bytes::from(vec![b'x'; 64 * 1024])).boxed())
        }
        Behaviour::SlowBody(stall) => ok().header("content-length", "20").body(
            Stalling {
                first: Some(Bytes::from_static(b"first half")),
                stall: Box::pin(tokio::time::sleep(*stall)),
                rest: Some(Bytes::from_static(b"and more..")),
            }
            .boxed(),
        ),
        Behaviour::GrpcHealth(status) => {
            let grpc = || {
                Response::builder()
                    .status(200)
                    .header("x-upstream", name)
                    .header("content-type", "application/grpc")
            };
            match status {
                // HealthCheckResponse { status }: field 1, varint.
                Some(status) => {
                    let mut trailers = hyper::HeaderMap::new();
                    trailers.insert("grpc-status", hyper::header::HeaderValue::from_static("0"));
                    let frames = vec![
                        Frame::data(Bytes::from(vec![0, 0, 0, 0, 2, 0x08, *status])),
                        Frame::trailers(trailers),
                    ];
                    grpc().body(Frames(Box::new(frames.into_iter())).boxed())
                }
                None => grpc().header("grpc-status", "12").body(full(Bytes::new())),
            }
        }
        Behaviour::Trickle { chunks, every } => {
            ok().header("content-length", chunks.to_string()).body(
                Trickling {
                    left: *chunks,
                    every: *every,
                    next: Box::pin(tokio::time::sleep(*every)),
                }
                .boxed(),
            )
        }
        Behaviour::Trailers => {
            let mut trailers = hyper::HeaderMap::new();
            trailers.insert("x-trailer", hyper::header::HeaderValue::from_static("yes"));
            let frames = vec![
                Frame::data(Bytes::from_static(b"with trailers\n")),
                Frame::trailers(trailers),
            ];
            ok().body(Frames(Box::new(frames.into_iter())).boxed())
        }
        Behaviour::WebsocketEcho => {
            let wants_upgrade = parts
                .headers
                .get("upgrade")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
            if wants_upgrade {
                tokio::spawn(async move {
                    if let Ok(upgraded) = on_upgrade.await {
                        let mut io = TokioIo::new(upgraded);
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n) = io.read(&mut buf).await {
                            if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = io.shutdown().await;
                    }
                });
                Response::builder()
                    .status(101)
                    .header("x-upstream", name)
                    .header("connection", "upgrade")
                    .header("upgrade", "websocket")
                    .body(full(Bytes::new()))
            } else {
                ok().body(full("no upgrade\n"))
            }
        }
        Behaviour::Flaky { failures, failure } if seen <= *failures => match failure {
            Failure::Reply(reply) => {
                let mut response = Response::builder()
                    .status(reply.status)
                    .header("x-upstream", name);
                for (n, v) in &reply.headers {
                    response = response.header(n, v);
                }
                response.body(full(reply.body.clone()))
            }
            Failure::Reset => return None,
            Failure::Delay(delay) => {
                tokio::time::sleep(*delay).await;
                ok().body(full(format!("from {name}\n")))
            }
        },
        Behaviour::Flaky { .. } => ok().body(full(format!("from {name}\n"))),
        Behaviour::CloseBeforeResponse
        | Behaviour::RawReply(_)
        | Behaviour::RawReplyThenClose(..)
        | Behaviour::TcpEcho
        | Behaviour::TcpHalfClose => {
            unreachable!("raw TCP behaviours do not speak HTTP")
        }
    };
    Some(built.unwrap_or_else(|e| panic!("the scenario's reply is not a valid response: {e}")))
}

/// `total` bytes as `chunk`-sized data frames (the last one shorter).
fn chunks(total: u64, chunk: Bytes) -> Frames {
    let size = chunk.len() as u64;
    Frames(Box::new((0..total.div_ceil(size)).map(move |i| {
        let len = size.min(total - i * size) as usize;
        Frame::data(chunk.slice(..len))
    })))
}

/// A body that yields frames from an iterator, each as soon as it is polled (so the sender
/// is paced by the receiver's flow control, never buffering ahead).
struct Frames(Box<dyn Iterator<Item = Frame<Bytes>> + Send + Sync + Unpin>);

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.next().map(Ok))
    }
}

/// A body of `left` one-byte chunks, one every `every`.
struct Trickling {
    left: u32,
    every: Duration,
    next: Pin<Box<tokio::time::Sleep>>,
}

impl hyper::body::Body for Trickling {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        if self.next.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.left -= 1;
        let every = self.every;
        self.next
            .as_mut()
            .reset(tokio::time::Instant::now() + every);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))))
    }
}

/// A body that sends `first`, waits for `stall`, then sends `rest`.
struct Stalling {
    first: Option<Bytes>,
    stall: Pin<Box<tokio::time::Sleep>>,
    rest: Option<Bytes>,
}

impl hyper::body::Body for Stalling {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        if self.stall.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        Poll::Ready(self.rest.take().map(|rest| Ok(Frame::data(rest))))
    }
}

async fn close_before_response(mut stream: tokio::net::TcpStream, shared: &Shared) {
    read_head(&mut stream, shared).await;
    // Dropping the stream closes it without a response.
}

/// Reads a request head and records its first line as a RAW request.
async fn read_head(stream: &mut tokio::net::TcpStream, shared: &Shared) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let first = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    shared
        .received
        .lock()
        .expect("no panic while holding the request log")
        .push(Received {
            method: "RAW".into(),
            path: first,
            version: String::new(),
            headers: Vec::new(),
            body: Bytes::new(),
        });
}

async fn tcp_echo(mut stream: tokio::net::TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = stream.shutdown().await;
}

async fn tcp_half_close(mut stream: tokio::net::TcpStream) {
    let mut total = 0usize;
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
        total += n;
    }
    let _ = stream
        .write_all(format!("got {total} bytes\n").as_bytes())
        .await;
    let _ = stream.shutdown().await;
}
