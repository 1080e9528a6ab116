//! Request mirroring (`request_mirror_policies`): a copy of the request goes to another
//! cluster, fire and forget — its answer is dropped, and it never delays or fails the request
//! itself. The copy's host gets `-shadow` appended unless the policy says not to. Its body
//! streams alongside the original: what the shadow has not taken yet is held up to the
//! route's buffer limit; past it (a slow shadow, a large body) the copy is abandoned
//! (`retry_or_shadow_abandoned`, as Envoy counts it) and the original goes on untouched.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#envoy-v3-api-msg-config-route-v3-routeaction-requestmirrorpolicy

use super::connection::HttpContext;
use super::forward::Target;
use super::router::BoxError;
use super::upstream_request::{copy_head, upstream_request};
use crate::config::cluster::UpstreamProtocol;
use crate::config::route_action::MirrorTarget;
use crate::stats::responses::Origin;
use crate::stats::Counter;
use crate::upstream::{ClusterRuntime, UpstreamBody};
use bytes::Bytes;
use http::{header, HeaderValue, Request};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;

static X_ENVOY_INTERNAL: http::HeaderName = http::HeaderName::from_static("x-envoy-internal");
static X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

/// What the shadow's body channel carries: a frame, or the clean end of the body.
enum Item {
    Frame(Frame<Bytes>),
    End,
}

/// Starts the shadows the route's mirror policies draw for this request and returns the body
/// to send to the route's own cluster (the original, or a tee feeding the shadows).
pub fn start(
    ctx: &HttpContext,
    target: &Target<'_>,
    head: &http::request::Parts,
    body: UpstreamBody,
    timeout: Option<Duration>,
    abandoned: Arc<Counter>,
) -> UpstreamBody {
    let has_body = !body.is_end_stream();
    let mut feeds = Vec::new();
    for m in &target.forward.mirrors {
        if m.per_million
            .is_some_and(|p| crate::random::below(1_000_000) >= p)
        {
            continue;
        }
        let cluster = match &m.target {
            MirrorTarget::Named(c) => c.current(),
            MirrorTarget::Header(name) => head
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|c| ctx.clusters.by_name(c)),
        };
        let Some(cluster) = cluster else {
            continue;
        };
        let Some(host) = cluster.choose_host(None, Some(&head.headers), None) else {
            continue;
        };
        let (shadow_body, feed) = if has_body {
            let (tx, rx) = mpsc::unbounded_channel();
            let held = Arc::new(AtomicUsize::new(0));
            let body = ShadowBody {
                rx,
                held: held.clone(),
                ended: false,
            };
            (body.boxed_unsync(), Some(Feed { tx, held }))
        } else {
            (super::router::empty_body(), None)
        };
        let Some(mut request) = upstream_request(
            copy_head(head),
            shadow_body,
            target,
            &host.hostname,
            host.authority.as_str(),
            timeout,
            1,
        ) else {
            continue;
        };
        if !m.keep_host {
            shadow_host(&mut request);
        }
        internal(&mut request, target.info.downstream.node_address);
        feeds.extend(feed);
        let use_h2 = match cluster.config.protocol {
            // An `auto_config` cluster's pool learns the protocol from each connection's ALPN.
            UpstreamProtocol::Http1 | UpstreamProtocol::Auto => false,
            UpstreamProtocol::Http2 => true,
            UpstreamProtocol::UseDownstream => head.version == http::Version::HTTP_2,
        };
        tokio::spawn(send(cluster, host, request, use_h2, timeout));
    }
    if feeds.is_empty() {
        return body;
    }
    Tee {
        inner: body,
        feeds,
        limit: target.forward.buffer_limit,
        abandoned,
    }
    .boxed_unsync()
}

