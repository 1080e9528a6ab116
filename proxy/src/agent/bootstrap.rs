//! The static bootstrap pilot-agent would render from Istio's template, built in memory: admin
//! on loopback, the `prometheus_stats`, `agent`, `sds-grpc` and `xds-grpc` clusters, the
//! :15090 stats and :15021 readiness listeners, Istio's stats tags and inclusion list, and ADS
//! for everything else. The one difference from pilot-agent's rendering is deliberate:
//! `xds-grpc` goes straight to istiod (TLS, token) instead of to an agent relay on a Unix
//! socket, because agent and proxy are one process.

use super::node::Node;
use serde_json::{json, Value};

/// Where the control plane is and how to reach it.
#[derive(Debug, Clone)]
pub struct XdsTarget {
    pub host: String,
    pub port: u16,
    /// None: plaintext (port 15010 or `controlPlaneAuthPolicy: NONE`).
    pub tls: Option<XdsTls>,
    /// `ISTIO_META_CLUSTER_ID`, sent as gRPC metadata `ClusterID` as pilot-agent sends it.
    pub cluster_id: String,
    /// `DELTA_GRPC` unless `ISTIO_DELTA_XDS=false`.
    pub delta: bool,
}

#[derive(Debug, Clone)]
pub struct XdsTls {
    /// The root certificate file istiod's serving certificate chains to.
    pub root_ca_path: String,
    /// The name istiod's certificate must carry (ISTIOD_SAN, else the discovery host).
    pub server_name: String,
}

#[derive(Debug, Clone)]
pub struct BootstrapInputs<'a> {
    pub node: &'a Node,
    pub admin_port: u16,
    /// The agent's status server (cluster `agent`).
    pub agent_port: u16,
    /// Envoy's readiness listener (`ENVOY_STATUS_PORT`, 15021).
    pub envoy_status_port: u16,
    /// Envoy's Prometheus listener (`ENVOY_PROMETHEUS_PORT`, 15090).
    pub prometheus_port: u16,
    /// The SDS socket, relative to the working directory as in Istio's bootstrap.
    pub sds_socket: String,
    pub xds: XdsTarget,
    /// IPv6-only pods listen on `::`.
    pub ipv6_only: bool,
    pub outlier_log_path: Option<String>,
    pub extra_inclusion_prefixes: Vec<String>,
    pub extra_inclusion_suffixes: Vec<String>,
    pub extra_inclusion_regexps: Vec<String>,
    /// EXIT_ON_ZERO_ACTIVE_CONNECTIONS needs `downstream_cx_active` kept.
    pub keep_downstream_cx_active: bool,
}

/// Istio's `stats_tags`, in the template's order (tag name, regex).
const STATS_TAGS: &[(&str, &str)] = &[
    ("cluster_name", r"^cluster(\.(.+);)"),
    (
        "http_conn_manager_prefix",
        r"^http\.(((?:[_.[:digit:]\w]*|[_\[\]aAbBcCdDeEfF[:digit:]\w\:]*));\.)",
    ),
    ("thread_name", r"^server(\.(.+))\.watchdog"),
    ("tcp_prefix", r"^tcp\.((.*?)\.)\w+?$"),
    ("response_code", r"_rq(_(\d{3}))$"),
    ("response_code_class", r"_rq(_(\dxx))$"),
    (
        "http_conn_manager_listener_prefix",
        r"^listener(?=\.).*?\.http\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)",
    ),
    (
        "listener_address",
        r"^listener\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)",
    ),
    (
        "mongo_prefix",
        r"^mongo\.(.+?)\.(collection|cmd|cx_|op_|delays_|decoding_)(.*?)$",
    ),
    ("cache", r"(cache\.(.+?)\.)"),
    ("component", r"(component\.(.+?)\.)"),
    ("tag", r"(tag\.(.+?);\.)"),
    ("wasm_filter", r"(wasm_filter\.(.+?)\.)"),
    ("authz_enforce_result", r"rbac(\.(allowed|denied))"),
    ("authz_dry_run_action", r"(\.istio_dry_run_(allow|deny)_)"),
    ("authz_dry_run_result", r"(\.shadow_(allowed|denied))"),
];

