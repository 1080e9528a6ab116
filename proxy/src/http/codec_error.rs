//! Envoy's replies to HTTP/1 requests its codec cannot parse. hyper answers such a request
//! itself with a bare head (no body, no `server`) and has no switch to stop it, so the
//! connection's I/O holds that head back; when the connection then ends with hyper's parse
//! error, Envoy's local reply is written in its place, counted and logged.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/response_code_details

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// What the service and the I/O of one connection share to tell hyper's own reply from a
/// response: the service counts the responses it returns, and a write that starts no new
/// response while looking exactly like hyper's reply is held.
#[derive(Default)]
pub struct Watch {
    responses: AtomicU64,
    /// Upgraded (a tunnel's bytes are not responses) or HTTP/2: nothing more is held.
    disarmed: AtomicBool,
    orphan: Mutex<Option<Orphan>>,
    /// The request being read, as read: tells some of Envoy's refusals apart where hyper's
    /// errors do not, and shows what hyper dropped from a head it parsed.
    pub head: super::head_copy::HeadCopy,
}

impl Watch {
    /// A watch that copies at most `head_limit` bytes of each request.
    pub fn new(head_limit: usize) -> Self {
        Self {
            responses: AtomicU64::new(0),
            disarmed: AtomicBool::new(false),
            orphan: Mutex::new(None),
            head: super::head_copy::HeadCopy::new(head_limit),
        }
    }

    /// The service returned a response: the next write carries its head.
    pub fn answered(&self) {
        self.responses.fetch_add(1, Ordering::Release);
    }

    /// Nothing written from now on can be hyper's reply to a request head.
    pub fn disarm(&self) {
        self.disarmed.store(true, Ordering::Relaxed);
    }

    /// The connection's I/O with the held head, once hyper shut it down after holding one.
    pub fn take(&self) -> Option<Orphan> {
        self.orphan.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Gives a connection's shared state access to its [`Watch`].
pub trait Watched: Send + Sync + 'static {
    fn watch(&self) -> &Watch;
}

pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// The I/O hyper shut down after writing what looked like its own error reply, and that
/// reply's bytes, unsent.
pub struct Orphan {
    io: Box<dyn Io>,
    held: Vec<u8>,
    /// The request hyper refused, as far as it was read (and copied).
    head: Vec<u8>,
}

impl Orphan {
    /// Envoy's refusal for the parse error hyper ended the connection with, None when it ended
    /// for another reason (then hyper's held bytes were a response's).
    pub fn refusal(&self, error: &(dyn std::error::Error + 'static)) -> Option<Refusal> {
        refusal(error, &self.head)
    }

    /// Writes Envoy's reply to a request hyper could not parse, or, when hyper's error says the
    /// held bytes were not its reply after all, those bytes; then closes like Envoy (what the
    /// peer still sends is read and dropped, so it sees the close, not a reset).
    pub async fn finish(mut self, reply: Option<Vec<u8>>) {
        let bytes = reply.unwrap_or(std::mem::take(&mut self.held));
        let _ = self.io.write_all(&bytes).await;
        let _ = self.io.shutdown().await;
        super::codec::discard_input(&mut self.io).await;
    }
}

/// A connection's I/O as hyper sees it (see the module).
pub struct Guarded<I, W> {
    io: Option<I>,
    watched: Arc<W>,
    /// How many responses' heads have gone out: fewer than the service returned means the
    /// next write starts a response.
    heads: u64,
    held: Option<Held>,
}

struct Held {
    bytes: Vec<u8>,
    written: usize,
    woke: bool,
}

impl<I: Io + 'static, W: Watched> Guarded<I, W> {
    pub fn new(io: I, watched: Arc<W>) -> Self {
        Self {
            io: Some(io),
            watched,
            heads: 0,
            held: None,
        }
    }

    /// Whether `bytes`, about to be written, are hyper's reply to an unparsable request: no
    /// response is due, and they are exactly what hyper writes then. A body that happens to
    /// carry those bytes is held too, and released by whatever hyper does next but close.
    fn holds(&mut self, bytes: &[u8]) -> bool {
        // The bytes first: a response head or body fails this at once.
        if hyper_reply_status(bytes).is_none() {
            return false;
        }
        let watch = self.watched.watch();
        watch.responses.load(Ordering::Acquire) == self.heads
            && !watch.disarmed.load(Ordering::Relaxed)
    }

