//! Tag extraction as Envoy does it: a stat's full name (`cluster.backend.upstream_rq_200`)
//! becomes a tag-extracted name (`cluster.upstream_rq`) and tags (`envoy.cluster_name=backend`,
//! `envoy.response_code=200`), which `/stats/prometheus` prints as the metric name and labels.
//!
//! Extraction runs once, when a stat is created (config time); nothing here is on the
//! per-request path.
//!
//! Semantics (https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/metrics/v3/stats.proto
//! and https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/observability/statistics#tagging):
//! - Every extractor sees the *full* name; the characters each one removes are collected and
//!   removed together at the end.
//! - Regex extractors: capture group 1 is removed from the name, group 2 (if the regex has one)
//!   is the tag value, else group 1 is. Envoy's built-in ones run on RE2 (partial match, group 1
//!   must be non-empty, an empty group 2 falls back to group 1); configured `stats_tags` run on
//!   an ECMAScript engine (search), which we reproduce with `fancy-regex` because Istio's
//!   bootstrap uses a lookahead that the `regex` crate cannot compile.
//! - Token extractors (`cluster.$.**`): `.`-separated tokens, `*` is one token, `**` any number,
//!   `$` the tag value; the value and one adjoining dot are removed.
//! - An extractor whose regex starts `^word\.` (or a token pattern starting with a literal) only
//!   runs on names whose first token is `word`; extractors with no such prefix run first.
//! - When several extractors share a tag name, the first that matches wins.

mod builtin;

use std::collections::HashMap;

/// A tag of a stat: Envoy's tag name (`envoy.cluster_name`) and its value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tag {
    /// Shared with the extractor that found it: a tag name is stored once, not per stat.
    pub name: std::sync::Arc<str>,
    /// Interned by the store, so the stats of one cluster or listener share their values.
    pub value: std::sync::Arc<str>,
}

/// One configured `stats_tags` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagSpec {
    /// `tag_name` with `regex` (ECMAScript semantics).
    Regex { name: String, regex: String },
    /// `tag_name` alone: Envoy's built-in extractors of that name.
    Builtin { name: String },
    /// `tag_name` with `fixed_value`: added to every stat.
    Fixed { name: String, value: String },
}

#[derive(Debug)]
enum Engine {
    /// Envoy's built-in regexes (RE2 semantics). `not_value` is a value that does not count
    /// as a match (Envoy's "negative match", e.g. `admin` for listener addresses).
    Builtin {
        regex: regex::Regex,
        not_value: Option<&'static str>,
    },
    /// Configured regexes (std::regex ECMAScript semantics, search).
    Configured(fancy_regex::Regex),
    Tokens {
        tokens: Vec<String>,
        value_index: usize,
    },
    Fixed(String),
}

#[derive(Debug)]
struct Extractor {
    name: std::sync::Arc<str>,
    engine: Engine,
    /// Another extractor has the same tag name: only the first match of the name counts.
    shares_name: bool,
}

/// Where a match puts its tag: the value and the byte range to remove from the name.
struct Found<'a> {
    value: &'a str,
    remove: Option<(usize, usize)>,
}

impl Extractor {
    fn extract<'a>(
        &'a self,
        name: &'a str,
        tokens: &mut Option<Vec<&'a str>>,
    ) -> Option<Found<'a>> {
        match &self.engine {
            Engine::Builtin { regex, not_value } => {
                let caps = regex.captures(name)?;
                let remove = caps.get(1).filter(|m| !m.as_str().is_empty())?;
                let value = caps
                    .get(2)
                    .map(|m| m.as_str())
                    .filter(|v| !v.is_empty())
                    .unwrap_or(remove.as_str());
                if *not_value == Some(value) {
                    return None;
                }
                Some(Found {
                    value,
                    remove: Some((remove.start(), remove.end())),
                })
            }
            Engine::Configured(regex) => {
                // A regex that gives up (backtrack limit) is a miss, as a non-match would be.
                let caps = regex.captures(name).ok()??;
                if caps.len() < 2 {
                    return None;
                }
                let remove = caps.get(1);
                let value = if caps.len() > 2 { caps.get(2) } else { remove };
                Some(Found {
                    value: value.map_or("", |m| m.as_str()),
                    remove: remove.map(|m| (m.start(), m.end())),
                })
            }
            Engine::Tokens {
                tokens: pattern,
                value_index,
            } => {
                let input = tokens.get_or_insert_with(|| name.split('.').collect());
                let mut start = 0;
                let mut at = input.len();
                if !search_tokens(pattern, *value_index, input, 0, 0, 0, &mut start, &mut at) {
                    return None;
                }
                let value = input[at];
                let mut end = start + value.len();
                if at + 1 < input.len() {
                    end += 1; // the dot after the value
                } else {
                    start = start.saturating_sub(1); // the last token: the dot before it
                }
                Some(Found {
                    value,
                    remove: Some((start, end)),
                })
            }
            Engine::Fixed(value) => Some(Found {
                value,
                remove: None,
            }),
        }
    }
}

