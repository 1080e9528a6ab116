//! How long an upstream connection lives, compared with Envoy on HTTP/1.1 and HTTP/2
//! upstreams: `max_requests_per_connection` (the typed common option and the deprecated
//! cluster field), `max_connection_duration`, and the idle timeout on HTTP/2. What is compared is what the upstream saw —
//! each connection it accepted, the requests it carried and whether the proxy has closed it —
//! the clients' statuses and the cluster's lifetime counters.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/protocol.proto#envoy-v3-api-field-config-core-v3-httpprotocoloptions-max-requests-per-connection
//! and https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/protocol.proto#envoy-v3-api-field-config-core-v3-httpprotocoloptions-max-connection-duration

use std::fmt::Write as _;
use std::time::{Duration, Instant};
use tests::curl;
use tests::differential::{check, Config, Known, Scenario, Side, Step};
use tests::scripted::Behaviour;
use tests::upstream::Reply;

const DOC: &str = "https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/protocol.proto#envoy-v3-api-msg-config-core-v3-httpprotocoloptions";

const KNOWN: &[Known] = &[];

/// One cluster per case, all to upstream `a`, each routed by its name as path prefix.
const CASES: &[(&str, &str)] = &[
    // (cluster, typed_extension_protocol_options' HttpProtocolOptions body, or a cluster field)
    (
        "h1_cap",
        "common_http_protocol_options: { max_requests_per_connection: 3 }\n\
         explicit_http_config: { http_protocol_options: {} }",
    ),
    (
        "h2_cap",
        "common_http_protocol_options: { max_requests_per_connection: 3 }\n\
         explicit_http_config: { http2_protocol_options: {} }",
    ),
    (
        "h1_duration",
        "common_http_protocol_options: { max_connection_duration: 1.5s }\n\
         explicit_http_config: { http_protocol_options: {} }",
    ),
    (
        "h2_idle",
        "common_http_protocol_options: { idle_timeout: 0.5s }\n\
         explicit_http_config: { http2_protocol_options: {} }",
    ),
    (
        "h2_duration",
        "common_http_protocol_options: { max_connection_duration: 1.5s }\n\
         explicit_http_config: { http2_protocol_options: {} }",
    ),
];

fn bootstrap() -> String {
    let mut routes = String::new();
    let mut clusters = String::new();
    let endpoint = |name: &str| {
        format!(
            "    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{{{upstream_a}}}} }} }} }}\n"
        )
    };
    for (name, options) in CASES {
        let _ = writeln!(
            routes,
            "              - {{ match: {{ prefix: \"/{name}/\" }}, route: {{ cluster: {name} }} }}"
        );
        let options: String = options
            .lines()
            .map(|l| format!("        {}\n", l.trim()))
            .collect();
        let _ = write!(
            clusters,
            "  - name: {name}\n    connect_timeout: 2s\n    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n{options}{}",
            endpoint(name)
        );
    }
    // The deprecated cluster field, still honoured by Envoy.
    let _ = writeln!(
        routes,
        "              - {{ match: {{ prefix: \"/h1_legacy/\" }}, route: {{ cluster: h1_legacy }} }}"
    );
    let _ = write!(
        clusters,
        "  - name: h1_legacy\n    connect_timeout: 2s\n    max_requests_per_connection: 2\n{}",
        endpoint("h1_legacy")
    );
    // ORIGINAL_DST: the host comes from a request header; its connections are reused and
    // capped like any other host's.
    let _ = writeln!(
        routes,
        "              - {{ match: {{ prefix: \"/odst/\" }}, route: {{ cluster: odst }} }}"
    );
    let _ = write!(
        clusters,
        "  - name: odst\n    type: ORIGINAL_DST\n    lb_policy: CLUSTER_PROVIDED\n    connect_timeout: 2s\n    max_requests_per_connection: 2\n    original_dst_lb_config: {{ use_http_header: true }}\n"
    );
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
              routes:
{routes}          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
{clusters}"#
    )
}