    /// Writes out held bytes that turned out to be a response's.
    fn release(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(held) = self.held.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let Some(io) = self.io.as_mut() else {
            return Poll::Ready(Err(gone()));
        };
        while held.written < held.bytes.len() {
            match Pin::new(&mut *io).poll_write(cx, &held.bytes[held.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => held.written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.held = None;
        Poll::Ready(Ok(()))
    }

    fn wrote(&mut self, polled: &Poll<io::Result<usize>>) {
        if matches!(polled, Poll::Ready(Ok(n)) if *n > 0) {
            let responses = self.watched.watch().responses.load(Ordering::Acquire);
            if responses != self.heads {
                self.heads = responses;
                self.watched.watch().head.restart();
            }
        }
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection handed back")
}

impl<I: Io + 'static, W: Watched> AsyncRead for Guarded<I, W> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // hyper reads no more after its reply: a read means the held bytes were a response's.
        std::task::ready!(self.release(cx))?;
        let before = buf.filled().len();
        let polled = match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_read(cx, buf),
            None => Poll::Ready(Err(gone())),
        };
        let watch = self.watched.watch();
        if !watch.disarmed.load(Ordering::Relaxed) {
            watch.head.extend(&buf.filled()[before..]);
        }
        polled
    }
}

impl<I: Io + 'static, W: Watched> AsyncWrite for Guarded<I, W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.release(cx))?;
        if self.holds(data) {
            self.held = Some(Held {
                bytes: data.to_vec(),
                written: 0,
                woke: false,
            });
            return Poll::Ready(Ok(data.len()));
        }
        let polled = match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_write(cx, data),
            None => Poll::Ready(Err(gone())),
        };
        self.wrote(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.release(cx))?;
        // hyper's reply is one head and no body: a single non-empty slice.
        let mut filled = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (filled.next(), filled.next()) {
            if self.holds(only) {
                self.held = Some(Held {
                    bytes: only.to_vec(),
                    written: 0,
                    woke: false,
                });
                return Poll::Ready(Ok(only.len()));
            }
        }
        let polled = match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            None => Poll::Ready(Err(gone())),
        };
        self.wrote(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(held) = self.held.as_mut() {
            // hyper shuts down right after flushing its reply, in the same poll. Were these
            // a response's bytes, the next poll (woken once here) reads or writes, which
            // releases them.
            if !held.woke {
                held.woke = true;
                cx.waker().wake_by_ref();
            }
            return Poll::Ready(Ok(()));
        }
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(held) = self.held.take() {
            // The connection answers later, once hyper's error says why it closed.
            if let Some(io) = self.io.take() {
                let orphan = Orphan {
                    io: Box::new(io),
                    held: held.bytes[held.written..].to_vec(),
                    head: self.watched.watch().head.start(usize::MAX),
                };
                *self
                    .watched
                    .watch()
                    .orphan
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(orphan);
            }
            return Poll::Ready(Ok(()));
        }
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

/// The status of hyper's automatic reply to a request it could not parse, when `bytes` are
/// exactly that reply: `HTTP/1.1 <status> <reason>`, `connection: close`,
/// `content-length: 0`, a `date`, and nothing else (hyper 1.x, `Role::on_error`).
pub fn hyper_reply_status(bytes: &[u8]) -> Option<u16> {
    let rest = bytes.strip_prefix(b"HTTP/1.1 4")?;
    let (status, rest) = [
        (400, &b"00 Bad Request"[..]),
        (431, b"31 Request Header Fields Too Large"),
        (414, b"14 URI Too Long"),
    ]
    .into_iter()
    .find_map(|(s, line)| rest.strip_prefix(line).map(|r| (s, r)))?;
    let rest = rest.strip_prefix(b"\r\nconnection: close\r\ncontent-length: 0\r\ndate: ")?;
    // An IMF-fixdate is 29 bytes.
    (rest.len() == 29 + 4 && rest.ends_with(b"GMT\r\n\r\n")).then_some(status)
}

/// Envoy's answer to a request its HTTP/1 codec refused: the status and
/// `%RESPONSE_CODE_DETAILS%`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: http::StatusCode,
    pub details: &'static str,
}