fn socket_address(address: &str, port: u16) -> Value {
    json!({"socket_address": {"protocol": "TCP", "address": address, "port_value": port}})
}

fn static_cluster(name: &str, address: Value, connect_timeout: &str) -> Value {
    json!({
        "name": name,
        "alt_stat_name": format!("{name};"),
        "type": "STATIC",
        "connect_timeout": connect_timeout,
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}]
        }
    })
}

fn http2_only() -> Value {
    json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}
        }
    })
}

fn router() -> Value {
    json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    })
}

fn compressor(library: &str, name: &str, type_name: &str) -> Value {
    json!({
        "name": format!("envoy.filters.http.compressor.{library}"),
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor",
            "compressor_library": {"name": name, "typed_config": {"@type": type_name}},
            "response_direction_config": {"common_config": {"content_type": [
                "text/plain", "application/vnd.google.protobuf",
                "application/openmetrics-text", "application/openmetrics-protobuf"
            ]}}
        }
    })
}

fn http_listener(
    wildcard: &str,
    port: u16,
    stat_prefix: &str,
    prefix: &str,
    cluster: &str,
    filters: Vec<Value>,
) -> Value {
    json!({
        "name": format!("{wildcard}_{port}"),
        "address": socket_address(wildcard, port),
        "ignore_global_conn_limit": true,
        "bypass_overload_manager": true,
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "codec_type": "AUTO",
                "stat_prefix": stat_prefix,
                "route_config": {"virtual_hosts": [{
                    "name": "backend",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": prefix}, "route": {"cluster": cluster}}]
                }]},
                "http_filters": filters
            }
        }]}]
    })
}

fn xds_cluster(xds: &XdsTarget) -> Value {
    let is_ip = xds.host.parse::<std::net::IpAddr>().is_ok();
    let mut cluster = static_cluster("xds-grpc", socket_address(&xds.host, xds.port), "1s");
    cluster["type"] = json!(if is_ip { "STATIC" } else { "STRICT_DNS" });
    cluster["circuit_breakers"] = json!({"thresholds": [
        {"priority": "DEFAULT", "max_connections": 100000, "max_pending_requests": 100000, "max_requests": 100000},
        {"priority": "HIGH", "max_connections": 100000, "max_pending_requests": 100000, "max_requests": 100000}
    ]});
    cluster["upstream_connection_options"] = json!({"tcp_keepalive": {"keepalive_time": 300}});
    cluster["max_requests_per_connection"] = json!(1);
    cluster["typed_extension_protocol_options"] = http2_only();
    if let Some(tls) = &xds.tls {
        cluster["transport_socket"] = json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": tls.server_name,
                "common_tls_context": {
                    "alpn_protocols": ["h2"],
                    "validation_context": {
                        "trusted_ca": {"filename": tls.root_ca_path},
                        "match_typed_subject_alt_names": [
                            {"san_type": "DNS", "matcher": {"exact": tls.server_name}}
                        ]
                    }
                }
            }
        });
    }
    cluster
}

