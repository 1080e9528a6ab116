//! Which fields of each Envoy message Outrigger acts on, checked by walking the set fields of a
//! resource by reflection. A set field that is neither supported nor acknowledged is refused
//! with its path; that is how "every field works as Envoy documents or is rejected" holds
//! without a translator having to remember every field of every message.
//!
//! Acknowledged fields are accepted without being acted on, each for a stated reason (most
//! are planned work: the issue that brings them). They are reported as warnings at load, so
//! nothing is ignored silently. Extension payloads (`Any`) are checked by the translator of the
//! extension, which calls [`check`] on the unpacked message.

use super::error::{FieldPath, Result};
use std::collections::HashMap;
use std::sync::LazyLock;
use xds_proto::reflect::{DynamicMessage, MapKey, ReflectMessage, Value};

/// A field accepted but not acted on, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acknowledged {
    pub path: String,
    pub reason: &'static str,
}

struct Policy {
    supported: &'static [&'static str],
    acknowledged: &'static [(&'static str, &'static str)],
}

const XDS: &str = "xDS subscriptions are not implemented yet (issue 5)";
const STATS: &str = "stats sinks and flushing are not implemented yet (issue 8)";
const SYSTEM_RESOLVER: &str =
    "names are resolved with the system resolver, which this tuning does not apply to";
const ACCESS_LOG: &str = "the admin interface writes no access log (Istio points it at /dev/null)";
const HEDGE_NOT_IN_ENVOY: &str = "Envoy 1.40 accepts it without acting on it (not implemented there; checked: initial_requests 3 still sends one request), and so does Outrigger: one request goes first, more only on per-try timeouts";
const OVERLOAD: &str = "the overload manager is not implemented";
const HEALTH_CHECK_TARGET: &str = "active health checks go to the endpoint's own address: the health_check_config overrides are not applied";
const NO_EFFECT: &str = "has no effect in Outrigger";
const BUFFERS: &str = "buffering is bounded by the codecs' own flow control (HTTP/2 windows, fixed copy buffers); this exact limit is not applied";
const GZIP_TUNING: &str = "zlib tuning for memory and ratio; Outrigger's gzip (miniz_oxide) uses its own, and its output is valid gzip all the same";
const SLOW_START: &str = "slow start is not implemented: a new host takes its full weight at once";
const LOCALITY_LB: &str = "locality weights are not applied to consistent-hashing balancers (ring hash, Maglev): hosts keep their own weights";
const ZONE_AWARE: &str = "zone-aware routing is not implemented (a SHOULD of issue 4): without locality weights, hosts of every locality are balanced as one set";
const NO_TICKETS: &str =
    "Outrigger issues no TLS session tickets (resumption uses the server's session cache)";

/// Messages whose every field Outrigger handles (well-known types, leaves of translation).
const LEAF_MESSAGES: &[&str] = &[
    "google.protobuf.Any",
    "google.protobuf.Duration",
    "google.protobuf.Timestamp",
    "google.protobuf.Struct",
    "google.protobuf.Value",
    "google.protobuf.ListValue",
    "google.protobuf.BoolValue",
    "google.protobuf.UInt32Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.Int32Value",
    "google.protobuf.Int64Value",
    "google.protobuf.DoubleValue",
    "google.protobuf.StringValue",
    "envoy.config.core.v3.Metadata",
    "envoy.config.core.v3.Locality",
    "envoy.type.v3.Percent",
    "envoy.type.v3.FractionalPercent",
    "envoy.type.v3.Int64Range",
    "envoy.config.core.v3.CidrRange",
    "envoy.config.core.v3.TcpKeepalive",
    "envoy.config.core.v3.Pipe",
    "envoy.config.core.v3.HeaderValue",
];

macro_rules! policies {
    ($($name:literal => [$($s:literal),* $(,)?] $( ack [$(($a:literal, $r:expr)),* $(,)?] )?;)*) => {
        &[$(($name, Policy { supported: &[$($s),*], acknowledged: &[$($( ($a, $r) ),*)?] })),*]
    };
}

