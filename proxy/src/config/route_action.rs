//! Forwarding route actions: the target cluster (named, from a header, or weighted), timeouts,
//! path and host rewrites.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#config-route-v3-routeaction
#![allow(deprecated)] // `total_weight` is deprecated but Envoy still checks it.

use super::error::{FieldPath, Result};
use super::hash_policy::{translate_hash_policy, HashPolicy};
use super::header_mutation::{header_mutation, HeaderMutation};
use super::matcher::full_regex;
use super::resolver::Resolver;
use super::retry_policy::{translate_retry_policy, RetryPolicy};
use super::slots::Slot;
use super::values::optional_duration;
use crate::upstream::ClusterRuntime;
use regex::Regex;
use std::sync::Arc;
use std::time::Duration;
use xds_proto::pb::envoy::config::route::v3 as proto;

#[derive(Debug)]
pub struct Forward {
    pub target: ClusterTarget,
    /// None disables the timeout (Envoy's `timeout: 0s`); the default is 15 s. A route with
    /// `max_stream_duration` has none: Envoy then leaves the bound to the stream's duration.
    pub timeout: Option<Duration>,
    /// `idle_timeout`: the stream idle timeout on this route instead of the connection
    /// manager's (`Some(None)`: disabled by `0s`).
    pub idle_timeout: Option<Option<Duration>>,
    /// `max_stream_duration`, when the route sets it.
    pub stream_duration: Option<StreamDuration>,
    pub prefix_rewrite: Option<String>,
    /// `regex_rewrite`: pattern and substitution (already in the regex crate's `$1` syntax).
    pub regex_rewrite: Option<(Regex, String)>,
    pub host_rewrite: HostRewrite,
    /// How RING_HASH and MAGLEV clusters hash the request (empty: they pick at random).
    pub hash_policy: HashPolicy,
    /// `cluster_not_found_response_code`: the status when the target cluster does not exist.
    pub cluster_not_found: http::StatusCode,
    /// `request_mirror_policies`: copies of the request sent to other clusters.
    pub mirrors: Vec<Mirror>,
    /// Which of the cluster's circuit breaker thresholds (and connection pools) the request uses.
    pub priority: super::circuit_breakers::Priority,
    /// The route's retry policy, else its virtual host's (Envoy takes the most specific one
    /// whole; the two are not merged). Shared by the routes of a virtual host.
    pub retry: Option<Arc<RetryPolicy>>,
    /// `hedge_policy.hedge_on_per_try_timeout` (the route's policy, else the virtual host's):
    /// a per-try timeout starts another attempt beside the one in flight instead of
    /// cancelling it.
    pub hedge_on_per_try_timeout: bool,
    /// `max_grpc_timeout` and `grpc_timeout_offset`: a gRPC request's route timeout comes
    /// from its `grpc-timeout`. None when `max_grpc_timeout` is unset or the route has
    /// `max_stream_duration` (Envoy then ignores both, as it ignores `timeout`).
    pub grpc_timeout: Option<GrpcTimeout>,
    /// How much of a request body is kept for a retry (`per_request_buffer_limit_bytes` of the
    /// route, else of the virtual host, else 1 MiB, the listener buffer limit's default).
    pub buffer_limit: usize,
}

/// What a virtual host passes down to its routes' actions.
#[derive(Debug, Default, Clone)]
pub struct VhostDefaults {
    pub retry: Option<Arc<RetryPolicy>>,
    /// The virtual host's `hedge_policy`, when it has one.
    pub hedge: Option<bool>,
    pub buffer_limit: Option<usize>,
}

/// Envoy's default `per_connection_buffer_limit_bytes`.
const DEFAULT_BUFFER_LIMIT: usize = 1024 * 1024;

/// A cluster resolved at config time to its slot. The slot is empty while the cluster is
/// unknown (allowed when `validate_clusters` is off, and for clusters CDS has not sent yet):
/// the request then gets 503 (Envoy's NC).
#[derive(Debug, Clone)]
pub struct NamedCluster {
    pub slot: Arc<Slot<ClusterRuntime>>,
}

impl NamedCluster {
    pub fn name(&self) -> &str {
        &self.slot.name
    }

    /// The cluster as it is now, kept by the caller for the life of its request.
    pub fn current(&self) -> Option<Arc<ClusterRuntime>> {
        self.slot.get()
    }
}

