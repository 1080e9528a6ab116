//! Envoy's command operators (`%DOWNSTREAM_REMOTE_ADDRESS%`, `%REQ(x-foo?x-bar):10%`, ...),
//! compiled once into a [`Template`] and evaluated per request against a [`Context`]. Header
//! values and access logs (text and JSON, see [`json`]) share this engine; they differ only in
//! how a value that is not there renders: empty in a header value, `-` in a text access log,
//! `null` (or omitted) in JSON.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/observability/access_log/usage#command-operators

mod flags;
mod headers;
pub mod json;
mod time;

pub use flags::{ResponseFlags, NAMES as RESPONSE_FLAG_NAMES};
pub use headers::{HeaderSource, KeptHeaders};

use http::{HeaderMap, HeaderName, HeaderValue};
use std::borrow::Cow;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// What operators can read about a request.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub downstream_remote: Option<SocketAddr>,
    pub downstream_local: Option<SocketAddr>,
    /// The upstream host's address, once one is chosen.
    pub upstream_remote: Option<&'a str>,
    pub start: SystemTime,
    /// None on a TCP proxy connection.
    pub protocol: Option<http::Version>,
    pub request_headers: Option<HeaderSource<'a>>,
    /// What a finished stream knows, for access logs; None while headers are being mutated.
    pub stream: Option<&'a StreamInfo>,
    /// The downstream connection's TLS, when it has it.
    pub downstream_tls: Option<&'a crate::tls::TlsInfo>,
}

/// The facts of a finished stream (an HTTP request or a TCP connection) that access log
/// operators read. Fields that do not apply stay None and render as missing.
#[derive(Debug, Default)]
pub struct StreamInfo {
    /// The upstream cluster as Istio's metrics see it (set when they are on).
    pub istio_cluster: Option<Arc<crate::config::istio::IstioCluster>>,
    pub method: Option<http::Method>,
    pub path: Option<http::uri::PathAndQuery>,
    pub authority: Option<HeaderValue>,
    pub scheme: Option<&'static str>,
    /// Envoy logs 0 for TCP connections and for requests that got no response.
    pub response_code: u16,
    pub response_flags: ResponseFlags,
    pub response_code_details: Option<Cow<'static, str>>,
    pub connection_termination_details: Option<Cow<'static, str>>,
    pub upstream_transport_failure_reason: Option<String>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub duration: Option<Duration>,
    pub request_duration: Option<Duration>,
    pub response_duration: Option<Duration>,
    pub upstream_host: Option<http::uri::Authority>,
    pub upstream_cluster: Option<Arc<str>>,
    /// The cluster's `alt_stat_name` when it has one (`%UPSTREAM_CLUSTER%`).
    pub upstream_cluster_alt: Option<Arc<str>>,
    pub upstream_local_address: Option<SocketAddr>,
    /// The identities of the upstream TLS connection the response came on.
    pub upstream_identities: Option<Arc<crate::tls::UpstreamIdentities>>,
    /// The workload the upstream host's `istio.workload` metadata names.
    pub upstream_istio_peer: Option<Arc<crate::stats::istio::Peer>>,
    pub route_name: Option<Arc<str>>,
    pub requested_server_name: Option<Arc<str>>,
    pub connection_id: Option<u64>,
    /// The request headers a logger reads, kept past forwarding (what
    /// [`Context::request_headers`] points at when logging).
    pub request_headers: KeptHeaders,
    pub response_headers: KeptHeaders,
    pub response_trailers: Option<HeaderMap>,
}

