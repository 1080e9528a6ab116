//! A stream's progress and its timers, as Envoy's connection manager keeps them: the stream
//! idle timeout (no bytes either way), the request timeout (the whole request must arrive)
//! and the maximum stream duration — the connection manager's, a route's, or a gRPC
//! request's own `grpc-timeout`.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/faq/configuration/timeouts#stream-timeouts
//!
//! Before the response starts, [`StreamProgress::expired`] races the route's work and its
//! expiry becomes a local reply: 408 while the request is still arriving, 504 once it has
//! (Envoy 1.40 answers so; the body names the timer). After the response head, a
//! [`TimedBody`] ends the response with an error instead (the client sees the stream reset),
//! as Envoy resets a stream whose response started.
//!
//! Activity is a timestamp the bodies write; a timer only wakes at the earliest deadline and
//! re-arms from the latest activity, so a busy stream costs no timer updates per chunk.

use super::connection::HttpContext;
use super::router::{BoxError, ResponseBody};
use super::stats::HcmStats;
use crate::config::hcm_options::StreamTimeouts;
use crate::config::route_action::Forward;
use crate::stats::Counter;
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

/// No deadline.
const NEVER: u64 = u64::MAX;

/// Which timer ended a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// `stream_idle_timeout` (or the route's `idle_timeout`).
    Idle,
    /// `request_timeout`.
    Request,
    /// `max_stream_duration` (the connection manager's, the route's or `grpc-timeout`).
    Duration,
}

impl Expiry {
    /// The local reply's body, as Envoy words it.
    pub fn body(self) -> &'static str {
        match self {
            Expiry::Idle => "stream timeout",
            Expiry::Request => "request timeout",
            Expiry::Duration => "downstream duration timeout",
        }
    }

    /// `%RESPONSE_CODE_DETAILS%`.
    pub fn details(self) -> &'static str {
        match self {
            Expiry::Idle => "stream_idle_timeout",
            Expiry::Request => "request_overall_timeout",
            Expiry::Duration => "max_duration_timeout",
        }
    }

    fn code(self) -> u8 {
        match self {
            Expiry::Idle => 1,
            Expiry::Request => 2,
            Expiry::Duration => 3,
        }
    }

    fn from_code(code: u8) -> Option<Expiry> {
        match code {
            1 => Some(Expiry::Idle),
            2 => Some(Expiry::Request),
            3 => Some(Expiry::Duration),
            _ => None,
        }
    }

    /// The connection manager's counter for the expiry.
    pub fn counter(self, stats: &HcmStats) -> &Arc<Counter> {
        match self {
            Expiry::Idle => &stats.downstream_rq_idle_timeout,
            Expiry::Request => &stats.downstream_rq_timeout,
            Expiry::Duration => &stats.downstream_rq_max_duration_reached,
        }
    }
}

/// What a stream has done so far and when it must end. Created by the connection for every
/// request and put in its extensions; forwarding counts the request body into it, the
/// response body stamps its activity.
#[derive(Debug)]
pub struct StreamProgress {
    started: Instant,
    /// Request body bytes that went upstream.
    bytes: AtomicU64,
    /// Microseconds from the start to the request body's end, plus one; 0 while unfinished,
    /// `u64::MAX` for a request refused before its body was read.
    done_micros: AtomicU64,
    /// Microseconds from the start to the last byte either way.
    active_micros: AtomicU64,
    /// The idle timeout in microseconds ([`NEVER`]: none); the route may change it.
    idle_micros: AtomicU64,
    /// The stream's end, in microseconds from its start ([`NEVER`]: none).
    deadline_micros: AtomicU64,
    /// `request_timeout`, in microseconds from the start ([`NEVER`]: none).
    request_micros: u64,
    /// Which timer ended the stream (an [`Expiry`] code; 0: none).
    expired: AtomicU8,
}

fn micros(d: Option<Duration>) -> u64 {
    d.map_or(NEVER, |d| u64::try_from(d.as_micros()).unwrap_or(NEVER - 1))
}

impl StreamProgress {
    pub fn new(started: Instant, timeouts: &StreamTimeouts) -> Self {
        Self {
            started,
            bytes: AtomicU64::new(0),
            done_micros: AtomicU64::new(0),
            active_micros: AtomicU64::new(0),
            idle_micros: AtomicU64::new(micros(timeouts.idle)),
            deadline_micros: AtomicU64::new(micros(timeouts.max_duration)),
            request_micros: micros(timeouts.request),
            expired: AtomicU8::new(0),
        }
    }

