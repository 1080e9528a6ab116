//! Two Outrigger sidecars for Istio metric tests: a client sidecar (outbound listener,
//! workload `client-v1` of namespace `front`) in front of a server sidecar (inbound listener,
//! workload `server-v2` of namespace `back`), their bootstraps with Istio's metadata exchange
//! and stats filters, and what the tests read from `/stats/prometheus`.

use crate::pki::{Identity, Pki};
use crate::Ports;
use std::io::Write;
use std::process::{Command, Stdio};

pub fn node(id: &str, workload: &str, ns: &str, app: &str, version: &str) -> String {
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

pub const MX: &str = "type.googleapis.com/io.istio.http.peer_metadata.Config";
pub const STATS: &str = "type.googleapis.com/stats.PluginConfig";

/// `chain_tls`: empty, or a filter chain's `transport_socket` line (indented 6).
/// `grpc_stats`: the chain has the gRPC statistics filter (emitting its filter state), as
/// Istio puts it in every sidecar chain.
#[allow(clippy::too_many_arguments)]
pub fn listener(
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

pub const GRPC_STATS_FILTER: &str = "          - name: envoy.filters.http.grpc_stats\n            typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig, emit_filter_state: true }\n";

/// An upstream HTTP/2 cluster's protocol options (the gRPC hops).
pub const H2: &str = r#"typed_extension_protocol_options: { envoy.extensions.upstreams.http.v3.HttpProtocolOptions: { "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, explicit_http_config: { http2_protocol_options: {} } } }"#;

pub fn cluster(name: &str, port: &str, metadata: &str) -> String {
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

pub const OUTBOUND_CLUSTER: &str = "outbound|80||server.back.svc.cluster.local";

/// The hop between the sidecars over mutual TLS: the client's cluster presents the
/// `client` identity, the server's inbound chain the `server` one and requires the client's.
pub struct Mtls<'a> {
    pub pki: &'a Pki,
    pub client: &'a Identity,
    pub server: &'a Identity,
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

pub fn bootstraps(ports: &Ports, mtls: Option<&Mtls<'_>>) -> (String, String) {
    bootstraps_with(ports, mtls, false)
}

/// `grpc`: both chains have the gRPC statistics filter and both hops are HTTP/2.
pub fn bootstraps_with(ports: &Ports, mtls: Option<&Mtls<'_>>, grpc: bool) -> (String, String) {
    bootstraps_reporting(ports, mtls, grpc, None)
}

/// As [`bootstraps_with`], with both stats filters' `tcp_reporting_duration` when given.
pub fn bootstraps_reporting(
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

/// Findings promtool reports on Envoy's own output too (see `stats_prometheus.rs`).
pub const LINT: &[&str] = &[
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

pub fn promtool_accepts(body: &str) {
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

/// The series of `family`: labels in order, and the count.
pub fn message_counts(body: &str, family: &str) -> Vec<(Vec<(String, String)>, u64)> {
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
