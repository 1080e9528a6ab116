//! Istio's HTTP metadata exchange and standard metrics between two Outrigger sidecars: a
//! client sidecar (outbound listener, workload `client-v1` of namespace `front`) in front of a
//! server sidecar (inbound listener, workload `server-v2` of namespace `back`) in front of a
//! scripted app. HTTP/1.1, HTTP/2 and gRPC requests go through both; both proxies'
//! `/stats/prometheus` must show `istio_requests_total` and the three histograms with the
//! label values `shared/reference/istio-contract.md` §7 gives (Istio's `istio_stats.cc` and
//! its golden files `istio/proxy:testdata/metric/*.yaml.tmpl` are the oracle: the Envoy 1.40
//! on this machine lacks Istio's contrib filters, so it cannot be run as one).

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use tests::istio::requests_total;
use tests::pki::{Identity, Pki};
use tests::scripted::{Behaviour, Scripted};
use tests::upstream::Reply;
use tests::{curl, Kind, Ports, RunningProxy};

fn node(id: &str, workload: &str, ns: &str, app: &str, version: &str) -> String {
    format!(
        r#"node:
  id: "{id}"
  cluster: {app}.{ns}
  metadata:
    WORKLOAD_NAME: {workload}
    NAMESPACE: {ns}
    CLUSTER_ID: Kubernetes
    ISTIO_VERSION: 1.24.2
    NAME: {workload}-abcde
    OWNER: kubernetes://apis/apps/v1/namespaces/{ns}/deployments/{workload}
    LABELS:
      app: {app}
      version: {version}
      service.istio.io/canonical-name: {app}
      service.istio.io/canonical-revision: {version}
"#
    )
}

const MX: &str = "type.googleapis.com/io.istio.http.peer_metadata.Config";
const STATS: &str = "type.googleapis.com/stats.PluginConfig";

/// `chain_tls`: empty, or a filter chain's `transport_socket` line (indented 6).
/// `grpc_stats`: the chain has the gRPC statistics filter (emitting its filter state), as
/// Istio puts it in every sidecar chain.
#[allow(clippy::too_many_arguments)]
fn listener(
    direction: &str,
    port: &str,
    cluster: &str,
    mx: &str,
    stats: &str,
    chain_tls: &str,
    grpc_stats: bool,
) -> String {
    let grpc_stats = if grpc_stats { GRPC_STATS_FILTER } else { "" };
    format!(
        r#"  - name: {direction}
    traffic_direction: {direction}
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{{{{port}}}}} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {direction}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{ match: {{ prefix: "/" }}, route: {{ cluster: "{cluster}", timeout: 0s }} }}]
          http_filters:
{grpc_stats}          - name: istio.metadata_exchange
            typed_config:
              "@type": type.googleapis.com/udpa.type.v1.TypedStruct
              type_url: {MX}
              value: {mx}
          - name: istio.stats
            typed_config:
              "@type": type.googleapis.com/udpa.type.v1.TypedStruct
              type_url: {STATS}
              value: {stats}
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
{chain_tls}
"#
    )
}

const GRPC_STATS_FILTER: &str = "          - name: envoy.filters.http.grpc_stats\n            typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig, emit_filter_state: true }\n";

/// An upstream HTTP/2 cluster's protocol options (the gRPC hops).
const H2: &str = r#"typed_extension_protocol_options: { envoy.extensions.upstreams.http.v3.HttpProtocolOptions: { "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, explicit_http_config: { http2_protocol_options: {} } } }"#;

fn cluster(name: &str, port: &str, metadata: &str) -> String {
    format!(
        r#"  - name: "{name}"
    connect_timeout: 1s
    type: STATIC
    {metadata}
    load_assignment:
      cluster_name: "{name}"
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{{{{port}}}}} }} }} }} }}] }}]
"#
    )
}

const OUTBOUND_CLUSTER: &str = "outbound|80||server.back.svc.cluster.local";

/// The hop between the sidecars over mutual TLS: the client's cluster presents the
/// `client` identity, the server's inbound chain the `server` one and requires the client's.
struct Mtls<'a> {
    pki: &'a Pki,
    client: &'a Identity,
    server: &'a Identity,
}

