//! Differential traffic tests for router retries and per-try timeouts: one bootstrap, served by
//! Envoy and by Outrigger, in front of scripted upstreams that fail in the ways retries are
//! about (503 for the first N requests, a connection closed unanswered, a slow answer, a dead
//! port, two failing hosts for the previous-hosts predicate). Compared: what the client gets,
//! the sequence of requests each upstream saw (with `x-envoy-attempt-count`), the retry stats
//! in `/stats`, and the response flags and details of the access log.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/router_filter
//! and https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#envoy-v3-api-msg-config-route-v3-retrypolicy

use std::fmt::Write as _;
use std::time::{Duration, Instant};
use tests::curl;
use tests::scripted::{Behaviour, Failure, Scripted};
use tests::upstream::Reply;
use tests::{envoy_or_skip, free_port, Kind, Ports, RunningProxy};

fn reply(status: u16, headers: &[(&str, &str)]) -> Reply {
    Reply {
        status,
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        body: "fail\n".into(),
    }
}

fn flaky(failures: usize, failure: Failure) -> Behaviour {
    Behaviour::Flaky { failures, failure }
}

/// The upstreams, each behind a cluster of the same name (`pair` has p1 and p2).
fn upstreams() -> Vec<(&'static str, Behaviour)> {
    let fail503 = || Failure::Reply(reply(503, &[]));
    vec![
        ("flaky", flaky(2, fail503())),
        ("always", Behaviour::Reply(reply(503, &[]))),
        ("resetting", flaky(2, Failure::Reset)),
        (
            "slow",
            flaky(2, Failure::Delay(Duration::from_millis(1500))),
        ),
        (
            "slow_edge",
            flaky(100, Failure::Delay(Duration::from_millis(1500))),
        ),
        ("p1", Behaviour::Reply(reply(503, &[]))),
        ("p2", Behaviour::Reply(reply(503, &[]))),
        ("teapot", flaky(1, Failure::Reply(reply(418, &[])))),
        (
            "overloaded",
            Behaviour::Reply(reply(503, &[("x-envoy-overloaded", "true")])),
        ),
        (
            "grpc",
            flaky(
                1,
                Failure::Reply(reply(
                    200,
                    &[("content-type", "application/grpc"), ("grpc-status", "14")],
                )),
            ),
        ),
        ("body", flaky(1, fail503())),
        ("body_h2", flaky(1, fail503())),
        ("big", flaky(1, fail503())),
        // Its circuit breaker admits no retry (max_retries 0): upstream_rq_retry_overflow.
        ("breaker", Behaviour::Reply(reply(503, &[]))),
    ]
}

const BACK_OFF: &str = "retry_back_off: { base_interval: 0.001s }";

fn routes() -> String {
    let predicate = r#"retry_host_predicate: [ { name: envoy.retry_host_predicates.previous_hosts, typed_config: { "@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate } } ]"#;
    let r = |prefix: &str, cluster: &str, policy: &str| {
        match policy {
        "" => format!(
            "\n              - match: {{ prefix: \"{prefix}\" }}\n                route: {{ cluster: {cluster} }}"
        ),
        p => format!(
            "\n              - match: {{ prefix: \"{prefix}\" }}\n                route: {{ cluster: {cluster}, retry_policy: {{ {p} }} }}"
        ),
    }
    };
    [
        r("/vh", "flaky", ""),
        r("/limit", "always", &format!("retry_on: 5xx, num_retries: 2, {BACK_OFF}")),
        // The route's policy replaces the virtual host's (no merge): no retry on a 503.
        r("/route-wins", "always", "retry_on: connect-failure"),
        r("/plain-hdr", "always", "retry_on: connect-failure, num_retries: 0"),
        r("/reset", "resetting", &format!("retry_on: reset, num_retries: 3, {BACK_OFF}")),
        r(
            "/slow",
            "slow",
            &format!("retry_on: 5xx, num_retries: 3, per_try_timeout: 0.3s, {BACK_OFF}"),
        ),
        r(
            "/dead",
            "dead",
            &format!("retry_on: connect-failure, num_retries: 2, {BACK_OFF}"),
        ),
        r(
            "/prev",
            "pair",
            &format!("retry_on: 5xx, num_retries: 2, {BACK_OFF}, {predicate}"),
        ),
        r("/noprev", "pair", &format!("retry_on: 5xx, num_retries: 2, {BACK_OFF}")),
        r(
            "/codes",
            "teapot",
            &format!("retry_on: retriable-status-codes, retriable_status_codes: [418], {BACK_OFF}"),
        ),
        r("/overloaded", "overloaded", ""),
        r("/grpc", "grpc", &format!("retry_on: unavailable, {BACK_OFF}")),
        r(
            "/request-headers",
            "always",
            &format!("retry_on: 5xx, retriable_request_headers: [ {{ name: x-retry-me, present_match: true }} ], {BACK_OFF}"),
        ),
        r("/body-h2", "body_h2", ""),
        r("/breaker", "breaker", &format!("retry_on: 5xx, num_retries: 2, {BACK_OFF}")),
        r("/body", "body", ""),
        "\n              - match: { prefix: \"/big\" }\n                per_request_buffer_limit_bytes: 1024\n                route: { cluster: big }".to_string(),
    ]
    .concat()
}

