//! The back-off a rate-limited upstream asks for: the route's reset headers are tried in
//! order, the first whose value is a usable interval (a whole number of seconds to wait, or a
//! Unix time in seconds to retry at, in the future, not longer than `max_interval`) sets the
//! wait, jittered upwards by up to half so clients told the same time do not come back
//! together. When no header applies the regular exponential back-off is used.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#envoy-v3-api-msg-config-route-v3-retrypolicy-ratelimitedretrybackoff

use crate::config::retry_policy::{RateLimitedBackOff, ResetFormat};
use http::HeaderMap;
use std::time::{Duration, SystemTime};

/// The interval the response's headers ask for, before jitter; None when no header applies.
/// `now_unix` is the current Unix time in whole seconds (a timestamp's wait is counted in
/// whole seconds too, as Envoy 1.40 waits 1–1.5 s for a reset one second ahead).
pub fn reset_interval(
    policy: &RateLimitedBackOff,
    headers: &HeaderMap,
    now_unix: u64,
) -> Option<Duration> {
    policy.reset_headers.iter().find_map(|(name, format)| {
        let value = headers.get(name)?.to_str().ok()?.trim();
        // Only plain digits: Envoy 1.40 ignores "1.5", "+1" and HTTP dates alike.
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let number: u64 = value.parse().ok()?;
        let seconds = match format {
            ResetFormat::Seconds => number,
            ResetFormat::UnixTimestamp => number.checked_sub(now_unix)?,
        };
        // A zero wait (or a reset time already here) is no advice: the next header is tried.
        let interval = Duration::from_secs(seconds);
        (seconds > 0 && interval <= policy.max_interval).then_some(interval)
    })
}

/// The wait for a retry after a response with these headers, jittered: uniform in
/// `[interval, 1.5 × interval)`, in whole milliseconds.
pub fn wait(policy: &RateLimitedBackOff, headers: &HeaderMap) -> Option<Duration> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let interval = reset_interval(policy, headers, now)?;
    let ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX / 2);
    Some(Duration::from_millis(ms + crate::random::below(ms / 2)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RateLimitedBackOff {
        RateLimitedBackOff {
            reset_headers: vec![
                (
                    http::HeaderName::from_static("retry-after"),
                    ResetFormat::Seconds,
                ),
                (
                    http::HeaderName::from_static("x-ratelimit-reset"),
                    ResetFormat::UnixTimestamp,
                ),
            ],
            max_interval: Duration::from_secs(2),
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| {
                (
                    http::HeaderName::from_static(n),
                    http::HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn reset_headers_are_tried_in_order() {
        let p = policy();
        let at = |pairs| reset_interval(&p, &headers(pairs), 1_000);
        assert_eq!(at(&[("retry-after", "1")]), Some(Duration::from_secs(1)));
        assert_eq!(
            at(&[("x-ratelimit-reset", "1002")]),
            Some(Duration::from_secs(2))
        );
        // Over max_interval: the next header is tried, then none is left.
        assert_eq!(
            at(&[("retry-after", "5"), ("x-ratelimit-reset", "1001")]),
            Some(Duration::from_secs(1))
        );
        assert_eq!(at(&[("retry-after", "5")]), None);
        // Not a whole number of seconds, zero, or a time already past: no advice.
        assert_eq!(at(&[("retry-after", "1.5")]), None);
        assert_eq!(at(&[("retry-after", "+1")]), None);
        assert_eq!(at(&[("retry-after", "0")]), None);
        assert_eq!(
            at(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")]),
            None
        );
        assert_eq!(at(&[("x-ratelimit-reset", "995")]), None);
        assert_eq!(at(&[("x-ratelimit-reset", "1000")]), None);
        assert_eq!(at(&[("retry-after", "99999999999999999999999")]), None);
        assert_eq!(at(&[]), None);
    }

    #[test]
    fn the_wait_is_jittered_upwards_by_up_to_half() {
        let p = policy();
        let h = headers(&[("retry-after", "2")]);
        for _ in 0..64 {
            let w = wait(&p, &h).expect("a wait");
            assert!(
                w >= Duration::from_secs(2) && w < Duration::from_secs(3),
                "{w:?}"
            );
        }
    }
}