/// The upstream's connections as text once they hold still: each one's request count and
/// whether it is still open (a proxy closes a spent connection just after the response, so
/// the log is read again until two reads 200 ms apart agree, within 3 s).
fn connections(side: &Side) -> String {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut last = side.a.connection_log();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = side.a.connection_log();
        if now == last || Instant::now() > deadline {
            break;
        }
        last = now;
    }
    last.iter()
        .enumerate()
        .map(|(i, c)| {
            let state = if c.open { "open" } else { "closed" };
            format!("  connection {i}: {} requests, {state}\n", c.requests)
        })
        .collect()
}

/// The cluster's counters about connection lifetimes, from `/stats`.
fn stats(side: &Side, cluster: &str) -> String {
    let body = side
        .proxy
        .get(&format!("/stats?filter=^cluster\\.{cluster}\\."))
        .body;
    let wanted = [
        "upstream_cx_total",
        "upstream_cx_max_requests",
        "upstream_cx_max_duration_reached",
        "upstream_cx_idle_timeout",
        "upstream_rq_total",
        "upstream_rq_200",
    ];
    body.lines()
        .filter(|l| {
            let stat = l.trim_start_matches(&format!("cluster.{cluster}."));
            wanted.iter().any(|w| stat.split(':').next() == Some(*w))
        })
        .map(|l| format!("  {l}\n"))
        .collect()
}

/// GETs `path` `n` times, one after the other, each on a new client connection.
fn sequential(side: &Side, path: &str, n: usize) -> String {
    let mut out = String::new();
    for i in 0..n {
        let r = curl::get(&side.url(&format!("{path}{i}")));
        let _ = writeln!(out, "  {path}{i}: {}", r.status);
    }
    out
}

/// GETs `paths` at once from threads, the i-th started `gap` × i after the first, and
/// returns their statuses in order.
fn staggered(side: &Side, paths: &[String], gap: Duration) -> String {
    let urls: Vec<String> = paths.iter().map(|p| side.url(p)).collect();
    let clients: Vec<_> = urls
        .into_iter()
        .enumerate()
        .map(|(i, url)| {
            std::thread::spawn(move || {
                std::thread::sleep(gap * i as u32);
                curl::get(&url).status
            })
        })
        .collect();
    paths
        .iter()
        .zip(clients)
        .map(|(p, c)| format!("  {p}: {}\n", c.join().unwrap_or(0)))
        .collect()
}

/// Seven requests one after the other to a cap of three: connections of 3, 3 and 1 requests,
/// the first two closed by the proxy; `upstream_cx_max_requests` counts the two spent ones.
fn h1_cap(side: &Side) -> String {
    let out = sequential(side, "/h1_cap/", 7);
    format!("{out}{}{}", connections(side), stats(side, "h1_cap"))
}

/// The deprecated cluster field `max_requests_per_connection: 2`.
fn h1_legacy(side: &Side) -> String {
    let out = sequential(side, "/h1_legacy/", 5);
    format!("{out}{}{}", connections(side), stats(side, "h1_legacy"))
}

/// ORIGINAL_DST, five requests to the upstream's address from `x-envoy-original-dst-host`:
/// one host, its connections capped at two requests.
fn original_dst(side: &Side) -> String {
    let header = format!("x-envoy-original-dst-host: 127.0.0.1:{}", side.a.port());
    let mut out = String::new();
    for i in 0..5 {
        let status = curl::request("GET", &side.url(&format!("/odst/{i}")), &["-H", &header])
            .map_or(0, |r| r.status);
        let _ = writeln!(out, "  /odst/{i}: {status}");
    }
    format!("{out}{}{}", connections(side), stats(side, "odst"))
}

/// HTTP/2: a connection that has carried three streams takes no more and is closed; the
/// next request opens a new connection.
fn h2_cap(side: &Side) -> String {
    let out = sequential(side, "/h2_cap/", 7);
    format!("{out}{}{}", connections(side), stats(side, "h2_cap"))
}

