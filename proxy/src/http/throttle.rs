//! A response body paced to a byte rate, for the fault filter's `response_rate_limit`. Like
//! Envoy's stream rate limiter it is a token bucket holding one second's worth of bytes,
//! full at the start, refilled continuously and spent in slices of 1/16 s, so a response of
//! `n` bytes at `r` bytes/s takes about `(n - r) / r` seconds.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/common/fault/v3/fault.proto#envoy-v3-api-msg-extensions-filters-common-fault-v3-faultratelimit

use super::fault::ActiveFault;
use super::router::{BoxError, ResponseBody};
use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::time::{Instant, Sleep};

/// How many slices a second of the rate is spent in.
const SLICES_PER_SECOND: u64 = 16;

pub struct Throttled {
    inner: ResponseBody,
    bucket: Option<Bucket>,
    /// Data read from `inner` and not yet sent.
    pending: Bytes,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Keeps the fault counted in `active_faults` until the body ends or is dropped.
    _active: ActiveFault,
}

struct Bucket {
    rate: u64,
    tokens: u64,
    refilled: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let earned = (now - self.refilled).as_nanos() * u128::from(self.rate) / 1_000_000_000;
        if earned > 0 {
            self.tokens = (u128::from(self.tokens) + earned).min(u128::from(self.rate)) as u64;
            self.refilled = now;
        }
    }

    /// The least it sends at once: a slice, or what is left when that is less.
    fn wanted(&self, pending: usize) -> u64 {
        (self.rate / SLICES_PER_SECOND).max(1).min(pending as u64)
    }
}

impl Throttled {
    /// `rate` in bytes per second; None passes the body through unpaced (the fault is only
    /// kept active until the body ends).
    pub fn new(inner: ResponseBody, rate: Option<u64>, active: ActiveFault) -> Self {
        Self {
            inner,
            bucket: rate.filter(|r| *r > 0).map(|rate| Bucket {
                rate,
                tokens: rate,
                refilled: Instant::now(),
            }),
            pending: Bytes::new(),
            sleep: None,
            _active: active,
        }
    }

    pub fn boxed(self) -> ResponseBody {
        http_body_util::BodyExt::boxed_unsync(self)
    }
}

impl Body for Throttled {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(bucket) = &mut this.bucket else {
            return Pin::new(&mut this.inner).poll_frame(cx);
        };
        loop {
            if !this.pending.is_empty() {
                if let Some(sleep) = &mut this.sleep {
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    this.sleep = None;
                }
                let now = Instant::now();
                bucket.refill(now);
                let wanted = bucket.wanted(this.pending.len());
                if bucket.tokens >= wanted {
                    let n = bucket.tokens.min(this.pending.len() as u64);
                    bucket.tokens -= n;
                    let chunk = this.pending.split_to(n as usize);
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                let missing = wanted - bucket.tokens;
                let wait = std::time::Duration::from_nanos(
                    (u128::from(missing) * 1_000_000_000 / u128::from(bucket.rate)) as u64 + 1,
                );
                this.sleep = Some(Box::pin(tokio::time::sleep_until(now + wait)));
                continue;
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(mut data) => this.pending = data.copy_to_bytes(data.remaining()),
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                other => return other,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let pending = self.pending.len() as u64;
        let mut hint = SizeHint::new();
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + pending);
        }
        hint.set_lower(inner.lower() + pending);
        hint
    }
}
