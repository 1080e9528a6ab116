//! Response compression: the gzip compressor filters of a connection manager. On the way in
//! each filter notes the request's `Accept-Encoding` (and may remove it); on the way out, in
//! reverse chain order, each decides as Envoy does whether the response may be compressed
//! (content length, content type, `Cache-Control: no-transform`, ETag, an existing
//! `Content-Encoding`, the status), adds `Vary: Accept-Encoding` to compressible responses,
//! negotiates the encoding with the client's q-values, and streams the body through gzip,
//! flushing at every data frame so streamed responses keep flowing.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/compressor_filter

use super::router::{BoxError, ResponseBody};
use crate::config::compressor::{media_type, GzipCompressor};
use crate::stats::{Counter, Store};
use bytes::Bytes;
use flate2::write::GzEncoder;
use http::{header, HeaderMap, HeaderValue, Response};
use http_body::{Body, Frame, SizeHint};
use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

static GZIP: HeaderValue = HeaderValue::from_static("gzip");

/// `http.<stat_prefix>.compressor.<library name>.gzip.*`
#[derive(Debug)]
struct Stats {
    header_compressor_used: Arc<Counter>,
    header_identity: Arc<Counter>,
    header_not_valid: Arc<Counter>,
    header_wildcard: Arc<Counter>,
    no_accept_header: Arc<Counter>,
    not_compressed_etag: Arc<Counter>,
    request_not_compressed: Arc<Counter>,
    compressed: Arc<Counter>,
    content_length_too_small: Arc<Counter>,
    not_compressed: Arc<Counter>,
    total_compressed_bytes: Arc<Counter>,
    total_uncompressed_bytes: Arc<Counter>,
}

impl Stats {
    fn new(store: &Store, prefix: &str) -> Self {
        let c = |s: &str| store.counter(&format!("{prefix}{s}"));
        // Envoy creates the request-direction stats too, though request compression is off;
        // and a compressor is overshadowed only by one of another encoding, which a chain of
        // gzip compressors never has.
        for unused in [
            "header_compressor_overshadowed",
            "request.compressed",
            "request.content_length_too_small",
            "request.total_compressed_bytes",
            "request.total_uncompressed_bytes",
        ] {
            c(unused);
        }
        Self {
            header_compressor_used: c("header_compressor_used"),
            header_identity: c("header_identity"),
            header_not_valid: c("header_not_valid"),
            header_wildcard: c("header_wildcard"),
            no_accept_header: c("no_accept_header"),
            not_compressed_etag: c("not_compressed_etag"),
            request_not_compressed: c("request.not_compressed"),
            compressed: c("response.compressed"),
            content_length_too_small: c("response.content_length_too_small"),
            not_compressed: c("response.not_compressed"),
            total_compressed_bytes: c("response.total_compressed_bytes"),
            total_uncompressed_bytes: c("response.total_uncompressed_bytes"),
        }
    }
}

#[derive(Debug)]
struct Filter {
    config: GzipCompressor,
    stats: Arc<Stats>,
}

/// The gzip compressor filters of one connection manager, in chain order.
#[derive(Debug, Default)]
pub struct Compressors {
    filters: Vec<Filter>,
}

/// What the request said, per filter: the `Accept-Encoding` each one saw.
pub struct Accepted(Vec<Option<HeaderValue>>);

