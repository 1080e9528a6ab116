//! The metric families the comparison with Envoy treats specially.

/// Families Outrigger must emit whenever Envoy does for this traffic (each in some variant: with
/// Istio's tags the class counters fold into `..._upstream_rq`): the comparison in main.rs only sees
/// families both have, so a stat Outrigger lacks would pass unnoticed.
/// https://www.envoyproxy.io/docs/envoy/latest/configuration/upstream/cluster_manager/cluster_stats#dynamic-http-statistics
pub const MUST_SHARE: &[&str] = &[
    // https://www.envoyproxy.io/docs/envoy/latest/configuration/upstream/cluster_manager/cluster_manager_stats
    "envoy_cluster_manager_cluster_added",
    "envoy_cluster_manager_cluster_modified",
    "envoy_cluster_manager_cluster_removed",
    "envoy_cluster_manager_cluster_updated_via_merge",
    "envoy_cluster_manager_warming_clusters",
    "envoy_cluster_upstream_rq",
    "envoy_cluster_upstream_rq_xx",
    "envoy_cluster_upstream_rq_completed",
    "envoy_cluster_upstream_rq_time",
    "envoy_cluster_external_upstream_rq",
    "envoy_cluster_external_upstream_rq_xx",
    "envoy_cluster_external_upstream_rq_completed",
    "envoy_cluster_external_upstream_rq_time",
    "envoy_cluster_internal_upstream_rq",
    "envoy_cluster_internal_upstream_rq_xx",
    "envoy_cluster_internal_upstream_rq_completed",
    "envoy_cluster_internal_upstream_rq_time",
    "envoy_cluster_upstream_cx_rx_bytes_total",
    "envoy_cluster_upstream_cx_tx_bytes_total",
    "envoy_cluster_upstream_cx_rx_bytes_buffered",
    "envoy_cluster_upstream_cx_tx_bytes_buffered",
    // Connection lifecycle: who closed each connection and with what on it, how it was made.
    // https://www.envoyproxy.io/docs/envoy/latest/configuration/upstream/cluster_manager/cluster_stats#general
    "envoy_cluster_upstream_cx_destroy",
    "envoy_cluster_upstream_cx_destroy_local",
    "envoy_cluster_upstream_cx_destroy_remote",
    "envoy_cluster_upstream_cx_destroy_with_active_rq",
    "envoy_cluster_upstream_cx_destroy_local_with_active_rq",
    "envoy_cluster_upstream_cx_destroy_remote_with_active_rq",
    "envoy_cluster_upstream_cx_connect_ms",
    "envoy_cluster_upstream_cx_length_ms",
    "envoy_cluster_upstream_cx_http1_total",
    "envoy_cluster_upstream_cx_http2_total",
    "envoy_cluster_upstream_cx_http3_total",
    "envoy_cluster_upstream_cx_connect_timeout",
    "envoy_cluster_upstream_cx_connect_attempts_exceeded",
    "envoy_cluster_upstream_cx_close_notify",
    "envoy_cluster_upstream_rq_per_cx",
    "envoy_cluster_upstream_rq_cancelled",
    "envoy_cluster_upstream_rq_rx_reset",
    "envoy_cluster_upstream_rq_tx_reset",
    // Downstream connections and requests of the connection manager.
    // https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/stats
    "envoy_http_downstream_cx_destroy",
    "envoy_http_downstream_cx_destroy_local",
    "envoy_http_downstream_cx_destroy_remote",
    "envoy_http_downstream_cx_destroy_active_rq",
    "envoy_http_downstream_cx_destroy_local_active_rq",
    "envoy_http_downstream_cx_destroy_remote_active_rq",
    "envoy_http_downstream_cx_length_ms",
    "envoy_http_downstream_cx_rx_bytes_total",
    "envoy_http_downstream_cx_tx_bytes_total",
    "envoy_http_downstream_cx_rx_bytes_buffered",
    "envoy_http_downstream_cx_tx_bytes_buffered",
    "envoy_http_downstream_cx_http1_active",
    "envoy_http_downstream_cx_http2_active",
    "envoy_http_downstream_cx_http3_active",
    "envoy_http_downstream_cx_http3_total",
    "envoy_http_downstream_rq_http3_total",
    "envoy_http_downstream_cx_ssl_total",
    "envoy_http_downstream_cx_ssl_active",
    "envoy_http_downstream_cx_upgrades_total",
    "envoy_http_downstream_cx_upgrades_active",
    "envoy_http_downstream_cx_idle_timeout",
    "envoy_http_downstream_cx_max_duration_reached",
    "envoy_http_downstream_cx_drain_close",
    "envoy_http_downstream_rq_completed",
    "envoy_http_downstream_rq_rx_reset",
    "envoy_http_downstream_rq_header_timeout",
    // Listeners: how their connections end, the listener filters, per-connection-manager
    // responses under the listener, and the one worker of `--concurrency 1`.
    // https://www.envoyproxy.io/docs/envoy/latest/configuration/listeners/stats
    "envoy_listener_downstream_cx_destroy",
    "envoy_listener_downstream_cx_length_ms",
    "envoy_listener_downstream_pre_cx_active",
    "envoy_listener_downstream_pre_cx_timeout",
    "envoy_listener_downstream_listener_filter_remote_close",
    "envoy_listener_connections_accepted_per_socket_event",
    "envoy_listener_http_downstream_rq_xx",
    "envoy_listener_http_downstream_rq_completed",
];

/// Families whose values depend on timing or the machine, not on the traffic: only their
/// label sets are compared.
pub const NOT_DETERMINISTIC: &[&str] = &[
    "envoy_server_uptime",
    "envoy_server_memory_allocated",
    "envoy_server_memory_heap_size",
    "envoy_server_memory_physical_size",
    "envoy_server_total_connections",
    "envoy_server_parent_connections",
    "envoy_server_days_until_first_cert_expiring",
    "envoy_server_seconds_until_first_ocsp_response_expiring",
    "envoy_server_hot_restart_epoch",
    "envoy_server_hot_restart_generation",
    "envoy_server_initialization_time_ms",
    "envoy_server_version",
    "envoy_server_concurrency",
    "envoy_server_stats_recent_lookups",
];
