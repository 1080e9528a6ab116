//! Access logging for HTTP streams: the request body is counted on its way upstream, the
//! response body on its way downstream, and the stream is logged when the response body is
//! dropped (sent in full, or abandoned when the client went away), which is when Envoy logs.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/observability/access_log/usage

use super::connection::HttpContext;
use super::forwarding::Downstream;
use super::local_reply::ResponseFlag;
use super::router::{BoxError, ResponseBody};
use crate::format::{Context, ResponseFlags, StreamInfo};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::borrow::Cow;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant, SystemTime};

/// How much of the request body went upstream, and when its end did. Put in the request's
/// extensions by the connection when access logs are on; forwarding counts into it.
#[derive(Debug)]
pub struct RequestProgress {
    started: Instant,
    bytes: AtomicU64,
    /// Microseconds from the start to the body's end, plus one; 0 while unfinished.
    done_micros: AtomicU64,
}

impl RequestProgress {
    pub fn new(started: Instant) -> Self {
        Self {
            started,
            bytes: AtomicU64::new(0),
            done_micros: AtomicU64::new(0),
        }
    }

    pub fn finish(&self) {
        let micros = self.started.elapsed().as_micros() as u64;
        let _ =
            self.done_micros
                .compare_exchange(0, (micros + 1).min(u64::MAX - 1), Relaxed, Relaxed);
    }

    /// The request was refused before its body was read: it has no request duration.
    pub fn abandon(&self) {
        self.done_micros.store(u64::MAX, Relaxed);
    }

    fn request_duration(&self) -> Option<Duration> {
        match self.done_micros.load(Relaxed) {
            0 | u64::MAX => None,
            n => Some(Duration::from_micros(n - 1)),
        }
    }
}

/// A request body that counts what passes through into a [`RequestProgress`].
pub struct CountedBody<B> {
    inner: B,
    progress: Arc<RequestProgress>,
}

impl<B> CountedBody<B> {
    pub fn new(inner: B, progress: Arc<RequestProgress>) -> Self {
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
                if let Some(data) = frame.data_ref() {
                    this.progress.bytes.fetch_add(data.len() as u64, Relaxed);
                }
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

/// What the connection knows when the response starts, kept until the stream is logged.
pub struct Pending {
    pub ctx: Arc<HttpContext>,
    pub downstream: Downstream,
    pub start: SystemTime,
    pub started: Instant,
    pub protocol: http::Version,
    pub request: Option<Arc<RequestProgress>>,
    pub info: StreamInfo,
    /// Whether a connection to the upstream host was made (it answered, timed out or
    /// closed), for `%UPSTREAM_REMOTE_ADDRESS%`.
    pub connected: bool,
    /// What Istio's metrics record of the request.
    pub istio: Option<Box<super::istio::IstioRequest>>,
}

impl Pending {
    fn log(mut self) {
        self.info.duration = Some(self.started.elapsed());
        if let Some(p) = &self.request {
            self.info.bytes_received = p.bytes.load(Relaxed);
            self.info.request_duration = p.request_duration();
        }
        let upstream = self.info.upstream_host.as_ref().map(|a| a.as_str());
        let ctx = Context {
            downstream_remote: self.downstream.remote,
            downstream_local: self.downstream.local,
            // `%UPSTREAM_REMOTE_ADDRESS%` is a host a connection was made to; `%UPSTREAM_HOST%`
            // may be one that was only tried.
            upstream_remote: upstream.filter(|_| self.connected),
            start: self.start,
            protocol: Some(self.protocol),
            request_headers: self.info.request_headers.as_ref(),
            stream: Some(&self.info),
        };
        self.ctx.access_logs.log(&ctx);
        if let (Some(runtime), Some(r)) = (&self.ctx.istio, &self.istio) {
            runtime.record(r, &self.info);
        }
    }
}

/// A response body that counts bytes sent and logs the stream when dropped.
pub struct LoggedBody {
    inner: ResponseBody,
    pending: Option<Box<Pending>>,
    /// The body reached its end (or failed): hyper stopped for a reason other than the
    /// client leaving.
    ended: bool,
}

impl LoggedBody {
    pub fn new(inner: ResponseBody, pending: Box<Pending>) -> Self {
        Self {
            inner,
            pending: Some(pending),
            ended: false,
        }
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if let Some(mut pending) = self.pending.take() {
            // Dropped before its end: the client went away mid-response (Envoy's DC).
            if !self.ended && !self.inner.is_end_stream() {
                if let Some(dc) = ResponseFlags::named("DC") {
                    pending.info.response_flags = pending.info.response_flags.with(dc);
                }
                pending.info.response_code_details = Some("downstream_remote_disconnect".into());
            }
            pending.log();
        }
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            this.ended = true;
        }
        if let (Poll::Ready(Some(Ok(frame))), Some(pending)) = (&polled, &mut this.pending) {
            if let Some(data) = frame.data_ref() {
                pending.info.bytes_sent += data.len() as u64;
            } else if let Some(trailers) = frame.trailers_ref() {
                if pending.ctx.access_logs.trailers {
                    pending.info.response_trailers = Some(trailers.clone());
                }
                if let Some(r) = pending.istio.as_mut() {
                    super::istio::IstioRuntime::on_trailers(r, trailers);
                }
            }
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

/// Envoy's response flag for a local reply's cause.
pub fn flag_bits(flag: Option<ResponseFlag>) -> ResponseFlags {
    flag.and_then(|f| ResponseFlags::named(f.short()))
        .unwrap_or(ResponseFlags::NONE)
}

/// `%RESPONSE_CODE_DETAILS%` for a response whose details nobody set: from the flag, or
/// `via_upstream` when an upstream answered.
pub fn default_details(
    flag: Option<ResponseFlag>,
    answered_by_upstream: bool,
    transport_failure: Option<&str>,
) -> Option<Cow<'static, str>> {
    Some(match flag {
        Some(ResponseFlag::NoRouteFound) => Cow::Borrowed("route_not_found"),
        Some(ResponseFlag::NoHealthyUpstream) => Cow::Borrowed("no_healthy_upstream"),
        Some(ResponseFlag::NoClusterFound) => Cow::Borrowed("cluster_not_found"),
        Some(ResponseFlag::UpstreamRequestTimeout) => Cow::Borrowed("response_timeout"),
        Some(ResponseFlag::UpstreamRemoteReset | ResponseFlag::UpstreamConnectionTermination) => {
            Cow::Borrowed("upstream_reset_before_response_started{connection_termination}")
        }
        Some(ResponseFlag::UpstreamOverflow) => {
            Cow::Borrowed("upstream_reset_before_response_started{overflow}")
        }
        Some(ResponseFlag::UpstreamConnectionFailure) => match transport_failure {
            Some(reason) => Cow::Owned(format!(
                "upstream_reset_before_response_started{{remote_connection_failure|{reason}}}"
            )),
            None => {
                Cow::Borrowed("upstream_reset_before_response_started{remote_connection_failure}")
            }
        },
        None if answered_by_upstream => Cow::Borrowed("via_upstream"),
        None => return None,
    })
}

/// Envoy's transport failure reason for a connect error: `delayed connect error: 111` (how
/// the pool reports it) becomes `delayed connect error: Connection refused`.
pub fn transport_failure_reason(reason: &str) -> String {
    match reason
        .strip_prefix("delayed connect error: ")
        .and_then(|n| n.parse::<i32>().ok())
    {
        Some(code) => format!(
            "delayed connect error: {}",
            nix::errno::Errno::from_raw(code).desc()
        ),
        None => reason.to_string(),
    }
}
