//! The retry state of one request: the route's policy with what a trusted request's headers
//! add to it, the retries left, the back-off, and the hosts already tried. [`RetryState::decide`]
//! is the one place where a retry is decided (the circuit breakers' `max_retries` check belongs
//! there too).
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/router_filter#x-envoy-retry-on
//! and https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/http/http_routing#retry-semantics

use crate::config::retry_policy::{RetryOn, RetryPolicy};
use crate::upstream::ClusterStats;
use http::{HeaderMap, HeaderName, StatusCode};
use std::time::Duration;

pub static X_ENVOY_RETRY_ON: HeaderName = HeaderName::from_static("x-envoy-retry-on");
pub static X_ENVOY_RETRY_GRPC_ON: HeaderName = HeaderName::from_static("x-envoy-retry-grpc-on");
pub static X_ENVOY_MAX_RETRIES: HeaderName = HeaderName::from_static("x-envoy-max-retries");
pub static X_ENVOY_RETRIABLE_STATUS_CODES: HeaderName =
    HeaderName::from_static("x-envoy-retriable-status-codes");
pub static X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-upstream-rq-timeout-ms");
pub static X_ENVOY_UPSTREAM_RQ_PER_TRY_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-upstream-rq-per-try-timeout-ms");
static X_ENVOY_INTERNAL: HeaderName = HeaderName::from_static("x-envoy-internal");
static X_ENVOY_RATELIMITED: HeaderName = HeaderName::from_static("x-envoy-ratelimited");
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// The router's control headers: read from trusted requests, never sent upstream (checked
/// against Envoy 1.40, which removes them from internal and external requests alike). The
/// alternate stat name is only removed: Outrigger keeps no alternate upstream stats.
static CONTROL: [&HeaderName; 9] = [
    &X_ENVOY_RETRY_ON,
    &X_ENVOY_RETRY_GRPC_ON,
    &X_ENVOY_MAX_RETRIES,
    &X_ENVOY_RETRIABLE_STATUS_CODES,
    &X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS,
    &X_ENVOY_UPSTREAM_RQ_PER_TRY_TIMEOUT_MS,
    &X_HEDGE,
    &X_RETRIABLE_HEADER_NAMES,
    &X_ENVOY_UPSTREAM_ALT_STAT_NAME,
];
static X_ENVOY_UPSTREAM_ALT_STAT_NAME: HeaderName =
    HeaderName::from_static("x-envoy-upstream-alt-stat-name");
static X_HEDGE: HeaderName = HeaderName::from_static("x-envoy-hedge-on-per-try-timeout");
static X_RETRIABLE_HEADER_NAMES: HeaderName =
    HeaderName::from_static("x-envoy-retriable-header-names");

/// What the request's headers change in its routing: the route timeout and the retry state.
pub struct Controls<'p> {
    /// None: no route timeout.
    pub timeout: Option<Duration>,
    pub retry: Option<RetryState<'p>>,
}

