//! Route retry policies: `retry_on` parsed into a bit set, the retry count, per-try timeouts,
//! back-off bounds, retriable status codes and headers, and the previous-hosts predicate, all
//! resolved when the route table is translated so the data path only tests bits.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#envoy-v3-api-msg-config-route-v3-retrypolicy
//! and https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/router_filter#x-envoy-retry-on

use super::error::{FieldPath, Result};
use super::matcher::{header_matcher, HeaderMatcher};
use super::values::optional_duration;
use std::time::Duration;
use xds_proto::pb::envoy::config::route::v3 as proto;

/// The conditions a retry is made on, one bit per `retry_on` / `x-envoy-retry-on` /
/// `x-envoy-retry-grpc-on` token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn(u32);

impl RetryOn {
    pub const NONE: Self = Self(0);
    pub const FIVE_XX: Self = Self(1);
    pub const GATEWAY_ERROR: Self = Self(1 << 1);
    pub const RESET: Self = Self(1 << 2);
    pub const RESET_BEFORE_REQUEST: Self = Self(1 << 3);
    pub const CONNECT_FAILURE: Self = Self(1 << 4);
    pub const RETRIABLE_4XX: Self = Self(1 << 5);
    pub const REFUSED_STREAM: Self = Self(1 << 6);
    pub const RETRIABLE_STATUS_CODES: Self = Self(1 << 7);
    pub const RETRIABLE_HEADERS: Self = Self(1 << 8);
    pub const ENVOY_RATELIMITED: Self = Self(1 << 9);
    pub const GRPC_CANCELLED: Self = Self(1 << 10);
    pub const GRPC_DEADLINE_EXCEEDED: Self = Self(1 << 11);
    pub const GRPC_RESOURCE_EXHAUSTED: Self = Self(1 << 12);
    pub const GRPC_UNAVAILABLE: Self = Self(1 << 13);
    pub const GRPC_INTERNAL: Self = Self(1 << 14);
    /// Any of the gRPC conditions.
    pub const GRPC: Self = Self(0b11111 << 10);