/// Which header an operator reads: a name, or one of the request's pseudo-headers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HeaderRef {
    Name(HeaderName),
    Method,
    Path,
    Authority,
    Scheme,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Headers {
    Request,
    Response,
    Trailer,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Operator {
    DownstreamRemoteAddress {
        port: bool,
    },
    DownstreamDirectRemoteAddress {
        port: bool,
    },
    DownstreamRemotePort,
    DownstreamLocalAddress {
        port: bool,
    },
    DownstreamLocalPort,
    UpstreamRemoteAddress,
    UpstreamHost,
    UpstreamCluster {
        raw: bool,
    },
    UpstreamLocalAddress,
    UpstreamTransportFailureReason,
    /// With a strftime-style format, or Envoy's default ISO 8601 rendering.
    StartTime(Option<String>),
    Protocol,
    Hostname(String),
    Header {
        which: Headers,
        name: HeaderRef,
        alternative: Option<HeaderRef>,
        max_len: Option<usize>,
    },
    ResponseCode,
    ResponseFlags,
    ResponseCodeDetails,
    ConnectionTerminationDetails,
    BytesReceived,
    BytesSent,
    Duration,
    RequestDuration,
    ResponseDuration,
    RequestedServerName,
    RouteName,
    ConnectionId,
    /// A fact of the downstream TLS connection.
    DownstreamTls(TlsField),
}

/// The `%DOWNSTREAM_*%` operators of a TLS connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TlsField {
    PeerUriSan,
    LocalUriSan,
    PeerDnsSan,
    LocalDnsSan,
    Version,
    Cipher,
    PeerFingerprint256,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Op(Operator),
}

/// What rendering one operator produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Nothing: the value is not there.
    Missing,
    Text,
    /// Digits, written bare in JSON.
    Number,
}

/// A compiled format string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    segments: Vec<Segment>,
}

impl Template {
    /// Compiles `text`; `%%` is a literal `%`. Errors name the operator that is not supported.
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::compile(text, false)
    }

    fn compile(text: &str, header_value: bool) -> Result<Self, String> {
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(i) = rest.find('%') {
            literal.push_str(&rest[..i]);
            rest = &rest[i + 1..];
            if let Some(after) = rest.strip_prefix('%') {
                literal.push('%');
                rest = after;
                continue;
            }
            let end = operator_end(rest)
                .ok_or_else(|| format!("unterminated command operator in {text:?}"))?;
            let (op, after) = rest.split_at(end);
            rest = &after[1..];
            if !literal.is_empty() {
                segments.push(Segment::Literal(std::mem::take(&mut literal)));
            }
            let parsed = parse_operator(op)?;
            if header_value && parsed.needs_finished_stream() {
                return Err(format!(
                    "command operator %{op}% is not supported in header values by Outrigger"
                ));
            }
            segments.push(Segment::Op(parsed));
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            segments.push(Segment::Literal(literal));
        }
        Ok(Self { segments })
    }

    /// Compiles a header value: only the operators known while headers are mutated
    /// (downstream and upstream addresses, start time, protocol, hostname, request headers);
    /// the ones about a finished stream are refused rather than rendered empty.
    pub fn parse_header_value(text: &str) -> Result<Self, String> {
        Self::compile(text, true)
    }

    /// Whether rendering reads request headers (`%REQ(...)%`).
    pub fn reads_request_headers(&self) -> bool {
        self.segments.iter().any(|s| {
            matches!(
                s,
                Segment::Op(Operator::Header {
                    which: Headers::Request,
                    ..
                })
            )
        })
    }

    /// The request headers `%REQ()%` reads (not pseudo-headers), so a caller can keep just
    /// those past the point where the request is forwarded.
    pub fn request_header_names(&self) -> impl Iterator<Item = &HeaderName> {
        self.header_names(Headers::Request)
    }

    /// The response headers `%RESP()%` reads.
    pub fn response_header_names(&self) -> impl Iterator<Item = &HeaderName> {
        self.header_names(Headers::Response)
    }

    /// Whether rendering reads response trailers (`%TRAILER()%`).
    pub fn reads_trailers(&self) -> bool {
        self.header_names(Headers::Trailer).next().is_some()
    }

    fn header_names(&self, kind: Headers) -> impl Iterator<Item = &HeaderName> {
        self.segments
            .iter()
            .filter_map(move |s| match s {
                Segment::Op(Operator::Header {
                    which,
                    name,
                    alternative,
                    ..
                }) if *which == kind => Some([Some(name), alternative.as_ref()]),
                _ => None,
            })
            .flatten()
            .flatten()
            .filter_map(|h| match h {
                HeaderRef::Name(n) => Some(n),
                _ => None,
            })
    }

    /// Whether the template is plain text (nothing to evaluate per request).
    pub fn literal(&self) -> Option<&str> {
        match self.segments.as_slice() {
            [] => Some(""),
            [Segment::Literal(s)] => Some(s),
            _ => None,
        }
    }

    /// Renders for a header value: a missing value renders empty.
    pub fn render(&self, ctx: &Context<'_>) -> String {
        let mut out = String::new();
        for segment in &self.segments {
            match segment {
                Segment::Literal(s) => out.push_str(s),
                Segment::Op(op) => {
                    render_operator(op, ctx, &mut out);
                }
            }
        }
        out
    }

    /// Renders for a text access log into `out`: a missing value is `-`, or nothing with
    /// `omit_empty_values`.
    pub fn render_log(&self, ctx: &Context<'_>, omit_empty: bool, out: &mut String) {
        for segment in &self.segments {
            match segment {
                Segment::Literal(s) => out.push_str(s),
                Segment::Op(op) => {
                    if render_operator(op, ctx, out) == Written::Missing && !omit_empty {
                        out.push('-');
                    }
                }
            }
        }
    }

    /// A template that is exactly one operator renders typed in JSON (numbers bare, missing
    /// as null); this renders it, or returns None for any other template.
    pub fn render_single(&self, ctx: &Context<'_>, out: &mut String) -> Option<Written> {
        match self.segments.as_slice() {
            [Segment::Op(op)] => Some(render_operator(op, ctx, out)),
            _ => None,
        }
    }
}

