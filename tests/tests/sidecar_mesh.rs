//! Two `outrigger proxy sidecar` processes as two pods of one mesh: each gets its workload
//! certificate from a fake Istio CA (the identity its token authenticates), serves it over its
//! in-process SDS socket to its own proxy, and takes listeners and clusters from its fake
//! istiod over TLS. The client's outbound hop to the server's inbound listener is mutual TLS
//! with those identities; the Istio metrics each status server (:15020) merges carry the
//! workloads and the principals on both sides; certificates rotate under load without a
//! failed request.
//! Istio: shared/reference/istio-contract.md §4 (SDS, CA), §7 (metrics), §1 (:15020).

use serde_json::json;
use std::time::{Duration, Instant};
use tests::control_plane::{ControlPlane, IstiodOptions, CLUSTER, LISTENER};
use tests::curl;
use tests::fake_ca::FakeCa;
use tests::istio::requests_total;
use tests::sidecar::{Load, Sidecar};
use tests::xds_resources::resource;
use tests::{free_port, Upstream};
use xds_proto::pb::envoy::config::cluster::v3::Cluster;
use xds_proto::pb::envoy::config::listener::v3::Listener;
use xds_proto::pb::google::protobuf::Any;

const CLIENT_ID: &str = "spiffe://cluster.local/ns/front/sa/client";
const SERVER_ID: &str = "spiffe://cluster.local/ns/back/sa/server";
const OUTBOUND: &str = "outbound|80||server.back.svc.cluster.local";

/// Istio's SDS references: the workload certificate and the root from `sds-grpc`.
const SDS: &str = r#"{ api_config_source: { api_type: GRPC, grpc_services: [{ envoy_grpc: { cluster_name: sds-grpc } }], set_node_on_first_message_only: true, transport_api_version: V3 }, initial_fetch_timeout: 0s, resource_api_version: V3 }"#;

fn common_tls() -> String {
    format!(
        r#"{{ alpn_protocols: ["istio-peer-exchange", "istio"], tls_certificate_sds_secret_configs: [{{ name: default, sds_config: {SDS} }}], combined_validation_context: {{ default_validation_context: {{}}, validation_context_sds_secret_config: {{ name: ROOTCA, sds_config: {SDS} }} }} }}"#
    )
}

fn http_filters(mx: &str, stats: &str) -> String {
    format!(
        r#"
      - name: istio.metadata_exchange
        typed_config:
          "@type": type.googleapis.com/udpa.type.v1.TypedStruct
          type_url: type.googleapis.com/io.istio.http.peer_metadata.Config
          value: {mx}
      - name: istio.stats
        typed_config:
          "@type": type.googleapis.com/udpa.type.v1.TypedStruct
          type_url: type.googleapis.com/stats.PluginConfig
          value: {stats}
      - name: envoy.filters.http.router
        typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}"#
    )
}

fn listener(
    name: &str,
    direction: &str,
    port: u16,
    cluster: &str,
    filters: &str,
    tls: &str,
) -> (String, Any) {
    resource::<Listener>(
        name,
        &format!(
            r#"
name: {name}
traffic_direction: {direction}
address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: {name}
      route_config:
        virtual_hosts:
        - name: all
          domains: ["*"]
          routes: [{{ match: {{ prefix: "/" }}, route: {{ cluster: "{cluster}", timeout: 0s }} }}]
      http_filters:{filters}
{tls}
"#
        ),
    )
}

fn cluster(name: &str, port: u16, extra: &str) -> (String, Any) {
    resource::<Cluster>(
        name,
        &format!(
            r#"
name: "{name}"
connect_timeout: 1s
type: STATIC
{extra}
load_assignment:
  cluster_name: "{name}"
  endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }} }}] }}]
"#
        ),
    )
}

struct Pod {
    _istiod: ControlPlane,
    sidecar: Sidecar,
}