    fn now_micros(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(NEVER - 1)
    }

    /// Bytes moved on the stream: the idle timer starts again.
    pub fn touch(&self) {
        self.active_micros.store(self.now_micros(), Relaxed);
    }

    /// `n` request body bytes went upstream.
    pub fn count(&self, n: usize) {
        self.bytes.fetch_add(n as u64, Relaxed);
        self.touch();
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Relaxed)
    }

    /// The request has arrived whole.
    pub fn finish(&self) {
        let micros = self.now_micros();
        let _ = self.done_micros.compare_exchange(
            0,
            micros.saturating_add(1).min(NEVER - 1),
            Relaxed,
            Relaxed,
        );
    }

    /// The request was refused before its body was read: it has no request duration.
    pub fn abandon(&self) {
        self.done_micros.store(NEVER, Relaxed);
    }

    fn request_complete(&self) -> bool {
        !matches!(self.done_micros.load(Relaxed), 0 | NEVER)
    }

    pub fn request_duration(&self) -> Option<Duration> {
        match self.done_micros.load(Relaxed) {
            0 | NEVER => None,
            n => Some(Duration::from_micros(n - 1)),
        }
    }

    /// The timer that ended the stream, if one did.
    pub fn expiry(&self) -> Option<Expiry> {
        Expiry::from_code(self.expired.load(Relaxed))
    }

    /// The route chose its timers: `idle_timeout` replaces the stream idle timeout, and the
    /// stream's duration is recomputed as Envoy does once a route is known — from the
    /// request's `grpc-timeout` when the route sets `grpc_timeout_header_max`, else the
    /// route's `max_stream_duration`, else the connection manager's — counted from the
    /// stream's start.
    ///
    /// Returns what the upstream is to see as a gRPC request's `grpc-timeout`, as Envoy 1.40
    /// rewrites it: the duration the header set (capped and offset), else the route's own
    /// non-zero `max_stream_duration`, which replaces the client's header; None leaves the
    /// request's header as it is (see [`set_grpc_timeout`]).
    pub fn on_route(
        &self,
        route: &Forward,
        hcm: &StreamTimeouts,
        headers: &HeaderMap,
    ) -> Option<Duration> {
        let mut rewrite = None;
        if let Some(idle) = route.idle_timeout {
            self.idle_micros.store(micros(idle), Relaxed);
        }
        let duration = match route.stream_duration {
            None => hcm.max_duration,
            Some(d) => match d.grpc_header_max.zip(grpc_timeout(headers)) {
                Some((max, timeout)) => {
                    let capped = if !max.is_zero() && timeout > max {
                        max
                    } else {
                        timeout
                    };
                    let applied = match d.grpc_header_offset {
                        Some(offset) if !capped.is_zero() => capped.saturating_sub(offset),
                        _ => capped,
                    };
                    rewrite = Some(applied);
                    Some(applied)
                }
                None => match d.max {
                    Some(max) => {
                        if max.is_some() && super::grpc_reply::is_grpc(headers) {
                            rewrite = max;
                        }
                        max
                    }
                    None => hcm.max_duration,
                },
            },
        };
        self.deadline_micros.store(micros(duration), Relaxed);
        rewrite
    }

    /// The earliest deadline and its timer, from the stream's start: before the response,
    /// the request timeout counts while the request is still arriving.
    fn next_deadline(&self, responding: bool) -> Option<(u64, Expiry)> {
        let idle = self.idle_micros.load(Relaxed);
        let mut next = (idle != NEVER).then(|| {
            (
                self.active_micros.load(Relaxed).saturating_add(idle),
                Expiry::Idle,
            )
        });
        let mut consider = |at: u64, which: Expiry| {
            if at != NEVER && next.is_none_or(|(n, _)| at < n) {
                next = Some((at, which));
            }
        };
        if !responding && !self.request_complete() {
            consider(self.request_micros, Expiry::Request);
        }
        consider(self.deadline_micros.load(Relaxed), Expiry::Duration);
        next
    }

    fn instant(&self, at: u64) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.started + Duration::from_micros(at))
    }

    /// Marks the stream ended by `which`: true the first time (the caller counts it).
    pub fn mark(&self, which: Expiry) -> bool {
        self.expired
            .compare_exchange(0, which.code(), Relaxed, Relaxed)
            .is_ok()
    }

    fn expire(&self, which: Expiry, ctx: &HttpContext) {
        if self.mark(which) {
            which.counter(&ctx.stats).inc();
        }
    }

    /// Resolves when a timer ends the stream before its response starts.
    pub async fn expired(&self, ctx: &HttpContext) -> Expiry {
        let which = self.next_expiry(false).await;
        self.expire(which, ctx);
        which
    }

    /// Resolves when a timer is due: before the response (`responding` false) the request
    /// timeout counts too. The deadlines are read when first polled and again each time the
    /// armed one passes (activity only moves them later). The route's changes to them are
    /// made before that first poll: the caller polls the route's work first (a biased
    /// select), which chooses the route before it first waits.
    pub async fn next_expiry(&self, responding: bool) -> Expiry {
        loop {
            match self.next_deadline(responding) {
                None => return std::future::pending().await,
                Some((at, which)) if at <= self.now_micros() => return which,
                Some((at, _)) => tokio::time::sleep_until(self.instant(at)).await,
            }
        }
    }

    /// The status of a local reply for `which`: 408 while the request is still arriving,
    /// 504 once it has arrived (the wait is then on the upstream or a filter).
    pub fn reply_status(&self) -> http::StatusCode {
        if self.request_complete() {
            http::StatusCode::GATEWAY_TIMEOUT
        } else {
            http::StatusCode::REQUEST_TIMEOUT
        }
    }

    /// Whether a response body needs watching: some timer is armed.
    pub fn has_response_timers(&self) -> bool {
        self.next_deadline(true).is_some()
    }
}

