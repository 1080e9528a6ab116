//! Differential traffic tests for the rest of the router's retries and timeouts: a retry
//! policy's `per_try_idle_timeout` (before the response head, retried or not, and mid-body)
//! and `rate_limited_retry_back_off`, a route's `hedge_policy.hedge_on_per_try_timeout`, and
//! the deprecated `max_grpc_timeout` / `grpc_timeout_offset`. Compared with Envoy: what the
//! client gets, every request the upstream saw (with `x-envoy-attempt-count`, the expected
//! timeout and `grpc-timeout`), the cluster's retry and timeout stats and the access log.
//! Routes use `timeout: 0s` where the expected timeout of a retry would be a clock reading.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#envoy-v3-api-msg-config-route-v3-retrypolicy
//! and https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/router_filter

use std::time::{Duration, Instant};
use tests::differential::{access_log_path, check, one_vhost, Known, Scenario, Side};
use tests::scripted::{Behaviour, Failure};
use tests::upstream::Reply;

const RETRY: &str = "https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#envoy-v3-api-field-config-route-v3-retrypolicy-per-try-idle-timeout";
const RATE_LIMITED: &str = "https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#envoy-v3-api-msg-config-route-v3-retrypolicy-ratelimitedretrybackoff";
const HEDGE: &str = "https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#envoy-v3-api-msg-config-route-v3-hedgepolicy";
const GRPC: &str = "https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#envoy-v3-api-field-config-route-v3-routeaction-max-grpc-timeout";

const KNOWN: &[Known] = &[];

/// The access log files' name.
const LOG: &str = "retry-extras";

/// Access log lines go to a file of each side's own ([`access_log_path`]).
const ACCESS_LOG: &str = r#"access_log:
- name: envoy.access_loggers.file
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
    path: {{log_path}}
    log_format: { text_format: "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n" }"#;

/// The upstream is slow for this long where a scenario wants it slow: well past the per-try
/// timeouts (0.4 s), so a loaded machine does not blur which fired first.
const SLOW: Duration = Duration::from_millis(1500);

/// The stats compared, for cluster `backend`.
const STATS: &[&str] = &[
    "upstream_rq_total",
    "upstream_rq_completed",
    "upstream_rq_200",
    "upstream_rq_429",
    "upstream_rq_504",
    "upstream_rq_timeout",
    "upstream_rq_per_try_timeout",
    "upstream_rq_per_try_idle_timeout",
    "upstream_rq_retry",
    "upstream_rq_retry_success",
    "upstream_rq_retry_limit_exceeded",
    "upstream_rq_retry_backoff_exponential",
    "upstream_rq_retry_backoff_ratelimited",
    "retry.upstream_rq_429",
    "retry.upstream_rq_completed",
];

/// The cluster stats and the access log lines so far (the file is then removed). The wait
/// lets a hedged attempt that lost, or a reset body, settle first.
fn stats_and_log(side: &Side) -> String {
    std::thread::sleep(Duration::from_millis(1800));
    let stats = side.proxy.get("/stats?filter=^cluster.backend.").body;
    let mut out = String::new();
    for name in STATS {
        let key = format!("cluster.backend.{name}: ");
        let value = stats
            .lines()
            .find_map(|l| l.strip_prefix(&key))
            .unwrap_or("absent");
        out.push_str(&format!("  {name}: {value}\n"));
    }
    let path = access_log_path(LOG, side.ports.get("admin_port"));
    let log = std::fs::read_to_string(&path).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    for l in log.lines() {
        out.push_str(&format!("  log {l}\n"));
    }
    out
}

/// A GET that reports whether the answer took at least a second (a rate-limited back-off
/// of `retry-after: 1` waits 1–1.5 s per retry), and what came back.
fn waited_a_second(side: &Side) -> String {
    let started = Instant::now();
    let r = tests::curl::request("GET", &side.url("/limited"), &[]);
    let took = started.elapsed();
    match r {
        Ok(r) => format!(
            "  status {} body {:?} waited at least 1s: {}\n",
            r.status,
            r.body,
            took >= Duration::from_secs(1)
        ),
        Err(f) => format!("  no response: curl exit {:?}\n", f.exit_code),
    }
}

