//! Differential test of the `http_inspector` listener filter on Istio's shape of a sniffed
//! port: tls_inspector then http_inspector, a plaintext chain for `application_protocols
//! [http/1.1, h2c]` (an HTTP connection manager answering `http-chain`), a plaintext chain
//! without ALPN (tcp_proxy to an echo) and a TLS chain (tcp_proxy to the same echo). Each step
//! is a real client — curl over HTTP/1.1 and h2c prior knowledge, raw HTTP/1.0, a request line
//! split over writes, non-HTTP bytes, a TLS ClientHello, a silent client past the listener
//! filter timeout, a client that gives up half-way — and records where the connection landed
//! and Envoy's `http_inspector.*` counters after it.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/listeners/listener_filters/http_inspector

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use tests::curl;
use tests::differential::{check, shutdown_write, summarise, Config, Known, Scenario, Side};
use tests::scripted::Behaviour;

const DOC: &str = "https://www.envoyproxy.io/docs/envoy/latest/configuration/listeners/listener_filters/http_inspector";

const KNOWN: &[Known] = &[];

const BOOTSTRAP: &str = r#"
admin:
  address:
    socket_address: { address: 127.0.0.1, port_value: {{admin_port}} }
static_resources:
  listeners:
  - name: sniffed
    address:
      socket_address: { address: 127.0.0.1, port_value: {{listener_port}} }
    listener_filters_timeout: 1s
    continue_on_listener_filters_timeout: true
    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector
    - name: envoy.filters.listener.http_inspector
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector
    filter_chains:
    - name: http
      filter_chain_match: { transport_protocol: raw_buffer, application_protocols: [http/1.1, h2c] }
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: sniffed_http
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: / }
                direct_response: { status: 200, body: { inline_string: "http-chain\n" } }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
    - name: tcp
      filter_chain_match: { transport_protocol: raw_buffer }
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: sniffed_tcp
          cluster: backend
    - name: tls
      filter_chain_match: { transport_protocol: tls }
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: sniffed_tls
          cluster: backend
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 5s
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: {{upstream_a}} } } }
"#;

/// The inspector's counters, as `/stats` shows them.
fn inspector_stats(side: &Side) -> String {
    let body = side.proxy.get("/stats").body;
    let mut lines: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("http_inspector."))
        .collect();
    lines.sort_unstable();
    lines.iter().map(|l| format!("    {l}\n")).collect()
}

/// Writes `parts` (pausing between them), half-closes if asked, and reads until the proxy
/// closes: an HTTP chain answers `http-chain`, the TCP and TLS chains echo. The pause also
/// comes after the last part, before the half-close: Envoy closes a client that shuts its side
/// while the listener filters still look, even one whose bytes would have let them decide, and
/// whether the half-close is seen that early is a race.
fn exchange(side: &Side, parts: &[&[u8]], pause: Duration, half_close: bool) -> String {
    let Ok(mut stream) = TcpStream::connect(side.addr("listener_port")) else {
        return "  cannot connect\n".into();
    };
    for part in parts {
        if stream.write_all(part).is_err() {
            break;
        }
        std::thread::sleep(pause);
    }
    if half_close {
        shutdown_write(&stream);
    }
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match stream.read(&mut buf) {
            Ok(0) => break "closed",
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break "reset",
            Err(_) => break "still open",
        }
    };
    // Only where the connection landed is compared, not how each HTTP codec words its reply.
    let landed = if answer.starts_with(b"HTTP/") {
        let text = String::from_utf8_lossy(&answer);
        let status = text.lines().next().unwrap_or_default().to_string();
        let chain = if text.contains("http-chain") {
            "http chain"
        } else {
            "http, other"
        };
        format!("{chain}: {status:?}")
    } else if answer.len() >= 9 && answer[3] == 0x4 {
        "http chain: an HTTP/2 SETTINGS frame".to_string()
    } else {
        format!("bytes {}", summarise(&answer, 120))
    };
    format!("  {landed}; {closed}\n{}", inspector_stats(side))
}

fn http11_with_curl(side: &Side) -> String {
    curl_step(side, &["--http1.1"])
}

fn h2c_prior_knowledge_with_curl(side: &Side) -> String {
    curl_step(side, &["--http2-prior-knowledge"])
}

fn curl_step(side: &Side, args: &[&str]) -> String {
    let seen = match curl::request("GET", &side.url("/"), args) {
        Ok(r) => format!("  status {} body {:?}\n", r.status, r.body),
        Err(f) => format!("  no response: curl exit {:?}\n", f.exit_code),
    };
    seen + &inspector_stats(side)
}

/// Long enough for the listener filters to have decided before the client half-closes.
const SETTLE: Duration = Duration::from_millis(300);

/// HTTP/1.0 is found as `http/1.0`, which the `[http/1.1, h2c]` chain does not take (Istio
/// adds it only with PILOT_HTTP10): the connection goes to the TCP chain.
fn http10_goes_to_the_tcp_chain(side: &Side) -> String {
    exchange(side, &[b"GET / HTTP/1.0\r\n\r\n"], SETTLE, true)
}

