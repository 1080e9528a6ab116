//! A `Server` built from a small inline bootstrap, for the admin endpoint tests.

use crate::bootstrap::{self, Sources};
use crate::cli::Options;
use crate::logging::LogControl;
use crate::server::Server;
use crate::stats::Store;
use crate::upstream::ClusterManager;
use clap::Parser;
use http_body_util::BodyExt;
use std::sync::Arc;

const BOOTSTRAP_TEMPLATE: &str = r#"
node:
  id: test-node
  cluster: test-cluster
  locality: { zone: z1 }
admin:
  address:
    socket_address: { address: 127.0.0.1, port_value: 19000 }
layered_runtime:
  layers:
  - name: static
    static_layer:
      foo: bar
      nested: { a: 1, b: true }
  - name: admin
    admin_layer: {}
static_resources:
  listeners:
  - name: http
    address:
      socket_address: { address: 127.0.0.1, port_value: 19080 }
    traffic_direction: INBOUND
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            name: local
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: backend }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  - name: tcp
    address:
      socket_address: { address: 127.0.0.1, port_value: 19081 }
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp
          cluster: backend
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: { address: 127.0.0.1, port_value: 8081 }
        - endpoint:
            address:
              socket_address: { address: 127.0.0.1, port_value: 8082 }
          load_balancing_weight: 3
  - name: tls_backend
    type: STATIC
    connect_timeout: 2s
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          tls_certificates:
          - certificate_chain: { inline_string: {{CERT}} }
            private_key: { inline_string: {{KEY}} }
        sni: example.com
    load_assignment:
      cluster_name: tls_backend
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: { address: 127.0.0.1, port_value: 8443 }
"#;

/// A generated certificate and its private key (PEM), for the TLS cluster of [`BOOTSTRAP`].
pub static TLS_PAIR: std::sync::LazyLock<(String, String)> = std::sync::LazyLock::new(|| {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["example.com".into()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    (cert.pem(), key.serialize_pem())
});

/// The admin tests' bootstrap, with [`TLS_PAIR`] inline.
pub static BOOTSTRAP: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let quoted = |s: &str| serde_json::to_string(s).expect("a string");
    BOOTSTRAP_TEMPLATE
        .replace("{{CERT}}", &quoted(&TLS_PAIR.0))
        .replace("{{KEY}}", &quoted(&TLS_PAIR.1))
});

/// A server for [`BOOTSTRAP`], as `server::main` would build it (no sockets).
pub fn server() -> Arc<Server> {
    let options = Options::parse_from(["outrigger", "--config-yaml", BOOTSTRAP.as_str()]);
    let loaded = bootstrap::load(&Sources {
        config_yaml: Some(BOOTSTRAP.as_str()),
        ..Default::default()
    })
    .expect("test bootstrap loads");
    let config =
        Arc::new(crate::config::translate_bootstrap(&loaded.bootstrap).expect("translates"));
    let stats = Store::with_config(config.stats.clone());
    let logging = LogControl::detached("info", None).expect("levels");
    let clusters = Arc::new(ClusterManager::new(
        config.cluster_slots.clone(),
        &config.clusters,
        &stats,
    ));
    Server::new(options, loaded.bootstrap, config, stats, logging, clusters)
}

pub fn body(response: super::AdminResponse) -> String {
    let bytes = futures_body(response);
    String::from_utf8(bytes).expect("utf-8 body")
}

fn futures_body(response: super::AdminResponse) -> Vec<u8> {
    let collected = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(response.into_body().collect())
        .expect("Full never fails");
    collected.to_bytes().to_vec()
}

pub fn json(response: super::AdminResponse) -> serde_json::Value {
    serde_json::from_str(&body(response)).expect("JSON body")
}