/// HTTP/2, five slow requests at once (150 ms apart, so the upstream sees them in order) to
/// a cap of three: the first connection carries three streams and closes once they have
/// finished, the other two go to a second connection, which stays open.
fn h2_cap_concurrent(side: &Side) -> String {
    let paths: Vec<String> = (0..5).map(|i| format!("/h2_cap/{i}")).collect();
    let out = staggered(side, &paths, Duration::from_millis(150));
    format!("{out}{}{}", connections(side), stats(side, "h2_cap"))
}

/// A connection idle at its `max_connection_duration` (or past its idle timeout) is closed
/// then; the next request opens a new one.
fn closes_while_idle(side: &Side, cluster: &str) -> String {
    let mut out = sequential(side, &format!("/{cluster}/"), 2);
    std::thread::sleep(Duration::from_millis(2000));
    out.push_str("  after the duration:\n");
    out.push_str(&connections(side));
    out.push_str(&sequential(side, &format!("/{cluster}/again/"), 1));
    format!("{out}{}{}", connections(side), stats(side, cluster))
}

/// The idle timeout on HTTP/2 (HTTP/1.1: traffic_upstream_idle.rs).
fn h2_idle(side: &Side) -> String {
    closes_while_idle(side, "h2_idle")
}

fn h1_duration_idle(side: &Side) -> String {
    closes_while_idle(side, "h1_duration")
}

fn h2_duration_idle(side: &Side) -> String {
    closes_while_idle(side, "h2_duration")
}

/// Upstream answers take 1 s; the duration is 1.5 s. The first request ends at about 1 s
/// and the second, sent right after it on the same connection, is in flight at the deadline:
/// it is still answered, then the connection closes. The third, sent at 1.75 s while the
/// second is in flight, goes to a new connection (HTTP/2: the expired one takes no stream).
fn duration_in_flight(side: &Side, cluster: &str) -> String {
    let url = |i: usize| side.url(&format!("/{cluster}/{i}"));
    let (first, second, third) = (url(0), url(1), url(2));
    let one_after_the_other = std::thread::spawn(move || {
        let a = curl::get(&first).status;
        (a, curl::get(&second).status)
    });
    let later = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1750));
        curl::get(&third).status
    });
    let (a, b) = one_after_the_other.join().unwrap_or((0, 0));
    let c = later.join().unwrap_or(0);
    format!(
        "  statuses {a} {b} {c}\n{}{}",
        connections(side),
        stats(side, cluster)
    )
}

fn h1_duration_in_flight(side: &Side) -> String {
    duration_in_flight(side, "h1_duration")
}

fn h2_duration_in_flight(side: &Side) -> String {
    duration_in_flight(side, "h2_duration")
}

fn scenario(name: &'static str, upstream: Behaviour, step: fn(&Side) -> String) -> Scenario {
    Scenario {
        name,
        doc: DOC,
        config: Config::Full(bootstrap()),
        upstream,
        steps: vec![Step::Custom(step)],
    }
}

fn fast() -> Behaviour {
    Behaviour::Reply(Reply::text("from a\n"))
}

fn scenarios() -> Vec<Scenario> {
    let slow = |ms| Behaviour::Delay(Duration::from_millis(ms));
    vec![
        scenario("max_requests_h1", fast(), h1_cap),
        scenario("max_requests_h1_cluster_field", fast(), h1_legacy),
        scenario("max_requests_h2", fast(), h2_cap),
        scenario("max_requests_original_dst", fast(), original_dst),
        scenario("max_requests_h2_concurrent", slow(1000), h2_cap_concurrent),
        scenario("max_duration_h1_idle", fast(), h1_duration_idle),
        scenario("idle_timeout_h2", fast(), h2_idle),
        scenario("max_duration_h2_idle", fast(), h2_duration_idle),
        scenario(
            "max_duration_h1_in_flight",
            slow(1000),
            h1_duration_in_flight,
        ),
        scenario(
            "max_duration_h2_in_flight",
            slow(1000),
            h2_duration_in_flight,
        ),
    ]
}

#[test]
fn upstream_connection_lifetimes_match_envoy() {
    check(
        "upstream_connection_lifetimes_match_envoy",
        &scenarios(),
        KNOWN,
    );
}