/// A request line that arrives in pieces is judged once its line ends.
fn request_line_over_several_writes(side: &Side) -> String {
    let pause = Duration::from_millis(150);
    exchange(
        side,
        &[
            b"GE",
            b"T / HT",
            b"TP/1.1\r",
            b"\nhost: a\r\nconnection: close\r\n\r\n",
        ],
        pause,
        false,
    )
}

fn h2c_preface_over_two_writes(side: &Side) -> String {
    // A preface and nothing after it: the HTTP chain answers with its SETTINGS.
    exchange(
        side,
        &[b"PRI * HTTP/2.0\r\n", b"\r\nSM\r\n\r\n"],
        Duration::from_millis(150),
        true,
    )
}

fn not_http_bytes(side: &Side) -> String {
    exchange(side, &[b"SSH-2.0-OpenSSH_9.6\r\n"], SETTLE, true)
}

fn malformed_request_line(side: &Side) -> String {
    exchange(side, &[b"GET / HTTP/1.10\r\n\r\n"], SETTLE, true)
}

/// A TLS ClientHello: the TLS chain takes it and the HTTP inspector counts nothing.
fn tls_is_left_alone(side: &Side) -> String {
    exchange(side, &[&client_hello()], SETTLE, true)
}

/// A client that says nothing until the 1 s listener filter timeout has passed: the
/// connection continues to the TCP chain (`continue_on_listener_filters_timeout`) uncounted.
fn silent_client_until_the_timeout(side: &Side) -> String {
    let Ok(mut stream) = TcpStream::connect(side.addr("listener_port")) else {
        return "  cannot connect\n".into();
    };
    std::thread::sleep(Duration::from_millis(1500));
    let _ = stream.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n");
    shutdown_write(&stream);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    format!(
        "  got {}\n{}",
        summarise(&answer, 120),
        inspector_stats(side)
    )
}

/// Part of a request line, then the client shuts its side: closed, nothing counted, nothing
/// forwarded.
fn client_gives_up_half_way(side: &Side) -> String {
    exchange(side, &[b"GET / HT"], SETTLE, true)
}

/// A minimal TLS 1.2 ClientHello (no extensions), without a newline byte in it.
fn client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x02, 0xc0, 0x2f]); // one cipher suite
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let mut handshake = vec![0x01, 0x00];
    handshake.extend_from_slice(&(body.len() as u16).to_be_bytes());
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

/// The bootstrap with `filter_disabled` on the HTTP inspector.
/// https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/listener/v3/listener_components.proto#envoy-v3-api-field-config-listener-v3-listenerfilter-filter-disabled
fn with_http_inspector_disabled(predicate: &str) -> String {
    let inspector = "\"@type\": type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector\n";
    assert!(BOOTSTRAP.contains(inspector));
    BOOTSTRAP.replacen(
        inspector,
        &format!("{inspector}      filter_disabled: {predicate}\n"),
        1,
    )
}

fn scenario(name: &'static str, step: fn(&Side) -> String) -> Scenario {
    scenario_on(name, BOOTSTRAP.to_string(), step)
}

fn scenario_on(name: &'static str, bootstrap: String, step: fn(&Side) -> String) -> Scenario {
    Scenario {
        name,
        doc: DOC,
        config: Config::Full(bootstrap),
        upstream: Behaviour::TcpEcho,
        steps: Vec::new(),
    }
    .custom(step)
}

#[test]
fn http_inspector_sorts_connections_as_envoy_does() {
    let scenarios = vec![
        // One scenario runs every step on one proxy, so the counters add up across steps.
        scenario("http_inspector_sorts_connections", http11_with_curl)
            .custom(h2c_prior_knowledge_with_curl)
            .custom(http10_goes_to_the_tcp_chain)
            .custom(request_line_over_several_writes)
            .custom(h2c_preface_over_two_writes)
            .custom(not_http_bytes)
            .custom(malformed_request_line)
            .custom(tls_is_left_alone)
            .custom(client_gives_up_half_way),
        scenario(
            "http_inspector_timeout_continues",
            silent_client_until_the_timeout,
        ),
        // Istio disables its inspectors on the ports it knows: a disabled inspector leaves an
        // HTTP/1.1 connection without ALPN, so it lands on the TCP chain.
        scenario_on(
            "http_inspector_disabled_by_port",
            with_http_inspector_disabled(
                "{ or_match: { rules: [ { destination_port_range: { start: 1, end: 2 } }, { destination_port_range: { start: 1024, end: 65535 } } ] } }",
            ),
            http11_with_curl,
        ),
        // A predicate that does not match leaves the inspector on.
        scenario_on(
            "http_inspector_not_disabled",
            with_http_inspector_disabled(
                "{ and_match: { rules: [ { any_match: true }, { not_match: { any_match: true } } ] } }",
            ),
            http11_with_curl,
        ),
    ];
    check(
        "http_inspector_sorts_connections_as_envoy_does",
        &scenarios,
        KNOWN,
    );
}
