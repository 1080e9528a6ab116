//! Istio's TCP metrics between two Outrigger sidecars: a client sidecar (outbound `tcp_proxy`
//! with Istio's TCP `istio.stats` filter) in front of a server sidecar (inbound, mutual TLS)
//! in front of a TCP echo app. Both proxies' `/stats/prometheus` must show the four
//! `istio_tcp_*` counters with Istio's TCP label set (no response code labels,
//! `request_protocol="tcp"`) and the values its golden files give for a connection without
//! the TCP metadata exchange (istio/proxy `testdata/metric/tcp_server_connection_open_without_mx.yaml.tmpl`,
//! `tcp_client_sent_bytes_unknown.yaml.tmpl`): unknown peers, the server's principals from
//! the TLS connection.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use tests::pki::{Identity, Pki};
use tests::scripted::{Behaviour, Scripted};
use tests::{Kind, Ports, RunningProxy};

fn node(id: &str, workload: &str, ns: &str, app: &str) -> String {
    format!(
        "node:\n  id: \"{id}\"\n  cluster: {app}.{ns}\n  metadata:\n    WORKLOAD_NAME: {workload}\n    NAMESPACE: {ns}\n    CLUSTER_ID: Kubernetes\n    ISTIO_VERSION: 1.24.2\n    LABELS: {{ app: {app}, version: v1, service.istio.io/canonical-name: {app}, service.istio.io/canonical-revision: v1 }}\n"
    )
}

const STATS_FILTER: &str = r#"{ name: istio.stats, typed_config: { "@type": type.googleapis.com/udpa.type.v1.TypedStruct, type_url: type.googleapis.com/stats.PluginConfig, value: {} } }"#;

fn tls(pki: &Pki, me: &Identity, kind: &str, extra: &str) -> String {
    format!(
        r#"{{ name: envoy.transport_sockets.tls, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.{kind}, {extra} common_tls_context: {{ tls_certificates: [{{ certificate_chain: {{ filename: "{}" }}, private_key: {{ filename: "{}" }} }}], validation_context: {{ trusted_ca: {{ filename: "{}" }} }} }} }} }}"#,
        me.cert.display(),
        me.key.display(),
        pki.root().display()
    )
}

/// One sidecar: a listener (`direction`, on port `listen`) with the stats filter and a
/// tcp_proxy to `cluster` at port `to` (ports by name).
struct Sidecar<'a> {
    node: &'a str,
    admin: &'a str,
    direction: &'a str,
    listen: &'a str,
    cluster: &'a str,
    to: &'a str,
    /// The filter chain's `transport_socket` line, or nothing.
    chain_tls: &'a str,
    /// More cluster fields (metadata, transport socket), or nothing.
    cluster_extra: &'a str,
}

fn sidecar(s: Sidecar<'_>) -> String {
    let Sidecar {
        node,
        admin,
        direction,
        listen,
        cluster,
        to,
        chain_tls,
        cluster_extra,
    } = s;
    format!(
        r#"{node}admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{{{{admin}}}}} }} }} }}
static_resources:
  listeners:
  - name: {direction}
    traffic_direction: {direction}
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{{{{listen}}}}} }} }}
    filter_chains:
    - filters:
      - {STATS_FILTER}
      - {{ name: envoy.filters.network.tcp_proxy, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: tcp, cluster: "{cluster}" }} }}
{chain_tls}
  clusters:
  - name: "{cluster}"
    type: STATIC
    connect_timeout: 1s
{cluster_extra}
    load_assignment:
      cluster_name: "{cluster}"
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{{{{to}}}}} }} }} }} }}] }}]
"#
    )
}

/// The `family` series of a Prometheus body: labels (as a map) → value.
fn series(body: &str, family: &str) -> Vec<(BTreeMap<String, String>, u64)> {
    body.lines()
        .filter_map(|l| l.strip_prefix(&format!("{family}{{")))
        .map(|rest| {
            let (labels, value) = rest.rsplit_once("} ").expect("a sample");
            let mut map = BTreeMap::new();
            for pair in labels.split("\",") {
                let (k, v) = pair.split_once("=\"").expect("a label");
                map.insert(k.to_string(), v.trim_end_matches('"').to_string());
            }
            (map, value.parse().expect("a count"))
        })
        .collect()
}

