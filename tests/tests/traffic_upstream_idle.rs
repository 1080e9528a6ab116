//! Upstream connections are kept for the next request and closed once idle for the cluster's
//! `common_http_protocol_options.idle_timeout`: the upstream sees one connection for requests
//! in quick succession and a new one after the timeout — compared with Envoy.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/protocol.proto#envoy-v3-api-field-config-core-v3-httpprotocoloptions-idle-timeout

use std::time::Duration;
use tests::scripted::{Behaviour, Scripted};
use tests::upstream::Reply;
use tests::{curl, envoy_or_skip, Kind, Ports, RunningProxy};

const BOOTSTRAP: &str = r#"
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: {{admin}} } }
static_resources:
  listeners:
  - name: l
    address: { socket_address: { address: 127.0.0.1, port_value: {{listener}} } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: l
          route_config:
            virtual_hosts:
            - { name: all, domains: ["*"], routes: [ { match: { prefix: "/" }, route: { cluster: backend } } ] }
          http_filters:
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        common_http_protocol_options: { idle_timeout: 0.4s }
        explicit_http_config: { http_protocol_options: {} }
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: {{upstream}} } } }
"#;

/// The upstream's connection count after each request: two at once, then one after the idle
/// timeout has closed the connection; and the cluster's `upstream_cx_idle_timeout` line.
fn run(kind: Kind) -> (Vec<usize>, String) {
    let up = Scripted::start("a", Behaviour::Reply(Reply::text("from a\n")));
    let ports = Ports::new(&["admin", "listener"]).with("upstream", up.port());
    let proxy = RunningProxy::start(kind, &ports.render(BOOTSTRAP), &["--concurrency", "1"]);
    let url = format!("http://127.0.0.1:{}/", ports.get("listener"));
    let mut seen = Vec::new();
    for pause in [Duration::ZERO, Duration::ZERO, Duration::from_millis(900)] {
        std::thread::sleep(pause);
        let r = curl::get(&url);
        assert_eq!(r.status, 200, "{}", kind.name());
        seen.push(up.connections());
    }
    let idle_closed = proxy
        .get("/stats?filter=^cluster\\.backend\\.upstream_cx_idle_timeout$")
        .body
        .trim()
        .to_string();
    drop(proxy);
    (seen, idle_closed)
}

#[test]
fn idle_upstream_connections_close_after_the_idle_timeout_like_envoy() {
    let outrigger = run(Kind::Outrigger);
    assert_eq!(
        outrigger.0,
        [1, 1, 2],
        "reused, then replaced after the idle timeout"
    );
    assert_eq!(outrigger.1, "cluster.backend.upstream_cx_idle_timeout: 1");
    if envoy_or_skip("idle_upstream_connections").is_none() {
        return;
    }
    assert_eq!(run(Kind::Envoy), outrigger, "Envoy and Outrigger");
}
