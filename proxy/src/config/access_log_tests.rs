//! Access log translation: what is accepted, how filters decide, and that every refusal names
//! its field path.

use super::access_log::{Filter, LogFormat, Sink};
use super::translate_bootstrap;
use crate::bootstrap::{load, Sources};
use crate::config::listener::NetworkFilter;
use crate::format::{HeaderSource, KeptHeaders, ResponseFlags, StreamInfo};
use std::time::Duration;

fn translate(yaml: &str) -> Result<super::Config, String> {
    let sources = Sources {
        config_yaml: Some(yaml),
        ..Default::default()
    };
    let loaded = load(&sources).map_err(|e| e.to_string())?;
    translate_bootstrap(&loaded.bootstrap).map_err(|e| e.to_string())
}

/// An HCM listener with `access_log: <logs>`, a tcp_proxy listener with `tcp_logs`, and a
/// listener-level `listener_logs`.
fn bootstrap(logs: &str, tcp_logs: &str, listener_logs: &str) -> String {
    format!(
        r#"
layered_runtime:
  layers:
  - name: static
    static_layer: {{ log.sample: 100, log.min_status: 500 }}
static_resources:
  listeners:
  - name: http
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    access_log: {listener_logs}
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: s
          access_log: {logs}
          route_config: {{ virtual_hosts: [{{ name: v, domains: ["*"], routes: [{{ match: {{ prefix: "/" }}, route: {{ cluster: c }} }}] }}] }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  - name: tcp
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: tcp
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: t
          cluster: c
          access_log: {tcp_logs}
  clusters:
  - name: c
    load_assignment:
      cluster_name: c
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 1 }} }} }} }}] }}]
"#
    )
}

const FILE: &str = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog";

fn file_log(extra: &str) -> String {
    format!(
        r#"[{{ name: envoy.access_loggers.file, typed_config: {{ "@type": {FILE}, path: /dev/null {extra} }} }}]"#
    )
}

fn hcm_logs(config: &super::Config) -> &[std::sync::Arc<super::access_log::AccessLog>] {
    match config.listeners[0].filter_chains[0].filters.last() {
        Some(NetworkFilter::HttpConnectionManager(h)) => &h.access_logs,
        _ => panic!("the first listener runs an HCM"),
    }
}

#[test]
fn loggers_formats_and_defaults_translate() {
    let logs = format!(
        r#"[
        {{ name: a, typed_config: {{ "@type": {FILE}, path: /dev/stdout }} }},
        {{ name: b, typed_config: {{ "@type": {FILE}, path: /dev/null, log_format: {{ text_format_source: {{ inline_string: "%RESPONSE_CODE%\n" }}, omit_empty_values: true }} }} }},
        {{ name: c, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog, log_format: {{ json_format: {{ code: "%RESPONSE_CODE%", n: {{ d: "%DURATION%" }} }} }} }} }},
        {{ name: d, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog }} }},
        {{ name: e, typed_config: {{ "@type": {FILE}, path: /dev/null, format: "%PROTOCOL%\n" }} }}
    ]"#
    );
    let config = translate(&bootstrap(&logs, &file_log(""), &file_log(""))).expect("valid");
    let logs = hcm_logs(&config);
    assert_eq!(logs.len(), 5);
    assert_eq!(logs[0].sink, Sink::File("/dev/stdout".into()));
    assert!(matches!(
        &logs[1].format,
        LogFormat::Text {
            omit_empty: true,
            ..
        }
    ));
    assert!(matches!(logs[2].format, LogFormat::Json(_)));
    assert_eq!(logs[2].sink, Sink::Stdout);
    assert_eq!(logs[3].sink, Sink::Stderr);
    assert!(
        config.acknowledged.is_empty(),
        "access_log is acted on: {:?}",
        config.acknowledged
    );
    assert_eq!(config.listeners[0].access_logs.len(), 1);
}

#[test]
fn filters_decide_like_envoy() {
    let filter = "{ and_filter: { filters: [ \
        { status_code_filter: { comparison: { op: GE, value: { default_value: 400, runtime_key: log.min_status } } } }, \
        { or_filter: { filters: [ { response_flag_filter: { flags: [UF, NR] } }, \
            { header_filter: { header: { name: x-debug, present_match: true } } } ] } }, \
        { runtime_filter: { runtime_key: log.sample, percent_sampled: { numerator: 0 } } }, \
        { not_health_check_filter: {} }, \
        { duration_filter: { comparison: { op: LE, value: { default_value: 1000, runtime_key: unset.key } } } } ] } }";
    let logs = format!(
        r#"[{{ name: f, filter: {filter}, typed_config: {{ "@type": {FILE}, path: /dev/null }} }}]"#
    );
    let config = translate(&bootstrap(&logs, "[]", "[]")).expect("valid");
    let f = hcm_logs(&config)[0].filter.as_ref().expect("a filter");
    let info = |code: u16, flags: &str| StreamInfo {
        response_code: code,
        response_flags: ResponseFlags::named(flags).unwrap_or_default(),
        duration: Some(Duration::from_millis(5)),
        ..StreamInfo::default()
    };
    let mut debug = http::HeaderMap::new();
    debug.insert("x-debug", http::HeaderValue::from_static("1"));
    // The runtime raises the status threshold to 500 and samples 100%.
    assert!(f.allows(&info(503, "UF"), None));
    assert!(!f.allows(&info(404, "NR"), None));
    assert!(!f.allows(&info(503, ""), None));
    // The filter reads the headers the stream kept for it.
    let mut wanted = Vec::new();
    f.header_names(&mut wanted);
    let kept = KeptHeaders::keep(&debug, &wanted);
    assert!(f.allows(&info(503, ""), Some(HeaderSource::Kept(&kept))));
    let slow = StreamInfo {
        duration: Some(Duration::from_secs(2)),
        ..info(503, "UF")
    };
    assert!(!f.allows(&slow, None));
    // Sampling on the request id is stable: 0x00000000 is always in a 1% sample.
    let sampled = Filter::Runtime {
        per_million: 10_000,
        independent: false,
    };
    let mut id = http::HeaderMap::new();
    id.insert(
        "x-request-id",
        http::HeaderValue::from_static("00000000-0000-4000-8000-000000000000"),
    );
    let mut wanted = Vec::new();
    sampled.header_names(&mut wanted);
    let kept = KeptHeaders::keep(&id, &wanted);
    assert!((0..10).all(|_| sampled.allows(&info(200, ""), Some(HeaderSource::Kept(&kept)))));
}