impl Mtls<'_> {
    fn common(&self, me: &Identity) -> String {
        format!(
            r#"common_tls_context: {{ tls_certificates: [{{ certificate_chain: {{ filename: "{}" }}, private_key: {{ filename: "{}" }} }}], validation_context: {{ trusted_ca: {{ filename: "{}" }} }} }}"#,
            me.cert.display(),
            me.key.display(),
            self.pki.root().display()
        )
    }

    fn upstream(&self) -> String {
        format!(
            r#"transport_socket: {{ name: envoy.transport_sockets.tls, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext, {} }} }}"#,
            self.common(self.client)
        )
    }

    fn downstream(&self) -> String {
        format!(
            r#"      transport_socket: {{ name: envoy.transport_sockets.tls, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext, require_client_certificate: true, {} }} }}"#,
            self.common(self.server)
        )
    }
}

fn bootstraps(ports: &Ports, mtls: Option<&Mtls<'_>>) -> (String, String) {
    bootstraps_with(ports, mtls, false)
}

/// `grpc`: both chains have the gRPC statistics filter and both hops are HTTP/2.
fn bootstraps_with(ports: &Ports, mtls: Option<&Mtls<'_>>, grpc: bool) -> (String, String) {
    bootstraps_reporting(ports, mtls, grpc, None)
}

/// As [`bootstraps_with`], with both stats filters' `tcp_reporting_duration` when given.
fn bootstraps_reporting(
    ports: &Ports,
    mtls: Option<&Mtls<'_>>,
    grpc: bool,
    reporting: Option<&str>,
) -> (String, String) {
    let reporting = reporting
        .map(|d| format!(", tcp_reporting_duration: {d}"))
        .unwrap_or_default();
    let metadata = r#"metadata: { filter_metadata: { istio: { services: [{ host: server.back.svc.cluster.local, name: server, namespace: back }] } } }"#;
    let mut client_cluster = match mtls {
        Some(m) => format!("{metadata}\n    {}", m.upstream()),
        None => metadata.to_string(),
    };
    let app_cluster = if grpc { H2 } else { "" };
    if grpc {
        client_cluster = format!("{client_cluster}\n    {H2}");
    }
    let server_chain = mtls.map(Mtls::downstream).unwrap_or_default();
    let client = format!(
        "{}admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{{{client_admin}}}} }} }} }}\nstatic_resources:\n  listeners:\n{}  clusters:\n{}",
        node("sidecar~10.0.0.1~client-v1-abcde.front~front.svc.cluster.local", "client-v1", "front", "client", "v1"),
        listener(
            "OUTBOUND",
            "client",
            OUTBOUND_CLUSTER,
            r#"{ upstream_discovery: [{ istio_headers: {} }, { workload_discovery: {} }], upstream_propagation: [{ istio_headers: {} }] }"#,
            &format!("{{ disable_host_header_fallback: false{reporting} }}"),
            "",
            grpc,
        ),
        cluster(OUTBOUND_CLUSTER, "server", &client_cluster),
    );
    let server = format!(
        "{}admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{{{server_admin}}}} }} }} }}\nstatic_resources:\n  listeners:\n{}  clusters:\n{}",
        node("sidecar~10.0.0.2~server-v2-abcde.back~back.svc.cluster.local", "server-v2", "back", "server", "v2"),
        listener(
            "INBOUND",
            "server",
            "inbound|8080||",
            r#"{ downstream_discovery: [{ istio_headers: {} }, { workload_discovery: {} }], downstream_propagation: [{ istio_headers: {} }] }"#,
            &format!("{{ disable_host_header_fallback: true{reporting} }}"),
            &server_chain,
            grpc,
        ),
        cluster("inbound|8080||", "app", app_cluster),
    );
    (ports.render(&client), ports.render(&server))
}

fn label_names(body: &str) -> Vec<String> {
    let line = body
        .lines()
        .find(|l| l.starts_with("istio_requests_total{"))
        .expect("a series");
    line.split("\",")
        .filter_map(|p| {
            p.split_once("=\"")
                .map(|(k, _)| k.trim_start_matches("istio_requests_total{").to_string())
        })
        .collect()
}

