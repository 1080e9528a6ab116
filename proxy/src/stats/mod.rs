//! Counters, gauges and histograms with Envoy's names. Handles are created when configuration
//! is applied and held by the data path, so a request only touches atomics: no name
//! formatting and no map lookup per request.

pub mod grpc;
mod histogram;
pub mod istio;
pub mod matcher;
pub mod prometheus;
pub mod responses;
pub mod tags;

pub use histogram::{Histogram, HistogramSnapshot, DEFAULT_BUCKETS};
pub use matcher::StatsMatcher;
pub use tags::{Tag, TagProducer};

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter {
    value: AtomicU64,
}

impl Counter {
    pub fn inc(&self) {
        self.value.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
    }
    pub fn value(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down. `used` follows Envoy: set once the gauge was ever written.
#[derive(Debug, Default)]
pub struct Gauge {
    value: AtomicU64,
    used: AtomicBool,
}

impl Gauge {
    pub fn set(&self, v: u64) {
        self.used.store(true, Ordering::Relaxed);
        self.value.store(v, Ordering::Relaxed);
    }
    pub fn inc(&self) {
        self.used.store(true, Ordering::Relaxed);
        self.value.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.sub(1);
    }
    pub fn add(&self, n: u64) {
        self.used.store(true, Ordering::Relaxed);
        self.value.fetch_add(n, Ordering::Relaxed);
    }
    pub fn sub(&self, n: u64) {
        self.used.store(true, Ordering::Relaxed);
        // Saturate rather than wrap if a decrement ever races ahead of its increment.
        let _ = self
            .value
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
    }
    /// Moves one contributor's share of the gauge from `from` to `to`.
    pub fn adjust(&self, from: u64, to: u64) {
        if to > from {
            self.add(to - from);
        } else if from > to {
            self.sub(from - to);
        }
    }
    pub fn value(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
    pub fn used(&self) -> bool {
        self.used.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone)]
pub enum Metric {
    Counter(Arc<Counter>),
    Gauge(Arc<Gauge>),
    Histogram(Arc<Histogram>),
    /// Envoy's text readout: a string (a control plane's identifier, an accepted version).
    Text(Arc<TextReadout>),
}

/// A string stat, written rarely (on a control-plane response), read by the admin API.
#[derive(Debug, Default)]
pub struct TextReadout {
    value: Mutex<String>,
    used: std::sync::atomic::AtomicBool,
}

impl TextReadout {
    pub fn set(&self, value: &str) {
        let mut v = self.value.lock().unwrap_or_else(|e| e.into_inner());
        value.clone_into(&mut v);
        self.used.store(true, Ordering::Relaxed);
    }

    pub fn value(&self) -> String {
        self.value.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn used(&self) -> bool {
        self.used.load(Ordering::Relaxed)
    }
}

/// What `stats_config` decides about stats: how names become tags, and which stats exist.
#[derive(Debug)]
pub struct StatsConfig {
    pub tags: TagProducer,
    pub matcher: StatsMatcher,
}

impl StatsConfig {
    /// Envoy without `stats_config`: the built-in tag extractors, every stat kept.
    pub fn envoy_default() -> Self {
        Self {
            tags: TagProducer::envoy_default(),
            matcher: StatsMatcher::AcceptAll,
        }
    }
}

/// A stat's tag-extracted name (`cluster.upstream_rq`) and tags, computed once at creation.
/// Both are shared: every stat of one shape shares its name, and the dozens of stats of one
/// cluster or listener share one tag list, so a stat costs two pointers here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagInfo {
    pub tag_extracted_name: Arc<str>,
    pub tags: Arc<[Tag]>,
}

/// One stat of the store: its handle and its tags.
#[derive(Debug, Clone)]
pub struct Entry {
    pub metric: Metric,
    pub info: TagInfo,
}

/// The store of every stat by its full Envoy name (`cluster.backend.upstream_rq_total`).
/// Stats that `stats_matcher` rejects are never stored: their creator gets a handle of its
/// own that works but is not exported, as Envoy hands out null stats.
#[derive(Debug)]
pub struct Store {
    config: Arc<StatsConfig>,
    metrics: Mutex<BTreeMap<Box<str>, Entry>>,
    /// Tag-extracted names and tag values, stored once: a mesh has thousands of clusters
    /// whose dozens of stats share one name shape each and one cluster name.
    interned: Mutex<std::collections::HashSet<Arc<str>>>,
    /// Tag lists, stored once: the stats of one cluster or listener carry the same tags.
    interned_tags: Mutex<std::collections::HashSet<Arc<[Tag]>>>,
    /// Istio's standard metrics, in their own namespace (no `envoy_` prefix, no tag
    /// extraction, not subject to `stats_matcher`).
    pub istio: istio::IstioMetrics,
}

impl Default for Store {
    fn default() -> Self {
        Self::from_config(Arc::new(StatsConfig::envoy_default()))
    }
}

impl Store {
    /// A store with Envoy's defaults (built-in tags, no matcher).
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A store applying the bootstrap's `stats_config`.
    pub fn with_config(config: Arc<StatsConfig>) -> Arc<Self> {
        Arc::new(Self::from_config(config))
    }

    fn from_config(config: Arc<StatsConfig>) -> Self {
        Self {
            config,
            metrics: Mutex::new(BTreeMap::new()),
            interned: Mutex::new(std::collections::HashSet::new()),
            interned_tags: Mutex::new(std::collections::HashSet::new()),
            istio: istio::IstioMetrics::default(),
        }
    }

    /// The counter named `name`, created on first use. Config-time only.
    pub fn counter(&self, name: &str) -> Arc<Counter> {
        match self.get_or_create(name, || Metric::Counter(Arc::default())) {
            Metric::Counter(c) => c,
            _ => Arc::default(),
        }
    }

    pub fn gauge(&self, name: &str) -> Arc<Gauge> {
        match self.get_or_create(name, || Metric::Gauge(Arc::default())) {
            Metric::Gauge(g) => g,
            _ => Arc::default(),
        }
    }

    /// The text readout named `name`, created on first use. Config-time only.
    pub fn text_readout(&self, name: &str) -> Arc<TextReadout> {
        match self.get_or_create(name, || Metric::Text(Arc::default())) {
            Metric::Text(t) => t,
            _ => Arc::default(),
        }
    }

    pub fn histogram(&self, name: &str) -> Arc<Histogram> {
        match self.get_or_create(name, || Metric::Histogram(Arc::default())) {
            Metric::Histogram(h) => h,
            _ => Arc::default(),
        }
    }

    /// The stat `name` if it exists with the same kind as `make` builds, else a new one:
    /// stored (with its tags extracted now) unless the matcher rejects the name. A stat of
    /// another kind under the same name is replaced, as before tags existed.
    fn get_or_create(&self, name: &str, make: impl FnOnce() -> Metric) -> Metric {
        let fresh = make();
        let mut metrics = self.lock();
        if let Some(existing) = metrics.get(name) {
            if std::mem::discriminant(&existing.metric) == std::mem::discriminant(&fresh) {
                return existing.metric.clone();
            }
        }
        if self.config.matcher.rejects(name) {
            return fresh;
        }
        let (tag_extracted_name, mut tags) = self.config.tags.produce(name);
        for tag in &mut tags {
            tag.value = self.intern(&tag.value);
        }
        metrics.insert(
            name.into(),
            Entry {
                metric: fresh.clone(),
                info: TagInfo {
                    tag_extracted_name: self.intern(&tag_extracted_name),
                    tags: self.intern_tags(tags),
                },
            },
        );
        fresh
    }

    /// The stat named `name` if it exists; unlike `counter`/`gauge`, never creates one (the
    /// agent's readiness check must not make `cluster_manager.cds.*` appear in `/stats`).
    pub fn find(&self, name: &str) -> Option<Metric> {
        self.lock().get(name).map(|e| e.metric.clone())
    }

    /// Every stat, sorted by name.
    pub fn snapshot(&self) -> Vec<(String, Metric)> {
        self.lock()
            .iter()
            .map(|(k, v)| (k.to_string(), v.metric.clone()))
            .collect()
    }

    /// Every stat with its tags, sorted by name.
    pub fn entries(&self) -> Vec<(String, Entry)> {
        self.lock()
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    /// Removes every stat under `prefix` (a removed cluster's or listener's scope).
    pub fn remove_scope(&self, prefix: &str) {
        self.lock().retain(|name, _| !name.starts_with(prefix));
        // Strings and tag lists only the tables still hold belonged to the stats just removed.
        self.interned_tags_lock()
            .retain(|t| Arc::strong_count(t) > 1);
        self.interned_lock().retain(|s| Arc::strong_count(s) > 1);
    }

    /// Removes the stat `name` when nothing but the store holds it any more: Envoy's stats are
    /// reference counted and a stat goes with the last scope using it (a listener's certificate
    /// gauge with the last filter chain that sets it).
    pub fn remove_if_unreferenced(&self, name: &str) {
        let mut metrics = self.lock();
        let unreferenced = metrics.get(name).is_some_and(|e| match &e.metric {
            Metric::Counter(c) => Arc::strong_count(c) == 1,
            Metric::Gauge(g) => Arc::strong_count(g) == 1,
            Metric::Histogram(h) => Arc::strong_count(h) == 1,
            Metric::Text(t) => Arc::strong_count(t) == 1,
        });
        if unreferenced {
            metrics.remove(name);
        }
    }

    fn intern(&self, s: &str) -> Arc<str> {
        let mut interned = self.interned_lock();
        if let Some(existing) = interned.get(s) {
            return existing.clone();
        }
        let new: Arc<str> = Arc::from(s);
        interned.insert(new.clone());
        new
    }

    fn intern_tags(&self, tags: Vec<Tag>) -> Arc<[Tag]> {
        let mut interned = self.interned_tags_lock();
        if let Some(existing) = interned.get(tags.as_slice()) {
            return existing.clone();
        }
        let new: Arc<[Tag]> = Arc::from(tags);
        interned.insert(new.clone());
        new
    }

    fn interned_tags_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashSet<Arc<[Tag]>>> {
        self.interned_tags.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn interned_lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<Arc<str>>> {
        self.interned.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Box<str>, Entry>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts).
        self.metrics.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_shared_by_name() {
        let store = Store::new();
        let a = store.counter("cluster.x.upstream_rq_total");
        let b = store.counter("cluster.x.upstream_rq_total");
        a.inc();
        b.add(2);
        assert_eq!(a.value(), 3);
        store.remove_scope("cluster.x.");
        assert!(store.snapshot().is_empty());
    }

    #[test]
    fn tags_are_extracted_once_at_creation() {
        let store = Store::new();
        store.counter("cluster.backend.upstream_rq_200").inc();
        let entries = store.entries();
        let info = &entries[0].1.info;
        assert_eq!(&*info.tag_extracted_name, "cluster.upstream_rq");
        assert_eq!(
            info.tags.to_vec(),
            vec![
                Tag {
                    name: "envoy.response_code".into(),
                    value: "200".into()
                },
                Tag {
                    name: "envoy.cluster_name".into(),
                    value: "backend".into()
                },
            ]
        );
    }

    #[test]
    fn the_stats_of_a_scope_share_one_tag_list_until_the_scope_goes() {
        let store = Store::new();
        store.counter("cluster.backend.upstream_rq_total");
        store.gauge("cluster.backend.upstream_rq_active");
        let entries = store.entries();
        assert!(Arc::ptr_eq(
            &entries[0].1.info.tags,
            &entries[1].1.info.tags
        ));
        drop(entries);
        store.remove_scope("cluster.backend.");
        assert!(store.interned_tags_lock().is_empty());
        assert!(store.interned_lock().is_empty());
    }

    #[test]
    fn rejected_stats_work_but_are_not_stored() {
        let config = StatsConfig {
            tags: TagProducer::envoy_default(),
            matcher: StatsMatcher::RejectAll,
        };
        let store = Store::with_config(Arc::new(config));
        let c = store.counter("cluster.x.upstream_rq_total");
        c.inc();
        assert_eq!(c.value(), 1);
        assert!(store.snapshot().is_empty());
    }

    #[test]
    fn gauge_saturates_at_zero() {
        let g = Gauge::default();
        assert!(!g.used());
        g.dec();
        assert_eq!(g.value(), 0);
        assert!(g.used());
    }
}
