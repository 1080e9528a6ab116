//! Translation tests: what is accepted, and that every refusal names the field's path.

use super::matcher::RequestHead;
use super::translate_bootstrap;
use crate::bootstrap::{load, Sources};

fn translate(yaml: &str) -> Result<super::Config, String> {
    let sources = Sources {
        config_yaml: Some(yaml),
        ..Default::default()
    };
    let loaded = load(&sources).map_err(|e| e.to_string())?;
    translate_bootstrap(&loaded.bootstrap).map_err(|e| e.to_string())
}

fn listener(route_config: &str, extra_filters: &str) -> String {
    format!(
        r#"
static_resources:
  listeners:
  - name: l
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: s
          route_config: {route_config}
          http_filters:{extra_filters}
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
  - name: c
    load_assignment:
      cluster_name: c
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 1 }} }} }} }}] }}]
"#
    )
}

const ROUTES: &str = r#"{ virtual_hosts: [{ name: v, domains: ["*"], routes: [{ match: { prefix: "/" }, route: { cluster: c } }] }] }"#;

#[test]
fn the_embedded_default_translates() {
    let loaded = load(&Sources::default()).expect("default loads");
    assert!(loaded.is_default);
    let config = translate_bootstrap(&loaded.bootstrap).expect("default is valid");
    assert_eq!(config.listeners.len(), 1);
    assert!(config.acknowledged.is_empty(), "{:?}", config.acknowledged);
}

#[test]
fn a_valid_listener_translates() {
    let config = translate(&listener(ROUTES, "")).expect("valid");
    assert_eq!(config.clusters[0].name, "c");
}

#[test]
fn an_unknown_cluster_in_a_route_names_the_route() {
    let err = translate(&listener(
        &ROUTES.replace("cluster: c", "cluster: nope"),
        "",
    ))
    .expect_err("unknown cluster");
    assert_eq!(
        err,
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].routes[0].route.cluster: unknown cluster 'nope'"
    );
}

#[test]
fn an_unsupported_field_is_refused_with_its_path() {
    let routes = ROUTES.replace(
        "route: { cluster: c }",
        "route: { cluster: c, priority: HIGH, internal_redirect_policy: {} }",
    );
    let err = translate(&listener(&routes, "")).expect_err("unsupported");
    assert!(
        err.contains("routes[0].route.internal_redirect_policy: field not supported"),
        "{err}"
    );
}

#[test]
fn an_unknown_http_filter_is_refused_unless_optional() {
    let filter = r#"
          - name: custom
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer, max_request_bytes: 10 }"#;
    let err = translate(&listener(ROUTES, filter)).expect_err("unknown filter");
    assert!(
        err.contains(
            "http_filters[0].typed_config: didn't find a registered implementation for 'custom'"
        ),
        "{err}"
    );
    let optional = filter.replace(
        "- name: custom",
        "- name: custom\n            is_optional: true",
    );
    let config = translate(&listener(ROUTES, &optional)).expect("optional filter accepted");
    assert!(config
        .acknowledged
        .iter()
        .any(|a| a.path.ends_with("http_filters[0]")));
}

#[test]
fn the_router_must_be_last() {
    let yaml = listener(ROUTES, "").replace(
        "          - name: envoy.filters.http.router\n",
        "          - name: envoy.filters.http.router\n            typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }\n          - name: envoy.filters.http.router2\n",
    );
    let err = translate(&yaml).expect_err("router not last");
    assert!(
        err.contains("http_filters[0]: terminal filter named envoy.filters.http.router"),
        "{err}"
    );
}