#[test]
fn two_sidecars_exchange_metadata_and_report_istio_metrics() {
    let app = Scripted::start(
        "app",
        Behaviour::Reply(Reply {
            status: 200,
            headers: vec![("grpc-status".into(), "0".into())],
            body: "hello\n".into(),
        }),
    );
    let ports =
        Ports::new(&["client", "server", "client_admin", "server_admin"]).with("app", app.port());
    let (client_yaml, server_yaml) = bootstraps(&ports, None);
    let server = RunningProxy::start(Kind::Outrigger, &server_yaml, &[]);
    let client = RunningProxy::start(Kind::Outrigger, &client_yaml, &[]);
    let url = format!("http://127.0.0.1:{}/hello", ports.get("client"));

    let h1 = curl::request("GET", &url, &["--http1.1"]).expect("HTTP/1.1");
    assert_eq!(h1.status, 200, "{}", server.logs_for_failure());
    // The client's app sees neither side's exchange headers: the client sidecar strips the
    // server's from the response.
    assert_eq!(h1.header("x-envoy-peer-metadata"), None);
    assert_eq!(h1.header("x-envoy-peer-metadata-id"), None);
    for _ in 0..2 {
        let h2 = curl::request("GET", &url, &["--http2-prior-knowledge"]).expect("HTTP/2");
        assert_eq!(h2.status, 200);
    }
    let grpc = curl::request(
        "POST",
        &format!("http://127.0.0.1:{}/pkg.Svc/Call", ports.get("client")),
        &[
            "--http2-prior-knowledge",
            "-H",
            "content-type: application/grpc",
            "--data",
            "grpc-frame",
        ],
    )
    .expect("gRPC");
    assert_eq!(grpc.status, 200);
    // Garbage from a peer is no peer, and the request goes through.
    let garbage = format!("http://127.0.0.1:{}/garbage", ports.get("server"));
    let g = curl::request(
        "GET",
        &garbage,
        &[
            "-H",
            "x-envoy-peer-metadata: %%%not-base64",
            "-H",
            "x-envoy-peer-metadata-id: x",
        ],
    )
    .expect("garbage survives");
    assert_eq!(g.status, 200);
    let g = curl::request("GET", &garbage, &["-H", "x-envoy-peer-metadata: Dw=="])
        .expect("not a Struct survives");
    assert_eq!(g.status, 200);

    // The app never sees the exchange headers.
    let received = app.requests();
    assert_eq!(received.len(), 6);
    for r in &received {
        assert_eq!(r.header("x-envoy-peer-metadata"), None, "{r:?}");
        assert_eq!(r.header("x-envoy-peer-metadata-id"), None, "{r:?}");
    }

    // Both ends record at stream end; give the last log a moment.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let client_body = client.get("/stats/prometheus").body;
    let server_body = server.get("/stats/prometheus").body;
    let expected_names: Vec<String> = [
        "reporter",
        "source_workload",
        "source_canonical_service",
        "source_canonical_revision",
        "source_workload_namespace",
        "source_principal",
        "source_app",
        "source_version",
        "source_cluster",
        "destination_workload",
        "destination_workload_namespace",
        "destination_principal",
        "destination_app",
        "destination_version",
        "destination_service",
        "destination_canonical_service",
        "destination_canonical_revision",
        "destination_service_name",
        "destination_service_namespace",
        "destination_cluster",
        "request_protocol",
        "response_code",
        "grpc_response_status",
        "response_flags",
        "connection_security_policy",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(label_names(&client_body), expected_names);
    assert_eq!(label_names(&server_body), expected_names);
    assert!(client_body.contains("# TYPE istio_requests_total counter\n"));
    assert!(client_body.contains("# TYPE istio_request_duration_milliseconds histogram\n"));
    assert!(client_body.contains("istio_build{component=\"proxy\",tag=\"1.24.2\"} 1\n"));
    assert!(!client_body.contains("envoy_istio"), "no envoy_ prefix");
    // Without the gRPC statistics filter there are no message counts to report (Istio reads
    // them from that filter's state).
    assert!(!client_body.contains("istio_request_messages_total"));
    assert!(!server_body.contains("istio_response_messages_total"));

    // Client side: reporter=source, the local workload is the source, the peer (from the
    // server's response headers) the destination.
    let pairs = |m: &BTreeMap<String, String>, keys: &[&str]| -> Vec<String> {
        keys.iter().map(|k| format!("{k}={}", m[*k])).collect()
    };
    let series = requests_total(&client_body);
    let http = series
        .iter()
        .find(|(m, _)| m["request_protocol"] == "http")
        .expect("an http series on the client");
    assert_eq!(
        pairs(
            &http.0,
            &expected_names
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
        ),
        [
            "reporter=source",
            "source_workload=client-v1",
            "source_canonical_service=client",
            "source_canonical_revision=v1",
            "source_workload_namespace=front",
            "source_principal=unknown",
            "source_app=client",
            "source_version=v1",
            "source_cluster=Kubernetes",
            "destination_workload=server-v2",
            "destination_workload_namespace=back",
            "destination_principal=unknown",
            "destination_app=server",
            "destination_version=v2",
            "destination_service=server.back.svc.cluster.local",
            "destination_canonical_service=server",
            "destination_canonical_revision=v2",
            "destination_service_name=server",
            "destination_service_namespace=back",
            "destination_cluster=Kubernetes",
            "request_protocol=http",
            "response_code=200",
            "grpc_response_status=",
            "response_flags=-",
            "connection_security_policy=unknown",
        ]
    );
    // HTTP/1.1 and HTTP/2 requests share a series (the protocol label is http for both).
    assert_eq!(http.1, 3, "{client_body}");
    let grpc_series = series
        .iter()
        .find(|(m, _)| m["request_protocol"] == "grpc")
        .expect("a grpc series on the client");
    assert_eq!(grpc_series.0["grpc_response_status"], "0");
    assert_eq!(grpc_series.1, 1);
    assert!(client_body.contains("istio_request_duration_milliseconds_count{reporter=\"source\""));

    // Server side: reporter=destination, the peer (from the request headers) the source.
    let series = requests_total(&server_body);
    let http = series
        .iter()
        .find(|(m, _)| m["request_protocol"] == "http" && m["source_workload"] == "client-v1")
        .expect("an http series on the server");
    assert_eq!(
        pairs(
            &http.0,
            &expected_names
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
        ),
        [
            "reporter=destination",
            "source_workload=client-v1",
            "source_canonical_service=client",
            "source_canonical_revision=v1",
            "source_workload_namespace=front",
            "source_principal=unknown",
            "source_app=client",
            "source_version=v1",
            "source_cluster=Kubernetes",
            "destination_workload=server-v2",
            "destination_workload_namespace=back",
            "destination_principal=unknown",
            "destination_app=server",
            "destination_version=v2",
            // disable_host_header_fallback: the local canonical name.
            "destination_service=server",
            "destination_canonical_service=server",
            "destination_canonical_revision=v2",
            "destination_service_name=server",
            "destination_service_namespace=back",
            "destination_cluster=Kubernetes",
            "request_protocol=http",
            "response_code=200",
            "grpc_response_status=",
            "response_flags=-",
            "connection_security_policy=none",
        ]
    );
    assert_eq!(http.1, 3);
    // The garbage requests came with no usable peer: unknown source, counted all the same.
    let unknown = series
        .iter()
        .find(|(m, _)| m["source_workload"] == "unknown")
        .expect("the garbage requests' series");
    assert_eq!(unknown.1, 2);
    assert_eq!(unknown.0["source_canonical_revision"], "latest");
    // Histogram counts match the request counts.
    let count_line = server_body
        .lines()
        .find(|l| {
            l.starts_with("istio_response_bytes_count{")
                && l.contains("source_workload=\"unknown\"")
        })
        .expect("a response bytes count");
    assert!(count_line.ends_with(" 2"), "{count_line}");

    promtool_accepts(&client_body);
    promtool_accepts(&server_body);
}

/// Findings promtool reports on Envoy's own output too (see `stats_prometheus.rs`).
const LINT: &[&str] = &[
    "no help text",
    "counter metrics should have \"_total\" suffix",
    "non-counter metrics should not have \"_total\" suffix",
    "non-histogram and non-summary metrics should not have \"_count\" suffix",
    "metric names should not contain abbreviated units",
    // Istio's own name for the metric: dashboards query it, so it stays.
    "istio_request_duration_milliseconds use base unit \"seconds\" instead of \"milliseconds\"",
    // Envoy's own name: envoy_server_days_until_first_cert_expiring.
    "envoy_server_days_until_first_cert_expiring use base unit \"seconds\" instead of \"days\"",
];

/// Over mutual TLS the server side knows both identities: the client's certificate is the
/// source principal, its own the destination principal, and the policy is `mutual_tls`. The
/// client side takes the same principals from its upstream connection.
#[test]
fn principals_and_mutual_tls_come_from_the_connection() {
    let app = Scripted::start("app", Behaviour::Reply(Reply::text("hello\n")));
    let pki = Pki::new();
    let (client_id, server_id) = (pki.identity("client"), pki.identity("server"));
    let mtls = Mtls {
        pki: &pki,
        client: &client_id,
        server: &server_id,
    };
    let ports =
        Ports::new(&["client", "server", "client_admin", "server_admin"]).with("app", app.port());
    let (client_yaml, server_yaml) = bootstraps(&ports, Some(&mtls));
    let server = RunningProxy::start(Kind::Outrigger, &server_yaml, &[]);
    let client = RunningProxy::start(Kind::Outrigger, &client_yaml, &[]);
    let url = format!("http://127.0.0.1:{}/hello", ports.get("client"));
    let r = curl::request("GET", &url, &[]).expect("through both sidecars");
    assert_eq!(r.status, 200, "{}", server.logs_for_failure());
    // Plaintext straight to the server's mTLS port is refused.
    let direct = format!("http://127.0.0.1:{}/hello", ports.get("server"));
    assert!(curl::request("GET", &direct, &[]).is_err());
    std::thread::sleep(std::time::Duration::from_millis(200));
    let labels = |body: &str| -> Vec<String> {
        let series = requests_total(body);
        let (m, _) = series.first().expect("a series");
        [
            "source_principal",
            "destination_principal",
            "connection_security_policy",
        ]
        .iter()
        .map(|k| format!("{k}={}", m[*k]))
        .collect()
    };
    assert_eq!(
        labels(&server.get("/stats/prometheus").body),
        [
            format!("source_principal={}", client_id.uri),
            format!("destination_principal={}", server_id.uri),
            "connection_security_policy=mutual_tls".to_string(),
        ]
    );
    // The client side reads its upstream connection: its own certificate is the source, the
    // server's the destination; the policy stays `unknown` on the client, as in Istio.
    assert_eq!(
        labels(&client.get("/stats/prometheus").body),
        [
            format!("source_principal={}", client_id.uri),
            format!("destination_principal={}", server_id.uri),
            "connection_security_policy=unknown".to_string(),
        ]
    );
}

fn promtool_accepts(body: &str) {
    let Some(promtool) = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("promtool"))
            .find(|p| p.is_file())
    }) else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("promtool is required in CI (apt-get install prometheus)");
        }
        eprintln!("promtool not found: SKIPPED its check");
        return;
    };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool finishes");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "promtool failed:\n{text}"
    );
    let unexpected: Vec<&str> = text
        .lines()
        .filter(|l| !LINT.iter().any(|k| l.ends_with(k)))
        .collect();
    assert!(unexpected.is_empty(), "promtool findings: {unexpected:#?}");
}

