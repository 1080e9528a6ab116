//! Differential traffic tests for a stream's own timers: the connection manager's
//! `stream_idle_timeout`, `request_timeout` and `max_stream_duration`, a route's
//! `idle_timeout` and `max_stream_duration` (with gRPC's `grpc-timeout`), before the response
//! (a local reply: 408 while the request arrives, 504 once it has) and after it started (the
//! stream is reset), with the stats and access log fields Envoy gives them.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/faq/configuration/timeouts#stream-timeouts

use std::time::Duration;
use tests::differential::{access_log_path, check, one_vhost, Known, Scenario, Side};
use tests::scripted::Behaviour;

const HCM: &str = "https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto#envoy-v3-api-field-extensions-filters-network-http-connection-manager-v3-httpconnectionmanager-stream-idle-timeout";
const REQUEST: &str = "https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto#envoy-v3-api-field-extensions-filters-network-http-connection-manager-v3-httpconnectionmanager-request-timeout";
const DURATION: &str = "https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/protocol.proto#envoy-v3-api-field-config-core-v3-httpprotocoloptions-max-stream-duration";
const ROUTE: &str = "https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#envoy-v3-api-msg-config-route-v3-routeaction-maxstreamduration";

const KNOWN: &[Known] = &[];

/// The access log files' name.
const LOG: &str = "stream-timeouts";

/// Access log lines go to a file of each side's own ([`access_log_path`]).
const ACCESS_LOG: &str = r#"access_log:
- name: envoy.access_loggers.file
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
    path: {{log_path}}
    log_format: { text_format: "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n" }"#;

fn hcm(fields: &str) -> String {
    format!(
        "{fields}\n{}",
        ACCESS_LOG.replace("{{log_path}}", &access_log_path(LOG, "{{admin_port}}"))
    )
}

/// As [`hcm`], with the bytes in the log line too (an upgraded stream counts its tunnel's).
fn hcm_logging_bytes(fields: &str) -> String {
    hcm(fields).replace(
        "%RESPONSE_CODE_DETAILS%",
        "%RESPONSE_CODE_DETAILS% %BYTES_RECEIVED% %BYTES_SENT%",
    )
}

/// The stream timer stats and the access log lines so far (the file is then removed).
fn timer_stats_and_log(side: &Side) -> String {
    std::thread::sleep(Duration::from_millis(400));
    const SHOWN: &[&str] = &[
        "idle_timeout",
        "timeout",
        "max_duration_reached",
        "2xx",
        "4xx",
        "5xx",
    ];
    let stats = side.proxy.get("/stats?filter=^http.traffic.downstream_rq_");
    let mut out: String = stats
        .body
        .lines()
        .filter(|l| {
            l.split(':').next().is_some_and(|name| {
                SHOWN
                    .iter()
                    .any(|s| name == format!("http.traffic.downstream_rq_{s}"))
            })
        })
        .map(|l| format!("  {l}\n"))
        .collect();
    let path = access_log_path(LOG, side.ports.get("admin_port"));
    let log = std::fs::read_to_string(&path).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    let mut lines: Vec<&str> = log.lines().collect();
    lines.sort();
    for l in lines {
        out.push_str(&format!("  log {l}\n"));
    }
    out
}

/// What became of the upstream request and its connection after a timer ended the stream:
/// both closed, as Envoy closes them. (Envoy also counts them in
/// `upstream_cx_destroy_local_with_active_rq`, a family Outrigger does not have yet.)
fn upstream_release(side: &Side) -> String {
    std::thread::sleep(Duration::from_millis(300));
    let stats = side
        .proxy
        .get("/stats?filter=^cluster.backend.upstream_(cx_active|rq_active|cx_total|rq_total)$");
    stats.body.lines().map(|l| format!("  {l}\n")).collect()
}

/// A POST that announces 10 bytes and sends 5, then waits for the answer. The step then
/// gives the upstream a moment: Envoy resets the upstream request before it answers,
/// Outrigger right after (when the downstream body ends), and the upstream records the
/// request only when its body fails.
fn half_a_body(side: &Side) -> String {
    const HALF_A_BODY: &[u8] =
        b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabcde";
    let (response, closed) = tests::differential::raw_exchange(
        side.addr("listener_port"),
        HALF_A_BODY,
        tests::differential::RAW_READ,
    );
    std::thread::sleep(Duration::from_millis(300));
    let text = String::from_utf8_lossy(&response);
    let mut lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("date:"))
        .collect();
    lines.sort();
    format!("  {}\n  closed: {closed}\n", lines.join("\n  "))
}

const GRPC: &[&str] = &["-H", "content-type: application/grpc", "-H", "te: trailers"];

