//! Differential tests for the fault injection filter (`envoy.filters.http.fault`): aborts
//! (HTTP and gRPC statuses, fixed and header-controlled, percentages), delays, response rate
//! limits, the conditions that restrict a fault (upstream cluster, headers, downstream nodes),
//! `max_active_faults`, per-route overrides, and the `fault.*` stats — against Envoy.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/fault_filter

use std::time::{Duration, Instant};
use tests::curl;
use tests::differential::{check, one_vhost, Known, Scenario, Side};
use tests::scripted::Behaviour;

const FAULT: &str =
    "https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/fault_filter";
const FAULT_API: &str =
    "https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/fault/v3/fault.proto";

const KNOWN: &[Known] = &[];

/// Every route goes to `backend` (upstream `a`), except `/other` to `other` (upstream `b`).
const ROUTES: &str = r#"
- match: { prefix: "/other" }
  route: { cluster: other }
- match: { prefix: "/" }
  route: { cluster: backend }
"#;

/// A fault filter with `fields` (HTTPFault fields, the inside of a YAML flow mapping).
fn fault_filter(fields: &str) -> String {
    let fields = if fields.is_empty() {
        String::new()
    } else {
        format!(", {fields}")
    };
    format!(
        "- name: envoy.filters.http.fault\n  typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault{fields} }}\n"
    )
}

fn scenario(name: &'static str, doc: &'static str, fault: &str) -> Scenario {
    Scenario::http(name, doc, &one_vhost(ROUTES)).filters(&fault_filter(fault))
}

/// The filter's stats after the steps before.
fn fault_stats(side: &Side) -> String {
    let stats = side.proxy.get("/stats?filter=^http.traffic.fault.").body;
    let mut lines: Vec<&str> = stats.lines().collect();
    lines.sort();
    lines.iter().map(|l| format!("  {l}\n")).collect()
}

/// Whether a GET of `/` took at least the injected 300 ms (the answer is compared, not the
/// time, which differs from run to run).
fn delayed_300ms(side: &Side) -> String {
    let started = Instant::now();
    let response = curl::get(&side.url("/"));
    let took = started.elapsed();
    format!(
        "  status {} delayed {}\n",
        response.status,
        took >= Duration::from_millis(300)
    )
}

/// A delay asked for by header: 250 ms.
fn header_delay_250ms(side: &Side) -> String {
    let started = Instant::now();
    let response = curl::request(
        "GET",
        &side.url("/"),
        &["-H", "x-envoy-fault-delay-request: 250"],
    )
    .expect("a response");
    let took = started.elapsed();
    format!(
        "  status {} delayed {}\n",
        response.status,
        took >= Duration::from_millis(250)
    )
}

/// 96 KiB at 32 KiB/s: the first second's worth goes at once, the rest takes about 2 s.
/// Compared as a band wide enough for a loaded machine, narrow enough to tell throttled from
/// not (unthrottled it takes milliseconds).
fn throttled_download(side: &Side) -> String {
    let started = Instant::now();
    let response = curl::get(&side.url("/"));
    let took = started.elapsed();
    format!(
        "  status {} bytes {} throttled {}\n",
        response.status,
        response.body.len(),
        took >= Duration::from_millis(1500) && took < Duration::from_millis(4000)
    )
}

fn grpc_request(path: &str, s: Scenario) -> Scenario {
    s.curl(
        path,
        &[
            "--http2-prior-knowledge",
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "--data-binary",
            "",
        ],
    )
}