/// A client sidecar calling an upstream without a sidecar (no exchange headers come back)
/// takes the destination from the endpoint's `istio.workload` metadata, Istio's compact
/// `workload;namespace;canonical service;revision;cluster` string; app and version stay
/// unknown as in Istio.
#[test]
fn without_an_exchange_the_endpoints_istio_workload_metadata_names_the_destination() {
    let app = Scripted::start("app", Behaviour::Reply(Reply::text("plain\n")));
    let ports = Ports::new(&["client", "client_admin"]).with("app", app.port());
    let cluster = format!(
        r#"  - name: "{OUTBOUND_CLUSTER}"
    connect_timeout: 1s
    type: STATIC
    load_assignment:
      cluster_name: "{OUTBOUND_CLUSTER}"
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{{{app}}}} }} }} }}
          metadata: {{ filter_metadata: {{ istio: {{ workload: "plain-v3;back;plain;v3;Kubernetes" }} }} }}
"#
    );
    let yaml = format!(
        "{}admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{{{client_admin}}}} }} }} }}\nstatic_resources:\n  listeners:\n{}  clusters:\n{cluster}",
        node("sidecar~10.0.0.1~client-v1-abcde.front~front.svc.cluster.local", "client-v1", "front", "client", "v1"),
        listener(
            "OUTBOUND",
            "client",
            OUTBOUND_CLUSTER,
            r#"{ upstream_discovery: [{ istio_headers: {} }], upstream_propagation: [{ istio_headers: {} }] }"#,
            "{}",
            "",
            false,
        ),
    );
    let client = RunningProxy::start(Kind::Outrigger, &ports.render(&yaml), &[]);
    let url = format!("http://127.0.0.1:{}/", ports.get("client"));
    assert_eq!(
        curl::request("GET", &url, &[]).expect("through").status,
        200
    );
    std::thread::sleep(std::time::Duration::from_millis(200));
    let series = requests_total(&client.get("/stats/prometheus").body);
    let (labels, _) = series.first().expect("a series");
    for (k, v) in [
        ("destination_workload", "plain-v3"),
        ("destination_workload_namespace", "back"),
        ("destination_canonical_service", "plain"),
        ("destination_canonical_revision", "v3"),
        ("destination_cluster", "Kubernetes"),
        ("destination_app", "unknown"),
        ("destination_version", "unknown"),
    ] {
        assert_eq!(labels[k], v, "{k} in {labels:?}");
    }
}

