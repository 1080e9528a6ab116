//! A cluster's HTTP/2 `max_concurrent_streams`, compared with Envoy: a connection that carries
//! that many streams takes no more, so concurrent slow requests spread over new connections
//! to the same host, and a stream counts until its response body has ended, not only until its
//! head. The cluster's `max_requests` likewise counts an HTTP/2 request until its body ends.
//! Compared: the clients' statuses, the connections the upstream accepted, and the cluster's
//! connection counters.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/protocol.proto#envoy-v3-api-field-config-core-v3-http2protocoloptions-max-concurrent-streams

use std::fmt::Write as _;
use std::time::Duration;
use tests::curl;
use tests::differential::{check, Config, Known, Scenario, Side};
use tests::scripted::Behaviour;

const DOC: &str = "https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/protocol.proto#envoy-v3-api-field-config-core-v3-http2protocoloptions-max-concurrent-streams";

const KNOWN: &[Known] = &[];

const MAX_REQUESTS: &str = "https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/cluster/v3/circuit_breaker.proto#envoy-v3-api-field-config-cluster-v3-circuitbreakers-thresholds-max-requests";

/// A listener routing everything to cluster `capped`: HTTP/2 to upstream `a` with
/// `http2_protocol_options` (`max_concurrent_streams` when `cap` is set), and the cluster's
/// own `extra` fields.
fn bootstrap(cap: Option<u32>, extra: &str) -> String {
    let options = cap.map_or(String::new(), |c| format!("max_concurrent_streams: {c}"));
    format!(
        r#"
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{{{admin_port}}}} }} }}
static_resources:
  listeners:
  - name: http
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{{{listener_port}}}} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: http
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{ match: {{ prefix: / }}, route: {{ cluster: capped, timeout: 10s }} }}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: capped
    connect_timeout: 2s
    {extra}
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{ {options} }} }}
    load_assignment:
      cluster_name: capped
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{{{upstream_a}}}} }} }} }}
"#
    )
}

fn get(side: &Side) -> String {
    match curl::request("GET", &side.url("/"), &[]) {
        Ok(r) => format!("{} {:?}", r.status, r.body),
        Err(f) => format!("no response: curl exit {:?}", f.exit_code),
    }
}

/// What the upstream and the cluster's counters say about connections.
fn connections(side: &Side) -> String {
    let stats = side.proxy.get("/stats").body;
    let mut out = format!("  upstream accepted {} connections\n", side.a.connections());
    for name in [
        "upstream_cx_total",
        "upstream_cx_active",
        "upstream_rq_total",
    ] {
        let full = format!("cluster.capped.{name}: ");
        let value = stats
            .lines()
            .find_map(|l| l.strip_prefix(&full))
            .unwrap_or("absent");
        let _ = writeln!(out, "    {name}: {value}");
    }
    out
}

/// Three requests at once to an upstream that holds each response 600 ms, then three more
/// one after another (which reuse what is open).
fn three_at_once_then_three_in_turn(side: &Side) -> String {
    let mut out = String::new();
    std::thread::scope(|scope| {
        let clients: Vec<_> = (0..3).map(|_| scope.spawn(|| get(side))).collect();
        for client in clients {
            let seen = client.join().unwrap_or_else(|_| "client panicked".into());
            let _ = writeln!(out, "  concurrent: {seen}");
        }
    });
    out.push_str(&connections(side));
    for _ in 0..3 {
        let _ = writeln!(out, "  in turn: {}", get(side));
    }
    out + &connections(side)
}

/// A response whose head comes at once and whose body ends 800 ms later: a second request
/// sent meanwhile finds the stream still open.
fn a_stream_counts_until_its_body_ends(side: &Side) -> String {
    let mut out = String::new();
    std::thread::scope(|scope| {
        let first = scope.spawn(|| get(side));
        std::thread::sleep(Duration::from_millis(300));
        let second = scope.spawn(|| get(side));
        for (name, client) in [("first", first), ("second", second)] {
            let seen = client.join().unwrap_or_else(|_| "client panicked".into());
            let _ = writeln!(out, "  {name}: {seen}");
        }
    });
    out + &connections(side)
}

fn scenario(
    name: &'static str,
    cap: Option<u32>,
    upstream: Behaviour,
    step: fn(&Side) -> String,
) -> Scenario {
    scenario_with(name, DOC, bootstrap(cap, ""), upstream, step)
}

fn scenario_with(
    name: &'static str,
    doc: &'static str,
    bootstrap: String,
    upstream: Behaviour,
    step: fn(&Side) -> String,
) -> Scenario {
    Scenario {
        name,
        doc,
        config: Config::Full(bootstrap),
        upstream,
        steps: Vec::new(),
    }
    .custom(step)
}

#[test]
fn upstream_http2_max_concurrent_streams_matches_envoy() {
    let slow = Behaviour::Delay(Duration::from_millis(600));
    let slow_body = Behaviour::SlowBody(Duration::from_millis(800));
    let scenarios = vec![
        scenario(
            "h2_cap_1_spreads_concurrent_requests",
            Some(1),
            slow.clone(),
            three_at_once_then_three_in_turn,
        ),
        scenario(
            "h2_cap_2_spreads_concurrent_requests",
            Some(2),
            slow.clone(),
            three_at_once_then_three_in_turn,
        ),
        scenario(
            "h2_uncapped_shares_one_connection",
            None,
            slow,
            three_at_once_then_three_in_turn,
        ),
        scenario(
            "h2_cap_1_counts_a_stream_until_its_body_ends",
            Some(1),
            slow_body.clone(),
            a_stream_counts_until_its_body_ends,
        ),
        // The cluster's `max_requests` counts an HTTP/2 request until its response body
        // ends, as it does an HTTP/1.1 one: the second request overflows.
        scenario_with(
            "h2_max_requests_1_counts_a_request_until_its_body_ends",
            MAX_REQUESTS,
            bootstrap(
                None,
                "circuit_breakers: { thresholds: [{ max_requests: 1 }] }",
            ),
            slow_body,
            a_stream_counts_until_its_body_ends,
        ),
    ];
    check(
        "upstream_http2_max_concurrent_streams_matches_envoy",
        &scenarios,
        KNOWN,
    );
}