#[derive(Debug)]
pub enum ClusterTarget {
    Named(NamedCluster),
    /// The cluster named by a request header (`cluster_header`), looked up per request.
    Header(http::HeaderName),
    Weighted {
        clusters: Vec<WeightedTarget>,
        total: u64,
    },
}

#[derive(Debug)]
pub struct WeightedTarget {
    pub cluster: NamedCluster,
    pub weight: u64,
    pub request_headers: HeaderMutation,
    pub response_headers: HeaderMutation,
    pub host_rewrite: Option<http::HeaderValue>,
}

impl ClusterTarget {
    /// Picks a weighted cluster for `draw` in `0..total`; None for other targets.
    pub fn weighted_pick(&self, draw: u64) -> Option<&WeightedTarget> {
        let ClusterTarget::Weighted { clusters, .. } = self else {
            return None;
        };
        let mut acc = 0;
        clusters.iter().find(|c| {
            acc += c.weight;
            draw < acc
        })
    }
}

/// A route's `max_stream_duration`:
/// https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#config-route-v3-routeaction-maxstreamduration
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamDuration {
    /// `max_stream_duration`: replaces the connection manager's (`Some(None)`: `0s` disables
    /// it on this route); None keeps the connection manager's.
    pub max: Option<Option<Duration>>,
    /// `grpc_timeout_header_max`: when set, a request's `grpc-timeout` header is the stream's
    /// duration, capped at this (zero: no cap).
    pub grpc_header_max: Option<Duration>,
    /// `grpc_timeout_header_offset`: taken off the header's timeout.
    pub grpc_header_offset: Option<Duration>,
}

/// A route's deprecated `max_grpc_timeout` and `grpc_timeout_offset`, which Envoy 1.40 still
/// honours on routes without `max_stream_duration`.
/// Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#envoy-v3-api-field-config-route-v3-routeaction-max-grpc-timeout
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcTimeout {
    /// `max_grpc_timeout`; None for `0s` (no cap, and no timeout without the header).
    pub max: Option<Duration>,
    /// `grpc_timeout_offset`; None when unset or `0s`.
    pub offset: Option<Duration>,
}

impl GrpcTimeout {
    /// The route timeout of a gRPC request whose `grpc-timeout` says `header` (None: absent,
    /// malformed or zero — all mean no deadline to gRPC). The offset comes off the header's
    /// value when it is smaller than it; the result is capped at the maximum. Checked against
    /// Envoy 1.40: with `max 1s, offset 100ms`, 500m → 400 ms, 5S → 1 s (no offset), 50m →
    /// 50 ms, none → 1 s.
    pub fn route_timeout(&self, header: Option<Duration>) -> Option<Duration> {
        let mut timeout = header.filter(|t| !t.is_zero());
        if let (Some(t), Some(offset)) = (timeout, self.offset) {
            if offset < t {
                timeout = Some(t - offset);
            }
        }
        match (timeout, self.max) {
            (Some(t), Some(max)) if t > max => Some(max),
            (None, max) => max,
            (t, _) => t,
        }
    }
}

