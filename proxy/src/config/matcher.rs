//! String and header matchers, compiled once: regexes built here, case folding decided here.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/type/matcher/v3/string.proto and
//! https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#config-route-v3-headermatcher
//! The deprecated `*_match` header matchers are still honoured, as Envoy does.
#![allow(deprecated)]

use super::error::{FieldPath, Result};
use regex::Regex;
use xds_proto::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, HeaderMatcher as ProtoHeaderMatcher,
};
use xds_proto::pb::envoy::r#type::matcher::v3::{
    string_matcher::MatchPattern, RegexMatcher, StringMatcher as ProtoStringMatcher,
};

#[derive(Debug, Clone)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(Regex),
}

#[derive(Debug, Clone)]
pub struct StringMatcher {
    pattern: StringMatch,
    /// Patterns are stored lowercased when set; the input is compared case-insensitively.
    ignore_case: bool,
}

impl StringMatcher {
    /// The pattern of an exact, case-sensitive matcher.
    pub fn exact(&self) -> Option<&str> {
        match &self.pattern {
            StringMatch::Exact(p) if !self.ignore_case => Some(p),
            _ => None,
        }
    }

    pub fn matches(&self, value: &str) -> bool {
        if self.ignore_case {
            match &self.pattern {
                StringMatch::Exact(p) => value.eq_ignore_ascii_case(p),
                StringMatch::Prefix(p) => {
                    value.len() >= p.len()
                        && value.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
                }
                StringMatch::Suffix(p) => {
                    value.len() >= p.len()
                        && value.as_bytes()[value.len() - p.len()..]
                            .eq_ignore_ascii_case(p.as_bytes())
                }
                StringMatch::Contains(p) => contains_ignore_case(value, p),
                StringMatch::Regex(r) => r.is_match(value),
            }
        } else {
            match &self.pattern {
                StringMatch::Exact(p) => value == p,
                StringMatch::Prefix(p) => value.starts_with(p.as_str()),
                StringMatch::Suffix(p) => value.ends_with(p.as_str()),
                StringMatch::Contains(p) => value.contains(p.as_str()),
                StringMatch::Regex(r) => r.is_match(value),
            }
        }
    }
}

fn contains_ignore_case(haystack: &str, lower_needle: &str) -> bool {
    let (h, n) = (haystack.as_bytes(), lower_needle.as_bytes());
    n.is_empty() || h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
}

/// A RE2 pattern that must match the whole input, as Envoy's `safe_regex` does.
pub fn full_regex(matcher: &RegexMatcher, path: &FieldPath) -> Result<Regex> {
    if matcher.regex.is_empty() {
        return Err(path.field("regex").error("must not be empty"));
    }
    if let Some(n) = largest_repetition(&matcher.regex) {
        if n > RE2_MAX_REPEAT {
            return Err(path
                .field("regex")
                .error(format!("invalid repetition size: {{{n}}}")));
        }
    }
    Regex::new(&format!("^(?:{})$", matcher.regex))
        .map_err(|e| path.field("regex").error(format!("invalid regex: {e}")))
}

/// RE2 refuses counted repetitions above 1000; Rust's regex crate would accept them.
const RE2_MAX_REPEAT: u32 = 1000;

fn largest_repetition(pattern: &str) -> Option<u32> {
    use regex_syntax::ast::{Ast, RepetitionKind, RepetitionRange};
    fn walk(ast: &Ast, max: &mut u32) {
        match ast {
            Ast::Repetition(r) => {
                if let RepetitionKind::Range(range) = &r.op.kind {
                    let n = match range {
                        RepetitionRange::Exactly(n) | RepetitionRange::AtLeast(n) => *n,
                        RepetitionRange::Bounded(a, b) => (*a).max(*b),
                    };
                    *max = (*max).max(n);
                }
                walk(&r.ast, max);
            }
            Ast::Group(g) => walk(&g.ast, max),
            Ast::Alternation(a) => a.asts.iter().for_each(|x| walk(x, max)),
            Ast::Concat(c) => c.asts.iter().for_each(|x| walk(x, max)),
            _ => {}
        }
    }
    let ast = regex_syntax::ast::parse::Parser::new()
        .parse(pattern)
        .ok()?;
    let mut max = 0;
    walk(&ast, &mut max);
    Some(max)
}

