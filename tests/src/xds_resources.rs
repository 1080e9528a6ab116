//! Resources and bootstraps for the tests that drive a proxy over ADS: a bootstrap whose only
//! static cluster is the control plane, and the few resources most scenarios need, written
//! once so every test (and `xds-bench`) gives Envoy and Outrigger the same thing.

use xds_proto::pb::envoy::config::cluster::v3::Cluster;
use xds_proto::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds_proto::pb::envoy::config::listener::v3::Listener;
use xds_proto::pb::envoy::config::route::v3::RouteConfiguration;
use xds_proto::pb::google::protobuf::Any;
use xds_proto::{DocumentFormat, ParseOptions, XdsMessage};

/// A bootstrap that takes clusters and listeners from the control plane on `control_plane`
/// (127.0.0.1), over delta or state-of-the-world ADS, waiting for it indefinitely as Istio's
/// does (`initial_fetch_timeout: 0s`, node on the first message only).
pub fn ads_bootstrap(admin: u16, control_plane: u16, delta: bool) -> String {
    let api = if delta { "DELTA_GRPC" } else { "GRPC" };
    format!(
        r#"
node: {{ id: sidecar~127.0.0.1~test.default~default.svc.cluster.local, cluster: test }}
admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }} }}
dynamic_resources:
  ads_config:
    api_type: {api}
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services: [{{ envoy_grpc: {{ cluster_name: xds-grpc }} }}]
  cds_config: {{ ads: {{}}, initial_fetch_timeout: 0s, resource_api_version: V3 }}
  lds_config: {{ ads: {{}}, initial_fetch_timeout: 0s, resource_api_version: V3 }}
{}"#,
        xds_grpc_cluster(control_plane)
    )
}

/// The static `xds-grpc` cluster (HTTP/2, to the control plane on `control_plane`), as a
/// bootstrap's whole `static_resources`.
pub fn xds_grpc_cluster(control_plane: u16) -> String {
    format!(
        r#"static_resources:
  clusters:
  - name: xds-grpc
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: xds-grpc
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {control_plane} }} }} }}
"#
    )
}

/// `yaml` parsed as `M` and packed, named `name` for the control plane. Panics on a typo.
pub fn resource<M: XdsMessage>(name: &str, yaml: &str) -> (String, Any) {
    let parsed =
        xds_proto::parse_document::<M>(yaml, DocumentFormat::Yaml, ParseOptions::default())
            .unwrap_or_else(|e| panic!("test resource {name}: {e}"));
    (name.to_string(), xds_proto::pack(&parsed.value))
}

/// A listener named `name` on `address:port` whose HTTP connection manager (`stat_prefix`)
/// routes with the RDS table `routes`.
pub fn rds_listener(
    name: &str,
    address: &str,
    port: u16,
    stat_prefix: &str,
    routes: &str,
) -> (String, Any) {
    resource::<Listener>(
        name,
        &format!(
            r#"
name: {name}
address: {{ socket_address: {{ address: "{address}", port_value: {port} }} }}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: {stat_prefix}
      rds:
        route_config_name: {routes}
        config_source: {{ ads: {{}}, resource_api_version: V3 }}
      http_filters:
      - name: envoy.filters.http.router
        typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
"#
        ),
    )
}

/// EDS cluster `backend` over ADS.
pub fn backend_cluster() -> (String, Any) {
    resource::<Cluster>(
        "backend",
        r#"
name: backend
type: EDS
connect_timeout: 1s
eds_cluster_config: { eds_config: { ads: {}, resource_api_version: V3 } }
"#,
    )
}

/// The `backend` assignment: one endpoint on 127.0.0.1:`port`.
pub fn backend_endpoints(port: u16) -> (String, Any) {
    resource::<ClusterLoadAssignment>(
        "backend",
        &format!(
            r#"
cluster_name: backend
endpoints:
- lb_endpoints:
  - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}
"#
        ),
    )
}

/// Listener `http` on `address:port` routing with RDS table `local_route`.
pub fn backend_listener(address: &str, port: u16) -> (String, Any) {
    rds_listener("http", address, port, "ingress", "local_route")
}

/// RDS table `local_route`: everything to `backend`.
pub fn route_to_backend() -> (String, Any) {
    resource::<RouteConfiguration>(
        "local_route",
        r#"
name: local_route
virtual_hosts:
- name: all
  domains: ["*"]
  routes:
  - match: { prefix: "/" }
    route: { cluster: backend }
"#,
    )
}

/// Has `cp` serve the backend cluster (endpoint 127.0.0.1:`upstream_port`), the listener on
/// 127.0.0.1:`listener_port` and its route table to the backend: a proxy subscribing gets a
/// working route to the upstream.
pub fn serve_backend(
    cp: &crate::control_plane::ControlPlane,
    upstream_port: u16,
    listener_port: u16,
) {
    use crate::control_plane::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
    cp.set(CLUSTER, vec![backend_cluster()]);
    cp.set(ENDPOINT, vec![backend_endpoints(upstream_port)]);
    cp.set(LISTENER, vec![backend_listener("127.0.0.1", listener_port)]);
    cp.set(ROUTE, vec![route_to_backend()]);
}

/// An SDS `Secret` named `name` holding `identity`'s certificate and key inline.
pub fn certificate_secret(name: &str, identity: &crate::pki::Identity) -> (String, Any) {
    let read = |p: &std::path::Path| std::fs::read_to_string(p).expect("read a PEM file");
    let quoted = |s: String| serde_json::to_string(&s).expect("a JSON string");
    resource::<xds_proto::pb::envoy::extensions::transport_sockets::tls::v3::Secret>(
        name,
        &format!(
            "name: {name}\ntls_certificate:\n  certificate_chain: {{ inline_string: {} }}\n  private_key: {{ inline_string: {} }}\n",
            quoted(read(&identity.cert)),
            quoted(read(&identity.key)),
        ),
    )
}

/// An SDS `Secret` named `name` validating against `pki`'s root, inline.
pub fn root_secret(name: &str, pki: &crate::pki::Pki) -> (String, Any) {
    let root = std::fs::read_to_string(pki.root()).expect("read the root");
    resource::<xds_proto::pb::envoy::extensions::transport_sockets::tls::v3::Secret>(
        name,
        &format!(
            "name: {name}\nvalidation_context: {{ trusted_ca: {{ inline_string: {} }} }}\n",
            serde_json::to_string(&root).expect("a JSON string")
        ),
    )
}