/// `hedge_policy`: only `hedge_on_per_try_timeout` has an effect (Envoy 1.40 accepts
/// `initial_requests` and `additional_request_chance` without acting on them either; see
/// `config/fields.rs`).
/// Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#envoy-v3-api-msg-config-route-v3-hedgepolicy
pub fn hedge_on_per_try_timeout(h: &proto::HedgePolicy) -> bool {
    h.hedge_on_per_try_timeout
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRewrite {
    None,
    Literal(http::HeaderValue),
    /// The upstream host's name (DNS clusters) replaces the authority.
    Auto,
    /// The value of this request header replaces the authority.
    Header(http::HeaderName),
}

fn stream_duration(
    m: &proto::route_action::MaxStreamDuration,
    path: &FieldPath,
) -> Result<StreamDuration> {
    Ok(StreamDuration {
        max: optional_duration(
            m.max_stream_duration.as_ref(),
            &path.field("max_stream_duration"),
        )?
        .map(|d| Some(d).filter(|d| !d.is_zero())),
        grpc_header_max: optional_duration(
            m.grpc_timeout_header_max.as_ref(),
            &path.field("grpc_timeout_header_max"),
        )?,
        grpc_header_offset: optional_duration(
            m.grpc_timeout_header_offset.as_ref(),
            &path.field("grpc_timeout_header_offset"),
        )?,
    })
}

pub fn translate_forward(
    ra: &proto::RouteAction,
    path: &FieldPath,
    resolve: &Resolver<'_>,
    validate: bool,
    vhost: &VhostDefaults,
    route_buffer_limit: Option<usize>,
) -> Result<Forward> {
    use proto::route_action::{ClusterSpecifier as C, HostRewriteSpecifier as H};
    let named = |name: &str, p: &FieldPath| -> Result<NamedCluster> {
        if name.is_empty() {
            return Err(p.error("must not be empty"));
        }
        if validate && !resolve.cluster_exists(name) {
            return Err(p.error(format!("unknown cluster '{name}'")));
        }
        Ok(NamedCluster {
            slot: resolve.cluster_slot(name),
        })
    };
    let target = match &ra.cluster_specifier {
        Some(C::Cluster(name)) => ClusterTarget::Named(named(name, &path.field("cluster"))?),
        Some(C::ClusterHeader(h)) => ClusterTarget::Header(
            http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                .map_err(|_| path.field("cluster_header").error("invalid header name"))?,
        ),
        Some(C::WeightedClusters(w)) => weighted(w, &path.field("weighted_clusters"), &named)?,
        Some(_) => return Err(path.error("cluster specifier plugins are not supported")),
        None => return Err(path.error("a cluster specifier is required")),
    };
    let timeout = match optional_duration(ra.timeout.as_ref(), &path.field("timeout"))? {
        None => Some(Duration::from_secs(15)),
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
    };
    let idle_timeout = optional_duration(ra.idle_timeout.as_ref(), &path.field("idle_timeout"))?
        .map(|d| Some(d).filter(|d| !d.is_zero()));
    let stream_duration = match &ra.max_stream_duration {
        Some(m) => Some(stream_duration(m, &path.field("max_stream_duration"))?),
        None => None,
    };
    // Envoy's router ignores `timeout` on a route with `max_stream_duration` (Istio sends
    // both, `timeout: 0s`); verified with Envoy 1.40.
    let timeout = if stream_duration.is_some() {
        None
    } else {
        timeout
    };
    // The deprecated gRPC timeouts count only on routes without `max_stream_duration`
    // (Envoy's newer timeouts replace them there).
    let grpc_timeout = match (&ra.max_grpc_timeout, &stream_duration) {
        (Some(max), None) => Some(GrpcTimeout {
            max: optional_duration(Some(max), &path.field("max_grpc_timeout"))?
                .filter(|d| !d.is_zero()),
            offset: optional_duration(
                ra.grpc_timeout_offset.as_ref(),
                &path.field("grpc_timeout_offset"),
            )?
            .filter(|d| !d.is_zero()),
        }),
        _ => None,
    };
    let host_rewrite = match &ra.host_rewrite_specifier {
        None => HostRewrite::None,
        Some(H::HostRewriteLiteral(h)) => {
            HostRewrite::Literal(http::HeaderValue::from_str(h).map_err(|_| {
                path.field("host_rewrite_literal")
                    .error("invalid header value")
            })?)
        }
        Some(H::AutoHostRewrite(b)) if b.value => HostRewrite::Auto,
        Some(H::AutoHostRewrite(_)) => HostRewrite::None,
        Some(H::HostRewriteHeader(h)) => HostRewrite::Header(
            http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).map_err(|_| {
                path.field("host_rewrite_header")
                    .error("invalid header name")
            })?,
        ),
        Some(_) => return Err(path.error("host_rewrite_path_regex is not supported yet")),
    };
    if !ra.prefix_rewrite.is_empty() && ra.regex_rewrite.is_some() {
        return Err(path.error("prefix_rewrite and regex_rewrite cannot both be set"));
    }
    let regex_rewrite = match &ra.regex_rewrite {
        Some(r) => {
            let p = path.field("regex_rewrite");
            let pattern = r
                .pattern
                .as_ref()
                .ok_or_else(|| p.field("pattern").error("is required"))?;
            let regex = Regex::new(&pattern.regex).map_err(|e| {
                p.field("pattern")
                    .field("regex")
                    .error(format!("invalid regex: {e}"))
            })?;
            // Validates like a full-match pattern would (repetition limits), then keeps the
            // unanchored form: the rewrite replaces every match inside the path.
            full_regex(pattern, &p.field("pattern"))?;
            Some((regex, re2_substitution(&r.substitution)))
        }
        None => None,
    };
    Ok(Forward {
        target,
        timeout,
        idle_timeout,
        stream_duration,
        prefix_rewrite: (!ra.prefix_rewrite.is_empty()).then(|| ra.prefix_rewrite.clone()),
        regex_rewrite,
        host_rewrite,
        hash_policy: translate_hash_policy(&ra.hash_policy, &path.field("hash_policy"))?,
        cluster_not_found: cluster_not_found(ra, path)?,
        mirrors: ra
            .request_mirror_policies
            .iter()
            .enumerate()
            .map(|(i, m)| {
                mirror(
                    m,
                    &path.field("request_mirror_policies").index(i),
                    resolve,
                    &named,
                )
            })
            .collect::<Result<_>>()?,
        priority: super::circuit_breakers::Priority::from_proto(
            ra.priority,
            &path.field("priority"),
        )?,
        retry: match &ra.retry_policy {
            Some(p) => Some(Arc::new(translate_retry_policy(
                p,
                &path.field("retry_policy"),
            )?)),
            None => vhost.retry.clone(),
        },
        hedge_on_per_try_timeout: match &ra.hedge_policy {
            Some(h) => hedge_on_per_try_timeout(h),
            None => vhost.hedge.unwrap_or(false),
        },
        grpc_timeout,
        buffer_limit: route_buffer_limit
            .or(vhost.buffer_limit)
            .unwrap_or(DEFAULT_BUFFER_LIMIT),
    })
}