fn grpc_with_timeout(timeout: &'static str) -> Vec<String> {
    let mut args: Vec<String> = GRPC.iter().map(|s| s.to_string()).collect();
    args.extend(["-H".to_string(), format!("grpc-timeout: {timeout}")]);
    args
}

/// Upgrades to a websocket, has one exchange, then stays quiet for a second: reports whether
/// the proxy closed the idle tunnel.
fn idle_websocket(side: &Side) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(side.addr("listener_port")) else {
        return "  cannot connect\n".into();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
    let upgrade = "GET /ws HTTP/1.1\r\nHost: ws.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let _ = stream.write_all(upgrade.as_bytes());
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
        head.push(byte[0]);
    }
    let status = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    let _ = stream.write_all(b"ping");
    let mut echo = [0u8; 4];
    let echoed = stream.read_exact(&mut echo).is_ok();
    std::thread::sleep(Duration::from_secs(1));
    // Closed: end of stream or a reset; open: the read times out.
    let closed = match stream.read(&mut [0u8; 16]) {
        Ok(n) => n == 0,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    };
    format!("  {status}\n  echoed {echoed}\n  closed after a quiet second: {closed}\n")
}

/// Upgrades, has two exchanges of 16 bytes, then closes: the stream is logged with the
/// tunnel's bytes and `DC` when the tunnel ends, not when the `101` is sent.
fn websocket_exchange_then_close(side: &Side) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(side.addr("listener_port")) else {
        return "  cannot connect\n".into();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
    let upgrade = "GET /ws HTTP/1.1\r\nHost: ws.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let _ = stream.write_all(upgrade.as_bytes());
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
        head.push(byte[0]);
    }
    let mut echoed = 0;
    for _ in 0..2 {
        let _ = stream.write_all(b"hello-0123456789");
        let mut echo = [0u8; 16];
        if stream.read_exact(&mut echo).is_ok() {
            echoed += 1;
        }
    }
    drop(stream);
    format!("  echoed {echoed} of 2\n")
}