impl Operator {
    fn needs_finished_stream(&self) -> bool {
        match self {
            Operator::DownstreamRemoteAddress { .. }
            | Operator::DownstreamDirectRemoteAddress { .. }
            | Operator::DownstreamRemotePort
            | Operator::DownstreamLocalAddress { .. }
            | Operator::DownstreamLocalPort
            | Operator::UpstreamRemoteAddress
            | Operator::StartTime(_)
            | Operator::DownstreamTls(_)
            | Operator::Protocol
            | Operator::Hostname(_) => false,
            Operator::Header {
                which: Headers::Request,
                name: HeaderRef::Name(_),
                alternative,
                ..
            } => !matches!(alternative, None | Some(HeaderRef::Name(_))),
            _ => true,
        }
    }
}

/// Where an operator's closing `%` is: after its name and any `(...)` argument, which may
/// itself contain `%` (as in `%START_TIME(%Y)%`).
fn operator_end(rest: &str) -> Option<usize> {
    let name_end = rest
        .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        .unwrap_or(rest.len());
    let after_argument = match rest[name_end..].strip_prefix('(') {
        Some(arg) => name_end + 1 + arg.find(')')? + 1,
        None => name_end,
    };
    Some(after_argument + rest[after_argument..].find('%')?)
}

fn parse_operator(op: &str) -> Result<Operator, String> {
    Ok(match op {
        "DOWNSTREAM_REMOTE_ADDRESS" => Operator::DownstreamRemoteAddress { port: true },
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => {
            Operator::DownstreamRemoteAddress { port: false }
        }
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" => {
            Operator::DownstreamDirectRemoteAddress { port: true }
        }
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT" => {
            Operator::DownstreamDirectRemoteAddress { port: false }
        }
        "DOWNSTREAM_REMOTE_PORT" => Operator::DownstreamRemotePort,
        "DOWNSTREAM_LOCAL_ADDRESS" => Operator::DownstreamLocalAddress { port: true },
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => Operator::DownstreamLocalAddress { port: false },
        "DOWNSTREAM_LOCAL_PORT" => Operator::DownstreamLocalPort,
        "UPSTREAM_REMOTE_ADDRESS" => Operator::UpstreamRemoteAddress,
        "UPSTREAM_HOST" => Operator::UpstreamHost,
        "UPSTREAM_CLUSTER" => Operator::UpstreamCluster { raw: false },
        "UPSTREAM_CLUSTER_RAW" => Operator::UpstreamCluster { raw: true },
        "UPSTREAM_LOCAL_ADDRESS" => Operator::UpstreamLocalAddress,
        "UPSTREAM_TRANSPORT_FAILURE_REASON" => Operator::UpstreamTransportFailureReason,
        "START_TIME" => Operator::StartTime(None),
        _ if op.starts_with("START_TIME(") && op.ends_with(')') => {
            Operator::StartTime(Some(op["START_TIME(".len()..op.len() - 1].to_string()))
        }
        "PROTOCOL" => Operator::Protocol,
        "HOSTNAME" => Operator::Hostname(
            nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ),
        "RESPONSE_CODE" => Operator::ResponseCode,
        "RESPONSE_FLAGS" => Operator::ResponseFlags,
        "RESPONSE_CODE_DETAILS" => Operator::ResponseCodeDetails,
        "CONNECTION_TERMINATION_DETAILS" => Operator::ConnectionTerminationDetails,
        "BYTES_RECEIVED" => Operator::BytesReceived,
        "BYTES_SENT" => Operator::BytesSent,
        "DURATION" => Operator::Duration,
        "REQUEST_DURATION" => Operator::RequestDuration,
        "RESPONSE_DURATION" => Operator::ResponseDuration,
        "REQUESTED_SERVER_NAME" => Operator::RequestedServerName,
        "ROUTE_NAME" => Operator::RouteName,
        "CONNECTION_ID" => Operator::ConnectionId,
        "DOWNSTREAM_PEER_URI_SAN" => Operator::DownstreamTls(TlsField::PeerUriSan),
        "DOWNSTREAM_LOCAL_URI_SAN" => Operator::DownstreamTls(TlsField::LocalUriSan),
        "DOWNSTREAM_PEER_DNS_SAN" => Operator::DownstreamTls(TlsField::PeerDnsSan),
        "DOWNSTREAM_LOCAL_DNS_SAN" => Operator::DownstreamTls(TlsField::LocalDnsSan),
        "DOWNSTREAM_TLS_VERSION" => Operator::DownstreamTls(TlsField::Version),
        "DOWNSTREAM_TLS_CIPHER" => Operator::DownstreamTls(TlsField::Cipher),
        "DOWNSTREAM_PEER_FINGERPRINT_256" => Operator::DownstreamTls(TlsField::PeerFingerprint256),
        _ if op.starts_with("REQ(") => parse_header(op, 4, Headers::Request)?,
        _ if op.starts_with("RESP(") => parse_header(op, 5, Headers::Response)?,
        _ if op.starts_with("TRAILER(") => parse_header(op, 8, Headers::Trailer)?,
        _ => return Err(format!("command operator %{op}% is not supported")),
    })
}

