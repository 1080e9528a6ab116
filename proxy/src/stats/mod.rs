//! Counters, gauges and histograms with Envoy's names. Handles are created when configuration
//! is applied and held by the data path, so a request only touches atomics: no name
//! formatting and no map lookup per request.

pub mod grpc;
mod histogram;
pub mod istio;
pub mod matcher;
pub mod prometheus;
pub mod responses;
mod store;
pub mod tags;

pub use histogram::{Histogram, HistogramSnapshot, DEFAULT_BUCKETS};
pub use matcher::StatsMatcher;
pub use store::{Entry, Store, TagInfo};
pub use tags::{Tag, TagProducer};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauge_saturates_at_zero() {
        let g = Gauge::default();
        assert!(!g.used());
        g.dec();
        assert_eq!(g.value(), 0);
        assert!(g.used());
    }
}