#[test]
fn bad_regex_and_duplicate_domains_are_refused() {
    let bad_regex = ROUTES.replace(r#"prefix: "/""#, r#"safe_regex: { regex: "(" }"#);
    let err = translate(&listener(&bad_regex, "")).expect_err("bad regex");
    assert!(
        err.contains("routes[0].match.safe_regex.regex: invalid regex"),
        "{err}"
    );
    let dup = ROUTES.replace(r#"domains: ["*"]"#, r#"domains: ["a.com", "A.com"]"#);
    let err = translate(&listener(&dup, "")).expect_err("duplicate domain");
    assert!(
        err.contains("virtual_hosts[0].domains[1]: only unique values for domains are permitted"),
        "{err}"
    );
}

#[test]
fn domain_precedence_is_exact_then_suffix_then_prefix_then_default() {
    let routes = r#"{ virtual_hosts: [
        { name: default, domains: ["*"], routes: [] },
        { name: prefix, domains: ["foo.*"], routes: [] },
        { name: short-suffix, domains: ["*.com"], routes: [] },
        { name: long-suffix, domains: ["*.example.com"], routes: [] },
        { name: exact, domains: ["foo.example.com"], routes: [] } ] }"#;
    let config = translate(&listener(routes, "")).expect("valid");
    let crate::config::listener::NetworkFilter::HttpConnectionManager(hcm) =
        &config.listeners[0].filter_chains[0].filters[0]
    else {
        panic!("hcm expected");
    };
    let routes = hcm.routes.current();
    let vh = |host: &str| routes.virtual_host(host).map(|v| v.name.as_str());
    assert_eq!(vh("foo.example.com"), Some("exact"));
    assert_eq!(vh("FOO.example.com"), Some("exact"));
    assert_eq!(vh("bar.example.com"), Some("long-suffix"));
    assert_eq!(vh("bar.com"), Some("short-suffix"));
    assert_eq!(vh("foo.org"), Some("prefix"));
    assert_eq!(vh("other"), Some("default"));
}

#[test]
fn a_duplicate_listener_name_is_skipped_and_a_duplicate_address_refused() {
    let yaml = listener(ROUTES, "");
    let second = |port: u16| {
        format!("  - name: l\n    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}\n    filter_chains: [{{ filters: [{{ name: t, typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: t, cluster: c }} }}] }}]\n  clusters:\n")
    };
    let config =
        translate(&yaml.replace("  clusters:\n", &second(1))).expect("duplicate name is skipped");
    assert_eq!(config.listeners.len(), 1);
    assert!(config
        .acknowledged
        .iter()
        .any(|a| a.path == "static_resources.listeners[1]"));
    let same_address = yaml
        .replace("port_value: 0 }", "port_value: 7 }")
        .replace("  clusters:\n", &second(7).replace("name: l", "name: m"));
    let err = translate(&same_address).expect_err("duplicate address");
    assert!(
        err.starts_with(
            "static_resources.listeners[1].address: error adding listener '127.0.0.1:7'"
        ),
        "{err}"
    );
}

#[test]
fn logical_dns_needs_exactly_one_endpoint() {
    let yaml = listener(ROUTES, "").replace(
        "  - name: c\n",
        "  - name: c\n    type: LOGICAL_DNS\n",
    ).replace("lb_endpoints: [{", "lb_endpoints: [{ endpoint: { address: { socket_address: { address: localhost, port_value: 2 } } } }, {");
    let err = translate(&yaml).expect_err("two endpoints");
    assert!(
        err.contains(
            "static_resources.clusters[0].load_assignment: LOGICAL_DNS clusters must have a single"
        ),
        "{err}"
    );
}

#[test]
fn config_yaml_merges_like_protobuf_merge_from() {
    let base = listener(ROUTES, "");
    let dir = std::env::temp_dir().join(format!("outrigger-merge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("base.yaml");
    std::fs::write(&path, base).expect("write");
    let overlay = "node: { id: merged }\nstatic_resources: { clusters: [{ name: extra, load_assignment: { cluster_name: extra } }] }";
    let sources = Sources {
        config_path: Some(&path),
        config_yaml: Some(overlay),
        service_cluster: Some("flag-cluster"),
        ..Default::default()
    };
    let loaded = load(&sources).expect("loads");
    let _ = std::fs::remove_dir_all(&dir);
    let node = loaded.bootstrap.node.as_ref().expect("node");
    assert_eq!(node.id, "merged");
    assert_eq!(node.cluster, "flag-cluster");
    let names: Vec<_> = loaded
        .bootstrap
        .static_resources
        .as_ref()
        .expect("sr")
        .clusters
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, ["c", "extra"], "repeated fields append");
}

fn route_table(routes: &str) -> std::sync::Arc<crate::config::route::RouteConfig> {
    let config = translate(&listener(routes, "")).expect("valid");
    let crate::config::listener::NetworkFilter::HttpConnectionManager(hcm) =
        &config.listeners[0].filter_chains[0].filters[0]
    else {
        panic!("hcm expected");
    };
    hcm.routes.current()
}

#[test]
fn query_parameters_grpc_and_headers_narrow_routes() {
    let table = route_table(
        r#"{ virtual_hosts: [{ name: v, domains: ["*"], routes: [
            { name: q, match: { prefix: "/", query_parameters: [{ name: debug, string_match: { exact: "on%20now" } }] }, route: { cluster: c } },
            { name: p, match: { prefix: "/", query_parameters: [{ name: flag, present_match: true }] }, route: { cluster: c } },
            { name: g, match: { prefix: "/", grpc: {} }, route: { cluster: c } },
            { name: never, match: { prefix: "/", runtime_fraction: { default_value: { numerator: 0 } } }, route: { cluster: c } },
            { name: rest, match: { prefix: "/" }, route: { cluster: c } } ] }] }"#,
    );
    let mut headers = http::HeaderMap::new();
    let name = |path: &str, query: &str, h: &http::HeaderMap| {
        table
            .find_route("x", path, query, &RequestHead::headers_only(h))
            .map(|(_, r)| r.name.clone())
    };
    assert_eq!(
        name("/", "a=1&debug=on%20now", &headers).as_deref(),
        Some("q")
    );
    assert_eq!(name("/", "flag", &headers).as_deref(), Some("p"));
    assert_eq!(name("/", "debug=off", &headers).as_deref(), Some("rest"));
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc+proto"),
    );
    assert_eq!(name("/", "", &headers).as_deref(), Some("g"));
}

