//! Listeners as they run: each filter chain's network filter with its stats resolved, and the
//! table of all listeners (bound or not) that `use_original_dst` hands connections across.

use crate::access_log::{AccessLogs, Files};
use crate::config::address::Endpoint;
use crate::config::listener::{FilterChain, Inspector, Listener, NetworkFilter};
use crate::format::{Context, ResponseFlags, StreamInfo};
use crate::http::{Compressors, FaultStats, HcmStats, HttpContext};
use crate::server::Server;
use crate::stats::{Counter, Gauge};
use crate::tcp::{TcpContext, TcpStats};
use crate::tls::{ServerTls, TlsStats};
use crate::upstream::ClusterManager;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// What a filter chain runs.
#[derive(Clone)]
pub enum ChainRuntime {
    Http(Arc<HttpContext>),
    Tcp(Arc<TcpContext>),
    /// No filters (valid in Envoy): the connection is closed.
    Close,
}

impl ChainRuntime {
    fn build(
        chain: &FilterChain,
        clusters: &Arc<ClusterManager>,
        server: &Arc<Server>,
        files: &Files,
        listener_scope: &str,
    ) -> Self {
        let store = &server.stats;
        match chain.filters.last() {
            Some(NetworkFilter::HttpConnectionManager(hcm)) => {
                ChainRuntime::Http(Arc::new(HttpContext {
                    hcm: hcm.clone(),
                    clusters: clusters.clone(),
                    stats: HcmStats::new(store, &hcm.stat_prefix, listener_scope),
                    fault_stats: FaultStats::new(&hcm.faults, store, &hcm.stat_prefix),
                    jwt_authn: hcm
                        .jwt_authn
                        .iter()
                        .map(|f| {
                            crate::http::jwt_authn::JwtFilterRuntime::new(
                                f,
                                store,
                                &hcm.stat_prefix,
                            )
                        })
                        .collect(),
                    rbac_stats: hcm
                        .rbac
                        .iter()
                        .map(|f| {
                            let prefix = format!("http.{}.", hcm.stat_prefix);
                            crate::rbac::RbacStats::new(store, &prefix, &f.rbac)
                        })
                        .collect(),
                    connection_rbac: connection_rbac(chain, store),
                    compressors: Compressors::new(&hcm.compressors, store, &hcm.stat_prefix),
                    access_logs: AccessLogs::new(&hcm.access_logs, files),
                    server: server.clone(),
                    istio: hcm
                        .istio
                        .as_ref()
                        .map(|i| crate::http::istio::IstioRuntime::new(i, store)),
                    tracing: hcm.tracing.as_ref().map(|t| {
                        crate::http::tracing::HcmTracer::new(
                            t,
                            store,
                            &hcm.stat_prefix,
                            &server.tracers,
                        )
                    }),
                }))
            }
            Some(NetworkFilter::TcpProxy(t)) => ChainRuntime::Tcp(Arc::new(TcpContext {
                config: t.clone(),
                stats: TcpStats::new(store, &t.stat_prefix),
                access_logs: AccessLogs::new(&t.access_logs, files),
                connection_rbac: connection_rbac(chain, store),
                istio: t
                    .istio
                    .as_ref()
                    .map(|i| crate::tcp::TcpIstio::new(i, store)),
            })),
            None => ChainRuntime::Close,
        }
    }
}

/// The chain's network RBAC filters with their counters.
fn connection_rbac(
    chain: &crate::config::listener::FilterChain,
    store: &crate::stats::Store,
) -> Vec<crate::rbac::ConnectionRbac> {
    chain
        .rbac
        .iter()
        .map(|f| crate::rbac::ConnectionRbac::new(store, f))
        .collect()
}

/// Per-listener stats (`listener.<address>.*`).
/// Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/listeners/stats
#[derive(Debug)]
pub struct ListenerStats {
    pub downstream_cx_total: Arc<Counter>,
    pub downstream_cx_active: Arc<Gauge>,
    pub no_filter_chain_match: Arc<Counter>,
    pub downstream_cx_destroy: Arc<Counter>,
    pub downstream_cx_length_ms: Arc<crate::stats::Histogram>,
    /// Sockets in the listener filters, and those the filters gave up on: timed out, or the
    /// client closed before they could decide.
    pub downstream_pre_cx_active: Arc<Gauge>,
    pub downstream_pre_cx_timeout: Arc<Counter>,
    pub downstream_listener_filter_remote_close: Arc<Counter>,
    /// Connections taken per wake-up of the accept loop: one, as tokio hands them out.
    pub connections_accepted_per_socket_event: Arc<crate::stats::Histogram>,
    /// `worker_0.downstream_cx_{total,active}` with one worker (`--concurrency 1`), where
    /// the worker is the listener; with more, Outrigger's tasks belong to no one worker.
    pub worker: Option<(Arc<Counter>, Arc<Gauge>)>,
    /// `server.total_connections`: the active connections of every listener.
    pub server_connections: Arc<Gauge>,
}