static POLICIES: &[(&str, Policy)] = policies! {
    "envoy.config.bootstrap.v3.Bootstrap" => ["node", "static_resources", "admin", "layered_runtime",
        "dynamic_resources", "stats_config", "tracing", "stats_server_version_override"]
        ack [("stats_sinks", STATS),
             ("stats_flush_interval", STATS), ("stats_eviction_interval", STATS),
             ("deferred_stat_options", NO_EFFECT),
             ("overload_manager", OVERLOAD), ("bootstrap_extensions", "bootstrap extensions (internal listeners, Istio metadata discovery) are not implemented"),
             ("cluster_manager", "cluster manager options are not implemented yet (issues 4 and 5)"),
             ("application_log_config", "Outrigger writes its own log format (see --log-format)"),
             ("enable_dispatcher_stats", STATS),
             ("watchdog", NO_EFFECT), ("watchdogs", NO_EFFECT), ("flags_path", NO_EFFECT)];
    "envoy.config.bootstrap.v3.Bootstrap.DynamicResources" => ["lds_config", "cds_config", "ads_config"];
    "envoy.config.core.v3.ConfigSource" => ["ads", "initial_fetch_timeout", "resource_api_version",
        "path_config_source", "path", "api_config_source"];
    "envoy.config.core.v3.PathConfigSource" => ["path", "watched_directory"];
    "envoy.config.core.v3.WatchedDirectory" => ["path"];
    "envoy.config.core.v3.AggregatedConfigSource" => [];
    "envoy.config.core.v3.ApiConfigSource" => ["api_type", "transport_api_version", "grpc_services",
        "set_node_on_first_message_only", "cluster_names"]
        ack [("refresh_delay", "applies to REST config sources only"),
             ("request_timeout", "applies to REST config sources only"),
             ("rate_limit_settings", "discovery requests are not rate limited")];
    "envoy.config.core.v3.GrpcService" => ["envoy_grpc", "google_grpc", "initial_metadata"]
        ack [("timeout", "the ADS stream is long-lived; Outrigger sets no deadline on it")];
    "envoy.config.core.v3.GrpcService.EnvoyGrpc" => ["cluster_name"];
    // `config/grpc_target.rs` refuses `google_default` and targets it cannot dial, by path.
    "envoy.config.core.v3.GrpcService.GoogleGrpc" => ["target_uri", "channel_credentials"]
        ack [("stat_prefix", "the gRPC client's own stats (streams_total, streams_closed_<status>) are not kept, for envoy_grpc targets either")];
    "envoy.config.core.v3.GrpcService.GoogleGrpc.ChannelCredentials" => ["ssl_credentials", "local_credentials", "google_default"];
    "envoy.config.core.v3.GrpcService.GoogleGrpc.SslCredentials" => ["root_certs", "private_key", "cert_chain"];
    "envoy.config.core.v3.GrpcService.GoogleGrpc.GoogleLocalCredentials" => [];
    "envoy.config.cluster.v3.Cluster.EdsClusterConfig" => ["eds_config", "service_name"];
    "envoy.extensions.filters.network.http_connection_manager.v3.Rds" => ["config_source", "route_config_name"];
    "envoy.config.metrics.v3.StatsConfig" => ["stats_tags", "use_all_default_tags", "stats_matcher"]
        ack [("histogram_bucket_settings", "custom histogram buckets are not implemented; Envoy's default buckets are used")];
    "envoy.config.metrics.v3.TagSpecifier" => ["tag_name", "regex", "fixed_value"];
    "envoy.config.metrics.v3.StatsMatcher" => ["reject_all", "exclusion_list", "inclusion_list"];
    "envoy.type.matcher.v3.ListStringMatcher" => ["patterns"];
    "envoy.config.core.v3.Node" => ["id", "cluster", "metadata", "locality", "user_agent_name",
        "user_agent_version", "user_agent_build_version", "extensions", "client_features",
        "listening_addresses", "dynamic_parameters"];
    "envoy.config.bootstrap.v3.Bootstrap.StaticResources" => ["listeners", "clusters", "secrets"];
    "envoy.config.bootstrap.v3.Admin" => ["address", "profile_path", "ignore_global_conn_limit"]
        ack [("access_log", ACCESS_LOG), ("access_log_path", ACCESS_LOG)];
    "envoy.config.bootstrap.v3.LayeredRuntime" => ["layers"];
    "envoy.config.bootstrap.v3.RuntimeLayer" => ["name", "static_layer"]
        ack [("disk_layer", "only static runtime layers are read"),
             ("admin_layer", "the admin runtime layer is read-only"),
             ("rtds_layer", XDS)];
    "envoy.config.core.v3.Address" => ["socket_address", "pipe"];
    "envoy.config.core.v3.SocketAddress" => ["protocol", "address", "port_value", "ipv4_compat"];
    "envoy.config.listener.v3.Listener" => ["name", "address", "filter_chains", "default_filter_chain",
        "listener_filters", "listener_filters_timeout", "continue_on_listener_filters_timeout",
        "stat_prefix", "traffic_direction", "metadata", "enable_reuse_port", "reuse_port",
        "tcp_backlog_size", "bind_to_port", "use_original_dst", "transparent", "access_log"]
        ack [("ignore_global_conn_limit", OVERLOAD), ("bypass_overload_manager", OVERLOAD),
             ("per_connection_buffer_limit_bytes", "buffering is bounded by the codecs' own flow control; a request body kept for a retry is bounded by the route's or virtual host's per_request_buffer_limit_bytes, else by 1 MiB (this field's default), not by this value"),
             ("connection_balance_config", "connections are spread by the runtime's work stealing"),
             ("drain_type", "drain is not implemented yet (issue 5)")];
    "envoy.config.listener.v3.FilterChain" => ["filter_chain_match", "filters", "name", "metadata",
        "transport_socket"]
        ack [("transport_socket_connect_timeout", "TLS handshakes are bounded only by the connection's own timeouts")];
    "envoy.config.listener.v3.FilterChainMatch" => ["destination_port", "prefix_ranges",
        "direct_source_prefix_ranges", "source_type", "source_prefix_ranges", "source_ports",
        "server_names", "transport_protocol", "application_protocols"];
    "envoy.config.listener.v3.Filter" => ["name", "typed_config"];
    "envoy.config.cluster.v3.Filter" => ["name", "typed_config"];
    // Names are resolved by the system's resolver whichever resolver the cluster names; the
    // tuning of c-ares and getaddrinfo is accepted, a resolver list (which would change where
    // names are looked up) is not.
    // https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/network/dns_resolver/cares/v3/cares_dns_resolver.proto
    "envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig" => []
        ack [("udp_max_queries", SYSTEM_RESOLVER), ("query_timeout_seconds", SYSTEM_RESOLVER),
             ("query_tries", SYSTEM_RESOLVER), ("rotate_nameservers", SYSTEM_RESOLVER),
             ("dns_resolver_options", SYSTEM_RESOLVER), ("filter_unroutable_families", SYSTEM_RESOLVER)];
    "envoy.extensions.network.dns_resolver.getaddrinfo.v3.GetAddrInfoDnsResolverConfig" => []
        ack [("num_retries", SYSTEM_RESOLVER), ("num_resolver_threads", SYSTEM_RESOLVER)];
    "envoy.config.listener.v3.ListenerFilter" => ["name", "typed_config", "filter_disabled"];
    "envoy.config.listener.v3.ListenerFilterChainMatchPredicate" => ["or_match", "and_match", "not_match", "any_match", "destination_port_range"];
    "envoy.config.listener.v3.ListenerFilterChainMatchPredicate.MatchSet" => ["rules"];
    "envoy.config.core.v3.TransportSocket" => ["name", "typed_config"];
    "envoy.config.core.v3.TypedExtensionConfig" => ["name", "typed_config"];
    "envoy.config.cluster.v3.Cluster" => ["name", "alt_stat_name", "type", "connect_timeout",
        "lb_policy", "load_assignment", "eds_cluster_config", "max_requests_per_connection", "typed_extension_protocol_options",
        "dns_lookup_family", "dns_refresh_rate", "respect_dns_ttl", "upstream_connection_options",
        "metadata", "transport_socket", "upstream_bind_config",
        "common_http_protocol_options", "http2_protocol_options", "http_protocol_options", "original_dst_lb_config",
        "load_balancing_policy", "least_request_lb_config", "ring_hash_lb_config", "maglev_lb_config",
        "outlier_detection", "common_lb_config", "circuit_breakers", "health_checks", "transport_socket_matches",
        "filters", "typed_dns_resolver_config"]
        ack [("round_robin_lb_config", SLOW_START),
             ("per_connection_buffer_limit_bytes", BUFFERS),
             ("cleanup_interval", "ORIGINAL_DST hosts are not cached between connections, so there is nothing to clean up"),
             ("track_cluster_stats", STATS),
             ("wait_for_warm_on_init", XDS)];
    "envoy.config.cluster.v3.Cluster.TransportSocketMatch" => ["name", "match", "transport_socket"];
    "envoy.config.cluster.v3.OutlierDetection" => ["consecutive_5xx", "interval", "base_ejection_time",
        "max_ejection_percent", "enforcing_consecutive_5xx", "enforcing_success_rate", "success_rate_minimum_hosts",
        "success_rate_request_volume", "success_rate_stdev_factor", "consecutive_gateway_failure",
        "enforcing_consecutive_gateway_failure", "split_external_local_origin_errors", "consecutive_local_origin_failure",
        "enforcing_consecutive_local_origin_failure", "enforcing_local_origin_success_rate",
        "failure_percentage_threshold", "enforcing_failure_percentage", "enforcing_failure_percentage_local_origin",
        "failure_percentage_minimum_hosts", "failure_percentage_request_volume", "max_ejection_time",
        "max_ejection_time_jitter", "always_eject_one_host"]
        ack [("successful_active_health_check_uneject_host", "a passing active health check does not end an outlier ejection yet: the host returns when its ejection time is over"),
             ("monitors", "not implemented in Envoy either (hidden in its API)")];
    "envoy.config.core.v3.HealthCheck" => ["timeout", "interval", "initial_jitter", "interval_jitter",
        "interval_jitter_percent", "unhealthy_threshold", "healthy_threshold", "reuse_connection",
        "no_traffic_interval", "no_traffic_healthy_interval", "unhealthy_interval", "unhealthy_edge_interval",
        "healthy_edge_interval", "always_log_health_check_failures", "http_health_check", "tcp_health_check",
        "grpc_health_check"];
    "envoy.config.core.v3.HealthCheck.GrpcHealthCheck" => ["service_name", "authority", "initial_metadata"];
    "envoy.config.core.v3.HealthCheck.HttpHealthCheck" => ["host", "path", "request_headers_to_add",
        "request_headers_to_remove", "expected_statuses", "codec_client_type"];
    "envoy.config.core.v3.HealthCheck.TcpHealthCheck" => ["send", "receive"];
    "envoy.config.core.v3.HealthCheck.Payload" => ["text", "binary"];
    "envoy.config.cluster.v3.Cluster.CommonLbConfig.LocalityWeightedLbConfig" => [];
    "envoy.config.cluster.v3.Cluster.CommonLbConfig" => ["healthy_panic_threshold", "locality_weighted_lb_config"]
        ack [("zone_aware_lb_config", ZONE_AWARE),
             ("update_merge_window", "host updates are applied at once; Envoy's window only delays and merges them"),
             ("close_connections_on_host_set_change", "connections to hosts that leave the set are not closed early; they end with their idle timeout"),
             ("consistent_hashing_lb_config", "hashing options are read from ring_hash_lb_config, maglev_lb_config or load_balancing_policy"),
             ("ignore_new_hosts_until_first_hc", "new hosts start failing their active health check until the first one passes, but still count towards the panic threshold's total"),
             ("override_host_status", "host override (stateful sessions) is not implemented")];
    // `per_host_thresholds` and `max_connection_pools` are refused: not enforced.
    "envoy.config.cluster.v3.CircuitBreakers" => ["thresholds"];
    "envoy.config.cluster.v3.CircuitBreakers.Thresholds" => ["priority", "max_connections", "max_pending_requests",
        "max_requests", "max_retries", "retry_budget", "track_remaining"];
    "envoy.config.cluster.v3.CircuitBreakers.Thresholds.RetryBudget" => ["budget_percent", "min_retry_concurrency"];
    "envoy.config.cluster.v3.Cluster.LeastRequestLbConfig" => ["choice_count", "active_request_bias"]
        ack [("slow_start_config", SLOW_START)];
    "envoy.config.cluster.v3.Cluster.RingHashLbConfig" => ["minimum_ring_size", "maximum_ring_size", "hash_function"];
    "envoy.config.cluster.v3.Cluster.MaglevLbConfig" => ["table_size"];
    "envoy.config.core.v3.RuntimeDouble" => ["default_value"]
        ack [("runtime_key", "runtime overrides are not read here; default_value applies")];
    "envoy.config.cluster.v3.LoadBalancingPolicy" => ["policies"];
    "envoy.config.cluster.v3.LoadBalancingPolicy.Policy" => ["typed_extension_config"];
    "envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin" => ["locality_lb_config"]
        ack [("slow_start_config", SLOW_START)];
    "envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest" => ["choice_count", "active_request_bias",
        "enable_full_scan", "selection_method", "locality_lb_config"]
        ack [("slow_start_config", SLOW_START)];
    "envoy.extensions.load_balancing_policies.random.v3.Random" => ["locality_lb_config"];
    "envoy.extensions.load_balancing_policies.common.v3.LocalityLbConfig" => ["locality_weighted_lb_config"]
        ack [("zone_aware_lb_config", ZONE_AWARE)];
    "envoy.extensions.load_balancing_policies.common.v3.LocalityLbConfig.LocalityWeightedLbConfig" => [];
    "envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash" => ["hash_function", "minimum_ring_size",
        "maximum_ring_size", "use_hostname_for_hashing", "hash_balance_factor", "consistent_hashing_lb_config"]
        ack [("locality_weighted_lb_config", LOCALITY_LB)];
    "envoy.extensions.load_balancing_policies.maglev.v3.Maglev" => ["table_size", "consistent_hashing_lb_config"]
        ack [("locality_weighted_lb_config", LOCALITY_LB)];
    "envoy.extensions.load_balancing_policies.cluster_provided.v3.ClusterProvided" => [];
    "envoy.extensions.load_balancing_policies.common.v3.ConsistentHashingLbConfig" => ["use_hostname_for_hashing",
        "hash_balance_factor", "hash_policy"];
    "envoy.config.cluster.v3.UpstreamConnectionOptions" => ["tcp_keepalive"];
    "envoy.config.cluster.v3.Cluster.OriginalDstLbConfig" => ["use_http_header", "http_header_name", "upstream_port_override"];
    "envoy.config.core.v3.BindConfig" => ["source_address"];
    "envoy.config.endpoint.v3.ClusterLoadAssignment" => ["cluster_name", "endpoints", "policy"];
    "envoy.config.endpoint.v3.ClusterLoadAssignment.Policy" => ["overprovisioning_factor",
        "weighted_priority_health"]
        ack [("endpoint_stale_after", "endpoints are never treated as stale: a cluster keeps its last assignment until the next one, as without this field")];
    "envoy.config.endpoint.v3.LocalityLbEndpoints" => ["locality", "lb_endpoints", "load_balancing_weight", "priority", "metadata"];
    "envoy.config.endpoint.v3.LbEndpoint" => ["endpoint", "load_balancing_weight", "metadata", "health_status"];
    "envoy.config.endpoint.v3.Endpoint" => ["address", "hostname", "health_check_config"];
    // Istio sends an empty one with every endpoint: only its overrides are not applied.
    "envoy.config.endpoint.v3.Endpoint.HealthCheckConfig" => []
        ack [("port_value", HEALTH_CHECK_TARGET), ("hostname", HEALTH_CHECK_TARGET),
             ("address", HEALTH_CHECK_TARGET), ("disable_active_health_check", HEALTH_CHECK_TARGET)];
    "envoy.config.core.v3.HttpProtocolOptions" => ["idle_timeout", "max_requests_per_connection", "max_connection_duration",
        "max_headers_count", "headers_with_underscores_action", "max_stream_duration"];
    "envoy.config.core.v3.Http1ProtocolOptions" => ["accept_http_10", "default_host_for_http_10",
        "allow_chunked_length"];
    "envoy.config.core.v3.Http2ProtocolOptions" => ["max_concurrent_streams", "initial_stream_window_size", "initial_connection_window_size"];
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.UpgradeConfig" => ["upgrade_type", "enabled"];
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" => ["explicit_http_config", "use_downstream_protocol_config",
        "auto_config", "common_http_protocol_options"];
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.ExplicitHttpConfig" => ["http_protocol_options", "http2_protocol_options"];
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.UseDownstreamHttpConfig" => ["http_protocol_options", "http2_protocol_options"];
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.AutoHttpConfig" => ["http_protocol_options", "http2_protocol_options"];
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager" => ["codec_type",
        "stat_prefix", "route_config", "http_filters", "server_name", "http_protocol_options", "http2_protocol_options",
        "use_remote_address", "xff_num_trusted_hops", "skip_xff_append", "internal_address_config", "via",
        "generate_request_id", "preserve_external_request_id", "always_set_request_id_in_response",
        "server_header_transformation", "max_request_headers_kb", "common_http_protocol_options", "request_headers_timeout",
        "normalize_path", "merge_slashes", "path_with_escaped_slashes_action", "upgrade_configs", "rds", "access_log",
        "stream_idle_timeout", "request_timeout", "forward_client_cert_details", "set_current_client_cert_details",
        "request_id_extension", "tracing", "drain_timeout"];
    // Tracing (`config/tracing.rs` refuses the values it does not implement, by path).
    // https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto#extensions-filters-network-http-connection-manager-v3-httpconnectionmanager-tracing
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.Tracing" => ["client_sampling",
        "random_sampling", "overall_sampling", "verbose", "max_path_tag_length", "custom_tags", "provider",
        "spawn_upstream_span", "operation", "upstream_operation"];
    "envoy.config.trace.v3.Tracing" => ["http"];
    "envoy.config.trace.v3.Tracing.Http" => ["name", "typed_config"];
    "envoy.config.trace.v3.ZipkinConfig" => ["collector_cluster", "collector_endpoint", "trace_id_128bit",
        "shared_span_context", "collector_endpoint_version", "collector_hostname", "split_spans_for_request",
        "trace_context_option", "collector_service", "timestamp_trace_ids"];
    "envoy.type.tracing.v3.CustomTag" => ["tag", "literal", "environment", "request_header", "metadata"];
    "envoy.type.tracing.v3.CustomTag.Metadata" => ["kind", "metadata_key", "default_value"];
    "envoy.type.metadata.v3.MetadataKind" => ["request"];
    "envoy.type.metadata.v3.MetadataKind.Request" => [];
    "envoy.type.metadata.v3.MetadataKey" => ["key", "path"];
    "envoy.type.metadata.v3.MetadataKey.PathSegment" => ["key"];
    "envoy.type.tracing.v3.CustomTag.Literal" => ["value"];
    "envoy.type.tracing.v3.CustomTag.Environment" => ["name", "default_value"];
    "envoy.type.tracing.v3.CustomTag.Header" => ["name", "default_value"];
    "envoy.config.route.v3.Decorator" => ["operation", "propagate"];
    "envoy.config.route.v3.Tracing" => ["client_sampling", "random_sampling", "overall_sampling", "custom_tags",
        "operation", "upstream_operation"];
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.InternalAddressConfig" => ["cidr_ranges", "unix_sockets"];
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.SetCurrentClientCertDetails" => ["subject", "uri", "dns"];
    "envoy.extensions.filters.network.http_connection_manager.v3.RequestIDExtension" => ["typed_config"];
    // UUIDs are what Outrigger generates; the two fields concern tracing (`config/tracing.rs`).
    "envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig" => ["pack_trace_reason", "use_request_id_for_trace_sampling"];
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter" => ["name", "typed_config", "is_optional", "disabled"];
    "envoy.config.route.v3.RouteConfiguration" => ["name", "virtual_hosts", "validate_clusters", "max_direct_response_body_size_bytes",
        "request_headers_to_add", "request_headers_to_remove", "response_headers_to_add", "response_headers_to_remove",
        "typed_per_filter_config", "ignore_port_in_host_matching"];
    "envoy.config.route.v3.VirtualHost" => ["name", "domains", "routes", "include_request_attempt_count",
        "include_attempt_count_in_response", "retry_policy", "hedge_policy", "per_request_buffer_limit_bytes", "request_body_buffer_limit",
        "request_headers_to_add", "request_headers_to_remove", "response_headers_to_add", "response_headers_to_remove",
        "typed_per_filter_config"];
    "envoy.config.route.v3.Route" => ["name", "match", "route", "redirect", "direct_response", "metadata",
        "per_request_buffer_limit_bytes", "request_body_buffer_limit",
        "request_headers_to_add", "request_headers_to_remove", "response_headers_to_add", "response_headers_to_remove",
        "typed_per_filter_config", "decorator", "tracing"];
    "envoy.config.route.v3.RouteAction.RequestMirrorPolicy" => ["cluster", "cluster_header", "runtime_fraction",
        "disable_shadow_host_suffix_append"]
        ack [("trace_sampled", "a mirrored request carries the trace headers of the request it copies; no span is made for it")];
    "envoy.config.route.v3.FilterConfig" => ["config", "is_optional", "disabled"];
    "envoy.extensions.filters.http.fault.v3.HTTPFault" => ["delay", "abort", "upstream_cluster", "headers",
        "downstream_nodes", "max_active_faults", "response_rate_limit", "delay_percent_runtime", "abort_percent_runtime",
        "delay_duration_runtime", "abort_http_status_runtime", "max_active_faults_runtime",
        "response_rate_limit_percent_runtime", "abort_grpc_status_runtime", "disable_downstream_cluster_stats",
        "filter_metadata"];
    "envoy.extensions.filters.http.fault.v3.FaultAbort" => ["http_status", "grpc_status", "header_abort", "percentage", "response_body"];
    "envoy.extensions.filters.http.fault.v3.FaultAbort.HeaderAbort" => [];
    "envoy.extensions.filters.common.fault.v3.FaultDelay" => ["fixed_delay", "header_delay", "percentage"];
    "envoy.extensions.filters.common.fault.v3.FaultDelay.HeaderDelay" => [];
    "envoy.extensions.filters.common.fault.v3.FaultRateLimit" => ["fixed_limit", "header_limit", "percentage"];
    "envoy.extensions.filters.common.fault.v3.FaultRateLimit.FixedLimit" => ["limit_kbps"];
    "envoy.extensions.filters.common.fault.v3.FaultRateLimit.HeaderLimit" => [];
    "envoy.config.route.v3.RouteMatch" => ["prefix", "path", "safe_regex", "path_separated_prefix", "case_sensitive", "headers",
        "query_parameters", "grpc", "runtime_fraction"];
    "envoy.config.route.v3.RouteMatch.GrpcRouteMatchOptions" => [];
    "envoy.config.route.v3.QueryParameterMatcher" => ["name", "string_match", "present_match"];
    "envoy.config.core.v3.RuntimeFractionalPercent" => ["default_value", "runtime_key"];
    "envoy.config.route.v3.WeightedCluster" => ["clusters", "total_weight"];
    "envoy.config.route.v3.WeightedCluster.ClusterWeight" => ["name", "weight", "host_rewrite_literal",
        "request_headers_to_add", "request_headers_to_remove", "response_headers_to_add", "response_headers_to_remove"];
    "envoy.type.matcher.v3.RegexMatchAndSubstitute" => ["pattern", "substitution"];
    "envoy.config.route.v3.HeaderMatcher" => ["name", "exact_match", "safe_regex_match", "present_match", "prefix_match",
        "suffix_match", "contains_match", "string_match", "range_match", "invert_match", "treat_missing_header_as_empty"];
    "envoy.type.matcher.v3.StringMatcher" => ["exact", "prefix", "suffix", "safe_regex", "contains", "ignore_case"];
    "envoy.type.matcher.v3.RegexMatcher" => ["google_re2", "regex"];
    "envoy.type.matcher.v3.RegexMatcher.GoogleRE2" => [];
    // RBAC (config/rbac.rs). The xDS matcher trees, CEL conditions, audit loggers, filter
    // state and sourced metadata are refused by path.
    "envoy.extensions.filters.http.rbac.v3.RBAC" => ["rules", "shadow_rules", "rules_stat_prefix",
        "shadow_rules_stat_prefix", "track_per_rule_stats"];
    "envoy.extensions.filters.http.rbac.v3.RBACPerRoute" => ["rbac"];
    "envoy.extensions.filters.network.rbac.v3.RBAC" => ["rules", "shadow_rules", "shadow_rules_stat_prefix",
        "stat_prefix", "enforcement_type", "delay_deny"];
    "envoy.config.rbac.v3.RBAC" => ["action", "policies"];
    "envoy.config.rbac.v3.Policy" => ["permissions", "principals"];
    "envoy.config.rbac.v3.Permission" => ["and_rules", "or_rules", "any", "header", "url_path", "destination_ip",
        "destination_port", "destination_port_range", "metadata", "not_rule", "requested_server_name"];
    "envoy.config.rbac.v3.Permission.Set" => ["rules"];
    "envoy.config.rbac.v3.Principal" => ["and_ids", "or_ids", "any", "authenticated", "source_ip", "direct_remote_ip",
        "remote_ip", "header", "url_path", "metadata", "not_id"];
    "envoy.config.rbac.v3.Principal.Set" => ["ids"];
    "envoy.config.rbac.v3.Principal.Authenticated" => ["principal_name"];
    "envoy.type.matcher.v3.PathMatcher" => ["path"];
    // JWT authentication (config/jwt_authn.rs). The JWT cache, subjects, header and failure
    // metadata, claim paths, route cache clearing, filter state rules, extraction without
    // validation and JWKS fetch retries are refused by path.
    "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication" => ["providers", "rules",
        "bypass_cors_preflight", "requirement_map", "strip_failure_response", "stat_prefix"];
    "envoy.extensions.filters.http.jwt_authn.v3.JwtProvider" => ["issuer", "audiences",
        "require_expiration", "max_lifetime", "forward", "from_headers", "from_params",
        "from_cookies", "forward_payload_header", "pad_forward_payload_header",
        "payload_in_metadata", "normalize_payload_in_metadata", "clock_skew_seconds",
        "claim_to_headers", "remote_jwks", "local_jwks"];
    "envoy.extensions.filters.http.jwt_authn.v3.JwtProvider.NormalizePayload" => ["space_delimited_claims"];
    "envoy.extensions.filters.http.jwt_authn.v3.RemoteJwks" => ["http_uri", "cache_duration", "async_fetch"];
    // fast_listener: Outrigger never holds a listener back for a fetch (as with it set).
    "envoy.extensions.filters.http.jwt_authn.v3.JwksAsyncFetch" => ["fast_listener", "failed_refetch_duration"];
    "envoy.config.core.v3.HttpUri" => ["uri", "cluster", "timeout"];
    "envoy.extensions.filters.http.jwt_authn.v3.JwtHeader" => ["name", "value_prefix"];
    "envoy.extensions.filters.http.jwt_authn.v3.JwtClaimToHeader" => ["header_name", "claim_name"];
    "envoy.extensions.filters.http.jwt_authn.v3.JwtRequirement" => ["provider_name",
        "provider_and_audiences", "requires_any", "requires_all", "allow_missing_or_failed", "allow_missing"];
    "envoy.extensions.filters.http.jwt_authn.v3.ProviderWithAudiences" => ["provider_name", "audiences"];
    "envoy.extensions.filters.http.jwt_authn.v3.JwtRequirementOrList" => ["requirements"];
    "envoy.extensions.filters.http.jwt_authn.v3.JwtRequirementAndList" => ["requirements"];
    "envoy.extensions.filters.http.jwt_authn.v3.RequirementRule" => ["match", "requires", "requirement_name"];
    "envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig" => ["disabled", "requirement_name"];
    "google.protobuf.Empty" => [];
    "envoy.type.v3.Int32Range" => ["start", "end"];
    "envoy.type.v3.DoubleRange" => ["start", "end"];
    "envoy.type.matcher.v3.MetadataMatcher" => ["filter", "path", "value", "invert"];
    "envoy.type.matcher.v3.MetadataMatcher.PathSegment" => ["key"];
    "envoy.type.matcher.v3.ValueMatcher" => ["null_match", "double_match", "string_match", "bool_match",
        "present_match", "list_match", "or_match"];
    "envoy.type.matcher.v3.ValueMatcher.NullMatch" => [];
    "envoy.type.matcher.v3.ListMatcher" => ["one_of"];
    "envoy.type.matcher.v3.OrMatcher" => ["value_matchers"];
    "envoy.type.matcher.v3.DoubleMatcher" => ["range", "exact"];
    "envoy.config.route.v3.RouteAction" => ["cluster", "cluster_header", "weighted_clusters", "timeout", "prefix_rewrite",
        "regex_rewrite", "host_rewrite_literal", "auto_host_rewrite", "host_rewrite_header", "hash_policy",
        "cluster_not_found_response_code", "priority", "retry_policy", "request_mirror_policies", "idle_timeout",
        "max_stream_duration", "max_grpc_timeout", "grpc_timeout_offset", "hedge_policy"];
    "envoy.config.route.v3.HedgePolicy" => ["hedge_on_per_try_timeout"]
        ack [("initial_requests", HEDGE_NOT_IN_ENVOY), ("additional_request_chance", HEDGE_NOT_IN_ENVOY)];
    "envoy.config.route.v3.RouteAction.MaxStreamDuration" => ["max_stream_duration", "grpc_timeout_header_max",
        "grpc_timeout_header_offset"];
    // Fields of a retry policy that Outrigger does not implement are refused by its translator
    // (`config/retry_policy.rs`) with their path, so they are listed as walked here.
    "envoy.config.route.v3.RetryPolicy" => ["retry_on", "num_retries", "per_try_timeout", "per_try_idle_timeout",
        "retry_priority", "retry_host_predicate", "retry_options_predicates", "host_selection_retry_max_attempts",
        "retriable_status_codes", "retry_back_off", "rate_limited_retry_back_off", "retriable_headers",
        "retriable_request_headers", "refresh_cluster_on_retry"];
    "envoy.config.route.v3.RetryPolicy.RetryBackOff" => ["base_interval", "max_interval"];
    "envoy.config.route.v3.RetryPolicy.RetryHostPredicate" => ["name", "typed_config"];
    "envoy.config.route.v3.RetryPolicy.RetryPriority" => ["name", "typed_config"];
    "envoy.config.route.v3.RetryPolicy.RateLimitedRetryBackOff" => ["reset_headers", "max_interval"];
    "envoy.config.route.v3.RetryPolicy.ResetHeader" => ["name", "format"];
    "envoy.config.route.v3.RouteAction.HashPolicy" => ["header", "cookie", "connection_properties",
        "query_parameter", "filter_state", "terminal"];
    "envoy.config.route.v3.RouteAction.HashPolicy.Header" => ["header_name", "regex_rewrite"];
    "envoy.config.route.v3.RouteAction.HashPolicy.Cookie" => ["name", "ttl", "path", "attributes"];
    "envoy.config.route.v3.RouteAction.HashPolicy.CookieAttribute" => ["name", "value"];
    "envoy.config.route.v3.RouteAction.HashPolicy.ConnectionProperties" => ["source_ip"];
    "envoy.config.route.v3.RouteAction.HashPolicy.QueryParameter" => ["name"];
    "envoy.config.route.v3.RouteAction.HashPolicy.FilterState" => ["key"];
    "envoy.config.route.v3.RedirectAction" => ["https_redirect", "scheme_redirect", "host_redirect", "port_redirect",
        "path_redirect", "prefix_rewrite", "response_code", "strip_query"];
    "envoy.config.route.v3.DirectResponseAction" => ["status", "body"];
    "envoy.config.core.v3.DataSource" => ["inline_string", "inline_bytes", "filename", "environment_variable"];
    "envoy.config.core.v3.HeaderValueOption" => ["header", "append", "append_action", "keep_empty_value"];
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy" => ["stat_prefix", "cluster", "weighted_clusters", "idle_timeout", "max_connect_attempts", "access_log"];
    "envoy.config.accesslog.v3.AccessLog" => ["name", "filter", "typed_config"];
    "envoy.config.accesslog.v3.AccessLogFilter" => ["status_code_filter", "duration_filter", "not_health_check_filter",
        "runtime_filter", "and_filter", "or_filter", "header_filter", "response_flag_filter"];
    "envoy.config.accesslog.v3.StatusCodeFilter" => ["comparison"];
    "envoy.config.accesslog.v3.DurationFilter" => ["comparison"];
    "envoy.config.accesslog.v3.ComparisonFilter" => ["op", "value"];
    "envoy.config.core.v3.RuntimeUInt32" => ["default_value", "runtime_key"];
    "envoy.config.accesslog.v3.NotHealthCheckFilter" => [];
    "envoy.config.accesslog.v3.RuntimeFilter" => ["runtime_key", "percent_sampled", "use_independent_randomness"];
    "envoy.config.accesslog.v3.AndFilter" => ["filters"];
    "envoy.config.accesslog.v3.OrFilter" => ["filters"];
    "envoy.config.accesslog.v3.HeaderFilter" => ["header"];
    "envoy.config.accesslog.v3.ResponseFlagFilter" => ["flags"];
    "envoy.extensions.access_loggers.file.v3.FileAccessLog" => ["path", "format", "json_format", "typed_json_format", "log_format"];
    "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog" => ["log_format"];
    "envoy.extensions.access_loggers.stream.v3.StderrAccessLog" => ["log_format"];
    "envoy.config.core.v3.SubstitutionFormatString" => ["text_format", "json_format", "text_format_source", "omit_empty_values",
        "json_format_options"]
        ack [("content_type", "only local reply bodies use a content type; access log lines have none")];
    "envoy.config.core.v3.JsonFormatOptions" => ["sort_properties"];
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster" => ["clusters"];
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster.ClusterWeight" => ["name", "weight"];
    "envoy.extensions.filters.http.router.v3.Router" => ["suppress_envoy_headers"]
        ack [("start_child_span", super::tracing::UPSTREAM_SPAN)];
    "envoy.extensions.filters.http.compressor.v3.Compressor" => ["compressor_library", "response_direction_config",
        "request_direction_config", "choose_first", "content_length", "content_type", "disable_on_etag_header",
        "remove_accept_encoding_header", "runtime_enabled"];
    "envoy.extensions.filters.http.compressor.v3.Compressor.ResponseDirectionConfig" => ["common_config",
        "disable_on_etag_header", "weaken_etag_on_compress", "remove_accept_encoding_header", "uncompressible_response_codes"];
    "envoy.extensions.filters.http.compressor.v3.Compressor.RequestDirectionConfig" => ["common_config"];
    "envoy.extensions.filters.http.compressor.v3.Compressor.CommonDirectionConfig" => ["enabled", "min_content_length",
        "content_type", "content_type_matcher"];
    "envoy.config.core.v3.RuntimeFeatureFlag" => ["default_value", "runtime_key"];
    "envoy.extensions.compression.gzip.compressor.v3.Gzip" => ["compression_level"]
        ack [("memory_level", GZIP_TUNING), ("window_bits", GZIP_TUNING), ("compression_strategy", GZIP_TUNING),
             ("chunk_size", "output is flushed at every data frame of the response instead")];
    "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector" => ["initial_read_buffer_size"]
        ack [("enable_ja3_fingerprinting", "JA3 fingerprints are not computed"),
             ("enable_ja4_fingerprinting", "JA4 fingerprints are not computed")];
    "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector" => [];
    "envoy.extensions.filters.listener.original_dst.v3.OriginalDst" => [];
    // https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/cors_filter
    // The filter itself has no settings; policies come per route, and those are refused by
    // path until CORS is implemented (`per_filter.rs`).
    "envoy.extensions.filters.http.cors.v3.Cors" => [];
    // https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/grpc_stats_filter
    "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig" => ["emit_filter_state",
        "stats_for_all_methods", "individual_method_stats_allowlist", "enable_upstream_stats",
        "replace_dots_in_grpc_service_name"];
    "envoy.config.core.v3.GrpcMethodList" => ["services"];
    "envoy.config.core.v3.GrpcMethodList.Service" => ["name", "method_names"];
    "envoy.extensions.filters.listener.original_src.v3.OriginalSrc" => ["bind_port", "mark"];
    "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer" => [];
    "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext" => ["common_tls_context",
        "require_client_certificate", "require_sni", "disable_stateful_session_resumption", "prefer_client_ciphers"]
        ack [("disable_stateless_session_resumption", NO_TICKETS),
             ("session_timeout", "rustls keeps sessions in its cache until they are evicted"),
             ("full_scan_certs_on_sni_mismatch", "a context holds one certificate, so there is nothing to scan"),
             ("ocsp_staple_policy", "OCSP stapling is not implemented; no staple is sent")];
    "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext" => ["common_tls_context", "sni"]
        ack [("allow_renegotiation", "rustls never renegotiates; TLS 1.3 has no renegotiation and Istio never asks for it"),
             ("max_session_keys", "rustls keeps up to 256 client sessions per cluster")];
    "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext" => ["tls_params", "tls_certificates",
        "tls_certificate_sds_secret_configs", "validation_context", "validation_context_sds_secret_config",
        "combined_validation_context", "alpn_protocols"]
        ack [("key_log", "TLS key logging is not implemented; no keys are written")];
    "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext.CombinedCertificateValidationContext" => [
        "default_validation_context", "validation_context_sds_secret_config"];
    "envoy.extensions.transport_sockets.tls.v3.TlsParameters" => ["tls_minimum_protocol_version",
        "tls_maximum_protocol_version", "cipher_suites", "ecdh_curves"];
    "envoy.extensions.transport_sockets.tls.v3.TlsCertificate" => ["certificate_chain", "private_key"];
    "envoy.extensions.transport_sockets.tls.v3.CertificateValidationContext" => ["trusted_ca",
        "match_typed_subject_alt_names", "match_subject_alt_names", "trust_chain_verification"];
    "envoy.extensions.transport_sockets.tls.v3.SubjectAltNameMatcher" => ["san_type", "matcher"];
    "envoy.extensions.transport_sockets.tls.v3.SdsSecretConfig" => ["name", "sds_config"];
    "envoy.extensions.transport_sockets.tls.v3.Secret" => ["name", "tls_certificate", "validation_context"]
        ack [("session_ticket_keys", NO_TICKETS),
             ("generic_secret", "generic secrets are consumed by filters Outrigger does not implement")];
};

