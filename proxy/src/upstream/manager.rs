//! Clusters at runtime: hosts, stats and pools, in the same order as the configuration so
//! routes hold plain indexes.

use super::circuit_breakers::CircuitBreakers;
use super::host::{Host, HostSet, HostSpec, HostStats, PriorityPolicy};
use super::host_pool::PoolStats;
use super::pool::Pool;
use super::transport::ClusterTransports;
use crate::config::address::Endpoint;
use crate::config::cluster::{Assignment, Cluster, Discovery, LbEndpoint};
use crate::config::slots::Slots;
use crate::config::transport_match::{MatchLabels, Selected, TransportSockets};
use crate::stats::responses::ResponseStats;
use crate::stats::{Counter, Gauge, Store};
use crate::tls::ContextManager;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

/// The per-cluster stats the data path bumps, resolved once (`cluster.<name>.<stat>`).
#[derive(Debug)]
pub struct ClusterStats {
    prefix: String,
    store: Arc<Store>,
    pub upstream_rq_total: Arc<Counter>,
    pub upstream_rq_timeout: Arc<Counter>,
    pub upstream_rq_max_duration_reached: Arc<Counter>,
    pub upstream_cx_protocol_error: Arc<Counter>,
    pub upstream_rq_active: Arc<Gauge>,
    pub upstream_cx_connect_fail: Arc<Counter>,
    pub upstream_cx_none_healthy: Arc<Counter>,
    pub upstream_cx_total: Arc<Counter>,
    pub upstream_cx_active: Arc<Gauge>,
    pub upstream_cx_tx_bytes_total: Arc<Counter>,
    pub upstream_cx_rx_bytes_total: Arc<Counter>,
    pub upstream_cx_rx_bytes_buffered: Arc<Gauge>,
    pub upstream_cx_tx_bytes_buffered: Arc<Gauge>,
    /// Circuit breaking and pending requests (Envoy's names).
    pub upstream_rq_pending_total: Arc<Counter>,
    pub upstream_rq_pending_overflow: Arc<Counter>,
    pub upstream_rq_pending_active: Arc<Gauge>,
    pub upstream_rq_active_overflow: Arc<Counter>,
    pub upstream_cx_overflow: Arc<Counter>,
    /// Connection lifetimes: `max_requests_per_connection`, `max_connection_duration` and
    /// the idle timeout ended them.
    pub upstream_cx_max_requests: Arc<Counter>,
    pub upstream_cx_max_duration_reached: Arc<Counter>,
    pub upstream_cx_idle_timeout: Arc<Counter>,
    pub membership_total: Arc<Gauge>,
    pub membership_healthy: Arc<Gauge>,
    /// Host set updates (`update_attempt`, `update_success`, `update_empty`,
    /// `update_no_rebuild`; `update_failure` stays for Envoy's name: a host set is never
    /// refused once translated).
    update_attempt: Arc<Counter>,
    update_success: Arc<Counter>,
    update_empty: Arc<Counter>,
    update_no_rebuild: Arc<Counter>,
    /// `upstream_rq_completed`, `upstream_rq_time` and the counters by class and code, also
    /// under `external.`/`internal.` and `retry.`.
    pub responses: ResponseStats,
    pub retry: RetryStats,
    /// How its connections live and end (lifecycle.rs).
    pub lifecycle: Arc<super::lifecycle::LifecycleStats>,
    /// `grpc.*` of the gRPC statistics filter, made on the cluster's first gRPC call.
    grpc: OnceLock<Box<crate::stats::grpc::GrpcClusterStats>>,
}

