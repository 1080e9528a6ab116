//! A sampled request's span: the request's tags taken when it starts, the response's when it
//! ends (its body sent in full or abandoned), then handed to the reporter. Only sampled
//! requests get here, so the strings it keeps cost nothing to the rest.

use super::b3::Context;
use super::zipkin::{FinishedSpan, Reporter};
use crate::config::route::Route;
use crate::config::tracing::{CustomTag, HcmTracing, TagValue};
use crate::http::router::{BoxError, ResponseBody};
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Instant, SystemTime};

static X_ENVOY_DOWNSTREAM_SERVICE_CLUSTER: http::HeaderName =
    http::HeaderName::from_static("x-envoy-downstream-service-cluster");

/// What the span reads of the request when it starts.
pub struct RequestFacts<'a> {
    pub host: &'a str,
    pub method: &'a http::Method,
    pub path_and_query: &'a str,
    pub version: http::Version,
    pub peer: Option<IpAddr>,
    pub local_address: Option<IpAddr>,
    pub start: SystemTime,
}

/// A span in progress.
#[derive(Debug)]
pub struct ActiveSpan {
    span: FinishedSpan,
    reporter: Arc<Reporter>,
    started: Instant,
    pub upstream_cluster: Option<(Arc<str>, Option<Arc<str>>)>,
    /// Metadata tags, read once the connection manager's filters have run.
    metadata_tags: Vec<MetadataTag>,
}

/// A custom tag whose value comes from the stream's dynamic metadata.
#[derive(Debug)]
struct MetadataTag {
    tag: Arc<str>,
    filter: String,
    path: Vec<String>,
    default: String,
}

