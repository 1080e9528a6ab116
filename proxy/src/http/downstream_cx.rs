//! How each downstream HTTP connection lives and ends, in the connection manager's stats: who
//! closed it (`downstream_cx_destroy_local`/`_remote`), whether a request was on it then
//! (`..._active_rq`, and `downstream_rq_rx_reset` for each stream the client left), how long
//! it lasted, the bytes it carried, its codec and TLS. A connection's [`ConnectionLife`] is
//! written by whoever sees an event (the socket for the peer's close, the service for streams
//! starting and ending, the connection task for its own decision to close) and recorded once,
//! when the last holder (the socket, which an upgraded tunnel keeps) lets it go.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/stats

use super::connection::HttpContext;
use crate::stats::Gauge;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The codec is HTTP/1.x (`downstream_cx_http1_active` until the end).
const HTTP1: u16 = 1;
const HTTP2: u16 = 2;
/// Over TLS (`downstream_cx_ssl_active`).
const TLS: u16 = 4;
/// The peer closed (end of stream or error) before Outrigger decided to: Envoy's
/// `RemoteClose`.
const REMOTE: u16 = 8;
/// Outrigger decided to close first (a timer, a drain, `connection: close`, a refusal).
const LOCAL: u16 = 16;
/// Streams were active when the side that closed did.
const ACTIVE_AT_CLOSE: u16 = 32;
/// A request had begun arriving (bytes of its head) without reaching the service: Envoy's
/// codec has a stream for it from its first byte.
const PARTIAL: u16 = 64;
/// An upgraded stream (websocket) carries the connection to its end.
const UPGRADED: u16 = 128;
/// A response said `connection: close`: once no stream is left, the close is Outrigger's
/// (Envoy closes the connection when that response is out), whenever the peer's FIN lands.
const CLOSES_AFTER: u16 = 256;

/// One downstream connection's lifecycle as its events happen.
pub struct ConnectionLife {
    ctx: Arc<HttpContext>,
    flags: AtomicU16,
    /// Streams whose response has not ended (a request in the service, or its body).
    in_flight: AtomicUsize,
    born: Instant,
    /// When the last stream ended (or the connection began), for the idle timeout.
    since: std::sync::Mutex<tokio::time::Instant>,
}