fn stats_matcher(inputs: &BootstrapInputs<'_>) -> Value {
    let mut patterns = vec![json!({"prefix": "reporter="})];
    patterns.extend(
        inputs
            .extra_inclusion_prefixes
            .iter()
            .map(|p| json!({ "prefix": p })),
    );
    for p in [
        "cluster_manager",
        "listener_manager",
        "server",
        "cluster.xds-grpc",
        "wasm",
    ] {
        patterns.push(json!({ "prefix": p }));
    }
    patterns.extend(
        inputs
            .extra_inclusion_suffixes
            .iter()
            .map(|s| json!({ "suffix": s })),
    );
    for s in [
        "rbac.allowed",
        "rbac.denied",
        "shadow_allowed",
        "shadow_denied",
    ] {
        patterns.push(json!({ "suffix": s }));
    }
    if inputs.keep_downstream_cx_active {
        patterns.push(json!({"suffix": "downstream_cx_active"}));
    }
    patterns.extend(
        inputs
            .extra_inclusion_regexps
            .iter()
            .map(|r| json!({"safe_regex": {"regex": r}})),
    );
    patterns.push(json!({"safe_regex": {"regex": r"vhost\..*\.route\..*"}}));
    patterns.push(json!({"prefix": "component"}));
    patterns.push(json!({"prefix": "istio"}));
    json!({"inclusion_list": {"patterns": patterns}})
}

