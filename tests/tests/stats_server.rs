//! The `server.*` stats about the process: the version override, the restart epoch, the
//! connections open across listeners, resident memory and how long initialisation took.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/observability/statistics#server

use std::net::TcpStream;
use std::time::{Duration, Instant};
use tests::{envoy_or_skip, free_port, Kind, RunningProxy};

fn bootstrap(admin: u16, listener: u16) -> String {
    format!(
        r#"
stats_server_version_override: 4242
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:
  - name: plain
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listener} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: plain
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: / }}
                direct_response: {{ status: 200 }}
"#
    )
}

fn stat(proxy: &RunningProxy, name: &str) -> String {
    let body = proxy.get(&format!("/stats?filter=^server\\.{name}$")).body;
    body.trim()
        .strip_prefix(&format!("server.{name}: "))
        .unwrap_or("-")
        .to_string()
}

/// Polls until `server.total_connections` is `want` (Envoy refreshes it on its stats flush,
/// every 5 s; Outrigger as connections come and go).
fn connections_become(proxy: &RunningProxy, want: &str, within: Duration) -> String {
    let start = Instant::now();
    loop {
        let seen = stat(proxy, "total_connections");
        if seen == want || start.elapsed() > within {
            return seen;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn observe(kind: Kind) -> Vec<String> {
    let listener = free_port();
    let proxy = RunningProxy::start(kind, &bootstrap(free_port(), listener), &[]);
    let mut seen = vec![
        format!("version {}", stat(&proxy, "version")),
        format!("parent_connections {}", stat(&proxy, "parent_connections")),
        format!("hot_restart_epoch {}", stat(&proxy, "hot_restart_epoch")),
    ];
    let a = TcpStream::connect(("127.0.0.1", listener)).expect("connect");
    let b = TcpStream::connect(("127.0.0.1", listener)).expect("connect");
    let flush = Duration::from_secs(8);
    seen.push(format!(
        "open 2: {}",
        connections_become(&proxy, "2", flush)
    ));
    drop(a);
    seen.push(format!(
        "open 1: {}",
        connections_become(&proxy, "1", flush)
    ));
    drop(b);
    seen.push(format!(
        "open 0: {}",
        connections_become(&proxy, "0", flush)
    ));
    seen
}

#[test]
fn server_stats_follow_the_process_like_envoy() {
    let want = [
        "version 4242",
        "parent_connections 0",
        "hot_restart_epoch 0",
        "open 2: 2",
        "open 1: 1",
        "open 0: 0",
    ];
    assert_eq!(observe(Kind::Outrigger), want, "Outrigger");

    // What only Outrigger's values can show at once: resident memory, and the time
    // initialisation took (Envoy's histograms reach the admin only on its stats flush).
    let proxy = RunningProxy::start(Kind::Outrigger, &bootstrap(free_port(), free_port()), &[]);
    let rss: u64 = stat(&proxy, "memory_physical_size").parse().unwrap_or(0);
    assert!(rss > 1 << 20, "resident memory {rss}");
    let init = proxy
        .get("/stats?filter=^server\\.initialization_time_ms$")
        .body;
    assert!(
        init.contains("P50"),
        "initialization_time_ms has a value: {init}"
    );
    drop(proxy);

    if envoy_or_skip("stats_server").is_none() {
        return;
    }
    assert_eq!(observe(Kind::Envoy), want, "Envoy");
}
