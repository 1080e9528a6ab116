//! Differential access log test: Envoy (the oracle) and Outrigger run the same bootstrap with
//! file access logs in Envoy's default text format, Istio's default text format and JSON (typed,
//! nested, and with `omit_empty_values`) on an HTTP connection manager and on tcp_proxy
//! listeners, and on a listener whose filter chain never matches. The same deterministic
//! traffic goes through both (a 200 from the upstream over HTTP/1.1 and HTTP/2, a POST with a
//! body, a prefix rewrite, a redirect, a direct response, 404 NR, 503 UF from a dead upstream,
//! 503 UH, 504 UT, 503 UC, response trailers, requests refused by the connection manager
//! (escaped slash, underscore header, upgrade not allowed, HTTP/1.0), a client leaving
//! mid-response (DC), a TCP
//! connection, a TCP connection to a dead upstream, and one no filter chain takes), then every
//! line is compared field by field. Fields that differ between any two runs (times, durations, ids,
//! ephemeral ports) are normalised; intentional differences are listed in [`KNOWN`], and a
//! listed difference that no longer occurs fails the test too, so the list stays true.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/observability/access_log/usage

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};
use tests::binaries::Kind;
use tests::scripted::{Behaviour, Scripted};
use tests::{curl, envoy_or_skip, Ports, RunningProxy, Upstream};

/// Istio's default text format (meshConfig `accessLogFormat` when empty; `EnvoyTextLogFormat`
/// in istio/istio `pilot/pkg/model/telemetry_logging.go`).
const ISTIO_FORMAT: &str = r#"[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"#;

/// Field names of Istio's format, in order (for the field-by-field comparison).
const ISTIO_FIELDS: &[&str] = &[
    "start_time",
    "request",
    "response_code",
    "response_flags",
    "response_code_details",
    "connection_termination_details",
    "upstream_transport_failure_reason",
    "bytes_received",
    "bytes_sent",
    "duration",
    "upstream_service_time",
    "x_forwarded_for",
    "user_agent",
    "request_id",
    "authority",
    "upstream_host",
    "upstream_cluster",
    "upstream_local_address",
    "downstream_local_address",
    "downstream_remote_address",
    "requested_server_name",
    "route_name",
];

/// Field names of Envoy's default format, in order.
const DEFAULT_FIELDS: &[&str] = &[
    "start_time",
    "request",
    "response_code",
    "response_flags",
    "bytes_received",
    "bytes_sent",
    "duration",
    "upstream_service_time",
    "x_forwarded_for",
    "user_agent",
    "request_id",
    "authority",
    "upstream_host",
];

/// Fields whose value changes from run to run: compared only for being present or not.
const VARYING: &[&str] = &[
    "start_time",
    "duration",
    "upstream_service_time",
    "request_duration",
    "response_duration",
    "connection_id",
];

/// A difference Outrigger documents: the log file, the line's label and the field.
struct Known {
    log: &'static str,
    line: &'static str,
    field: &'static str,
    reason: &'static str,
}

const UPSTREAM_LOCAL: &str = "the local address of an upstream connection is known only from a response that came on it (HTTP/1.1 pool); a timeout or a close before the response leaves it unknown (open)";

const REFUSED_BEFORE_ROUTING: &str = "Outrigger refuses an upgrade it does not allow before routing; Envoy routes first, so it logs the route and cluster (open)";
const ESCAPED_PATH: &str = "Envoy logs a path it refused for an escaped slash with the slash unescaped; Outrigger logs it as received (open)";

