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
    Regex::new(&format!("^(?:{})$", matcher.regex))
        .map_err(|e| path.field("regex").error(format!("invalid regex: {e}")))
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

/// A header condition. Envoy joins multiple values of a header with `,` before matching.
#[derive(Debug, Clone)]
pub struct HeaderMatcher {
    pub name: http::HeaderName,
    pub matcher: HeaderMatch,
    pub invert: bool,
    pub treat_missing_as_empty: bool,
}

impl HeaderMatcher {
    pub fn matches(&self, headers: &http::HeaderMap) -> bool {
        let mut values = headers.get_all(&self.name).iter();
        let first = values.next();
        let result = match (&self.matcher, first) {
            (HeaderMatch::Present(want), None) => !*want,
            (HeaderMatch::Present(want), Some(_)) => *want,
            // A missing header fails a value matcher whether or not it is inverted.
            (_, None) if !self.treat_missing_as_empty => return false,
            (matcher, first) => {
                let joined;
                let value: &str = match first {
                    None => "",
                    Some(v) => {
                        let rest: Vec<&[u8]> = values.map(|v| v.as_bytes()).collect();
                        if rest.is_empty() {
                            std::str::from_utf8(v.as_bytes()).unwrap_or("")
                        } else {
                            let mut all = v.as_bytes().to_vec();
                            for r in rest {
                                all.push(b',');
                                all.extend_from_slice(r);
                            }
                            joined = String::from_utf8_lossy(&all).into_owned();
                            &joined
                        }
                    }
                };
                match matcher {
                    HeaderMatch::String(m) => m.matches(value),
                    HeaderMatch::Range { start, end } => value
                        .parse::<i64>()
                        .map(|n| n >= *start && n < *end)
                        .unwrap_or(false),
                    HeaderMatch::Present(_) => true,
                }
            }
        };
        result != self.invert
    }
}

pub fn header_matcher(m: &ProtoHeaderMatcher, path: &FieldPath) -> Result<HeaderMatcher> {
    let name =
        http::HeaderName::from_bytes(m.name.to_ascii_lowercase().as_bytes()).map_err(|_| {
            path.field("name")
                .error(format!("invalid header name {:?}", m.name))
        })?;
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
        name,
        matcher,
        invert: m.invert_match,
        treat_missing_as_empty: m.treat_missing_header_as_empty,
    })
}
