//! Applying xDS resources: each one is decoded and translated by the same code as the
//! bootstrap (so a NACK names the same field path `--mode validate` would), then handed to the
//! cluster manager, the listener manager or a route slot.
//!
//! Warming follows Envoy: an EDS cluster waits for its endpoints, a listener for its RDS route
//! tables, before they take traffic; the ones they replace keep serving meanwhile.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#resource-warming

mod warming;

use super::records::{Failure, Kind, Record, Records};
use super::stats::SubscriptionStats;
use crate::config::cluster::{translate_cluster, translate_load_assignment, Discovery};
use crate::config::dynamic::AdsConfig;
use crate::config::listener::{translate_listener, Listener};
use crate::config::resolver::Resolver;
use crate::config::route::{translate_route_config, RouteConfig};
use crate::config::slots::Slots;
use crate::config::{ConfigError, FieldPath, RuntimeLayer};
use crate::listener::ListenerManager;
use crate::stats::Store;
use crate::upstream::ClusterManager;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use xds_proto::pb::envoy::config::cluster::v3::Cluster as ProtoCluster;
use xds_proto::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds_proto::pb::envoy::config::listener::v3::Listener as ProtoListener;
use xds_proto::pb::envoy::config::route::v3::RouteConfiguration;
use xds_proto::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use xds_proto::pb::google::protobuf::Any;

/// The applier, shared by the ADS stream and the file watchers.
pub type SharedApplier = Arc<std::sync::Mutex<Applier>>;

/// Locks the applier; a panic elsewhere while it was held does not stop configuration.
pub fn lock(applier: &SharedApplier) -> std::sync::MutexGuard<'_, Applier> {
    applier.lock().unwrap_or_else(|e| e.into_inner())
}

/// One resource of a response: its name, version and payload.
#[derive(Debug, Clone)]
pub struct Update {
    pub name: String,
    pub version: String,
    pub resource: Any,
}

/// Everything the resources of one response change.
pub struct Applier {
    clusters: Arc<ClusterManager>,
    listeners: Arc<ListenerManager>,
    route_slots: Arc<Slots<RouteConfig>>,
    runtime: Vec<RuntimeLayer>,
    /// The bootstrap node, for Istio's filters in LDS resources.
    local: Arc<crate::config::istio_node::LocalWorkload>,
    /// The bootstrap's tracing provider, for connection managers LDS delivers.
    tracing: crate::config::tracing::TracingDefaults,
    records: Arc<Records>,
    store: Arc<Store>,
    static_clusters: HashSet<String>,
    static_listeners: HashSet<String>,
    /// Clusters waiting for their first assignment or their secrets.
    warming_clusters: warming::WarmingClusters,
    /// Listeners waiting for their route tables, by name.
    warming_listeners: BTreeMap<String, (Arc<Listener>, Instant)>,
    /// `cluster_manager.cds.*` and `listener_manager.lds.*`.
    /// Present when the bootstrap subscribes the type (Envoy has them only then).
    cds_stats: Option<SubscriptionStats>,
    lds_stats: Option<SubscriptionStats>,
    /// `http.<stat_prefix>.rds.<name>.*`, per route table and connection manager using it.
    rds_stats: BTreeMap<(String, String), SubscriptionStats>,
    /// Whether the response being applied changed anything (for `config_reload`).
    reloaded: bool,
    acknowledged: super::acknowledged::AcknowledgedFields,
    /// The compiled secrets TLS contexts read; SDS updates are published here.
    secret_slots: Arc<crate::config::tls::SecretSlots>,
    /// The server's initialisation, which the CDS and LDS streams (one aggregated stream, or
    /// one each) advance together.
    pub init: super::init::Init,
}

