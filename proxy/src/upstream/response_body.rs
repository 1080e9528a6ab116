//! An upstream response's body as the pool hands it out: hyper's body, carrying what an
//! HTTP/2 stream holds until the body has ended (or is dropped), not only until the response
//! head: its place against the connection's `max_concurrent_streams`, and its unit of the
//! cluster's `max_requests`, as Envoy counts an upstream request active until its stream ends.

use super::circuit_breakers::Guard;
use super::lifecycle::InFlight;
use super::pool_conn::StreamToken;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};

/// What an HTTP/2 stream holds while its response body lasts.
pub struct StreamHold {
    _stream: Option<StreamToken>,
    _request: Guard,
}

impl StreamHold {
    pub(super) fn new(stream: Option<StreamToken>, request: Guard) -> Self {
        StreamHold {
            _stream: stream,
            _request: request,
        }
    }
}

pub struct UpstreamIncoming {
    body: Incoming,
    /// Released at the body's end; None for HTTP/1.1 (its connection and request unit come
    /// back to the pool by the connection's own readiness) and once released.
    stream: Option<StreamHold>,
    /// The request in flight on its connection until the body ends; dropped before, the
    /// request was given up (lifecycle.rs).
    in_flight: Option<InFlight>,
}

impl UpstreamIncoming {
    pub(super) fn new(
        body: Incoming,
        stream: Option<StreamHold>,
        in_flight: Option<InFlight>,
    ) -> Self {
        let mut body = UpstreamIncoming {
            body,
            stream,
            in_flight,
        };
        body.release_if_ended();
        body
    }

    fn release_if_ended(&mut self) {
        if self.body.is_end_stream() {
            self.ended();
        } else if self.body.size_hint().exact() == Some(0) {
            // Every byte the response announced has arrived: a reader that stops here (as
            // one bounded by `content-length` does) has not given the request up, even if
            // the stream's end flag is still on its way.
            if let Some(f) = &mut self.in_flight {
                f.finished();
            }
        }
    }

    fn ended(&mut self) {
        self.stream = None;
        if let Some(f) = &mut self.in_flight {
            f.finished();
        }
    }
}

impl Body for UpstreamIncoming {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.ended(),
            // A reset: the stream is over either way; the upstream's own is counted as such,
            // any other error gives the request up when the body is dropped.
            Poll::Ready(Some(Err(e))) => {
                if let Some(f) = this
                    .in_flight
                    .as_mut()
                    .filter(|_| super::pool::reset_by_peer(e))
                {
                    f.reset_by_peer();
                }
                this.stream = None;
            }
            Poll::Ready(Some(Ok(_))) => this.release_if_ended(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl std::fmt::Debug for UpstreamIncoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamIncoming")
            .field("stream", &self.stream.is_some())
            .finish_non_exhaustive()
    }
}