/// A request's `grpc-timeout` (gRPC over HTTP/2: up to 8 digits and a unit, H M S m u n).
/// Sub-millisecond values round up to a millisecond.
pub(crate) fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(&GRPC_TIMEOUT)?.as_bytes();
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    let exact = match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    };
    let millis = exact.as_nanos().div_ceil(1_000_000);
    Some(Duration::from_millis(u64::try_from(millis).ok()?))
}

/// A request body on its way upstream, counted into its stream's progress: its bytes, its
/// activity (for the idle timer) and its end (which stops the request timer).
pub struct CountedBody<B> {
    inner: B,
    progress: Arc<StreamProgress>,
}

impl<B> CountedBody<B> {
    pub fn new(inner: B, progress: Arc<StreamProgress>) -> Self {
        Self { inner, progress }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for CountedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                this.progress.count(frame.data_ref().map_or(0, |d| d.len()));
                if this.inner.is_end_stream() {
                    this.progress.finish();
                }
            }
            Poll::Ready(None) => this.progress.finish(),
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

/// Writes `timeout` as `grpc-timeout`: in milliseconds, or the first larger unit (seconds,
/// minutes, hours) that fits gRPC's 8 digits.
pub fn set_grpc_timeout(headers: &mut HeaderMap, timeout: Duration) {
    const MAX: u128 = 99_999_999;
    let mut value = timeout.as_millis();
    let mut unit = 'm';
    for (divisor, larger) in [(1000, 'S'), (60, 'M'), (60, 'H')] {
        if value <= MAX {
            break;
        }
        value /= divisor;
        unit = larger;
    }
    let text = format!("{}{unit}", value.min(MAX));
    if let Ok(v) = http::HeaderValue::from_str(&text) {
        headers.insert(GRPC_TIMEOUT.clone(), v);
    }
}

static GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// The error a [`TimedBody`] ends with: hyper resets the stream (HTTP/2) or closes the
/// connection (HTTP/1.1), as Envoy does when a timer fires after the response started.
#[derive(Debug)]
pub struct StreamTimedOut(pub Expiry);

impl std::fmt::Display for StreamTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.body())
    }
}

impl std::error::Error for StreamTimedOut {}

pin_project_lite::pin_project! {
    /// A response body under its stream's idle and duration timers.
    pub struct TimedBody {
        inner: ResponseBody,
        progress: Arc<StreamProgress>,
        ctx: Arc<HttpContext>,
        // Armed at the earliest deadline when the body waits; re-armed from the latest
        // activity when it fires early.
        #[pin]
        timer: Option<tokio::time::Sleep>,
        done: bool,
    }
}