/// `REQ(name?alternative):max_len` (and `RESP`, `TRAILER`); `open` is where the name starts.
fn parse_header(op: &str, open: usize, which: Headers) -> Result<Operator, String> {
    let inner_end = op.find(')').ok_or_else(|| format!("malformed %{op}%"))?;
    let inner = &op[open..inner_end];
    let max_len = match op[inner_end + 1..].strip_prefix(':') {
        Some(n) => Some(
            n.parse()
                .map_err(|_| format!("malformed length in %{op}%"))?,
        ),
        None if op.len() == inner_end + 1 => None,
        None => return Err(format!("malformed %{op}%")),
    };
    let header = |n: &str| {
        let lower = n.to_ascii_lowercase();
        match (which, lower.as_str()) {
            (Headers::Request, ":method") => return Ok(HeaderRef::Method),
            (Headers::Request, ":path") => return Ok(HeaderRef::Path),
            (Headers::Request, ":authority") => return Ok(HeaderRef::Authority),
            (Headers::Request, ":scheme") => return Ok(HeaderRef::Scheme),
            _ => {}
        }
        HeaderName::from_bytes(lower.as_bytes())
            .map(HeaderRef::Name)
            .map_err(|_| format!("invalid header name in %{op}%"))
    };
    let (name, alternative) = match inner.split_once('?') {
        Some((a, b)) => (header(a)?, Some(header(b)?)),
        None => (header(inner)?, None),
    };
    Ok(Operator::Header {
        which,
        name,
        alternative,
        max_len,
    })
}