/// A sidecar for workload `workload` (app `app`, namespace `ns`) with its own istiod serving
/// `resources`, authenticating with `token`.
fn pod(
    ca: &FakeCa,
    token: &str,
    ns: &str,
    workload: &str,
    app: &str,
    resources: Vec<(&str, Vec<(String, Any)>)>,
) -> Pod {
    let (cert, key) = ca.issue_for_names(&["istiod.istio-system.svc"]);
    let service = ca.service();
    let istiod = ControlPlane::start_istiod(IstiodOptions {
        tls: tests::tls_incoming::server_config(cert.as_bytes(), key.as_bytes()),
        token: Some(token.to_string()),
        add: Some(Box::new(move |routes| routes.add_service(service))),
    });
    for (type_url, list) in resources {
        istiod.set(type_url, list);
    }
    let root = ca.root_pem();
    let token = token.to_string();
    let labels = format!("app=\"{app}\"\nversion=\"v1\"\n");
    let mut sidecar = Sidecar::start(
        json!({"discoveryAddress": format!("127.0.0.1:{}", istiod.port())}),
        &[
            ("POD_NAMESPACE", ns),
            ("POD_NAME", &format!("{workload}-abcde")),
            ("SERVICE_ACCOUNT", app),
            ("ISTIOD_SAN", "istiod.istio-system.svc"),
            ("ISTIO_META_WORKLOAD_NAME", workload),
            ("ISTIO_META_CLUSTER_ID", "Kubernetes"),
            ("SECRET_GRACE_PERIOD_RATIO_JITTER", "0"),
        ],
        &["--domain", &format!("{ns}.svc.cluster.local")],
        move |dir| {
            for sub in [
                "var/run/secrets/istio",
                "var/run/secrets/tokens",
                "etc/istio/pod",
            ] {
                std::fs::create_dir_all(dir.join(sub)).expect("mkdir");
            }
            std::fs::write(dir.join("var/run/secrets/istio/root-cert.pem"), root).expect("root");
            std::fs::write(dir.join("var/run/secrets/tokens/istio-token"), token).expect("token");
            std::fs::write(dir.join("etc/istio/pod/labels"), labels).expect("labels");
        },
    );
    sidecar.wait_live(Duration::from_secs(30));
    Pod {
        _istiod: istiod,
        sidecar,
    }
}

fn status_metrics(pod: &Pod) -> String {
    let url = format!(
        "http://127.0.0.1:{}/stats/prometheus",
        pod.sidecar.ports.status
    );
    let r = curl::get(&url);
    assert_eq!(r.status, 200, "{r:?}");
    r.body
}