/// The policy the route says, as a trusted request's `x-envoy-*` headers change it. The
/// headers are honoured only on requests the connection manager marked internal
/// (`x-envoy-internal: true`): Envoy 1.40 ignores them on others (checked by hand). They are
/// removed either way. Requests without any `x-envoy-` header skip all of it.
pub fn controls<'p>(
    headers: &mut HeaderMap,
    policy: Option<&'p RetryPolicy>,
    route_timeout: Option<Duration>,
) -> Controls<'p> {
    static HEADER_ONLY: RetryPolicy = RetryPolicy::header_only();
    let mut timeout = route_timeout;
    let mut retry = policy.map(RetryState::new);
    let has_control = headers
        .keys()
        .any(|k| k.as_str().starts_with("x-envoy-") && CONTROL.contains(&k));
    if !has_control {
        return Controls { timeout, retry };
    }
    let internal = headers
        .get(&X_ENVOY_INTERNAL)
        .is_some_and(|v| v.as_bytes() == b"true");
    if internal {
        let number = |name: &HeaderName| -> Option<u64> {
            headers.get(name)?.to_str().ok()?.trim().parse().ok()
        };
        if let Some(ms) = number(&X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS) {
            timeout = (ms > 0).then(|| Duration::from_millis(ms));
        }
        let text = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
        let http_on = text(&X_ENVOY_RETRY_ON).map(|t| RetryOn::parse(t, false, |_| {}));
        let grpc_on = text(&X_ENVOY_RETRY_GRPC_ON).map(|t| RetryOn::parse(t, true, |_| {}));
        let asked = http_on
            .unwrap_or_default()
            .with(grpc_on.unwrap_or_default());
        if retry.is_none() && (http_on.is_some() || grpc_on.is_some()) {
            retry = Some(RetryState::new(&HEADER_ONLY));
        }
        if let Some(state) = &mut retry {
            state.retry_on = state.retry_on.with(asked);
            // `x-envoy-max-retries` counts only when some retry condition is set.
            if let (Some(n), false) = (number(&X_ENVOY_MAX_RETRIES), state.retry_on.is_empty()) {
                state.retries_left = u32::try_from(n).unwrap_or(u32::MAX);
            }
            if let Some(ms) = number(&X_ENVOY_UPSTREAM_RQ_PER_TRY_TIMEOUT_MS) {
                state.per_try_timeout = (ms > 0).then(|| Duration::from_millis(ms));
            }
            if let Some(codes) = text(&X_ENVOY_RETRIABLE_STATUS_CODES) {
                state.extra_status_codes = codes
                    .split(',')
                    .filter_map(|c| c.trim().parse().ok())
                    .collect();
            }
        }
    }
    for name in CONTROL {
        headers.remove(name);
    }
    Controls { timeout, retry }
}

/// How an attempt ended, as far as the retry decision cares.
#[derive(Debug, Clone, Copy)]
pub enum Attempt<'r> {
    Response(StatusCode, &'r HeaderMap),
    ConnectFailure,
    /// The stream or connection was reset after connecting; `refused` for HTTP/2
    /// REFUSED_STREAM.
    Reset {
        refused: bool,
    },
    PerTryTimeout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Retry after this back-off.
    Retry(Duration),
    /// The attempt's result is final.
    NoRetry,
    /// The result was retriable but no retry is left (Envoy's URX).
    LimitExceeded,
    /// The result was retriable but the circuit breaker admits no more retries (Envoy's UO).
    Overflow,
}

pub struct RetryState<'p> {
    policy: &'p RetryPolicy,
    retry_on: RetryOn,
    retries_left: u32,
    pub per_try_timeout: Option<Duration>,
    /// `x-envoy-retriable-status-codes` (empty unless a trusted request sent it).
    extra_status_codes: Vec<u16>,
    back_off: BackOffState,
    /// Retries made so far.
    pub retries: u32,
    /// Hosts tried, kept only for the previous-hosts predicate.
    tried: Vec<http::uri::Authority>,
    /// The circuit breaker's admission of the retry under way (`max_retries` / retry budget),
    /// held until the next decision.
    admitted: Option<crate::upstream::circuit_breakers::RetryGuard>,
}

impl<'p> RetryState<'p> {
    pub fn new(policy: &'p RetryPolicy) -> Self {
        Self {
            policy,
            retry_on: policy.retry_on,
            retries_left: policy.num_retries,
            per_try_timeout: policy.per_try_timeout,
            extra_status_codes: Vec::new(),
            back_off: BackOffState::new(policy.back_off.base, policy.back_off.max),
            retries: 0,
            tried: Vec::new(),
            admitted: None,
        }
    }

    /// Whether the policy applies to this request (`retriable_request_headers`).
    pub fn applies_to(&self, request: &HeaderMap) -> bool {
        self.policy
            .retriable_request_headers
            .iter()
            .all(|m| m.matches(request))
    }