#[test]
fn weighted_clusters_split_by_weight_and_check_totals() {
    let table = route_table(
        r#"{ virtual_hosts: [{ name: v, domains: ["*"], routes: [{ match: { prefix: "/" },
            route: { weighted_clusters: { clusters: [{ name: c, weight: 30 }, { name: c, weight: 70 }] } } }] }] }"#,
    );
    let (_, route) = table
        .find_route(
            "x",
            "/",
            "",
            &RequestHead::headers_only(&http::HeaderMap::new()),
        )
        .expect("route");
    let crate::config::route::Action::Forward(f) = &route.action else {
        panic!("forward expected")
    };
    let weight_of = |draw| f.target.weighted_pick(draw).map(|w| w.weight);
    assert_eq!(weight_of(0), Some(30));
    assert_eq!(weight_of(29), Some(30));
    assert_eq!(weight_of(30), Some(70));
    assert_eq!(weight_of(99), Some(70));
    let err = translate(&listener(
        r#"{ virtual_hosts: [{ name: v, domains: ["*"], routes: [{ match: { prefix: "/" },
            route: { weighted_clusters: { total_weight: 50, clusters: [{ name: c, weight: 30 }] } } }] }] }"#,
        "",
    ))
    .expect_err("total mismatch");
    assert!(
        err.contains("weighted_clusters.total_weight: sum of weights"),
        "{err}"
    );
}

#[test]
fn routes_match_pseudo_headers() {
    let table = route_table(
        r#"{ virtual_hosts: [{ name: v, domains: ["*"], routes: [
            { name: post, match: { prefix: "/", headers: [{ name: ":method", string_match: { exact: POST } }] }, route: { cluster: c } },
            { name: host, match: { prefix: "/", headers: [{ name: ":authority", string_match: { prefix: "api." } }] }, route: { cluster: c } },
            { name: https, match: { prefix: "/", headers: [{ name: ":scheme", string_match: { exact: https } }] }, route: { cluster: c } },
            { name: query, match: { prefix: "/", headers: [{ name: ":path", string_match: { suffix: "?v=1" } }] }, route: { cluster: c } },
            { name: rest, match: { prefix: "/" }, route: { cluster: c } } ] }] }"#,
    );
    let headers = http::HeaderMap::new();
    let name = |method: &str, authority: &str, scheme: &str, path: &str| {
        let head = RequestHead {
            headers: &headers,
            method: Some(method),
            authority: Some(authority),
            path: Some(path),
            scheme: Some(scheme),
        };
        let (p, q) = path.split_once('?').unwrap_or((path, ""));
        table
            .find_route(authority, p, q, &head)
            .map(|(_, r)| r.name.clone())
            .unwrap_or_default()
    };
    assert_eq!(name("POST", "x", "http", "/"), "post");
    assert_eq!(name("GET", "api.x", "http", "/"), "host");
    assert_eq!(name("GET", "x", "https", "/"), "https");
    assert_eq!(name("GET", "x", "http", "/a?v=1"), "query");
    assert_eq!(name("GET", "x", "http", "/a"), "rest");
}