fn text(out: &mut String, s: &str) -> Written {
    out.push_str(s);
    Written::Text
}

fn number(out: &mut String, n: u64) -> Written {
    out.push_str(itoa::Buffer::new().format(n));
    Written::Number
}

fn millis(out: &mut String, d: Option<Duration>) -> Written {
    match d {
        Some(d) => number(out, d.as_millis() as u64),
        None => Written::Missing,
    }
}

fn optional(out: &mut String, s: Option<&str>) -> Written {
    match s {
        Some(s) if !s.is_empty() => text(out, s),
        _ => Written::Missing,
    }
}

/// Envoy writes details and failure reasons with spaces turned into underscores.
fn underscored(out: &mut String, s: Option<&str>) -> Written {
    match s {
        Some(s) if !s.is_empty() => {
            out.extend(s.chars().map(|c| if c == ' ' { '_' } else { c }));
            Written::Text
        }
        _ => Written::Missing,
    }
}

fn address(out: &mut String, a: Option<SocketAddr>, port: bool) -> Written {
    match a {
        Some(a) if port => {
            let _ = write!(out, "{a}");
            Written::Text
        }
        Some(a) => {
            let _ = write!(out, "{}", a.ip());
            Written::Text
        }
        None => Written::Missing,
    }
}

fn header_value<'a>(ctx: &Context<'a>, which: Headers, header: &HeaderRef) -> Option<Cow<'a, str>> {
    let stream = ctx.stream;
    match header {
        HeaderRef::Name(name) => match which {
            Headers::Request => ctx.request_headers?.get(name),
            Headers::Response => stream?.response_headers.get(name),
            Headers::Trailer => stream?.response_trailers.as_ref()?.get(name),
        }
        .and_then(|v| v.to_str().ok())
        .map(Cow::Borrowed),
        HeaderRef::Method => stream?.method.as_ref().map(|m| Cow::Borrowed(m.as_str())),
        HeaderRef::Path => stream?.path.as_ref().map(|p| Cow::Borrowed(p.as_str())),
        HeaderRef::Authority => stream?
            .authority
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .map(Cow::Borrowed),
        HeaderRef::Scheme => stream?.scheme.map(Cow::Borrowed),
    }
}