    /// Decides whether to retry after `attempt`. `body_kept` is false once the request body
    /// outgrew the buffer limit (a retry could not resend it). Counts Envoy's retry stats.
    pub fn decide(
        &mut self,
        attempt: Attempt<'_>,
        body_kept: bool,
        stats: &ClusterStats,
    ) -> Decision {
        self.decide_admitted(attempt, body_kept, stats, || Ok(None))
    }

    /// [`decide`](Self::decide) with the cluster's circuit breaker: `admit` returns the
    /// retry's admission, or Err when `max_retries` (or the retry budget) is used up — then
    /// `upstream_rq_retry_overflow` counts and the attempt's result stands.
    pub fn decide_admitted(
        &mut self,
        attempt: Attempt<'_>,
        body_kept: bool,
        stats: &ClusterStats,
        admit: impl FnOnce() -> Result<Option<crate::upstream::circuit_breakers::RetryGuard>, ()>,
    ) -> Decision {
        self.admitted = None;
        if !body_kept || !self.retriable(attempt) {
            return Decision::NoRetry;
        }
        if self.retries_left == 0 {
            stats.retry.upstream_rq_retry_limit_exceeded.inc();
            return Decision::LimitExceeded;
        }
        match admit() {
            Ok(guard) => self.admitted = guard,
            Err(()) => {
                stats.retry.upstream_rq_retry_overflow.inc();
                return Decision::Overflow;
            }
        }
        self.retries_left -= 1;
        self.retries += 1;
        stats.retry.upstream_rq_retry.inc();
        // A response may say when to come back (`rate_limited_retry_back_off`); otherwise,
        // or when none of its reset headers applies, the exponential back-off.
        let asked = match (attempt, &self.policy.rate_limited) {
            (Attempt::Response(_, headers), Some(r)) => {
                super::rate_limited_back_off::wait(r, headers)
            }
            _ => None,
        };
        match asked {
            Some(wait) => {
                stats.retry.upstream_rq_retry_backoff_ratelimited.inc();
                Decision::Retry(wait)
            }
            None => {
                stats.retry.upstream_rq_retry_backoff_exponential.inc();
                Decision::Retry(self.back_off.next_wait())
            }
        }
    }

    /// `per_try_idle_timeout` of the route's policy.
    pub fn per_try_idle_timeout(&self) -> Option<Duration> {
        self.policy.per_try_idle_timeout
    }

    /// Whether `attempt`'s result meets a retry condition (whatever the retries left).
    pub fn retriable(&self, attempt: Attempt<'_>) -> bool {
        let on = self.retry_on;
        let any_reset = on.contains(
            RetryOn::FIVE_XX
                .with(RetryOn::GATEWAY_ERROR)
                .with(RetryOn::RESET),
        );
        match attempt {
            Attempt::Response(status, headers) => self.retriable_response(status, headers),
            Attempt::ConnectFailure => {
                any_reset
                    || on.contains(RetryOn::CONNECT_FAILURE.with(RetryOn::RESET_BEFORE_REQUEST))
            }
            Attempt::Reset { refused } => {
                any_reset || (refused && on.contains(RetryOn::REFUSED_STREAM))
            }
            Attempt::PerTryTimeout => any_reset,
        }
    }

    fn retriable_response(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        let on = self.retry_on;
        let code = status.as_u16();
        (on.contains(RetryOn::FIVE_XX) && status.is_server_error())
            || (on.contains(RetryOn::GATEWAY_ERROR) && matches!(code, 502..=504))
            || (on.contains(RetryOn::RETRIABLE_4XX) && code == 409)
            || (on.contains(RetryOn::RETRIABLE_STATUS_CODES)
                && (self.policy.retriable_status_codes.contains(&code)
                    || self.extra_status_codes.contains(&code)))
            || (on.contains(RetryOn::ENVOY_RATELIMITED)
                && headers.contains_key(&X_ENVOY_RATELIMITED))
            || (on.contains(RetryOn::RETRIABLE_HEADERS)
                && self
                    .policy
                    .retriable_headers
                    .iter()
                    .any(|m| m.matches(headers)))
            || (on.contains(RetryOn::GRPC) && self.retriable_grpc(headers))
    }

