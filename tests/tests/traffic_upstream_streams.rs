//! What one upstream stream may take, compared with Envoy on HTTP/1.1 and HTTP/2 clusters:
//! the cluster's `max_stream_duration` (504 UMSDR before the response head, the response cut
//! after it) and `max_headers_count` (a response with more headers is a protocol error: 502
//! UPE), and a malformed HTTP/1.1 response (502 UPE). Compared: the client's status, body and
//! what it received of a cut response, the access log's flags and details, and the cluster's
//! counters.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/protocol.proto#envoy-v3-api-field-config-core-v3-httpprotocoloptions-max-stream-duration
//! and https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/protocol.proto#envoy-v3-api-field-config-core-v3-httpprotocoloptions-max-headers-count

use std::fmt::Write as _;
use std::time::Duration;
use tests::curl;
use tests::differential::{check, Config, Known, Scenario, Side};
use tests::scripted::Behaviour;
use tests::upstream::Reply;

const DOC: &str = "https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/protocol.proto#envoy-v3-api-msg-config-core-v3-httpprotocoloptions";

const KNOWN: &[Known] = &[];

/// Two clusters with the same stream limits to upstream `a`, over HTTP/1.1 and HTTP/2, routed
/// by their names as path prefixes; the access log says how each stream ended.
fn bootstrap(log: &str) -> String {
    let cluster = |name: &str, protocol: &str| {
        format!(
            r#"  - name: {name}
    connect_timeout: 2s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        common_http_protocol_options: {{ max_stream_duration: 1s, max_headers_count: 20 }}
        explicit_http_config: {{ {protocol}: {{}} }}
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{{{upstream_a}}}} }} }} }}
"#
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
              path: {log}
              log_format: {{ text_format_source: {{ inline_string: "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n" }} }}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - {{ match: {{ prefix: "/h1/" }}, route: {{ cluster: h1 }} }}
              - {{ match: {{ prefix: "/h2/" }}, route: {{ cluster: h2 }} }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
{}{}"#,
        cluster("h1", "http_protocol_options"),
        cluster("h2", "http2_protocol_options"),
    )
}

/// The access log file of a side (named by its listener port, which the bootstrap template
/// fills in), in this test's directory.
fn log_path(listener_port: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "outrigger-upstream-streams-{}-{listener_port}.log",
        std::process::id()
    ))
}

fn side_log(side: &Side) -> std::path::PathBuf {
    log_path(&side.ports.get("listener_port").to_string())
}

/// GETs each path, then describes the answers, the access log lines (once flushed) and the
/// clusters' counters.
fn run(side: &Side, paths: &[&str], log: &std::path::Path) -> String {
    let mut out = String::new();
    for p in paths {
        match curl::request("GET", &side.url(p), &["--max-time", "6"]) {
            Ok(r) => {
                let _ = writeln!(out, "  {p}: {} {:?}", r.status, r.body);
            }
            Err(f) => {
                let _ = writeln!(
                    out,
                    "  {p}: no whole response (curl exit {:?})",
                    f.exit_code
                );
            }
        }
    }
    // Envoy's file logs flush in the background.
    let deadline = std::time::Instant::now() + Duration::from_secs(12);
    let mut lines: Vec<String> = Vec::new();
    while std::time::Instant::now() < deadline {
        lines = std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        if lines.len() >= paths.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    lines.sort();
    for l in lines {
        let _ = writeln!(out, "  log: {l}");
    }
    let stats = side.proxy.get("/stats?filter=^cluster\\.h").body;
    let wanted = [
        "upstream_rq_max_duration_reached",
        "upstream_cx_protocol_error",
        "upstream_rq_502",
        "upstream_rq_503",
        "upstream_rq_504",
        "upstream_rq_5xx",
        "upstream_rq_completed",
    ];
    for l in stats.lines().filter(|l| {
        let stat = l.split(':').next().unwrap_or_default();
        let stat = stat
            .strip_prefix("cluster.h1.")
            .or_else(|| stat.strip_prefix("cluster.h2."));
        stat.is_some_and(|s| wanted.contains(&s))
    }) {
        let _ = writeln!(out, "  {l}");
    }
    out
}

fn slow(side: &Side) -> String {
    run(side, &["/h1/slow", "/h2/slow"], &side_log(side))
}

fn slow_body(side: &Side) -> String {
    run(side, &["/h1/slowbody", "/h2/slowbody"], &side_log(side))
}

fn headers(side: &Side) -> String {
    run(side, &["/h1/many", "/h2/many"], &side_log(side))
}

fn malformed(side: &Side) -> String {
    run(side, &["/h1/bad"], &side_log(side))
}

/// A reply with `n` extra headers.
fn with_headers(n: usize) -> Behaviour {
    let mut reply = Reply::text("many\n");
    reply
        .headers
        .extend((0..n).map(|i| (format!("x-h{i}"), "v".to_string())));
    Behaviour::Reply(reply)
}

fn scenario(name: &'static str, upstream: Behaviour, step: fn(&Side) -> String) -> Scenario {
    let mut s = Scenario::http(name, DOC, "");
    s.config = Config::Full(bootstrap(
        &log_path("{{listener_port}}").display().to_string(),
    ));
    s.upstream(upstream).custom(step)
}

#[test]
fn upstream_stream_limits_match_envoy() {
    let scenarios = vec![
        scenario("slow", Behaviour::Delay(Duration::from_secs(3)), slow),
        scenario(
            "slow_body",
            Behaviour::SlowBody(Duration::from_secs(3)),
            slow_body,
        ),
        scenario("headers", with_headers(30), headers),
        scenario(
            "malformed",
            Behaviour::RawReply(
                b"HTTP/1.1 200 OK\r\nbad header line\r\ncontent-length: 2\r\n\r\nok",
            ),
            malformed,
        ),
    ];
    check("upstream_stream_limits_match_envoy", &scenarios, KNOWN);
}