fn header(headers: &HeaderMap, name: impl http::header::AsHeaderName) -> Option<String> {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

impl ActiveSpan {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        config: &HcmTracing,
        route: Option<&Route>,
        reporter: Arc<Reporter>,
        ctx: Context,
        shared: bool,
        name: String,
        headers: &HeaderMap,
        r: RequestFacts<'_>,
    ) -> Self {
        let scheme = headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("http");
        // Envoy bounds the path part of `http.url` (`max_path_tag_length`), query included.
        let mut path = r.path_and_query;
        if path.len() > config.max_path_tag_length {
            let mut end = config.max_path_tag_length;
            while !path.is_char_boundary(end) {
                end -= 1;
            }
            path = &path[..end];
        }
        let protocol = match r.version {
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_2 => "HTTP/2",
            _ => "HTTP/1.1",
        };
        let mut tags: Vec<(&'static str, String)> = vec![
            ("component", "proxy".into()),
            ("node_id", config.node.id.clone()),
            ("http.url", format!("{scheme}://{}{path}", r.host)),
            ("http.method", r.method.as_str().into()),
            ("http.protocol", protocol.into()),
            (
                "downstream_cluster",
                header(headers, &X_ENVOY_DOWNSTREAM_SERVICE_CLUSTER).unwrap_or_else(|| "-".into()),
            ),
            (
                "user_agent",
                header(headers, http::header::USER_AGENT).unwrap_or_else(|| "-".into()),
            ),
        ];
        // Envoy tags the zone only when the node has one.
        if !config.node.zone.is_empty() {
            tags.push(("zone", config.node.zone.clone()));
        }
        if let Some(peer) = r.peer {
            tags.push(("peer.address", peer.to_string()));
        }
        if let Some(id) = header(headers, &crate::http::forwarding::X_REQUEST_ID) {
            tags.push(("guid:x-request-id", id));
        }
        if let Some(id) = header(headers, "x-client-trace-id") {
            tags.push(("guid:x-client-trace-id", id));
        }
        let mut custom = Vec::new();
        let mut metadata_tags = Vec::new();
        let route_tags = route
            .and_then(|r| r.tracing.as_deref())
            .and_then(|t| t.sampling.as_ref())
            .map(|s| s.custom_tags.as_slice())
            .unwrap_or(&[]);
        // A route's tag replaces the connection manager's of the same name.
        for t in config
            .custom_tags
            .iter()
            .filter(|t| !route_tags.iter().any(|r| r.tag == t.tag))
            .chain(route_tags)
        {
            let tag = Arc::from(t.tag.as_str());
            match &t.value {
                TagValue::RequestMetadata {
                    filter,
                    path,
                    default,
                } => metadata_tags.push(MetadataTag {
                    tag,
                    filter: filter.clone(),
                    path: path.clone(),
                    default: default.clone(),
                }),
                _ => custom.extend(custom_value(t, headers).map(|v| (tag, v))),
            }
        }
        let start_us = r
            .start
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        Self {
            span: FinishedSpan {
                trace_high: ctx.trace_high,
                trace: ctx.trace,
                id: ctx.span,
                parent: ctx.parent,
                name,
                server: !config.egress,
                shared,
                start_us,
                duration_us: 0,
                local_address: r.local_address,
                service_name: Arc::from(config.node.cluster.as_str()),
                tags,
                custom,
            },
            reporter,
            started: Instant::now(),
            upstream_cluster: None,
            metadata_tags,
        }
    }

    /// Resolves the metadata tags once the filters have written what they write (the JWT
    /// filters' payloads, the RBAC filters' results). A missing value takes the tag's default;
    /// without one, the tag is left out (Envoy's rule).
    pub fn on_metadata(&mut self, metadata: &crate::metadata::DynamicMetadata) {
        for t in self.metadata_tags.drain(..) {
            let value = match metadata.value(&t.filter, &t.path) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => t.default,
            };
            if !value.is_empty() {
                self.span.custom.push((t.tag, value));
            }
        }
    }

    /// The response's tags; the span is reported when `TracedBody` ends.
    pub fn on_response(&mut self, status: Option<http::StatusCode>, flags: String) {
        let tags = &mut self.span.tags;
        match status {
            Some(s) => tags.push(("http.status_code", s.as_u16().to_string())),
            None => tags.push(("http.status_code", "0".into())),
        }
        if status.is_none_or(|s| s.is_server_error()) {
            tags.push(("error", "true".into()));
        }
        tags.push(("response_flags", flags));
        if let Some((name, alt)) = self.upstream_cluster.take() {
            tags.push(("upstream_cluster", name.to_string()));
            tags.push((
                "upstream_cluster.name",
                alt.as_deref().unwrap_or(&name).to_string(),
            ));
        }
    }

    fn finish(mut self, request_size: u64, response_size: u64) {
        self.span.duration_us = self.started.elapsed().as_micros() as u64;
        self.span
            .tags
            .push(("request_size", request_size.to_string()));
        self.span
            .tags
            .push(("response_size", response_size.to_string()));
        self.reporter.report(self.span);
    }
}

/// A literal, environment or header tag's value; None when it is empty (Envoy sets no
/// tag with an empty value).
fn custom_value(tag: &CustomTag, headers: &HeaderMap) -> Option<String> {
    let value = match &tag.value {
        TagValue::Fixed(v) => v.clone(),
        TagValue::RequestHeader { name, default } => {
            header(headers, name).unwrap_or_else(|| default.clone())
        }
        TagValue::RequestMetadata { .. } => return None,
    };
    (!value.is_empty()).then_some(value)
}

/// A response body that counts what it sends and reports the span when it is dropped.
pub struct TracedBody {
    inner: ResponseBody,
    span: Option<Box<ActiveSpan>>,
    request: Arc<crate::http::stream_timeouts::StreamProgress>,
    sent: u64,
}

impl TracedBody {
    pub fn new(
        inner: ResponseBody,
        span: Box<ActiveSpan>,
        request: Arc<crate::http::stream_timeouts::StreamProgress>,
    ) -> Self {
        Self {
            inner,
            span: Some(span),
            request,
            sent: 0,
        }
    }
}

impl Drop for TracedBody {
    fn drop(&mut self) {
        if let Some(span) = self.span.take() {
            span.finish(self.request.bytes(), self.sent);
        }
    }
}

impl Body for TracedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.sent += data.len() as u64;
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
