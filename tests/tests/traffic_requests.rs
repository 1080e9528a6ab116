//! Differential traffic tests for what the connection manager does to a request before
//! routing: malformed requests (which must get Envoy's status and never reach the upstream),
//! header limits, headers with underscores, and path normalisation.

use std::time::Duration;
use tests::differential::{check, one_vhost, run_client, Known, Scenario, Side};

const HCM: &str = "https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto";
const PROTO: &str = "https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/protocol.proto#config-core-v3-httpprotocoloptions";
const PATHS: &str = "https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto#envoy-v3-api-field-extensions-filters-network-http-connection-manager-v3-httpconnectionmanager-normalize-path";

/// Differences Outrigger documents.
const KNOWN: &[Known] = &[
    Known {
        scenario: "content_length_and_chunked_allowed",
        reason: "hyper closes the connection after answering a request that carried both `Content-Length` and chunked `Transfer-Encoding`, as RFC 9112 section 6.3 requires of a server that processes one; Envoy with allow_chunked_length keeps it open",
    },
    Known {
        scenario: "request_line_tabs",
        reason: "hyper's parser takes runs of spaces between the request line's parts but not tabs, and answers 400 (426 when the tab garbles the version); Envoy's parser takes tabs too. Refusing is the safe side of RFC 9112 section 3, which lets a server accept them",
    },
];

/// Envoy's response code details for requests its HTTP/1 codec refuses.
const CODEC_ERRORS: &str =
    "https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/response_code_details";

const ACCESS_LOG_TO_STDOUT: &str = r#"
access_log:
- name: envoy.access_loggers.file
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
    path: /dev/stdout
    log_format:
      text_format_source:
        inline_string: "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %PROTOCOL% %BYTES_RECEIVED% %BYTES_SENT% %REQ(:METHOD)% %REQ(:PATH)% %UPSTREAM_HOST%\n"
"#;

const TO_BACKEND: &str = "- match: { prefix: / }\n  route: { cluster: backend }";

fn many_headers(n: usize) -> String {
    let mut request = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..n {
        request.push_str(&format!("x-h{i}: v\r\n"));
    }
    request.push_str("\r\n");
    request
}

