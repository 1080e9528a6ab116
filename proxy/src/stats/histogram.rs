//! A fixed-bucket histogram with Envoy's default bucket bounds (milliseconds for timings).

use std::sync::atomic::{AtomicU64, Ordering};

/// Envoy's default histogram bucket upper bounds.
pub const DEFAULT_BUCKETS: [f64; 20] = [
    0.5,
    1.0,
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1000.0,
    2500.0,
    5000.0,
    10000.0,
    30000.0,
    60000.0,
    300000.0,
    600000.0,
    1800000.0,
    3600000.0,
    f64::INFINITY,
];

#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; DEFAULT_BUCKETS.len()],
    count: AtomicU64,
    /// Sum in thousandths, so fractional samples add up without a float atomic.
    sum_milli: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_milli: AtomicU64::new(0),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Cumulative counts per bucket bound in [`DEFAULT_BUCKETS`].
    pub cumulative: Vec<u64>,
    pub count: u64,
    pub sum: f64,
}

impl Histogram {
    pub fn record(&self, value: f64) {
        let i = DEFAULT_BUCKETS
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(DEFAULT_BUCKETS.len() - 1);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_milli
            .fetch_add((value.max(0.0) * 1000.0) as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                total += b.load(Ordering::Relaxed);
                total
            })
            .collect();
        HistogramSnapshot {
            cumulative,
            count: self.count.load(Ordering::Relaxed),
            sum: self.sum_milli.load(Ordering::Relaxed) as f64 / 1000.0,
        }
    }
}
