//! The timers of one upstream attempt: the cluster's `max_stream_duration` (from the attempt's
//! start to the response's end: 504 UMSDR before the head, the response cut after), and a
//! retry policy's `per_try_idle_timeout`: each attempt ends when its upstream stays silent
//! this long. The timer starts once the request has gone upstream whole (its body read to the
//! end, which also means a connection was obtained) and runs until the response's end: before
//! the response head the attempt fails like a per-try timeout (retried under the same
//! conditions, else 504 UT `upstream_per_try_idle_timeout`); after it, the response body ends
//! with an error, so the client's stream is reset, as Envoy 1.40 does.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#envoy-v3-api-field-config-route-v3-retrypolicy-per-try-idle-timeout
//!
//! Only requests whose route sets the timeout pay for any of this.

use super::router::{BoxError, ResponseBody};
use crate::stats::Counter;
use crate::upstream::{UpstreamBody, UpstreamError};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::Notify;

/// A request body that says when it has been read to its end. An HTTP/1.1 codec stops
/// reading a body of known length once it has its bytes (it never sees the end), and drops
/// it when done, so the end is also the declared length reached, or the drop.
pub struct SentBody {
    inner: UpstreamBody,
    sent: Option<Arc<Notify>>,
    /// Bytes still to come when the length is known.
    remaining: Option<u64>,
}

impl Drop for SentBody {
    fn drop(&mut self) {
        self.signal();
    }
}

impl SentBody {
    /// Wraps `body`; the returned signal fires once it has been read whole. A body that is
    /// empty from the start is never read (the codec sends the head with its end), so it gets
    /// no signal: its timer starts with the attempt.
    pub fn wrap(body: UpstreamBody) -> (UpstreamBody, Option<Arc<Notify>>) {
        if body.is_end_stream() {
            return (body, None);
        }
        let sent = Arc::new(Notify::new());
        let wrapped = SentBody {
            remaining: body.size_hint().exact(),
            inner: body,
            sent: Some(sent.clone()),
        };
        (http_body_util::BodyExt::boxed_unsync(wrapped), Some(sent))
    }

    fn signal(&mut self) {
        // `notify_one` keeps a permit when nobody waits yet.
        if let Some(sent) = self.sent.take() {
            sent.notify_one();
        }
    }
}

impl Body for SentBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.signal(),
            Poll::Ready(Some(Ok(frame))) => {
                let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                if let Some(remaining) = &mut self.remaining {
                    *remaining = remaining.saturating_sub(n);
                }
                if self.inner.is_end_stream() || self.remaining == Some(0) {
                    self.signal();
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Waits for the response head of `send` under the idle timer: nothing counts until the
/// request is sent (`sent` fires), then the head must come within `idle`.
pub async fn head_within<T>(
    send: impl Future<Output = Result<T, UpstreamError>>,
    idle: Duration,
    sent: Option<Arc<Notify>>,
) -> Result<T, UpstreamError> {
    tokio::pin!(send);
    if let Some(sent) = sent {
        tokio::select! {
            result = &mut send => return result,
            _ = sent.notified() => {}
        }
    }
    tokio::time::timeout(idle, send)
        .await
        .unwrap_or(Err(UpstreamError::PerTryIdleTimeout))
}

/// The error a response body ends with when its upstream went quiet: the access log reads
/// it as UT with Envoy's details.
#[derive(Debug)]
pub struct UpstreamIdleTimedOut;

impl std::fmt::Display for UpstreamIdleTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("upstream per-try idle timeout")
    }
}

impl std::error::Error for UpstreamIdleTimedOut {}

/// The error a response body ends with when the cluster's `max_stream_duration` passes
/// mid-response: the access log reads it as UMSDR.
#[derive(Debug)]
pub struct UpstreamMaxDurationReached;

impl std::fmt::Display for UpstreamMaxDurationReached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("upstream max stream duration reached")
    }
}

impl std::error::Error for UpstreamMaxDurationReached {}

pin_project_lite::pin_project! {
    /// A response body under one of its attempt's timers: the idle timer, which each frame
    /// re-arms, or the stream's deadline (`max_stream_duration`), which nothing moves.
    pub struct TimerBody {
        inner: ResponseBody,
        rearm: Option<Duration>,
        #[pin]
        timer: tokio::time::Sleep,
        counter: Arc<Counter>,
        expired: fn() -> BoxError,
        done: bool,
    }
}

impl TimerBody {
    pub fn idle(inner: ResponseBody, idle: Duration, counter: Arc<Counter>) -> Self {
        Self {
            inner,
            rearm: Some(idle),
            timer: tokio::time::sleep(idle),
            counter,
            expired: || Box::new(UpstreamIdleTimedOut),
            done: false,
        }
    }

    pub fn deadline(inner: ResponseBody, at: tokio::time::Instant, counter: Arc<Counter>) -> Self {
        Self {
            inner,
            rearm: None,
            timer: tokio::time::sleep_until(at),
            counter,
            expired: || Box::new(UpstreamMaxDurationReached),
            done: false,
        }
    }
}

impl Body for TimerBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut *this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(idle) = this.rearm {
                    let next = tokio::time::Instant::now() + *idle;
                    this.timer.as_mut().reset(next);
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(other) => {
                *this.done = true;
                return Poll::Ready(other);
            }
            Poll::Pending => {}
        }
        if this.timer.poll(cx).is_pending() {
            return Poll::Pending;
        }
        *this.done = true;
        this.counter.inc();
        Poll::Ready(Some(Err((this.expired)())))
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn the_head_timer_starts_when_the_request_is_sent() {
        let sent = Arc::new(Notify::new());
        // Not sent yet: a slow head is no timeout.
        let slow = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok::<_, UpstreamError>(1)
        };
        let waiting = head_within(slow, Duration::from_millis(20), Some(sent.clone()));
        assert_eq!(waiting.await, Ok(1));
        // Sent: the head must come within the idle time.
        sent.notify_one();
        let slow = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok::<_, UpstreamError>(1)
        };
        let timed = head_within(slow, Duration::from_millis(20), Some(sent));
        assert_eq!(timed.await, Err(UpstreamError::PerTryIdleTimeout));
    }

    #[tokio::test]
    async fn a_quiet_body_ends_with_the_idle_error_and_counts_it() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
        let stream =
            http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let counter = crate::stats::Store::new().counter("test.idle");
        let mut body = Box::pin(TimerBody::idle(
            stream.boxed_unsync(),
            Duration::from_millis(30),
            counter.clone(),
        ));
        let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"first")))).await;
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().ok(), Some(Bytes::from_static(b"first")));
        let end = body.frame().await.expect("an end");
        assert!(end.is_err_and(|e| e.is::<UpstreamIdleTimedOut>()));
        assert_eq!(counter.value(), 1);
        assert!(body.frame().await.is_none());
        drop(tx);
    }
}