/// The retry stats of a cluster, all present from the cluster's creation as in Envoy.
/// Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/upstream/cluster_manager/cluster_stats
#[derive(Debug)]
pub struct RetryStats {
    pub upstream_rq_retry: Arc<Counter>,
    pub upstream_rq_retry_success: Arc<Counter>,
    /// Bumped by the circuit breakers' `max_retries` (not by this module).
    pub upstream_rq_retry_overflow: Arc<Counter>,
    pub upstream_rq_retry_limit_exceeded: Arc<Counter>,
    pub upstream_rq_retry_backoff_exponential: Arc<Counter>,
    /// A retry that waited what the response's reset header asked for.
    pub upstream_rq_retry_backoff_ratelimited: Arc<Counter>,
    pub upstream_rq_per_try_timeout: Arc<Counter>,
    pub upstream_rq_per_try_idle_timeout: Arc<Counter>,
    /// A body that outgrew the buffer limit: the request can no longer be retried.
    pub retry_or_shadow_abandoned: Arc<Counter>,
}

impl ClusterStats {
    /// The stats of cluster `stat_name` in `store`.
    pub fn new(store: &Arc<Store>, stat_name: &str) -> Self {
        let prefix = format!("cluster.{stat_name}.");
        let c = |s: &str| store.counter(&format!("{prefix}{s}"));
        let g = |s: &str| store.gauge(&format!("{prefix}{s}"));
        Self {
            upstream_rq_total: c("upstream_rq_total"),
            upstream_rq_timeout: c("upstream_rq_timeout"),
            upstream_rq_max_duration_reached: c("upstream_rq_max_duration_reached"),
            upstream_cx_protocol_error: c("upstream_cx_protocol_error"),
            upstream_rq_active: g("upstream_rq_active"),
            upstream_cx_connect_fail: c("upstream_cx_connect_fail"),
            upstream_cx_none_healthy: c("upstream_cx_none_healthy"),
            upstream_cx_total: c("upstream_cx_total"),
            upstream_cx_active: g("upstream_cx_active"),
            upstream_cx_tx_bytes_total: c("upstream_cx_tx_bytes_total"),
            upstream_cx_rx_bytes_total: c("upstream_cx_rx_bytes_total"),
            upstream_cx_rx_bytes_buffered: g("upstream_cx_rx_bytes_buffered"),
            upstream_cx_tx_bytes_buffered: g("upstream_cx_tx_bytes_buffered"),
            upstream_rq_pending_total: {
                // Kept for Envoy's name: no outlier detection ejects hosts yet.
                c("upstream_rq_pending_failure_eject");
                c("upstream_rq_pending_total")
            },
            upstream_rq_pending_overflow: c("upstream_rq_pending_overflow"),
            upstream_rq_pending_active: g("upstream_rq_pending_active"),
            upstream_rq_active_overflow: c("upstream_rq_active_overflow"),
            upstream_cx_overflow: {
                // Kept for Envoy's name: `max_connection_pools` is refused at translation.
                c("upstream_cx_pool_overflow");
                c("upstream_cx_overflow")
            },
            upstream_cx_max_requests: c("upstream_cx_max_requests"),
            upstream_cx_max_duration_reached: c("upstream_cx_max_duration_reached"),
            upstream_cx_idle_timeout: c("upstream_cx_idle_timeout"),
            membership_total: g("membership_total"),
            membership_healthy: g("membership_healthy"),
            update_attempt: c("update_attempt"),
            update_success: c("update_success"),
            update_empty: c("update_empty"),
            update_no_rebuild: {
                c("update_failure");
                // The hash of the EDS version last applied (xds/apply.rs); 0 for the others.
                g("version");
                c("update_no_rebuild")
            },
            retry: RetryStats {
                upstream_rq_retry: c("upstream_rq_retry"),
                upstream_rq_retry_success: c("upstream_rq_retry_success"),
                upstream_rq_retry_overflow: c("upstream_rq_retry_overflow"),
                upstream_rq_retry_limit_exceeded: c("upstream_rq_retry_limit_exceeded"),
                upstream_rq_retry_backoff_exponential: c("upstream_rq_retry_backoff_exponential"),
                upstream_rq_retry_backoff_ratelimited: c("upstream_rq_retry_backoff_ratelimited"),
                upstream_rq_per_try_timeout: c("upstream_rq_per_try_timeout"),
                upstream_rq_per_try_idle_timeout: c("upstream_rq_per_try_idle_timeout"),
                retry_or_shadow_abandoned: c("retry_or_shadow_abandoned"),
            },
            responses: ResponseStats::new(store, &prefix),
            lifecycle: Arc::new(super::lifecycle::LifecycleStats::new(store, &prefix)),
            grpc: OnceLock::new(),
            store: store.clone(),
            prefix,
        }
    }

