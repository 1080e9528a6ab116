//! The gRPC statistics filter at run time: a gRPC call's method is read from its path when
//! the request arrives, its stats are bound once the router has picked the cluster, its
//! messages are counted as the bodies stream through (never buffered), and its `grpc-status`
//! is charged from the response headers (trailers-only) or trailers. The message counts are
//! the filter state Istio's metrics read.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/grpc_stats_filter

use super::grpc_frames::FrameCounter;
use super::grpc_reply::{is_grpc, GRPC_STATUS};
use crate::config::grpc_stats::{GrpcStatsFilter, MethodStats};
use crate::stats::grpc::GrpcStatSet;
use crate::stats::Store;
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

/// Which stats a call is counted under, decided from its path.
#[derive(Debug)]
enum Names {
    /// Not `/<service>/<method>`: no stats (the message counts are still kept).
    Untracked,
    /// The cluster's stats only (a method outside the allowlist).
    Cluster,
    /// Its own method's stats, by `<service>/<method>`.
    Method(Key),
}

/// `<service>/<method>`: the request's own path bytes when the path is exactly
/// `/<service>/<method>` (no allocation), else a copy normalised to that form.
#[derive(Debug)]
enum Key {
    Path(http::uri::PathAndQuery),
    Owned(Box<str>),
}

impl Key {
    fn as_str(&self) -> &str {
        match self {
            Key::Path(p) => p.path().get(1..).unwrap_or_default(),
            Key::Owned(s) => s,
        }
    }
}

/// One gRPC call, shared by its request body (on its way upstream) and its response.
#[derive(Debug)]
pub struct GrpcCall {
    config: Arc<GrpcStatsFilter>,
    names: Names,
    /// The stats to charge, once the cluster is known; a call with no cluster (a direct
    /// response, a missing cluster) charges none, as in Envoy.
    stats: OnceLock<(Arc<GrpcStatSet>, Arc<Store>)>,
    request_messages: AtomicU64,
    response_messages: AtomicU64,
    /// A message was counted: the filter state exists (Envoy writes it on the first one).
    counted: AtomicBool,
    /// When the request's last byte went upstream, for `upstream_rq_time`.
    request_sent: OnceLock<Instant>,
}

impl GrpcCall {
    /// Decode headers: a call when the request is gRPC (`application/grpc[+...]`).
    pub fn start(
        config: &Arc<GrpcStatsFilter>,
        uri: &http::Uri,
        headers: &HeaderMap,
    ) -> Option<Arc<Self>> {
        if !is_grpc(headers) {
            return None;
        }
        let names = match (service_and_method(uri), &config.methods) {
            (None, _) => Names::Untracked,
            (Some(key), MethodStats::All { .. }) => Names::Method(key),
            (Some(key), MethodStats::Allowlist(allowed)) if allowed.contains(key.as_str()) => {
                Names::Method(key)
            }
            (Some(_), MethodStats::Allowlist(_)) => Names::Cluster,
        };
        Some(Arc::new(Self {
            config: config.clone(),
            names,
            stats: OnceLock::new(),
            request_messages: AtomicU64::new(0),
            response_messages: AtomicU64::new(0),
            counted: AtomicBool::new(false),
            request_sent: OnceLock::new(),
        }))
    }

    /// The router picked `cluster`: the call's stats are its (Envoy reads the cluster at
    /// decode headers, which is the route's pick).
    pub fn bind(&self, cluster: &crate::upstream::ClusterRuntime) {
        let grpc = cluster.stats.grpc();
        let set = match &self.names {
            Names::Untracked => return,
            Names::Cluster => grpc.cluster().clone(),
            Names::Method(key) => {
                let replace_dots =
                    matches!(self.config.methods, MethodStats::All { replace_dots: true });
                grpc.method(key.as_str(), replace_dots)
            }
        };
        let _ = self.stats.set((set, grpc.store().clone()));
    }

    /// The filter state Istio reads: (request, response) message counts, once a message was
    /// counted and the filter emits its state.
    pub fn filter_state(&self) -> Option<(u64, u64)> {
        (self.config.emit_filter_state && self.counted.load(Relaxed)).then(|| {
            (
                self.request_messages.load(Relaxed),
                self.response_messages.load(Relaxed),
            )
        })
    }

    fn messages(&self, request: bool, n: u64) {
        if n == 0 {
            return;
        }
        self.counted.store(true, Relaxed);
        let (total, charge): (_, fn(&GrpcStatSet, &Store, u64)) = if request {
            (&self.request_messages, GrpcStatSet::request_messages)
        } else {
            (&self.response_messages, GrpcStatSet::response_messages)
        };
        total.fetch_add(n, Relaxed);
        if let Some((set, store)) = self.stats.get() {
            charge(set, store, n);
        }
    }

