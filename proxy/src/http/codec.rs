//! Which codec serves a connection. AUTO serves both protocols, sniffing the HTTP/2 preface
//! (prior knowledge); `codec_type` HTTP1 and HTTP2 serve only their protocol: a connection
//! that opens with the other one is closed without an answer, as Envoy's single-protocol
//! codecs do. The first bytes are read here and handed on with the connection to hyper's
//! codec for its protocol (hyper-util's automatic builder would read them again, and does not
//! pass on every HTTP/1 parser setting).
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto#enum-extensions-filters-network-http-connection-manager-v3-httpconnectionmanager-codectype

use crate::config::hcm::Codec;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// How many headers hyper's HTTP/1 parser takes when not told (Envoy's default
/// `max_headers_count` too). Within it, hyper keeps its header arrays inline.
pub const HYPER_MAX_HEADERS: usize = 100;

/// What every HTTP/2 connection (prior knowledge) starts with.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Why a connection was not admitted.
pub enum NotAdmitted<I> {
    /// It speaks the other protocol: [`refuse`] it.
    OtherProtocol(I),
    /// The peer left (or failed) before saying which.
    Gone,
}

/// A connection its codec takes: its I/O, first bytes included, and its protocol.
pub struct Admitted<I> {
    pub io: Prefixed<I>,
    pub http2: bool,
}

/// Reads as much of the connection's start as tells HTTP/2 from HTTP/1.x, and admits it when
/// `codec` serves that protocol.
pub async fn admit<I: AsyncRead + Unpin>(
    mut io: I,
    codec: Codec,
) -> Result<Admitted<I>, NotAdmitted<I>> {
    let mut start = Vec::with_capacity(PREFACE.len());
    while start.len() < PREFACE.len() && PREFACE.starts_with(&start) {
        let mut chunk = [0u8; 24];
        let room = PREFACE.len() - start.len();
        match io.read(&mut chunk[..room]).await {
            Ok(0) | Err(_) => return Err(NotAdmitted::Gone),
            Ok(n) => start.extend_from_slice(&chunk[..n]),
        }
    }
    let http2 = start == PREFACE;
    match (codec, http2) {
        (Codec::Auto, _) | (Codec::Http1, false) | (Codec::Http2, true) => Ok(Admitted {
            io: Prefixed::new(io, start),
            http2,
        }),
        _ => Err(NotAdmitted::OtherProtocol(io)),
    }
}

pin_project_lite::pin_project! {
    /// A connection served by hyper's codec for its protocol.
    #[project = ServedProjection]
    pub enum Served<H1, H2> {
        Http1 { #[pin] connection: H1 },
        Http2 { #[pin] connection: H2 },
    }
}

impl<I, S, E, B>
    Served<
        hyper::server::conn::http1::UpgradeableConnection<I, S>,
        hyper::server::conn::http2::Connection<I, S, E>,
    >
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    /// Ends the connection once its requests in flight are answered: `Connection: close` on
    /// HTTP/1.1, GOAWAY on HTTP/2.
    pub fn graceful_shutdown(self: Pin<&mut Self>) {
        match self.project() {
            ServedProjection::Http1 { connection } => connection.graceful_shutdown(),
            ServedProjection::Http2 { connection } => connection.graceful_shutdown(),
        }
    }
}

impl<I, S, E, B> std::future::Future
    for Served<
        hyper::server::conn::http1::UpgradeableConnection<I, S>,
        hyper::server::conn::http2::Connection<I, S, E>,
    >
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    type Output = hyper::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ServedProjection::Http1 { connection } => connection.poll(cx),
            ServedProjection::Http2 { connection } => connection.poll(cx),
        }
    }
}

/// Closes a connection in the wrong protocol the way Envoy does: what the peer sent is read
/// (until it pauses) and dropped before the close, so the peer sees an end of stream, not a
/// reset. The HTTP/1 codec first answers an HTTP/2 preface, which it parses as a request
/// with an unknown version, with `400 Bad Request`; the HTTP/2 codec answers nothing.
pub async fn refuse<I: AsyncRead + AsyncWrite + Unpin>(mut io: I, codec: Codec, server: &[u8]) {
    use tokio::io::AsyncWriteExt;
    discard_input(&mut io).await;
    if codec == Codec::Http1 {
        let date = httpdate::fmt_http_date(std::time::SystemTime::now());
        let mut answer = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 11\r\ncontent-type: text/plain\r\ndate: {date}\r\nserver: "
        )
        .into_bytes();
        answer.extend_from_slice(server);
        answer.extend_from_slice(b"\r\nconnection: close\r\n\r\nBad Request");
        let _ = io.write_all(&answer).await;
    }
    let _ = io.shutdown().await;
}

/// Reads and drops what the peer sends until it pauses or closes, so a close that follows is
/// an end of stream to the peer, not a reset; bounded like Envoy's default
/// `delayed_close_timeout`.
pub async fn discard_input<I: AsyncRead + Unpin>(io: &mut I) {
    use std::time::Duration;
    let drain = async {
        let mut sink = [0u8; 4096];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(50), io.read(&mut sink)).await
        {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

/// A connection whose first bytes were already read: they are read again first.
pub struct Prefixed<I> {
    io: I,
    start: Vec<u8>,
    taken: usize,
}

impl<I> Prefixed<I> {
    fn new(io: I, start: Vec<u8>) -> Self {
        Self {
            io,
            start,
            taken: 0,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.taken < this.start.len() {
            let rest = &this.start[this.taken..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.taken += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn admitted(codec: Codec, sent: &'static [u8]) -> Option<Vec<u8>> {
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(sent).await.ok()?;
        drop(client);
        let mut io = admit(server, codec).await.ok()?.io;
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.ok()?;
        Some(all)
    }

    #[tokio::test]
    async fn each_codec_takes_only_its_protocol_and_loses_no_byte() {
        let h1: &[u8] = b"GET / HTTP/1.1\r\n\r\n";
        let h2: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00";
        assert_eq!(admitted(Codec::Http1, h1).await.as_deref(), Some(h1));
        assert_eq!(admitted(Codec::Http1, h2).await, None);
        assert_eq!(admitted(Codec::Http2, h2).await.as_deref(), Some(h2));
        assert_eq!(admitted(Codec::Http2, h1).await, None);
        assert_eq!(admitted(Codec::Auto, h2).await.as_deref(), Some(h2));
        // A short HTTP/1.1 request is recognised without waiting for 24 bytes.
        assert_eq!(
            admitted(Codec::Http1, b"GET").await.as_deref(),
            Some(&b"GET"[..])
        );
    }
}