/// Envoy's refusal for hyper's parse `error` of the request `head`.
fn refusal(error: &(dyn std::error::Error + 'static), head: &[u8]) -> Option<Refusal> {
    use http::StatusCode;
    let error = error.downcast_ref::<hyper::Error>()?;
    if !error.is_parse() {
        return None;
    }
    // hyper names the kind of a parse error only in its message (the error path only).
    let message = error.to_string();
    let (status, details) = if other_version(head) {
        // Envoy's codec parses any HTTP/<digit>.<digit> (or none: HTTP/0.9) after a method it
        // knows, then refuses all but 1.0 and 1.1.
        (StatusCode::UPGRADE_REQUIRED, "low_version")
    } else if message.starts_with("invalid transfer-encoding") {
        (
            StatusCode::NOT_IMPLEMENTED,
            "http1.invalid_transfer_encoding",
        )
    } else if message.starts_with("invalid HTTP header") && value_has_control_character(head) {
        (StatusCode::BAD_REQUEST, "http1.invalid_characters")
    } else if error.is_parse_too_large() {
        // Past hyper's buffer (well above `max_request_headers_kb`) or its header count.
        (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "http1.too_many_headers",
        )
    } else {
        (StatusCode::BAD_REQUEST, "http1.codec_error")
    };
    Some(Refusal { status, details })
}

/// Methods Envoy's HTTP/1 parser (llhttp) knows; another token is a parse error to it.
const METHODS: &[&[u8]] = &[
    b"DELETE",
    b"GET",
    b"HEAD",
    b"POST",
    b"PUT",
    b"CONNECT",
    b"OPTIONS",
    b"TRACE",
    b"COPY",
    b"LOCK",
    b"MKCOL",
    b"MOVE",
    b"PROPFIND",
    b"PROPPATCH",
    b"SEARCH",
    b"UNLOCK",
    b"BIND",
    b"REBIND",
    b"UNBIND",
    b"ACL",
    b"REPORT",
    b"MKACTIVITY",
    b"CHECKOUT",
    b"MERGE",
    b"M-SEARCH",
    b"NOTIFY",
    b"SUBSCRIBE",
    b"UNSUBSCRIBE",
    b"PATCH",
    b"PURGE",
    b"MKCALENDAR",
    b"LINK",
    b"UNLINK",
    b"SOURCE",
    b"QUERY",
];

/// Whether the first header line of `head` hyper could not parse has a well-formed name and a
/// control character in its value: Envoy's parser takes such a line and its codec then refuses
/// the value (`http1.invalid_characters`); any other malformed line is the parser's own error.
fn value_has_control_character(head: &[u8]) -> bool {
    let is_token = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    let is_control = |b: &u8| (*b < 0x20 && *b != b'\t') || *b == 0x7f;
    for line in head.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return false;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().all(is_token) {
            return false;
        }
        if value.iter().any(is_control) {
            return true;
        }
    }
    false
}

/// Whether the request line in `start` is one Envoy's parser reads and Envoy then refuses
/// for its version: a known method, a target, and no version or one other than 1.x.
fn other_version(start: &[u8]) -> bool {
    let Some(end) = start.windows(2).position(|w| w == b"\r\n") else {
        return false;
    };
    let mut parts = start[..end].split(|&b| b == b' ');
    let (Some(method), Some(_target)) = (parts.next(), parts.next()) else {
        return false;
    };
    if !METHODS.contains(&method) {
        return false;
    }
    match (parts.next(), parts.next()) {
        (None, _) => true,
        (Some([b'H', b'T', b'T', b'P', b'/', major, b'.', minor]), None) => {
            major.is_ascii_digit() && minor.is_ascii_digit() && *major != b'1'
        }
        _ => false,
    }
}

