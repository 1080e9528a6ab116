//! The `envoy.filters.listener.http_inspector` listener filter: on a plaintext connection it
//! peeks at the first bytes and reports `h2c` (the HTTP/2 prior-knowledge preface), `http/1.1`
//! or `http/1.0` (a request line) as the connection's application protocol, so that filter
//! chains can tell HTTP from other TCP traffic by `application_protocols`.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/listeners/listener_filters/http_inspector
//!
//! The verdicts follow Envoy 1.40 as observed on the wire: the request line is judged the way
//! its HTTP/1 parser (Balsa, custom methods allowed) judges it, and only the first 16 KiB are
//! ever examined: a longer first line leaves the filter waiting until the listener filter
//! timeout, without counting anything.

use super::peek::{peek_until, Peeked};
use crate::stats::{Counter, Store};
use std::sync::Arc;
use tokio::net::TcpStream;

/// The HTTP/2 connection preface a prior-knowledge client opens with (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The most bytes Envoy 1.40 examines (checked: a request line ending at byte 16384 is found,
/// one byte longer is not).
const WINDOW: usize = 16 * 1024;

/// What the inspector concluded from the first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Http10,
    Http11,
    /// The HTTP/2 preface, without TLS.
    H2c,
    NotHttp,
}

impl Verdict {
    /// The application protocol filter chains match on; None when the bytes are not HTTP.
    pub fn alpn(self) -> Option<&'static str> {
        match self {
            Verdict::Http10 => Some("http/1.0"),
            Verdict::Http11 => Some("http/1.1"),
            Verdict::H2c => Some("h2c"),
            Verdict::NotHttp => None,
        }
    }
}

/// `http_inspector.*`: Envoy roots them at the top of the stats tree, shared by every listener
/// that has the filter.
#[derive(Debug)]
pub struct HttpInspectorStats {
    /// Registered for parity; Envoy 1.40 counts it only for a request line longer than its
    /// 64 KiB limit, which its 16 KiB window never lets it reach.
    pub read_error: Arc<Counter>,
    pub http10_found: Arc<Counter>,
    pub http11_found: Arc<Counter>,
    pub http2_found: Arc<Counter>,
    pub http_not_found: Arc<Counter>,
}

impl HttpInspectorStats {
    pub fn new(store: &Store) -> Self {
        Self {
            read_error: store.counter("http_inspector.read_error"),
            http10_found: store.counter("http_inspector.http10_found"),
            http11_found: store.counter("http_inspector.http11_found"),
            http2_found: store.counter("http_inspector.http2_found"),
            http_not_found: store.counter("http_inspector.http_not_found"),
        }
    }

    fn count(&self, verdict: Verdict) {
        match verdict {
            Verdict::Http10 => &self.http10_found,
            Verdict::Http11 => &self.http11_found,
            Verdict::H2c => &self.http2_found,
            Verdict::NotHttp => &self.http_not_found,
        }
        .inc();
    }
}

/// Peeks at `stream` until the first bytes say whether it is HTTP, and counts the verdict.
/// None when the client closes first. Without a verdict in the first 16 KiB it waits (for the
/// caller's `listener_filters_timeout`), as Envoy does.
pub async fn inspect(stream: &TcpStream, stats: &HttpInspectorStats) -> Option<Verdict> {
    match peek_until(stream, WINDOW, parse).await {
        Peeked::Decided(verdict) => {
            stats.count(verdict);
            Some(verdict)
        }
        Peeked::Exhausted => std::future::pending().await,
        Peeked::Closed => None,
    }
}

/// The verdict on a connection's first bytes, or None while they could still become either.
pub fn parse(bytes: &[u8]) -> Option<Verdict> {
    let n = bytes.len().min(PREFACE.len());
    if bytes[..n] == PREFACE[..n] {
        return (n == PREFACE.len()).then_some(Verdict::H2c);
    }
    // An empty first line is not a request (Envoy does not skip leading blank lines here).
    if matches!(bytes[0], b'\r' | b'\n') {
        return Some(Verdict::NotHttp);
    }
    let end = bytes.iter().position(|&b| b == b'\n')?;
    Some(request_line(&bytes[..end]))
}

/// Balsa's word separator in a first line: any byte up to and including the space (so a
/// stray CR or control byte separates too).
fn is_space(b: u8) -> bool {
    b <= b' '
}

/// `method SP request-target SP version`, judged as Envoy's HTTP/1 parser does: any token
/// method, a target as http-parser accepted it, and a version `HTTP/d.d` or none (HTTP/0.9);
/// everything after the target is the version. HTTP/1.1 when the line ends in `HTTP/1.1`,
/// otherwise HTTP/1.0 (Envoy's rule for every other version).
fn request_line(line: &[u8]) -> Verdict {
    let line = trim_end(line);
    let (method, rest) = word(line);
    let (target, rest) = word(trim_start(rest));
    let version = trim_start(rest);
    let valid = !method.is_empty()
        && method.iter().all(|&b| is_tchar(b))
        && is_valid_target(target, method == b"CONNECT")
        && is_valid_version(version);
    match (valid, line.ends_with(b"HTTP/1.1")) {
        (false, _) => Verdict::NotHttp,
        (true, true) => Verdict::Http11,
        (true, false) => Verdict::Http10,
    }
}

/// The bytes up to the first separator, and the rest. A line that opens with a separator has
/// an empty first word, which is not a method.
fn word(bytes: &[u8]) -> (&[u8], &[u8]) {
    let end = bytes
        .iter()
        .position(|&b| is_space(b))
        .unwrap_or(bytes.len());
    bytes.split_at(end)
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&b| !is_space(b))
        .unwrap_or(bytes.len());
    &bytes[start..]
}