fn route(fields: &str) -> String {
    one_vhost(&format!(
        "- match: {{ prefix: / }}\n  route: {{ cluster: backend, timeout: 0s, {fields} }}"
    ))
}

fn scenario(name: &'static str, doc: &'static str, fields: &str) -> Scenario {
    let access_log = ACCESS_LOG.replace("{{log_path}}", &access_log_path(LOG, "{{admin_port}}"));
    Scenario::http(name, doc, &route(fields)).hcm(&access_log)
}

fn reply(status: u16, headers: &[(&str, &str)]) -> Reply {
    Reply {
        status,
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        body: "limited\n".into(),
    }
}

fn slow_first() -> Behaviour {
    Behaviour::Flaky {
        failures: 1,
        failure: Failure::Delay(SLOW),
    }
}

/// curl arguments of a gRPC request (over HTTP/1.1: the router only looks at the headers).
fn grpc_args(timeout: Option<&'static str>) -> Vec<&'static str> {
    let mut a = vec!["-H", "content-type: application/grpc"];
    if let Some(t) = timeout {
        a.extend(["-H", t]);
    }
    a
}

fn scenarios() -> Vec<Scenario> {
    vec![
        // The head does not come within the idle timeout: retried like a per-try timeout.
        scenario(
            "idle_before_head_is_retried",
            RETRY,
            "retry_policy: { retry_on: 5xx, num_retries: 1, per_try_idle_timeout: 0.4s, retry_back_off: { base_interval: 0.001s } }",
        )
        .upstream(slow_first())
        .get("/idle")
        .custom(stats_and_log),
        // The same with a request body: the timer starts once the body went upstream, and the
        // retry replays it.
        scenario(
            "idle_before_head_with_a_body",
            RETRY,
            "retry_policy: { retry_on: 5xx, num_retries: 1, per_try_idle_timeout: 0.4s, retry_back_off: { base_interval: 0.001s } }",
        )
        .upstream(slow_first())
        .curl("/idle-post", &["--data-binary", "a body to replay"])
        .custom(stats_and_log),
        // Not a retry condition: 504 UT `upstream_per_try_idle_timeout`.
        scenario(
            "idle_before_head_not_retried",
            RETRY,
            "retry_policy: { retry_on: connect-failure, num_retries: 1, per_try_idle_timeout: 0.4s }",
        )
        .upstream(Behaviour::Delay(SLOW))
        .get("/idle")
        .custom(stats_and_log),
        // The body stalls after the head: the stream is reset, logged 200 UT.
        scenario(
            "idle_mid_body_resets_the_stream",
            RETRY,
            "retry_policy: { retry_on: 5xx, num_retries: 1, per_try_idle_timeout: 0.4s }",
        )
        .upstream(Behaviour::SlowBody(SLOW))
        .get("/idle-body")
        .custom(stats_and_log),
        // A per-try idle timeout the upstream keeps within.
        scenario(
            "idle_not_reached",
            RETRY,
            "retry_policy: { retry_on: 5xx, per_try_idle_timeout: 5s }",
        )
        .get("/quick")
        .custom(stats_and_log),
        // Two 429s asking for a second each: the retries wait what they ask.
        scenario(
            "rate_limited_retry_after_is_waited",
            RATE_LIMITED,
            "retry_policy: { retry_on: retriable-status-codes, retriable_status_codes: [429], num_retries: 3, rate_limited_retry_back_off: { reset_headers: [ { name: Retry-After }, { name: X-RateLimit-Reset, format: UNIX_TIMESTAMP } ], max_interval: 2s } }",
        )
        .upstream(Behaviour::Flaky {
            failures: 2,
            failure: Failure::Reply(reply(429, &[("retry-after", "1")])),
        })
        .custom(waited_a_second)
        .custom(stats_and_log),
        // Longer than max_interval, or not a whole number: the exponential back-off instead.
        scenario(
            "rate_limited_unusable_headers_fall_back",
            RATE_LIMITED,
            "retry_policy: { retry_on: retriable-status-codes, retriable_status_codes: [429], num_retries: 3, retry_back_off: { base_interval: 0.001s }, rate_limited_retry_back_off: { reset_headers: [ { name: retry-after }, { name: x-ratelimit-reset, format: UNIX_TIMESTAMP } ], max_interval: 2s } }",
        )
        .upstream(Behaviour::Flaky {
            failures: 2,
            failure: Failure::Reply(reply(
                429,
                &[("retry-after", "5"), ("x-ratelimit-reset", "1.5")],
            )),
        })
        .get("/limited")
        .custom(stats_and_log),
        // The first attempt is slow: a hedge starts at its per-try timeout and wins; the
        // first is reset. Envoy counts no per-try timeout for it.
        scenario(
            "hedge_wins_over_a_slow_attempt",
            HEDGE,
            "hedge_policy: { hedge_on_per_try_timeout: true }, retry_policy: { retry_on: 5xx, num_retries: 1, per_try_timeout: 0.4s, retry_back_off: { base_interval: 0.001s } }",
        )
        .upstream(slow_first())
        .get("/hedge")
        .custom(stats_and_log),
        // Every attempt is slow: the first answer wins, URX from the hedge that could not
        // follow the second per-try timeout. `initial_requests` has no effect (as in Envoy).
        scenario(
            "hedge_first_answer_wins_when_all_are_slow",
            HEDGE,
            "hedge_policy: { hedge_on_per_try_timeout: true, initial_requests: 2 }, retry_policy: { retry_on: 5xx, num_retries: 1, per_try_timeout: 0.4s, retry_back_off: { base_interval: 0.001s } }",
        )
        .upstream(Behaviour::Delay(SLOW))
        .get("/hedge")
        .custom(stats_and_log),
        // The same slow host without hedging: per-try timeouts cancel attempts (504 URX).
        scenario(
            "per_try_timeout_without_hedging_cancels",
            HEDGE,
            "hedge_policy: { hedge_on_per_try_timeout: false }, retry_policy: { retry_on: 5xx, num_retries: 1, per_try_timeout: 0.4s, retry_back_off: { base_interval: 0.001s } }",
        )
        .upstream(Behaviour::Delay(SLOW))
        .get("/hedge")
        .custom(stats_and_log),
        // gRPC requests take their timeout from `grpc-timeout`, capped and offset; the header
        // upstream says the timeout applied. A request that is not gRPC keeps the route's.
        scenario(
            "max_grpc_timeout_caps_and_offsets",
            GRPC,
            "max_grpc_timeout: 1s, grpc_timeout_offset: 0.1s",
        )
        .curl("/none", &grpc_args(None))
        .curl("/short", &grpc_args(Some("grpc-timeout: 500m")))
        .curl("/long", &grpc_args(Some("grpc-timeout: 5S")))
        .curl("/tiny", &grpc_args(Some("grpc-timeout: 50m")))
        .curl("/bogus", &grpc_args(Some("grpc-timeout: soon")))
        .curl("/not-grpc", &["-H", "grpc-timeout: 500m"]),
        // The gRPC timeout fires: a gRPC answer (UNAVAILABLE, upstream request timeout).
        scenario(
            "max_grpc_timeout_fires",
            GRPC,
            "max_grpc_timeout: 0s",
        )
        .upstream(Behaviour::Delay(SLOW))
        .curl("/slow", &grpc_args(Some("grpc-timeout: 300m")))
        .curl("/none", &grpc_args(None))
        .custom(stats_and_log),
        // A route with max_stream_duration ignores max_grpc_timeout (an empty one: with a
        // duration set, Envoy writes that duration in `grpc-timeout`, a stream timer matter).
        Scenario::http(
            "max_grpc_timeout_ignored_with_max_stream_duration",
            GRPC,
            &one_vhost(
                "- match: { prefix: / }\n  route: { cluster: backend, max_grpc_timeout: 1s, max_stream_duration: {} }",
            ),
        )
        .curl("/grpc", &grpc_args(Some("grpc-timeout: 5S"))),
    ]
}

#[test]
fn retry_extras_match_envoy() {
    check("retry_extras_match_envoy", &scenarios(), KNOWN);
}
