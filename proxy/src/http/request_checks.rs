//! What the connection manager checks and normalises on a request before routing: header
//! limits, header names with underscores, the path (escaped slashes, dot segments, repeated
//! slashes), `Expect: 100-continue`, and which upgrades are allowed.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto

use crate::config::hcm::HttpConnectionManager;
use crate::config::hcm_options::{EscapedSlashes, PathHandling, UnderscoreAction};
use crate::http::stats::HcmStats;
use http::{header, HeaderMap, Request, StatusCode};
use std::borrow::Cow;

/// A request refused before routing, with Envoy's status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Local {
        status: StatusCode,
        body: &'static str,
        close: bool,
        /// `%RESPONSE_CODE_DETAILS%`, as Envoy names the cause.
        details: &'static str,
        /// Envoy's codec refuses these while parsing: logged with the DPE flag and without
        /// the request's method, path or headers.
        protocol_error: bool,
    },
    /// `UNESCAPE_AND_REDIRECT`: tell the client the unescaped path.
    Redirect(String),
    /// HTTP/2: Envoy's codec resets the stream instead of answering (header limits,
    /// underscores refused); `details` is its `%RESPONSE_CODE_DETAILS%`.
    Reset { details: &'static str },
}

impl Refusal {
    /// Envoy's HTTP/1 codec refuses these while parsing: `downstream_cx_protocol_error`.
    pub fn is_protocol_error(&self) -> bool {
        matches!(
            self,
            Refusal::Local {
                protocol_error: true,
                ..
            }
        )
    }
}

/// Marks an HTTP/1.1 request whose head carried `Content-Length` beside chunked
/// `Transfer-Encoding` (the connection finds it; hyper drops the length).
#[derive(Debug, Clone, Copy)]
pub struct ContentLengthBesideChunked;

/// Whether the request asks for a protocol upgrade the listener allows (e.g. websocket).
pub fn is_allowed_upgrade(
    hcm: &HttpConnectionManager,
    headers: &HeaderMap,
) -> Result<bool, Refusal> {
    let Some(upgrade) = headers.get(header::UPGRADE) else {
        return Ok(false);
    };
    if !super::connection_tokens::has_token(headers, "upgrade") {
        return Ok(false);
    }
    let kind = upgrade.to_str().unwrap_or("").to_ascii_lowercase();
    if hcm.upgrades.contains(&kind) {
        Ok(true)
    } else {
        // Envoy answers an upgrade it is not configured for with 403 and closes.
        Err(Refusal::Local {
            status: StatusCode::FORBIDDEN,
            body: "",
            close: true,
            details: "upgrade_failed",
            protocol_error: false,
        })
    }
}

/// How many HTTP/2 pseudo-headers a request had (`:method`, `:path`, and `:scheme` and
/// `:authority` when present) and their size, names included.
fn pseudo_headers<B>(request: &Request<B>) -> (usize, usize) {
    let uri = request.uri();
    let path = uri.path_and_query().map_or(0, |p| p.as_str().len());
    let mut count = 2;
    let mut size = ":method".len() + request.method().as_str().len() + ":path".len() + path;
    if let Some(scheme) = uri.scheme_str() {
        count += 1;
        size += ":scheme".len() + scheme.len();
    }
    if let Some(authority) = uri.authority() {
        count += 1;
        size += ":authority".len() + authority.as_str().len();
    }
    (count, size)
}

/// The methods Envoy's HTTP/1 codec parses (http-parser's list, as its Balsa adapter keeps
/// it: `MSEARCH` without the dash). Any other method, lowercase ones included, is a codec
/// error there. Checked with Envoy 1.40.
const HTTP1_METHODS: [&str; 34] = [
    "ACL",
    "BIND",
    "CHECKOUT",
    "CONNECT",
    "COPY",
    "DELETE",
    "GET",
    "HEAD",
    "LINK",
    "LOCK",
    "MERGE",
    "MKACTIVITY",
    "MKCALENDAR",
    "MKCOL",
    "MOVE",
    "MSEARCH",
    "NOTIFY",
    "OPTIONS",
    "PATCH",
    "POST",
    "PROPFIND",
    "PROPPATCH",
    "PURGE",
    "PUT",
    "REBIND",
    "REPORT",
    "SEARCH",
    "SOURCE",
    "SUBSCRIBE",
    "TRACE",
    "UNBIND",
    "UNLINK",
    "UNLOCK",
    "UNSUBSCRIBE",
];