    /// A trailers-only gRPC answer carries its status in the headers.
    fn retriable_grpc(&self, headers: &HeaderMap) -> bool {
        let Some(code) = headers
            .get(&GRPC_STATUS)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok())
        else {
            return false;
        };
        let wanted = match code {
            1 => RetryOn::GRPC_CANCELLED,
            4 => RetryOn::GRPC_DEADLINE_EXCEEDED,
            8 => RetryOn::GRPC_RESOURCE_EXHAUSTED,
            13 => RetryOn::GRPC_INTERNAL,
            14 => RetryOn::GRPC_UNAVAILABLE,
            _ => return false,
        };
        self.retry_on.contains(wanted)
    }

    /// Notes the host an attempt went to (for the previous-hosts predicate).
    pub fn tried(&mut self, host: &http::uri::Authority) {
        if self.policy.avoid_previous_hosts {
            self.tried.push(host.clone());
        }
    }

    /// How many picks a retry may make: 1, or more when the previous-hosts predicate may
    /// reject a pick (`host_selection_retry_max_attempts` re-picks).
    pub fn host_picks(&self) -> u32 {
        if self.policy.avoid_previous_hosts && self.retries > 0 {
            1 + self.policy.host_selection_max_attempts
        } else {
            1
        }
    }

    /// Whether the predicate rejects `host` for this attempt.
    pub fn rejects(&self, host: &http::uri::Authority) -> bool {
        self.tried.iter().any(|h| h == host)
    }
}

/// Envoy's fully jittered exponential back-off: the n-th wait is uniform in
/// `[0, min(base * 2^(n-1), max))`, in whole milliseconds.
/// Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/router_filter#config-http-filters-router-x-envoy-max-retries
#[derive(Debug, Clone, Copy)]
pub struct BackOffState {
    next_ms: u64,
    max_ms: u64,
}

impl BackOffState {
    pub fn new(base: Duration, max: Duration) -> Self {
        // A sub-millisecond base still waits (Envoy's intervals are whole milliseconds).
        let base = (base.as_millis() as u64).max(1);
        Self {
            next_ms: base,
            max_ms: (max.as_millis() as u64).max(base),
        }
    }

