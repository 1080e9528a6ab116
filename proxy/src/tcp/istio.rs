//! Istio's TCP metrics for one `tcp_proxy` (`istio_tcp_connections_opened_total`,
//! `_closed_total`, `istio_tcp_sent_bytes_total`, `_received_bytes_total`): a connection is
//! counted opened once its upstream connection is made (or, never made, when it closes), and
//! closed with its bytes when it ends. The peer is unknown (Outrigger does not speak the TCP
//! metadata exchange), as Istio reports a connection without the exchange; the service comes
//! from the cluster's metadata, the principals from the downstream TLS connection.
//! Labels: istio/proxy `testdata/metric/tcp_*.yaml.tmpl`, `shared/reference/istio-contract.md` §7.

use crate::config::istio::Reporter;
use crate::config::istio_tcp::IstioTcp;
use crate::format::ResponseFlags;
use crate::stats::istio::{
    connection_security, Fixed, FixedRef, LocalLabels, Peer, SeriesKey, Service, TcpSeries,
};
use crate::stats::Store;
use crate::tls::{TlsInfo, UpstreamIdentities};
use crate::upstream::ClusterRuntime;
use std::sync::Arc;

/// A tcp_proxy's Istio metrics, resolved when its listener is built.
#[derive(Debug)]
pub struct TcpIstio {
    fixed: FixedRef,
    source_reporter: bool,
    store: Arc<Store>,
    reporting_period: std::time::Duration,
}

impl TcpIstio {
    pub fn new(config: &IstioTcp, store: &Arc<Store>) -> Self {
        let source_reporter = config.stats.reporter == Reporter::Source;
        let fixed = Fixed {
            source_reporter,
            local: LocalLabels::of(&config.local),
        };
        Self {
            fixed: store.istio.fixed(fixed, &config.local.istio_version),
            source_reporter,
            store: store.clone(),
            reporting_period: config.stats.tcp_reporting_duration,
        }
    }

    /// The series of a connection to `cluster` (None: no cluster was found).
    fn series(
        &self,
        cluster: Option<&ClusterRuntime>,
        tls: Option<&TlsInfo>,
        upstream: Option<&UpstreamIdentities>,
        peer: Option<Arc<Peer>>,
        flags: ResponseFlags,
    ) -> Arc<TcpSeries> {
        let (mutual_tls, principals) = connection_security(self.source_reporter, tls, upstream);
        self.store.istio.tcp_series(SeriesKey {
            fixed: self.fixed.clone(),
            peer,
            service: Service {
                host_header: None,
                route_special: None,
                cluster: cluster.and_then(|c| c.config.istio.clone()),
            },
            grpc: false,
            response_code: 0,
            grpc_status: None,
            response_flags: flags,
            mutual_tls,
            principals,
            tcp: true,
        })
    }
}

/// One proxied connection's part in the metrics.
pub struct IstioConnection<'a> {
    runtime: &'a TcpIstio,
    tls: Option<Arc<TlsInfo>>,
    /// The upstream connection's TLS identities, once it is made.
    upstream: Option<Arc<UpstreamIdentities>>,
    peer: Option<Arc<Peer>>,
    opened: bool,
    /// Bytes already reported (client to upstream, back).
    reported: (u64, u64),
}

impl<'a> IstioConnection<'a> {
    pub fn new(runtime: &'a TcpIstio, tls: Option<Arc<TlsInfo>>) -> Self {
        Self {
            runtime,
            tls,
            upstream: None,
            peer: None,
            opened: false,
            reported: (0, 0),
        }
    }

    /// The upstream connection is made (with these identities when it is TLS).
    pub fn connected(
        &mut self,
        cluster: &ClusterRuntime,
        upstream: Option<Arc<UpstreamIdentities>>,
        endpoint_peer: Option<Arc<Peer>>,
    ) {
        self.upstream = upstream;
        // Without TCP metadata exchange, the client side knows its peer only from the
        // endpoint's `istio.workload` metadata.
        if self.runtime.source_reporter {
            self.peer = endpoint_peer;
        }
        self.runtime
            .series(
                Some(cluster),
                self.tls.as_deref(),
                self.upstream.as_deref(),
                self.peer.clone(),
                ResponseFlags::NONE,
            )
            .opened
            .inc();
        self.opened = true;
    }

    /// How often a live connection's bytes are reported (`tcp_reporting_duration`).
    pub fn reporting_period(&self) -> std::time::Duration {
        self.runtime.reporting_period
    }

    /// A periodic report: the bytes moved since the last one, `upstream_total` from the
    /// client to the upstream and `downstream_total` back, in all.
    pub fn report(&mut self, cluster: &ClusterRuntime, upstream_total: u64, downstream_total: u64) {
        let series = self.runtime.series(
            Some(cluster),
            self.tls.as_deref(),
            self.upstream.as_deref(),
            self.peer.clone(),
            ResponseFlags::NONE,
        );
        series
            .received_bytes
            .add(upstream_total.saturating_sub(self.reported.0));
        series
            .sent_bytes
            .add(downstream_total.saturating_sub(self.reported.1));
        self.reported = (upstream_total, downstream_total);
    }

    /// The connection ended with `flags` after `upstream_bytes` went from the client to the
    /// upstream and `downstream_bytes` back (in all; what periodic reports counted already is
    /// not counted again). Istio's "received" bytes are the request's, its "sent" bytes the
    /// response's.
    pub fn closed(
        self,
        cluster: Option<&ClusterRuntime>,
        flags: ResponseFlags,
        upstream_bytes: u64,
        downstream_bytes: u64,
    ) {
        let series = self.runtime.series(
            cluster,
            self.tls.as_deref(),
            self.upstream.as_deref(),
            self.peer.clone(),
            flags,
        );
        if !self.opened {
            series.opened.inc();
        }
        series.closed.inc();
        series
            .received_bytes
            .add(upstream_bytes.saturating_sub(self.reported.0));
        series
            .sent_bytes
            .add(downstream_bytes.saturating_sub(self.reported.1));
    }
}
