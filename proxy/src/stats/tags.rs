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
        Ok(producer)
    }

    /// The tag-extracted name and the tags of the stat `name`. Config time only.
    pub fn produce(&self, name: &str) -> (String, Vec<Tag>) {
        let mut tags = Vec::new();
        let mut removed: Vec<(usize, usize)> = Vec::new();
        let mut matched: Vec<&str> = Vec::new();
        let mut tokens = None;
        let bucket = name
            .find('.')
            .and_then(|dot| self.by_prefix.get(&name[..dot]));
        for e in self
            .without_prefix
            .iter()
            .chain(bucket.into_iter().flatten())
        {
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

/// Envoy's built-in tag extractors (`use_all_default_tags`), written from the tag names and
/// patterns Envoy documents; regexes use ASCII classes as RE2's `\d`/`\w` do.
/// https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/metrics/v3/stats.proto#envoy-v3-api-field-config-metrics-v3-statsconfig-use-all-default-tags
mod builtin {
    use std::sync::LazyLock;

    pub struct Regex {
        pub name: &'static str,
        pub regex: String,
        pub not_value: Option<&'static str>,
    }

    /// A tag value: anything but a dot.
    const V: &str = r"[^.]+";
    /// An IPv4 or bracketed IPv6 listener address with `_port`.
    const ADDRESS: &str =
        r"(?:(?:[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}|\[[a-fA-F_0-9]+\])_[0-9]+)";
    const CIPHER: &str = r"[0-9A-Za-z_-]+";
    const TLS_VERSION: &str = r"TLSv[0-9]\.[0-9]";
    const ROUTE_CONFIG: &str = r"[0-9A-Za-z_\-./]+";
    const SCOPED_ROUTE_CONFIG: &str = r"[0-9A-Za-z_\-.]+";
    const LISTENER_OR_CLUSTER: &str = r"(?:listener|cluster)\..*?";
    const W: &str = "[0-9A-Za-z_]";

    fn r(name: &'static str, regex: String) -> Regex {
        Regex {
            name,
            regex,
            not_value: None,
        }
    }

    fn except(name: &'static str, regex: String, not_value: &'static str) -> Regex {
        Regex {
            name,
            regex,
            not_value: Some(not_value),
        }
    }

    /// In Envoy's order (it decides the order of tags within a stat).
    pub static REGEXES: LazyLock<Vec<Regex>> = LazyLock::new(|| {
        vec![
            // <base>_rq_<code> and <base>_rq_<class>xx
            r("envoy.response_code", r"_rq(_([0-9]{3}))$".into()),
            r("envoy.response_code_class", r"_rq_(([0-9]))xx$".into()),
            // http.<prefix>.dynamodb.table.<table>.capacity.<op>.__partition_id=<id>
            r(
                "envoy.dynamo_partition_id",
                format!(
                    r"^http\.{V}\.dynamodb\.table\.{V}\.capacity\.{V}(\.__partition_id=({W}{{7}}))$"
                ),
            ),
            r(
                "envoy.dynamo_operation",
                format!(
                    r"^http\.{V}\.dynamodb.(?:operation|table\.{V}\.capacity)(\.({V}))(?:\.|$)"
                ),
            ),
            r(
                "envoy.dynamo_table",
                format!(r"^http\.{V}\.dynamodb.(?:table|error)\.(({V})\.)"),
            ),
            // TLS: listener.<address>.ssl.ciphers.<cipher> and friends
            r(
                "envoy.ssl_cipher",
                format!(r"^listener\..*?\.ssl\.ciphers(\.({CIPHER}))$"),
            ),
            r(
                "envoy.ssl_curve",
                format!(r"^{LISTENER_OR_CLUSTER}\.ssl\.curves(\.({CIPHER}))$"),
            ),
            r(
                "envoy.ssl_sigalg",
                format!(r"^{LISTENER_OR_CLUSTER}\.ssl\.sigalgs(\.({CIPHER}))$"),
            ),
            r(
                "envoy.ssl_version",
                format!(r"^{LISTENER_OR_CLUSTER}\.ssl\.versions(\.({TLS_VERSION}))$"),
            ),
            r(
                "cipher_suite",
                format!(r"^cluster\.{V}\.ssl\.ciphers(\.({CIPHER}))$"),
            ),
            // listener.<address>.http.<prefix>.*
            r(
                "envoy.http_conn_manager_prefix",
                format!(r"^listener\..*?\.http\.(({V})\.)"),
            ),
            // <listener.address|server|listener_manager|thread_local_cluster_manager>.worker_<id>.*
            r(
                "envoy.worker_id",
                format!(
                    r"^(?:listener\.(?:{ADDRESS}|{V})|server|listener_manager|thread_local_cluster_manager)\.worker_(([0-9]+)\.)"
                ),
            ),
            // listener.<address or stat prefix>.* except the admin listener
            except(
                "envoy.listener_address",
                format!(r"^listener\.(({ADDRESS}|{V})\.)"),
                "admin",
            ),
            // http.<prefix>.rds.<route config>.<stat> (route config names may hold dots)
            r(
                "envoy.rds_route_config",
                format!(r"^http\.{V}\.rds\.(({ROUTE_CONFIG})\.){W}+?$"),
            ),
            r(
                "envoy.scoped_rds_config",
                format!(r"^http\.{V}\.scoped_rds\.(({SCOPED_ROUTE_CONFIG})\.){W}+?$"),
            ),
            // http.<prefix>.rbac.[<rules prefix>.]policy.<policy>.<result>
            r(
                "envoy.rbac_policy_name",
                format!(
                    r"^http\.{V}\.rbac\.(?:{V}\.)?policy\.(({V})\.)(allowed|shadow_allowed|denied|shadow_denied)$"
                ),
            ),
            except(
                "envoy.rbac_http_prefix",
                format!(r"^http\.{V}\.rbac\.(({V})\.).*?"),
                "policy",
            ),
            except(
                "envoy.proxy_protocol_prefix",
                format!(r"^proxy_proto\.(({V})\.).+$"),
                "versions",
            ),
            r(
                "envoy.proxy_protocol_version",
                format!(r"^proxy_proto\.((?:{V}\.)?versions\.v([0-9])\.){W}+$"),
            ),
            r(
                "envoy.tls_certificate",
                format!(r"^{LISTENER_OR_CLUSTER}\.ssl\.certificate\.(({V})\.).*$"),
            ),
            r("envoy.xds_resource_name", format!(r"^sds\.(({V})\.).+")),
            r(
                "envoy.health_check_name",
                format!(r"^cluster\.{V}\.health_check(\.name\.({V}))\..+"),
            ),
        ]
    });

    /// Token patterns, in Envoy's order (after every regex).
    pub const TOKENS: &[(&str, &str)] = &[
        (
            "envoy.mongo_callsite",
            "mongo.*.collection.*.callsite.$.query.**",
        ),
        ("envoy.mongo_collection", "mongo.*.collection.$.**.query.*"),
        ("envoy.mongo_cmd", "mongo.*.cmd.$.**"),
        ("envoy.grpc_bridge_method", "cluster.*.grpc.*.$.**"),
        ("envoy.http_user_agent", "http.*.user_agent.$.**"),
        ("envoy.virtual_cluster", "vhost.*.vcluster.$.**"),
        ("envoy.fault_downstream_cluster", "http.*.fault.$.**"),
        ("envoy.grpc_bridge_service", "cluster.*.grpc.$.**"),
        ("envoy.tcp_prefix", "tcp.$.**"),
        ("envoy.udp_prefix", "udp.$.**"),
        ("envoy.clientssl_prefix", "auth.clientssl.$.**"),
        ("envoy.ratelimit_prefix", "ratelimit.$.**"),
        ("envoy.cluster_name", "cluster.$.**"),
        ("envoy.ext_authz_prefix", "cluster.*.ext_authz.$.**"),
        ("envoy.ext_authz_prefix", "http.*.ext_authz.$.**"),
        ("envoy.http_conn_manager_prefix", "http.$.**"),
        ("envoy.virtual_host", "vhost.$.**"),
        ("envoy.mongo_prefix", "mongo.$.**"),
        ("envoy.route", "vhost.*.route.$.**"),
        ("envoy.thrift_prefix", "thrift.$.**"),
        ("envoy.redis_prefix", "redis.$.**"),
        (
            "envoy.local_http_ratelimit_prefix",
            "$.http_local_rate_limit.**",
        ),
        (
            "envoy.local_network_ratelimit_prefix",
            "local_rate_limit.$.**",
        ),
        (
            "envoy.local_listener_ratelimit_prefix",
            "listener_local_ratelimit.$.**",
        ),
        ("envoy.dns_filter_prefix", "dns_filter.$.**"),
        ("envoy.connection_limit_prefix", "connection_limit.$.**"),
        ("envoy.rbac_prefix", "$.rbac.**"),
        ("envoy.google_grpc_client_prefix", "grpc.$.**"),
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> Vec<Tag> {
        pairs
            .iter()
            .map(|(n, v)| Tag {
                name: (*n).into(),
                value: (*v).into(),
            })
            .collect()
    }

    fn check(producer: &TagProducer, name: &str, extracted: &str, expected: &[(&str, &str)]) {
        let (got_name, mut got_tags) = producer.produce(name);
        assert_eq!(got_name, extracted, "tag-extracted name of {name}");
        let mut want = tags(expected);
        got_tags.sort();
        want.sort();
        assert_eq!(got_tags, want, "tags of {name}");
    }

    /// Cases from Envoy's statistics documentation and the stat names it lists.
    /// https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/observability/statistics
    #[test]
    fn envoy_default_tags() {
        let p = TagProducer::envoy_default();
        check(
            &p,
            "cluster.test_cluster.upstream_rq_timeout",
            "cluster.upstream_rq_timeout",
            &[("envoy.cluster_name", "test_cluster")],
        );
        check(
            &p,
            "cluster.test_cluster.upstream_rq_200",
            "cluster.upstream_rq",
            &[
                ("envoy.cluster_name", "test_cluster"),
                ("envoy.response_code", "200"),
            ],
        );
        check(
            &p,
            "cluster.test_cluster.upstream_rq_2xx",
            "cluster.upstream_rq_xx",
            &[
                ("envoy.cluster_name", "test_cluster"),
                ("envoy.response_code_class", "2"),
            ],
        );
        check(
            &p,
            "http.ingress_http.downstream_rq_1xx",
            "http.downstream_rq_xx",
            &[
                ("envoy.http_conn_manager_prefix", "ingress_http"),
                ("envoy.response_code_class", "1"),
            ],
        );
        check(
            &p,
            "listener.127.0.0.1_3012.http.http_prefix.downstream_rq_5xx",
            "listener.http.downstream_rq_xx",
            &[
                ("envoy.listener_address", "127.0.0.1_3012"),
                ("envoy.http_conn_manager_prefix", "http_prefix"),
                ("envoy.response_code_class", "5"),
            ],
        );
        check(
            &p,
            "listener.[__1]_0.downstream_cx_total",
            "listener.downstream_cx_total",
            &[("envoy.listener_address", "[__1]_0")],
        );
        // The admin listener keeps its name: "admin" is not an address.
        check(
            &p,
            "listener.admin.downstream_cx_total",
            "listener.admin.downstream_cx_total",
            &[],
        );
        check(
            &p,
            "vhost.vhost_name.vcluster.vcluster_name.upstream_rq_time",
            "vhost.vcluster.upstream_rq_time",
            &[
                ("envoy.virtual_host", "vhost_name"),
                ("envoy.virtual_cluster", "vcluster_name"),
            ],
        );
        check(
            &p,
            "vhost.vh.route.rt.upstream_rq_200",
            "vhost.route.upstream_rq",
            &[
                ("envoy.virtual_host", "vh"),
                ("envoy.route", "rt"),
                ("envoy.response_code", "200"),
            ],
        );
        check(
            &p,
            "tcp.tcp_prefix.downstream_cx_total",
            "tcp.downstream_cx_total",
            &[("envoy.tcp_prefix", "tcp_prefix")],
        );
        check(
            &p,
            "listener_manager.worker_1.dispatcher.loop_duration_us",
            // Envoy removes the id and its dot only: `worker_` stays in the name.
            "listener_manager.worker_dispatcher.loop_duration_us",
            &[("envoy.worker_id", "1")],
        );
        check(
            &p,
            "http.rds_connection_manager.rds.route_config.123.update_success",
            "http.rds.update_success",
            &[
                ("envoy.http_conn_manager_prefix", "rds_connection_manager"),
                ("envoy.rds_route_config", "route_config.123"),
            ],
        );
        check(
            &p,
            "cluster.grpc_cluster.grpc.grpc_service_1.grpc_method_1.success",
            "cluster.grpc.success",
            &[
                ("envoy.cluster_name", "grpc_cluster"),
                ("envoy.grpc_bridge_service", "grpc_service_1"),
                ("envoy.grpc_bridge_method", "grpc_method_1"),
            ],
        );
        check(
            &p,
            "http.egress.user_agent.ios.downstream_cx_total",
            "http.user_agent.downstream_cx_total",
            &[
                ("envoy.http_conn_manager_prefix", "egress"),
                ("envoy.http_user_agent", "ios"),
            ],
        );
        check(
            &p,
            "mongo.mongo_filter.collection.test.callsite.c1.query.total",
            "mongo.collection.callsite.query.total",
            &[
                ("envoy.mongo_prefix", "mongo_filter"),
                ("envoy.mongo_collection", "test"),
                ("envoy.mongo_callsite", "c1"),
            ],
        );
        // A trailing `**` needs at least one token: the virtual cluster is not a tag here.
        check(
            &p,
            "vhost.vh.vcluster.vc",
            "vhost.vcluster.vc",
            &[("envoy.virtual_host", "vh")],
        );
        check(&p, "server.live", "server.live", &[]);
        check(
            &p,
            "server.worker_0.watchdog_miss",
            "server.worker_watchdog_miss",
            &[("envoy.worker_id", "0")],
        );
    }

    fn istio() -> TagProducer {
        // The golden is cloned beside the repository, as the tests crate expects too.
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/vectors/istio-bootstrap/default_golden.json");
        let golden =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let doc: serde_json::Value = serde_json::from_str(&golden).expect("golden JSON");
        let specs: Vec<TagSpec> = doc["stats_config"]["stats_tags"]
            .as_array()
            .expect("stats_tags")
            .iter()
            .map(|t| TagSpec::Regex {
                name: t["tag_name"].as_str().unwrap_or_default().to_string(),
                regex: t["regex"].as_str().unwrap_or_default().to_string(),
            })
            .collect();
        TagProducer::new(false, &specs).expect("Istio's stats_tags compile")
    }

    /// Istio's bootstrap tags, lookahead included (see istio-contract.md §3).
    #[test]
    fn istio_stats_tags() {
        let p = istio();
        check(
            &p,
            "cluster.outbound|9080||reviews.default.svc.cluster.local;.upstream_rq_200",
            "cluster.upstream_rq",
            &[
                (
                    "cluster_name",
                    "outbound|9080||reviews.default.svc.cluster.local",
                ),
                ("response_code", "200"),
            ],
        );
        check(
            &p,
            "cluster.xds-grpc.upstream_cx_total",
            "cluster.xds-grpc.upstream_cx_total",
            &[],
        );
        check(
            &p,
            "listener.0.0.0.0_15006.http.10.0.0.1_8080.downstream_rq_2xx",
            "listener.http.downstream_rq",
            &[
                ("listener_address", "0.0.0.0_15006"),
                ("http_conn_manager_listener_prefix", "10.0.0.1_8080"),
                ("response_code_class", "2xx"),
            ],
        );
        check(
            &p,
            "http.10.0.0.1_8080;.downstream_rq_total",
            "http.downstream_rq_total",
            &[("http_conn_manager_prefix", "10.0.0.1_8080")],
        );
        check(
            &p,
            "tcp.inbound|9080||;.downstream_cx_total",
            "tcp.downstream_cx_total",
            &[("tcp_prefix", "inbound|9080||;")],
        );
        check(
            &p,
            "http.inbound_0.0.0.0_9080;.rbac.allowed",
            "http.rbac",
            &[
                ("http_conn_manager_prefix", "inbound_0.0.0.0_9080"),
                ("authz_enforce_result", "allowed"),
            ],
        );
        check(
            &p,
            "server.main_thread.watchdog_miss",
            "server.watchdog_miss",
            &[("thread_name", "main_thread")],
        );
    }

    #[test]
    fn configured_regex_group_rules() {
        // One group: it is both removed and the value.
        let p = TagProducer::new(
            false,
            &[TagSpec::Regex {
                name: "t".into(),
                regex: r"\.(x+)\.".into(),
            }],
        )
        .expect("compiles");
        check(&p, "a.xx.b", "a..b", &[("t", "xx")]);
        // No group: no tag.
        let p = TagProducer::new(
            false,
            &[TagSpec::Regex {
                name: "t".into(),
                regex: r"xx".into(),
            }],
        )
        .expect("compiles");
        check(&p, "a.xx.b", "a.xx.b", &[]);
        // Fixed values tag every stat; a default by name needs no regex.
        let p = TagProducer::new(
            false,
            &[
                TagSpec::Fixed {
                    name: "mesh".into(),
                    value: "m1".into(),
                },
                TagSpec::Builtin {
                    name: "envoy.cluster_name".into(),
                },
            ],
        )
        .expect("compiles");
        check(
            &p,
            "cluster.c.upstream_rq_200",
            "cluster.upstream_rq_200",
            &[("mesh", "m1"), ("envoy.cluster_name", "c")],
        );
        assert!(TagProducer::new(
            false,
            &[TagSpec::Builtin {
                name: "nope".into()
            }]
        )
        .is_err());
        assert!(TagProducer::new(
            false,
            &[TagSpec::Regex {
                name: "t".into(),
                regex: "(".into()
            }]
        )
        .is_err());
    }

    #[test]
    fn prefixes_follow_envoys_rule() {
        assert_eq!(regex_prefix(r"^cluster\.((.*?)\.)"), Some("cluster".into()));
        assert_eq!(regex_prefix(r"^listener(?=\.).*?"), Some("listener".into()));
        assert_eq!(regex_prefix(r"^cluster(\.(.+);)"), None);
        assert_eq!(regex_prefix(r"_rq(_(\d{3}))$"), None);
        assert_eq!(token_prefix("cluster.$.**"), Some("cluster".into()));
        assert_eq!(token_prefix("$.rbac.**"), None);
    }
}