impl ConnectionLife {
    /// Counts a new connection: `downstream_cx_total`, `_active`, and `_ssl_*` over TLS.
    pub fn new(ctx: Arc<HttpContext>, tls: bool) -> Self {
        ctx.stats.downstream_cx_total.inc();
        ctx.stats.downstream_cx_active.inc();
        if tls {
            ctx.stats.cx.ssl_total.inc();
            ctx.stats.cx.ssl_active.inc();
        }
        ConnectionLife {
            ctx,
            flags: AtomicU16::new(if tls { TLS } else { 0 }),
            in_flight: AtomicUsize::new(0),
            born: Instant::now(),
            since: std::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    fn has(&self, flag: u16) -> bool {
        self.flags.load(Relaxed) & flag != 0
    }

    /// The codec is chosen (Envoy creates it on the connection's first bytes).
    pub fn codec(&self, http2: bool) {
        let (flag, total, active) = match http2 {
            true => (
                HTTP2,
                &self.ctx.stats.downstream_cx_http2_total,
                &self.ctx.stats.cx.http2_active,
            ),
            false => (
                HTTP1,
                &self.ctx.stats.downstream_cx_http1_total,
                &self.ctx.stats.cx.http1_active,
            ),
        };
        if self.flags.fetch_or(flag, Relaxed) & (HTTP1 | HTTP2) == 0 {
            total.inc();
            active.inc();
            self.ctx.stats.codec.of(http2);
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Relaxed)
    }

    pub(super) fn stream_started(&self) {
        self.in_flight.fetch_add(1, Relaxed);
    }

    /// Returns how many streams are still in flight.
    pub(super) fn stream_ended(&self) -> usize {
        self.in_flight.fetch_sub(1, Relaxed).saturating_sub(1)
    }

    /// Whoever closes first decides the side; the streams on the connection then are the ones
    /// it closes under.
    fn closed_by(&self, side: u16) {
        let active = self.in_flight() > 0 || self.has(UPGRADED);
        let flags = side | if active { ACTIVE_AT_CLOSE } else { 0 };
        let _ = self.flags.fetch_update(Relaxed, Relaxed, |f| {
            (f & (REMOTE | LOCAL) == 0).then_some(f | flags)
        });
    }

    /// The socket read the peer's end of stream, or failed.
    pub fn peer_closed(&self) {
        if self.has(CLOSES_AFTER) && self.in_flight() == 0 {
            return self.closed_by(LOCAL);
        }
        self.closed_by(REMOTE);
    }

    /// A response announced the connection's end: Outrigger closes it after that response.
    pub fn closes_after_response(&self) {
        self.flags.fetch_or(CLOSES_AFTER, Relaxed);
    }

    /// Outrigger decided to close the connection.
    pub fn closing(&self) {
        self.closed_by(LOCAL);
    }

    pub fn peer_has_closed(&self) -> bool {
        self.has(REMOTE)
    }

    pub fn closing_locally(&self) -> bool {
        self.has(LOCAL)
    }

    /// The connection ended while a request's head was arriving: Envoy counts that request
    /// (`downstream_rq_total`) and its stream as active when the connection closed.
    pub fn partial_request(&self) {
        let stats = &self.ctx.stats;
        stats.downstream_rq_total.inc();
        stats.downstream_rq_http1_total.inc();
        self.flags.fetch_or(PARTIAL, Relaxed);
    }

    /// A `101` went out: the upgraded stream lasts as long as the connection.
    pub fn upgraded(&self) {
        self.flags.fetch_or(UPGRADED, Relaxed);
    }

    fn idle_from_now(&self) {
        *self.since.lock().unwrap_or_else(|e| e.into_inner()) = tokio::time::Instant::now();
    }

    /// Resolves once the connection has had no stream in flight for `timeout`.
    pub async fn idle_for(&self, timeout: Option<std::time::Duration>) {
        let Some(timeout) = timeout else {
            return std::future::pending().await;
        };
        loop {
            let since = *self.since.lock().unwrap_or_else(|e| e.into_inner());
            let deadline = since + timeout;
            let idle = self.in_flight() == 0;
            if idle && tokio::time::Instant::now() >= deadline {
                return;
            }
            let next = match idle {
                true => deadline,
                false => tokio::time::Instant::now() + timeout,
            };
            tokio::time::sleep_until(next).await;
        }
    }
}

impl Drop for ConnectionLife {
    fn drop(&mut self) {
        let flags = *self.flags.get_mut();
        let stats = &self.ctx.stats;
        let cx = &stats.cx;
        stats.downstream_cx_active.dec();
        if flags & TLS != 0 {
            cx.ssl_active.dec();
        }
        if flags & HTTP1 != 0 {
            cx.http1_active.dec();
        } else if flags & HTTP2 != 0 {
            cx.http2_active.dec();
        }
        if flags & UPGRADED != 0 {
            cx.upgrades_active.dec();
        }
        let remote = flags & REMOTE != 0;
        let active = flags & (ACTIVE_AT_CLOSE | PARTIAL) != 0;
        cx.destroy.inc();
        let (side, side_active) = match remote {
            true => (&cx.destroy_remote, &cx.destroy_remote_active_rq),
            false => (&cx.destroy_local, &cx.destroy_local_active_rq),
        };
        side.inc();
        if active {
            cx.destroy_active_rq.inc();
            side_active.inc();
            // Envoy resets the streams a closed connection leaves; the peer's close is a
            // reset received.
            if remote {
                let streams = self.in_flight.load(Relaxed).max(1);
                cx.rq_rx_reset.add(streams as u64);
            }
        }
        cx.length_ms.record(self.born.elapsed().as_millis() as f64);
    }
}

/// The connection's socket as the codec sees it: counts the bytes either way
/// (`downstream_cx_rx_bytes_total`/`tx_bytes_total`, above TLS as Envoy counts them) and
/// tells the connection's life when the peer closes. Keeps the life alive: an upgraded
/// tunnel owns the socket after the codec lets it go.
pub struct Counted<I, L: Lives> {
    io: I,
    life: Arc<L>,
    /// This connection's share of the buffered gauges: the last read's bytes, and what the
    /// socket did not take of the last write (see `upstream/accounting.rs`).
    last_rx: u64,
    last_tx: u64,
}

/// What holds a connection's [`ConnectionLife`].
pub trait Lives: Send + Sync + 'static {
    fn life(&self) -> &ConnectionLife;
}

impl<I, L: Lives> Counted<I, L> {
    pub fn new(io: I, life: Arc<L>) -> Self {
        Counted {
            io,
            life,
            last_rx: 0,
            last_tx: 0,
        }
    }

