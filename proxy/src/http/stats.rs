//! `http.<stat_prefix>.*` stats of a connection manager, and its per-listener
//! `listener.<address>.http.<stat_prefix>.*` response counters, resolved once per listener.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/stats

use crate::stats::{Counter, Gauge, Histogram, Store};
use std::sync::Arc;

#[derive(Debug)]
pub struct HcmStats {
    pub downstream_cx_total: Arc<Counter>,
    pub downstream_cx_active: Arc<Gauge>,
    pub downstream_cx_http1_total: Arc<Counter>,
    pub downstream_cx_http2_total: Arc<Counter>,
    /// Connections closed for a request the codec could not parse.
    pub downstream_cx_protocol_error: Arc<Counter>,
    pub downstream_rq_total: Arc<Counter>,
    pub downstream_rq_active: Arc<Gauge>,
    pub downstream_rq_http1_total: Arc<Counter>,
    pub downstream_rq_http2_total: Arc<Counter>,
    /// `downstream_rq_1xx` .. `downstream_rq_5xx`.
    pub downstream_rq_class: [Arc<Counter>; 5],
    /// Responses sent (Envoy charges it with the class counter, when response headers go out).
    pub downstream_rq_completed: Arc<Counter>,
    /// The same two under the listener's scope: `listener.<address>.http.<prefix>.*`.
    pub listener_rq_class: [Arc<Counter>; 5],
    pub listener_rq_completed: Arc<Counter>,
    pub no_route: Arc<Counter>,
    pub rq_direct_response: Arc<Counter>,
    pub rq_redirect: Arc<Counter>,
    pub no_cluster: Arc<Counter>,
    pub downstream_rq_time: Arc<Histogram>,
    /// Streams ended by the stream idle timeout, the request timeout, the stream duration.
    pub downstream_rq_idle_timeout: Arc<Counter>,
    pub downstream_rq_timeout: Arc<Counter>,
    pub downstream_rq_max_duration_reached: Arc<Counter>,
    /// Requests refused before routing: a path normalisation failed, an escaped slash
    /// redirected, a path not starting with `/` (`request_checks.rs`).
    pub downstream_rq_failed_path_normalization: Arc<Counter>,
    pub downstream_rq_redirected_with_normalized_path: Arc<Counter>,
    pub downstream_rq_non_relative_path: Arc<Counter>,
    /// How connections live and end (`super::downstream_cx`).
    pub cx: CxStats,
    /// `http1.*` and `http2.*`, the codecs' stats.
    pub codec: CodecStats,
}

/// The downstream codecs' stats (`http1.*`, `http2.*`, shared by every connection manager):
/// Envoy makes each set when the first connection of that protocol starts. Only the ones
/// about headers with underscores are kept; the rest of Envoy's codec stats count codec
/// internals (floods, frame counts) that hyper and h2 handle on their own.
/// Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/stats#http1-codec-statistics
#[derive(Debug)]
pub struct CodecStats {
    store: Arc<Store>,
    http1: std::sync::OnceLock<UnderscoreStats>,
    http2: std::sync::OnceLock<UnderscoreStats>,
}

#[derive(Debug)]
pub struct UnderscoreStats {
    /// Headers removed (`DROP_HEADER`), one per header.
    pub dropped_headers_with_underscores: Arc<Counter>,
    /// Requests refused (`REJECT_REQUEST`).
    pub requests_rejected_with_underscores_in_headers: Arc<Counter>,
}

impl CodecStats {
    /// The stats of the HTTP/1 or HTTP/2 codec, made on first use.
    pub fn of(&self, http2: bool) -> &UnderscoreStats {
        let (cell, scope) = match http2 {
            true => (&self.http2, "http2"),
            false => (&self.http1, "http1"),
        };
        cell.get_or_init(|| {
            let c = |s: &str| self.store.counter(&format!("{scope}.{s}"));
            if !http2 {
                // Envoy's other HTTP/1 codec stats: metadata is HTTP/2 only, and hyper
                // bounds pipelined responses itself.
                c("metadata_not_supported_error");
                c("response_flood");
            }
            UnderscoreStats {
                dropped_headers_with_underscores: c("dropped_headers_with_underscores"),
                requests_rejected_with_underscores_in_headers: c(
                    "requests_rejected_with_underscores_in_headers",
                ),
            }
        })
    }
}

/// The connection-lifecycle stats of a connection manager.
#[derive(Debug)]
pub struct CxStats {
    pub destroy: Arc<Counter>,
    pub destroy_local: Arc<Counter>,
    pub destroy_remote: Arc<Counter>,
    pub destroy_active_rq: Arc<Counter>,
    pub destroy_local_active_rq: Arc<Counter>,
    pub destroy_remote_active_rq: Arc<Counter>,
    pub length_ms: Arc<Histogram>,
    pub rx_bytes_total: Arc<Counter>,
    pub tx_bytes_total: Arc<Counter>,
    pub rx_bytes_buffered: Arc<Gauge>,
    pub tx_bytes_buffered: Arc<Gauge>,
    pub http1_active: Arc<Gauge>,
    pub http2_active: Arc<Gauge>,
    pub ssl_total: Arc<Counter>,
    pub ssl_active: Arc<Gauge>,
    pub upgrades_total: Arc<Counter>,
    pub upgrades_active: Arc<Gauge>,
    pub idle_timeout: Arc<Counter>,
    pub max_duration_reached: Arc<Counter>,
    pub max_requests_reached: Arc<Counter>,
    pub drain_close: Arc<Counter>,
    /// Streams the client reset (HTTP/2 `RST_STREAM`) or left by closing the connection.
    pub rq_rx_reset: Arc<Counter>,
    /// `request_headers_timeout` ended a request whose headers had not all arrived.
    pub rq_header_timeout: Arc<Counter>,
}