const KNOWN: &[Known] = &[
    Known {
        log: "http_istio.log",
        line: "refused: upgrade not allowed",
        field: "route_name",
        reason: REFUSED_BEFORE_ROUTING,
    },
    Known {
        log: "http_istio.log",
        line: "refused: upgrade not allowed",
        field: "upstream_cluster",
        reason: REFUSED_BEFORE_ROUTING,
    },
    Known {
        log: "http_json.log",
        line: "refused: upgrade not allowed",
        field: "route_name",
        reason: REFUSED_BEFORE_ROUTING,
    },
    Known {
        log: "http_json.log",
        line: "refused: upgrade not allowed",
        field: "upstream_cluster",
        reason: REFUSED_BEFORE_ROUTING,
    },
    Known {
        log: "http_json.log",
        line: "refused: upgrade not allowed",
        field: "summary",
        reason: REFUSED_BEFORE_ROUTING,
    },
    Known {
        log: "http_omit.log",
        line: "refused: upgrade not allowed",
        field: "route_name",
        reason: REFUSED_BEFORE_ROUTING,
    },
    Known {
        log: "http_default.log",
        line: "refused: escaped slash",
        field: "request",
        reason: ESCAPED_PATH,
    },
    Known {
        log: "http_istio.log",
        line: "refused: escaped slash",
        field: "request",
        reason: ESCAPED_PATH,
    },
    Known {
        log: "http_json.log",
        line: "refused: escaped slash",
        field: "path",
        reason: ESCAPED_PATH,
    },
    Known {
        log: "http_istio.log",
        line: "504 UT",
        field: "upstream_local_address",
        reason: UPSTREAM_LOCAL,
    },
    Known {
        log: "http_json.log",
        line: "504 UT",
        field: "upstream_local_address",
        reason: UPSTREAM_LOCAL,
    },
    Known {
        log: "http_istio.log",
        line: "503 UC",
        field: "upstream_local_address",
        reason: UPSTREAM_LOCAL,
    },
    Known {
        log: "http_json.log",
        line: "503 UC",
        field: "upstream_local_address",
        reason: UPSTREAM_LOCAL,
    },
];