impl Compressors {
    pub fn new(configs: &[GzipCompressor], store: &Store, stat_prefix: &str) -> Self {
        Self {
            filters: configs
                .iter()
                .map(|config| Filter {
                    stats: Arc::new(Stats::new(
                        store,
                        &format!(
                            "http.{stat_prefix}.compressor.{}.gzip.",
                            config.library_name
                        ),
                    )),
                    config: config.clone(),
                })
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// The request passes the filters: each notes `Accept-Encoding`, and removes it when told
    /// to (so a filter later in the chain sees none).
    pub fn on_request(&self, headers: &mut HeaderMap) -> Accepted {
        Accepted(
            self.filters
                .iter()
                .map(|f| {
                    f.stats.request_not_compressed.inc();
                    let seen = headers.get(header::ACCEPT_ENCODING).cloned();
                    if f.config.remove_accept_encoding {
                        headers.remove(header::ACCEPT_ENCODING);
                    }
                    seen
                })
                .collect(),
        )
    }

    /// The response passes the filters in reverse order; the one that compresses wraps the
    /// body. `no_body`: the response ends with its headers (HEAD, or an empty body).
    pub fn on_response(
        &self,
        accepted: &Accepted,
        response: &mut Response<ResponseBody>,
        no_body: bool,
    ) {
        for (i, f) in self.filters.iter().enumerate().rev() {
            let accept = accepted.0.get(i).and_then(Option::as_ref);
            // Envoy's order of checks, which decides which stats count a response: the
            // length first; the client's encodings only for a response with a body; the
            // remaining properties of the response in any case.
            let length = declared_length(response);
            let big_enough = big_enough(&f.config, &f.stats, length);
            let negotiated =
                !no_body && big_enough && self.accepts_this(i, accept, response.headers());
            let compressible = big_enough && compressible(&f.config, &f.stats, response.headers());
            if compressible {
                append_vary(response.headers_mut());
            }
            let compress = !no_body
                && negotiated
                && compressible
                && !f
                    .config
                    .uncompressible_statuses
                    .contains(&response.status().as_u16());
            if !compress {
                f.stats.not_compressed.inc();
                continue;
            }
            f.stats.compressed.inc();
            let headers = response.headers_mut();
            weaken_or_drop_etag(headers, f.config.weaken_etag);
            headers.remove(header::CONTENT_LENGTH);
            headers.insert(header::CONTENT_ENCODING, GZIP.clone());
            let body = std::mem::replace(response.body_mut(), super::router::empty_body());
            *response.body_mut() = http_body_util::BodyExt::boxed_unsync(Gzipped::new(
                body,
                f.config.level,
                f.stats.clone(),
            ));
        }
    }

    /// Envoy's negotiation: among the encodings the client accepts with q > 0 and the chain
    /// can produce for this content type (plus `identity` and `*`), the one with the highest
    /// q wins, the first listed on a tie. Every compressor here produces gzip, so when gzip
    /// (or `*`) wins, each filter takes it as its own: the one nearest the upstream
    /// compresses and the others then find the response encoded. Counts the outcome in
    /// filter `i`'s stats; true when filter `i` may compress.
    fn accepts_this(&self, i: usize, accept: Option<&HeaderValue>, headers: &HeaderMap) -> bool {
        let stats = &self.filters[i].stats;
        let Some(accept) = accept else {
            stats.no_accept_header.inc();
            return false;
        };
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(media_type);
        // Whether any compressor of the chain takes this content type.
        let mut gzip_allowed = self.filters.iter().any(|f| {
            content_type
                .as_deref()
                .is_none_or(|t| f.config.content_types.allows(t))
        });
        let mut pairs: Vec<(String, f32)> = Vec::new();
        for token in accept.to_str().unwrap_or("").split(',') {
            let mut parts = token.splitn(2, ';');
            let name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            if name.is_empty() {
                continue;
            }
            let mut q = 1.0f32;
            if let Some(params) = parts.next() {
                if let Some((key, value)) = params.split_once('=') {
                    if key.trim().eq_ignore_ascii_case("q") {
                        match value.trim().parse::<f32>() {
                            Ok(v) => q = v,
                            Err(_) => continue,
                        }
                    }
                }
            }
            if q == 0.0 && name == "gzip" {
                gzip_allowed = false;
            }
            pairs.push((name, q));
        }
        if pairs.is_empty() || !gzip_allowed {
            stats.header_not_valid.inc();
            return false;
        }
        let mut choice: (&str, f32) = ("identity", 0.0);
        for (name, q) in &pairs {
            if *q > choice.1 && matches!(name.as_str(), "gzip" | "identity" | "*") {
                choice = (name, *q);
            }
        }
        match choice {
            (_, 0.0) => {
                stats.header_not_valid.inc();
                false
            }
            ("identity", _) => {
                stats.header_identity.inc();
                false
            }
            ("*", _) => {
                stats.header_wildcard.inc();
                true
            }
            _ => {
                stats.header_compressor_used.inc();
                true
            }
        }
    }
}

/// The response's length as its headers declare it: `Content-Length`, or for a body held in
/// memory (a local reply), its size. None for a streamed or empty body, which Envoy sees
/// without a length.
fn declared_length(response: &Response<ResponseBody>) -> Option<u64> {
    response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .or_else(|| response.body().size_hint().exact().filter(|n| *n > 0))
}

/// Whether compression is on and the body long enough (a body of unknown length is).
fn big_enough(config: &GzipCompressor, stats: &Stats, length: Option<u64>) -> bool {
    if !config.enabled {
        return false;
    }
    if length.is_some_and(|n| n < config.min_content_length) {
        stats.content_length_too_small.inc();
        return false;
    }
    true
}

/// Whether the response's properties allow compressing it, counting why not where Envoy does.
fn compressible(config: &GzipCompressor, stats: &Stats, headers: &HeaderMap) -> bool {
    if headers.contains_key(header::UPGRADE) {
        return false;
    }
    if let Some(t) = headers.get(header::CONTENT_TYPE) {
        let t = media_type(t.to_str().unwrap_or(""));
        if !config.content_types.allows(&t) {
            return false;
        }
    }
    let no_transform = headers.get_all(header::CACHE_CONTROL).iter().any(|v| {
        v.to_str()
            .unwrap_or("")
            .split(',')
            .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
    });
    if no_transform {
        return false;
    }
    if config.disable_on_etag && !config.weaken_etag && headers.contains_key(header::ETAG) {
        stats.not_compressed_etag.inc();
        return false;
    }
    !headers.contains_key(header::CONTENT_ENCODING)
}

fn append_vary(headers: &mut HeaderMap) {
    let present = headers.get_all(header::VARY).iter().any(|v| {
        v.to_str()
            .unwrap_or("")
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("accept-encoding"))
    });
    if present {
        return;
    }
    match headers.get(header::VARY).and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.is_empty() => {
            if let Ok(v) = HeaderValue::from_str(&format!("{existing}, Accept-Encoding")) {
                headers.insert(header::VARY, v);
            }
        }
        _ => {
            headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        }
    }
}