impl ListenerStats {
    /// Counts an accepted connection; the guard counts its end.
    pub fn accepted(self: &Arc<Self>) -> AcceptedConnection {
        self.downstream_cx_total.inc();
        self.connections_accepted_per_socket_event.record(1.0);
        if let Some((total, _)) = &self.worker {
            total.inc();
        }
        AcceptedConnection {
            stats: self.clone(),
            born: std::time::Instant::now(),
            active: false,
        }
    }
}

/// A connection of a listener from its accept to its close: `downstream_cx_destroy` and
/// `downstream_cx_length_ms` when it goes.
pub struct AcceptedConnection {
    stats: Arc<ListenerStats>,
    born: std::time::Instant,
    active: bool,
}

impl AcceptedConnection {
    /// The connection is served by its listener (after a hand-off, the target's).
    pub fn activate(&mut self) {
        self.active = true;
        self.stats.downstream_cx_active.inc();
        self.stats.server_connections.inc();
        if let Some((_, active)) = &self.stats.worker {
            active.inc();
        }
    }
}

impl Drop for AcceptedConnection {
    fn drop(&mut self) {
        let stats = &self.stats;
        if self.active {
            stats.downstream_cx_active.dec();
            stats.server_connections.dec();
            if let Some((_, active)) = &stats.worker {
                active.dec();
            }
        }
        stats.downstream_cx_destroy.inc();
        stats
            .downstream_cx_length_ms
            .record(self.born.elapsed().as_millis() as f64);
    }
}

pub struct ListenerRuntime {
    pub config: Arc<Listener>,
    pub chains: Vec<ChainRuntime>,
    pub default_chain: Option<ChainRuntime>,
    /// Each chain's TLS transport socket, by the same index as `chains`.
    pub tls: Vec<Option<Arc<ServerTls>>>,
    pub default_tls: Option<Arc<ServerTls>>,
    pub stats: Arc<ListenerStats>,
    /// The `http_inspector` filter's counters, when the listener has the filter.
    pub http_inspector: Option<super::http_inspector::HttpInspectorStats>,
    /// The listener's own access logs: connections it closes without a filter chain.
    pub access_logs: AccessLogs,
    /// What each chain's connections watch to know they must drain.
    pub drains: super::drains::ChainDrains,
}

impl ListenerRuntime {
    /// `scope` names the stats: the bound address (`127.0.0.1_8080`) or the stat prefix.
    pub fn build(
        config: Arc<Listener>,
        scope: &str,
        clusters: &Arc<ClusterManager>,
        server: &Arc<Server>,
        files: &Files,
        drains: super::drains::ChainDrains,
    ) -> Self {
        let store = &server.stats;
        let scope = if config.stat_prefix.is_empty() {
            scope.to_string()
        } else {
            config.stat_prefix.clone()
        };
        let c = |s: &str| store.counter(&format!("listener.{scope}.{s}"));
        let g = |s: &str| store.gauge(&format!("listener.{scope}.{s}"));
        let h = |s: &str| store.histogram(&format!("listener.{scope}.{s}"));
        let one_worker = store.gauge("server.concurrency").value() == 1;
        let stats = Arc::new(ListenerStats {
            downstream_cx_total: c("downstream_cx_total"),
            downstream_cx_active: g("downstream_cx_active"),
            no_filter_chain_match: c("no_filter_chain_match"),
            downstream_cx_destroy: c("downstream_cx_destroy"),
            downstream_cx_length_ms: h("downstream_cx_length_ms"),
            downstream_pre_cx_active: g("downstream_pre_cx_active"),
            downstream_pre_cx_timeout: c("downstream_pre_cx_timeout"),
            downstream_listener_filter_remote_close: c("downstream_listener_filter_remote_close"),
            connections_accepted_per_socket_event: h("connections_accepted_per_socket_event"),
            server_connections: store.gauge("server.total_connections"),
            worker: one_worker.then(|| {
                (
                    c("worker_0.downstream_cx_total"),
                    g("worker_0.downstream_cx_active"),
                )
            }),
        });
        // Envoy has `listener.<scope>.ssl.*` only for listeners that terminate TLS.
        let any_tls = config
            .filter_chains
            .iter()
            .chain(config.default_filter_chain.as_ref())
            .any(|c| c.tls.is_some());
        let tls_stats =
            any_tls.then(|| Arc::new(TlsStats::new(store, &format!("listener.{scope}."))));
        let tls = |chain: &FilterChain| {
            let stats = tls_stats.clone()?;
            chain
                .tls
                .as_ref()
                .map(|t| ServerTls::new(t.clone(), stats, &server.tls_contexts))
        };
        Self {
            tls: config.filter_chains.iter().map(tls).collect(),
            default_tls: config.default_filter_chain.as_ref().and_then(tls),
            chains: config
                .filter_chains
                .iter()
                .map(|c| ChainRuntime::build(c, clusters, server, files, &scope))
                .collect(),
            default_chain: config
                .default_filter_chain
                .as_ref()
                .map(|c| ChainRuntime::build(c, clusters, server, files, &scope)),
            access_logs: AccessLogs::new(&config.access_logs, files),
            http_inspector: config
                .inspectors
                .iter()
                .any(|(kind, _)| *kind == Inspector::Http)
                .then(|| super::http_inspector::HttpInspectorStats::new(store)),
            drains,
            config,
            stats,
        }
    }
}