fn is_http1_method(method: &http::Method) -> bool {
    HTTP1_METHODS.contains(&method.as_str())
}

/// Counts what it refuses and drops in `stats` as Envoy's connection manager and codecs do.
pub fn check<B>(
    hcm: &HttpConnectionManager,
    stats: &HcmStats,
    request: &mut Request<B>,
) -> Result<(), Refusal> {
    // Both a length and a transfer coding make the body's end ambiguous (request smuggling):
    // refused, as Envoy does unless `allow_chunked_length` (then the length is dropped, as
    // hyper drops it); a coding other than chunked is not implemented (501).
    if let Some(te) = request.headers().get(header::TRANSFER_ENCODING) {
        let with_length = request.headers().contains_key(header::CONTENT_LENGTH)
            || request
                .extensions()
                .get::<ContentLengthBesideChunked>()
                .is_some();
        if with_length && !hcm.limits.allow_chunked_length {
            return Err(Refusal::Local {
                status: StatusCode::BAD_REQUEST,
                body: "Bad Request",
                close: true,
                details: "http1.content_length_and_chunked_not_allowed",
                protocol_error: true,
            });
        }
        if !te.as_bytes().eq_ignore_ascii_case(b"chunked") {
            return Err(Refusal::Local {
                status: StatusCode::NOT_IMPLEMENTED,
                body: "Not Implemented",
                close: true,
                details: "http1.invalid_transfer_encoding",
                protocol_error: true,
            });
        }
    }
    // Envoy refuses HTTP/1.0 unless `accept_http_10` is set; then a request without a Host
    // takes `default_host_for_http_10`, if any.
    if request.version() == http::Version::HTTP_10 {
        let Some(http_10) = &hcm.limits.http_10 else {
            return Err(Refusal::Local {
                status: StatusCode::UPGRADE_REQUIRED,
                body: "Upgrade Required",
                close: true,
                details: "low_version",
                protocol_error: true,
            });
        };
        if let Some(host) = &http_10.default_host {
            if !request.headers().contains_key(header::HOST) && request.uri().authority().is_none()
            {
                request.headers_mut().insert(header::HOST, host.clone());
            }
        }
    }
    if request.version() < http::Version::HTTP_2 && !is_http1_method(request.method()) {
        return Err(Refusal::Local {
            status: StatusCode::BAD_REQUEST,
            body: "Bad Request",
            close: true,
            details: "http1.codec_error",
            protocol_error: true,
        });
    }
    let limits = &hcm.limits;
    let http2 = request.version() == http::Version::HTTP_2;
    let size: usize = request
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    // On HTTP/2 the pseudo-headers count too, as Envoy's codec sees them.
    let (pseudo_count, pseudo_size) = if http2 {
        pseudo_headers(request)
    } else {
        (0, 0)
    };
    if http2 && request.headers().len() + pseudo_count > limits.max_headers_count {
        return Err(Refusal::Reset {
            details: "http2.too_many_headers",
        });
    }
    if http2 && size + pseudo_size > limits.max_request_headers_bytes {
        return Err(Refusal::Reset {
            details: "http2.header_list_size_too_large",
        });
    }
    if size > limits.max_request_headers_bytes || request.headers().len() > limits.max_headers_count
    {
        return Err(Refusal::Local {
            status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            body: "Request Header Fields Too Large",
            close: true,
            details: "http1.headers_too_large",
            protocol_error: true,
        });
    }
    if limits.headers_with_underscores != UnderscoreAction::Allow {
        let with_underscore: Vec<_> = request
            .headers()
            .keys()
            .filter(|k| k.as_str().contains('_'))
            .cloned()
            .collect();
        if !with_underscore.is_empty() {
            let codec = stats.codec.of(http2);
            if limits.headers_with_underscores == UnderscoreAction::RejectRequest {
                codec.requests_rejected_with_underscores_in_headers.inc();
                if http2 {
                    return Err(Refusal::Reset {
                        details: "http2.unexpected_underscore",
                    });
                }
                return Err(Refusal::Local {
                    status: StatusCode::BAD_REQUEST,
                    body: "Bad Request",
                    close: true,
                    details: "http1.unexpected_underscore",
                    protocol_error: true,
                });
            }
            codec
                .dropped_headers_with_underscores
                .add(with_underscore.len() as u64);
            for name in with_underscore {
                request.headers_mut().remove(name);
            }
        }
    }
    // Outrigger answers `100 Continue` itself (when the body is first read), as Envoy does by
    // default, so the expectation is not forwarded.
    if request
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
    {
        request.headers_mut().remove(header::EXPECT);
    }
    // Only origin-form paths are served (an absolute-form URI arrives here as its path):
    // anything else but CONNECT, such as `OPTIONS *`, is 404 before routing, as in Envoy.
    if request.method() != http::Method::CONNECT && !request.uri().path().starts_with('/') {
        stats.downstream_rq_non_relative_path.inc();
        return Err(Refusal::Local {
            status: StatusCode::NOT_FOUND,
            body: "",
            close: false,
            details: "absolute_path_rejected",
            protocol_error: false,
        });
    }
    let normalized =
        normalize(request.uri().path(), &hcm.paths).map_err(|refusal| match refusal {
            // The redirect keeps the query (Envoy does).
            Refusal::Redirect(path) => {
                stats.downstream_rq_redirected_with_normalized_path.inc();
                match request.uri().query() {
                    Some(q) => Refusal::Redirect(format!("{path}?{q}")),
                    None => Refusal::Redirect(path),
                }
            }
            other => {
                stats.downstream_rq_failed_path_normalization.inc();
                other
            }
        })?;
    if let Some(new_path) = normalized {
        let query = request
            .uri()
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        let mut parts = request.uri().clone().into_parts();
        parts.path_and_query = format!("{new_path}{query}").parse().ok();
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }
    Ok(())
}