fn scenarios() -> Vec<Scenario> {
    vec![
        scenario(
            "abort_503_always",
            FAULT_API,
            "abort: { http_status: 503, percentage: { numerator: 100 } }",
        )
        .get("/")
        .curl("/", &["--http2-prior-knowledge"])
        .curl("/", &["--data-binary", "a body"])
        .custom(fault_stats),
        scenario(
            "abort_with_a_custom_body",
            FAULT_API,
            "abort: { http_status: 429, response_body: \"slow down\", percentage: { numerator: 1000000, denominator: MILLION } }",
        )
        .get("/"),
        scenario(
            "abort_without_a_percentage_never_fires",
            FAULT_API,
            "abort: { http_status: 503 }",
        )
        .get("/")
        .custom(fault_stats),
        scenario(
            "abort_zero_percent_never_fires",
            FAULT_API,
            "abort: { http_status: 503, percentage: { numerator: 0 } }",
        )
        .get("/"),
        grpc_request(
            "/",
            scenario(
                "abort_grpc_status",
                FAULT_API,
                "abort: { grpc_status: 14, percentage: { numerator: 100 } }",
            ),
        )
        .get("/"),
        grpc_request(
            "/",
            scenario(
                "abort_http_status_on_a_grpc_request",
                FAULT_API,
                "abort: { http_status: 503, percentage: { numerator: 100 } }",
            ),
        ),
        scenario(
            "abort_by_header",
            FAULT,
            "abort: { header_abort: {}, percentage: { numerator: 100 } }",
        )
        .get("/")
        .curl("/", &["-H", "x-envoy-fault-abort-request: 418"])
        .curl("/", &["-H", "x-envoy-fault-abort-request: 700"])
        .curl("/", &["-H", "x-envoy-fault-abort-request: nonsense"])
        .curl("/", &["-H", "x-envoy-fault-abort-grpc-request: 5"])
        .curl(
            "/",
            &[
                "-H",
                "x-envoy-fault-abort-request: 500",
                "-H",
                "x-envoy-fault-abort-grpc-request: 5",
            ],
        )
        .curl(
            "/",
            &[
                "-H",
                "x-envoy-fault-abort-request: 500",
                "-H",
                "x-envoy-fault-abort-request-percentage: 0",
            ],
        )
        .custom(fault_stats),
        scenario(
            "abort_only_to_the_upstream_cluster",
            FAULT_API,
            "upstream_cluster: other, abort: { http_status: 502, percentage: { numerator: 100 } }",
        )
        .get("/")
        .get("/other"),
        scenario(
            "abort_only_with_matching_headers",
            FAULT_API,
            "headers: [ { name: x-chaos, string_match: { exact: \"yes\" } } ], abort: { http_status: 500, percentage: { numerator: 100 } }",
        )
        .get("/")
        .curl("/", &["-H", "x-chaos: yes"])
        .curl("/", &["-H", "x-chaos: no"]),
        scenario(
            "abort_only_for_listed_downstream_nodes",
            FAULT_API,
            "downstream_nodes: [ node-a ], abort: { http_status: 500, percentage: { numerator: 100 } }",
        )
        .get("/")
        .curl("/", &["-H", "x-envoy-downstream-service-node: node-a"])
        .curl("/", &["-H", "x-envoy-downstream-service-node: node-b"]),
        scenario(
            "downstream_cluster_stats",
            FAULT_API,
            "abort: { http_status: 500, percentage: { numerator: 100 } }",
        )
        .curl("/", &["-H", "x-envoy-downstream-service-cluster: callers"])
        .custom(fault_stats),
        scenario(
            "max_active_faults_zero_overflows",
            FAULT_API,
            "max_active_faults: 0, abort: { http_status: 500, percentage: { numerator: 100 } }",
        )
        .get("/")
        .custom(fault_stats),
        scenario(
            "fixed_delay_then_upstream",
            FAULT_API,
            "delay: { fixed_delay: 0.3s, percentage: { numerator: 100 } }",
        )
        .custom(delayed_300ms)
        .custom(fault_stats),
        scenario(
            "delay_then_abort",
            FAULT,
            "delay: { fixed_delay: 0.3s, percentage: { numerator: 100 } }, abort: { http_status: 503, percentage: { numerator: 100 } }",
        )
        .custom(delayed_300ms)
        .custom(fault_stats),
        scenario(
            "delay_by_header",
            FAULT,
            "delay: { header_delay: {}, percentage: { numerator: 100 } }",
        )
        .get("/")
        .custom(header_delay_250ms)
        .custom(fault_stats),
        scenario(
            "response_rate_limit",
            FAULT_API,
            "response_rate_limit: { fixed_limit: { limit_kbps: 32 }, percentage: { numerator: 100 } }",
        )
        .upstream(Behaviour::Stream(96 * 1024))
        .custom(throttled_download)
        .custom(fault_stats),
        Scenario::http(
            "per_route_overrides",
            "https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#envoy-v3-api-field-config-route-v3-route-typed-per-filter-config",
            &format!(
                "name: traffic_route\n{}",
                r#"virtual_hosts:
- name: all
  domains: ["*"]
  typed_per_filter_config:
    envoy.filters.http.fault:
      "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
      abort: { http_status: 501, percentage: { numerator: 100 } }
  routes:
  - match: { prefix: "/route" }
    route: { cluster: backend }
    typed_per_filter_config:
      envoy.filters.http.fault:
        "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
        abort: { http_status: 502, percentage: { numerator: 100 } }
  - match: { prefix: "/disabled" }
    route: { cluster: backend }
    typed_per_filter_config:
      envoy.filters.http.fault:
        "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
        disabled: true
  - match: { prefix: "/" }
    route: { cluster: backend }
"#
            ),
        )
        .filters(&fault_filter(""))
        .get("/route")
        .get("/disabled")
        .get("/vhost"),
        Scenario::http(
            "a_filter_disabled_by_default_acts_where_a_route_configures_it",
            "https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto#envoy-v3-api-field-extensions-filters-network-http-connection-manager-v3-httpfilter-disabled",
            &format!(
                "name: traffic_route\n{}",
                r#"virtual_hosts:
- name: all
  domains: ["*"]
  routes:
  - match: { prefix: "/faulty" }
    route: { cluster: backend }
    typed_per_filter_config:
      envoy.filters.http.fault:
        "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
        abort: { http_status: 503, percentage: { numerator: 100 } }
  - match: { prefix: "/" }
    route: { cluster: backend }
"#
            ),
        )
        .filters(&format!(
            "{}  disabled: true\n",
            fault_filter("abort: { http_status: 500, percentage: { numerator: 100 } }")
        ))
        .get("/faulty")
        .get("/plain"),
    ]
}

#[test]
fn faults_match_envoy() {
    check("faults_match_envoy", &scenarios(), KNOWN);
}