pub fn string_matcher(m: &ProtoStringMatcher, path: &FieldPath) -> Result<StringMatcher> {
    let fold = |s: &str| {
        if m.ignore_case {
            s.to_ascii_lowercase()
        } else {
            s.to_string()
        }
    };
    let pattern = match &m.match_pattern {
        Some(MatchPattern::Exact(s)) => StringMatch::Exact(fold(s)),
        Some(MatchPattern::Prefix(s)) if !s.is_empty() => StringMatch::Prefix(fold(s)),
        Some(MatchPattern::Suffix(s)) if !s.is_empty() => StringMatch::Suffix(fold(s)),
        Some(MatchPattern::Contains(s)) if !s.is_empty() => StringMatch::Contains(fold(s)),
        Some(MatchPattern::Prefix(_)) => {
            return Err(path.field("prefix").error("must not be empty"))
        }
        Some(MatchPattern::Suffix(_)) => {
            return Err(path.field("suffix").error("must not be empty"))
        }
        Some(MatchPattern::Contains(_)) => {
            return Err(path.field("contains").error("must not be empty"))
        }
        Some(MatchPattern::SafeRegex(r)) => {
            if m.ignore_case {
                return Err(path
                    .field("ignore_case")
                    .error("has no effect with safe_regex; Envoy rejects it"));
            }
            StringMatch::Regex(full_regex(r, &path.field("safe_regex"))?)
        }
        Some(MatchPattern::Custom(_)) => {
            return Err(path
                .field("custom")
                .error("custom string matchers are not supported"))
        }
        None => return Err(path.error("a match pattern is required")),
    };
    Ok(StringMatcher {
        pattern,
        ignore_case: m.ignore_case,
    })
}

#[derive(Debug, Clone)]
pub enum HeaderMatch {
    String(StringMatcher),
    Present(bool),
    Range { start: i64, end: i64 },
}

/// A request as header matchers see it: its headers, and the pseudo-headers Envoy's header map
/// carries beside them whatever the protocol (`:method`, `:authority`, `:path` with the query,
/// `:scheme`). None for a pseudo-header the caller does not have (it counts as missing).
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub headers: &'a http::HeaderMap,
    pub method: Option<&'a str>,
    pub authority: Option<&'a str>,
    pub path: Option<&'a str>,
    pub scheme: Option<&'a str>,
}

impl<'a> RequestHead<'a> {
    /// Headers without pseudo-headers, but for `:authority`, which is the `host` header.
    pub fn headers_only(headers: &'a http::HeaderMap) -> Self {
        Self {
            headers,
            method: None,
            authority: headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok()),
            path: None,
            scheme: None,
        }
    }

    fn pseudo(&self, p: Pseudo) -> Option<&'a str> {
        match p {
            Pseudo::Method => self.method,
            Pseudo::Authority => self.authority,
            Pseudo::Path => self.path,
            Pseudo::Scheme => self.scheme,
        }
    }
}

/// The header a matcher reads.
#[derive(Debug, Clone)]
pub enum HeaderKey {
    Name(http::HeaderName),
    Pseudo(Pseudo),
    /// A name no request can carry (Envoy accepts such matchers; they see the header as
    /// missing).
    Never,
}

/// The request pseudo-headers (`host` is `:authority` too, as Envoy's codecs make it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pseudo {
    Method,
    Authority,
    Path,
    Scheme,
}

/// A header condition. A header sent more than once matches when any one of its values does
/// (values are not joined; Envoy 1.40 matches so), and `invert_match` inverts that outcome.
#[derive(Debug, Clone)]
pub struct HeaderMatcher {
    pub key: HeaderKey,
    pub matcher: HeaderMatch,
    pub invert: bool,
    pub treat_missing_as_empty: bool,
}

impl HeaderMatcher {
    /// Against plain headers: a pseudo-header counts as missing.
    pub fn matches(&self, headers: &http::HeaderMap) -> bool {
        self.matches_request(&RequestHead::headers_only(headers))
    }

