//! An upgraded connection (websocket): after the upstream's `101 Switching Protocols`, the two
//! upgraded connections are joined and bytes copied both ways until either side closes — or
//! until the stream's idle timeout or duration ends it, as Envoy's timers end an upgraded
//! stream like any other.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/http/upgrades

use super::router::Outcome;
use super::stream_timeouts::{Expiry, StreamProgress};
use crate::stats::Counter;
use http::StatusCode;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the tunnel needs to end on the stream's timers: its progress and the counters of
/// the two timers that apply once the response started.
pub struct TunnelTimers {
    pub progress: Arc<StreamProgress>,
    pub idle: Arc<Counter>,
    pub duration: Arc<Counter>,
}

/// Spawns the tunnel when `outcome` is the upstream's `101` for an upgrade.
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
    tokio::spawn(async move {
        let (Ok(down), Ok(up)) = tokio::join!(downstream, upstream) else {
            tracing::debug!(target: "http", "upgrade failed on one side");
            return;
        };
        let progress = timers.as_ref().map(|t| t.progress.clone());
        let mut down = Stamped {
            io: hyper_util::rt::TokioIo::new(down),
            progress: progress.clone(),
        };
        let mut up = Stamped {
            io: hyper_util::rt::TokioIo::new(up),
            progress,
        };
        let copy = tokio::io::copy_bidirectional(&mut down, &mut up);
        let Some(timers) = timers else {
            if let Err(e) = copy.await {
                tracing::debug!(target: "http", "upgraded connection ended: {e}");
            }
            return;
        };
        tokio::select! {
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
        }
        // Dropping both connections closes them.
    });
}

/// A connection whose reads stamp the stream's activity (bytes arriving from either side
/// keep the tunnel from idling).
struct Stamped<T> {
    io: T,
    progress: Option<Arc<StreamProgress>>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Stamped<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            if let Some(p) = &self.progress {
                p.touch();
            }
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Stamped<T> {
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