impl Applier {
    pub fn new(
        clusters: Arc<ClusterManager>,
        listeners: Arc<ListenerManager>,
        config: &crate::config::Config,
        records: Arc<Records>,
        store: Arc<Store>,
    ) -> Self {
        let store_for_stats = store.clone();
        Self {
            clusters,
            listeners,
            route_slots: config.route_slots.clone(),
            runtime: config.runtime.clone(),
            local: config.node.workload.clone(),
            tracing: config.tracing.clone(),
            records,
            store,
            static_clusters: config.clusters.iter().map(|c| c.name.clone()).collect(),
            static_listeners: config.listeners.iter().map(|l| l.name.clone()).collect(),
            warming_clusters: Default::default(),
            warming_listeners: BTreeMap::new(),
            cds_stats: config
                .dynamic
                .cds
                .is_some()
                .then(|| SubscriptionStats::cds(&store_for_stats)),
            lds_stats: config
                .dynamic
                .lds
                .is_some()
                .then(|| SubscriptionStats::lds(&store_for_stats)),
            rds_stats: BTreeMap::new(),
            reloaded: false,
            acknowledged: Default::default(),
            secret_slots: config.secret_slots.clone(),
            init: super::init::Init::new(config),
        }
    }

    /// Applies one response's resources and removals. Each resource stands alone: a bad one is
    /// reported and the rest are applied, as Envoy does. Returns the errors, one per refused
    /// resource, for the NACK.
    pub fn apply(&mut self, kind: Kind, updates: Vec<Update>, removed: &[String]) -> Vec<String> {
        let mut errors = Vec::new();
        self.reloaded = !removed.is_empty();
        for name in removed {
            self.remove(kind, name);
        }
        for update in updates {
            let outcome = self.apply_one(kind, &update);
            if outcome.is_ok() {
                // Envoy's error_state: "cleared after the next successful update".
                self.records.clear_failure(kind, &update.name);
            }
            if let Err(e) = outcome {
                let details = describe(kind, &update.name, &e);
                tracing::warn!(target: "config", "rejected {}: {details}", kind.short());
                self.records.fail(
                    kind,
                    &update.name,
                    Failure {
                        resource: update.resource.clone(),
                        details: details.clone(),
                        at: SystemTime::now(),
                    },
                );
                errors.push(details);
                if kind == Kind::Route {
                    for stats in self.route_stats(&update.name) {
                        stats.refused(Instant::now());
                    }
                }
                if kind == Kind::Endpoint {
                    self.eds_stats(&update.name, |prefix, store| {
                        store.counter(&format!("{prefix}update_rejected")).inc();
                    });
                }
            }
        }
        self.count_warming();
        errors
    }

    /// Runs `f` with the stat prefix (`cluster.<stat_name>.`) of every cluster fed by EDS
    /// under `service_name`. EDS updates are rare next to requests: the names are formatted here.
    fn eds_stats(&self, service_name: &str, f: impl Fn(&str, &Store)) {
        // Warming clusters too: their first assignment is the one that warms them.
        let active = self.clusters.fed_by(service_name);
        let configs = active
            .iter()
            .map(|c| &c.config)
            .chain(self.warming_clusters.fed_by(service_name));
        let mut seen = BTreeSet::new();
        for config in configs {
            if seen.insert(config.stat_name.clone()) {
                f(&format!("cluster.{}.", config.stat_name), &self.store);
            }
        }
    }

    /// Whether the response last applied added, changed or removed anything. Envoy moves the
    /// CDS and LDS `version_info` of `/config_dump` only then: a response that repeats what is
    /// held is ACKed with its version, but the dump keeps the version that made the change.
    pub fn changed_anything(&self) -> bool {
        self.reloaded
    }

    /// Counts a response of a wildcard type (CDS, LDS) in its subscription stats.
    pub fn account(&self, kind: Kind, version: &str, accepted: bool, started: Instant) {
        let Some(stats) = self.type_stats(kind) else {
            return;
        };
        stats.attempt.inc();
        if accepted {
            stats.accepted(version, started, self.reloaded);
        } else {
            stats.refused(started);
        }
    }

    /// A stream carrying the subscription to `names` of `kind` failed: each subscription
    /// counts it in its `update_failure`, as Envoy's do (secrets keep no such stat here).
    pub fn count_stream_failure(&self, kind: Kind, names: &BTreeSet<String>) {
        match kind {
            Kind::Cluster | Kind::Listener => {
                if let Some(stats) = self.type_stats(kind) {
                    stats.failure.inc();
                }
            }
            Kind::Endpoint => {
                for name in names {
                    self.eds_stats(name, |prefix, store| {
                        store.counter(&format!("{prefix}update_failure")).inc();
                    });
                }
            }
            Kind::Route => {
                for name in names {
                    for stats in self.route_stats(name) {
                        stats.failure.inc();
                    }
                }
            }
            Kind::Secret => {}
        }
    }