/// `istio_request_messages_total` / `istio_response_messages_total` between two sidecars whose
/// chains have the gRPC statistics filter, for a real gRPC client and server: every call
/// shape, messages spanning many HTTP/2 frames. Istio reports them with the peer and service
/// labels only (golden `istio/proxy:testdata/metric/server_request_messages.yaml.tmpl`).
#[test]
fn grpc_message_counts_come_from_the_grpc_stats_filter() {
    let ports = Ports::new(&["client", "server", "client_admin", "server_admin", "app"]);
    let (client_yaml, server_yaml) = bootstraps_with(&ports, None, true);
    let server = RunningProxy::start(Kind::Outrigger, &server_yaml, &[]);
    let client = RunningProxy::start(Kind::Outrigger, &client_yaml, &[]);
    let target = format!("http://127.0.0.1:{}", ports.get("client"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let _app = tests::grpc_echo::serve(ports.get("app"))
            .await
            .expect("the gRPC app listens");
        let mut c = tests::grpc_echo::EchoClient::connect(target)
            .await
            .expect("connect");
        let big = "m".repeat(100_000);
        for _ in 0..2 {
            assert_eq!(
                c.unary("/test.Echo/Unary", "hi").await.expect("unary"),
                "hi"
            );
        }
        let collected = c.collect(vec!["a".into(), "b".into(), "c".into()]).await;
        assert_eq!(collected.expect("collect"), "received 3");
        assert_eq!(c.repeat(4, "r").await.expect("repeat").len(), 4);
        let chat = c.chat(vec![big.clone(), "s".into(), big]).await;
        assert_eq!(chat.expect("chat").len(), 3);
        assert!(c.unary("/test.Echo/Fail", "x").await.is_err());
    });
    std::thread::sleep(std::time::Duration::from_millis(200));
    // Requests: 2 + 3 + 1 + 3 + 1; responses: 2 + 1 + 4 + 3 + 0 (a failed unary answers none).
    for (proxy, reporter) in [(&client, "source"), (&server, "destination")] {
        let body = proxy.get("/stats/prometheus").body;
        let request = message_counts(&body, "istio_request_messages_total");
        let response = message_counts(&body, "istio_response_messages_total");
        assert_eq!(
            request.len(),
            1,
            "one series on the {reporter} side:\n{body}"
        );
        assert_eq!(response.len(), 1, "{body}");
        assert_eq!(request[0].1, 10, "{reporter}: request messages\n{body}");
        assert_eq!(response[0].1, 10, "{reporter}: response messages\n{body}");
        let labels = &request[0].0;
        assert_eq!(labels.len(), 20, "{labels:?}");
        assert_eq!(labels[0], ("reporter".to_string(), reporter.to_string()));
        assert_eq!(labels[19].0, "destination_cluster");
        let get = |k: &str| labels.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("source_workload"), Some("client-v1"));
        assert_eq!(get("destination_workload"), Some("server-v2"));
        assert_eq!(get("destination_service_name"), Some("server"));
        assert_eq!(get("request_protocol"), None);
        assert!(body.contains("# TYPE istio_request_messages_total counter\n"));
        promtool_accepts(&body);
    }
}