#[test]
fn tcp_connections_are_reported_with_istios_tcp_labels() {
    // Reads until the client half-closes, then answers `got 5 bytes\n` (12 bytes).
    let app = Scripted::start("app", Behaviour::TcpHalfClose);
    let pki = Pki::new();
    let (client_id, server_id) = (pki.identity("client"), pki.identity("server"));
    let ports =
        Ports::new(&["client", "server", "client_admin", "server_admin"]).with("app", app.port());
    let outbound = "outbound|9000||echo.back.svc.cluster.local";
    let client_yaml = sidecar(Sidecar {
        node: &node(
            "sidecar~10.0.0.1~client-v1-abcde.front~front.svc.cluster.local",
            "client-v1",
            "front",
            "client",
        ),
        admin: "client_admin",
        direction: "OUTBOUND",
        listen: "client",
        cluster: outbound,
        to: "server",
        chain_tls: "",
        cluster_extra: &format!(
            "    metadata: {{ filter_metadata: {{ istio: {{ services: [{{ host: echo.back.svc.cluster.local, name: echo, namespace: back }}] }} }} }}\n    transport_socket: {}",
            tls(&pki, &client_id, "UpstreamTlsContext", "")
        ),
    });
    let server_yaml = sidecar(Sidecar {
        node: &node(
            "sidecar~10.0.0.2~echo-v1-abcde.back~back.svc.cluster.local",
            "echo-v1",
            "back",
            "echo",
        ),
        admin: "server_admin",
        direction: "INBOUND",
        listen: "server",
        cluster: "inbound|9000||",
        to: "app",
        chain_tls: &format!(
            "      transport_socket: {}",
            tls(
                &pki,
                &server_id,
                "DownstreamTlsContext",
                "require_client_certificate: true,"
            )
        ),
        cluster_extra: "",
    });
    let server = RunningProxy::start(Kind::Outrigger, &ports.render(&server_yaml), &[]);
    let client = RunningProxy::start(Kind::Outrigger, &ports.render(&client_yaml), &[]);

    let mut conn = std::net::TcpStream::connect(("127.0.0.1", ports.get("client")))
        .expect("connect to the client sidecar");
    conn.write_all(b"ping!").expect("write");
    conn.shutdown(std::net::Shutdown::Write)
        .expect("half-close");
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    assert_eq!(answer, "got 5 bytes\n", "{}", server.logs_for_failure());
    drop(conn);
    std::thread::sleep(std::time::Duration::from_millis(300));

    let keys = [
        "reporter",
        "source_workload",
        "source_canonical_revision",
        "source_principal",
        "destination_workload",
        "destination_principal",
        "destination_service",
        "destination_service_name",
        "request_protocol",
        "response_flags",
        "connection_security_policy",
    ];
    let pick = |m: &BTreeMap<String, String>| -> Vec<String> {
        keys.iter().map(|k| format!("{k}={}", m[*k])).collect()
    };
    let server_body = server.get("/stats/prometheus").body;
    let client_body = client.get("/stats/prometheus").body;
    for (body, who) in [(&server_body, "server"), (&client_body, "client")] {
        for family in [
            "istio_tcp_connections_opened_total",
            "istio_tcp_connections_closed_total",
        ] {
            let s = series(body, family);
            assert_eq!(s.len(), 1, "{who} {family}: {body}");
            assert_eq!(s[0].1, 1, "{who} {family}");
            assert!(
                !s[0].0.contains_key("response_code"),
                "{who}: TCP has no response code"
            );
            assert!(!s[0].0.contains_key("grpc_response_status"));
            assert_eq!(s[0].0.len(), 23, "{who}: Istio's TCP label set");
        }
        assert!(body.contains("# TYPE istio_tcp_sent_bytes_total counter\n"));
    }
    let server_series = series(&server_body, "istio_tcp_connections_opened_total");
    assert_eq!(
        pick(&server_series[0].0),
        [
            "reporter=destination".to_string(),
            "source_workload=unknown".into(),
            "source_canonical_revision=latest".into(),
            format!("source_principal={}", client_id.uri),
            "destination_workload=echo-v1".into(),
            format!("destination_principal={}", server_id.uri),
            "destination_service=echo".into(),
            "destination_service_name=echo".into(),
            "request_protocol=tcp".into(),
            "response_flags=-".into(),
            "connection_security_policy=mutual_tls".into(),
        ]
    );
    let client_series = series(&client_body, "istio_tcp_connections_opened_total");
    assert_eq!(
        pick(&client_series[0].0),
        [
            "reporter=source",
            "source_workload=client-v1",
            "source_canonical_revision=v1",
            &format!("source_principal={}", client_id.uri),
            "destination_workload=unknown",
            &format!("destination_principal={}", server_id.uri),
            "destination_service=echo.back.svc.cluster.local",
            "destination_service_name=echo",
            "request_protocol=tcp",
            "response_flags=-",
            "connection_security_policy=unknown",
        ]
    );
    // Received: the request's 5 bytes; sent: the response's 12 (Istio's directions).
    for body in [&server_body, &client_body] {
        assert_eq!(series(body, "istio_tcp_received_bytes_total")[0].1, 5);
        assert_eq!(series(body, "istio_tcp_sent_bytes_total")[0].1, 12);
    }
}

