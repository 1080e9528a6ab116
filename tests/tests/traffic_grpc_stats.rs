//! The gRPC statistics filter against Envoy: the same bootstrap and the same calls from a real
//! gRPC client (tonic) through each proxy to a real gRPC server (unary, failing, client
//! streaming, server streaming, bidirectional with messages spanning many HTTP/2 frames), then
//! the `cluster.<name>.grpc.*` stats of both proxies compared, names and values, in `/stats`
//! and `/stats/prometheus` (histograms by their sample count: their times differ).

use std::fmt::Write as _;
use std::time::Duration;
use tests::differential::{check, Config, Known, Scenario, Side};
use tests::grpc_echo::{serve, EchoClient};

const DOC: &str =
    "https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/grpc_stats_filter";

const KNOWN: &[Known] = &[];

/// `stats_flush_interval`: Envoy shows histogram samples once they are flushed.
const BOOTSTRAP: &str = r#"
node: { id: grpc-node, cluster: grpc-cluster }
stats_flush_interval: 1s
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
          stat_prefix: grpc_traffic
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/direct.Svc/" }
                direct_response: { status: 200 }
              - match: { prefix: "/" }
                route: { cluster: grpc }
          http_filters:
          - name: envoy.filters.http.grpc_stats
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig
%GRPC_STATS%
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: grpc
    type: STATIC
    connect_timeout: 5s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    load_assignment:
      cluster_name: grpc
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: {{grpc_port}} } } }
"#;

fn scenario(name: &'static str, settings: &str) -> Scenario {
    let settings: String = settings
        .lines()
        .map(|l| format!("              {}\n", l.trim()))
        .collect();
    Scenario {
        name,
        doc: DOC,
        config: Config::Full(BOOTSTRAP.replace("%GRPC_STATS%", &settings)),
        upstream: tests::scripted::Behaviour::Reply(tests::upstream::Reply::text("unused\n")),
        steps: Vec::new(),
    }
    .custom(grpc_calls)
}

/// The calls, what the client saw of each, then both stats views.
fn grpc_calls(side: &Side) -> String {
    let grpc_port = side.ports.get("grpc_port");
    let target = format!("http://127.0.0.1:{}", side.ports.get("listener_port"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let mut out = runtime.block_on(async move {
        let mut out = String::new();
        let _server = serve(grpc_port).await.expect("the gRPC server listens");
        let mut c = EchoClient::connect(target).await.expect("connect");
        let big = "m".repeat(100_000);
        let _ = writeln!(out, "unary: {:?}", c.unary("/test.Echo/Unary", "hi").await);
        let _ = writeln!(
            out,
            "unary again: {:?}",
            c.unary("/test.Echo/Unary", "hi").await
        );
        let fail = c.unary("/test.Echo/Fail", "x").await.map_err(|s| s.code());
        let _ = writeln!(out, "fail: {fail:?}");
        let _ = writeln!(out, "other: {:?}", c.unary("/other.Svc/Ping", "").await);
        let direct = c.unary("/direct.Svc/Call", "x").await.map_err(|s| s.code());
        let _ = writeln!(out, "direct: {direct:?}");
        let collect = c.collect(vec!["a".into(), "b".into(), "c".into()]).await;
        let _ = writeln!(out, "collect: {collect:?}");
        let repeat = c.repeat(4, "r").await.map(|v| v.len());
        let _ = writeln!(out, "repeat: {repeat:?}");
        let chat = c
            .chat(vec![
                big.clone(),
                "s".into(),
                big.clone(),
                String::new(),
                big,
            ])
            .await
            .map(|v| v.iter().map(String::len).collect::<Vec<_>>());
        let _ = writeln!(out, "chat: {chat:?}");
        out
    });
    // Histograms reach Envoy's admin at its next stats flush.
    std::thread::sleep(Duration::from_millis(1600));
    let stats = side.proxy.get("/stats?filter=grpc");
    out.push_str("/stats:\n");
    for line in stats
        .body
        .lines()
        .filter(|l| l.starts_with("cluster.grpc.grpc."))
    {
        // A histogram's quantiles are times; only its presence compares.
        let line = match line.split_once(": ") {
            Some((name, _)) if name.ends_with("upstream_rq_time") => format!("{name}: <hist>"),
            _ => line.to_string(),
        };
        let _ = writeln!(out, "  {line}");
    }
    let prometheus = side.proxy.get("/stats/prometheus");
    out.push_str("/stats/prometheus:\n");
    for line in prometheus.body.lines() {
        let name = line.trim_start_matches("# TYPE ");
        if !name.starts_with("envoy_cluster_grpc") {
            continue;
        }
        if line.contains("_bucket{") || line.contains("_sum{") {
            continue;
        }
        let _ = writeln!(out, "  {line}");
    }
    out
}

fn scenarios() -> Vec<Scenario> {
    vec![
        // Neither field: an empty allowlist, every call under the cluster only.
        scenario("grpc_stats_default", "emit_filter_state: true"),
        scenario(
            "grpc_stats_allowlist",
            r#"enable_upstream_stats: true
            individual_method_stats_allowlist: { services: [ { name: test.Echo, method_names: [Unary, Chat, Fail] } ] }"#,
        ),
        scenario(
            "grpc_stats_all_methods",
            "stats_for_all_methods: true\nenable_upstream_stats: true",
        ),
        scenario(
            "grpc_stats_all_methods_dots_replaced",
            "stats_for_all_methods: true\nreplace_dots_in_grpc_service_name: true",
        ),
    ]
}

#[test]
fn grpc_stats_match_envoy() {
    check("grpc_stats_match_envoy", &scenarios(), KNOWN);
}