fn listener(name: &str, extra: &str, vhost: &str, routes: &str) -> String {
    format!(
        r#"
  - name: {name}
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{{{{name}_port}}}} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}{extra}
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: "{{{{log}}}}"
              log_format: {{ text_format_source: {{ inline_string: "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n" }} }}
          route_config:
            virtual_hosts:
            - name: {name}
              domains: ["*"]
              include_request_attempt_count: true{vhost}
              routes:{routes}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
"#
    )
}

fn cluster(name: &str, ports: &[&str]) -> String {
    let endpoints: String = ports
        .iter()
        .map(|p| {
            format!("\n        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{{{{p}}}}} }} }} }}")
        })
        .collect();
    format!(
        r#"
  - name: {name}
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:{endpoints}"#
    )
}

fn bootstrap() -> String {
    let plain = listener(
        "plain",
        "",
        &format!(
            "\n              include_attempt_count_in_response: true\n              retry_policy: {{ retry_on: 5xx, num_retries: 3, {BACK_OFF} }}"
        ),
        &routes(),
    );
    // Requests from 127.0.0.0/8 are internal here: their x-envoy-* retry headers count.
    let edge = listener(
        "edge",
        "\n          use_remote_address: true\n          internal_address_config: { cidr_ranges: [ { address_prefix: 127.0.0.0, prefix_len: 8 } ] }",
        "",
        "\n              - match: { prefix: \"/slow\" }\n                route: { cluster: slow_edge, timeout: 5s }\n              - match: { prefix: \"/\" }\n                route: { cluster: always }",
    );
    let mut clusters: String = upstreams()
        .iter()
        .filter(|(n, _)| !matches!(*n, "p1" | "p2"))
        .map(|(n, _)| cluster(n, &[n]))
        .collect();
    // The replayed body over HTTP/2 upstream, where its length comes from the body itself.
    clusters = clusters.replace(
        "\n  - name: body_h2\n    type: STATIC\n",
        "\n  - name: body_h2\n    type: STATIC\n    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: { http2_protocol_options: {} }\n",
    );
    clusters = clusters.replace(
        "\n  - name: breaker\n    type: STATIC\n",
        "\n  - name: breaker\n    type: STATIC\n    circuit_breakers: { thresholds: [ { max_retries: 0 } ] }\n",
    );
    clusters.push_str(&cluster("pair", &["p1", "p2"]));
    clusters.push_str(&cluster("dead", &["dead"]));
    format!(
        r#"
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{{{admin}}}} }} }}
static_resources:
  listeners:{plain}{edge}
  clusters:{clusters}
"#
    )
}

/// A client step: method, listener, path, extra curl arguments.
struct Step {
    listener: &'static str,
    path: &'static str,
    args: Vec<String>,
}

fn step(listener: &'static str, path: &'static str, args: &[&str]) -> Step {
    Step {
        listener,
        path,
        args: args.iter().map(|a| a.to_string()).collect(),
    }
}

