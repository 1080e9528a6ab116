//! Clusters at runtime: hosts, stats and pools, in the same order as the configuration so
//! routes hold plain indexes.

use super::host::{Host, HostSet, HostStats};
use super::pool::Pool;
use crate::config::address::Endpoint;
use crate::config::cluster::{Cluster, Discovery};
use crate::stats::{Counter, Gauge, Store};
use arc_swap::ArcSwap;
use std::sync::{Arc, OnceLock};

/// The per-cluster stats the data path bumps, resolved once (`cluster.<name>.<stat>`).
#[derive(Debug)]
pub struct ClusterStats {
    prefix: String,
    store: Arc<Store>,
    pub upstream_rq_total: Arc<Counter>,
    pub upstream_rq_completed: Arc<Counter>,
    pub upstream_rq_timeout: Arc<Counter>,
    pub upstream_rq_active: Arc<Gauge>,
    pub upstream_cx_connect_fail: Arc<Counter>,
    pub upstream_cx_none_healthy: Arc<Counter>,
    pub upstream_cx_total: Arc<Counter>,
    pub upstream_cx_active: Arc<Gauge>,
    pub upstream_cx_tx_bytes_total: Arc<Counter>,
    pub upstream_cx_rx_bytes_total: Arc<Counter>,
    pub upstream_rq_time: Arc<crate::stats::Histogram>,
    pub membership_total: Arc<Gauge>,
    pub membership_healthy: Arc<Gauge>,
    /// `upstream_rq_1xx` .. `upstream_rq_5xx`, created on first use as Envoy does.
    classes: [OnceLock<Arc<Counter>>; 5],
    /// `upstream_rq_<code>`, created on a code's first use.
    codes: Box<[OnceLock<Arc<Counter>>; 500]>,
}

impl ClusterStats {
    fn new(store: &Arc<Store>, stat_name: &str) -> Self {
        let prefix = format!("cluster.{stat_name}.");
        let c = |s: &str| store.counter(&format!("{prefix}{s}"));
        let g = |s: &str| store.gauge(&format!("{prefix}{s}"));
        Self {
            upstream_rq_total: c("upstream_rq_total"),
            upstream_rq_completed: c("upstream_rq_completed"),
            upstream_rq_timeout: c("upstream_rq_timeout"),
            upstream_rq_active: g("upstream_rq_active"),
            upstream_cx_connect_fail: c("upstream_cx_connect_fail"),
            upstream_cx_none_healthy: c("upstream_cx_none_healthy"),
            upstream_cx_total: c("upstream_cx_total"),
            upstream_cx_active: g("upstream_cx_active"),
            upstream_cx_tx_bytes_total: c("upstream_cx_tx_bytes_total"),
            upstream_cx_rx_bytes_total: c("upstream_cx_rx_bytes_total"),
            upstream_rq_time: store.histogram(&format!("{prefix}upstream_rq_time")),
            membership_total: g("membership_total"),
            membership_healthy: g("membership_healthy"),
            classes: std::array::from_fn(|_| OnceLock::new()),
            codes: Box::new(std::array::from_fn(|_| OnceLock::new())),
            store: store.clone(),
            prefix,
        }
    }

    /// Counts a response by class and by code.
    pub fn response(&self, status: http::StatusCode) {
        let code = status.as_u16();
        if let Some(class) = self.classes.get(usize::from(code / 100).wrapping_sub(1)) {
            class
                .get_or_init(|| {
                    self.store
                        .counter(&format!("{}upstream_rq_{}xx", self.prefix, code / 100))
                })
                .inc();
        }
        if let Some(slot) = self.codes.get(usize::from(code).wrapping_sub(100)) {
            slot.get_or_init(|| {
                self.store
                    .counter(&format!("{}upstream_rq_{code}", self.prefix))
            })
            .inc();
        }
    }
}

pub struct ClusterRuntime {
    pub config: Arc<Cluster>,
    hosts: Arc<ArcSwap<HostSet>>,
    pub pool: Pool,
    pub stats: ClusterStats,
}

impl std::fmt::Debug for ClusterRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterRuntime")
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

impl ClusterRuntime {
    pub fn hosts(&self) -> arc_swap::Guard<Arc<HostSet>> {
        self.hosts.load()
    }