    fn adjust(gauge: &Gauge, last: &mut u64, now: u64) {
        gauge.adjust(*last, now);
        *last = now;
    }
}

impl<I, L: Lives> Drop for Counted<I, L> {
    fn drop(&mut self) {
        let cx = &self.life.life().ctx.stats.cx;
        cx.rx_bytes_buffered.sub(self.last_rx);
        cx.tx_bytes_buffered.sub(self.last_tx);
    }
}

impl<I: AsyncRead + Unpin, L: Lives> AsyncRead for Counted<I, L> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let room = buf.remaining() > 0;
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        let this = &mut *self;
        let life = this.life.life();
        match &polled {
            Poll::Ready(Ok(())) => {
                let n = (buf.filled().len() - before) as u64;
                if n == 0 && room {
                    life.peer_closed();
                } else {
                    let cx = &life.ctx.stats.cx;
                    cx.rx_bytes_total.add(n);
                    Self::adjust(&cx.rx_bytes_buffered, &mut this.last_rx, n);
                }
            }
            Poll::Ready(Err(_)) => life.peer_closed(),
            Poll::Pending => {}
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin, L: Lives> AsyncWrite for Counted<I, L> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, data);
        self.wrote(&polled, data.len());
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let offered = bufs.iter().map(|b| b.len()).sum();
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(&polled, offered);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<I, L: Lives> Counted<I, L> {
    fn wrote(&mut self, polled: &Poll<io::Result<usize>>, offered: usize) {
        let life = self.life.life();
        let cx = &life.ctx.stats.cx;
        let waiting = match polled {
            Poll::Ready(Ok(n)) => {
                cx.tx_bytes_total.add(*n as u64);
                offered.saturating_sub(*n)
            }
            // A write the peer no longer takes: it has gone.
            Poll::Ready(Err(_)) => {
                life.peer_closed();
                0
            }
            Poll::Pending => offered,
        };
        Self::adjust(&cx.tx_bytes_buffered, &mut self.last_tx, waiting as u64);
    }
}

/// One stream from its request's arrival to the end of its response: in flight on the
/// connection until then. Dropped before its end, the stream was given up: on HTTP/2 by the
/// client's `RST_STREAM` while the connection stays (`downstream_rq_rx_reset`); otherwise
/// with its connection, whose end counts it.
pub struct StreamEnd<L: Lives> {
    owner: Arc<L>,
    done: bool,
    http2: bool,
    /// An upgrade request: `downstream_cx_upgrades_active` until the stream ends.
    upgrade: bool,
}

impl<L: Lives> StreamEnd<L> {
    pub fn start(owner: Arc<L>, http2: bool) -> Self {
        owner.life().stream_started();
        StreamEnd {
            owner,
            done: false,
            http2,
            upgrade: false,
        }
    }

    /// The request is an upgrade the connection manager allows (Envoy counts it when it
    /// builds the upgrade's filter chain, before the upstream answers).
    pub fn upgrade(&mut self) {
        let cx = &self.owner.life().ctx.stats.cx;
        cx.upgrades_total.inc();
        cx.upgrades_active.inc();
        self.upgrade = true;
    }

    /// A `101` went out: the upgraded stream ends with the connection.
    pub fn upgraded(&mut self) {
        if self.upgrade {
            self.upgrade = false;
            self.owner.life().upgraded();
        }
    }

    pub fn finish(&mut self) {
        if !self.done {
            self.done = true;
            self.end();
        }
    }

    fn end(&mut self) {
        let life = self.owner.life();
        if self.upgrade {
            life.ctx.stats.cx.upgrades_active.dec();
        }
        if life.stream_ended() == 0 {
            life.idle_from_now();
        }
    }
}

impl<L: Lives> Drop for StreamEnd<L> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        let life = self.owner.life();
        if self.http2 && !life.peer_has_closed() && !life.closing_locally() {
            life.ctx.stats.cx.rq_rx_reset.inc();
        }
        self.end();
    }
}

pin_project_lite::pin_project! {
    /// A response body that ends its stream when it ends.
    pub struct Tracked<B, L: Lives> {
        #[pin]
        body: B,
        stream: StreamEnd<L>,
    }
}

impl<B: hyper::body::Body, L: Lives> Tracked<B, L> {
    pub fn new(body: B, mut stream: StreamEnd<L>) -> Self {
        // hyper may never poll a body that is already at its end.
        if body.is_end_stream() {
            stream.finish();
        }
        Tracked { body, stream }
    }
}

impl<B: hyper::body::Body, L: Lives> hyper::body::Body for Tracked<B, L> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let mut body = this.body;
        let polled = body.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.stream.finish(),
            Poll::Ready(Some(Ok(_))) if body.is_end_stream() => this.stream.finish(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}
