//! `--drain-strategy`: on a graceful drain (`POST /drain_listeners?graceful`), `immediate`
//! tells every connection at once (the next HTTP/1.1 response says `connection: close`), and
//! `gradual` (the default) tells each at a moment spread over `--drain-time-s`, so right after
//! the drain starts only a few have been told. Compared with Envoy.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/operations/cli#cmdoption-drain-strategy

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use tests::{envoy_or_skip, free_port, Kind, RunningProxy};

const CONNECTIONS: usize = 10;

fn bootstrap(admin: u16, port: u16) -> String {
    format!(
        r#"
admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }} }}
static_resources:
  listeners:
  - name: http
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: drain
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                direct_response: {{ status: 200, body: {{ inline_string: "ok" }} }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#
    )
}

/// Whether the response to one request on `stream` says `connection: close`.
fn says_close(stream: &mut TcpStream) -> bool {
    let _ = stream.write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n");
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    // The body is "ok": the response is whole once it ends so.
    while !response.ends_with(b"\r\n\r\nok") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&response)
        .to_ascii_lowercase()
        .contains("connection: close")
}

/// How many of the connections were told to close by their first response after a graceful
/// drain started: "all", "none" or "some".
fn told_at_once(kind: Kind, strategy: &str) -> String {
    let port = free_port();
    let proxy = RunningProxy::start(
        kind,
        &bootstrap(free_port(), port),
        &["--drain-strategy", strategy, "--drain-time-s", "30"],
    );
    let mut connections: Vec<TcpStream> = (0..CONNECTIONS)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
        .collect();
    for c in &mut connections {
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("a read timeout");
        assert!(!says_close(c), "closing before the drain");
    }
    assert_eq!(proxy.post("/drain_listeners?graceful").status, 200);
    std::thread::sleep(Duration::from_millis(200));
    let told = connections
        .iter_mut()
        .map(says_close)
        .filter(|&c| c)
        .count();
    match told {
        0 => "none".into(),
        CONNECTIONS => "all".into(),
        // Gradual: each connection's moment is uniform over 30 s, so within the first
        // moments a few at most; ten is all but impossible.
        n if n <= 3 => "a few".into(),
        n => format!("{n} of {CONNECTIONS}"),
    }
}

#[test]
fn immediate_tells_every_connection_at_once_and_gradual_spreads_them() {
    let ours = (
        told_at_once(Kind::Outrigger, "immediate"),
        told_at_once(Kind::Outrigger, "gradual"),
    );
    assert_eq!(ours.0, "all");
    assert!(matches!(ours.1.as_str(), "none" | "a few"), "{ours:?}");
    if envoy_or_skip("immediate_tells_every_connection_at_once_and_gradual_spreads_them").is_none()
    {
        return;
    }
    let envoy = (
        told_at_once(Kind::Envoy, "immediate"),
        told_at_once(Kind::Envoy, "gradual"),
    );
    assert_eq!(envoy.0, "all");
    assert!(
        matches!(envoy.1.as_str(), "none" | "a few"),
        "Envoy: {envoy:?}"
    );
}