    /// The HTTP tokens (`retry_on` and `x-envoy-retry-on`).
    const HTTP_TOKENS: [(&'static str, Self); 10] = [
        ("5xx", Self::FIVE_XX),
        ("gateway-error", Self::GATEWAY_ERROR),
        ("reset", Self::RESET),
        ("reset-before-request", Self::RESET_BEFORE_REQUEST),
        ("connect-failure", Self::CONNECT_FAILURE),
        ("retriable-4xx", Self::RETRIABLE_4XX),
        ("refused-stream", Self::REFUSED_STREAM),
        ("retriable-status-codes", Self::RETRIABLE_STATUS_CODES),
        ("retriable-headers", Self::RETRIABLE_HEADERS),
        ("envoy-ratelimited", Self::ENVOY_RATELIMITED),
    ];
    /// The gRPC tokens (`retry_on` and `x-envoy-retry-grpc-on`).
    const GRPC_TOKENS: [(&'static str, Self); 5] = [
        ("cancelled", Self::GRPC_CANCELLED),
        ("deadline-exceeded", Self::GRPC_DEADLINE_EXCEEDED),
        ("resource-exhausted", Self::GRPC_RESOURCE_EXHAUSTED),
        ("unavailable", Self::GRPC_UNAVAILABLE),
        ("internal", Self::GRPC_INTERNAL),
    ];

    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 != 0
    }

    pub fn with(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Parses a comma-separated list. Envoy ignores tokens it does not know (with a warning at
    /// config load), so unknown ones are returned for the caller to report, not refused.
    pub fn parse<'a>(text: &'a str, grpc_only: bool, mut unknown: impl FnMut(&'a str)) -> Self {
        let mut bits = Self::NONE;
        for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let known = Self::GRPC_TOKENS
                .iter()
                .chain(if grpc_only {
                    &[][..]
                } else {
                    &Self::HTTP_TOKENS[..]
                })
                .find(|(name, _)| *name == token);
            match known {
                Some((_, bit)) => bits = bits.with(*bit),
                None => unknown(token),
            }
        }
        bits
    }
}

/// Envoy's fully jittered exponential back-off bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackOff {
    pub base: Duration,
    pub max: Duration,
}

impl BackOff {
    /// Envoy's defaults: 25 ms base, ten times the base at most.
    pub const DEFAULT: BackOff = BackOff {
        base: Duration::from_millis(25),
        max: Duration::from_millis(250),
    };
}

#[derive(Debug)]
pub struct RetryPolicy {
    pub retry_on: RetryOn,
    /// `num_retries`: 1 when the policy leaves it unset.
    pub num_retries: u32,
    /// None: no per-try timeout (only the route timeout bounds the attempts).
    pub per_try_timeout: Option<Duration>,
    /// `per_try_idle_timeout`: an attempt ends when its upstream is silent this long, from
    /// the request's end until the response's end. None: no idle timer.
    pub per_try_idle_timeout: Option<Duration>,
    pub back_off: BackOff,
    /// `rate_limited_retry_back_off`: the wait a retried response asks for in its headers.
    pub rate_limited: Option<RateLimitedBackOff>,
    pub retriable_status_codes: Vec<u16>,
    pub retriable_headers: Vec<HeaderMatcher>,
    /// The policy applies only to requests matching all of these (none: every request).
    pub retriable_request_headers: Vec<HeaderMatcher>,
    /// `envoy.retry_host_predicates.previous_hosts`: a retry avoids the hosts already tried.
    pub avoid_previous_hosts: bool,
    /// How many times host selection is redone when the predicate rejects a host.
    pub host_selection_max_attempts: u32,
}

impl RetryPolicy {
    /// The policy Envoy applies when the route has none but the request asks for retries with
    /// `x-envoy-retry-on`: one retry, default back-off.
    pub const fn header_only() -> RetryPolicy {
        RetryPolicy {
            retry_on: RetryOn::NONE,
            num_retries: 1,
            per_try_timeout: None,
            per_try_idle_timeout: None,
            back_off: BackOff::DEFAULT,
            rate_limited: None,
            retriable_status_codes: Vec::new(),
            retriable_headers: Vec::new(),
            retriable_request_headers: Vec::new(),
            avoid_previous_hosts: false,
            host_selection_max_attempts: 1,
        }
    }
}

pub fn translate_retry_policy(p: &proto::RetryPolicy, path: &FieldPath) -> Result<RetryPolicy> {
    // Destructured without `..`: a field added to the proto is a compile error here.
    let proto::RetryPolicy {
        retry_on,
        num_retries,
        per_try_timeout,
        per_try_idle_timeout,
        retry_priority,
        retry_host_predicate,
        retry_options_predicates,
        host_selection_retry_max_attempts,
        retriable_status_codes,
        retry_back_off,
        rate_limited_retry_back_off,
        retriable_headers,
        retriable_request_headers,
        refresh_cluster_on_retry,
    } = p;
    let refuse = |field: &str, what: &str| Err(path.field(field).error(what.to_string()));
    if retry_priority.is_some() {
        return refuse("retry_priority", "retry priority plugins are not supported");
    }
    if !retry_options_predicates.is_empty() {
        return refuse(
            "retry_options_predicates",
            "retry options predicates are not supported",
        );
    }
    if *refresh_cluster_on_retry {
        return refuse(
            "refresh_cluster_on_retry",
            "refreshing the cluster on retry is not supported",
        );
    }
    let mut unknown = Vec::new();
    let bits = RetryOn::parse(retry_on, false, |t| unknown.push(t));
    if !unknown.is_empty() {
        tracing::warn!(target: "config", "{}: unknown retry_on token(s) [{}] are ignored", path.field("retry_on"), unknown.join(","));
    }
    let per_try_timeout =
        optional_duration(per_try_timeout.as_ref(), &path.field("per_try_timeout"))?
            .filter(|d| !d.is_zero());
    let per_try_idle_timeout = optional_duration(
        per_try_idle_timeout.as_ref(),
        &path.field("per_try_idle_timeout"),
    )?
    .filter(|d| !d.is_zero());
    let rate_limited = rate_limited_retry_back_off
        .as_ref()
        .map(|r| rate_limited_back_off(r, &path.field("rate_limited_retry_back_off")))
        .transpose()?;
    let back_off = match retry_back_off {
        None => BackOff::DEFAULT,
        Some(b) => {
            let b_path = path.field("retry_back_off");
            let base = optional_duration(b.base_interval.as_ref(), &b_path.field("base_interval"))?
                .ok_or_else(|| b_path.field("base_interval").error("is required"))?;
            if base.is_zero() {
                return Err(b_path
                    .field("base_interval")
                    .error("must be greater than 0s"));
            }
            let max = optional_duration(b.max_interval.as_ref(), &b_path.field("max_interval"))?
                .unwrap_or(base * 10);
            if max.is_zero() {
                return Err(b_path
                    .field("max_interval")
                    .error("must be greater than 0s"));
            }
            if max < base {
                return Err(b_path
                    .field("max_interval")
                    .error("must be greater than or equal to the base_interval"));
            }
            BackOff { base, max }
        }
    };
    let mut avoid_previous_hosts = false;
    for (i, predicate) in retry_host_predicate.iter().enumerate() {
        let p_path = path.field("retry_host_predicate").index(i);
        host_predicate(predicate, &p_path)?;
        avoid_previous_hosts = true;
    }
    let matchers = |list: &[proto::HeaderMatcher], field: &str| -> Result<Vec<HeaderMatcher>> {
        list.iter()
            .enumerate()
            .map(|(i, m)| header_matcher(m, &path.field(field).index(i)))
            .collect()
    };
    Ok(RetryPolicy {
        retry_on: bits,
        num_retries: num_retries.as_ref().map_or(1, |n| n.value),
        per_try_timeout,
        per_try_idle_timeout,
        back_off,
        rate_limited,
        // Codes outside the HTTP range can never match a response; Envoy accepts them too.
        retriable_status_codes: retriable_status_codes
            .iter()
            .filter_map(|c| u16::try_from(*c).ok())
            .collect(),
        retriable_headers: matchers(retriable_headers, "retriable_headers")?,
        retriable_request_headers: matchers(
            retriable_request_headers,
            "retriable_request_headers",
        )?,
        avoid_previous_hosts,
        host_selection_max_attempts: match *host_selection_retry_max_attempts {
            0 => 1,
            n => u32::try_from(n.max(1)).unwrap_or(u32::MAX),
        },
    })
}

/// Where a reset header's value says to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetFormat {
    /// Seconds to wait (`Retry-After: 120`).
    Seconds,
    /// The Unix time, in seconds, to retry at (`X-RateLimit-Reset: 1595320702`).
    UnixTimestamp,
}