    /// The gRPC statistics filter's stats of this cluster.
    pub fn grpc(&self) -> &crate::stats::grpc::GrpcClusterStats {
        self.grpc.get_or_init(|| {
            Box::new(crate::stats::grpc::GrpcClusterStats::new(
                self.store.clone(),
                &self.prefix,
            ))
        })
    }
}

pub struct ClusterRuntime {
    pub config: Arc<Cluster>,
    /// The name, and the `alt_stat_name` when it differs, shared with every access log line
    /// (`%UPSTREAM_CLUSTER%`, `%UPSTREAM_CLUSTER_RAW%`) instead of copied per request.
    pub log_names: (Arc<str>, Option<Arc<str>>),
    hosts: Arc<ArcSwap<HostSet>>,
    pub pool: Pool,
    pub stats: ClusterStats,
    /// Host health: the outlier detector and panic threshold (`health.rs`).
    pub health: super::health::ClusterHealth,
    /// The cluster's circuit breakers; the pools take connections and requests from them.
    pub breakers: Arc<CircuitBreakers>,
    /// Its transport sockets; each host takes one when it is created.
    pub transports: ClusterTransports,
    /// The one a host without labels takes (ORIGINAL_DST hosts), resolved once.
    unlabelled: Selected,
    /// ORIGINAL_DST clusters: the hosts made for destinations, by address.
    original_dst: super::original_dst::OriginalDstHosts,
}

impl std::fmt::Debug for ClusterRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterRuntime")
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

impl ClusterRuntime {
    fn build(config: Arc<Cluster>, store: &Arc<Store>, contexts: &ContextManager) -> Self {
        let stats = ClusterStats::new(store, &config.stat_name);
        let hosts = Arc::new(ArcSwap::from_pointee(HostSet::default()));
        let accounting = super::ConnectionAccounting {
            cx_total: stats.upstream_cx_total.clone(),
            cx_active: stats.upstream_cx_active.clone(),
            cx_rx_bytes_total: stats.upstream_cx_rx_bytes_total.clone(),
            cx_tx_bytes_total: stats.upstream_cx_tx_bytes_total.clone(),
            cx_rx_bytes_buffered: stats.upstream_cx_rx_bytes_buffered.clone(),
            cx_tx_bytes_buffered: stats.upstream_cx_tx_bytes_buffered.clone(),
            hosts: hosts.clone(),
            lifecycle: stats.lifecycle.clone(),
        };
        let transports =
            ClusterTransports::build(&config.transports, store, &config.stat_name, contexts);
        if matches!(config.discovery, Discovery::Eds { .. }) {
            // Envoy's EDS clusters have these from the start.
            let prefix = format!("cluster.{}.", config.stat_name);
            store.counter(&format!("{prefix}update_rejected"));
            store.gauge(&format!("{prefix}update_time"));
            store.histogram(&format!("{prefix}update_duration"));
            store.text_readout(&format!("{prefix}version_text"));
        }
        let log_names = (
            Arc::from(config.name.as_str()),
            (config.stat_name != config.name).then(|| Arc::from(config.stat_name.as_str())),
        );
        let health =
            super::health::ClusterHealth::new(&config, store, stats.membership_healthy.clone());
        let breakers = Arc::new(CircuitBreakers::new(
            &config.circuit_breakers,
            store,
            &format!("cluster.{}.", config.stat_name),
        ));
        let pool_stats = PoolStats {
            rq_total: stats.upstream_rq_total.clone(),
            rq_pending_total: stats.upstream_rq_pending_total.clone(),
            rq_pending_overflow: stats.upstream_rq_pending_overflow.clone(),
            rq_pending_active: stats.upstream_rq_pending_active.clone(),
            rq_active_overflow: stats.upstream_rq_active_overflow.clone(),
            cx_overflow: stats.upstream_cx_overflow.clone(),
            cx_max_requests: stats.upstream_cx_max_requests.clone(),
            cx_max_duration_reached: stats.upstream_cx_max_duration_reached.clone(),
            cx_idle_timeout: stats.upstream_cx_idle_timeout.clone(),
            rq_cancelled: stats.lifecycle.rq_cancelled.clone(),
        };
        let runtime = Self {
            health,
            pool: Pool::new(
                &config,
                accounting,
                transports.default().clone(),
                breakers.clone(),
                pool_stats,
            ),
            breakers,
            transports,
            unlabelled: config.transports.select(&MatchLabels::default()),
            original_dst: Default::default(),
            log_names,
            config,
            hosts,
            stats,
        };
        if let Discovery::Static(endpoints) = &runtime.config.discovery {
            runtime.set_endpoints(endpoints, runtime.config.priorities);
        }
        runtime
    }