impl HcmStats {
    /// `listener_scope` names the listener (`127.0.0.1_8080`, or its stat prefix).
    pub fn new(store: &Arc<Store>, stat_prefix: &str, listener_scope: &str) -> Self {
        let p = format!("http.{stat_prefix}.");
        let c = |s: &str| store.counter(&format!("{p}{s}"));
        let g = |s: &str| store.gauge(&format!("{p}{s}"));
        let l = |s: &str| store.counter(&format!("listener.{listener_scope}.{p}{s}"));
        // Outrigger serves no HTTP/3: these stay 0, as Envoy's do without a QUIC listener.
        c("downstream_cx_http3_total");
        g("downstream_cx_http3_active");
        c("downstream_rq_http3_total");
        Self {
            downstream_cx_total: c("downstream_cx_total"),
            downstream_cx_active: g("downstream_cx_active"),
            downstream_cx_http1_total: c("downstream_cx_http1_total"),
            downstream_cx_http2_total: c("downstream_cx_http2_total"),
            downstream_cx_protocol_error: c("downstream_cx_protocol_error"),
            downstream_rq_total: c("downstream_rq_total"),
            downstream_rq_active: g("downstream_rq_active"),
            downstream_rq_http1_total: c("downstream_rq_http1_total"),
            downstream_rq_http2_total: c("downstream_rq_http2_total"),
            downstream_rq_class: std::array::from_fn(|i| c(&format!("downstream_rq_{}xx", i + 1))),
            downstream_rq_completed: c("downstream_rq_completed"),
            listener_rq_class: std::array::from_fn(|i| l(&format!("downstream_rq_{}xx", i + 1))),
            listener_rq_completed: l("downstream_rq_completed"),
            no_route: c("no_route"),
            rq_direct_response: c("rq_direct_response"),
            rq_redirect: c("rq_redirect"),
            no_cluster: c("no_cluster"),
            downstream_rq_time: store.histogram(&format!("{p}downstream_rq_time")),
            downstream_rq_idle_timeout: c("downstream_rq_idle_timeout"),
            downstream_rq_timeout: c("downstream_rq_timeout"),
            downstream_rq_max_duration_reached: c("downstream_rq_max_duration_reached"),
            downstream_rq_failed_path_normalization: c("downstream_rq_failed_path_normalization"),
            downstream_rq_redirected_with_normalized_path: c(
                "downstream_rq_redirected_with_normalized_path",
            ),
            downstream_rq_non_relative_path: c("downstream_rq_non_relative_path"),
            codec: CodecStats {
                store: store.clone(),
                http1: Default::default(),
                http2: Default::default(),
            },
            cx: CxStats {
                destroy: c("downstream_cx_destroy"),
                destroy_local: c("downstream_cx_destroy_local"),
                destroy_remote: c("downstream_cx_destroy_remote"),
                destroy_active_rq: c("downstream_cx_destroy_active_rq"),
                destroy_local_active_rq: c("downstream_cx_destroy_local_active_rq"),
                destroy_remote_active_rq: c("downstream_cx_destroy_remote_active_rq"),
                length_ms: store.histogram(&format!("{p}downstream_cx_length_ms")),
                rx_bytes_total: c("downstream_cx_rx_bytes_total"),
                tx_bytes_total: c("downstream_cx_tx_bytes_total"),
                rx_bytes_buffered: g("downstream_cx_rx_bytes_buffered"),
                tx_bytes_buffered: g("downstream_cx_tx_bytes_buffered"),
                http1_active: g("downstream_cx_http1_active"),
                http2_active: g("downstream_cx_http2_active"),
                ssl_total: c("downstream_cx_ssl_total"),
                ssl_active: g("downstream_cx_ssl_active"),
                upgrades_total: c("downstream_cx_upgrades_total"),
                upgrades_active: g("downstream_cx_upgrades_active"),
                idle_timeout: c("downstream_cx_idle_timeout"),
                max_duration_reached: c("downstream_cx_max_duration_reached"),
                max_requests_reached: c("downstream_cx_max_requests_reached"),
                drain_close: c("downstream_cx_drain_close"),
                rq_rx_reset: c("downstream_rq_rx_reset"),
                rq_header_timeout: c("downstream_rq_header_timeout"),
            },
        }
    }

    /// A response's headers went out: its class and `downstream_rq_completed`, for the
    /// connection manager and for its listener (Envoy's `chargeStats`).
    pub fn response(&self, status: http::StatusCode) {
        self.downstream_rq_completed.inc();
        self.listener_rq_completed.inc();
        let class = usize::from(status.as_u16() / 100).wrapping_sub(1);
        if let (Some(c), Some(l)) = (
            self.downstream_rq_class.get(class),
            self.listener_rq_class.get(class),
        ) {
            c.inc();
            l.inc();
        }
    }
}