    /// Against the request headers an access log filter reads; None (a TCP connection's log)
    /// has no headers at all.
    pub fn matches_source(&self, headers: Option<crate::format::HeaderSource<'_>>) -> bool {
        match (&self.key, headers) {
            (HeaderKey::Name(name), Some(headers)) => headers.with_values(name, |values| {
                self.matches_values(values.map(|v| std::str::from_utf8(v.as_bytes()).unwrap_or("")))
            }),
            _ => self.matches_values(std::iter::empty()),
        }
    }

    pub fn matches_request(&self, head: &RequestHead<'_>) -> bool {
        match &self.key {
            HeaderKey::Name(name) => self.matches_values(
                head.headers
                    .get_all(name)
                    .iter()
                    .map(|v| std::str::from_utf8(v.as_bytes()).unwrap_or("")),
            ),
            HeaderKey::Pseudo(p) => self.matches_values(head.pseudo(*p).into_iter()),
            HeaderKey::Never => self.matches_values(std::iter::empty()),
        }
    }

    fn matches_values<'v>(&self, values: impl Iterator<Item = &'v str>) -> bool {
        let mut values = values.peekable();
        let present = values.peek().is_some();
        let result = match &self.matcher {
            HeaderMatch::Present(want) => present == *want,
            // A missing header fails a value matcher whether or not it is inverted.
            _ if !present && !self.treat_missing_as_empty => return false,
            _ if !present => self.value_matches(""),
            _ => values.any(|v| self.value_matches(v)),
        };
        result != self.invert
    }

    fn value_matches(&self, value: &str) -> bool {
        match &self.matcher {
            HeaderMatch::Present(_) => true,
            HeaderMatch::String(m) => m.matches(value),
            HeaderMatch::Range { start, end } => {
                value.parse::<i64>().is_ok_and(|n| n >= *start && n < *end)
            }
        }
    }
}

pub fn header_matcher(m: &ProtoHeaderMatcher, path: &FieldPath) -> Result<HeaderMatcher> {
    if m.name.is_empty() {
        return Err(path.field("name").error("must not be empty"));
    }
    let lower = m.name.to_ascii_lowercase();
    let key = match lower.as_str() {
        ":method" => HeaderKey::Pseudo(Pseudo::Method),
        ":authority" | "host" => HeaderKey::Pseudo(Pseudo::Authority),
        ":path" => HeaderKey::Pseudo(Pseudo::Path),
        ":scheme" => HeaderKey::Pseudo(Pseudo::Scheme),
        _ => {
            http::HeaderName::from_bytes(lower.as_bytes()).map_or(HeaderKey::Never, HeaderKey::Name)
        }
    };
    let exact = |s: &str| StringMatcher {
        pattern: StringMatch::Exact(s.to_string()),
        ignore_case: false,
    };
    let matcher = match &m.header_match_specifier {
        None => HeaderMatch::Present(true),
        Some(HeaderMatchSpecifier::ExactMatch(s)) => HeaderMatch::String(exact(s)),
        Some(HeaderMatchSpecifier::PrefixMatch(s)) => HeaderMatch::String(StringMatcher {
            pattern: StringMatch::Prefix(s.clone()),
            ignore_case: false,
        }),
        Some(HeaderMatchSpecifier::SuffixMatch(s)) => HeaderMatch::String(StringMatcher {
            pattern: StringMatch::Suffix(s.clone()),
            ignore_case: false,
        }),
        Some(HeaderMatchSpecifier::ContainsMatch(s)) => HeaderMatch::String(StringMatcher {
            pattern: StringMatch::Contains(s.clone()),
            ignore_case: false,
        }),
        Some(HeaderMatchSpecifier::SafeRegexMatch(r)) => HeaderMatch::String(StringMatcher {
            pattern: StringMatch::Regex(full_regex(r, &path.field("safe_regex_match"))?),
            ignore_case: false,
        }),
        Some(HeaderMatchSpecifier::StringMatch(s)) => {
            HeaderMatch::String(string_matcher(s, &path.field("string_match"))?)
        }
        Some(HeaderMatchSpecifier::PresentMatch(p)) => HeaderMatch::Present(*p),
        Some(HeaderMatchSpecifier::RangeMatch(r)) => HeaderMatch::Range {
            start: r.start,
            end: r.end,
        },
    };
    Ok(HeaderMatcher {
        key,
        matcher,
        invert: m.invert_match,
        treat_missing_as_empty: m.treat_missing_header_as_empty,
    })
}
