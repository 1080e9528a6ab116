//! A real gRPC server and client (tonic, HTTP/2) for tests, with the four call shapes and
//! no generated code: messages are protobuf `string`s (`google.protobuf.StringValue`'s wire
//! form without its wrapper), encoded by tonic's prost codec.
//!
//! Service `test.Echo`: `Unary` echoes, `Fail` answers INVALID_ARGUMENT (a trailers-only
//! response), `Collect` (client streaming) answers the count of what it received,
//! `Repeat` (server streaming) answers `n` copies of its request `"<n>:<text>"`, `Chat`
//! (bidirectional) echoes each message. `other.Svc/Ping` answers `pong`.

use http::{Request, Response};
use hyper::body::Incoming;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use tonic::body::Body;
use tonic::codec::Streaming;
use tonic::Status;
use tonic_prost::ProstCodec;

type Codec = ProstCodec<String, String>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type Messages = Pin<Box<dyn tokio_stream::Stream<Item = Result<String, Status>> + Send>>;

struct Unary(fn(String) -> Result<String, Status>);

impl tonic::server::UnaryService<String> for Unary {
    type Response = String;
    type Future = BoxFuture<Result<tonic::Response<String>, Status>>;
    fn call(&mut self, request: tonic::Request<String>) -> Self::Future {
        let answer = (self.0)(request.into_inner());
        Box::pin(async move { answer.map(tonic::Response::new) })
    }
}

struct Collect;

impl tonic::server::ClientStreamingService<String> for Collect {
    type Response = String;
    type Future = BoxFuture<Result<tonic::Response<String>, Status>>;
    fn call(&mut self, request: tonic::Request<Streaming<String>>) -> Self::Future {
        Box::pin(async move {
            let mut stream = request.into_inner();
            let mut n = 0;
            while stream.message().await?.is_some() {
                n += 1;
            }
            Ok(tonic::Response::new(format!("received {n}")))
        })
    }
}

struct Repeat;

impl tonic::server::ServerStreamingService<String> for Repeat {
    type Response = String;
    type ResponseStream = Messages;
    type Future = BoxFuture<Result<tonic::Response<Messages>, Status>>;
    fn call(&mut self, request: tonic::Request<String>) -> Self::Future {
        let text = request.into_inner();
        Box::pin(async move {
            let (n, text) = text.split_once(':').unwrap_or(("1", &text));
            let n: usize = n.parse().map_err(|_| Status::invalid_argument("count"))?;
            let items: Vec<Result<String, Status>> = vec![Ok(text.to_string()); n];
            Ok(tonic::Response::new(
                Box::pin(tokio_stream::iter(items)) as Messages
            ))
        })
    }
}

struct Chat;

impl tonic::server::StreamingService<String> for Chat {
    type Response = String;
    type ResponseStream = Messages;
    type Future = BoxFuture<Result<tonic::Response<Messages>, Status>>;
    fn call(&mut self, request: tonic::Request<Streaming<String>>) -> Self::Future {
        Box::pin(async move {
            Ok(tonic::Response::new(
                Box::pin(request.into_inner()) as Messages
            ))
        })
    }
}

async fn route(request: Request<Incoming>) -> Response<Body> {
    let mut grpc = tonic::server::Grpc::new(Codec::default());
    match request.uri().path() {
        "/test.Echo/Unary" => grpc.unary(Unary(Ok), request).await,
        "/test.Echo/Fail" => {
            grpc.unary(
                Unary(|_| Err(Status::invalid_argument("bad request"))),
                request,
            )
            .await
        }
        "/other.Svc/Ping" => grpc.unary(Unary(|_| Ok("pong".into())), request).await,
        "/test.Echo/Collect" => grpc.client_streaming(Collect, request).await,
        "/test.Echo/Repeat" => grpc.server_streaming(Repeat, request).await,
        "/test.Echo/Chat" => grpc.streaming(Chat, request).await,
        _ => Status::unimplemented("no such method").into_http(),
    }
}

/// A running server; it stops when dropped.
pub struct EchoServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `test.Echo` (HTTP/2 without TLS) on 127.0.0.1:`port` (0 for any) from the current
/// runtime.
pub async fn serve(port: u16) -> std::io::Result<EchoServer> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|r| async move {
                    Ok::<_, std::convert::Infallible>(route(r).await)
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
            });
        }
    });
    Ok(EchoServer { addr, task })
}

/// A client of `target` (`http://host:port`, HTTP/2 prior knowledge).
pub struct EchoClient {
    grpc: tonic::client::Grpc<tonic::transport::Channel>,
}

impl EchoClient {
    pub async fn connect(target: String) -> Result<EchoClient, tonic::transport::Error> {
        let channel = tonic::transport::Endpoint::from_shared(target)?
            .connect()
            .await?;
        Ok(EchoClient {
            grpc: tonic::client::Grpc::new(channel),
        })
    }