/// The series of `family`: labels in order, and the count.
fn message_counts(body: &str, family: &str) -> Vec<(Vec<(String, String)>, u64)> {
    body.lines()
        .filter_map(|l| l.strip_prefix(family)?.strip_prefix('{'))
        .map(|rest| {
            let (labels, value) = rest.rsplit_once("} ").expect("a sample");
            let labels = labels
                .split("\",")
                .filter_map(|p| p.split_once("=\""))
                .map(|(k, v)| (k.to_string(), v.trim_end_matches('"').to_string()))
                .collect();
            (labels, value.parse().expect("a count"))
        })
        .collect()
}

/// A gRPC stream held open longer than `tcp_reporting_duration` has its messages reported
/// while it lasts, on both sides (Istio's stats filter reports a gRPC stream's message counts
/// at each tick of that period once the metadata exchange found the peer:
/// `istio/proxy:source/extensions/filters/http/istio_stats/istio_stats.cc`); what the end of
/// the stream reports is only what came after, so nothing is counted twice.
#[test]
fn a_long_grpc_stream_reports_its_messages_every_reporting_period() {
    let ports = Ports::new(&["client", "server", "client_admin", "server_admin", "app"]);
    let (client_yaml, server_yaml) = bootstraps_reporting(&ports, None, true, Some("1s"));
    let server = RunningProxy::start(Kind::Outrigger, &server_yaml, &[]);
    let client = RunningProxy::start(Kind::Outrigger, &client_yaml, &[]);
    let target = format!("http://127.0.0.1:{}", ports.get("client"));
    let counts = |proxy: &RunningProxy| {
        let body = proxy.get("/stats/prometheus").body;
        let one = |family: &str| {
            let series = message_counts(&body, family);
            assert!(series.len() <= 1, "one series at most:\n{body}");
            series.first().map_or(0, |(labels, n)| {
                assert_eq!(labels.len(), 20, "{labels:?}");
                *n
            })
        };
        (
            one("istio_request_messages_total"),
            one("istio_response_messages_total"),
        )
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let _app = tests::grpc_echo::serve(ports.get("app"))
            .await
            .expect("the gRPC app listens");
        let mut c = tests::grpc_echo::EchoClient::connect(target)
            .await
            .expect("connect");
        let mut chat = c.open_chat().await.expect("a chat");
        for text in ["one", "two"] {
            assert_eq!(chat.say(text).await.expect("an echo"), text);
        }
        // Two periods pass with the call open.
        tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
        for (proxy, side) in [(&client, "source"), (&server, "destination")] {
            assert_eq!(counts(proxy), (2, 2), "{side}: while the call is open");
        }
        assert_eq!(chat.say("three").await.expect("an echo"), "three");
        assert!(chat.close().await.expect("the call ends").is_empty());
    });
    std::thread::sleep(std::time::Duration::from_millis(200));
    for (proxy, side) in [(&client, "source"), (&server, "destination")] {
        assert_eq!(counts(proxy), (3, 3), "{side}: after the call");
    }
}

