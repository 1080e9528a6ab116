//! Differential traffic tests for tcp_proxy: bytes both ways, half-close (the client shuts
//! its write side, the server still answers), the idle timeout, and an unreachable upstream.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tests::differential::{
    check, raw_exchange, shutdown_write, summarise, Config, Known, Scenario, Side,
};
use tests::scripted::Behaviour;

const TCP: &str = "https://www.envoyproxy.io/docs/envoy/latest/configuration/listeners/network_filters/tcp_proxy_filter";
const TCP_API: &str = "https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto";

/// Differences Outrigger documents (acknowledged fields); none here.
const KNOWN: &[Known] = &[];

/// tcp_proxy on `{{listener_port}}` to `backend` (upstream `a`), `idle_timeout` from the
/// scenario, and on `{{tcp_port}}` to `dead`.
fn bootstrap(idle_timeout: &str) -> String {
    format!(
        r#"
admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {{{{admin_port}}}} }}
static_resources:
  listeners:
  - name: tcp_listener
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {{{{listener_port}}}} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: traffic_tcp
          cluster: backend
          idle_timeout: {idle_timeout}
  - name: dead_listener
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {{{{tcp_port}}}} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: traffic_dead
          cluster: dead
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 5s
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{{{upstream_a}}}} }} }} }}
  - name: dead
    type: STATIC
    connect_timeout: 5s
    load_assignment:
      cluster_name: dead
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{{{dead_port}}}} }} }} }}
"#
    )
}

fn tcp(name: &'static str, doc: &'static str, idle: &str, upstream: Behaviour) -> Scenario {
    Scenario {
        name,
        doc,
        config: Config::Full(bootstrap(idle)),
        upstream,
        steps: Vec::new(),
    }
}

/// Sends 256 KiB, half-closes, reads everything back until the proxy closes.
fn echo_both_ways(side: &Side) -> String {
    let payload: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 251) as u8).collect();
    let Ok(mut stream) = TcpStream::connect(side.addr("listener_port")) else {
        return "  cannot connect\n".into();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let writer = {
        let mut stream = stream.try_clone().expect("clone the stream");
        let payload = payload.clone();
        std::thread::spawn(move || {
            let ok = stream.write_all(&payload).is_ok();
            shutdown_write(&stream);
            ok
        })
    };
    let mut echoed = Vec::new();
    let read = stream.read_to_end(&mut echoed);
    let wrote = writer.join().unwrap_or(false);
    format!(
        "  wrote all: {wrote}; read ended ok: {}; echoed {} (same: {})\n",
        read.is_ok(),
        summarise(&echoed, 0),
        echoed == payload
    )
}

/// The client shuts its write side; the server answers after seeing EOF.
fn half_close(side: &Side) -> String {
    let (answer, closed) = raw_exchange_half_closed(side, b"twelve bytes");
    format!("  answer {}; closed: {closed}\n", summarise(&answer, 100))
}

fn raw_exchange_half_closed(side: &Side, bytes: &[u8]) -> (Vec<u8>, bool) {
    let Ok(mut stream) = TcpStream::connect(side.addr("listener_port")) else {
        return (Vec::new(), true);
    };
    let _ = stream.write_all(bytes);
    shutdown_write(&stream);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut answer = Vec::new();
    let closed = stream.read_to_end(&mut answer).is_ok();
    (answer, closed)
}

/// An idle connection is closed by the proxy after its idle timeout (0.5 s), well before the
/// 5 s this waits.
fn idle_timeout(side: &Side) -> String {
    let started = Instant::now();
    let (answer, closed) = raw_exchange(side.addr("listener_port"), b"", Duration::from_secs(5));
    let elapsed = started.elapsed();
    format!(
        "  read {}; closed: {closed}; not before the timeout: {}\n",
        summarise(&answer, 100),
        elapsed >= Duration::from_millis(400)
    )
}

fn unreachable_upstream(side: &Side) -> String {
    let (answer, closed) = raw_exchange(side.addr("tcp_port"), b"hello", Duration::from_secs(5));
    format!("  read {}; closed: {closed}\n", summarise(&answer, 100))
}

fn scenarios() -> Vec<Scenario> {
    vec![
        tcp("tcp_bytes_both_ways", TCP, "10s", Behaviour::TcpEcho).custom(echo_both_ways),
        tcp("tcp_half_close", TCP, "10s", Behaviour::TcpHalfClose).custom(half_close),
        tcp("tcp_idle_timeout", TCP_API, "0.5s", Behaviour::TcpEcho).custom(idle_timeout),
        tcp("tcp_unreachable_upstream", TCP, "10s", Behaviour::TcpEcho)
            .custom(unreachable_upstream),
    ]
}

#[test]
fn tcp_proxy_matches_envoy() {
    check("tcp_proxy_matches_envoy", &scenarios(), KNOWN);
}
