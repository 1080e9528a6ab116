//! `http.<stat_prefix>.*` stats of a connection manager, resolved once per listener.

use crate::stats::{Counter, Gauge, Store};
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
    pub no_route: Arc<Counter>,
    pub rq_direct_response: Arc<Counter>,
    pub rq_redirect: Arc<Counter>,
    pub no_cluster: Arc<Counter>,
    pub downstream_rq_time: Arc<crate::stats::Histogram>,
    /// Streams ended by the stream idle timeout, the request timeout, the stream duration.
    pub downstream_rq_idle_timeout: Arc<Counter>,
    pub downstream_rq_timeout: Arc<Counter>,
    pub downstream_rq_max_duration_reached: Arc<Counter>,
}

impl HcmStats {
    pub fn new(store: &Store, stat_prefix: &str) -> Self {
        let p = format!("http.{stat_prefix}.");
        let c = |s: &str| store.counter(&format!("{p}{s}"));
        let g = |s: &str| store.gauge(&format!("{p}{s}"));
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
            no_route: c("no_route"),
            rq_direct_response: c("rq_direct_response"),
            rq_redirect: c("rq_redirect"),
            no_cluster: c("no_cluster"),
            downstream_rq_time: store.histogram(&format!("{p}downstream_rq_time")),
            downstream_rq_idle_timeout: c("downstream_rq_idle_timeout"),
            downstream_rq_timeout: c("downstream_rq_timeout"),
            downstream_rq_max_duration_reached: c("downstream_rq_max_duration_reached"),
        }
    }

    pub fn response(&self, status: http::StatusCode) {
        if let Some(c) = self
            .downstream_rq_class
            .get(usize::from(status.as_u16() / 100).wrapping_sub(1))
        {
            c.inc();
        }
    }
}
