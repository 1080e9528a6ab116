//! A request body that can be sent again: while an attempt streams the downstream body
//! upstream, the data is also kept, up to the buffer limit, so a retry can replay it and then
//! continue with whatever the client has not sent yet. Once the body outgrows the limit the
//! kept data is dropped and the request can no longer be retried (Envoy's
//! `retry_or_shadow_abandoned`). Only requests whose route has a retry policy use this.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#envoy-v3-api-field-config-route-v3-route-per-request-buffer-limit-bytes

use crate::stats::Counter;
use crate::upstream::UpstreamBody;
use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Shared {
    /// The downstream body; None once it ended.
    source: Option<UpstreamBody>,
    /// The body's exact length when the client declared one (for the upstream's framing).
    exact: Option<u64>,
    /// Data frames kept so far, in order.
    kept: Vec<Bytes>,
    kept_bytes: usize,
    trailers: Option<HeaderMap>,
    limit: usize,
    /// The body outgrew the limit (or failed, or the request will not be retried): nothing is
    /// kept any more.
    abandoned: bool,
    /// The attempt whose body may read; earlier attempts' bodies fail if polled again.
    generation: u32,
    abandoned_stat: Arc<Counter>,
}

/// The handle the attempt loop keeps.
#[derive(Clone)]
pub struct Replay {
    shared: Arc<Mutex<Shared>>,
}

impl Replay {
    pub fn new(source: UpstreamBody, limit: usize, abandoned_stat: Arc<Counter>) -> Self {
        let exact = source.size_hint().exact();
        Self {
            shared: Arc::new(Mutex::new(Shared {
                source: Some(source),
                exact,
                kept: Vec::new(),
                kept_bytes: 0,
                trailers: None,
                limit,
                abandoned: false,
                generation: 0,
                abandoned_stat,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The body for the next attempt: the kept data, then the rest of the downstream body.
    /// The previous attempt's body stops reading.
    pub fn next_attempt(&self) -> ReplayBody {
        let mut shared = self.lock();
        shared.generation += 1;
        ReplayBody {
            shared: self.shared.clone(),
            generation: shared.generation,
            next: 0,
            delivered: 0,
            trailers_sent: false,
        }
    }

    /// Whether a retry could still send the whole body.
    pub fn retriable(&self) -> bool {
        !self.lock().abandoned
    }

    /// No more attempts will be made: stop keeping data (without counting an abandonment).
    pub fn release(&self) {
        let mut shared = self.lock();
        shared.abandoned = true;
        shared.kept = Vec::new();
    }
}

pub struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
    generation: u32,
    /// The next kept frame to replay.
    next: usize,
    delivered: u64,
    trailers_sent: bool,
}

#[derive(Debug)]
struct Superseded;

impl std::fmt::Display for Superseded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body went to a retry")
    }
}

impl std::error::Error for Superseded {}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut guard = this.shared.lock().unwrap_or_else(|e| e.into_inner());
        let shared = &mut *guard;
        if shared.generation != this.generation {
            return Poll::Ready(Some(Err(Box::new(Superseded))));
        }
        if !shared.abandoned {
            if let Some(data) = shared.kept.get(this.next) {
                this.next += 1;
                this.delivered += data.len() as u64;
                return Poll::Ready(Some(Ok(Frame::data(data.clone()))));
            }
        } else if this.next < shared.kept.len() {
            // Released while this attempt was still replaying: it cannot complete.
            return Poll::Ready(Some(Err(Box::new(Superseded))));
        }
        let Some(source) = shared.source.as_mut() else {
            if let (Some(t), false) = (&shared.trailers, this.trailers_sent) {
                this.trailers_sent = true;
                return Poll::Ready(Some(Ok(Frame::trailers(t.clone()))));
            }
            return Poll::Ready(None);
        };
        match Pin::new(source).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                shared.source = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                // A retry could not resend a body the client broke off.
                shared.source = None;
                shared.abandoned = true;
                shared.kept = Vec::new();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.delivered += data.len() as u64;
                    if !shared.abandoned {
                        if shared.kept_bytes + data.len() > shared.limit {
                            shared.abandoned = true;
                            shared.kept = Vec::new();
                            shared.abandoned_stat.inc();
                        } else {
                            shared.kept_bytes += data.len();
                            shared.kept.push(data.clone());
                            this.next = shared.kept.len();
                        }
                    }
                } else if let Some(t) = frame.trailers_ref() {
                    if !shared.abandoned {
                        shared.trailers = Some(t.clone());
                    }
                    this.trailers_sent = true;
                    shared.source = None;
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        shared.source.is_none()
            && this_replayed(self, &shared)
            && (shared.trailers.is_none() || self.trailers_sent)
    }

    fn size_hint(&self) -> SizeHint {
        let shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        match shared.exact {
            Some(n) => SizeHint::with_exact(n.saturating_sub(self.delivered)),
            None => SizeHint::default(),
        }
    }
}

fn this_replayed(body: &ReplayBody, shared: &Shared) -> bool {
    shared.abandoned || body.next >= shared.kept.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn source(chunks: &[&'static str]) -> UpstreamBody {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect();
        http_body_util::StreamBody::new(tokio_stream::iter(frames)).boxed_unsync()
    }

    async fn read(body: ReplayBody) -> Result<Bytes, BoxError> {
        body.collect().await.map(|c| c.to_bytes())
    }

    #[tokio::test]
    async fn a_retry_replays_what_was_sent_and_continues_with_the_rest() {
        let stat = Arc::new(Counter::default());
        let replay = Replay::new(source(&["ab", "cd", "ef"]), 100, stat.clone());
        let mut first = replay.next_attempt();
        // The first attempt read one frame, then failed.
        let frame = std::future::poll_fn(|cx| Pin::new(&mut first).poll_frame(cx)).await;
        assert_eq!(
            frame.and_then(|f| f.ok()).and_then(|f| f.into_data().ok()),
            Some(Bytes::from_static(b"ab"))
        );
        let second = replay.next_attempt();
        assert!(read(first).await.is_err(), "a superseded body stops");
        assert_eq!(read(second).await.expect("whole body"), "abcdef");
        let third = replay.next_attempt();
        assert_eq!(read(third).await.expect("replayed"), "abcdef");
        assert!(replay.retriable());
        assert_eq!(stat.value(), 0);
    }

    #[tokio::test]
    async fn a_body_past_the_limit_is_sent_but_not_kept() {
        let stat = Arc::new(Counter::default());
        let replay = Replay::new(source(&["abc", "def"]), 4, stat.clone());
        assert_eq!(
            read(replay.next_attempt()).await.expect("streamed"),
            "abcdef"
        );
        assert!(!replay.retriable());
        assert_eq!(stat.value(), 1);
    }
}