    /// The cluster's first host set (static, or an EDS assignment already received).
    fn set_endpoints(&self, endpoints: &[LbEndpoint], priorities: PriorityPolicy) {
        self.replace_hosts(host_specs(endpoints, &self.config.transports), priorities);
    }

    pub fn hosts(&self) -> arc_swap::Guard<Arc<HostSet>> {
        self.hosts.load()
    }

    /// Replaces the host set, keeping the stats of hosts that stay.
    pub fn set_hosts(&self, hosts: Vec<HostSpec>, priorities: PriorityPolicy) {
        self.stats.update_attempt.inc();
        self.stats.update_success.inc();
        if hosts.is_empty() {
            self.stats.update_empty.inc();
        }
        self.replace_hosts(hosts, priorities);
    }

    /// Installs a host set; `set_hosts` also counts it as an update (the set a cluster is
    /// built with is not one, in Envoy's stats).
    fn replace_hosts(&self, mut hosts: Vec<HostSpec>, priorities: PriorityPolicy) {
        // The set keeps hosts in priority order (as `/clusters` lists them); compare alike.
        hosts.sort_by_key(|h| h.priority);
        let old = self.hosts.load_full();
        // A host whose labels now select another transport socket is a new host: its
        // connections must not carry over.
        let kept = |a: &HostSpec, h: &Host| {
            a.address == h.address
                && a.weight == h.weight
                && a.priority == h.priority
                && a.locality == h.locality
                && *self.transports.get(a.transport) == h.transport
                && a.istio_peer == h.istio_peer
        };
        let same = hosts.len() == old.hosts.len()
            && old.priorities == priorities
            && hosts
                .iter()
                .zip(&old.hosts)
                .all(|(a, h)| kept(a, h) && h.health.eds() == a.eds_health);
        if same && !old.hosts.is_empty() {
            // Nothing to rebuild: the balancer and its hosts stay as they are.
            self.stats.update_no_rebuild.inc();
            return;
        }
        let hosts: Vec<Arc<Host>> = hosts
            .into_iter()
            .filter_map(|spec| {
                if let Some(h) = old.hosts.iter().find(|h| kept(&spec, h)) {
                    // A changed EDS health status moves the host's flag, as in Envoy.
                    h.health.set_eds(spec.eds_health);
                    return Some(h.clone());
                }
                let HostSpec {
                    address,
                    hostname,
                    weight,
                    priority,
                    locality,
                    eds_health,
                    transport,
                    istio_peer,
                } = spec;
                let authority = match &address {
                    Endpoint::Tcp(a) => a.to_string(),
                    Endpoint::Unix(p) => super::connector::unix_authority(p),
                };
                Some(Arc::new(Host {
                    authority: authority.parse().ok()?,
                    transport: self.transports.for_new_host(transport),
                    address,
                    hostname,
                    weight,
                    priority,
                    locality,
                    stats: HostStats::default(),
                    health: {
                        // With active health checking a host takes no traffic until its
                        // first check passes (Envoy marks new hosts so, at startup and after).
                        let health = if self.config.health_check.is_some() {
                            super::health::HostHealth::failing_active_hc()
                        } else {
                            super::health::HostHealth::default()
                        };
                        health.set_eds(eds_health);
                        health
                    },
                    pools: Default::default(),
                    istio_peer,
                }))
            })
            .collect();
        self.stats.membership_total.set(hosts.len() as u64);
        // The balancer (ring, table, schedule) is built here, off the request path.
        self.health
            .install(&self.hosts, hosts, &self.config.lb, priorities);
    }

