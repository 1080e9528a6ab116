//! Inputs shared by Outrigger's benchmarks: generated bootstraps of a given size.

/// A bootstrap with one listener whose route table has `routes` exact-path routes in one
/// virtual host (plus `hosts` extra virtual hosts), all to one static cluster.
pub fn bootstrap_with_routes(routes: usize, hosts: usize) -> String {
    let mut yaml = String::from(
        r#"static_resources:
  clusters:
  - name: backend
    load_assignment:
      cluster_name: backend
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 8080 } } } }] }]
  listeners:
  - name: bench
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          http_filters: [{ name: router, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router } }]
          route_config:
            virtual_hosts:
"#,
    );
    for h in 0..hosts {
        yaml.push_str(&format!(
            "            - {{ name: h{h}, domains: [\"host{h}.example.com\"], routes: [{{ match: {{ prefix: \"/\" }}, route: {{ cluster: backend }} }}] }}\n"
        ));
    }
    yaml.push_str(
        "            - name: main\n              domains: [\"*\"]\n              routes:\n",
    );
    for r in 0..routes {
        yaml.push_str(&format!(
            "              - {{ match: {{ path: \"/api/v1/resource{r}\" }}, route: {{ cluster: backend }} }}\n"
        ));
    }
    yaml
}