/// `rate_limited_retry_back_off`: the response headers tried, in order, for the back-off, and
/// the longest interval taken from one (a longer one is passed over for the next header).
/// Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#envoy-v3-api-msg-config-route-v3-retrypolicy-ratelimitedretrybackoff
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitedBackOff {
    pub reset_headers: Vec<(http::HeaderName, ResetFormat)>,
    /// 300 s when unset.
    pub max_interval: Duration,
}

fn rate_limited_back_off(
    r: &proto::retry_policy::RateLimitedRetryBackOff,
    path: &FieldPath,
) -> Result<RateLimitedBackOff> {
    let proto::retry_policy::RateLimitedRetryBackOff {
        reset_headers,
        max_interval,
    } = r;
    if reset_headers.is_empty() {
        return Err(path
            .field("reset_headers")
            .error("at least one reset header is required"));
    }
    let mut headers = Vec::with_capacity(reset_headers.len());
    for (i, h) in reset_headers.iter().enumerate() {
        let h_path = path.field("reset_headers").index(i);
        let name = http::HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes())
            .map_err(|_| h_path.field("name").error("invalid header name"))?;
        use proto::retry_policy::ResetHeaderFormat as F;
        let format = match F::try_from(h.format) {
            Ok(F::Seconds) => ResetFormat::Seconds,
            Ok(F::UnixTimestamp) => ResetFormat::UnixTimestamp,
            Err(_) => return Err(h_path.field("format").error("unknown value")),
        };
        headers.push((name, format));
    }
    let max_path = path.field("max_interval");
    let max_interval = match optional_duration(max_interval.as_ref(), &max_path)? {
        None => Duration::from_secs(300),
        Some(d) if d.is_zero() => return Err(max_path.error("must be greater than 0s")),
        Some(d) => d,
    };
    Ok(RateLimitedBackOff {
        reset_headers: headers,
        max_interval,
    })
}