/// Matches `pattern` (tokens) against `input` from the given positions; on success `start` is
/// the byte offset of the value token and `at` its index. Mirrors Envoy's token matcher,
/// including that the value token does not advance the byte offset.
#[allow(clippy::too_many_arguments)]
fn search_tokens(
    pattern: &[String],
    value_index: usize,
    input: &[&str],
    mut i: usize,
    mut p: usize,
    mut offset: usize,
    start: &mut usize,
    at: &mut usize,
) -> bool {
    while i < input.len() && p < pattern.len() {
        if p == value_index {
            *start = offset;
            *at = i;
        } else {
            let expected = pattern[p].as_str();
            if expected == "**" {
                if p == pattern.len() - 1 {
                    return true;
                }
                // `**` in the middle: the rest of the pattern may start at any later token.
                p += 1;
                while i < input.len() {
                    if search_tokens(pattern, value_index, input, i, p, offset, start, at) {
                        return true;
                    }
                    offset += input[i].len() + 1;
                    i += 1;
                }
                return false;
            }
            if expected != "*" && expected != input[i] {
                return false;
            }
            offset += input[i].len() + 1;
        }
        i += 1;
        p += 1;
    }
    p == pattern.len() && i == input.len()
}

/// The first token an extractor requires, by Envoy's rule: a regex starting `^word` followed by
/// `\.` or `(?=\.)` (or `$` at the very end).
fn regex_prefix(regex: &str) -> Option<String> {
    let rest = regex.strip_prefix('^')?;
    let len = rest
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
        .count();
    if len == 0 {
        return None;
    }
    let after = &rest[len..];
    let ok = after.starts_with("\\.") || after.starts_with("(?=\\.)") || after == "$";
    ok.then(|| rest[..len].to_string())
}

fn token_prefix(pattern: &str) -> Option<String> {
    let first = pattern.split('.').next()?;
    (!matches!(first, "$" | "*" | "**")).then(|| first.to_string())
}

/// Compiled tag extractors, in Envoy's order. Built once from `stats_config`.
#[derive(Debug, Default)]
pub struct TagProducer {
    without_prefix: Vec<Extractor>,
    by_prefix: HashMap<String, Vec<Extractor>>,
    /// The built-in regexes of `without_prefix`, and of each bucket, as one set each.
    prefilters: Prefilters,
}

/// Which built-in regexes match a name at all, found in one pass of a `RegexSet`: a push of a
/// thousand clusters creates some 70,000 stats, and running each regex for its captures on
/// every name was most of the cost of creating them. Only the regexes that match are run.
/// (Each regex is in one set only: sets repeating the prefix-less regexes in every bucket's
/// set cost 3 MiB of memory at startup.)
#[derive(Debug, Default)]
struct Prefilters {
    without_prefix: Prefilter,
    by_prefix: HashMap<String, Prefilter>,
}

#[derive(Debug, Default)]
struct Prefilter {
    set: regex::RegexSet,
    /// Per extractor of the list: its regex's index in `set`, None for extractors that are
    /// not built-in regexes (they always run).
    index: Vec<Option<usize>>,
}

impl Prefilter {
    fn new(extractors: &[Extractor]) -> Result<Self, String> {
        let mut patterns = Vec::new();
        let index = extractors
            .iter()
            .map(|e| match &e.engine {
                Engine::Builtin { regex, .. } => {
                    patterns.push(regex.as_str().to_string());
                    Some(patterns.len() - 1)
                }
                _ => None,
            })
            .collect();
        let set =
            regex::RegexSet::new(&patterns).map_err(|e| format!("built-in tag regexes: {e}"))?;
        Ok(Self { set, index })
    }

    /// Which of the list's extractors may match `name`.
    fn candidates<'a>(
        &'a self,
        extractors: &'a [Extractor],
        name: &str,
    ) -> impl Iterator<Item = &'a Extractor> {
        let hits = self.set.matches(name);
        extractors.iter().enumerate().filter_map(move |(at, e)| {
            let skip = self
                .index
                .get(at)
                .copied()
                .flatten()
                .is_some_and(|i| !hits.matched(i));
            (!skip).then_some(e)
        })
    }
}

impl TagProducer {
    /// Envoy's behaviour when `stats_config` is absent: the built-in extractors.
    pub fn envoy_default() -> Self {
        // The built-in regexes are constants tested below; they always compile.
        Self::new(true, &[]).unwrap_or_default()
    }