/// Sends the copy and drops whatever comes back; counted in the shadow cluster's stats.
async fn send(
    cluster: Arc<ClusterRuntime>,
    host: Arc<crate::upstream::Host>,
    request: Request<UpstreamBody>,
    use_h2: bool,
    timeout: Option<Duration>,
) {
    // A copy is a request of its own, outside the filter chain: no istio.alpn offer.
    let send = cluster.pool.send(
        &host,
        request,
        use_h2,
        crate::config::circuit_breakers::Priority::Default,
        Default::default(),
    );
    let result = match timeout {
        Some(t) => tokio::time::timeout(t, send).await.ok(),
        None => Some(send.await),
    };
    match result {
        Some(Ok(response)) => {
            // A shadow goes out marked internal (see `internal` below).
            cluster
                .stats
                .responses
                .completed(response.status(), Origin::Internal);
            // Read to the end, so the connection can serve again.
            let _ = response.into_body().collect().await;
        }
        Some(Err(e)) => tracing::debug!(target: "router", "shadow request failed: {e:?}"),
        None => tracing::debug!(target: "router", "shadow request timed out"),
    }
}

/// Envoy sends a copy from within, as its own request: marked internal, with this host's
/// address appended to `x-forwarded-for` (checked against Envoy 1.40).
fn internal(request: &mut Request<UpstreamBody>, node_address: Option<std::net::IpAddr>) {
    let headers = request.headers_mut();
    headers.insert(X_ENVOY_INTERNAL.clone(), HeaderValue::from_static("true"));
    let Some(ip) = node_address else {
        return;
    };
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.is_empty() => format!("{existing},{ip}"),
        _ => ip.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
}

/// `host` → `host-shadow`, `host:port` → `host-shadow:port`, in the URI and `Host`.
fn shadow_host(request: &mut Request<UpstreamBody>) {
    let Some(authority) = request.uri().authority().map(|a| a.as_str().to_string()) else {
        return;
    };
    let shadow = match authority.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{host}-shadow:{port}")
        }
        _ => format!("{authority}-shadow"),
    };
    let mut parts = request.uri().clone().into_parts();
    let Ok(new_authority) = shadow.parse() else {
        return;
    };
    parts.authority = Some(new_authority);
    if let Ok(uri) = http::Uri::from_parts(parts) {
        *request.uri_mut() = uri;
    }
    if let Ok(v) = HeaderValue::from_str(&shadow) {
        request.headers_mut().insert(header::HOST, v);
    }
}

/// One shadow's end of the tee: its channel and the bytes sent it has not taken yet.
struct Feed {
    tx: mpsc::UnboundedSender<Item>,
    held: Arc<AtomicUsize>,
}

/// The original body, copying each frame to the shadows as it passes.
struct Tee {
    inner: UpstreamBody,
    feeds: Vec<Feed>,
    limit: usize,
    abandoned: Arc<Counter>,
}

impl Tee {
    /// Offers `item` to every shadow; one that would hold more than the limit, or has gone,
    /// is dropped (its body then fails, so the copy never looks complete).
    fn offer(&mut self, item: impl Fn() -> Item, len: usize) {
        let limit = self.limit;
        let abandoned = &self.abandoned;
        self.feeds.retain(|f| {
            if f.held.load(Ordering::Acquire) + len > limit {
                abandoned.inc();
                return false;
            }
            f.held.fetch_add(len, Ordering::AcqRel);
            f.tx.send(item()).is_ok()
        });
    }
}

impl Body for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let data = data.clone();
                    let len = data.len();
                    this.offer(|| Item::Frame(Frame::data(data.clone())), len);
                } else if let Some(trailers) = frame.trailers_ref() {
                    let trailers = trailers.clone();
                    this.offer(|| Item::Frame(Frame::trailers(trailers.clone())), 0);
                }
                if this.inner.is_end_stream() {
                    this.offer(|| Item::End, 0);
                    this.feeds.clear();
                }
            }
            Poll::Ready(None) => {
                this.offer(|| Item::End, 0);
                this.feeds.clear();
            }
            // A failed original fails the copies (their senders go without an end).
            Poll::Ready(Some(Err(_))) => this.feeds.clear(),
            Poll::Pending => {}
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

/// The shadow's request body: what the tee sent, ending cleanly only on its end marker.
struct ShadowBody {
    rx: mpsc::UnboundedReceiver<Item>,
    held: Arc<AtomicUsize>,
    ended: bool,
}

impl Body for ShadowBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(Item::Frame(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.held.fetch_sub(data.len(), Ordering::AcqRel);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Item::End)) => {
                this.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(None) => Poll::Ready(Some(Err(
                "the shadow's copy of the body was abandoned".into(),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}