    /// Looks at an upstream response's headers for Envoy's immediate health check failure,
    /// only in clusters with active health checking (elsewhere Envoy ignores the header too).
    #[inline]
    pub fn response_headers(&self, host: &Host, headers: &http::HeaderMap) {
        if let Some(active) = &self.health.active {
            if headers.contains_key("x-envoy-immediate-health-check-fail")
                && active.passive_failure(host)
            {
                // Rare (an upstream announcing its own failure): rebuilt here, as other
                // health changes are, rather than posted elsewhere.
                self.refresh_health();
            }
        }
    }

    /// Rebuilds the balancer after a host's health flags changed.
    pub(super) fn refresh_health(&self) {
        self.health.refresh(&self.hosts, &self.config.lb);
    }
}

/// The hosts of `endpoints`, each with the transport socket its labels select.
fn host_specs(endpoints: &[LbEndpoint], transports: &TransportSockets) -> Vec<HostSpec> {
    endpoints
        .iter()
        .map(|e| HostSpec {
            address: e.address.clone(),
            hostname: String::new(),
            weight: e.weight,
            priority: e.priority,
            locality: e.locality,
            eds_health: e.eds_health,
            transport: transports.select(&e.labels),
            istio_peer: e.istio_peer.clone(),
        })
        .collect()
}

/// Every active cluster: the static ones from the bootstrap and those CDS adds, updates and
/// removes. Routes reach a cluster through its [`Slot`], so replacing a cluster is one store
/// into the slot; requests already running keep the instance they started on.
pub struct ClusterManager {
    slots: Arc<Slots<ClusterRuntime>>,
    store: Arc<Store>,
    /// Every TLS context in use, listeners' too: clusters are built first, so the registry
    /// starts here and the server shares it (`Server::tls_contexts`).
    pub tls_contexts: Arc<ContextManager>,
    /// Active clusters by name, in the order they were added (the admin endpoints list them
    /// so), and the EDS clusters by service name: a push of thousands of clusters and
    /// assignments finds each one without a scan.
    active: RwLock<Active>,
    /// EDS assignments by service name, kept so a cluster added or replaced later starts
    /// with the endpoints already received.
    assignments: RwLock<HashMap<String, Arc<Assignment>>>,
    /// Set once the runtime runs: from then on new DNS clusters start resolving at once.
    discovery_started: AtomicBool,
    pub stats: ManagerStats,
}

#[derive(Default)]
struct Active {
    by_name: indexmap::IndexMap<String, Arc<ClusterRuntime>, foldhash::fast::RandomState>,
    fed_by: super::fed_by::FedBy,
}