    /// The subscription stats of a wildcard type, for stream failures and fetch timeouts.
    pub fn type_stats(&self, kind: Kind) -> Option<&SubscriptionStats> {
        match kind {
            Kind::Cluster => self.cds_stats.as_ref(),
            Kind::Listener => self.lds_stats.as_ref(),
            _ => None,
        }
    }

    fn route_stats<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a SubscriptionStats> {
        self.rds_stats
            .range((name.to_string(), String::new())..)
            .take_while(move |((n, _), _)| n == name)
            .map(|(_, s)| s)
    }

    /// Creates the RDS stats of a listener's connection managers (Envoy has them from the
    /// moment the subscription exists).
    fn add_route_stats(&mut self, listener: &Listener) {
        for (slot, _, prefix) in listener.rds_subscriptions() {
            let key = (slot.name.to_string(), prefix);
            if !self.rds_stats.contains_key(&key) {
                let stats = SubscriptionStats::rds(&self.store, &key.1, &key.0);
                self.rds_stats.insert(key, stats);
            }
        }
    }

    /// The RDS stats of the bootstrap's listeners.
    pub fn add_static_route_stats(&mut self, listeners: &[Arc<Listener>]) {
        for l in listeners {
            self.add_route_stats(l);
        }
    }

    /// The names of the dynamic resources of `kind` held now (for state-of-the-world removals).
    pub fn dynamic_names(&self, kind: Kind) -> BTreeSet<String> {
        let mut names: BTreeSet<String> = self
            .records
            .of(kind)
            .into_iter()
            .filter(|(_, e)| e.active.is_some() || e.warming.is_some())
            .map(|(n, _)| n)
            .collect();
        if kind == Kind::Listener {
            names.extend(self.listeners.dynamic_names());
        }
        names
    }

    /// EDS service names the clusters need from `source` (None: ADS), static ones included.
    pub fn wanted_endpoints(&self, source: Option<&AdsConfig>) -> BTreeSet<String> {
        self.endpoint_sources()
            .into_iter()
            .filter(|(s, _)| s.as_ref() == source)
            .map(|(_, n)| n)
            .collect()
    }

    /// Every EDS service name the clusters need, with its source (None: ADS).
    pub fn endpoint_sources(&self) -> BTreeSet<(Option<AdsConfig>, String)> {
        let active = self.clusters.all();
        active
            .iter()
            .map(|c| &c.config)
            .chain(self.warming_clusters.values().map(|(c, _)| c))
            .filter_map(|c| match &c.discovery {
                Discovery::Eds {
                    service_name,
                    source,
                    ..
                } => Some((source.clone(), service_name.clone())),
                _ => None,
            })
            .collect()
    }

    /// The EDS service names that come over streams of their own (`api_config_source`), with
    /// their sources; nothing is copied for the ADS ones (the stream spawner asks often).
    pub fn per_type_endpoint_sources(&self) -> Vec<(AdsConfig, String)> {
        let active = self.clusters.all();
        active
            .iter()
            .map(|c| &c.config)
            .chain(self.warming_clusters.values().map(|(c, _)| c))
            .filter_map(|c| match &c.discovery {
                Discovery::Eds {
                    service_name,
                    source: Some(source),
                    ..
                } => Some((source.clone(), service_name.clone())),
                _ => None,
            })
            .collect()
    }

    /// Whether a cluster still takes `name`'s endpoints from `source`.
    pub fn wants_endpoints(&self, source: &AdsConfig, name: &str) -> bool {
        let active = self.clusters.all();
        active
            .iter()
            .map(|c| &c.config)
            .chain(self.warming_clusters.values().map(|(c, _)| c))
            .any(|c| {
                matches!(&c.discovery, Discovery::Eds { service_name, source: Some(s), .. }
                    if service_name == name && s == source)
            })
    }

    /// RDS route configuration names the listeners need from `source` (None: ADS), static
    /// ones included.
    pub fn wanted_routes(
        &self,
        static_listeners: &[Arc<Listener>],
        source: Option<&AdsConfig>,
    ) -> BTreeSet<String> {
        self.route_sources(static_listeners)
            .into_iter()
            .filter(|(s, _)| s.as_ref() == source)
            .map(|(_, n)| n)
            .collect()
    }

