//! Envoy's command operators (`%DOWNSTREAM_REMOTE_ADDRESS%`, `%REQ(x-foo?x-bar):10%`, ...),
//! compiled once into a [`Template`] and evaluated per request against a [`Context`]. Header
//! values use them today; access logs (issue 8) will reuse the same engine.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/observability/access_log/usage#command-operators

mod time;

use http::{HeaderMap, HeaderName};
use std::fmt::Write;
use std::net::SocketAddr;
use std::time::SystemTime;

/// What operators can read about a request.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub downstream_remote: Option<SocketAddr>,
    pub downstream_local: Option<SocketAddr>,
    /// The upstream host's address, once one is chosen.
    pub upstream_remote: Option<&'a str>,
    pub start: SystemTime,
    pub protocol: http::Version,
    pub request_headers: Option<&'a HeaderMap>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Operator {
    DownstreamRemoteAddress {
        port: bool,
    },
    DownstreamLocalAddress {
        port: bool,
    },
    DownstreamLocalPort,
    UpstreamRemoteAddress,
    /// With a strftime-style format, or Envoy's default ISO 8601 rendering.
    StartTime(Option<String>),
    Protocol,
    Hostname(String),
    Request {
        name: HeaderName,
        alternative: Option<HeaderName>,
        max_len: Option<usize>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Op(Operator),
}

/// A compiled format string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    segments: Vec<Segment>,
}

impl Template {
    /// Compiles `text`; `%%` is a literal `%`. Errors name the operator that is not supported.
    pub fn parse(text: &str) -> Result<Self, String> {
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
            segments.push(Segment::Op(parse_operator(op)?));
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            segments.push(Segment::Literal(literal));
        }
        Ok(Self { segments })
    }

    /// Whether rendering reads request headers (`%REQ(...)%`).
    pub fn reads_request_headers(&self) -> bool {
        self.segments
            .iter()
            .any(|s| matches!(s, Segment::Op(Operator::Request { .. })))
    }

    /// Whether the template is plain text (nothing to evaluate per request).
    pub fn literal(&self) -> Option<&str> {
        match self.segments.as_slice() {
            [] => Some(""),
            [Segment::Literal(s)] => Some(s),
            _ => None,
        }
    }

    pub fn render(&self, ctx: &Context<'_>) -> String {
        let mut out = String::new();
        for segment in &self.segments {
            match segment {
                Segment::Literal(s) => out.push_str(s),
                Segment::Op(op) => render_operator(op, ctx, &mut out),
            }
        }
        out
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
        "DOWNSTREAM_LOCAL_ADDRESS" => Operator::DownstreamLocalAddress { port: true },
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => Operator::DownstreamLocalAddress { port: false },
        "DOWNSTREAM_LOCAL_PORT" => Operator::DownstreamLocalPort,
        "UPSTREAM_REMOTE_ADDRESS" => Operator::UpstreamRemoteAddress,
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
        _ if op.starts_with("REQ(") => parse_request(op)?,
        _ => return Err(format!("command operator %{op}% is not supported")),
    })
}

/// `REQ(name?alternative):max_len`.
fn parse_request(op: &str) -> Result<Operator, String> {
    let inner_end = op.find(')').ok_or_else(|| format!("malformed %{op}%"))?;
    let inner = &op[4..inner_end];
    let max_len = match op[inner_end + 1..].strip_prefix(':') {
        Some(n) => Some(
            n.parse()
                .map_err(|_| format!("malformed length in %{op}%"))?,
        ),
        None if op.len() == inner_end + 1 => None,
        None => return Err(format!("malformed %{op}%")),
    };
    let header = |n: &str| {
        HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes())
            .map_err(|_| format!("invalid header name in %{op}%"))
    };
    let (name, alternative) = match inner.split_once('?') {
        Some((a, b)) => (header(a)?, Some(header(b)?)),
        None => (header(inner)?, None),
    };
    Ok(Operator::Request {
        name,
        alternative,
        max_len,
    })
}

fn render_operator(op: &Operator, ctx: &Context<'_>, out: &mut String) {
    // In header values a value that is not there renders empty (the header is then dropped,
    // as Envoy does); access logs will render `-` instead.
    let address = |a: Option<SocketAddr>, port: bool, out: &mut String| match a {
        Some(a) if port => {
            let _ = write!(out, "{a}");
        }
        Some(a) => {
            let _ = write!(out, "{}", a.ip());
        }
        None => {}
    };
    match op {
        Operator::DownstreamRemoteAddress { port } => address(ctx.downstream_remote, *port, out),
        Operator::DownstreamLocalAddress { port } => address(ctx.downstream_local, *port, out),
        Operator::DownstreamLocalPort => {
            if let Some(a) = ctx.downstream_local {
                let _ = write!(out, "{}", a.port());
            }
        }
        Operator::UpstreamRemoteAddress => out.push_str(ctx.upstream_remote.unwrap_or("")),
        Operator::StartTime(None) => time::iso8601_millis(ctx.start, out),
        Operator::StartTime(Some(format)) => time::strftime(ctx.start, format, out),
        Operator::Protocol => out.push_str(match ctx.protocol {
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_11 => "HTTP/1.1",
            http::Version::HTTP_2 => "HTTP/2",
            http::Version::HTTP_3 => "HTTP/3",
            _ => "-",
        }),
        Operator::Hostname(h) => out.push_str(h),
        Operator::Request {
            name,
            alternative,
            max_len,
        } => {
            let headers = ctx.request_headers;
            let value = headers
                .and_then(|h| {
                    h.get(name)
                        .or_else(|| alternative.as_ref().and_then(|a| h.get(a)))
                })
                .and_then(|v| v.to_str().ok());
            if let Some(v) = value {
                let v = match max_len {
                    Some(n) => v.get(..*n).unwrap_or(v),
                    None => v,
                };
                out.push_str(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(headers: &HeaderMap) -> Context<'_> {
        Context {
            downstream_remote: Some("10.0.0.1:5555".parse().expect("addr")),
            downstream_local: Some("10.0.0.2:8080".parse().expect("addr")),
            upstream_remote: None,
            start: std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_763_786_096_123),
            protocol: http::Version::HTTP_11,
            request_headers: Some(headers),
        }
    }

    #[test]
    fn operators_render_like_envoy() {
        let mut headers = HeaderMap::new();
        headers.insert("x-b", http::HeaderValue::from_static("bee-value"));
        let t = Template::parse("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_LOCAL_PORT% %PROTOCOL% %REQ(x-a?x-b):3% %UPSTREAM_REMOTE_ADDRESS% 100%% %START_TIME% [%START_TIME(%Y/%m/%d %H:%M:%S.%3f %s)%]")
            .expect("parses");
        assert_eq!(
            t.render(&ctx(&headers)),
            "10.0.0.1 8080 HTTP/1.1 bee  100% 2025-11-22T04:34:56.123Z [2025/11/22 04:34:56.123 1763786096]"
        );
        assert_eq!(
            Template::parse("plain 50%%").expect("parses").literal(),
            Some("plain 50%")
        );
        assert_eq!(
            Template::parse("plain").expect("parses").literal(),
            Some("plain")
        );
        assert!(Template::parse("%NOPE%")
            .expect_err("unknown")
            .contains("%NOPE%"));
        assert!(Template::parse("%DOWNSTREAM_REMOTE_ADDRESS").is_err());
    }
}