    pub fn next_wait(&mut self) -> Duration {
        let bound = self.next_ms;
        self.next_ms = if self.next_ms < self.max_ms / 2 {
            self.next_ms * 2
        } else {
            self.max_ms
        };
        Duration::from_millis(crate::random::below(bound).min(self.max_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::retry_policy::BackOff;

    #[test]
    fn back_off_grows_to_its_bound_and_stays_below_it() {
        let mut b = BackOffState::new(Duration::from_millis(25), Duration::from_millis(250));
        let bounds = [25u64, 50, 100, 200, 250, 250, 250];
        for bound in bounds {
            let mut seen_high = false;
            // The draw is uniform below the bound: a sample in its top half shows up quickly.
            for _ in 0..64 {
                let mut copy = b;
                let wait = copy.next_wait().as_millis() as u64;
                assert!(wait < bound, "{wait} >= {bound}");
                seen_high |= wait >= bound / 2;
            }
            assert!(seen_high, "no wait near the bound {bound}");
            b.next_wait();
        }
        // A 1 ms base never waits: tests use it to keep retries immediate.
        let mut fast = BackOffState::new(Duration::from_millis(1), Duration::from_millis(10));
        assert_eq!(fast.next_wait(), Duration::ZERO);
        assert_eq!(BackOff::DEFAULT.max, BackOff::DEFAULT.base * 10);
    }

    fn policy(retry_on: &str) -> RetryPolicy {
        RetryPolicy {
            retry_on: RetryOn::parse(retry_on, false, |_| {}),
            num_retries: 2,
            retriable_status_codes: vec![418],
            ..RetryPolicy::header_only()
        }
    }

    fn stats() -> ClusterStats {
        crate::upstream::ClusterStats::new(&crate::stats::Store::new(), "test")
    }

    #[test]
    fn decisions_follow_retry_on_and_count_envoys_stats() {
        let stats = stats();
        let h = HeaderMap::new();
        let p = policy("gateway-error");
        let mut s = RetryState::new(&p);
        assert_eq!(
            s.decide(
                Attempt::Response(StatusCode::INTERNAL_SERVER_ERROR, &h),
                true,
                &stats
            ),
            Decision::NoRetry
        );
        assert!(matches!(
            s.decide(Attempt::Response(StatusCode::BAD_GATEWAY, &h), true, &stats),
            Decision::Retry(_)
        ));
        assert!(matches!(
            s.decide(Attempt::ConnectFailure, true, &stats),
            Decision::Retry(_)
        ));
        assert_eq!(
            s.decide(Attempt::PerTryTimeout, true, &stats),
            Decision::LimitExceeded
        );
        assert_eq!(stats.retry.upstream_rq_retry.value(), 2);
        assert_eq!(stats.retry.upstream_rq_retry_limit_exceeded.value(), 1);
        // A body that outgrew the buffer stops retries without counting anything.
        let p = policy("5xx");
        let mut s = RetryState::new(&p);
        assert_eq!(
            s.decide(Attempt::ConnectFailure, false, &stats),
            Decision::NoRetry
        );
        // Status codes and gRPC.
        let p = policy("retriable-status-codes,unavailable");
        let mut s = RetryState::new(&p);
        assert!(matches!(
            s.decide(Attempt::Response(StatusCode::IM_A_TEAPOT, &h), true, &stats),
            Decision::Retry(_)
        ));
        let mut grpc = HeaderMap::new();
        grpc.insert("grpc-status", "14".parse().expect("value"));
        assert!(matches!(
            s.decide(Attempt::Response(StatusCode::OK, &grpc), true, &stats),
            Decision::Retry(_)
        ));
        assert_eq!(
            s.decide(Attempt::ConnectFailure, true, &stats),
            Decision::NoRetry
        );
        // An upstream's `x-envoy-overloaded` does not stop a retry (checked against Envoy 1.40).
        let p = policy("5xx");
        let mut s = RetryState::new(&p);
        let mut overloaded = HeaderMap::new();
        overloaded.insert("x-envoy-overloaded", "true".parse().expect("value"));
        let answer = Attempt::Response(StatusCode::SERVICE_UNAVAILABLE, &overloaded);
        assert!(matches!(s.decide(answer, true, &stats), Decision::Retry(_)));
    }

    #[test]
    fn control_headers_count_only_on_internal_requests_and_never_go_upstream() {
        let mut h = HeaderMap::new();
        h.insert("x-envoy-retry-on", "5xx".parse().expect("value"));
        h.insert("x-envoy-max-retries", "3".parse().expect("value"));
        h.insert(
            "x-envoy-upstream-rq-timeout-ms",
            "100".parse().expect("value"),
        );
        let mut external = h.clone();
        let c = controls(&mut external, None, Some(Duration::from_secs(15)));
        assert!(c.retry.is_none());
        assert_eq!(c.timeout, Some(Duration::from_secs(15)));
        assert!(external.is_empty());
        h.insert("x-envoy-internal", "true".parse().expect("value"));
        let c = controls(&mut h, None, Some(Duration::from_secs(15)));
        let state = c.retry.expect("a header retry policy");
        assert_eq!(state.retries_left, 3);
        assert!(state.retry_on.contains(RetryOn::FIVE_XX));
        assert_eq!(c.timeout, Some(Duration::from_millis(100)));
        assert_eq!(h.len(), 1, "only x-envoy-internal stays: {h:?}");
    }
}
