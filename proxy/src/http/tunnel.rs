//! An upgraded connection (websocket): after the upstream's `101 Switching Protocols`, the two
//! upgraded connections are joined and bytes copied both ways until either side closes — or
//! until the stream's idle timeout or duration ends it, as Envoy's timers end an upgraded
//! stream like any other.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/http/upgrades

use super::access_log::{ClosedBy, TunnelEnd, TunnelLog};
use super::router::Outcome;
use super::stream_timeouts::{Expiry, StreamProgress};
use crate::stats::Counter;
use http::StatusCode;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::oneshot;

/// What the tunnel needs to end on the stream's timers: its progress and the counters of
/// the two timers that apply once the response started.
pub struct TunnelTimers {
    pub progress: Arc<StreamProgress>,
    pub idle: Arc<Counter>,
    pub duration: Arc<Counter>,
}

/// Spawns the tunnel when `outcome` is the upstream's `101` for an upgrade. The stream's
/// access log waits for the tunnel to close (see [`TunnelLog`]).
pub fn splice_upgrade(
    outcome: &mut Outcome,
    downstream: hyper::upgrade::OnUpgrade,
    timers: Option<TunnelTimers>,
) {
    if outcome.response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    let Some(upstream) = outcome
        .response
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
    else {
        return;
    };
    let (log, logged) = oneshot::channel();
    outcome
        .response
        .extensions_mut()
        .insert(TunnelLog::new(log));
    tokio::spawn(async move {
        let end = tunnel(downstream, upstream, timers).await;
        // The response's body handed its log over when it ended (the 101 has none).
        if let Ok(pending) = logged.await {
            pending.log_tunnel(end);
        }
    });
}

/// Copies both ways until either side closes or a timer ends the stream.
async fn tunnel(
    downstream: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    timers: Option<TunnelTimers>,
) -> TunnelEnd {
    let (Ok(down), Ok(up)) = tokio::join!(downstream, upstream) else {
        tracing::debug!(target: "http", "upgrade failed on one side");
        return TunnelEnd::default();
    };
    let progress = timers.as_ref().map(|t| t.progress.clone());
    let first_closed = Arc::new(AtomicU8::new(OPEN));
    let (mut from_client, mut to_client) = tokio::io::split(Stamped::new(
        down,
        progress.clone(),
        DOWNSTREAM,
        &first_closed,
    ));
    let (mut from_upstream, mut to_upstream) =
        tokio::io::split(Stamped::new(up, progress, UPSTREAM, &first_closed));
    // The tunnel ends when either side closes, as Envoy's does (it does not wait for the
    // other side's half of the connection): what that side sent is passed on and the other
    // side's write half shut.
    let copy = async {
        tokio::select! {
            copied = copy_then_shut(&mut from_client, &mut to_upstream) => copied,
            copied = copy_then_shut(&mut from_upstream, &mut to_client) => copied,
        }
    };
    match timers {
        None => {
            if let Err(e) = copy.await {
                tracing::debug!(target: "http", "upgraded connection ended: {e}");
            }
        }
        Some(timers) => tokio::select! {
            result = copy => if let Err(e) = result {
                tracing::debug!(target: "http", "upgraded connection ended: {e}");
            },
            which = timers.progress.next_expiry(true) => {
                if timers.progress.mark(which) {
                    match which {
                        Expiry::Idle => timers.idle.inc(),
                        Expiry::Duration | Expiry::Request => timers.duration.inc(),
                    }
                }
                tracing::debug!(target: "http", "upgraded connection ended: {}", which.body());
            }
        },
    }
    let down = from_client.unsplit(to_client);
    let up = from_upstream.unsplit(to_upstream);
    // Dropping both connections closes them.
    TunnelEnd {
        received: down.read,
        sent: up.read,
        closed_by: match first_closed.load(Relaxed) {
            DOWNSTREAM => Some(ClosedBy::Downstream),
            UPSTREAM => Some(ClosedBy::Upstream),
            _ => None,
        },
    }
}

/// Copies until `from` ends, then shuts `to`'s write half.
async fn copy_then_shut<R, W>(from: &mut R, to: &mut W) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let copied = tokio::io::copy(from, to).await?;
    to.shutdown().await?;
    Ok(copied)
}

const OPEN: u8 = 0;
const DOWNSTREAM: u8 = 1;
const UPSTREAM: u8 = 2;

/// A connection whose reads stamp the stream's activity (bytes arriving from either side
/// keep the tunnel from idling).
struct Stamped<T> {
    io: hyper_util::rt::TokioIo<T>,
    progress: Option<Arc<StreamProgress>>,
    /// Bytes read from this side (the access log's received or sent bytes).
    read: u64,
    side: u8,
    /// The side whose end (or error) came first, for the access log's flags.
    first_closed: Arc<AtomicU8>,
}

impl<T> Stamped<T> {
    fn new(io: T, progress: Option<Arc<StreamProgress>>, side: u8, first: &Arc<AtomicU8>) -> Self {
        Self {
            io: hyper_util::rt::TokioIo::new(io),
            progress,
            read: 0,
            side,
            first_closed: first.clone(),
        }
    }
}

impl<T> AsyncRead for Stamped<T>
where
    hyper_util::rt::TokioIo<T>: AsyncRead + Unpin,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.read += read as u64;
            if let Some(p) = &self.progress {
                p.touch();
            }
        }
        let closed = match &polled {
            Poll::Ready(Ok(())) => read == 0 && buf.remaining() > 0,
            Poll::Ready(Err(_)) => true,
            Poll::Pending => false,
        };
        if closed {
            let _ = self
                .first_closed
                .compare_exchange(OPEN, self.side, Relaxed, Relaxed);
        }
        polled
    }
}

impl<T> AsyncWrite for Stamped<T>
where
    hyper_util::rt::TokioIo<T>: AsyncWrite + Unpin,
{
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
}