/// The normalised path, or None when it stays as it is.
pub fn normalize(path: &str, cfg: &PathHandling) -> Result<Option<String>, Refusal> {
    let mut current = Cow::Borrowed(path);
    if cfg.escaped_slashes != EscapedSlashes::Keep && has_escaped_slash(&current) {
        match cfg.escaped_slashes {
            EscapedSlashes::Reject => {
                return Err(Refusal::Local {
                    status: StatusCode::BAD_REQUEST,
                    body: "",
                    close: true,
                    details: "path_normalization_failed",
                    protocol_error: false,
                })
            }
            EscapedSlashes::UnescapeAndRedirect => {
                return Err(Refusal::Redirect(unescape_slashes(&current)));
            }
            EscapedSlashes::UnescapeAndForward => current = Cow::Owned(unescape_slashes(&current)),
            EscapedSlashes::Keep => {}
        }
    }
    if cfg.normalize {
        // Like Envoy's canonicalisation: `\` is a separator and percent-encoded unreserved
        // characters are decoded before dot segments are resolved.
        if current.contains(['\\', '%']) {
            current = Cow::Owned(decode_unreserved(&current.replace('\\', "/")));
        }
        if let Some(p) = remove_dot_segments(&current) {
            current = Cow::Owned(p);
        }
    }
    if cfg.merge_slashes && current.contains("//") {
        let mut merged = String::with_capacity(current.len());
        for c in current.chars() {
            if !(c == '/' && merged.ends_with('/')) {
                merged.push(c);
            }
        }
        current = Cow::Owned(merged);
    }
    Ok(match current {
        Cow::Borrowed(_) => None,
        Cow::Owned(p) if p == path => None,
        Cow::Owned(p) => Some(p),
    })
}