/// `tcp_reporting_duration`: a connection that stays open has its bytes reported every
/// period (Istio's code default is 5 s; 0.5 s here), and the close adds only what came after
/// the last report.
#[test]
fn a_long_connection_reports_its_bytes_every_tcp_reporting_duration() {
    let app = Scripted::start("app", Behaviour::TcpEcho);
    let ports = Ports::new(&["listen", "admin"]).with("app", app.port());
    let yaml = sidecar(Sidecar {
        node: &node(
            "sidecar~10.0.0.1~client-v1-abcde.front~front.svc.cluster.local",
            "client-v1",
            "front",
            "client",
        ),
        admin: "admin",
        direction: "OUTBOUND",
        listen: "listen",
        cluster: "outbound|9000||echo.back.svc.cluster.local",
        to: "app",
        chain_tls: "",
        cluster_extra: "",
    })
    .replace(
        "type_url: type.googleapis.com/stats.PluginConfig, value: {}",
        "type_url: type.googleapis.com/stats.PluginConfig, value: { tcp_reporting_duration: 0.5s }",
    );
    let proxy = RunningProxy::start(Kind::Outrigger, &ports.render(&yaml), &[]);
    let total = |family: &str| -> u64 {
        series(&proxy.get("/stats/prometheus").body, family)
            .iter()
            .map(|(_, v)| v)
            .sum()
    };
    let wait_for = |family: &str, want: u64| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while total(family) != want {
            assert!(
                std::time::Instant::now() < deadline,
                "{family} stayed at {} (want {want})",
                total(family)
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    let mut conn =
        std::net::TcpStream::connect(("127.0.0.1", ports.get("listen"))).expect("connect");
    let mut echo = [0u8; 5];
    conn.write_all(b"hello").expect("write");
    conn.read_exact(&mut echo).expect("echo");
    // Still open: the periodic report carries the bytes so far.
    wait_for("istio_tcp_received_bytes_total", 5);
    wait_for("istio_tcp_sent_bytes_total", 5);
    assert_eq!(total("istio_tcp_connections_closed_total"), 0);
    let mut echo = [0u8; 3];
    conn.write_all(b"abc").expect("write");
    conn.read_exact(&mut echo).expect("echo");
    wait_for("istio_tcp_received_bytes_total", 8);
    drop(conn);
    wait_for("istio_tcp_connections_closed_total", 1);
    assert_eq!(total("istio_tcp_received_bytes_total"), 8);
    assert_eq!(total("istio_tcp_sent_bytes_total"), 8);
}