const BOOTSTRAP: &str = r#"
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: {{admin_port}} } }
static_resources:
  listeners:
  - name: http
    address: { socket_address: { address: 127.0.0.1, port_value: {{http_port}} } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: alog
          path_with_escaped_slashes_action: REJECT_REQUEST
          common_http_protocol_options: { headers_with_underscores_action: REJECT_REQUEST }
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: LOG_DIR/http_default.log
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: LOG_DIR/http_istio.log
              log_format:
                text_format_source:
                  inline_string: "ISTIO_FORMAT"
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: LOG_DIR/http_json.log
              log_format:
                json_format:
                  start_time: "%START_TIME%"
                  method: "%REQ(:METHOD)%"
                  path: "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH):12%"
                  protocol: "%PROTOCOL%"
                  response_code: "%RESPONSE_CODE%"
                  response_flags: "%RESPONSE_FLAGS%"
                  response_code_details: "%RESPONSE_CODE_DETAILS%"
                  connection_termination_details: "%CONNECTION_TERMINATION_DETAILS%"
                  upstream_transport_failure_reason: "%UPSTREAM_TRANSPORT_FAILURE_REASON%"
                  bytes_received: "%BYTES_RECEIVED%"
                  bytes_sent: "%BYTES_SENT%"
                  duration: "%DURATION%"
                  request_duration: "%REQUEST_DURATION%"
                  response_duration: "%RESPONSE_DURATION%"
                  upstream_service_time: "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%"
                  content_type: "%RESP(CONTENT-TYPE)%"
                  grpc_status: "%TRAILER(GRPC-STATUS)%"
                  trailer: "%TRAILER(X-TRAILER)%"
                  upstream_host: "%UPSTREAM_HOST%"
                  upstream_cluster: "%UPSTREAM_CLUSTER%"
                  upstream_local_address: "%UPSTREAM_LOCAL_ADDRESS%"
                  upstream_remote_address: "%UPSTREAM_REMOTE_ADDRESS%"
                  downstream_local_address: "%DOWNSTREAM_LOCAL_ADDRESS%"
                  downstream_local_port: "%DOWNSTREAM_LOCAL_PORT%"
                  downstream_remote_address: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"
                  requested_server_name: "%REQUESTED_SERVER_NAME%"
                  route_name: "%ROUTE_NAME%"
                  hostname: "%HOSTNAME%"
                  connection_id: "%CONNECTION_ID%"
                  summary: "%RESPONSE_CODE% %RESPONSE_FLAGS% %ROUTE_NAME%"
                  nested: { ua: "%REQ(USER-AGENT)%", constant: 7, flag: true }
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: LOG_DIR/http_omit.log
              log_format:
                omit_empty_values: true
                json_format:
                  response_code: "%RESPONSE_CODE%"
                  upstream_host: "%UPSTREAM_HOST%"
                  route_name: "%ROUTE_NAME%"
                  literal: ""
          - name: envoy.access_loggers.file
            filter:
              or_filter:
                filters:
                - response_flag_filter: { flags: [UF] }
                - status_code_filter: { comparison: { op: EQ, value: { default_value: 404, runtime_key: unset } } }
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: LOG_DIR/http_filtered.log
              log_format:
                text_format_source:
                  inline_string: "%RESPONSE_CODE% %RESPONSE_FLAGS% %REQ(X-REQUEST-ID)%\n"
          route_config:
            name: alog_route
            virtual_hosts:
            - name: vh
              domains: ["*"]
              routes:
              - name: to_backend
                match: { prefix: "/backend" }
                route: { cluster: backend }
              - match: { prefix: "/dead" }
                route: { cluster: dead }
              - name: rewrite
                match: { prefix: "/rewrite" }
                route: { cluster: backend, prefix_rewrite: "/backend/rewritten" }
              - match: { prefix: "/empty" }
                route: { cluster: empty }
              - match: { prefix: "/slow" }
                route: { cluster: slow, timeout: 0.3s }
              - match: { prefix: "/reset" }
                route: { cluster: closer }
              - match: { prefix: "/stream" }
                route: { cluster: streamer }
              - match: { prefix: "/trailers" }
                route: { cluster: trailers }
              - name: redirect
                match: { prefix: "/redirect" }
                redirect: { path_redirect: "/elsewhere" }
              - name: direct
                match: { prefix: "/direct" }
                direct_response: { status: 503, body: { inline_string: "local reply" } }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  - name: tcp
    address: { socket_address: { address: 127.0.0.1, port_value: {{tcp_port}} } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: alog_tcp
          cluster: backend
          access_log: &tcp_logs
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: LOG_DIR/tcp_default.log
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: LOG_DIR/tcp_istio.log
              log_format:
                text_format_source:
                  inline_string: "ISTIO_FORMAT"
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: LOG_DIR/tcp_json.log
              log_format:
                json_format:
                  response_code: "%RESPONSE_CODE%"
                  response_flags: "%RESPONSE_FLAGS%"
                  response_code_details: "%RESPONSE_CODE_DETAILS%"
                  bytes_received: "%BYTES_RECEIVED%"
                  bytes_sent: "%BYTES_SENT%"
                  upstream_host: "%UPSTREAM_HOST%"
                  upstream_cluster: "%UPSTREAM_CLUSTER%"
                  upstream_local_address: "%UPSTREAM_LOCAL_ADDRESS%"
                  downstream_local_address: "%DOWNSTREAM_LOCAL_ADDRESS%"
                  protocol: "%PROTOCOL%"
                  method: "%REQ(:METHOD)%"
                  route_name: "%ROUTE_NAME%"
                  duration: "%DURATION%"
  - name: tcp_dead
    address: { socket_address: { address: 127.0.0.1, port_value: {{tcp_dead_port}} } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: alog_tcp_dead
          cluster: dead
          access_log: *tcp_logs
  - name: no_chain
    address: { socket_address: { address: 127.0.0.1, port_value: {{no_chain_port}} } }
    access_log:
    - name: envoy.access_loggers.file
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
        path: LOG_DIR/listener.log
        log_format:
          json_format:
            response_code: "%RESPONSE_CODE%"
            response_flags: "%RESPONSE_FLAGS%"
            response_code_details: "%RESPONSE_CODE_DETAILS%"
            connection_termination_details: "%CONNECTION_TERMINATION_DETAILS%"
            downstream_local_address: "%DOWNSTREAM_LOCAL_ADDRESS%"
            upstream_host: "%UPSTREAM_HOST%"
            bytes_received: "%BYTES_RECEIVED%"
            protocol: "%PROTOCOL%"
    filter_chains:
    - filter_chain_match: { destination_port: 1 }
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: never
          cluster: backend
  clusters:
  - name: streamer
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: streamer
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: {{streamer_port}} } } } }] }]
  - name: slow
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: slow
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: {{slow_port}} } } } }] }]
  - name: closer
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: closer
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: {{closer_port}} } } } }] }]
  - name: trailers
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    load_assignment:
      cluster_name: trailers
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: {{trailers_port}} } } } }] }]
  - name: empty
    type: STATIC
    connect_timeout: 1s
    load_assignment: { cluster_name: empty }
  - name: backend
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: backend
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: {{upstream_port}} } } } }] }]
  - name: dead
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: dead
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: {{dead_port}} } } } }] }]
"#;