    /// Every RDS name the listeners need (static, active, warming, and draining until their
    /// drain is over), with its source (None: ADS).
    pub fn route_sources(
        &self,
        static_listeners: &[Arc<Listener>],
    ) -> BTreeSet<(Option<AdsConfig>, String)> {
        static_listeners
            .iter()
            .chain(self.warming_listeners.values().map(|(l, _)| l))
            .flat_map(|l| l.rds_routes())
            .map(|(slot, source)| (source.grpc, slot.name.to_string()))
            .chain(self.listeners.route_sources())
            .collect()
    }

    /// The names of the clusters a route may name now.
    fn known_clusters(&self) -> HashSet<String> {
        self.clusters
            .all()
            .iter()
            .map(|c| c.config.name.clone())
            .collect()
    }

    /// What listener and route translation resolves names against.
    fn resolver<'a>(&'a self, known: &'a HashSet<String>) -> Resolver<'a> {
        Resolver {
            slots: self.clusters.slots(),
            route_slots: &self.route_slots,
            known_clusters: known,
            runtime: &self.runtime,
            secrets: &self.secret_slots,
            local: &self.local,
            inbound: false,
            outbound: false,
            tracing: &self.tracing,
        }
    }

    fn apply_one(&mut self, kind: Kind, update: &Update) -> Result<(), ConfigError> {
        let unchanged = self
            .records
            .holds(kind, &update.name, &update.resource.value);
        if unchanged {
            // Envoy skips resources whose content did not change: no new pools or drains.
            return Ok(());
        }
        self.reloaded = true;
        let started = Instant::now();
        let record = Record {
            version: update.version.clone(),
            last_updated: SystemTime::now(),
            resource: update.resource.clone(),
        };
        let root = FieldPath::root("");
        let mut acks = Vec::new();
        match kind {
            Kind::Cluster => {
                let proto: ProtoCluster = unpack(&update.resource)?;
                check_name(&proto.name, &update.name)?;
                if self.static_clusters.contains(&proto.name) {
                    return Err(root.field("name").error(format!(
                        "cluster '{}' is a static cluster and cannot be changed by CDS",
                        proto.name
                    )));
                }
                let cluster = Arc::new(translate_cluster(
                    &proto,
                    &root,
                    &self.secret_slots,
                    &mut acks,
                )?);
                let known = self.warming_clusters.contains_key(&proto.name)
                    || self.clusters.by_name(&proto.name).is_some();
                self.clusters.stats.cds_cluster(known);
                if !self.cluster_ready(&cluster) {
                    self.warming_clusters
                        .insert(proto.name.clone(), (cluster, Instant::now()));
                    self.records.warm(kind, &proto.name, record);
                } else {
                    self.warming_clusters.remove(&proto.name);
                    self.clusters.add_or_update(cluster);
                    self.records.activate(kind, &proto.name, record);
                }
            }
            Kind::Endpoint => {
                let proto: ClusterLoadAssignment = unpack(&update.resource)?;
                check_name(&proto.cluster_name, &update.name)?;
                let assignment = translate_load_assignment(&proto, &root, &mut acks)?;
                self.clusters
                    .set_assignment(&proto.cluster_name, assignment);
                self.records.activate(kind, &proto.cluster_name, record);
                self.eds_stats(&proto.cluster_name, |prefix, store| {
                    store
                        .gauge(&format!("{prefix}update_time"))
                        .set(super::stats::epoch_ms());
                    store
                        .histogram(&format!("{prefix}update_duration"))
                        .record(started.elapsed().as_secs_f64() * 1000.0);
                    store
                        .text_readout(&format!("{prefix}version_text"))
                        .set(&update.version);
                    store
                        .gauge(&format!("{prefix}version"))
                        .set(super::stats::version_hash(&update.version));
                });
                self.activate_clusters_fed_by(&proto.cluster_name);
            }
            Kind::Listener => {
                let proto: ProtoListener = unpack(&update.resource)?;
                check_name(&proto.name, &update.name)?;
                if self.static_listeners.contains(&proto.name) {
                    return Err(root.field("name").error(format!(
                        "listener '{}' is a static listener and cannot be changed by LDS",
                        proto.name
                    )));
                }
                let known = self.known_clusters();
                let resolve = self.resolver(&known);
                let listener = Arc::new(translate_listener(&proto, &root, &resolve, &mut acks)?);
                self.add_route_stats(&listener);
                if listener.dependencies_ready() {
                    self.warming_listeners.remove(&proto.name);
                    if let Err(e) = self.listeners.add_or_update(listener, false) {
                        return Err(root.field("address").error(e.0));
                    }
                    self.records.activate(kind, &proto.name, record);
                } else {
                    self.warming_listeners
                        .insert(proto.name.clone(), (listener, Instant::now()));
                    self.records.warm(kind, &proto.name, record);
                }
            }
            Kind::Route => {
                let proto: RouteConfiguration = unpack(&update.resource)?;
                check_name(&proto.name, &update.name)?;
                let known = self.known_clusters();
                let resolve = self.resolver(&known);
                // An RDS table is its own resource: its fields are checked here, as an
                // inline table's are with its connection manager.
                crate::config::fields::check(&proto, &root, &mut acks)?;
                let table = translate_route_config(&proto, &root, &resolve, false, &mut acks)?;
                self.route_slots
                    .slot(&proto.name)
                    .set(Some(Arc::new(table)));
                for stats in self.route_stats(&proto.name) {
                    stats.attempt.inc();
                    stats.accepted(&update.version, started, true);
                }
                self.records.activate(kind, &proto.name, record);
                self.activate_ready_listeners();
            }
            Kind::Secret => {
                let proto: Secret = unpack(&update.resource)?;
                check_name(&proto.name, &update.name)?;
                crate::config::tls::apply_secret(&self.secret_slots, &proto, &root)?;
                // The certificate gauges show the rotated secret now, as Envoy's new context does.
                self.clusters.tls_contexts.refresh();
                self.records.activate(kind, &proto.name, record);
                self.activate_ready_clusters();
                self.activate_ready_listeners();
            }
        }
        self.acknowledged.report(kind, &update.name, acks);
        Ok(())
    }

