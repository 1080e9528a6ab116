//! Differential traffic tests for cluster circuit breakers: concurrent requests against a slow
//! upstream (each answer takes 1 s) through clusters limited to one active request
//! (`max_requests: 1`) and to one connection with one pending request (`max_connections: 1`,
//! `max_pending_requests: 1`), and a tcp_proxy to a cluster with `max_connections: 1`.
//! Compared between Envoy and Outrigger: each request's status, `x-envoy-overloaded` and
//! body, the response flags in the access log, the connections the upstream saw, the
//! overflow counters and `circuit_breakers.*` gauges in `/stats`, the Prometheus names, and
//! the `/clusters` threshold lines.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/circuit_breaking

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use tests::differential::{check, response_text, Config, Known, Scenario, Side};
use tests::scripted::Behaviour;

const CB: &str =
    "https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/circuit_breaking";

const KNOWN: &[Known] = &[];

/// `/rq` to cluster `rq` (one active request), `/cx` to `cx` (one connection, one pending
/// request), `/high` to `cx` at HIGH priority (default HIGH thresholds), tcp_proxy on
/// `{{tcp_port}}` to `tcp` (one connection); all to upstream `a`.
fn bootstrap() -> String {
    bootstrap_with_router("")
}

/// [`bootstrap`] with these fields in the router's config.
fn bootstrap_with_router(router: &str) -> String {
    let cluster = |name: &str, thresholds: &str| {
        format!(
            r#"
  - name: {name}
    connect_timeout: 1s
    circuit_breakers: {{ thresholds: [ {thresholds} ] }}
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{{{upstream_a}}}} }} }} }}"#
        )
    };
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
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: /dev/stdout
              log_format: {{ text_format_source: {{ inline_string: "flags %REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n" }} }}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/rq" }}
                route: {{ cluster: rq }}
              - match: {{ prefix: "/cx" }}
                route: {{ cluster: cx }}
              - match: {{ prefix: "/high" }}
                route: {{ cluster: cx, priority: HIGH }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router, {} }}
  - name: tcp
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{{{tcp_port}}}} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp
          cluster: tcp
  clusters:{}{}{}
"#,
        router,
        cluster("rq", "{ max_requests: 1, track_remaining: true }"),
        cluster(
            "cx",
            "{ max_connections: 1, max_pending_requests: 1, track_remaining: true }, { priority: HIGH, max_retries: 5 }"
        ),
        cluster("tcp", "{ max_connections: 1 }"),
    )
}

/// Between two requests' starts: long enough for the proxy to have acted on the first, well
/// inside the upstream's 1 s answer.
const GAP: Duration = Duration::from_millis(200);

