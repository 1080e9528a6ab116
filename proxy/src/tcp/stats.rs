//! `tcp.<stat_prefix>.*`, the TCP proxy's stats, with Envoy's names (all twelve are created,
//! as Envoy does, so dashboards find them even when zero). Envoy adds four
//! `on_demand_cluster_*` counters only to a filter configured with `on_demand`, a field
//! translation refuses: none here, as in Envoy 1.40 without it.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/listeners/network_filters/tcp_proxy_filter#statistics

use crate::stats::{Counter, Gauge, Store};
use std::sync::Arc;

#[derive(Debug)]
pub struct TcpStats {
    pub downstream_cx_total: Arc<Counter>,
    pub downstream_cx_no_route: Arc<Counter>,
    pub downstream_cx_tx_bytes_total: Arc<Counter>,
    pub downstream_cx_rx_bytes_total: Arc<Counter>,
    pub idle_timeout: Arc<Counter>,
    /// Kept for Envoy's names; Outrigger copies without flow-control pauses or buffering.
    pub downstream_cx_tx_bytes_buffered: Arc<Gauge>,
    pub downstream_cx_rx_bytes_buffered: Arc<Gauge>,
}

impl TcpStats {
    pub fn new(store: &Store, stat_prefix: &str) -> Self {
        let p = format!("tcp.{stat_prefix}.");
        let c = |s: &str| store.counter(&format!("{p}{s}"));
        let g = |s: &str| store.gauge(&format!("{p}{s}"));
        for name in [
            "downstream_flow_control_paused_reading_total",
            "downstream_flow_control_resumed_reading_total",
            "max_downstream_connection_duration",
            "upstream_flush_total",
        ] {
            c(name);
        }
        g("upstream_flush_active");
        Self {
            downstream_cx_total: c("downstream_cx_total"),
            downstream_cx_no_route: c("downstream_cx_no_route"),
            downstream_cx_tx_bytes_total: c("downstream_cx_tx_bytes_total"),
            downstream_cx_rx_bytes_total: c("downstream_cx_rx_bytes_total"),
            idle_timeout: c("idle_timeout"),
            downstream_cx_tx_bytes_buffered: g("downstream_cx_tx_bytes_buffered"),
            downstream_cx_rx_bytes_buffered: g("downstream_cx_rx_bytes_buffered"),
        }
    }
}
