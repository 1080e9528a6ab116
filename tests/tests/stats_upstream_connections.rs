//! Differential scenarios for how upstream connections end, in the cluster stats Envoy keeps
//! for it: who closed the connection (`upstream_cx_destroy_local`/`_remote`), whether a request
//! was on it then (`..._with_active_rq`), the upstream announcing its close
//! (`upstream_cx_close_notify`) and stream resets either way (`upstream_rq_rx_reset`,
//! `upstream_rq_tx_reset`). Each scenario reads the stats of its clusters after its traffic and
//! compares them with Envoy's.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/upstream/cluster_manager/cluster_stats

use std::time::Duration;
use tests::differential::{check, Config, Known, Scenario, Side, CLUSTERS};
use tests::scripted::Behaviour;

const STATS: &str =
    "https://www.envoyproxy.io/docs/envoy/latest/configuration/upstream/cluster_manager/cluster_stats";
const PROTOCOL: &str = "https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/protocol.proto#envoy-v3-api-msg-config-core-v3-httpprotocoloptions";

const KNOWN: &[Known] = &[];

/// The standard clusters, and two HTTP/1.1 ones to upstream `b` whose connections Outrigger
/// closes itself: `idle` after 0.3 s without a request, `capped` after one request.
const BOOTSTRAP: &str = r#"
admin:
  address:
    socket_address: { address: 127.0.0.1, port_value: {{admin_port}} }
static_resources:
  listeners:
  - name: http_listener
    address:
      socket_address: { address: 127.0.0.1, port_value: {{listener_port}} }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: traffic
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/slow" }
                route: { cluster: backend, timeout: 0.3s }
              - match: { prefix: "/h2slow" }
                route: { cluster: backend_h2, timeout: 0.3s }
              - match: { prefix: "/h2" }
                route: { cluster: backend_h2 }
              - match: { prefix: "/idle" }
                route: { cluster: idle }
              - match: { prefix: "/capped" }
                route: { cluster: capped }
              - match: { prefix: "/" }
                route: { cluster: backend }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
%CLUSTERS%
  - name: idle
    type: STATIC
    connect_timeout: 5s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        common_http_protocol_options: { idle_timeout: 0.3s }
        explicit_http_config: { http_protocol_options: {} }
    load_assignment:
      cluster_name: idle
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: {{upstream_b}} } } }
  - name: capped
    type: STATIC
    connect_timeout: 5s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        common_http_protocol_options: { max_requests_per_connection: 1 }
        explicit_http_config: { http_protocol_options: {} }
    load_assignment:
      cluster_name: capped
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: {{upstream_b}} } } }
"#;

fn bootstrap() -> Config {
    let clusters: String = CLUSTERS
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("  {l}\n"))
        .collect();
    Config::Full(BOOTSTRAP.replace("%CLUSTERS%\n", &clusters))
}

fn scenario(name: &'static str, doc: &'static str, upstream: Behaviour) -> Scenario {
    let mut s = Scenario::http(name, doc, "");
    s.config = bootstrap();
    s.upstream(upstream)
}

/// The connection-end stats of the clusters the scenarios use, once the connections have had
/// time to close (idle timeouts of 0.3 s, upstreams closing after 0.3 s).
fn connection_ends(side: &Side) -> String {
    std::thread::sleep(Duration::from_millis(900));
    let stats = side.proxy.get(
        "/stats?filter=^cluster\\.(backend|backend_h2|idle|capped)\\.upstream_(cx_destroy.*|cx_close_notify|rq_rx_reset|rq_tx_reset|cx_total)$",
    );
    stats.body.lines().map(|l| format!("  {l}\n")).collect()
}

/// A whole response without `connection: close`; the upstream then closes the idle
/// connection 0.3 s later.
const WHOLE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nfrom a\n";

fn scenarios() -> Vec<Scenario> {
    vec![
        // The upstream closes under a response it announced 20 bytes of: the peer closed,
        // with the request on the connection.
        scenario(
            "upstream_closes_mid_response",
            STATS,
            Behaviour::RawReply(b"HTTP/1.1 200 OK\r\ncontent-length: 20\r\n\r\nfirst"),
        )
        .get("/")
        .custom(connection_ends),
        // The route timeout gives the request up: Outrigger closes the HTTP/1.1 connection
        // under it (local, with an active request); an HTTP/2 stream is reset instead
        // (`upstream_rq_tx_reset`) and its connection stays.
        scenario(
            "route_timeout_abandons_the_request",
            STATS,
            Behaviour::Delay(Duration::from_secs(2)),
        )
        .get("/slow")
        .curl("/h2slow", &[])
        .custom(connection_ends),
        // An idle keep-alive connection closed by the upstream: remote, nothing on it.
        scenario(
            "upstream_closes_an_idle_connection",
            STATS,
            Behaviour::RawReplyThenClose(WHOLE, Duration::from_millis(300)),
        )
        .get("/")
        .custom(connection_ends),
        // `connection: close` from the upstream: announced, and closed by the proxy once the
        // response is whole.
        scenario(
            "upstream_announces_its_close",
            STATS,
            Behaviour::RawReplyThenClose(
                b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\nconnection: close\r\n\r\nfrom a\n",
                Duration::from_millis(300),
            ),
        )
        .get("/")
        .custom(connection_ends),
        // Connections Outrigger retires itself: by the idle timeout, and after the one
        // request `max_requests_per_connection` allows (twice).
        scenario(
            "proxy_retires_idle_and_spent_connections",
            PROTOCOL,
            Behaviour::Delay(Duration::ZERO),
        )
        .get("/idle")
        .get("/capped")
        .get("/capped")
        .custom(connection_ends),
    ]
}

#[test]
fn upstream_connection_ends_match_envoy() {
    check("upstream_connection_ends_match_envoy", &scenarios(), KNOWN);
}
