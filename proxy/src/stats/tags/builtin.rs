//! Envoy's built-in tag extractors (`use_all_default_tags`), written from the tag names and
//! patterns Envoy documents; regexes use ASCII classes as RE2's `\d`/`\w` do.
//! https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/metrics/v3/stats.proto#envoy-v3-api-field-config-metrics-v3-statsconfig-use-all-default-tags

use std::sync::LazyLock;

pub struct Regex {
    pub name: &'static str,
    pub regex: String,
    pub not_value: Option<&'static str>,
}

/// A tag value: anything but a dot.
const V: &str = r"[^.]+";
/// An IPv4 or bracketed IPv6 listener address with `_port`.
const ADDRESS: &str =
    r"(?:(?:[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}|\[[a-fA-F_0-9]+\])_[0-9]+)";
const CIPHER: &str = r"[0-9A-Za-z_-]+";
const TLS_VERSION: &str = r"TLSv[0-9]\.[0-9]";
const ROUTE_CONFIG: &str = r"[0-9A-Za-z_\-./]+";
const SCOPED_ROUTE_CONFIG: &str = r"[0-9A-Za-z_\-.]+";
const LISTENER_OR_CLUSTER: &str = r"(?:listener|cluster)\..*?";
const W: &str = "[0-9A-Za-z_]";

fn r(name: &'static str, regex: String) -> Regex {
    Regex {
        name,
        regex,
        not_value: None,
    }
}

fn except(name: &'static str, regex: String, not_value: &'static str) -> Regex {
    Regex {
        name,
        regex,
        not_value: Some(not_value),
    }
}

/// In Envoy's order (it decides the order of tags within a stat).
pub static REGEXES: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    vec![
        // <base>_rq_<code> and <base>_rq_<class>xx
        r("envoy.response_code", r"_rq(_([0-9]{3}))$".into()),
        r("envoy.response_code_class", r"_rq_(([0-9]))xx$".into()),
        // http.<prefix>.dynamodb.table.<table>.capacity.<op>.__partition_id=<id>
        r(
            "envoy.dynamo_partition_id",
            format!(
                r"^http\.{V}\.dynamodb\.table\.{V}\.capacity\.{V}(\.__partition_id=({W}{{7}}))$"
            ),
        ),
        r(
            "envoy.dynamo_operation",
            format!(r"^http\.{V}\.dynamodb.(?:operation|table\.{V}\.capacity)(\.({V}))(?:\.|$)"),
        ),
        r(
            "envoy.dynamo_table",
            format!(r"^http\.{V}\.dynamodb.(?:table|error)\.(({V})\.)"),
        ),
        // TLS: listener.<address>.ssl.ciphers.<cipher> and friends
        r(
            "envoy.ssl_cipher",
            format!(r"^listener\..*?\.ssl\.ciphers(\.({CIPHER}))$"),
        ),
        r(
            "envoy.ssl_curve",
            format!(r"^{LISTENER_OR_CLUSTER}\.ssl\.curves(\.({CIPHER}))$"),
        ),
        r(
            "envoy.ssl_sigalg",
            format!(r"^{LISTENER_OR_CLUSTER}\.ssl\.sigalgs(\.({CIPHER}))$"),
        ),
        r(
            "envoy.ssl_version",
            format!(r"^{LISTENER_OR_CLUSTER}\.ssl\.versions(\.({TLS_VERSION}))$"),
        ),
        r(
            "cipher_suite",
            format!(r"^cluster\.{V}\.ssl\.ciphers(\.({CIPHER}))$"),
        ),
        // listener.<address>.http.<prefix>.*
        r(
            "envoy.http_conn_manager_prefix",
            format!(r"^listener\..*?\.http\.(({V})\.)"),
        ),
        // <listener.address|server|listener_manager|thread_local_cluster_manager>.worker_<id>.*
        r(
            "envoy.worker_id",
            format!(
                r"^(?:listener\.(?:{ADDRESS}|{V})|server|listener_manager|thread_local_cluster_manager)\.worker_(([0-9]+)\.)"
            ),
        ),
        // listener.<address or stat prefix>.* except the admin listener
        except(
            "envoy.listener_address",
            format!(r"^listener\.(({ADDRESS}|{V})\.)"),
            "admin",
        ),
        // http.<prefix>.rds.<route config>.<stat> (route config names may hold dots)
        r(
            "envoy.rds_route_config",
            format!(r"^http\.{V}\.rds\.(({ROUTE_CONFIG})\.){W}+?$"),
        ),
        r(
            "envoy.scoped_rds_config",
            format!(r"^http\.{V}\.scoped_rds\.(({SCOPED_ROUTE_CONFIG})\.){W}+?$"),
        ),
        // http.<prefix>.rbac.[<rules prefix>.]policy.<policy>.<result>
        r(
            "envoy.rbac_policy_name",
            format!(
                r"^http\.{V}\.rbac\.(?:{V}\.)?policy\.(({V})\.)(allowed|shadow_allowed|denied|shadow_denied)$"
            ),
        ),
        except(
            "envoy.rbac_http_prefix",
            format!(r"^http\.{V}\.rbac\.(({V})\.).*?"),
            "policy",
        ),
        except(
            "envoy.proxy_protocol_prefix",
            format!(r"^proxy_proto\.(({V})\.).+$"),
            "versions",
        ),
        r(
            "envoy.proxy_protocol_version",
            format!(r"^proxy_proto\.((?:{V}\.)?versions\.v([0-9])\.){W}+$"),
        ),
        r(
            "envoy.tls_certificate",
            format!(r"^{LISTENER_OR_CLUSTER}\.ssl\.certificate\.(({V})\.).*$"),
        ),
        r("envoy.xds_resource_name", format!(r"^sds\.(({V})\.).+")),
        r(
            "envoy.health_check_name",
            format!(r"^cluster\.{V}\.health_check(\.name\.({V}))\..+"),
        ),
    ]
});