impl TimedBody {
    pub fn new(inner: ResponseBody, progress: Arc<StreamProgress>, ctx: Arc<HttpContext>) -> Self {
        progress.touch();
        Self {
            inner,
            progress,
            ctx,
            timer: None,
            done: false,
        }
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut *this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.progress.touch();
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(other) => return Poll::Ready(other),
            Poll::Pending => {}
        }
        loop {
            let Some((at, which)) = this.progress.next_deadline(true) else {
                return Poll::Pending;
            };
            if at <= this.progress.now_micros() {
                this.progress.expire(which, this.ctx);
                *this.done = true;
                return Poll::Ready(Some(Err(Box::new(StreamTimedOut(which)))));
            }
            let deadline = this.progress.instant(at);
            match this.timer.as_mut().as_pin_mut() {
                Some(timer) if timer.deadline() == deadline => {}
                // Activity only moves the deadline later: a timer still armed for an earlier
                // one fires first, and the loop re-arms it then (no reset per chunk). One that
                // fired for a deadline activity has since moved is re-armed here.
                Some(timer) if timer.deadline() < deadline && !timer.is_elapsed() => {}
                Some(timer) => timer.reset(deadline),
                None => this.timer.set(Some(tokio::time::sleep_until(deadline))),
            }
            let Some(timer) = this.timer.as_mut().as_pin_mut() else {
                return Poll::Pending;
            };
            if timer.poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
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

    fn headers(timeout: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "grpc-timeout",
            timeout.parse().expect("the test's header values are valid"),
        );
        h
    }

    #[test]
    fn grpc_timeouts_parse_like_grpc_says() {
        let t = |v: &str| grpc_timeout(&headers(v));
        assert_eq!(t("1S"), Some(Duration::from_secs(1)));
        assert_eq!(t("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(t("3M"), Some(Duration::from_secs(180)));
        assert_eq!(t("700m"), Some(Duration::from_millis(700)));
        assert_eq!(t("1500u"), Some(Duration::from_millis(2)));
        assert_eq!(t("1n"), Some(Duration::from_millis(1)));
        assert_eq!(t("0m"), Some(Duration::ZERO));
        assert_eq!(t("123456789S"), None, "at most 8 digits");
        assert_eq!(t("S"), None);
        assert_eq!(t("10x"), None);
        assert_eq!(t("-1S"), None);
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
    }

    #[test]
    fn grpc_timeouts_are_written_in_the_smallest_unit_that_fits() {
        let written = |d: Duration| {
            let mut h = HeaderMap::new();
            set_grpc_timeout(&mut h, d);
            h.get("grpc-timeout")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_string()
        };
        assert_eq!(written(Duration::from_secs(5)), "5000m");
        assert_eq!(written(Duration::from_millis(200)), "200m");
        assert_eq!(written(Duration::ZERO), "0m");
        assert_eq!(written(Duration::from_secs(100_000_000)), "1666666M");
        assert_eq!(written(Duration::from_secs(u64::MAX / 2)), "99999999H");
    }

    fn timeouts(idle: Option<u64>, request: Option<u64>, max: Option<u64>) -> StreamTimeouts {
        StreamTimeouts {
            idle: idle.map(Duration::from_millis),
            request: request.map(Duration::from_millis),
            max_duration: max.map(Duration::from_millis),
        }
    }

    #[test]
    fn the_earliest_armed_timer_is_next() {
        let p = StreamProgress::new(Instant::now(), &timeouts(Some(300), Some(100), Some(200)));
        assert_eq!(p.next_deadline(false), Some((100_000, Expiry::Request)));
        // The request timeout stops once the request is whole, or the response started.
        assert_eq!(p.next_deadline(true), Some((200_000, Expiry::Duration)));
        p.finish();
        assert_eq!(p.next_deadline(false), Some((200_000, Expiry::Duration)));
        let none = StreamProgress::new(Instant::now(), &timeouts(None, None, None));
        assert_eq!(none.next_deadline(false), None);
        assert!(!none.has_response_timers());
    }

    #[test]
    fn a_request_still_arriving_gets_408_a_whole_one_504() {
        let p = StreamProgress::new(Instant::now(), &timeouts(None, None, None));
        assert_eq!(p.reply_status(), http::StatusCode::REQUEST_TIMEOUT);
        p.finish();
        assert_eq!(p.reply_status(), http::StatusCode::GATEWAY_TIMEOUT);
    }
}