#[test]
fn indexed_route_lookup_keeps_first_match_order() {
    // More routes than the index threshold, mixing exact, prefix, separated-prefix, regex and
    // header-conditioned routes; the index must pick what a scan in order would.
    let routes = r#"{ virtual_hosts: [{ name: v, domains: ["*"], routes: [
        { name: r0, match: { path: "/exact", headers: [{ name: x-a, present_match: true }] }, route: { cluster: c } },
        { name: r1, match: { prefix: "/api/v1/" }, route: { cluster: c } },
        { name: r2, match: { path: "/exact" }, route: { cluster: c } },
        { name: r3, match: { safe_regex: { regex: "/api/v1/special.*" } }, route: { cluster: c } },
        { name: r4, match: { prefix: "/api/" }, route: { cluster: c } },
        { name: r5, match: { path_separated_prefix: "/docs" }, route: { cluster: c } },
        { name: r6, match: { prefix: "/API/", case_sensitive: false }, route: { cluster: c } },
        { name: r7, match: { safe_regex: { regex: "/early.*" } }, route: { cluster: c } },
        { name: r8, match: { prefix: "/early/" }, route: { cluster: c } },
        { name: r9, match: { prefix: "/" }, route: { cluster: c } } ] }] }"#;
    let table = route_table(routes);
    let mut with_header = http::HeaderMap::new();
    with_header.insert("x-a", http::HeaderValue::from_static("1"));
    let none = http::HeaderMap::new();
    let name = |path: &str, h: &http::HeaderMap| {
        table
            .find_route("h", path, "", &RequestHead::headers_only(h))
            .map(|(_, r)| r.name.clone())
            .unwrap_or_default()
    };
    assert_eq!(name("/exact", &with_header), "r0");
    assert_eq!(name("/exact", &none), "r2");
    assert_eq!(
        name("/api/v1/special", &none),
        "r1",
        "the earlier prefix beats the later regex"
    );
    assert_eq!(name("/api/v2", &none), "r4");
    assert_eq!(name("/API/v2", &none), "r6");
    assert_eq!(name("/docs/x", &none), "r5");
    assert_eq!(
        name("/docsx", &none),
        "r9",
        "separated prefix needs a boundary"
    );
    assert_eq!(
        name("/early/x", &none),
        "r7",
        "the earlier regex beats the later prefix"
    );
    assert_eq!(name("/zzz", &none), "r9");
}

/// The config boundary never panics: mutated encodings of a valid bootstrap (bit flips,
/// truncations, splices) either fail to decode or translate to a result, never a panic.
#[test]
fn mutated_bootstraps_never_panic_the_translator() {
    use xds_proto::XdsMessage;
    let valid = load(&Sources {
        config_yaml: Some(&listener(ROUTES, "")),
        ..Default::default()
    })
    .expect("valid")
    .bootstrap;
    let bytes = valid.encode_bytes();
    let mut translated = 0;
    for round in 0..3000u64 {
        let mut mutated = bytes.clone();
        let r = crate::random::next_u64();
        match round % 3 {
            0 => {
                let i = (r as usize) % mutated.len();
                mutated[i] ^= 1 << ((r >> 32) % 8);
            }
            1 => mutated.truncate((r as usize) % mutated.len()),
            _ => {
                let at = (r as usize) % mutated.len();
                let len = ((r >> 20) as usize) % 16;
                let junk: Vec<u8> = (0..len).map(|k| (r >> (k % 8)) as u8).collect();
                mutated.splice(at..at, junk);
            }
        }
        if let Ok(b) =
            xds_proto::pb::envoy::config::bootstrap::v3::Bootstrap::decode_bytes(&mutated)
        {
            let _ = translate_bootstrap(&b);
            translated += 1;
        }
    }
    assert!(
        translated > 100,
        "the mutations should mostly still decode ({translated})"
    );
}

fn cluster_with(lb: &str) -> Result<super::Config, String> {
    translate(&format!(
        r#"
static_resources:
  clusters:
  - name: c
{lb}
    load_assignment:
      cluster_name: c
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 1 }} }} }} }}] }}]
"#
    ))
}