fn render_operator(op: &Operator, ctx: &Context<'_>, out: &mut String) -> Written {
    let stream = ctx.stream;
    match op {
        Operator::DownstreamRemoteAddress { port }
        | Operator::DownstreamDirectRemoteAddress { port } => {
            address(out, ctx.downstream_remote, *port)
        }
        Operator::DownstreamRemotePort => match ctx.downstream_remote {
            Some(a) => number(out, u64::from(a.port())),
            None => Written::Missing,
        },
        Operator::DownstreamLocalAddress { port } => address(out, ctx.downstream_local, *port),
        Operator::DownstreamLocalPort => match ctx.downstream_local {
            Some(a) => number(out, u64::from(a.port())),
            None => Written::Missing,
        },
        Operator::UpstreamRemoteAddress => optional(out, ctx.upstream_remote),
        Operator::UpstreamHost => optional(
            out,
            stream
                .and_then(|s| s.upstream_host.as_ref())
                .map(|a| a.as_str()),
        ),
        Operator::UpstreamCluster { raw } => optional(
            out,
            stream.and_then(|s| {
                let alt = (!raw)
                    .then_some(s.upstream_cluster_alt.as_deref())
                    .flatten();
                alt.or(s.upstream_cluster.as_deref())
            }),
        ),
        Operator::UpstreamLocalAddress => {
            address(out, stream.and_then(|s| s.upstream_local_address), true)
        }
        Operator::UpstreamTransportFailureReason => underscored(
            out,
            stream.and_then(|s| s.upstream_transport_failure_reason.as_deref()),
        ),
        Operator::StartTime(None) => {
            time::iso8601_millis(ctx.start, out);
            Written::Text
        }
        Operator::StartTime(Some(format)) => {
            time::strftime(ctx.start, format, out);
            Written::Text
        }
        Operator::Protocol => match ctx.protocol {
            Some(http::Version::HTTP_10) => text(out, "HTTP/1.0"),
            Some(http::Version::HTTP_11) => text(out, "HTTP/1.1"),
            Some(http::Version::HTTP_2) => text(out, "HTTP/2"),
            Some(http::Version::HTTP_3) => text(out, "HTTP/3"),
            _ => Written::Missing,
        },
        Operator::Hostname(h) => text(out, h),
        Operator::Header {
            which,
            name,
            alternative,
            max_len,
        } => {
            let value = header_value(ctx, *which, name).or_else(|| {
                alternative
                    .as_ref()
                    .and_then(|a| header_value(ctx, *which, a))
            });
            match value {
                Some(v) => {
                    let v = match max_len {
                        Some(n) => v.get(..*n).unwrap_or(&v),
                        None => &v,
                    };
                    text(out, v)
                }
                None => Written::Missing,
            }
        }
        Operator::ResponseCode => match stream {
            Some(s) => number(out, u64::from(s.response_code)),
            None => Written::Missing,
        },
        Operator::ResponseFlags => match stream {
            Some(s) => {
                s.response_flags.write(out);
                Written::Text
            }
            None => Written::Missing,
        },
        Operator::ResponseCodeDetails => {
            underscored(out, stream.and_then(|s| s.response_code_details.as_deref()))
        }
        Operator::ConnectionTerminationDetails => underscored(
            out,
            stream.and_then(|s| s.connection_termination_details.as_deref()),
        ),
        Operator::BytesReceived => match stream {
            Some(s) => number(out, s.bytes_received),
            None => Written::Missing,
        },
        Operator::BytesSent => match stream {
            Some(s) => number(out, s.bytes_sent),
            None => Written::Missing,
        },
        Operator::Duration => millis(out, stream.and_then(|s| s.duration)),
        Operator::RequestDuration => millis(out, stream.and_then(|s| s.request_duration)),
        Operator::ResponseDuration => millis(out, stream.and_then(|s| s.response_duration)),
        Operator::RequestedServerName => {
            optional(out, stream.and_then(|s| s.requested_server_name.as_deref()))
        }
        Operator::RouteName => optional(out, stream.and_then(|s| s.route_name.as_deref())),
        Operator::DownstreamTls(field) => {
            let value = ctx.downstream_tls.and_then(|tls| {
                let peer = tls.peer.as_ref();
                Some(match field {
                    TlsField::PeerUriSan => &*peer?.uri,
                    TlsField::LocalUriSan => &*tls.local.uri,
                    TlsField::PeerDnsSan => &*peer?.dns,
                    TlsField::LocalDnsSan => &*tls.local.dns,
                    TlsField::Version => tls.version,
                    TlsField::Cipher => tls.cipher,
                    TlsField::PeerFingerprint256 => peer?.sha256.as_str(),
                })
            });
            optional(out, value)
        }
        Operator::ConnectionId => match stream.and_then(|s| s.connection_id) {
            Some(id) => number(out, id),
            None => Written::Missing,
        },
    }
}

#[cfg(test)]
mod tests;