fn big_header(bytes: usize) -> String {
    format!(
        "GET / HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(bytes)
    )
}

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario::http("malformed_missing_host", HCM, &one_vhost(TO_BACKEND))
            .raw("GET / HTTP/1.1\r\n\r\n")
            .raw("GET / HTTP/1.0\r\n\r\n"),
        // https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/protocol.proto#envoy-v3-api-field-config-core-v3-http1protocoloptions-accept-http-10
        Scenario::http("http_10_accepted_with_a_default_host", HCM, &one_vhost(TO_BACKEND))
            .hcm("http_protocol_options: { accept_http_10: true, default_host_for_http_10: default.example }")
            .raw("GET /a HTTP/1.0\r\n\r\n")
            .raw("GET /b HTTP/1.0\r\nHost: x\r\n\r\n")
            .raw("GET /c HTTP/1.0\r\nConnection: keep-alive\r\nHost: x\r\n\r\n"),
        Scenario::http("http_10_accepted_without_a_default_host", HCM, &one_vhost(TO_BACKEND))
            .hcm("http_protocol_options: { accept_http_10: true }")
            .raw("GET /a HTTP/1.0\r\n\r\n")
            .raw("GET /b HTTP/1.0\r\nHost: x\r\n\r\n"),
        Scenario::http("malformed_garbage", HCM, &one_vhost(TO_BACKEND))
            .raw("this is not http\r\n\r\n")
            .raw("G@T / HTTP/1.1\r\nHost: x\r\n\r\n")
            .raw("GET / HTTP/9.9\r\nHost: x\r\n\r\n")
            .raw("GET /\r\nHost: x\r\n\r\n")
            .raw("GET / HTTP/1.1\r\nHost: x\r\nbad header line\r\n\r\n")
            .raw("GET / HTTP/1.1\r\nHost: x\r\nx-bad: a\x01b\r\n\r\n"),
        // Envoy's HTTP/1 parser takes runs of spaces and tabs between the request line's parts.
        Scenario::http("request_line_spaces", HCM, &one_vhost(TO_BACKEND))
            .raw("GET  /two-spaces HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .raw("GET /after   HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .raw(" GET /leading HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        Scenario::http("request_line_tabs", HCM, &one_vhost(TO_BACKEND))
            .raw("GET\t/tab HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .raw("GET /tab\tHTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        Scenario::http("malformed_conflicting_lengths", HCM, &one_vhost(TO_BACKEND))
            .raw("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd")
            .raw("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n")
            .raw("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n"),
        Scenario::http("malformed_content_length_and_chunked", HCM, &one_vhost(TO_BACKEND))
            .raw("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
            .raw("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\ncontent-length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
        // https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/protocol.proto#envoy-v3-api-field-config-core-v3-http1protocoloptions-allow-chunked-length
        Scenario::http("content_length_and_chunked_allowed", HCM, &one_vhost(TO_BACKEND))
            .hcm("http_protocol_options: { allow_chunked_length: true }")
            .raw("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
        // A request hyper cannot parse comes after a good one on the same connection, and a
        // good response whose body reads like hyper's own bare reply is not taken for it.
        Scenario::http("malformed_after_a_response", HCM, &one_vhost(TO_BACKEND))
            .custom(malformed_after_a_response),
        Scenario::http("malformed_counted_and_logged", CODEC_ERRORS, &one_vhost(TO_BACKEND))
            .hcm(ACCESS_LOG_TO_STDOUT)
            .custom(malformed_counted_and_logged),
        Scenario::http("well_formed_raw_keepalive", HCM, &one_vhost(TO_BACKEND))
            .raw("GET /raw HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .raw("POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
        Scenario::http("too_many_headers_default_100", PROTO, &one_vhost(TO_BACKEND))
            .raw(many_headers(99))
            .raw(many_headers(101)),
        Scenario::http("too_many_headers_configured", PROTO, &one_vhost(TO_BACKEND))
            .hcm("common_http_protocol_options: { max_headers_count: 10 }")
            .raw(many_headers(5))
            .raw(many_headers(12))
            .curl(
                "/",
                &[
                    "--http2-prior-knowledge", "-H", "a1: 1", "-H", "a2: 1", "-H", "a3: 1", "-H",
                    "a4: 1", "-H", "a5: 1", "-H", "a6: 1", "-H", "a7: 1", "-H", "a8: 1",
                ],
            ),
        Scenario::http("oversized_headers_default_60k", HCM, &one_vhost(TO_BACKEND))
            .raw(big_header(50 * 1024))
            .raw(big_header(61 * 1024)),
        Scenario::http("oversized_headers_configured", HCM, &one_vhost(TO_BACKEND))
            .hcm("max_request_headers_kb: 2")
            .raw(big_header(1024))
            .raw(big_header(3 * 1024))
            .curl("/", &["--http2-prior-knowledge", "-H", &format!("x-big: {}", "b".repeat(3000))]),
        Scenario::http("underscores_allowed_by_default", PROTO, &one_vhost(TO_BACKEND))
            .curl("/", &["-H", "x_under: 1"])
            .custom(check_stats),
        Scenario::http("underscores_reject_request", PROTO, &one_vhost(TO_BACKEND))
            .hcm("common_http_protocol_options: { headers_with_underscores_action: REJECT_REQUEST }")
            .curl("/", &["-H", "x_under: 1"])
            .curl("/", &["--http2-prior-knowledge", "-H", "x_under: 1"])
            .get("/fine")
            .custom(check_stats),
        Scenario::http("underscores_drop_header", PROTO, &one_vhost(TO_BACKEND))
            .hcm("common_http_protocol_options: { headers_with_underscores_action: DROP_HEADER }")
            .curl("/", &["-H", "x_under: 1", "-H", "x-dash: 1"])
            .curl("/", &["--http2-prior-knowledge", "-H", "x_under: 1"])
            .custom(check_stats),
        Scenario::http("path_not_normalised_by_default", PATHS, &one_vhost(TO_BACKEND))
            .get("/a/../b")
            .get("/a/./b")
            .get("/a//b")
            .get("/a%2Fb")
            .get("/%61bc")
            .custom(check_stats),
        Scenario::http("path_normalize_path", PATHS, &one_vhost(TO_BACKEND))
            .hcm("normalize_path: true")
            .get("/a/../b")
            .get("/a/./b/")
            .get("/../../x")
            .get("/a//b")
            .get("/a%2Fb")
            .get("/%61bc?q=/../")
            .get("/a\\b")
            .custom(check_stats),
        Scenario::http("path_merge_slashes", PATHS, &one_vhost(TO_BACKEND))
            .hcm("merge_slashes: true")
            .get("//a///b//?x=//")
            .get("/a/../b")
            .custom(check_stats),
        Scenario::http("path_normalised_before_routing", PATHS, &one_vhost(
            "- match: { prefix: /public }\n  route: { cluster: backend }\n- match: { prefix: / }\n  direct_response: { status: 403 }",
        ))
        .hcm("normalize_path: true\nmerge_slashes: true")
        .get("/public/../secret")
        .get("//public//x"),
        Scenario::http("path_escaped_slashes_reject", PATHS, &one_vhost(TO_BACKEND))
            .hcm("path_with_escaped_slashes_action: REJECT_REQUEST")
            .get("/a%2Fb")
            .get("/a%5cb")
            .get("/plain")
            .custom(check_stats),
        Scenario::http("path_escaped_slashes_unescape_and_redirect", PATHS, &one_vhost(TO_BACKEND))
            .hcm("path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT")
            .get("/a%2Fb?q=1")
            .get("/a%2fb")
            .curl("/a%2Fb", &["--http2-prior-knowledge"])
            .custom(check_stats),
        Scenario::http("path_escaped_slashes_unescape_and_forward", PATHS, &one_vhost(TO_BACKEND))
            .hcm("path_with_escaped_slashes_action: UNESCAPE_AND_FORWARD")
            .get("/a%2Fb%5Cc")
            .get("/keep%20space")
            .custom(check_stats),
        Scenario::http(
            "failing_health_checks_closes_connections",
            "https://www.envoyproxy.io/docs/envoy/latest/operations/admin#post--healthcheck-fail",
            &one_vhost(TO_BACKEND),
        )
        .custom(health_check_fail_and_ok),
        Scenario::http("absolute_form_and_connect", HCM, &one_vhost(TO_BACKEND))
            .raw("GET http://abs.example/path?q HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n")
            .raw("CONNECT abs.example:443 HTTP/1.1\r\nHost: abs.example:443\r\n\r\n")
            .raw("OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .custom(check_stats),
    ]
}

/// The connection manager's counters of refused and rewritten paths, and the codecs'
/// counters of headers with underscores, after a scenario's requests.
/// Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/stats
fn check_stats(side: &Side) -> String {
    let filter = "^(http\\.traffic\\.downstream_rq_(failed_path_normalization|redirected_with_normalized_path|non_relative_path)|http[12]\\.(dropped_headers_with_underscores|requests_rejected_with_underscores_in_headers))$";
    let encoded: String = filter
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let body = side.proxy.get(&format!("/stats?filter={encoded}")).body;
    format!("  stats: {}\n", body.trim().replace('\n', ", "))
}

/// Both answers, as the client reads them (the dates reduced to their presence).
fn malformed_after_a_response(side: &Side) -> String {
    let (answer, closed) = tests::differential::raw_exchange(
        side.addr("listener_port"),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\nG@T / HTTP/1.1\r\n\r\n",
        Duration::from_secs(2),
    );
    let text = String::from_utf8_lossy(&answer);
    let mut out = String::new();
    for line in text.split("\r\n") {
        let line = if line.starts_with("date: ") {
            "date: <volatile>"
        } else {
            line
        };
        let line = if line.starts_with("x-envoy-upstream-service-time: ") {
            "x-envoy-upstream-service-time: <volatile>"
        } else {
            line
        };
        out += &format!("  {line:?}\n");
    }
    out + &format!("  closed: {closed}\n")
}

/// Requests the codec refuses count as Envoy counts them (a request, its status class, a
/// protocol error on the connection) and are logged as local replies with `DPE`.
fn malformed_counted_and_logged(side: &Side) -> String {
    let sent: [&[u8]; 9] = [
        b"this is not http\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nx-bad: a\x01b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nbad header line\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nx-del: a\x7fb\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nx-nul: a\x00b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ];
    for bytes in sent {
        let _ = tests::differential::raw_exchange(
            side.addr("listener_port"),
            bytes,
            Duration::from_millis(500),
        );
    }
    // Both proxies write their file logs out within a second.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let logged = || {
        let out = side.proxy.stdout();
        out.lines()
            .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
            .count()
    };
    while logged() < sent.len() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut out = String::new();
    // Outrigger also prints where it listens.
    for line in side
        .proxy
        .stdout()
        .lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
    {
        out += &format!("  log {line}\n");
    }
    let stats = side.proxy.get("/stats").body;
    for line in stats.lines().filter(|l| l.starts_with("http.traffic.")) {
        let counted = [
            "downstream_cx_protocol_error",
            "downstream_cx_http1_total",
            "downstream_rq_total",
            "downstream_rq_http1_total",
            "downstream_rq_2xx",
            "downstream_rq_4xx",
            "downstream_rq_5xx",
        ];
        if counted.iter().any(|c| line.contains(&format!(".{c}:"))) {
            out += &format!("  stat {line}\n");
        }
    }
    out
}

/// After `POST /healthcheck/fail` the server drains connections as it answers them
/// (`Connection: close` on HTTP/1.1, GOAWAY on HTTP/2); after `/healthcheck/ok` it stops.
fn health_check_fail_and_ok(side: &Side) -> String {
    let url = side.url("/");
    let h1_connection = |when: &str| {
        let r = tests::curl::get(&url);
        format!(
            "  {when}: http/1.1 status {} connection {:?}\n",
            r.status,
            r.header("connection")
        )
    };
    let h2_goaways = |when: &str| {
        let (_, _, trace) = run_client(
            "curl",
            &["-sv", "--http2-prior-knowledge", &url, &url],
            Duration::from_secs(10),
        );
        // hyper's graceful shutdown sends a second GOAWAY once the stream ends, Envoy only
        // its notice: what is compared is whether one came and how many connections the two
        // requests took.
        let goaway = trace.lines().any(|l| l.contains("GOAWAY"));
        let connections = trace.lines().filter(|l| l.contains("Connected to")).count();
        format!("  {when}: http/2 GOAWAY {goaway}, two requests took {connections} connections\n")
    };
    let mut out = h1_connection("healthy") + &h2_goaways("healthy");
    side.proxy.post("/healthcheck/fail");
    out += &(h1_connection("failing") + &h2_goaways("failing"));
    side.proxy.post("/healthcheck/ok");
    out += &(h1_connection("healthy again") + &h2_goaways("healthy again"));
    out
}

#[test]
fn requests_match_envoy() {
    check("requests_match_envoy", &scenarios(), KNOWN);
}