#[test]
fn refusals_name_the_field_path() {
    let cases = [
        (
            file_log(r#", log_format: { text_format_source: { inline_string: "%NOPE%" } }"#),
            "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.access_log[0].typed_config.log_format.text_format_source: command operator %NOPE% is not supported",
        ),
        (
            file_log(r#", log_format: { json_format: { a: { b: "%UPSTREAM_SERVICE_TIME%" } } }"#),
            r#"typed_config.access_log[0].typed_config.log_format.json_format["a"]["b"]: command operator %UPSTREAM_SERVICE_TIME% is not supported"#,
        ),
        (
            format!(r#"[{{ name: f, filter: {{ grpc_status_filter: {{}} }}, typed_config: {{ "@type": {FILE}, path: /dev/null }} }}]"#),
            "typed_config.access_log[0].filter.grpc_status_filter: field not supported",
        ),
        (
            format!(r#"[{{ name: f, filter: {{ response_flag_filter: {{ flags: [UF, XX] }} }}, typed_config: {{ "@type": {FILE}, path: /dev/null }} }}]"#),
            "typed_config.access_log[0].filter.response_flag_filter.flags[1]: value must be in list",
        ),
        (
            format!(r#"[{{ name: f, filter: {{ and_filter: {{ filters: [ {{ not_health_check_filter: {{}} }} ] }} }}, typed_config: {{ "@type": {FILE}, path: /dev/null }} }}]"#),
            "typed_config.access_log[0].filter.and_filter.filters: value must contain at least 2 item(s)",
        ),
        (
            file_log(r#", log_format: { text_format: "x", formatters: [{ name: f, typed_config: { "@type": type.googleapis.com/google.protobuf.Struct } }] }"#),
            "typed_config.access_log[0].typed_config.log_format.formatters",
        ),
        (
            r#"[{ name: g, typed_config: { "@type": type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig } }]"#.to_string(),
            "typed_config.access_log[0].typed_config: didn't find a registered implementation for 'g'",
        ),
        (
            format!(r#"[{{ name: f, typed_config: {{ "@type": {FILE}, path: "" }} }}]"#),
            "typed_config.access_log[0].typed_config.path",
        ),
        (
            format!(r#"[{{ name: f, typed_config: {{ "@type": {FILE}, path: /nonexistent/dir/x.log }} }}]"#),
            "typed_config.access_log[0].typed_config.path: unable to open file '/nonexistent/dir/x.log': No such file or directory",
        ),
    ];
    for (logs, want) in cases {
        let err = translate(&bootstrap(&logs, "[]", "[]")).expect_err(want);
        assert!(err.contains(want), "{err}\n  does not contain\n{want}");
    }
    let err = translate(&bootstrap("[]", &file_log(r#", format: "%BAD%""#), "[]"))
        .expect_err("tcp_proxy too");
    assert!(
        err.contains("listeners[1].filter_chains[0].filters[0].typed_config.access_log[0].typed_config.format: command operator %BAD%"),
        "{err}"
    );
}

/// A text format can come from a file, read when the configuration loads (a format error
/// in it names the source, a missing file names the file).
#[test]
fn a_text_format_is_read_from_its_file() {
    let dir = tempfile::tempdir().expect("a directory");
    let file = dir.path().join("format.txt");
    let logs = |file: &std::path::Path| {
        file_log(&format!(
            ", log_format: {{ text_format_source: {{ filename: {} }} }}",
            file.display()
        ))
    };
    std::fs::write(&file, "%RESPONSE_CODE%\n").expect("write");
    let config = translate(&bootstrap(&logs(&file), "[]", "[]")).expect("valid");
    assert!(matches!(
        hcm_logs(&config)[0].format,
        LogFormat::Text { .. }
    ));
    std::fs::write(&file, "%NOPE%\n").expect("write");
    let err = translate(&bootstrap(&logs(&file), "[]", "[]")).expect_err("bad operator");
    assert!(
        err.ends_with("log_format.text_format_source: command operator %NOPE% is not supported"),
        "{err}"
    );
    let missing = dir.path().join("missing.txt");
    let err = translate(&bootstrap(&logs(&missing), "[]", "[]")).expect_err("missing");
    let want = format!(
        "log_format.text_format_source.filename: file {} does not exist",
        missing.display()
    );
    assert!(err.ends_with(&want), "{err}");
}