/// Where a mirror policy sends its copy of the request.
#[derive(Debug)]
pub enum MirrorTarget {
    Named(NamedCluster),
    /// The cluster named by this request header (`cluster_header`).
    Header(http::HeaderName),
}

/// One `request_mirror_policies` entry.
/// Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#envoy-v3-api-msg-config-route-v3-routeaction-requestmirrorpolicy
#[derive(Debug)]
pub struct Mirror {
    pub target: MirrorTarget,
    /// `runtime_fraction` in parts per million; None mirrors every request.
    pub per_million: Option<u64>,
    /// `disable_shadow_host_suffix_append`: the copy keeps the host as it is, without
    /// `-shadow`.
    pub keep_host: bool,
}

fn mirror(
    m: &proto::route_action::RequestMirrorPolicy,
    path: &FieldPath,
    resolve: &Resolver<'_>,
    named: &dyn Fn(&str, &FieldPath) -> Result<NamedCluster>,
) -> Result<Mirror> {
    let target = match (m.cluster.is_empty(), m.cluster_header.is_empty()) {
        (false, true) => MirrorTarget::Named(named(&m.cluster, &path.field("cluster"))?),
        (true, false) => MirrorTarget::Header(
            http::HeaderName::from_bytes(m.cluster_header.to_ascii_lowercase().as_bytes())
                .map_err(|_| path.field("cluster_header").error("invalid header name"))?,
        ),
        _ => return Err(path.error("exactly one of cluster or cluster_header is required")),
    };
    let per_million = m
        .runtime_fraction
        .as_ref()
        .map(|f| super::route::runtime_fraction(f, &path.field("runtime_fraction"), resolve))
        .transpose()?;
    Ok(Mirror {
        target,
        per_million,
        keep_host: m.disable_shadow_host_suffix_append,
    })
}

/// Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#envoy-v3-api-enum-config-route-v3-routeaction-clusternotfoundresponsecode
fn cluster_not_found(ra: &proto::RouteAction, path: &FieldPath) -> Result<http::StatusCode> {
    use proto::route_action::ClusterNotFoundResponseCode as C;
    match C::try_from(ra.cluster_not_found_response_code) {
        Ok(C::ServiceUnavailable) => Ok(http::StatusCode::SERVICE_UNAVAILABLE),
        Ok(C::NotFound) => Ok(http::StatusCode::NOT_FOUND),
        Ok(C::InternalServerError) => Ok(http::StatusCode::INTERNAL_SERVER_ERROR),
        Err(_) => Err(path
            .field("cluster_not_found_response_code")
            .error("unknown value")),
    }
}