impl Active {
    fn insert(&mut self, runtime: Arc<ClusterRuntime>) {
        let name = runtime.config.name.clone();
        if let Some(old) = self.by_name.insert(name, runtime.clone()) {
            self.fed_by.remove(&old.config);
        }
        self.fed_by.add(&runtime.config);
    }

    fn remove(&mut self, name: &str) -> Option<Arc<ClusterRuntime>> {
        let old = self.by_name.shift_remove(name)?;
        self.fed_by.remove(&old.config);
        Some(old)
    }

    fn fed_by(&self, service_name: &str) -> Vec<Arc<ClusterRuntime>> {
        self.fed_by
            .names(service_name)
            .filter_map(|name| self.by_name.get(name).cloned())
            .collect()
    }
}

/// `cluster_manager.*`: clusters added, changed and removed, and how many warm.
/// Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/upstream/cluster_manager/cluster_manager_stats
#[derive(Debug)]
pub struct ManagerStats {
    /// Static clusters and clusters CDS brought (counted when they start warming).
    pub cluster_added: Arc<Counter>,
    /// A CDS cluster replaced by a different one of the same name.
    pub cluster_modified: Arc<Counter>,
    pub cluster_removed: Arc<Counter>,
    /// Clusters CDS brought that wait for their endpoints or secrets.
    pub warming_clusters: Arc<Gauge>,
    active_clusters: Arc<Gauge>,
}

impl ManagerStats {
    fn new(store: &Store) -> Self {
        let c = |s: &str| store.counter(&format!("cluster_manager.{s}"));
        // Envoy's names for merged host updates; Outrigger applies every update at once.
        c("update_merge_cancelled");
        c("update_out_of_merge_window");
        c("cluster_updated_via_merge");
        Self {
            cluster_added: c("cluster_added"),
            cluster_modified: c("cluster_modified"),
            cluster_removed: c("cluster_removed"),
            warming_clusters: store.gauge("cluster_manager.warming_clusters"),
            active_clusters: store.gauge("cluster_manager.active_clusters"),
        }
    }

    /// CDS brought cluster `known` (one of that name is active or warming) or a new one.
    pub fn cds_cluster(&self, known: bool) {
        match known {
            true => self.cluster_modified.inc(),
            false => self.cluster_added.inc(),
        }
    }
}

impl std::fmt::Debug for ClusterManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterManager").finish_non_exhaustive()
    }
}

impl ClusterManager {
    pub fn new(
        slots: Arc<Slots<ClusterRuntime>>,
        clusters: &[Arc<Cluster>],
        store: &Arc<Store>,
    ) -> Self {
        let manager = Self {
            slots,
            store: store.clone(),
            tls_contexts: Arc::new(ContextManager::new(store.clone())),
            active: RwLock::default(),
            assignments: RwLock::new(HashMap::new()),
            discovery_started: AtomicBool::new(false),
            stats: ManagerStats::new(store),
        };
        for c in clusters {
            manager.stats.cluster_added.inc();
            manager.add_or_update(c.clone());
        }
        manager
    }

    /// The slots routes resolve cluster names to (for translating routes and listeners).
    pub fn slots(&self) -> &Arc<Slots<ClusterRuntime>> {
        &self.slots
    }

    /// Adds a cluster, or replaces the one of the same name. The new instance gets its own
    /// connection pool; the old one serves the requests that hold it until they finish.
    pub fn add_or_update(&self, config: Arc<Cluster>) -> Arc<ClusterRuntime> {
        let runtime = Arc::new(ClusterRuntime::build(
            config,
            &self.store,
            &self.tls_contexts,
        ));
        if let Discovery::Eds { service_name, .. } = &runtime.config.discovery {
            if let Some(a) = self.read_assignments().get(service_name) {
                runtime.set_endpoints(&a.endpoints, a.priorities);
            }
        }
        {
            let mut active = self.write_active();
            active.insert(runtime.clone());
            self.stats.active_clusters.set(active.by_name.len() as u64);
        }
        self.slots
            .slot(&runtime.config.name)
            .set(Some(runtime.clone()));
        if self.discovery_started.load(Ordering::Acquire) {
            super::dns::spawn(&runtime);
            super::outlier::spawn(&runtime);
            super::health_check::spawn(&runtime);
        }
        runtime
    }