fn scenarios() -> Vec<Scenario> {
    let to_backend =
        one_vhost("- match: { prefix: / }\n  route: { cluster: backend, timeout: 0s }");
    let with_timeout = |s: Scenario, timeout: &'static str, path: &str| {
        let args = grpc_with_timeout(timeout);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        s.curl(path, &args)
    };
    vec![
        Scenario::http("idle_before_the_response_is_504", HCM, &to_backend)
            .hcm(&hcm("stream_idle_timeout: 0.4s"))
            .upstream(Behaviour::Delay(Duration::from_secs(2)))
            .get("/")
            .curl("/h2", &["--http2-prior-knowledge"])
            .curl("/grpc", GRPC)
            .custom(timer_stats_and_log),
        Scenario::http("idle_while_the_request_arrives_is_408", HCM, &to_backend)
            .hcm(&hcm("stream_idle_timeout: 0.4s"))
            .upstream(Behaviour::Echo)
            .custom(half_a_body)
            .custom(timer_stats_and_log),
        Scenario::http("idle_after_the_response_started_resets", HCM, &to_backend)
            .hcm(&hcm("stream_idle_timeout: 0.4s"))
            .upstream(Behaviour::SlowBody(Duration::from_secs(2)))
            .get("/")
            .curl("/h2", &["--http2-prior-knowledge"])
            .custom(timer_stats_and_log)
            .custom(upstream_release),
        Scenario::http("idle_websocket_tunnels_close", HCM, &to_backend)
            .hcm(&hcm_logging_bytes("stream_idle_timeout: 0.4s\nupgrade_configs: [{ upgrade_type: websocket }]"))
            .upstream(Behaviour::WebsocketEcho)
            .custom(idle_websocket)
            .custom(timer_stats_and_log),
        // https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/http/upgrades
        Scenario::http("websocket_logged_when_the_client_closes", HCM, &to_backend)
            .hcm(&hcm_logging_bytes("upgrade_configs: [{ upgrade_type: websocket }]"))
            .upstream(Behaviour::WebsocketEcho)
            .custom(websocket_exchange_then_close)
            .custom(timer_stats_and_log),
        Scenario::http("a_slow_steady_response_is_not_idle", HCM, &to_backend)
            .hcm(&hcm("stream_idle_timeout: 0.3s"))
            .upstream(Behaviour::Trickle {
                chunks: 8,
                every: Duration::from_millis(120),
            })
            .get("/")
            .curl("/h2", &["--http2-prior-knowledge"])
            .custom(timer_stats_and_log),
        Scenario::http("busy_streams_are_not_idle", HCM, &to_backend)
            .hcm(&hcm("stream_idle_timeout: 0.4s"))
            .upstream(Behaviour::Delay(Duration::from_millis(100)))
            .get("/")
            .custom(timer_stats_and_log),
        Scenario::http(
            "route_idle_timeout_replaces_the_connection_managers",
            "https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#envoy-v3-api-field-config-route-v3-routeaction-idle-timeout",
            &one_vhost(
                "- match: { prefix: /off }\n  route: { cluster: backend, timeout: 0s, idle_timeout: 0s }\n- match: { prefix: /short }\n  route: { cluster: backend, timeout: 0s, idle_timeout: 0.3s }",
            ),
        )
        .hcm(&hcm("stream_idle_timeout: 0.4s"))
        .upstream(Behaviour::Delay(Duration::from_secs(1)))
        .get("/off")
        .get("/short")
        .custom(timer_stats_and_log),
        Scenario::http("request_timeout_while_the_request_arrives_is_408", REQUEST, &to_backend)
            .hcm(&hcm("request_timeout: 0.4s"))
            .upstream(Behaviour::Echo)
            .custom(half_a_body)
            .curl("/whole", &["--data-binary", "0123456789"])
            .custom(timer_stats_and_log),
        Scenario::http("request_timeout_stops_once_the_request_is_whole", REQUEST, &to_backend)
            .hcm(&hcm("request_timeout: 0.3s"))
            .upstream(Behaviour::Delay(Duration::from_millis(800)))
            .get("/")
            .custom(timer_stats_and_log),
        Scenario::http("max_stream_duration_before_the_response_is_504", DURATION, &to_backend)
            .hcm(&hcm("common_http_protocol_options: { max_stream_duration: 0.4s }"))
            .upstream(Behaviour::Delay(Duration::from_secs(2)))
            .get("/")
            .curl("/grpc", GRPC)
            .custom(timer_stats_and_log),
        Scenario::http("max_stream_duration_after_the_response_started_resets", DURATION, &to_backend)
            .hcm(&hcm("common_http_protocol_options: { max_stream_duration: 0.4s }"))
            .upstream(Behaviour::SlowBody(Duration::from_secs(2)))
            .get("/")
            .custom(timer_stats_and_log),
        Scenario::http(
            "route_max_stream_duration_replaces_the_route_timeout",
            ROUTE,
            &one_vhost(
                "- match: { prefix: /longer }\n  route: { cluster: backend, timeout: 0.2s, max_stream_duration: { max_stream_duration: 3s } }\n- match: { prefix: /off }\n  route: { cluster: backend, max_stream_duration: { max_stream_duration: 0s } }\n- match: { prefix: /short }\n  route: { cluster: backend, timeout: 5s, max_stream_duration: { max_stream_duration: 0.3s } }",
            ),
        )
        .hcm(&hcm("common_http_protocol_options: { max_stream_duration: 0.5s }"))
        .upstream(Behaviour::Delay(Duration::from_millis(800)))
        .get("/longer")
        .get("/off")
        .get("/short")
        .custom(timer_stats_and_log),
        {
            // Istio's form: `grpc_timeout_header_max: 0s` uses the header uncapped.
            let s = Scenario::http(
                "grpc_timeout_header_bounds_the_stream",
                ROUTE,
                &one_vhost(
                    "- match: { prefix: /uncapped }\n  route: { cluster: backend, timeout: 0s, max_stream_duration: { max_stream_duration: 0s, grpc_timeout_header_max: 0s } }\n- match: { prefix: /capped }\n  route: { cluster: backend, max_stream_duration: { grpc_timeout_header_max: 0.3s } }\n- match: { prefix: /offset }\n  route: { cluster: backend, max_stream_duration: { grpc_timeout_header_max: 0s, grpc_timeout_header_offset: 0.9s } }\n- match: { prefix: /route-max }\n  route: { cluster: backend, max_stream_duration: { max_stream_duration: 3s } }\n- match: { prefix: /both }\n  route: { cluster: backend, max_stream_duration: { max_stream_duration: 3s, grpc_timeout_header_max: 2s } }",
                ),
            )
            .hcm(&hcm(""))
            .upstream(Behaviour::Delay(Duration::from_secs(1)));
            let s = with_timeout(s, "400m", "/uncapped");
            let s = with_timeout(s, "5S", "/uncapped");
            let s = s.curl("/uncapped/no-header", GRPC);
            let s = with_timeout(s, "5S", "/capped");
            let s = with_timeout(s, "1100m", "/offset");
            // The route's own duration replaces the client's header for the upstream.
            let s = with_timeout(s, "10S", "/route-max");
            let s = s.curl("/route-max/no-header", GRPC);
            let s = s.get("/route-max/not-grpc");
            let s = with_timeout(s, "10S", "/both");
            let s = s.curl("/both/no-header", GRPC);
            s.custom(timer_stats_and_log)
        },
    ]
}

#[test]
fn stream_timeouts_match_envoy() {
    check("stream_timeouts_match_envoy", &scenarios(), KNOWN);
}