fn steps() -> Vec<Step> {
    let retry_headers = [
        "-H",
        "x-envoy-retry-on: 5xx",
        "-H",
        "x-envoy-max-retries: 2",
    ];
    let big = "x".repeat(2048);
    vec![
        step("plain", "/vh", &[]),
        step("plain", "/limit", &[]),
        step("plain", "/breaker", &[]),
        step("plain", "/route-wins", &[]),
        step("plain", "/reset", &[]),
        step("plain", "/slow", &[]),
        step("plain", "/dead", &[]),
        step("plain", "/noprev", &[]),
        step("plain", "/prev", &[]),
        step("plain", "/codes", &[]),
        step("plain", "/overloaded", &[]),
        step("plain", "/grpc", &[]),
        step("plain", "/request-headers", &["-H", "x-retry-me: 1"]),
        step("plain", "/request-headers", &[]),
        step("plain", "/body", &["--data-binary", "hello body"]),
        step("plain", "/body-h2", &["--data-binary", "hello h2 body"]),
        step(
            "plain",
            "/body-h2",
            &[
                "--http2-prior-knowledge",
                "--data-binary",
                "from an h2 client",
            ],
        ),
        Step {
            listener: "plain",
            path: "/big",
            args: vec!["--data-binary".into(), big],
        },
        // Not internal (no use_remote_address): the headers are dropped, not honoured.
        step("plain", "/plain-hdr", &retry_headers),
        step("edge", "/hdr", &retry_headers),
        step(
            "edge",
            "/slow",
            &[
                "-H",
                "x-envoy-retry-on: 5xx",
                "-H",
                "x-envoy-max-retries: 1",
                "-H",
                "x-envoy-upstream-rq-per-try-timeout-ms: 200",
            ],
        ),
        step(
            "edge",
            "/slow",
            &["-H", "x-envoy-upstream-rq-timeout-ms: 100"],
        ),
    ]
}

/// The stats compared, per cluster.
const STATS: &[&str] = &[
    "upstream_rq_total",
    "upstream_rq_completed",
    "upstream_rq_200",
    "upstream_rq_503",
    "upstream_rq_504",
    "upstream_rq_timeout",
    "upstream_rq_per_try_timeout",
    "upstream_rq_retry",
    "upstream_rq_retry_success",
    "upstream_rq_retry_limit_exceeded",
    "upstream_rq_retry_overflow",
    "upstream_rq_retry_backoff_exponential",
    "upstream_cx_connect_fail",
    "retry_or_shadow_abandoned",
    "retry.upstream_rq_503",
    "retry.upstream_rq_418",
    "retry.upstream_rq_200",
    "retry.upstream_rq_5xx",
    "retry.upstream_rq_completed",
];

/// Which upstream names a request may carry, mapped to a name independent of where round
/// robin started (Envoy starts it at a random host): the first host a step saw is `first`.
fn normalised(step_hosts: &mut Vec<String>, name: &str) -> String {
    if !matches!(name, "p1" | "p2") {
        return name.to_string();
    }
    let i = match step_hosts.iter().position(|h| h == name) {
        Some(i) => i,
        None => {
            step_hosts.push(name.to_string());
            step_hosts.len() - 1
        }
    };
    ["pair-first", "pair-second"][i.min(1)].to_string()
}