    /// Removes a cluster: routes naming it answer 503 (no cluster) from the next request,
    /// and its stats go away with it, as in Envoy.
    pub fn remove(&self, name: &str) -> bool {
        let removed = {
            let mut active = self.write_active();
            let removed = active.remove(name);
            self.stats.active_clusters.set(active.by_name.len() as u64);
            removed
        };
        let Some(removed) = removed else {
            return false;
        };
        let stat_name = &removed.config.stat_name;
        if let Some(slot) = self.slots.find(name) {
            slot.set(None);
        }
        self.store.remove_scope(&format!("cluster.{stat_name}."));
        true
    }

    /// An EDS assignment for `service_name`: every cluster fed by it takes the new endpoints
    /// for its next pick.
    pub fn set_assignment(&self, service_name: &str, assignment: Assignment) {
        let assignment = Arc::new(assignment);
        self.assignments
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(service_name.to_string(), assignment.clone());
        for cluster in self.fed_by(service_name) {
            cluster.set_hosts(
                host_specs(&assignment.endpoints, &cluster.config.transports),
                assignment.priorities,
            );
        }
    }

    /// Forgets an EDS assignment (removed by the control plane); its clusters keep their hosts
    /// until a new assignment arrives, as Envoy does.
    pub fn remove_assignment(&self, service_name: &str) {
        self.assignments
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(service_name);
    }

    pub fn has_assignment(&self, service_name: &str) -> bool {
        self.read_assignments().contains_key(service_name)
    }

    fn read_assignments(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Assignment>>> {
        self.assignments.read().unwrap_or_else(|e| e.into_inner())
    }

    /// A cluster by name, for the few lookups by name (`cluster_header` routes, admin).
    pub fn by_name(&self, name: &str) -> Option<Arc<ClusterRuntime>> {
        self.slots.find(name)?.get()
    }

    /// Every active cluster, in the order they were added.
    pub fn all(&self) -> Vec<Arc<ClusterRuntime>> {
        self.read_active().by_name.values().cloned().collect()
    }

    /// The active clusters whose endpoints come from EDS under `service_name`.
    pub fn fed_by(&self, service_name: &str) -> Vec<Arc<ClusterRuntime>> {
        self.read_active().fed_by(service_name)
    }

    fn read_active(&self) -> std::sync::RwLockReadGuard<'_, Active> {
        self.active.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_active(&self) -> std::sync::RwLockWriteGuard<'_, Active> {
        self.active.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts DNS resolution for STRICT_DNS and LOGICAL_DNS clusters. Call inside the runtime.
    pub fn start_discovery(&self) {
        self.discovery_started.store(true, Ordering::Release);
        for cluster in self.all() {
            super::dns::spawn(&cluster);
            super::outlier::spawn(&cluster);
            super::health_check::spawn(&cluster);
        }
    }
}

impl ClusterRuntime {
    /// The host a request or connection goes to: the balancer's pick, or for ORIGINAL_DST
    /// clusters the downstream's original destination (an address in the configured header
    /// wins when present), with the port override applied. `hash` is the request hash from
    /// the route's hash policy (RING_HASH and MAGLEV use it).
    pub fn choose_host(
        &self,
        original_destination: Option<std::net::SocketAddr>,
        headers: Option<&http::HeaderMap>,
        hash: Option<u64>,
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
                // Counted in `total_match_count` once per cached host, as Envoy counts its
                // original destination hosts.
                self.original_dst
                    .host(address, || self.transports.for_new_host(self.unlabelled))
            }
            _ => self.hosts().pick_hashed(hash).cloned(),
        }
    }
}