/// The HTTP requests, in order: (label, curl method, path, extra curl arguments). Each sets
/// its own x-request-id and user-agent so both proxies log the same values.
const HTTP_TRAFFIC: &[(&str, &str, &str, &[&str])] = &[
    ("200 via upstream", "GET", "/backend/ok", &[]),
    (
        "200 over HTTP/2",
        "GET",
        "/backend/h2",
        &["--http2-prior-knowledge"],
    ),
    (
        "POST with a body",
        "POST",
        "/backend/post",
        &["--data-binary", "nine byte"],
    ),
    ("404 NR", "GET", "/nowhere", &[]),
    ("503 UF", "GET", "/dead/x", &[]),
    ("direct response", "GET", "/direct", &[]),
    ("prefix rewrite", "GET", "/rewrite/a?b=c", &[]),
    ("503 UH", "GET", "/empty", &[]),
    ("redirect", "GET", "/redirect", &[]),
    ("504 UT", "GET", "/slow", &[]),
    ("503 UC", "GET", "/reset", &[]),
    ("trailers", "GET", "/trailers", &["--http2-prior-knowledge"]),
    ("refused: escaped slash", "GET", "/backend/a%2Fb", &[]),
    (
        "refused: underscore header",
        "GET",
        "/backend/u",
        &["-H", "x_bad: 1"],
    ),
    (
        "refused: upgrade not allowed",
        "GET",
        "/backend/ws",
        &["-H", "upgrade: websocket", "-H", "connection: upgrade"],
    ),
    ("refused: HTTP/1.0", "GET", "/backend/old", &["--http1.0"]),
    // Not curl: a raw client that reads a little of a large response and closes.
    (CLIENT_LEAVES, "RAW", "/stream", &[]),
];

/// The request whose client goes away mid-response (Envoy's DC flag).
const CLIENT_LEAVES: &str = "client leaves mid-response";

/// Fields that vary on one line only: how much was sent before the client left.
const VARYING_ON: &[(&str, &str)] = &[
    (CLIENT_LEAVES, "bytes_sent"),
    (CLIENT_LEAVES, "upstream_service_time"),
];

const TCP_TRAFFIC: &[&str] = &["tcp to the upstream", "tcp to a dead upstream"];

/// Each log file and the labels of its lines, in order.
fn expected_lines() -> Vec<(&'static str, Vec<&'static str>)> {
    let http: Vec<&str> = HTTP_TRAFFIC.iter().map(|t| t.0).collect();
    let tcp: Vec<&str> = TCP_TRAFFIC.to_vec();
    vec![
        ("http_default.log", http.clone()),
        ("http_istio.log", http.clone()),
        ("http_json.log", http.clone()),
        ("http_omit.log", http),
        ("http_filtered.log", vec!["404 NR", "503 UF"]),
        ("tcp_default.log", tcp.clone()),
        ("tcp_istio.log", tcp.clone()),
        ("tcp_json.log", tcp),
        ("listener.log", vec!["no filter chain"]),
    ]
}

struct Run {
    /// Log file name to its lines.
    logs: BTreeMap<&'static str, Vec<String>>,
    /// Port number to the name it is normalised to.
    ports: BTreeMap<u16, String>,
}

fn run(kind: Kind) -> Run {
    let upstream = Upstream::start("hello from the upstream\n");
    let ports = Ports::new(&[
        "admin_port",
        "http_port",
        "tcp_port",
        "tcp_dead_port",
        "dead_port",
        "no_chain_port",
    ])
    .with("upstream_port", upstream.port());
    let slow = Scripted::start("slow", Behaviour::Delay(Duration::from_secs(2)));
    let closer = Scripted::start("closer", Behaviour::CloseBeforeResponse);
    let trailers = Scripted::start("trailers", Behaviour::Trailers);
    let streamer = Scripted::start("streamer", Behaviour::Stream(1 << 30));
    let ports = ports
        .with("slow_port", slow.port())
        .with("closer_port", closer.port())
        .with("trailers_port", trailers.port())
        .with("streamer_port", streamer.port());
    let dir = tempfile::tempdir().expect("a log directory");
    let bootstrap = ports
        .render(BOOTSTRAP)
        .replace("LOG_DIR", &dir.path().display().to_string())
        .replace("ISTIO_FORMAT", ISTIO_FORMAT);
    let proxy = RunningProxy::start(kind, &bootstrap, &["--file-flush-interval-msec", "50"]);
    let http = ports.get("http_port");
    for (i, (_, method, path, args)) in HTTP_TRAFFIC.iter().enumerate() {
        let id = format!("request-{i}");
        let mut all = vec!["-H", "user-agent: alog-test"];
        let header = format!("x-request-id: {id}");
        all.extend(["-H", header.as_str()]);
        all.extend(args.iter());
        if *method == "RAW" {
            leave_mid_response(http, path, &id);
            continue;
        }
        let url = format!("http://127.0.0.1:{http}{path}");
        curl::request(method, &url, &all).unwrap_or_else(|f| panic!("{}", f.message));
    }
    tcp_exchange(
        ports.get("tcp_port"),
        b"GET /tcp HTTP/1.0\r\nuser-agent: t\r\n\r\n",
    );
    tcp_exchange(ports.get("tcp_dead_port"), b"nobody listens");
    tcp_exchange(ports.get("no_chain_port"), b"no chain matches");
    let logs = read_logs(dir.path(), &proxy);
    let mut names: BTreeMap<u16, String> = [
        "admin_port",
        "http_port",
        "tcp_port",
        "tcp_dead_port",
        "dead_port",
        "no_chain_port",
        "upstream_port",
        "slow_port",
        "closer_port",
        "trailers_port",
        "streamer_port",
    ]
    .iter()
    .map(|n| (ports.get(n), format!("{{{n}}}")))
    .collect();
    names.insert(0, "0".into());
    drop(proxy);
    Run { logs, ports: names }
}

