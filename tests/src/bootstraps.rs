//! Bootstrap templates shared by several test files. Placeholders are `{{name}}` ports,
//! filled by [`crate::ports::Ports::render`].

use crate::ports::Ports;

/// Admin on `{{admin_port}}`; listener `http_listener` on `{{http_port}}` (HTTP connection
/// manager, stat prefix `e2e_http`, inline route config `e2e_route` sending everything to
/// cluster `backend`); listener `tcp_listener` on `{{tcp_port}}` (tcp_proxy, stat prefix
/// `e2e_tcp`, to `backend`); cluster `backend`, STATIC, one host at `{{upstream_port}}`.
pub const HTTP_AND_TCP: &str = r#"
node:
  id: e2e-node
  cluster: e2e-cluster
admin:
  address:
    socket_address: { address: 127.0.0.1, port_value: {{admin_port}} }
static_resources:
  listeners:
  - name: http_listener
    address:
      socket_address: { address: 127.0.0.1, port_value: {{http_port}} }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: e2e_http
          route_config:
            name: e2e_route
            virtual_hosts:
            - name: backend
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: backend }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  - name: tcp_listener
    address:
      socket_address: { address: 127.0.0.1, port_value: {{tcp_port}} }
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: e2e_tcp
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
              socket_address: { address: 127.0.0.1, port_value: {{upstream_port}} }
"#;

/// [`HTTP_AND_TCP`] with fresh ports and the upstream at `upstream_port`.
pub fn http_and_tcp(upstream_port: u16) -> (String, Ports) {
    let ports =
        Ports::new(&["admin_port", "http_port", "tcp_port"]).with("upstream_port", upstream_port);
    (ports.render(HTTP_AND_TCP), ports)
}

/// Admin on `{{admin}}` and one HTTP listener `l` on `{{listener}}` (stat prefix `l`, one
/// virtual host with `routes`, YAML list items at the route list's indentation) in front of
/// `clusters` (YAML list items at the cluster list's indentation): the frame of the tests that
/// compare how a proxy picks among a cluster's hosts.
pub fn one_listener(routes: &str, clusters: &str) -> String {
    format!(
        r#"
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{{{admin}}}} }} }}
static_resources:
  listeners:
  - name: l
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{{{listener}}}} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: l
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:{routes}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:{clusters}
"#
    )
}

/// `lb_endpoints` items for `hosts` of `cluster`, each at the port named `{{<cluster>_<host>}}`.
pub fn endpoint_items(cluster: &str, hosts: &[&str]) -> String {
    hosts
        .iter()
        .map(|h| {
            format!(
                "\n        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{{{{cluster}_{h}}}}} }} }} }}"
            )
        })
        .collect()
}