#[test]
fn load_balancing_policies_translate_with_envoy_defaults() {
    use crate::config::load_balancing::LbPolicy;
    let lb = |yaml: &str| cluster_with(yaml).map(|c| c.clusters[0].lb.clone());
    assert_eq!(lb(""), Ok(LbPolicy::RoundRobin));
    assert_eq!(
        lb("    lb_policy: LEAST_REQUEST"),
        Ok(LbPolicy::LeastRequest {
            choice_count: 2,
            active_request_bias: 1.0
        })
    );
    assert_eq!(
        lb("    lb_policy: RING_HASH\n    ring_hash_lb_config: { minimum_ring_size: 64 }"),
        Ok(LbPolicy::RingHash {
            min_ring_size: 64,
            max_ring_size: 8 << 20,
            use_hostname: false
        })
    );
    assert_eq!(
        lb("    lb_policy: MAGLEV"),
        Ok(LbPolicy::Maglev {
            table_size: 65537,
            use_hostname: false
        })
    );
    // The first policy Outrigger knows wins; an unknown type before it is skipped.
    let typed = r#"    load_balancing_policy:
      policies:
      - typed_extension_config: { name: x, typed_config: { "@type": type.googleapis.com/google.protobuf.Struct, value: {} } }
      - typed_extension_config: { name: r, typed_config: { "@type": type.googleapis.com/envoy.extensions.load_balancing_policies.random.v3.Random } }
      - typed_extension_config: { name: m, typed_config: { "@type": type.googleapis.com/envoy.extensions.load_balancing_policies.maglev.v3.Maglev } }"#;
    assert_eq!(lb(typed), Ok(LbPolicy::Random));
    let err = lb("    lb_policy: MAGLEV\n    maglev_lb_config: { table_size: 100 }")
        .expect_err("not prime");
    assert!(
        err.contains("clusters[0].maglev_lb_config.table_size"),
        "{err}"
    );
    let err = lb("    type: ORIGINAL_DST\n    lb_policy: RING_HASH").expect_err("original dst");
    assert!(err.contains("clusters[0].lb_policy"), "{err}");
}

/// Istio's inbound TCP chain: metadata exchange and stats ahead of tcp_proxy. The exchange
/// is acknowledged (it cannot change the connection's bytes), the stats turn on the
/// tcp_proxy's Istio metrics; an unknown TypedStruct, or an Istio filter in the terminal
/// position, is refused.
#[test]
fn istio_network_filters_ahead_of_tcp_proxy_are_taken() {
    let chain = |filters: &str| {
        format!(
            "static_resources:\n  listeners:\n  - name: l\n    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}\n    filter_chains: [{{ filters: [{filters}] }}]\n  clusters:\n  - {{ name: c, load_assignment: {{ cluster_name: c }} }}\n"
        )
    };
    let mx = r#"{ name: istio.metadata_exchange, typed_config: { "@type": type.googleapis.com/udpa.type.v1.TypedStruct, type_url: type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange, value: { protocol: istio-peer-exchange, enable_discovery: true } } }"#;
    let stats = r#"{ name: istio.stats, typed_config: { "@type": type.googleapis.com/udpa.type.v1.TypedStruct, type_url: type.googleapis.com/stats.PluginConfig, value: {} } }"#;
    let tcp = r#"{ name: t, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: t, cluster: c } }"#;
    let config = translate(&chain(&format!("{mx}, {stats}, {tcp}"))).expect("Istio's TCP chain");
    let acked: Vec<&str> = config
        .acknowledged
        .iter()
        .filter(|a| a.path.contains("filters["))
        .map(|a| a.path.as_str())
        .collect();
    assert_eq!(acked.len(), 1, "{:?}", config.acknowledged);
    assert!(acked[0].ends_with("filters[0].typed_config"), "{acked:?}");
    let with_stats = config.listeners[0].filter_chains[0]
        .filters
        .iter()
        .any(|f| matches!(f, super::listener::NetworkFilter::TcpProxy(t) if t.istio.is_some()));
    assert!(with_stats, "istio.stats reaches the tcp_proxy");
    let unknown = r#"{ name: x, typed_config: { "@type": type.googleapis.com/udpa.type.v1.TypedStruct, type_url: type.googleapis.com/some.Other, value: {} } }"#;
    let err = translate(&chain(&format!("{unknown}, {tcp}"))).expect_err("unknown filter");
    assert!(err.contains("filters[0].typed_config"), "{err}");
    let err = translate(&chain(mx)).expect_err("MX alone is no terminal filter");
    assert!(err.contains("filters[0].typed_config"), "{err}");
}

