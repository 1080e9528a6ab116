//! The Envoy v3 bootstrap served by both Envoy and Outrigger: static clusters, an HTTP
//! connection manager (codec AUTO, so the h2c listener is the same filter) with an inline
//! route to the HTTP cluster, a tcp_proxy listener, and the same connection manager behind a
//! `DownstreamTlsContext` that requires a client certificate (the mTLS hop). No admin, no
//! access log: neither proxy is asked to do more than the others.

use super::port;
use crate::scenario::{Job, Listener};
use std::fmt::Write;

pub fn bootstrap(job: &Job, block: u16) -> String {
    let mut y = String::from("static_resources:\n  listeners:\n");
    for listener in Listener::ALL {
        let p = port(block, listener);
        let name = format!("{listener:?}").to_lowercase();
        let _ = write!(
            y,
            "  - name: {name}\n    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {p} }} }}\n    filter_chains:\n"
        );
        if listener == Listener::Mtls {
            y.push_str(&mtls_socket(job));
            y.push_str("      filters:\n");
        } else {
            y.push_str("    - filters:\n");
        }
        y.push_str(&match listener {
            Listener::Http | Listener::H2c | Listener::Mtls => hcm(job, &name),
            Listener::Tcp => tcp_proxy(&name),
        });
    }
    y.push_str("  clusters:\n");
    y.push_str(&cluster(job.cluster, &job.http_endpoints));
    y.push_str(&cluster("tcp_backend", &job.tcp_endpoints));
    y
}

fn hcm(job: &Job, name: &str) -> String {
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
          - name: envoy.filters.http.router
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
}
