//! Access logging for HTTP streams: the request body is counted on its way upstream, the
//! response body on its way downstream, and the stream is logged when the response body is
//! dropped (sent in full, or abandoned when the client went away), which is when Envoy logs.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/observability/access_log/usage

use super::connection::HttpContext;
use super::forwarding::Downstream;
use super::local_reply::ResponseFlag;
use super::router::{BoxError, ResponseBody};
use super::stream_timeouts::{Expiry, StreamProgress};
use crate::format::{Context, ResponseFlags, StreamInfo};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::borrow::Cow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Instant, SystemTime};
use tokio::sync::oneshot;

/// What the connection knows when the response starts, kept until the stream is logged.
pub struct Pending {
    pub ctx: Arc<HttpContext>,
    pub downstream: Downstream,
    pub start: SystemTime,
    pub started: Instant,
    pub protocol: http::Version,
    pub request: Arc<StreamProgress>,
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
        self.info.bytes_received += self.request.bytes();
        self.info.request_duration = self.request.request_duration();
        // A timer ended the stream (after the response started, by resetting it).
        if let Some(expiry) = self.request.expiry() {
            if expiry == Expiry::Idle {
                let si = flag_bits(Some(ResponseFlag::StreamIdleTimeout));
                self.info.response_flags = self.info.response_flags.with(si);
            }
            self.info.response_code_details = Some(expiry.details().into());
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
            request_headers: Some(crate::format::HeaderSource::Kept(
                &self.info.request_headers,
            )),
            stream: Some(&self.info),
            downstream_tls: self.downstream.tls.as_deref(),
        };
        self.ctx.access_logs.log(&ctx);
        if let (Some(runtime), Some(r)) = (&self.ctx.istio, &mut self.istio) {
            runtime.record(r, &self.info, self.downstream.tls.as_deref());
        }
    }
}

/// How an upgraded stream's tunnel ended.
#[derive(Debug, Default)]
pub struct TunnelEnd {
    /// Bytes from the client through the tunnel.
    pub received: u64,
    /// Bytes from the upstream through the tunnel.
    pub sent: u64,
    /// The side that closed first; None when a timer ended the tunnel or it never opened.
    pub closed_by: Option<ClosedBy>,
}

#[derive(Debug)]
pub enum ClosedBy {
    Downstream,
    Upstream,
}

impl Pending {
    /// Logs an upgraded stream when its tunnel closed, with the tunnel's bytes and the flag
    /// of the side that closed it, as Envoy does (checked with Envoy 1.40: `DC` and
    /// `downstream_remote_disconnect`, or `UC` and
    /// `upstream_reset_after_response_started{connection_termination}`).
    pub fn log_tunnel(mut self: Box<Self>, end: TunnelEnd) {
        self.info.bytes_received += end.received;
        self.info.bytes_sent += end.sent;
        let closed = match end.closed_by {
            Some(ClosedBy::Downstream) => Some(("DC", "downstream_remote_disconnect")),
            Some(ClosedBy::Upstream) => Some((
                "UC",
                "upstream_reset_after_response_started{connection_termination}",
            )),
            // A timer ended it: `log` names the timer.
            None => None,
        };
        if let Some((flag, details)) = closed {
            if let Some(flag) = ResponseFlags::named(flag) {
                self.info.response_flags = self.info.response_flags.with(flag);
            }
            self.info.response_code_details = Some(details.into());
        }
        self.log();
    }
}

/// Hands an upgraded stream's log from its response body to its tunnel: Envoy logs a
/// websocket when the tunnel closes. A response extension, so `Clone` (it is taken once).
#[derive(Clone)]
pub struct TunnelLog(Arc<std::sync::Mutex<Option<oneshot::Sender<Box<Pending>>>>>);

impl TunnelLog {
    pub fn new(sender: oneshot::Sender<Box<Pending>>) -> Self {
        Self(Arc::new(std::sync::Mutex::new(Some(sender))))
    }

    /// Gives `pending` to the tunnel, or back when the tunnel is gone.
    fn hand_over(self, pending: Box<Pending>) -> Result<(), Box<Pending>> {
        let sender = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        match sender {
            Some(sender) => sender.send(pending),
            None => Err(pending),
        }
    }
}

/// A response body that counts bytes sent and logs the stream when dropped.
pub struct LoggedBody {
    inner: ResponseBody,
    pending: Option<Box<Pending>>,
    /// An upgrade's tunnel, which logs the stream when it closes.
    tunnel: Option<TunnelLog>,
    /// The body reached its end (or failed): hyper stopped for a reason other than the
    /// client leaving.
    ended: bool,
}

impl LoggedBody {
    pub fn new(inner: ResponseBody, pending: Box<Pending>, tunnel: Option<TunnelLog>) -> Self {
        Self {
            inner,
            pending: Some(pending),
            tunnel,
            ended: false,
        }
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        let Some(mut pending) = self.pending.take() else {
            return;
        };
        // Dropped before its end: the client went away mid-response (Envoy's DC).
        if !self.ended && !self.inner.is_end_stream() {
            if let Some(dc) = ResponseFlags::named("DC") {
                pending.info.response_flags = pending.info.response_flags.with(dc);
            }
            pending.info.response_code_details = Some("downstream_remote_disconnect".into());
            pending.log();
            return;
        }
        let unclaimed = match self.tunnel.take() {
            Some(tunnel) => tunnel.hand_over(pending).err(),
            None => Some(pending),
        };
        if let Some(pending) = unclaimed {
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
        // A long gRPC stream's Istio message counts are reported while it lasts.
        if let Some(p) = this.pending.as_deref_mut() {
            if let (Some(runtime), Some(r)) = (&p.ctx.istio, p.istio.as_deref_mut()) {
                let tls = p.downstream.tls.as_deref();
                runtime.poll_report(r, (&p.info, tls), p.started, cx);
            }
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            this.ended = true;
        }
        // The upstream went quiet mid-response (`per_try_idle_timeout`): Envoy logs UT.
        if let (Poll::Ready(Some(Err(e))), Some(pending)) = (&polled, &mut this.pending) {
            if e.is::<super::attempt_idle::UpstreamIdleTimedOut>() {
                let ut = flag_bits(Some(ResponseFlag::UpstreamRequestTimeout));
                pending.info.response_flags = pending.info.response_flags.with(ut);
                pending.info.response_code_details = Some("upstream_per_try_idle_timeout".into());
            } else if e.is::<super::attempt_idle::UpstreamMaxDurationReached>() {
                let flag = flag_bits(Some(ResponseFlag::UpstreamMaxStreamDurationReached));
                pending.info.response_flags = pending.info.response_flags.with(flag);
                pending.info.response_code_details =
                    Some("upstream_max_stream_duration_reached".into());
            }
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
        Some(ResponseFlag::UpstreamConnectionTermination) => {
            Cow::Borrowed("upstream_reset_before_response_started{connection_termination}")
        }
        Some(ResponseFlag::UpstreamRemoteReset) => {
            Cow::Borrowed("upstream_reset_before_response_started{remote_reset}")
        }
        Some(ResponseFlag::StreamIdleTimeout) => Cow::Borrowed("stream_idle_timeout"),
        Some(ResponseFlag::UpstreamProtocolError) => {
            Cow::Borrowed("upstream_reset_before_response_started{protocol_error}")
        }
        Some(ResponseFlag::UpstreamMaxStreamDurationReached) => {
            Cow::Borrowed("upstream_max_stream_duration_reached")
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