/// https://www.envoyproxy.io/docs/envoy/latest/configuration/listeners/listener_filters/original_src_filter
#[test]
fn original_src_keeps_its_mark_and_refuses_bind_port_by_path() {
    let with = |config: &str| {
        listener(ROUTES, "").replace(
            "    filter_chains:",
            &format!(
                "    listener_filters:\n    - name: envoy.filters.listener.original_src\n      typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.filters.listener.original_src.v3.OriginalSrc, {config} }}\n    filter_chains:"
            ),
        )
    };
    let config = translate(&with("mark: 1337")).expect("translates");
    assert_eq!(config.listeners[0].original_src, Some(1337));
    let e = translate(&with("bind_port: true")).expect_err("refused");
    assert!(
        e.contains("static_resources.listeners[0].listener_filters[0].typed_config.bind_port"),
        "{e}"
    );
}

/// Istio's mesh clusters: its TCP metadata exchange as an upstream network filter (nothing to
/// do, Outrigger never negotiates its ALPN) and a c-ares resolver with tuning only; an upstream
/// filter of another kind, or a resolver list, is refused by path.
#[test]
fn istio_cluster_filters_and_dns_resolver_config() {
    let cluster = |extra: &str| {
        format!(
            r#"
static_resources:
  clusters:
  - name: c
    type: STRICT_DNS
    connect_timeout: 1s
{extra}
    load_assignment:
      cluster_name: c
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: localhost, port_value: 1 }} }} }} }}] }}]
"#
        )
    };
    let mx = r#"    filters:
    - name: istio.metadata_exchange
      typed_config: { "@type": type.googleapis.com/udpa.type.v1.TypedStruct, type_url: type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange, value: { protocol: istio-peer-exchange } }
    typed_dns_resolver_config:
      name: envoy.network.dns_resolver.cares
      typed_config: { "@type": type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig, udp_max_queries: 100 }"#;
    translate(&cluster(mx)).expect("Istio's cluster translates");
    let other = r#"    filters:
    - name: other
      typed_config: { "@type": type.googleapis.com/udpa.type.v1.TypedStruct, type_url: type.googleapis.com/some.Other, value: {} }"#;
    let e = translate(&cluster(other)).expect_err("refused");
    assert!(
        e.contains("static_resources.clusters[0].filters[0].typed_config"),
        "{e}"
    );
    let resolvers = r#"    typed_dns_resolver_config:
      name: envoy.network.dns_resolver.cares
      typed_config: { "@type": type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig, resolvers: [{ socket_address: { address: 8.8.8.8, port_value: 53 } }] }"#;
    let e = translate(&cluster(resolvers)).expect_err("refused");
    assert!(
        e.contains("static_resources.clusters[0].typed_dns_resolver_config.typed_config.resolvers"),
        "{e}"
    );
}

/// Envoy reads a data source's file when the configuration loads, holds it to the direct
/// response limit, and names a missing file.
/// Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/base.proto#config-core-v3-datasource
#[test]
fn a_direct_response_body_is_read_from_its_file_within_the_limit() {
    let dir = tempfile::tempdir().expect("a directory");
    let file = dir.path().join("body.txt");
    let routes = |file: &std::path::Path| {
        ROUTES.replace(
            "route: { cluster: c }",
            &format!(
                "direct_response: {{ status: 200, body: {{ filename: {} }} }}",
                file.display()
            ),
        )
    };
    let body_path = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].routes[0].direct_response.body.filename";
    std::fs::write(&file, "from a file\n").expect("write");
    assert!(translate(&listener(&routes(&file), "")).is_ok());
    std::fs::write(&file, vec![b'a'; 5000]).expect("write");
    let err = translate(&listener(&routes(&file), "")).expect_err("too large");
    assert_eq!(
        err,
        format!(
            "{body_path}: file {} size is 5000 bytes; maximum is 4096",
            file.display()
        )
    );
    let missing = dir.path().join("missing.txt");
    let err = translate(&listener(&routes(&missing), "")).expect_err("missing");
    assert_eq!(
        err,
        format!("{body_path}: file {} does not exist", missing.display())
    );
}