fn run(kind: Kind) -> String {
    let mut servers: Vec<(&'static str, Scripted)> = upstreams()
        .into_iter()
        .map(|(n, b)| (n, Scripted::start(n, b)))
        .collect();
    let log_dir = tempfile::tempdir().expect("a temporary directory");
    let log = log_dir.path().join("access.log");
    let mut ports = Ports::new(&["admin", "plain_port", "edge_port"]).with("dead", free_port());
    for (n, s) in &servers {
        ports = ports.with(n, s.port());
    }
    let rendered = ports.render(&bootstrap().replace("{{log}}", &log.display().to_string()));
    let proxy = RunningProxy::start(
        kind,
        &rendered,
        &["--concurrency", "1", "--file-flush-interval-msec", "50"],
    );
    let mut out = String::new();
    let steps = steps();
    for s in &steps {
        let before: Vec<usize> = servers.iter().map(|(_, u)| u.requests().len()).collect();
        let url = format!(
            "http://127.0.0.1:{}{}",
            ports.get(&format!("{}_port", s.listener)),
            s.path
        );
        let args: Vec<&str> = s.args.iter().map(String::as_str).collect();
        let method = if args.contains(&"--data-binary") {
            "POST"
        } else {
            "GET"
        };
        let _ = writeln!(
            out,
            "{} {} {}",
            s.listener,
            s.path,
            args.iter()
                .filter(|a| a.len() < 80)
                .cloned()
                .collect::<Vec<_>>()
                .join(" ")
        );
        match curl::request(method, &url, &args) {
            Ok(r) => {
                let _ = writeln!(
                    out,
                    "  status {} attempt-count {:?} body {:?}",
                    r.status,
                    r.header("x-envoy-attempt-count"),
                    r.body
                );
            }
            Err(f) => {
                let _ = writeln!(out, "  no response: curl exit {:?}", f.exit_code);
            }
        }
        // The upstreams record a request before answering; a retried request is recorded by
        // the time the client has its answer. Each upstream's new requests, in order.
        let mut step_hosts = Vec::new();
        let mut seen: Vec<(String, String)> = Vec::new();
        for ((name, server), before) in servers.iter_mut().zip(before) {
            for r in server.requests().into_iter().skip(before) {
                let attempt = r.header("x-envoy-attempt-count").unwrap_or("-").to_string();
                // The expected timeout of a retry is what is left of the route timeout (a
                // clock reading) unless a per-try timeout bounds it.
                let expected = match r.header("x-envoy-expected-rq-timeout-ms") {
                    Some(v) if attempt == "1" || v.parse::<u64>().is_ok_and(|ms| ms <= 300) => {
                        v.to_string()
                    }
                    Some(_) => "<remaining>".to_string(),
                    None => "-".to_string(),
                };
                let retry_headers: Vec<&str> = r
                    .headers
                    .iter()
                    .filter(|(n, _)| {
                        n.starts_with("x-envoy-")
                            && !matches!(
                                n.as_str(),
                                "x-envoy-attempt-count"
                                    | "x-envoy-expected-rq-timeout-ms"
                                    | "x-envoy-internal"
                                    | "x-envoy-external-address"
                            )
                    })
                    .map(|(n, _)| n.as_str())
                    .collect();
                seen.push((
                    attempt.clone(),
                    format!(
                        "  attempt {attempt} at {} {} {} {} expected {expected} body {} other {retry_headers:?}",
                        name,
                        r.method,
                        r.path,
                        r.version,
                        if r.body.len() <= 40 {
                            format!("{:?}", String::from_utf8_lossy(&r.body))
                        } else {
                            format!("{} bytes", r.body.len())
                        }
                    ),
                ));
            }
        }
        // Attempts in order (each upstream's log is in order; across upstreams the attempt
        // count orders them).
        seen.sort_by(|a, b| a.0.cmp(&b.0));
        for (_, line) in seen {
            let host = line
                .split(" at ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .unwrap_or_default()
                .to_string();
            let named = normalised(&mut step_hosts, &host);
            out.push_str(&line.replacen(&format!(" at {host} "), &format!(" at {named} "), 1));
            out.push('\n');
        }
    }
    let stats = curl::get(&format!("{}/stats", proxy.admin_url())).body;
    let clusters: Vec<&str> = upstreams()
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !matches!(*n, "p1" | "p2"))
        .chain(["pair", "dead"])
        .collect();
    for c in clusters {
        for name in STATS {
            let key = format!("cluster.{c}.{name}: ");
            let value = stats
                .lines()
                .find_map(|l| l.strip_prefix(&key))
                .unwrap_or("absent");
            let _ = writeln!(out, "cluster.{c}.{name}: {value}");
        }
    }
    // The access log: one line per client request, written within the flush interval.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut text = String::new();
    while Instant::now() < deadline {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.lines().count() >= steps.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    out.push_str("access log:\n");
    out.push_str(&text);
    drop(proxy);
    out
}

#[test]
fn retries_match_envoy() {
    let Some(_) = envoy_or_skip("retries_match_envoy") else {
        return;
    };
    let envoy = run(Kind::Envoy);
    let ours = run(Kind::Outrigger);
    if envoy != ours {
        let diff: Vec<String> = envoy
            .lines()
            .zip(ours.lines())
            .filter(|(a, b)| a != b)
            .map(|(a, b)| format!("Envoy:     {a}\nOutrigger: {b}"))
            .collect();
        panic!(
            "Outrigger differs from Envoy:\n{}\n\n--- Envoy ---\n{envoy}\n--- Outrigger ---\n{ours}",
            diff.join("\n")
        );
    }
}