/// Token patterns, in Envoy's order (after every regex).
pub const TOKENS: &[(&str, &str)] = &[
    (
        "envoy.mongo_callsite",
        "mongo.*.collection.*.callsite.$.query.**",
    ),
    ("envoy.mongo_collection", "mongo.*.collection.$.**.query.*"),
    ("envoy.mongo_cmd", "mongo.*.cmd.$.**"),
    ("envoy.grpc_bridge_method", "cluster.*.grpc.*.$.**"),
    ("envoy.http_user_agent", "http.*.user_agent.$.**"),
    ("envoy.virtual_cluster", "vhost.*.vcluster.$.**"),
    ("envoy.fault_downstream_cluster", "http.*.fault.$.**"),
    ("envoy.grpc_bridge_service", "cluster.*.grpc.$.**"),
    ("envoy.tcp_prefix", "tcp.$.**"),
    ("envoy.udp_prefix", "udp.$.**"),
    ("envoy.clientssl_prefix", "auth.clientssl.$.**"),
    ("envoy.ratelimit_prefix", "ratelimit.$.**"),
    ("envoy.cluster_name", "cluster.$.**"),
    ("envoy.ext_authz_prefix", "cluster.*.ext_authz.$.**"),
    ("envoy.ext_authz_prefix", "http.*.ext_authz.$.**"),
    ("envoy.http_conn_manager_prefix", "http.$.**"),
    ("envoy.virtual_host", "vhost.$.**"),
    ("envoy.mongo_prefix", "mongo.$.**"),
    ("envoy.route", "vhost.*.route.$.**"),
    ("envoy.thrift_prefix", "thrift.$.**"),
    ("envoy.redis_prefix", "redis.$.**"),
    (
        "envoy.local_http_ratelimit_prefix",
        "$.http_local_rate_limit.**",
    ),
    (
        "envoy.local_network_ratelimit_prefix",
        "local_rate_limit.$.**",
    ),
    (
        "envoy.local_listener_ratelimit_prefix",
        "listener_local_ratelimit.$.**",
    ),
    ("envoy.dns_filter_prefix", "dns_filter.$.**"),
    ("envoy.connection_limit_prefix", "connection_limit.$.**"),
    ("envoy.rbac_prefix", "$.rbac.**"),
    ("envoy.google_grpc_client_prefix", "grpc.$.**"),
];
