//! Prometheus text exposition (format 0.0.4) of the store, named as Envoy does: `envoy_`
//! prefix, `.` and other invalid characters become `_`. Tag extraction (labels such as
//! `envoy_cluster_name`) comes with the observability issue; until then names carry their
//! scope in the metric name.

use super::{Metric, Store, DEFAULT_BUCKETS};
use std::fmt::Write;

pub fn render(store: &Store, used_only: bool) -> String {
    let mut out = String::new();
    for (name, metric) in store.snapshot() {
        let name = sanitize(&name);
        match metric {
            Metric::Counter(c) => {
                if used_only && c.value() == 0 {
                    continue;
                }
                let _ = write!(
                    out,
                    "# TYPE envoy_{name} counter\nenvoy_{name}{{}} {}\n",
                    c.value()
                );
            }
            Metric::Gauge(g) => {
                if used_only && !g.used() {
                    continue;
                }
                let _ = write!(
                    out,
                    "# TYPE envoy_{name} gauge\nenvoy_{name}{{}} {}\n",
                    g.value()
                );
            }
            Metric::Histogram(h) => {
                let s = h.snapshot();
                if used_only && s.count == 0 {
                    continue;
                }
                let _ = writeln!(out, "# TYPE envoy_{name} histogram");
                for (bound, count) in DEFAULT_BUCKETS.iter().zip(&s.cumulative) {
                    let le = if bound.is_infinite() {
                        "+Inf".to_string()
                    } else {
                        format_bound(*bound)
                    };
                    let _ = writeln!(out, "envoy_{name}_bucket{{le=\"{le}\"}} {count}");
                }
                let _ = write!(
                    out,
                    "envoy_{name}_sum{{}} {}\nenvoy_{name}_count{{}} {}\n",
                    s.sum, s.count
                );
            }
        }
    }
    out
}

fn format_bound(b: f64) -> String {
    if b.fract() == 0.0 {
        format!("{b:.0}")
    } else {
        format!("{b}")
    }
}

/// Envoy's rule: anything outside `[a-zA-Z0-9_]` becomes `_`.
pub fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