fn trim_end(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|&b| !is_space(b))
        .map_or(0, |i| i + 1);
    &bytes[..end]
}

/// RFC 9110 §5.6.2 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_version_digit_pair(v: &[u8]) -> bool {
    matches!(v, [major, b'.', minor] if major.is_ascii_digit() && minor.is_ascii_digit())
}

fn is_valid_version(version: &[u8]) -> bool {
    version.is_empty()
        || version
            .strip_prefix(b"HTTP/")
            .is_some_and(is_version_digit_pair)
}

/// Bytes allowed in a path and query (http-parser's set: visible ASCII, tab, form feed).
fn is_path_byte(b: u8) -> bool {
    b == 9 || b == 12 || (b'!'..=b'~').contains(&b)
}

fn is_host_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!$%&'()*+,-.:;=@[]_~".contains(&b)
}

/// origin-form (`/path`), asterisk-form, absolute-form (`scheme://host/path`) or, for CONNECT,
/// authority-form (`host:port`).
fn is_valid_target(target: &[u8], connect: bool) -> bool {
    let Some(&first) = target.first() else {
        return false;
    };
    if first == b'/' || first == b'*' {
        return target[1..].iter().all(|&b| is_path_byte(b));
    }
    let mut rest = target;
    if !connect {
        if !first.is_ascii_alphabetic() {
            return false;
        }
        let scheme_end = rest[1..]
            .iter()
            .position(|&b| !(b.is_ascii_alphanumeric() || b"+-.".contains(&b)))
            .map_or(rest.len(), |i| i + 1);
        let Some(after) = rest[scheme_end..].strip_prefix(b"://") else {
            return false;
        };
        rest = after;
    }
    let host_end = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    let (host, path) = rest.split_at(host_end);
    host.iter().all(|&b| is_host_byte(b))
        && !host.windows(2).any(|w| w == b"@@")
        && path.iter().all(|&b| is_path_byte(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Verdict::*;

    /// Each case as Envoy 1.40 judged it on the wire (tls_inspector + http_inspector, the
    /// `http_inspector.*` counter that moved).
    #[test]
    fn request_lines_are_judged_as_envoy_judges_them() {
        let cases: &[(&[u8], Verdict)] = &[
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", Http11),
            (b"GET / HTTP/1.0\r\n\r\n", Http10),
            (b"GET /\r\n", Http10),
            (b"GET / \r\n", Http10),
            (b"GET / HTTP/1.2\r\n", Http10),
            (b"GET / HTTP/2.0\r\n", Http10),
            (b"GET / HTTP/0.9\r\n", Http10),
            (b"GET / HTTP/1.1\nHost: a\n\n", Http11),
            (b"GET / HTTP/1.1 \r\n", Http11),
            (b"GET  /  HTTP/1.1\r\n", Http11),
            (b"GET\t/\tHTTP/1.1\r\n", Http11),
            (b"GET /\x01 HTTP/1.1\r\n", Http11),
            (b"GET /HTTP/1.1\r\n", Http11),
            (b"FOO / HTTP/1.1\r\n", Http11),
            (b"get / HTTP/1.1\r\n", Http11),
            (b"PRI / HTTP/1.1\r\n", Http11),
            (b"OPTIONS * HTTP/1.1\r\n", Http11),
            (b"CONNECT a:80 HTTP/1.1\r\n", Http11),
            (b"GET http://a/ HTTP/1.1\r\n", Http11),
            (b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", Http10),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", H2c),
            (b"hello world\n", NotHttp),
            (b"\r\nGET / HTTP/1.1\r\n", NotHttp),
            (b" GET / HTTP/1.1\r\n", NotHttp),
            (b"\tGET / HTTP/1.1\r\n", NotHttp),
            (b"GET\r\n", NotHttp),
            (b"GET \r\n", NotHttp),
            (b"GET / HTTP/1.1 x\r\n", NotHttp),
            (b"GET / HTTP/1.10\r\n", NotHttp),
            (b"GET / HTTP/a.1\r\n", NotHttp),
            (b"GET / http/1.1\r\n", NotHttp),
            (b"GET / XYZ\r\n", NotHttp),
            (b"GET / HTTP/1.1\rHost: a\r\n", NotHttp),
            (b"GET foo HTTP/1.1\r\n", NotHttp),
            (b"G{T / HTTP/1.1\r\n", NotHttp),
            (b"G\x00T / HTTP/1.1\r\n", NotHttp),
            (b"GET /\xc3\xa9 HTTP/1.1\r\n", NotHttp),
            (b"GET /\x7f HTTP/1.1\r\n", NotHttp),
            (b"\x00\x01\x02\x03\n", NotHttp),
            (b"SSH-2.0-OpenSSH_9.6\r\n", NotHttp),
        ];
        for (bytes, want) in cases {
            assert_eq!(parse(bytes), Some(*want), "{}", bytes.escape_ascii());
        }
    }

    #[test]
    fn an_unfinished_line_or_preface_waits_for_more() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        for len in 0..preface.len() {
            assert_eq!(parse(&preface[..len]), None, "preface prefix {len}");
        }
        let line = b"GET / HTTP/1.1\r\n";
        for len in 1..line.len() {
            assert_eq!(parse(&line[..len]), None, "request line prefix {len}");
        }
        // Without a newline nothing is decided, however odd the bytes.
        assert_eq!(parse(b"\x00abc"), None);
        assert_eq!(parse(b"hello"), None);
    }
}