    fn path(method: &'static str) -> http::uri::PathAndQuery {
        http::uri::PathAndQuery::from_static(method)
    }

    /// A unary call to `method` (a full path such as `/test.Echo/Unary`).
    pub async fn unary(&mut self, method: &'static str, text: &str) -> Result<String, Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unknown(e.to_string()))?;
        let response = self
            .grpc
            .unary(
                tonic::Request::new(text.to_string()),
                Self::path(method),
                Codec::default(),
            )
            .await?;
        Ok(response.into_inner())
    }

    /// `Collect` with these messages.
    pub async fn collect(&mut self, messages: Vec<String>) -> Result<String, Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unknown(e.to_string()))?;
        let response = self
            .grpc
            .client_streaming(
                tonic::Request::new(tokio_stream::iter(messages)),
                Self::path("/test.Echo/Collect"),
                Codec::default(),
            )
            .await?;
        Ok(response.into_inner())
    }

    /// `Repeat`: `n` copies of `text`, all received.
    pub async fn repeat(&mut self, n: usize, text: &str) -> Result<Vec<String>, Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unknown(e.to_string()))?;
        let response = self
            .grpc
            .server_streaming(
                tonic::Request::new(format!("{n}:{text}")),
                Self::path("/test.Echo/Repeat"),
                Codec::default(),
            )
            .await?;
        collect_stream(response.into_inner()).await
    }

    /// `Chat` with these messages; returns the echoes.
    pub async fn chat(&mut self, messages: Vec<String>) -> Result<Vec<String>, Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unknown(e.to_string()))?;
        let response = self
            .grpc
            .streaming(
                tonic::Request::new(tokio_stream::iter(messages)),
                Self::path("/test.Echo/Chat"),
                Codec::default(),
            )
            .await?;
        collect_stream(response.into_inner()).await
    }
}

/// A `Chat` call held open: messages go out when sent, echoes come back one by one.
pub struct OpenChat {
    outgoing: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    echoes: Streaming<String>,
}

/// The messages an open chat sends, as the request stream.
struct Outgoing(tokio::sync::mpsc::UnboundedReceiver<String>);

impl tokio_stream::Stream for Outgoing {
    type Item = String;
    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<String>> {
        self.0.poll_recv(cx)
    }
}

impl OpenChat {
    /// Sends `text` and waits for its echo.
    pub async fn say(&mut self, text: &str) -> Result<String, Status> {
        self.outgoing
            .as_ref()
            .ok_or_else(|| Status::failed_precondition("the chat was closed"))?
            .send(text.to_string())
            .map_err(|_| Status::unavailable("the call ended"))?;
        self.echoes
            .message()
            .await?
            .ok_or_else(|| Status::unavailable("the call ended without an echo"))
    }

    /// Ends the request stream and reads the call to its end.
    pub async fn close(mut self) -> Result<Vec<String>, Status> {
        self.outgoing = None;
        collect_stream(self.echoes).await
    }
}

/// A `Collect` call held open: the server answers only once the request stream ends.
pub struct OpenCollect {
    outgoing: tokio::sync::mpsc::UnboundedSender<String>,
    answer: tokio::task::JoinHandle<Result<String, Status>>,
}

impl OpenCollect {
    /// Sends `text` (no answer comes until the end).
    pub fn send(&self, text: &str) {
        self.outgoing
            .send(text.to_string())
            .expect("the call is still open");
    }

    /// Ends the request stream and waits for the answer.
    pub async fn finish(self) -> Result<String, Status> {
        drop(self.outgoing);
        self.answer
            .await
            .map_err(|e| Status::unknown(e.to_string()))?
    }
}

impl EchoClient {
    /// Opens a `Collect` call (a task of the current runtime) and keeps it open.
    pub fn open_collect(&self) -> OpenCollect {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        // The call runs on its own clone, which must be made ready itself.
        let mut grpc = self.grpc.clone();
        let answer = tokio::spawn(async move {
            grpc.ready()
                .await
                .map_err(|e| Status::unknown(e.to_string()))?;
            grpc.client_streaming(
                tonic::Request::new(Outgoing(rx)),
                Self::path("/test.Echo/Collect"),
                Codec::default(),
            )
            .await
            .map(tonic::Response::into_inner)
        });
        OpenCollect {
            outgoing: tx,
            answer,
        }
    }

    /// Opens a `Chat` call and keeps it open.
    pub async fn open_chat(&mut self) -> Result<OpenChat, Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unknown(e.to_string()))?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let response = self
            .grpc
            .streaming(
                tonic::Request::new(Outgoing(rx)),
                Self::path("/test.Echo/Chat"),
                Codec::default(),
            )
            .await?;
        Ok(OpenChat {
            outgoing: Some(tx),
            echoes: response.into_inner(),
        })
    }
}

async fn collect_stream(mut stream: Streaming<String>) -> Result<Vec<String>, Status> {
    let mut out = Vec::new();
    while let Some(m) = stream.message().await? {
        out.push(m);
    }
    Ok(out)
}
