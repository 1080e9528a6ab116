//! The Envoy v3 bootstrap served by both Envoy and Outrigger: static clusters, an HTTP
//! connection manager (codec AUTO, so the h2c listener is the same filter) with an inline
//! route to the HTTP cluster, a tcp_proxy listener, and the same connection manager behind a
//! `DownstreamTlsContext` that requires a client certificate (the mTLS hop). No admin, no
//! access log: neither proxy is asked to do more than the others.
//!
//! [`istio_bootstrap`] is the same with Istio's HTTP chain in front of the router (metadata
//! exchange and `istio.stats`, as an outbound sidecar listener has them) and a sidecar's
//! node metadata, for Outrigger only: it measures what Istio's telemetry costs.

use super::port;
use crate::scenario::{Job, Listener};
use std::fmt::Write;

pub fn bootstrap(job: &Job, block: u16) -> String {
    with_chain(job, block, false)
}

/// The bootstrap with Istio's HTTP chain on the HTTP listeners (see the module comment).
pub fn istio_bootstrap(job: &Job, block: u16) -> String {
    with_chain(job, block, true)
}

/// Node metadata of an Istio sidecar (its local labels in the metrics).
const ISTIO_NODE: &str = r#"node:
  id: "sidecar~10.0.0.1~bench-v1-abcde.default~default.svc.cluster.local"
  cluster: bench.default
  metadata:
    WORKLOAD_NAME: bench-v1
    NAMESPACE: default
    CLUSTER_ID: Kubernetes
    ISTIO_VERSION: 1.24.2
    LABELS: { app: bench, version: v1, service.istio.io/canonical-name: bench, service.istio.io/canonical-revision: v1 }
"#;

/// Istio's outbound HTTP filters before the router: metadata exchange, then the stats filter.
const ISTIO_FILTERS: &str = r#"          - name: istio.metadata_exchange
            typed_config:
              "@type": type.googleapis.com/udpa.type.v1.TypedStruct
              type_url: type.googleapis.com/io.istio.http.peer_metadata.Config
              value: { upstream_discovery: [{ istio_headers: {} }, { workload_discovery: {} }], upstream_propagation: [{ istio_headers: {} }] }
          - name: istio.stats
            typed_config:
              "@type": type.googleapis.com/udpa.type.v1.TypedStruct
              type_url: type.googleapis.com/stats.PluginConfig
              value: {}
"#;

fn with_chain(job: &Job, block: u16, istio: bool) -> String {
    let mut y = String::new();
    if istio {
        y.push_str(ISTIO_NODE);
    }
    y.push_str("static_resources:\n  listeners:\n");
    for listener in Listener::ALL {
        let p = port(block, listener);
        let name = format!("{listener:?}").to_lowercase();
        let _ = write!(
            y,
            "  - name: {name}\n    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {p} }} }}\n"
        );
        if istio {
            y.push_str("    traffic_direction: OUTBOUND\n");
        }
        y.push_str("    filter_chains:\n");
        if listener == Listener::Mtls {
            y.push_str(&mtls_socket(job));
            y.push_str("      filters:\n");
        } else {
            y.push_str("    - filters:\n");
        }
        y.push_str(&match listener {
            Listener::Http | Listener::H2c | Listener::Mtls => {
                hcm(job, &name, if istio { ISTIO_FILTERS } else { "" })
            }
            Listener::Tcp => tcp_proxy(&name),
        });
    }
    y.push_str("  clusters:\n");
    y.push_str(&cluster(job.cluster, &job.http_endpoints));
    y.push_str(&cluster("tcp_backend", &job.tcp_endpoints));
    y
}

fn hcm(job: &Job, name: &str, filters: &str) -> String {
    format!(
        r#"      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          codec_type: AUTO
          route_config:
            name: local
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: {cluster} }}
          http_filters:
{filters}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#,
        cluster = job.cluster
    )
}

/// The server certificate and the CA client certificates must chain to, from files.
fn mtls_socket(job: &Job) -> String {
    let tls = &job.tls;
    format!(
        r#"    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificates: [{{ certificate_chain: {{ filename: "{cert}" }}, private_key: {{ filename: "{key}" }} }}]
            validation_context: {{ trusted_ca: {{ filename: "{ca}" }} }}
"#,
        cert = tls.server.cert.display(),
        key = tls.server.key.display(),
        ca = tls.ca.display(),
    )
}

fn tcp_proxy(name: &str) -> String {
    format!(
        r#"      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: {name}
          cluster: tcp_backend
"#
    )
}

fn cluster(name: &str, ports: &[u16; 2]) -> String {
    let mut c = format!(
        "  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n    lb_policy: ROUND_ROBIN\n    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n"
    );
    for p in ports {
        let _ = writeln!(
            c,
            "        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {p} }} }} }}"
        );
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bootstrap_is_yaml_with_four_listeners_and_two_clusters() {
        let y = bootstrap(&crate::configs::test_job(), 19010);
        assert_eq!(y.matches("- name: http\n").count(), 1);
        assert_eq!(y.matches("port_value: 1901").count(), 4);
        assert!(y.contains("require_client_certificate: true"));
        assert_eq!(y.matches("type: STATIC").count(), 2);
        assert!(y.contains("port_value: 19001") && y.contains("port_value: 19004"));
    }

    #[test]
    fn the_istio_bootstrap_adds_the_chain_to_the_http_listeners_only() {
        let y = istio_bootstrap(&crate::configs::test_job(), 19050);
        // HTTP/1.1, h2c and the mTLS hop; not the TCP listener.
        assert_eq!(y.matches("- name: istio.stats").count(), 3);
        assert_eq!(y.matches("- name: istio.metadata_exchange").count(), 3);
        assert!(y.starts_with("node:") && y.contains("WORKLOAD_NAME: bench-v1"));
        assert_eq!(
            bootstrap(&crate::configs::test_job(), 19050)
                .matches("istio")
                .count(),
            0
        );
    }
}