fn weighted(
    w: &proto::WeightedCluster,
    path: &FieldPath,
    named: &dyn Fn(&str, &FieldPath) -> Result<NamedCluster>,
) -> Result<ClusterTarget> {
    if w.clusters.is_empty() {
        return Err(path
            .field("clusters")
            .error("at least one cluster is required"));
    }
    if !w.runtime_key_prefix.is_empty() {
        return Err(path
            .field("runtime_key_prefix")
            .error("runtime weights are not supported"));
    }
    let mut clusters = Vec::with_capacity(w.clusters.len());
    for (i, c) in w.clusters.iter().enumerate() {
        let p = path.field("clusters").index(i);
        if !c.cluster_header.is_empty() {
            return Err(p
                .field("cluster_header")
                .error("cluster_header in weighted clusters is not supported"));
        }
        let host_rewrite = match &c.host_rewrite_specifier {
            Some(
                proto::weighted_cluster::cluster_weight::HostRewriteSpecifier::HostRewriteLiteral(
                    h,
                ),
            ) => Some(http::HeaderValue::from_str(h).map_err(|_| {
                p.field("host_rewrite_literal")
                    .error("invalid header value")
            })?),
            None => None,
        };
        clusters.push(WeightedTarget {
            cluster: named(&c.name, &p.field("name"))?,
            weight: u64::from(c.weight.as_ref().map(|v| v.value).unwrap_or(0)),
            request_headers: header_mutation(
                &c.request_headers_to_add,
                &c.request_headers_to_remove,
                &p,
                "request",
            )?,
            response_headers: header_mutation(
                &c.response_headers_to_add,
                &c.response_headers_to_remove,
                &p,
                "response",
            )?,
            host_rewrite,
        });
    }
    let sum: u64 = clusters.iter().map(|c| c.weight).sum();
    let total = match w.total_weight.as_ref().map(|v| u64::from(v.value)) {
        Some(t) if t != sum => {
            return Err(path.field("total_weight").error(format!(
                "sum of weights in the weighted_cluster should add up to {t}"
            )))
        }
        _ => sum,
    };
    if total == 0 {
        return Err(path.error("sum of weights in the weighted_cluster must be greater than 0"));
    }
    Ok(ClusterTarget::Weighted { clusters, total })
}

/// RE2 writes capture groups as `\1`; the regex crate as `${1}`, with `$` literal as `$$`.
pub(super) fn re2_substitution(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '$' => out.push_str("$$"),
            '\\' => match chars.peek().copied() {
                Some(d) if d.is_ascii_digit() => {
                    chars.next();
                    out.push_str(&format!("${{{d}}}"));
                }
                Some('\\') => {
                    chars.next();
                    out.push('\\');
                }
                _ => out.push('\\'),
            },
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_follow_envoys_arithmetic() {
        let ms = Duration::from_millis;
        let t = GrpcTimeout {
            max: Some(ms(1000)),
            offset: Some(ms(100)),
        };
        assert_eq!(t.route_timeout(None), Some(ms(1000)));
        assert_eq!(t.route_timeout(Some(ms(500))), Some(ms(400)));
        assert_eq!(t.route_timeout(Some(ms(5000))), Some(ms(1000)));
        // An offset as long as the timeout is not taken off.
        assert_eq!(t.route_timeout(Some(ms(50))), Some(ms(50)));
        assert_eq!(t.route_timeout(Some(ms(100))), Some(ms(100)));
        assert_eq!(t.route_timeout(Some(Duration::ZERO)), Some(ms(1000)));
        // No cap: the header alone, and no timeout without it.
        let uncapped = GrpcTimeout {
            max: None,
            offset: None,
        };
        assert_eq!(uncapped.route_timeout(None), None);
        assert_eq!(uncapped.route_timeout(Some(ms(5000))), Some(ms(5000)));
    }

    #[test]
    fn re2_substitutions_become_regex_crate_syntax() {
        assert_eq!(re2_substitution(r"/v2/\1/x$"), "/v2/${1}/x$$");
        let re = Regex::new("^/service/([^/]+)(/.*)$").expect("regex");
        assert_eq!(
            re.replace(
                "/service/foo/v1/api",
                re2_substitution(r"\2/instance/\1").as_str()
            ),
            "/v1/api/instance/foo"
        );
    }
}