    /// Replaces the host set, keeping the stats of hosts that stay.
    pub fn set_hosts(&self, hosts: Vec<(Endpoint, String, u32)>) {
        let old = self.hosts.load_full();
        let hosts: Vec<Arc<Host>> = hosts
            .into_iter()
            .filter_map(|(address, hostname, weight)| {
                if let Some(h) = old
                    .hosts
                    .iter()
                    .find(|h| h.address == address && h.weight == weight)
                {
                    return Some(h.clone());
                }
                let authority = match &address {
                    Endpoint::Tcp(a) => a.to_string(),
                    Endpoint::Unix(p) => super::connector::unix_authority(p),
                };
                Some(Arc::new(Host {
                    authority: authority.parse().ok()?,
                    address,
                    hostname,
                    weight,
                    stats: HostStats::default(),
                }))
            })
            .collect();
        self.stats.membership_total.set(hosts.len() as u64);
        self.stats.membership_healthy.set(hosts.len() as u64);
        self.hosts.store(Arc::new(HostSet::new(hosts)));
    }
}

#[derive(Debug, Default)]
pub struct ClusterManager {
    clusters: Vec<Arc<ClusterRuntime>>,
    /// For the few lookups by name that happen per request (`cluster_header` routes).
    by_name: std::collections::HashMap<String, usize>,
}

impl ClusterManager {
    pub fn new(clusters: &[Arc<Cluster>], store: &Arc<Store>) -> Self {
        let clusters: Vec<Arc<ClusterRuntime>> = clusters
            .iter()
            .map(|c| {
                let stats = ClusterStats::new(store, &c.stat_name);
                let hosts = Arc::new(ArcSwap::from_pointee(HostSet::default()));
                let accounting = super::ConnectionAccounting {
                    cx_total: stats.upstream_cx_total.clone(),
                    cx_active: stats.upstream_cx_active.clone(),
                    hosts: hosts.clone(),
                };
                let runtime = Arc::new(ClusterRuntime {
                    config: c.clone(),
                    hosts,
                    pool: Pool::new(c, accounting),
                    stats,
                });
                if let Discovery::Static(endpoints) = &c.discovery {
                    runtime.set_hosts(
                        endpoints
                            .iter()
                            .map(|e| (e.address.clone(), String::new(), e.weight))
                            .collect(),
                    );
                }
                runtime
            })
            .collect();
        store
            .gauge("cluster_manager.active_clusters")
            .set(clusters.len() as u64);
        let by_name = clusters
            .iter()
            .enumerate()
            .map(|(i, c)| (c.config.name.clone(), i))
            .collect();
        Self { clusters, by_name }
    }

    pub fn get(&self, index: usize) -> Option<&Arc<ClusterRuntime>> {
        self.clusters.get(index)
    }

    pub fn by_name(&self, name: &str) -> Option<&Arc<ClusterRuntime>> {
        self.index_of(name).and_then(|i| self.clusters.get(i))
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    pub fn all(&self) -> &[Arc<ClusterRuntime>] {
        &self.clusters
    }

    /// Starts DNS resolution for STRICT_DNS and LOGICAL_DNS clusters. Call inside the runtime.
    pub fn start_discovery(&self) {
        for cluster in &self.clusters {
            super::dns::spawn(cluster.clone());
        }
    }
}

impl ClusterRuntime {
    /// The host a request or connection goes to: the balancer's pick, or for ORIGINAL_DST
    /// clusters the downstream's original destination (an address in the configured header
    /// wins when present), with the port override applied.
    pub fn choose_host(
        &self,
        original_destination: Option<std::net::SocketAddr>,
        headers: Option<&http::HeaderMap>,
    ) -> Option<Arc<Host>> {
        match &self.config.discovery {
            Discovery::OriginalDst {
                http_header,
                port_override,
            } => {
                let from_header = http_header
                    .as_ref()
                    .and_then(|name| headers?.get(name))
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<std::net::SocketAddr>().ok());
                let mut address = from_header.or(original_destination)?;
                if let Some(port) = port_override {
                    address.set_port(*port);
                }
                Some(Arc::new(Host {
                    authority: address.to_string().parse().ok()?,
                    address: Endpoint::Tcp(address),
                    hostname: String::new(),
                    weight: 1,
                    stats: HostStats::default(),
                }))
            }
            _ => self.hosts().pick().cloned(),
        }
    }
}