/// GETs `paths` on their own connections, the i-th started i × GAP after the first, and
/// returns each one's response in that order.
fn staggered(side: &Side, paths: &[&'static str]) -> String {
    let addr = side.addr("listener_port");
    let clients: Vec<_> = paths
        .iter()
        .enumerate()
        .map(|(i, path)| {
            let path = *path;
            std::thread::spawn(move || {
                std::thread::sleep(GAP * i as u32);
                let Ok(mut stream) = TcpStream::connect(addr) else {
                    return "  cannot connect\n".to_string();
                };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let request =
                    format!("GET {path} HTTP/1.1\r\nhost: cb.test\r\nconnection: close\r\n\r\n");
                let _ = stream.write_all(request.as_bytes());
                let mut response = Vec::new();
                let _ = stream.read_to_end(&mut response);
                format!("request {i} {path}\n{}", parse(&response))
            })
        })
        .collect();
    clients
        .into_iter()
        .map(|c| c.join().unwrap_or_else(|_| "  client panicked\n".into()))
        .collect()
}

fn parse(response: &[u8]) -> String {
    let text = String::from_utf8_lossy(response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return format!("  partial response {text:?}\n");
    };
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        // Timing, not behaviour.
        .filter(|(n, _)| n != "x-envoy-upstream-service-time")
        .collect();
    response_text(status, &headers, body.as_bytes())
}

/// The cluster's stats this test is about, from `/stats`.
fn stats(side: &Side, cluster: &str) -> String {
    let body = side
        .proxy
        .get(&format!("/stats?filter=^cluster\\.{cluster}\\."))
        .body;
    let wanted = [
        "circuit_breakers.",
        "upstream_cx_overflow",
        "upstream_cx_total",
        "upstream_rq_total",
        "upstream_rq_pending_",
        "upstream_rq_active_overflow",
        "upstream_rq_retry_overflow",
        "upstream_rq_200",
        "upstream_rq_503",
    ];
    let mut out = String::new();
    for line in body.lines() {
        let stat = line.trim_start_matches(&format!("cluster.{cluster}."));
        if wanted.iter().any(|w| stat.starts_with(w)) {
            out.push_str(&format!("  {line}\n"));
        }
    }
    out
}

/// The access log lines, sorted (requests finish in an order timing decides).
fn flags(side: &Side, expected: usize) -> String {
    // Lines are flushed every 100 ms (the differential runner's `--file-flush-interval-msec`).
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let mut lines: Vec<String> = loop {
        let lines: Vec<String> = side
            .proxy
            .stdout()
            .lines()
            .filter(|l| l.starts_with("flags "))
            .map(|l| format!("  {l}\n"))
            .collect();
        if lines.len() >= expected || std::time::Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    lines.sort();
    lines.concat()
}

/// Three requests 200 ms apart to `max_requests: 1`: the first is answered, the others get
/// 503 UO with `x-envoy-overloaded` (Envoy overflows them when they would start on a
/// connection, `upstream_rq_active_overflow`; the second one opened a connection first).
fn max_requests(side: &Side) -> String {
    let responses = staggered(side, &["/rq/1", "/rq/2", "/rq/3"]);
    format!(
        "{responses}{}  upstream connections: {}\n{}",
        stats(side, "rq"),
        side.a.connections(),
        flags(side, 3)
    )
}

/// Four requests 200 ms apart to `max_connections: 1, max_pending_requests: 1`: the first is
/// answered, the second waits for its connection (`upstream_cx_overflow`) and is answered
/// after it, the third and fourth overflow the pending queue.
fn max_connections_and_pending(side: &Side) -> String {
    let responses = staggered(side, &["/cx/1", "/cx/2", "/cx/3", "/cx/4"]);
    format!(
        "{responses}{}  upstream connections: {}\n{}",
        stats(side, "cx"),
        side.a.connections(),
        flags(side, 4)
    )
}

/// HIGH priority requests use the HIGH thresholds (defaults here), so the DEFAULT limits of
/// the same cluster do not hold them back.
fn high_priority(side: &Side) -> String {
    let responses = staggered(side, &["/high/1", "/high/2", "/high/3"]);
    format!("{responses}{}", stats(side, "cx"))
}

/// tcp_proxy: a second connection while the first is open is closed at once, with
/// `upstream_cx_overflow`.
fn tcp_max_connections(side: &Side) -> String {
    let first = TcpStream::connect(side.addr("tcp_port")).ok();
    std::thread::sleep(GAP);
    let mut second = String::new();
    if let Ok(mut s) = TcpStream::connect(side.addr("tcp_port")) {
        let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
        let mut buf = Vec::new();
        let read = s.read_to_end(&mut buf);
        second = format!(
            "  second: read {} bytes, closed: {}\n",
            buf.len(),
            read.is_ok()
        );
    }
    std::thread::sleep(GAP);
    let out = format!("{second}{}", stats(side, "tcp"));
    drop(first);
    out
}

/// `/clusters` prints each cluster's thresholds per priority (sorted: Envoy lists its
/// clusters in hash order).
fn clusters_page(side: &Side) -> String {
    let mut lines: Vec<String> = side
        .proxy
        .get("/clusters")
        .body
        .lines()
        .filter(|l| l.contains("_priority::"))
        .map(|l| format!("  {l}\n"))
        .collect();
    lines.sort();
    lines.concat()
}

/// The circuit breaker gauges and overflow counters in Prometheus form.
fn prometheus(side: &Side) -> String {
    side.proxy
        .get("/stats/prometheus")
        .body
        .lines()
        .filter(|l| {
            l.contains("circuit_breakers_default_") && l.contains("cluster_name=\"cx\"")
                || l.starts_with("envoy_cluster_upstream_cx_overflow{")
                || l.starts_with("envoy_cluster_upstream_rq_pending_overflow{")
        })
        .map(|l| format!("  {l}\n"))
        .collect()
}

fn scenario(name: &'static str, step: fn(&Side) -> String) -> Scenario {
    Scenario {
        name,
        doc: CB,
        config: Config::Full(bootstrap()),
        upstream: Behaviour::Delay(Duration::from_secs(1)),
        steps: vec![tests::differential::Step::Custom(step)],
    }
}

fn scenarios() -> Vec<Scenario> {
    vec![
        scenario("cb_max_requests", max_requests),
        scenario(
            "cb_max_connections_and_pending",
            max_connections_and_pending,
        )
        .custom(high_priority),
        scenario("cb_tcp_max_connections", tcp_max_connections)
            .custom(clusters_page)
            .custom(prometheus),
        // The overflow's 503 without `x-envoy-overloaded`.
        Scenario {
            config: Config::Full(bootstrap_with_router("suppress_envoy_headers: true")),
            doc: "https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/router/v3/router.proto#envoy-v3-api-field-extensions-filters-http-router-v3-router-suppress-envoy-headers",
            ..scenario("cb_max_requests_suppress_envoy_headers", max_requests)
        },
    ]
}

#[test]
fn circuit_breakers_match_envoy() {
    check("circuit_breakers_match_envoy", &scenarios(), KNOWN);
}