static INDEX: LazyLock<HashMap<&'static str, &'static Policy>> = LazyLock::new(|| {
    POLICIES
        .iter()
        .map(|(name, policy)| (*name, policy))
        .collect()
});

/// Checks every set field of `message` (found at `path`) against the policy table.
/// Acknowledged fields are appended to `acknowledged`.
pub fn check<M: xds_proto::XdsMessage>(
    message: &M,
    path: &FieldPath,
    acknowledged: &mut Vec<Acknowledged>,
) -> Result<()> {
    let dynamic = xds_proto::reflect::to_dynamic(message).map_err(|e| path.error(e))?;
    walk(&dynamic, path, acknowledged)
}

fn walk(message: &DynamicMessage, path: &FieldPath, acks: &mut Vec<Acknowledged>) -> Result<()> {
    let descriptor = message.descriptor();
    let name = descriptor.full_name();
    if LEAF_MESSAGES.contains(&name) {
        return Ok(());
    }
    let Some(policy) = INDEX.get(name) else {
        return Err(path.error(format!("{name} is not supported by Outrigger")));
    };
    for (field, value) in message.fields() {
        let field_name = field.name();
        let field_path = path.field(field_name);
        if policy.supported.contains(&field_name) {
            walk_value(value, &field_path, acks)?;
        } else if let Some((_, reason)) = policy.acknowledged.iter().find(|(f, _)| *f == field_name)
        {
            acks.push(Acknowledged {
                path: field_path.to_string(),
                reason,
            });
        } else {
            return Err(field_path.error(format!("field not supported by Outrigger (in {name})")));
        }
    }
    Ok(())
}

fn walk_value(value: &Value, path: &FieldPath, acks: &mut Vec<Acknowledged>) -> Result<()> {
    match value {
        Value::Message(m) => walk(m, path, acks),
        Value::List(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| walk_value(v, &path.index(i), acks)),
        Value::Map(entries) => entries.iter().try_for_each(|(k, v)| {
            let key = match k {
                MapKey::String(s) => s.clone(),
                other => format!("{other:?}"),
            };
            walk_value(v, &path.key(&key), acks)
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_names_exist_in_the_api() {
        let pool = xds_proto::descriptor_pool();
        for (name, policy) in POLICIES {
            let descriptor = pool
                .get_message_by_name(name)
                .unwrap_or_else(|| panic!("{name} is not an API message"));
            for field in policy
                .supported
                .iter()
                .chain(policy.acknowledged.iter().map(|(f, _)| f))
            {
                assert!(
                    descriptor.get_field_by_name(field).is_some(),
                    "{name} has no field {field}"
                );
            }
        }
        for name in LEAF_MESSAGES {
            assert!(pool.get_message_by_name(name).is_some(), "{name}");
        }
    }
}