/// The bootstrap document (Envoy's JSON mapping).
pub fn render(inputs: &BootstrapInputs<'_>) -> Value {
    let node = inputs.node;
    let wildcard = if inputs.ipv6_only { "::" } else { "0.0.0.0" };
    let loopback = if inputs.ipv6_only { "::1" } else { "127.0.0.1" };
    let mut locality = json!({});
    if let Some((region, zone, sub_zone)) = &node.locality {
        for (k, v) in [("region", region), ("zone", zone), ("sub_zone", sub_zone)] {
            if !v.is_empty() {
                locality[k] = json!(v);
            }
        }
    }
    let mut ads_service = json!({"envoy_grpc": {"cluster_name": "xds-grpc"}});
    if !inputs.xds.cluster_id.is_empty() {
        ads_service["initial_metadata"] =
            json!([{"key": "clusterid", "value": inputs.xds.cluster_id}]);
    }
    let stats_tags: Vec<Value> = STATS_TAGS
        .iter()
        .map(|(tag, regex)| json!({"tag_name": tag, "regex": regex}))
        .collect();
    let mut sds = static_cluster(
        "sds-grpc",
        json!({"pipe": {"path": inputs.sds_socket}}),
        "1s",
    );
    sds["typed_extension_protocol_options"] = http2_only();
    let stats_filters = vec![
        compressor(
            "brotli",
            "stats_brotli",
            "type.googleapis.com/envoy.extensions.compression.brotli.compressor.v3.Brotli",
        ),
        compressor(
            "zstd",
            "stats_zstd",
            "type.googleapis.com/envoy.extensions.compression.zstd.compressor.v3.Zstd",
        ),
        compressor(
            "gzip",
            "stats_gzip",
            "type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip",
        ),
        router(),
    ];
    let mut document = json!({
        "node": {
            "id": node.id,
            "cluster": node.cluster,
            "locality": locality,
            "metadata": node.metadata,
        },
        "stats_config": {
            "use_all_default_tags": false,
            "stats_tags": stats_tags,
            "stats_matcher": stats_matcher(inputs),
        },
        "admin": {
            "access_log": [{
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": "/dev/null"
                }
            }],
            "address": socket_address(loopback, inputs.admin_port),
        },
        "dynamic_resources": {
            "lds_config": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"},
            "cds_config": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"},
            "ads_config": {
                "api_type": if inputs.xds.delta { "DELTA_GRPC" } else { "GRPC" },
                "set_node_on_first_message_only": true,
                "transport_api_version": "V3",
                "grpc_services": [ads_service],
            },
        },
        "static_resources": {
            "clusters": [
                static_cluster("prometheus_stats", socket_address(loopback, inputs.admin_port), "0.250s"),
                static_cluster("agent", socket_address(loopback, inputs.agent_port), "0.250s"),
                sds,
                xds_cluster(&inputs.xds),
            ],
            "listeners": [
                http_listener(wildcard, inputs.prometheus_port, "stats", "/stats/prometheus", "prometheus_stats", stats_filters),
                http_listener(wildcard, inputs.envoy_status_port, "agent", "/healthz/ready", "agent", vec![router()]),
            ],
        },
    });
    if let Some(path) = &inputs.outlier_log_path {
        document["cluster_manager"] = json!({"outlier_detection": {"event_log_path": path}});
    }
    document
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::node::Node;

    fn golden() -> Value {
        // Istio's rendered default bootstrap, cloned beside the repository.
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/vectors/istio-bootstrap/default_golden.json");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).expect("golden JSON")
    }

    fn inputs<'a>(node: &'a Node, tls: Option<XdsTls>) -> BootstrapInputs<'a> {
        BootstrapInputs {
            node,
            admin_port: 15000,
            agent_port: 15020,
            envoy_status_port: 15021,
            prometheus_port: 15090,
            sds_socket: "./var/run/secrets/workload-spiffe-uds/test.sock".into(),
            xds: XdsTarget {
                host: "istiod.istio-system.svc".into(),
                port: 15012,
                tls,
                cluster_id: "Kubernetes".into(),
                delta: true,
            },
            ipv6_only: false,
            outlier_log_path: None,
            extra_inclusion_prefixes: vec![],
            extra_inclusion_suffixes: vec![],
            extra_inclusion_regexps: vec![],
            keep_downstream_cx_active: false,
        }
    }

    fn node() -> Node {
        Node {
            id: "sidecar~1.2.3.4~foo~bar".into(),
            cluster: "istio-proxy".into(),
            locality: None,
            metadata: serde_json::Map::new(),
        }
    }

    /// Everything but `xds-grpc` is what pilot-agent renders (its golden `default`).
    #[test]
    fn static_parts_match_istios_rendered_bootstrap() {
        let node = node();
        let ours = render(&inputs(&node, None));
        let golden = golden();
        assert_eq!(
            ours["static_resources"]["listeners"],
            golden["static_resources"]["listeners"]
        );
        let clusters = |doc: &Value| -> Vec<Value> {
            doc["static_resources"]["clusters"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|c| c["name"] != "xds-grpc")
                .collect()
        };
        assert_eq!(clusters(&ours), clusters(&golden));
        assert_eq!(ours["stats_config"], golden["stats_config"]);
        assert_eq!(
            ours["dynamic_resources"],
            golden["dynamic_resources"].clone().tap(|d| {
                d["ads_config"]["grpc_services"][0]["initial_metadata"] =
                    json!([{"key": "clusterid", "value": "Kubernetes"}]);
            })
        );
    }

    #[test]
    fn xds_goes_to_istiod_over_tls_and_translates() {
        let node = node();
        let root = std::env::temp_dir().join(format!("outrigger-root-{}.pem", std::process::id()));
        let ca = rcgen::generate_simple_self_signed(vec!["istiod".to_string()]).expect("a CA");
        std::fs::write(&root, ca.cert.pem()).expect("write the root");
        let doc = render(&inputs(
            &node,
            Some(XdsTls {
                root_ca_path: root.display().to_string(),
                server_name: "istiod.istio-system.svc".into(),
            }),
        ));
        let xds = &doc["static_resources"]["clusters"][3];
        assert_eq!(xds["type"], "STRICT_DNS");
        assert_eq!(
            xds["transport_socket"]["typed_config"]["sni"],
            "istiod.istio-system.svc"
        );
        let parsed =
            xds_proto::parse_document::<xds_proto::pb::envoy::config::bootstrap::v3::Bootstrap>(
                &doc.to_string(),
                xds_proto::DocumentFormat::Json,
                xds_proto::ParseOptions::default(),
            )
            .expect("parses without unknown fields");
        let translated = crate::config::translate_bootstrap(&parsed.value);
        let _ = std::fs::remove_file(&root);
        translated.expect("translates");
    }

    trait Tap: Sized {
        fn tap(self, f: impl FnOnce(&mut Self)) -> Self;
    }
    impl Tap for Value {
        fn tap(mut self, f: impl FnOnce(&mut Self)) -> Self {
            f(&mut self);
            self
        }
    }
}
