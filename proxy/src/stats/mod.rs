//! Counters, gauges and histograms with Envoy's names. Handles are created when configuration
//! is applied and held by the data path, so a request only touches atomics: no name
//! formatting and no map lookup per request.

mod histogram;
pub mod prometheus;

pub use histogram::{Histogram, HistogramSnapshot, DEFAULT_BUCKETS};

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
        self.used.store(true, Ordering::Relaxed);
        // Saturate rather than wrap if a decrement ever races ahead of its increment.
        let _ = self
            .value
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(1))
            });
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
}

/// The store of every stat by its full Envoy name (`cluster.backend.upstream_rq_total`).
#[derive(Debug, Default)]
pub struct Store {
    metrics: Mutex<BTreeMap<String, Metric>>,
}

impl Store {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The counter named `name`, created on first use. Config-time only.
    pub fn counter(&self, name: &str) -> Arc<Counter> {
        let mut metrics = self.lock();
        match metrics.get(name) {
            Some(Metric::Counter(c)) => c.clone(),
            _ => {
                let c = Arc::new(Counter::default());
                metrics.insert(name.to_string(), Metric::Counter(c.clone()));
                c
            }
        }
    }

    pub fn gauge(&self, name: &str) -> Arc<Gauge> {
        let mut metrics = self.lock();
        match metrics.get(name) {
            Some(Metric::Gauge(g)) => g.clone(),
            _ => {
                let g = Arc::new(Gauge::default());
                metrics.insert(name.to_string(), Metric::Gauge(g.clone()));
                g
            }
        }
    }

    pub fn histogram(&self, name: &str) -> Arc<Histogram> {
        let mut metrics = self.lock();
        match metrics.get(name) {
            Some(Metric::Histogram(h)) => h.clone(),
            _ => {
                let h = Arc::new(Histogram::default());
                metrics.insert(name.to_string(), Metric::Histogram(h.clone()));
                h
            }
        }
    }

    /// Every stat, sorted by name.
    pub fn snapshot(&self) -> Vec<(String, Metric)> {
        self.lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Removes every stat under `prefix` (a removed cluster's or listener's scope).
    pub fn remove_scope(&self, prefix: &str) {
        self.lock().retain(|name, _| !name.starts_with(prefix));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Metric>> {
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
    fn gauge_saturates_at_zero() {
        let g = Gauge::default();
        assert!(!g.used());
        g.dec();
        assert_eq!(g.value(), 0);
        assert!(g.used());
    }
}