/// GETs `path` over HTTP/1.1, reads the first 64 KiB of the response and closes the
/// connection while the upstream is still sending.
fn leave_mid_response(port: u16, path: &str, id: &str) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the HTTP listener");
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nuser-agent: alog-test\r\nx-request-id: {id}\r\n\r\n"
    );
    s.write_all(request.as_bytes()).expect("send the request");
    let mut got = vec![0u8; 64 * 1024];
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.read_exact(&mut got);
    drop(s);
    // Both proxies log when they notice the close; wait so the lines keep the traffic's order.
    std::thread::sleep(Duration::from_millis(300));
}

/// Sends `bytes` and reads until the proxy closes (the upstream closes after answering an
/// HTTP/1.0 request; a half-close from the client would race with its answer).
fn tcp_exchange(port: u16, bytes: &[u8]) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(bytes);
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
    // The proxy logs a TCP connection once both sides have closed: close ours, then give it a
    // moment before the next connection so lines keep the traffic's order.
    drop(s);
    std::thread::sleep(Duration::from_millis(200));
}

/// Waits until every log has its expected number of lines (flushes are timer-driven).
fn read_logs(dir: &Path, proxy: &RunningProxy) -> BTreeMap<&'static str, Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let logs: BTreeMap<&'static str, Vec<String>> = expected_lines()
            .into_iter()
            .map(|(name, _)| {
                let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
                (name, text.lines().map(str::to_string).collect())
            })
            .collect();
        let complete = expected_lines()
            .iter()
            .all(|(name, labels)| logs[name].len() >= labels.len());
        if complete || Instant::now() > deadline {
            if !complete {
                eprintln!(
                    "{:?}: logs incomplete after 10 s: {logs:#?}\n{}",
                    proxy.kind(),
                    proxy.logs_for_failure()
                );
            }
            return logs;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Splits a text line into fields: `[...]`, `"..."` or space-separated words.
fn text_fields(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut rest = line.trim_end();
    while !rest.is_empty() {
        rest = rest.trim_start();
        let (field, after) = match rest.chars().next() {
            Some(open @ ('[' | '"')) => {
                let close = if open == '[' { ']' } else { '"' };
                let end = rest[1..].find(close).map_or(rest.len(), |i| i + 2);
                (&rest[1..end.saturating_sub(1).max(1)], &rest[end..])
            }
            _ => {
                let end = rest.find(' ').unwrap_or(rest.len());
                (&rest[..end], &rest[end..])
            }
        };
        fields.push(field.to_string());
        rest = after;
    }
    fields
}

/// A line as (field, value) pairs, normalised: ports named, varying values reduced to
/// whether they are there.
fn normalise(
    log: &str,
    label: &str,
    line: &str,
    ports: &BTreeMap<u16, String>,
) -> Vec<(String, String)> {
    let json = ["json.log", "omit.log", "listener.log"];
    let pairs: Vec<(String, String)> = if json.iter().any(|j| log.ends_with(j)) {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{log}: not JSON ({e}): {line}"));
        let mut flat = Vec::new();
        flatten("", &value, &mut flat);
        flat
    } else if log.ends_with("filtered.log") {
        let parts: Vec<&str> = line.split(' ').collect();
        ["response_code", "response_flags", "request_id"]
            .iter()
            .zip(parts)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    } else {
        let names = if log.ends_with("istio.log") {
            ISTIO_FIELDS
        } else {
            DEFAULT_FIELDS
        };
        let fields = text_fields(line);
        assert_eq!(
            fields.len(),
            names.len(),
            "{log}: unexpected field count: {line}"
        );
        names
            .iter()
            .zip(fields)
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    };
    pairs
        .into_iter()
        .map(|(k, v)| {
            let varies = VARYING.contains(&k.as_str())
                || VARYING_ON.iter().any(|(l, f)| *l == label && *f == k);
            let v = if varies {
                match v.as_str() {
                    "-" | "null" => v,
                    _ => "<varies>".to_string(),
                }
            } else {
                name_ports(&v, ports)
            };
            (k, v)
        })
        .collect()
}

fn flatten(prefix: &str, value: &serde_json::Value, into: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, into);
            }
        }
        other => into.push((prefix.to_string(), other.to_string())),
    }
}