    fn charge_status(&self, headers: &HeaderMap) {
        if let (Some((set, store)), Some(status)) = (self.stats.get(), headers.get(&GRPC_STATUS)) {
            set.status(store, status.as_bytes());
        }
    }

    /// `upstream_rq_time`: last request byte sent to last response byte received, when both
    /// happened (a local reply received nothing).
    fn charge_upstream_time(&self) {
        if !self.config.enable_upstream_stats {
            return;
        }
        if let (Some((set, store)), Some(sent)) = (self.stats.get(), self.request_sent.get()) {
            set.upstream_rq_time(store, sent.elapsed().as_millis() as u64);
        }
    }

    /// Encode headers: charges a trailers-only status, and returns the response body wrapped
    /// to count messages and charge the trailers' status. `from_upstream`: an upstream sent
    /// the response (not a local reply).
    pub fn on_response<B>(
        self: &Arc<Self>,
        response: http::Response<B>,
        from_upstream: bool,
    ) -> http::Response<GrpcResponseBody<B>>
    where
        B: Body<Data = Bytes> + Unpin,
    {
        let end_stream = response.body().is_end_stream();
        let headers = response.headers();
        // Envoy's rule: a gRPC response is 200 with a gRPC content type, or ends at its
        // headers with a `grpc-status`.
        let grpc_response = if end_stream {
            headers.contains_key(&GRPC_STATUS)
        } else {
            response.status() == http::StatusCode::OK && is_grpc(headers)
        };
        self.charge_status(headers);
        if end_stream && from_upstream {
            self.charge_upstream_time();
        }
        response.map(|inner| GrpcResponseBody {
            inner,
            call: self.clone(),
            counter: grpc_response.then(FrameCounter::default),
            from_upstream,
        })
    }

    /// The request body, wrapped to count its messages on their way upstream.
    pub fn request_body<B: Body<Data = Bytes> + Unpin>(
        self: &Arc<Self>,
        inner: B,
    ) -> GrpcRequestBody<B> {
        if inner.is_end_stream() {
            let _ = self.request_sent.set(Instant::now());
        }
        GrpcRequestBody {
            inner,
            call: self.clone(),
            counter: FrameCounter::default(),
        }
    }
}

/// `<service>/<method>` of a path `/<service>/<method>` (query ignored; empty segments
/// skipped, as Envoy splits the path); None for any other shape.
fn service_and_method(uri: &http::Uri) -> Option<Key> {
    let pq = uri.path_and_query()?;
    let path = pq.path();
    let mut parts = path.split('/').filter(|p| !p.is_empty());
    let (service, method) = (parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    // The usual shape needs no copy: the key is the path after its slash.
    if path.len() == service.len() + method.len() + 2 && pq.query().is_none() {
        return Some(Key::Path(pq.clone()));
    }
    Some(Key::Owned(format!("{service}/{method}").into_boxed_str()))
}

/// A request body counting the call's messages as they pass.
pub struct GrpcRequestBody<B> {
    inner: B,
    call: Arc<GrpcCall>,
    counter: FrameCounter,
}

impl<B: Body<Data = Bytes> + Unpin> Body for GrpcRequestBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = this.counter.inspect(data);
                    this.call.messages(true, n);
                }
                if this.inner.is_end_stream() {
                    let _ = this.call.request_sent.set(Instant::now());
                }
            }
            Poll::Ready(None) => {
                let _ = this.call.request_sent.set(Instant::now());
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

/// A response body counting the call's messages and charging the status of its trailers.
pub struct GrpcResponseBody<B> {
    inner: B,
    call: Arc<GrpcCall>,
    /// Present when the response is gRPC (its messages are counted).
    counter: Option<FrameCounter>,
    from_upstream: bool,
}

impl<B: Body<Data = Bytes> + Unpin> Body for GrpcResponseBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let (Some(data), Some(counter)) = (frame.data_ref(), this.counter.as_mut()) {
                let n = counter.inspect(data);
                this.call.messages(false, n);
            } else if let Some(trailers) = frame.trailers_ref() {
                this.call.charge_status(trailers);
                if this.from_upstream {
                    this.call.charge_upstream_time();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(path: &str) -> Option<String> {
        let uri: http::Uri = path.parse().expect("a path");
        service_and_method(&uri).map(|k| k.as_str().to_string())
    }

    #[test]
    fn paths_resolve_as_envoy_splits_them() {
        assert_eq!(key("/a.B/C").as_deref(), Some("a.B/C"));
        assert_eq!(key("/a.B/C?x=1").as_deref(), Some("a.B/C"));
        assert_eq!(key("//a.B//C/").as_deref(), Some("a.B/C"));
        assert_eq!(key("/a.B"), None);
        assert_eq!(key("/a/b/c"), None);
        assert_eq!(key("/"), None);
    }
}