/// Only `envoy.retry_host_predicates.previous_hosts` is implemented; Envoy finds the
/// predicate by its typed config's type, so the config is required.
fn host_predicate(p: &proto::retry_policy::RetryHostPredicate, path: &FieldPath) -> Result<()> {
    use proto::retry_policy::retry_host_predicate::ConfigType;
    let Some(ConfigType::TypedConfig(any)) = &p.config_type else {
        return Err(path.error(format!(
            "Didn't find a registered implementation for '{}' with type URL: ''",
            p.name
        )));
    };
    match super::extension::decode(any, &path.field("typed_config"))? {
        Some(xds_proto::Extension::PreviousHostsPredicate(_)) => Ok(()),
        _ => Err(path.field("typed_config").error(format!(
            "retry host predicate {} is not supported",
            any.type_url
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Translates the retry policy written in YAML (a route's `retry_policy` fields).
    fn translate(yaml: &str) -> Result<RetryPolicy> {
        let rc = format!(
            "virtual_hosts: [ {{ name: v, domains: ['*'], routes: [ {{ match: {{ prefix: / }}, route: {{ cluster: c, retry_policy: {{ {} }} }} }} ] }} ]",
            yaml.trim().lines().collect::<Vec<_>>().join(", ")
        );
        let parsed = xds_proto::parse_document::<proto::RouteConfiguration>(
            &rc,
            xds_proto::DocumentFormat::Yaml,
            xds_proto::ParseOptions::default(),
        )
        .expect("a route configuration");
        let route = &parsed.value.virtual_hosts[0].routes[0];
        let Some(proto::route::Action::Route(ra)) = &route.action else {
            panic!("a route action")
        };
        let policy = ra.retry_policy.as_ref().expect("a retry policy");
        translate_retry_policy(policy, &FieldPath::root("retry_policy"))
    }

    #[test]
    fn retry_on_tokens_become_bits_and_unknown_ones_are_reported() {
        let mut unknown = Vec::new();
        let bits = RetryOn::parse("5xx, reset,bogus,unavailable", false, |t| unknown.push(t));
        assert!(bits.contains(RetryOn::FIVE_XX));
        assert!(bits.contains(RetryOn::RESET));
        assert!(bits.contains(RetryOn::GRPC_UNAVAILABLE));
        assert!(!bits.contains(RetryOn::CONNECT_FAILURE));
        assert_eq!(unknown, ["bogus"]);
        // `x-envoy-retry-grpc-on` knows only the gRPC tokens.
        let grpc = RetryOn::parse("cancelled,5xx", true, |_| {});
        assert_eq!(grpc, RetryOn::GRPC_CANCELLED);
    }

    #[test]
    fn defaults_follow_envoy() {
        let p = translate("retry_on: 5xx").expect("valid");
        assert_eq!(p.num_retries, 1);
        assert_eq!(p.back_off, BackOff::DEFAULT);
        assert_eq!(p.per_try_timeout, None);
        assert_eq!(p.host_selection_max_attempts, 1);
        let p =
            translate("retry_on: 5xx\nretry_back_off: { base_interval: 0.002s }").expect("valid");
        assert_eq!(p.back_off.max, Duration::from_millis(20));
        let p = translate("retry_on: 5xx\nper_try_timeout: 0s\nnum_retries: 0").expect("valid");
        assert_eq!((p.per_try_timeout, p.num_retries), (None, 0));
    }

    #[test]
    fn invalid_back_off_and_unsupported_fields_name_their_path() {
        let e = translate("retry_back_off: { base_interval: 0.1s, max_interval: 0.05s }")
            .expect_err("max below base");
        assert!(
            e.to_string()
                .contains("retry_policy.retry_back_off.max_interval"),
            "{e}"
        );
        let e = translate("retry_back_off: { max_interval: 0.05s }").expect_err("no base");
        assert!(e.to_string().contains("base_interval"), "{e}");
        let e = translate("rate_limited_retry_back_off: { max_interval: 1s }")
            .expect_err("no reset header");
        assert!(
            e.to_string()
                .contains("retry_policy.rate_limited_retry_back_off.reset_headers"),
            "{e}"
        );
        let e = translate(
            "retry_host_predicate: [ { name: envoy.retry_host_predicates.previous_hosts } ]",
        )
        .expect_err("no typed config");
        assert!(e.to_string().contains("registered implementation"), "{e}");
    }

    #[test]
    fn idle_timeout_and_rate_limited_back_off_translate() {
        let p = translate(
            r#"
retry_on: 5xx
per_try_idle_timeout: 0.3s
rate_limited_retry_back_off: { reset_headers: [ { name: Retry-After }, { name: X-RateLimit-Reset, format: UNIX_TIMESTAMP } ], max_interval: 2s }
"#,
        )
        .expect("valid");
        assert_eq!(p.per_try_idle_timeout, Some(Duration::from_millis(300)));
        let r = p.rate_limited.expect("a rate-limited back-off");
        assert_eq!(r.max_interval, Duration::from_secs(2));
        assert_eq!(r.reset_headers[0].0, "retry-after");
        assert_eq!(r.reset_headers[0].1, ResetFormat::Seconds);
        assert_eq!(r.reset_headers[1].1, ResetFormat::UnixTimestamp);
        let p = translate("rate_limited_retry_back_off: { reset_headers: [ { name: retry-after } ] }\nper_try_idle_timeout: 0s")
            .expect("valid");
        assert_eq!(p.per_try_idle_timeout, None);
        assert_eq!(
            p.rate_limited.map(|r| r.max_interval),
            Some(Duration::from_secs(300))
        );
    }

    #[test]
    fn previous_hosts_predicate_is_recognised() {
        let p = translate(
            r#"
retry_on: 5xx
host_selection_retry_max_attempts: 3
retry_host_predicate: [ { name: envoy.retry_host_predicates.previous_hosts, typed_config: { "@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate } } ]
"#,
        )
        .expect("valid");
        assert!(p.avoid_previous_hosts);
        assert_eq!(p.host_selection_max_attempts, 3);
    }
}