/// `127.0.0.1:<port>` with known ports named and any other (a client's or an upstream
/// connection's ephemeral port) written `{ephemeral}`; a bare known port is named too.
fn name_ports(value: &str, ports: &BTreeMap<u16, String>) -> String {
    let name = |p: &str| -> String {
        match p.parse::<u16>().ok().and_then(|n| ports.get(&n)) {
            Some(n) => n.clone(),
            None => "{ephemeral}".to_string(),
        }
    };
    if let Ok(n) = value.trim_matches('"').parse::<u16>() {
        if let Some(named) = ports.get(&n).filter(|_| n > 1024) {
            return named.clone();
        }
    }
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find("127.0.0.1:") {
        let after = &rest[i + 10..];
        let digits = after
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(after.len());
        out.push_str(&rest[..i + 10]);
        out.push_str(&name(&after[..digits]));
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

#[test]
fn access_logs_match_envoy_field_by_field() {
    let Some(_) = envoy_or_skip("access_logs_match_envoy_field_by_field") else {
        return;
    };
    let envoy = run(Kind::Envoy);
    let outrigger = run(Kind::Outrigger);
    let mut unexpected = Vec::new();
    let mut seen_known = vec![false; KNOWN.len()];
    let mut compared = 0;
    for (log, labels) in expected_lines() {
        let (e, o) = (&envoy.logs[log], &outrigger.logs[log]);
        if e.len() != labels.len() || o.len() != labels.len() {
            unexpected.push(format!(
                "{log}: expected {} lines; Envoy wrote {}, Outrigger {}\n  envoy: {e:#?}\n  outrigger: {o:#?}",
                labels.len(),
                e.len(),
                o.len()
            ));
            continue;
        }
        for ((label, e), o) in labels.iter().zip(e).zip(o) {
            let e = normalise(log, label, e, &envoy.ports);
            let o = normalise(log, label, o, &outrigger.ports);
            let e_map: BTreeMap<_, _> = e.iter().cloned().collect();
            let o_map: BTreeMap<_, _> = o.iter().cloned().collect();
            let keys: std::collections::BTreeSet<_> = e_map.keys().chain(o_map.keys()).collect();
            for key in keys {
                compared += 1;
                let (ev, ov) = (e_map.get(key), o_map.get(key));
                if ev == ov {
                    continue;
                }
                let known = KNOWN
                    .iter()
                    .position(|k| k.log == log && k.line == *label && k.field == key);
                match known {
                    Some(i) => seen_known[i] = true,
                    None => unexpected.push(format!(
                        "{log} [{label}] {key}: Envoy {ev:?}, Outrigger {ov:?}"
                    )),
                }
            }
        }
    }
    eprintln!("compared {compared} fields");
    // `ALOG_DUMP=1` prints both sides' raw lines (with `--no-capture`).
    if std::env::var_os("ALOG_DUMP").is_some() {
        eprintln!("Envoy: {:#?}\nOutrigger: {:#?}", envoy.logs, outrigger.logs);
    }
    assert!(compared > 400, "too few fields compared: {compared}");
    for (k, seen) in KNOWN.iter().zip(&seen_known) {
        if !seen {
            unexpected.push(format!(
                "known difference no longer occurs (remove it from KNOWN): {} [{}] {} ({})",
                k.log, k.line, k.field, k.reason
            ));
        }
    }
    assert!(
        unexpected.is_empty(),
        "access logs differ from Envoy's:\n{}",
        unexpected.join("\n")
    );
}