    fn remove(&mut self, kind: Kind, name: &str) {
        self.acknowledged.forget(kind, name);
        match kind {
            Kind::Cluster => {
                if self.static_clusters.contains(name) {
                    return;
                }
                let warming = self.warming_clusters.remove(name).is_some();
                if self.clusters.remove(name) || warming {
                    self.clusters.stats.cluster_removed.inc();
                }
            }
            Kind::Listener => {
                if self.static_listeners.contains(name) {
                    return;
                }
                self.warming_listeners.remove(name);
                self.listeners.remove(name);
            }
            Kind::Route => {
                if let Some(slot) = self.route_slots.find(name) {
                    slot.set(None);
                }
            }
            Kind::Endpoint => self.clusters.remove_assignment(name),
            Kind::Secret => {
                crate::config::tls::remove_secret(&self.secret_slots, name);
                self.clusters.tls_contexts.refresh();
            }
        }
        self.records.remove(kind, name);
    }
}

fn unpack<M: xds_proto::XdsMessage>(any: &Any) -> Result<M, ConfigError> {
    xds_proto::unpack(any).map_err(|e| FieldPath::root("").error(e.to_string()))
}

/// Delta responses name each resource; the name inside must agree.
fn check_name(inner: &str, outer: &str) -> Result<(), ConfigError> {
    if !outer.is_empty() && inner != outer {
        return Err(FieldPath::root("name").error(format!(
            "resource is named '{outer}' but contains '{inner}'"
        )));
    }
    if inner.is_empty() {
        return Err(FieldPath::root("name").error("must not be empty"));
    }
    Ok(())
}

/// The text of a rejection, for the NACK's `error_detail` and `error_state`.
fn describe(kind: Kind, name: &str, e: &ConfigError) -> String {
    let what = match kind {
        Kind::Cluster => "cluster",
        Kind::Endpoint => "cluster load assignment",
        Kind::Listener => "listener",
        Kind::Route => "route configuration",
        Kind::Secret => "secret",
    };
    if e.path.is_empty() {
        format!("{what} '{name}': {}", e.message)
    } else {
        format!("{what} '{name}': {}: {}", e.path, e.message)
    }
}