    /// The extractors of `use_all_default_tags` (built-ins first) and `specs` in order.
    /// The error names the offending tag and says why, as Envoy's does.
    pub fn new(use_defaults: bool, specs: &[TagSpec]) -> Result<Self, String> {
        let mut producer = TagProducer::default();
        let mut all: Vec<(Extractor, Option<String>)> = Vec::new();
        if use_defaults {
            for b in builtin::REGEXES.iter() {
                all.push(builtin_regex(b)?);
            }
            for (name, pattern) in builtin::TOKENS {
                all.push(tokens(name, pattern));
            }
        }
        for spec in specs {
            match spec {
                TagSpec::Regex { name, regex } => {
                    if name.is_empty() {
                        return Err("tag_name cannot be empty".into());
                    }
                    let compiled = fancy_regex::Regex::new(regex)
                        .map_err(|e| format!("Invalid regex '{regex}': {e}"))?;
                    all.push((
                        Extractor {
                            name: name.as_str().into(),
                            engine: Engine::Configured(compiled),
                            shares_name: false,
                        },
                        regex_prefix(regex),
                    ));
                }
                TagSpec::Builtin { name } => {
                    let before = all.len();
                    for b in builtin::REGEXES.iter().filter(|b| b.name == name) {
                        all.push(builtin_regex(b)?);
                    }
                    for (n, pattern) in builtin::TOKENS.iter().filter(|(n, _)| n == name) {
                        all.push(tokens(n, pattern));
                    }
                    if all.len() == before {
                        return Err(format!(
                            "No regex specified for tag specifier and no default regex for name: '{name}'"
                        ));
                    }
                }
                TagSpec::Fixed { name, value } => {
                    if name.is_empty() {
                        return Err("tag_name cannot be empty".into());
                    }
                    all.push((
                        Extractor {
                            name: name.as_str().into(),
                            engine: Engine::Fixed(value.clone()),
                            shares_name: false,
                        },
                        // Envoy derives the prefix of a fixed tag from its value as if it
                        // were a regex; kept for identical ordering.
                        regex_prefix(value),
                    ));
                }
            }
        }
        let mut counts: HashMap<std::sync::Arc<str>, usize> = HashMap::new();
        for (e, _) in &all {
            *counts.entry(e.name.clone()).or_default() += 1;
        }
        for (mut e, prefix) in all {
            e.shares_name = counts.get(&e.name).is_some_and(|n| *n > 1);
            match prefix {
                Some(p) => producer.by_prefix.entry(p).or_default().push(e),
                None => producer.without_prefix.push(e),
            }
        }
        producer.prefilters.without_prefix = Prefilter::new(&producer.without_prefix)?;
        for (prefix, bucket) in &producer.by_prefix {
            producer
                .prefilters
                .by_prefix
                .insert(prefix.clone(), Prefilter::new(bucket)?);
        }
        Ok(producer)
    }

    /// The tag-extracted name and the tags of the stat `name`. Config time only.
    pub fn produce(&self, name: &str) -> (String, Vec<Tag>) {
        let mut tags = Vec::new();
        let mut removed: Vec<(usize, usize)> = Vec::new();
        let mut matched: Vec<&str> = Vec::new();
        let mut tokens = None;
        let first = name.find('.').map(|dot| &name[..dot]);
        let bucket = first.and_then(|f| {
            let extractors = self.by_prefix.get(f)?;
            let prefilter = self.prefilters.by_prefix.get(f)?;
            Some(prefilter.candidates(extractors, name))
        });
        let candidates = self
            .prefilters
            .without_prefix
            .candidates(&self.without_prefix, name)
            .chain(bucket.into_iter().flatten());
        for e in candidates {
            if e.shares_name && matched.contains(&&*e.name) {
                continue;
            }
            if let Some(found) = e.extract(name, &mut tokens) {
                tags.push(Tag {
                    name: e.name.clone(),
                    value: found.value.into(),
                });
                removed.extend(found.remove);
                if e.shares_name {
                    matched.push(&e.name);
                }
            }
        }
        (remove_ranges(name, &removed), tags)
    }
}

fn builtin_regex(b: &builtin::Regex) -> Result<(Extractor, Option<String>), String> {
    let regex = regex::Regex::new(&b.regex)
        .map_err(|e| format!("built-in tag regex for {}: {e}", b.name))?;
    Ok((
        Extractor {
            name: b.name.into(),
            engine: Engine::Builtin {
                regex,
                not_value: b.not_value,
            },
            shares_name: false,
        },
        regex_prefix(&b.regex),
    ))
}

fn tokens(name: &str, pattern: &str) -> (Extractor, Option<String>) {
    let tokens: Vec<String> = pattern.split('.').map(str::to_string).collect();
    let value_index = tokens.iter().position(|t| t == "$").unwrap_or(0);
    (
        Extractor {
            name: name.into(),
            engine: Engine::Tokens {
                tokens,
                value_index,
            },
            shares_name: false,
        },
        token_prefix(pattern),
    )
}

/// `name` without the bytes in any of `ranges` (which may overlap).
fn remove_ranges(name: &str, ranges: &[(usize, usize)]) -> String {
    if ranges.is_empty() {
        return name.to_string();
    }
    let mut keep = vec![true; name.len()];
    for (start, end) in ranges {
        for k in keep.iter_mut().take(*end).skip(*start) {
            *k = false;
        }
    }
    let bytes: Vec<u8> = name
        .bytes()
        .zip(keep)
        .filter_map(|(b, k)| k.then_some(b))
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests;