/// Decodes `%XX` where XX is an unreserved character (RFC 3986 §2.3); others stay encoded.
fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let decoded = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(b) = decoded.filter(|b| b.is_ascii_alphanumeric() || b"-._~".contains(b)) {
                out.push(char::from(b));
                i += 3;
                continue;
            }
        }
        out.push(char::from(bytes[i]));
        i += 1;
    }
    out
}

fn has_escaped_slash(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower.contains("%2f") || lower.contains("%5c")
}

fn unescape_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3).unwrap_or("");
        if code.eq_ignore_ascii_case("2f") {
            out.push('/');
            rest = &rest[i + 3..];
        } else if code.eq_ignore_ascii_case("5c") {
            out.push('\\');
            rest = &rest[i + 3..];
        } else {
            out.push('%');
            rest = &rest[i + 1..];
        }
    }
    out.push_str(rest);
    out
}

/// RFC 3986 §5.2.4, on an absolute path; None when there is nothing to remove.
fn remove_dot_segments(path: &str) -> Option<String> {
    let has_dots = path.split('/').any(|s| s == "." || s == "..");
    if !has_dots {
        return None;
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    Some(format!("/{}", out.join("/")))
}

/// The outcome of a refused request: Envoy's local reply (or stream reset) and the details
/// and flags its access log shows.
pub fn refused(refusal: Refusal, server: &http::HeaderValue) -> super::router::Outcome {
    let mut info = crate::format::StreamInfo::default();
    let response = match refusal {
        Refusal::Local {
            status,
            body,
            close,
            details,
            protocol_error,
        } => {
            let mut response = super::local_reply::local_reply(status, body, server);
            if close {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
            }
            info.response_code_details = Some(details.into());
            if protocol_error {
                info.response_flags =
                    crate::format::ResponseFlags::named("DPE").unwrap_or_default();
            }
            response
        }
        Refusal::Reset { details } => {
            info.response_code_details = Some(details.into());
            info.response_flags = crate::format::ResponseFlags::named("DR").unwrap_or_default();
            let mut response = super::local_reply::local_reply(
                StatusCode::BAD_REQUEST,
                bytes::Bytes::new(),
                server,
            );
            response.extensions_mut().insert(super::router::ResetStream);
            response
        }
        Refusal::Redirect(location) => {
            let mut response = super::local_reply::local_reply(
                StatusCode::TEMPORARY_REDIRECT,
                bytes::Bytes::new(),
                server,
            );
            if let Ok(v) = http::HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, v);
            }
            response
        }
    };
    super::router::Outcome {
        response,
        flag: None,
        upstream: None,
        info,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handling(normalize: bool, merge: bool, escaped: EscapedSlashes) -> PathHandling {
        PathHandling {
            normalize,
            merge_slashes: merge,
            escaped_slashes: escaped,
        }
    }

    #[test]
    fn paths_normalise_like_rfc_3986_and_envoy() {
        let all = handling(true, true, EscapedSlashes::Keep);
        assert_eq!(normalize("/a/../b/./c//d", &all), Ok(Some("/b/c/d".into())));
        assert_eq!(normalize("/a/b/..", &all), Ok(Some("/a/".into())));
        assert_eq!(normalize("/../../x", &all), Ok(Some("/x".into())));
        assert_eq!(normalize("/plain/path", &all), Ok(None));
        let off = handling(false, false, EscapedSlashes::Keep);
        assert_eq!(normalize("/a/../b//c", &off), Ok(None));
    }

    #[test]
    fn escaped_slashes_follow_the_configured_action() {
        let path = "/a%2Fb%5cc";
        assert!(
            matches!(normalize(path, &handling(false, false, EscapedSlashes::Reject)), Err(Refusal::Local { status, .. }) if status == StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            normalize(
                path,
                &handling(false, false, EscapedSlashes::UnescapeAndForward)
            ),
            Ok(Some("/a/b\\c".into()))
        );
        assert_eq!(
            normalize(
                path,
                &handling(false, false, EscapedSlashes::UnescapeAndRedirect)
            ),
            Err(Refusal::Redirect("/a/b\\c".into()))
        );
        assert_eq!(
            normalize(path, &handling(false, false, EscapedSlashes::Keep)),
            Ok(None)
        );
    }
}