/// Envoy's local reply for `refusal`, as its HTTP/1 codec writes it.
pub fn reply_bytes(refusal: Refusal, server: &[u8]) -> Vec<u8> {
    let reason = refusal.status.canonical_reason().unwrap_or_default();
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\ncontent-length: {}\r\ncontent-type: text/plain\r\ndate: {date}\r\nserver: ",
        refusal.status.as_u16(),
        reason.len()
    )
    .into_bytes();
    out.extend_from_slice(server);
    out.extend_from_slice(b"\r\nconnection: close\r\n\r\n");
    out.extend_from_slice(reason.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use tokio::io::AsyncReadExt;

    #[test]
    fn only_hyper_s_exact_reply_is_recognised() {
        let date = "Sun, 22 Nov 2026 19:41:02 GMT";
        let reply = |status: &str| {
            format!("HTTP/1.1 {status}\r\nconnection: close\r\ncontent-length: 0\r\ndate: {date}\r\n\r\n")
        };
        assert_eq!(
            hyper_reply_status(reply("400 Bad Request").as_bytes()),
            Some(400)
        );
        assert_eq!(
            hyper_reply_status(reply("431 Request Header Fields Too Large").as_bytes()),
            Some(431)
        );
        assert_eq!(hyper_reply_status(reply("404 Not Found").as_bytes()), None);
        let with_server = reply("400 Bad Request").replace("date", "server: x\r\ndate");
        assert_eq!(hyper_reply_status(with_server.as_bytes()), None);
        let with_body = reply("400 Bad Request") + "x";
        assert_eq!(hyper_reply_status(with_body.as_bytes()), None);
    }

    #[derive(Default)]
    struct Shared(Watch);
    impl Watched for Shared {
        fn watch(&self) -> &Watch {
            &self.0
        }
    }

    /// A body of two frames, the second sent a moment after the first (so hyper writes it
    /// on its own).
    struct TwoFrames(
        Option<bytes::Bytes>,
        Option<bytes::Bytes>,
        Pin<Box<tokio::time::Sleep>>,
    );

    impl hyper::body::Body for TwoFrames {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
            if let Some(first) = self.0.take() {
                return Poll::Ready(Some(Ok(hyper::body::Frame::data(first))));
            }
            std::task::ready!(self.2.as_mut().poll(cx));
            Poll::Ready(self.1.take().map(|b| Ok(hyper::body::Frame::data(b))))
        }
    }

    /// Serves `sent` with hyper behind the guard, answering every request with `status` and
    /// `body` (sent as "x" and then `body`), and returns what the client read and Envoy's
    /// refusal for the error hyper ended with.
    async fn serve(
        sent: &'static [u8],
        status: u16,
        body: &'static str,
    ) -> (Vec<u8>, Option<Refusal>) {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let shared = Arc::new(Shared::default());
        let service_shared = shared.clone();
        let service = hyper::service::service_fn(move |_req| {
            service_shared.0.answered();
            let frames = TwoFrames(
                Some(bytes::Bytes::from_static(b"x")),
                Some(bytes::Bytes::from_static(body.as_bytes())),
                Box::pin(tokio::time::sleep(std::time::Duration::from_millis(20))),
            );
            let mut response = hyper::Response::new(frames);
            *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
            response
                .headers_mut()
                .insert(http::header::CONTENT_LENGTH, (body.len() + 1).into());
            async { Ok::<_, std::convert::Infallible>(response) }
        });
        let guarded = Guarded::new(server, shared.clone());
        let task = tokio::spawn(async move {
            let result = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(guarded), service)
                .await;
            let orphan = shared.0.take()?;
            let refusal = result.err().and_then(|e| orphan.refusal(&e));
            orphan
                .finish(refusal.map(|r| reply_bytes(r, b"test")))
                .await;
            refusal
        });
        client.write_all(sent).await.unwrap_or_default();
        let mut seen = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(500),
            client.read_to_end(&mut seen),
        )
        .await;
        drop(client);
        (seen, task.await.ok().flatten())
    }

    #[tokio::test]
    async fn an_unparsable_request_gets_envoy_s_reply() {
        let (seen, refusal) = serve(b"G@T / HTTP/1.1\r\n\r\n", 200, "ok").await;
        let text = String::from_utf8_lossy(&seen);
        assert!(
            text.starts_with("HTTP/1.1 400 Bad Request\r\ncontent-length: 11\r\n"),
            "{text}"
        );
        assert!(
            text.ends_with("server: test\r\nconnection: close\r\n\r\nBad Request"),
            "{text}"
        );
        assert_eq!(refusal.map(|r| r.details), Some("http1.codec_error"));
        let (seen, _) = serve(b"GET / HTTP/9.9\r\n\r\n", 200, "ok").await;
        assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 426 Upgrade Required"));
        let (seen, _) = serve(b"GET /\r\nHost: x\r\n\r\n", 200, "ok").await;
        assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 426 Upgrade Required"));
        // A version hyper refuses after a method Envoy does not know: Envoy's parser stops
        // at the method.
        let (seen, _) = serve(b"this is not http\r\n\r\n", 200, "ok").await;
        assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 400 Bad Request"));
    }

    #[tokio::test]
    async fn a_body_that_looks_like_hyper_s_reply_is_sent_unchanged() {
        // The response's body is exactly hyper's reply: it is held, then released when hyper
        // reads the next request.
        const BODY: &str = "HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Sun, 22 Nov 2026 19:41:02 GMT\r\n\r\n";
        let (seen, _) = serve(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", 200, BODY).await;
        let text = String::from_utf8_lossy(&seen);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.ends_with(BODY), "{text}");
        // So is it when the response is the connection's last (hyper closes after it).
        let (seen, _) = serve(
            b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            200,
            BODY,
        )
        .await;
        let text = String::from_utf8_lossy(&seen);
        assert!(text.ends_with(BODY), "{text}");
    }
}