#[test]
fn two_sidecars_talk_mutual_tls_with_ca_identities_and_report_istio_metrics() {
    let ca = FakeCa::new("client-token", CLIENT_ID);
    ca.add_workload("server-token", SERVER_ID);
    // Short-lived certificates: each sidecar renews at half the lifetime while traffic flows.
    ca.set_ttl(Duration::from_secs(6));
    let app = Upstream::start("hello from the app");
    let (client_port, server_port) = (free_port(), free_port());

    let server_tls = format!(
        "  transport_socket: {{ name: envoy.transport_sockets.tls, typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext, require_client_certificate: true, common_tls_context: {} }} }}",
        common_tls()
    );
    let server = pod(
        &ca,
        "server-token",
        "back",
        "server-v1",
        "server",
        vec![
            (
                LISTENER,
                vec![listener(
                    "inbound",
                    "INBOUND",
                    server_port,
                    "inbound|8080||",
                    &http_filters(
                        "{ downstream_discovery: [{ istio_headers: {} }], downstream_propagation: [{ istio_headers: {} }] }",
                        "{ disable_host_header_fallback: true }",
                    ),
                    &server_tls,
                )],
            ),
            (CLUSTER, vec![cluster("inbound|8080||", app.port(), "")]),
        ],
    );
    let client_cluster_extra = format!(
        "metadata: {{ filter_metadata: {{ istio: {{ services: [{{ host: server.back.svc.cluster.local, name: server, namespace: back }}] }} }} }}\ntransport_socket: {{ name: envoy.transport_sockets.tls, typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext, sni: outbound_.80_._.server.back.svc.cluster.local, common_tls_context: {} }} }}",
        common_tls()
    );
    let client = pod(
        &ca,
        "client-token",
        "front",
        "client-v1",
        "client",
        vec![
            (
                LISTENER,
                vec![listener(
                    "outbound",
                    "OUTBOUND",
                    client_port,
                    OUTBOUND,
                    &http_filters(
                        "{ upstream_discovery: [{ istio_headers: {} }], upstream_propagation: [{ istio_headers: {} }] }",
                        "{}",
                    ),
                    "",
                )],
            ),
            (
                CLUSTER,
                vec![cluster(OUTBOUND, server_port, &client_cluster_extra)],
            ),
        ],
    );

    // Through both sidecars over mutual TLS; plaintext to the server's port is refused.
    let url = format!("http://127.0.0.1:{client_port}/hello");
    let r = curl::request("GET", &url, &[]).unwrap_or_else(|e| {
        panic!(
            "{e:?}\n{}\n{}",
            client.sidecar.logs(),
            client.sidecar.admin("/config_dump").body
        )
    });
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "hello from the app"),
        "{}\n{}",
        client.sidecar.logs(),
        server.sidecar.logs()
    );
    assert!(curl::request("GET", &format!("http://127.0.0.1:{server_port}/"), &[]).is_err());

    // Rotation under load: requests keep flowing through renewals on both sides.
    let issued_before = ca.requests().iter().filter(|r| r.issued).count();
    let load = Load::start(std::net::SocketAddr::from(([127, 0, 0, 1], client_port)), 2);
    let deadline = Instant::now() + Duration::from_secs(15);
    while ca.requests().iter().filter(|r| r.issued).count() < issued_before + 2 {
        assert!(
            Instant::now() < deadline,
            "no renewal: {:#?}",
            ca.requests()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A fresh connection after the renewal handshakes with the new certificates.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        curl::request("GET", &url, &[]).map(|r| r.status).ok(),
        Some(200)
    );
    let outcome = load.stop();
    assert_eq!(outcome.failed, 0, "{outcome:?}");
    assert!(outcome.ok > 10, "{outcome:?}");

    // Both status servers merge the Istio metrics, labelled as Istio labels them.
    std::thread::sleep(Duration::from_millis(300));
    let destination = status_metrics(&server);
    let series = requests_total(&destination);
    let (labels, count) = series
        .iter()
        .find(|(l, _)| l["reporter"] == "destination" && l["response_code"] == "200")
        .unwrap_or_else(|| panic!("no destination series in\n{destination}"));
    assert!(*count as usize >= outcome.ok, "{count} < {outcome:?}");
    for (k, v) in [
        ("source_workload", "client-v1"),
        ("source_workload_namespace", "front"),
        ("source_principal", CLIENT_ID),
        ("destination_workload", "server-v1"),
        ("destination_workload_namespace", "back"),
        ("destination_principal", SERVER_ID),
        ("connection_security_policy", "mutual_tls"),
    ] {
        assert_eq!(labels[k], v, "{k} in {labels:?}");
    }
    assert!(destination.contains("istio_agent_process_cpu_seconds_total"));
    let expiry: f64 = destination
        .lines()
        .find_map(|l| l.strip_prefix("istio_agent_cert_expiry_seconds{resource_name=\"default\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no cert expiry in\n{destination}"));
    assert!(expiry > 0.0 && expiry <= 6.0, "{expiry}");
    let source = status_metrics(&client);
    let series = requests_total(&source);
    let (labels, _) = series
        .iter()
        .find(|(l, _)| l["reporter"] == "source")
        .unwrap_or_else(|| panic!("no source series in\n{source}"));
    for (k, v) in [
        ("source_workload", "client-v1"),
        ("destination_workload", "server-v1"),
        ("destination_service", "server.back.svc.cluster.local"),
        // From the upstream connection: our certificate and the server's.
        ("source_principal", CLIENT_ID),
        ("destination_principal", SERVER_ID),
        ("connection_security_policy", "unknown"),
    ] {
        assert_eq!(labels[k], v, "{k} in {labels:?}");
    }
}