/// A strong ETag no longer describes the compressed bytes: it is weakened (`W/`) when the
/// config says so, else removed; a weak one stays.
fn weaken_or_drop_etag(headers: &mut HeaderMap, weaken: bool) {
    let Some(etag) = headers.get(header::ETAG) else {
        return;
    };
    if etag.as_bytes().starts_with(b"W/") {
        return;
    }
    if weaken {
        let mut weak = b"W/".to_vec();
        weak.extend_from_slice(etag.as_bytes());
        if let Ok(v) = HeaderValue::from_bytes(&weak) {
            headers.insert(header::ETAG, v);
            return;
        }
    }
    headers.remove(header::ETAG);
}

/// A body streamed through gzip.
struct Gzipped {
    inner: ResponseBody,
    encoder: Option<GzEncoder<Vec<u8>>>,
    stats: Arc<Stats>,
    /// Trailers read after the last data, sent after the gzip trailer.
    trailers: Option<Frame<Bytes>>,
}

impl Gzipped {
    fn new(inner: ResponseBody, level: u32, stats: Arc<Stats>) -> Self {
        Self {
            inner,
            encoder: Some(GzEncoder::new(Vec::new(), flate2::Compression::new(level))),
            stats,
            trailers: None,
        }
    }

    /// Everything the encoder has produced so far.
    fn take_output(&mut self) -> Bytes {
        let out = self
            .encoder
            .as_mut()
            .map(|e| std::mem::take(e.get_mut()))
            .unwrap_or_default();
        self.stats.total_compressed_bytes.add(out.len() as u64);
        Bytes::from(out)
    }

    /// Ends the gzip stream: its last bytes.
    fn finish(&mut self) -> Result<Bytes, BoxError> {
        let Some(encoder) = self.encoder.take() else {
            return Ok(Bytes::new());
        };
        let out = encoder.finish()?;
        self.stats.total_compressed_bytes.add(out.len() as u64);
        Ok(Bytes::from(out))
    }
}

impl Body for Gzipped {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if this.encoder.is_none() {
                return Poll::Ready(this.trailers.take().map(Ok));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.stats.total_uncompressed_bytes.add(data.len() as u64);
                        // The last data is finished rather than flushed, as Envoy does.
                        let last = this.inner.is_end_stream();
                        if let Some(encoder) = this.encoder.as_mut() {
                            let written = encoder.write_all(&data);
                            let written = if last {
                                written
                            } else {
                                written.and_then(|()| encoder.flush())
                            };
                            if let Err(e) = written {
                                return Poll::Ready(Some(Err(e.into())));
                            }
                        }
                        if last {
                            return Poll::Ready(Some(this.finish().map(Frame::data)));
                        }
                        let out = this.take_output();
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(trailers) => {
                        this.trailers = Some(trailers);
                        return Poll::Ready(Some(this.finish().map(Frame::data)));
                    }
                },
                Poll::Ready(None) => {
                    return Poll::Ready(Some(this.finish().map(Frame::data)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.encoder.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
