//! What the access log test sends and expects: the formats, the field names of each, the
//! bootstrap, the traffic, and the differences from Envoy that are known.

/// Istio's default text format (meshConfig `accessLogFormat` when empty; `EnvoyTextLogFormat`
/// in istio/istio `pilot/pkg/model/telemetry_logging.go`).
pub const ISTIO_FORMAT: &str = r#"[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"#;

/// Field names of Istio's format, in order (for the field-by-field comparison).
pub const ISTIO_FIELDS: &[&str] = &[
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
pub const DEFAULT_FIELDS: &[&str] = &[
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
pub const VARYING: &[&str] = &[
    "start_time",
    "duration",
    "upstream_service_time",
    "request_duration",
    "response_duration",
    "connection_id",
];

/// A difference Outrigger documents: the log file, the line's label and the field.
pub struct Known {
    pub log: &'static str,
    pub line: &'static str,
    pub field: &'static str,
    pub reason: &'static str,
}

pub const UPSTREAM_LOCAL: &str = "the local address of an upstream connection is known only from a response that came on it (HTTP/1.1 pool); a timeout or a close before the response leaves it unknown (open)";

pub const REFUSED_BEFORE_ROUTING: &str = "Outrigger refuses an upgrade it does not allow before routing; Envoy routes first, so it logs the route and cluster (open)";
pub const ESCAPED_PATH: &str = "Envoy logs a path it refused for an escaped slash with the slash unescaped; Outrigger logs it as received (open)";

pub const KNOWN: &[Known] = &[
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

pub const BOOTSTRAP: &str = r#"
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
pub const HTTP_TRAFFIC: &[(&str, &str, &str, &[&str])] = &[
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
pub const CLIENT_LEAVES: &str = "client leaves mid-response";

/// Fields that vary on one line only: how much was sent before the client left.
pub const VARYING_ON: &[(&str, &str)] = &[
    (CLIENT_LEAVES, "bytes_sent"),
    (CLIENT_LEAVES, "upstream_service_time"),
];

pub const TCP_TRAFFIC: &[&str] = &["tcp to the upstream", "tcp to a dead upstream"];

/// Each log file and the labels of its lines, in order.
pub fn expected_lines() -> Vec<(&'static str, Vec<&'static str>)> {
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