/// A client-streaming call whose server answers only at its end: the server side, which
/// knows its peer from the request, reports the request messages every period while it
/// waits; the client side learns its peer from the response, so it reports nothing before
/// (Istio's `peerInfoRead` condition, `istio_stats.cc`).
#[test]
fn a_client_stream_is_reported_by_the_server_side_before_its_response() {
    let ports = Ports::new(&["client", "server", "client_admin", "server_admin", "app"]);
    let (client_yaml, server_yaml) = bootstraps_reporting(&ports, None, true, Some("1s"));
    let server = RunningProxy::start(Kind::Outrigger, &server_yaml, &[]);
    let client = RunningProxy::start(Kind::Outrigger, &client_yaml, &[]);
    let target = format!("http://127.0.0.1:{}", ports.get("client"));
    let requests = |proxy: &RunningProxy| {
        let body = proxy.get("/stats/prometheus").body;
        let series = message_counts(&body, "istio_request_messages_total");
        assert!(series.len() <= 1, "one series at most:\n{body}");
        series.first().map_or(0, |(_, n)| *n)
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let _app = tests::grpc_echo::serve(ports.get("app"))
            .await
            .expect("the gRPC app listens");
        let c = tests::grpc_echo::EchoClient::connect(target)
            .await
            .expect("connect");
        let call = c.open_collect();
        call.send("one");
        call.send("two");
        tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
        assert_eq!(requests(&server), 2, "destination: before the response");
        assert_eq!(requests(&client), 0, "source: its peer is not known yet");
        call.send("three");
        assert_eq!(call.finish().await.expect("an answer"), "received 3");
    });
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(requests(&server), 3, "destination: after the call");
    assert_eq!(requests(&client), 3, "source: after the call");
}