impl ListenerRuntime {
    /// Logs a connection closed because no filter chain matched: Envoy's `NR` flag, code 0,
    /// details `filter_chain_not_found`.
    pub fn log_rejected(
        &self,
        remote: Option<SocketAddr>,
        local: Option<SocketAddr>,
        connection_id: u64,
    ) {
        if self.access_logs.is_empty() {
            return;
        }
        let info = StreamInfo {
            response_flags: ResponseFlags::named("NR").unwrap_or_default(),
            response_code_details: Some("filter_chain_not_found".into()),
            connection_id: Some(connection_id),
            duration: Some(std::time::Duration::ZERO),
            ..StreamInfo::default()
        };
        self.access_logs.log(&Context {
            downstream_remote: remote,
            downstream_local: local,
            upstream_remote: None,
            start: std::time::SystemTime::now(),
            protocol: None,
            request_headers: None,
            stream: Some(&info),
            downstream_tls: None,
        });
    }
}

/// Envoy's stat scope for a listener address: `:` replaced, `listener.127.0.0.1_8080.*`.
pub fn address_scope(address: &Endpoint) -> String {
    address.to_string().replace(':', "_")
}

/// Every listener by address, for `use_original_dst` redirection: an exact `ip:port` first,
/// then the wildcard address (`0.0.0.0` or `::`) on that port, as Envoy looks them up.
#[derive(Default)]
pub struct ListenerTable {
    listeners: Vec<Arc<ListenerRuntime>>,
    exact: HashMap<SocketAddr, usize>,
    wildcard: HashMap<(bool, u16), usize>,
}

impl ListenerTable {
    pub fn new(listeners: Vec<Arc<ListenerRuntime>>) -> Self {
        let mut table = Self {
            listeners,
            ..Default::default()
        };
        for (i, l) in table.listeners.iter().enumerate() {
            if let Endpoint::Tcp(addr) = &l.config.address {
                if addr.ip().is_unspecified() {
                    table
                        .wildcard
                        .entry((addr.is_ipv4(), addr.port()))
                        .or_insert(i);
                } else {
                    table.exact.entry(*addr).or_insert(i);
                }
            }
        }
        table
    }

    pub fn find(&self, destination: SocketAddr) -> Option<&Arc<ListenerRuntime>> {
        let i = self.exact.get(&destination).or_else(|| {
            self.wildcard
                .get(&(destination.is_ipv4(), destination.port()))
        })?;
        self.listeners.get(*i)
    }

    pub fn all(&self) -> &[Arc<ListenerRuntime>] {
        &self.listeners
    }
}

/// Whether `destination` is this proxy's own listening socket (a connection made to the
/// capture port itself): handing it to an upstream would loop back into the proxy. A remote
/// service on the same port number is not (`local_ips` are this host's addresses).
pub fn is_own_address(destination: SocketAddr, bound: SocketAddr, local_ips: &[IpAddr]) -> bool {
    destination.port() == bound.port()
        && (destination.ip() == bound.ip()
            || destination.ip().is_loopback()
            || (bound.ip().is_unspecified() && local_ips.contains(&destination.ip())))
}

/// This host's interface addresses.
pub fn local_ips() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|ifa| ifa.address)
        .filter_map(|a| {
            a.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        })
        .collect()
}
