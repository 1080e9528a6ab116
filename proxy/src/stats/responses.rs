//! A cluster's upstream response stats: `upstream_rq_completed`, by class and by code, and
//! the same again under `external.` or `internal.` (by the request's origin) and under
//! `retry.` for responses that were retried. Each set is created on first use, as Envoy does.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/upstream/cluster_manager/cluster_stats#dynamic-http-statistics

use super::{Counter, Histogram, Store};
use std::sync::{Arc, OnceLock};

/// Where a request came from, as the connection manager decided (`x-envoy-internal: true`):
/// Envoy's router counts each final response once more under this category.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    External,
    Internal,
}

impl Origin {
    /// The origin the request's headers say, after the connection manager's forwarding rules
    /// (it alone sets `x-envoy-internal`). Async-client requests (tracers, JWKS fetches,
    /// mirrors) are internal: Envoy marks them so.
    pub fn of(headers: &http::HeaderMap) -> Self {
        match headers.get(&crate::http::forwarding::X_ENVOY_INTERNAL) {
            Some(v) if v.as_bytes() == b"true" => Origin::Internal,
            _ => Origin::External,
        }
    }
}

/// Response counters by class and by code under one prefix, each created on first use as
/// Envoy does.
#[derive(Debug)]
struct CodeCounters {
    prefix: String,
    /// `upstream_rq_1xx` .. `upstream_rq_5xx`.
    classes: [OnceLock<Arc<Counter>>; 5],
    /// `upstream_rq_<code>`, created on a code's first use.
    /// Allocated on the first response: most of a mesh's thousands of clusters never see
    /// traffic, and 500 slots are 4 KiB.
    codes: OnceLock<Box<[OnceLock<Arc<Counter>>; 500]>>,
}

impl CodeCounters {
    fn new(prefix: String) -> Self {
        Self {
            prefix,
            classes: std::array::from_fn(|_| OnceLock::new()),
            codes: OnceLock::new(),
        }
    }

    fn count(&self, store: &Store, status: http::StatusCode) {
        let code = status.as_u16();
        if let Some(class) = self.classes.get(usize::from(code / 100).wrapping_sub(1)) {
            class
                .get_or_init(|| {
                    store.counter(&format!("{}upstream_rq_{}xx", self.prefix, code / 100))
                })
                .inc();
        }
        let codes = self
            .codes
            .get_or_init(|| Box::new(std::array::from_fn(|_| OnceLock::new())));
        if let Some(slot) = codes.get(usize::from(code).wrapping_sub(100)) {
            slot.get_or_init(|| store.counter(&format!("{}upstream_rq_{code}", self.prefix)))
                .inc();
        }
    }
}

/// One category's set (`retry.`, `external.`, `internal.`): its codes and its
/// `upstream_rq_completed`, made together on the category's first response.
#[derive(Debug)]
struct Category {
    codes: CodeCounters,
    completed: Arc<Counter>,
    /// `<category>.upstream_rq_time`, made on the first timed response (a local reply for a
    /// failed attempt is counted but not timed).
    time: OnceLock<Arc<Histogram>>,
}

impl Category {
    fn new(store: &Store, prefix: String) -> Box<Self> {
        let completed = store.counter(&format!("{prefix}upstream_rq_completed"));
        Box::new(Self {
            codes: CodeCounters::new(prefix),
            completed,
            time: OnceLock::new(),
        })
    }

    fn count(&self, store: &Store, status: http::StatusCode) {
        self.completed.inc();
        self.codes.count(store, status);
    }
}

/// The response stats of one cluster (`cluster.<name>.`).
#[derive(Debug)]
pub struct ResponseStats {
    store: Arc<Store>,
    prefix: String,
    /// `upstream_rq_completed`, present from the cluster's creation.
    pub completed: Arc<Counter>,
    /// `upstream_rq_time`, made on the first timed response: Envoy 1.40 has no such
    /// histogram for a cluster that never answered.
    time: OnceLock<Arc<Histogram>>,
    codes: CodeCounters,
    /// `retry.*`: Envoy does not split those by origin.
    retried: OnceLock<Box<Category>>,
    /// `external.*` and `internal.*`, in [`Origin`]'s order.
    origins: [OnceLock<Box<Category>>; 2],
}

impl ResponseStats {
    /// The stats of the cluster whose stats start with `prefix` (`cluster.<name>.`).
    pub fn new(store: &Arc<Store>, prefix: &str) -> Self {
        Self {
            completed: store.counter(&format!("{prefix}upstream_rq_completed")),
            time: OnceLock::new(),
            codes: CodeCounters::new(prefix.to_string()),
            retried: OnceLock::new(),
            origins: [OnceLock::new(), OnceLock::new()],
            store: store.clone(),
            prefix: prefix.to_string(),
        }
    }

    fn origin(&self, origin: Origin) -> &Category {
        let (slot, name) = match origin {
            Origin::External => (&self.origins[0], "external."),
            Origin::Internal => (&self.origins[1], "internal."),
        };
        slot.get_or_init(|| Category::new(&self.store, format!("{}{name}", self.prefix)))
    }

    /// Counts a final response (an upstream's, or the local reply for a failed attempt):
    /// `upstream_rq_completed`, its class and code, and the same under its origin.
    pub fn completed(&self, status: http::StatusCode, origin: Origin) {
        self.completed.inc();
        self.codes.count(&self.store, status);
        self.origin(origin).count(&self.store, status);
    }

    /// Records a final upstream response's time, in `upstream_rq_time` and its origin's.
    pub fn timed(&self, ms: f64, origin: Origin) {
        self.time
            .get_or_init(|| {
                self.store
                    .histogram(&format!("{}upstream_rq_time", self.prefix))
            })
            .record(ms);
        let category = self.origin(origin);
        category
            .time
            .get_or_init(|| {
                self.store
                    .histogram(&format!("{}upstream_rq_time", category.codes.prefix))
            })
            .record(ms);
    }

    /// Counts an upstream response that was retried (`retry.upstream_rq_<code>`, its class
    /// and `retry.upstream_rq_completed`), kept apart from final responses as Envoy does.
    pub fn retried(&self, status: http::StatusCode) {
        self.retried
            .get_or_init(|| Category::new(&self.store, format!("{}retry.", self.prefix)))
            .count(&self.store, status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Metric;

    fn names(store: &Store) -> Vec<String> {
        store
            .snapshot()
            .into_iter()
            .filter_map(|(n, m)| match m {
                Metric::Counter(c) if c.value() > 0 => Some(format!("{n}={}", c.value())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn final_responses_count_under_their_origin_and_retried_ones_do_not() {
        let store = Arc::new(Store::default());
        let stats = ResponseStats::new(&store, "cluster.b.");
        stats.completed(http::StatusCode::OK, Origin::External);
        stats.completed(http::StatusCode::SERVICE_UNAVAILABLE, Origin::Internal);
        stats.retried(http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            names(&store),
            [
                "cluster.b.external.upstream_rq_200=1",
                "cluster.b.external.upstream_rq_2xx=1",
                "cluster.b.external.upstream_rq_completed=1",
                "cluster.b.internal.upstream_rq_503=1",
                "cluster.b.internal.upstream_rq_5xx=1",
                "cluster.b.internal.upstream_rq_completed=1",
                "cluster.b.retry.upstream_rq_503=1",
                "cluster.b.retry.upstream_rq_5xx=1",
                "cluster.b.retry.upstream_rq_completed=1",
                "cluster.b.upstream_rq_200=1",
                "cluster.b.upstream_rq_2xx=1",
                "cluster.b.upstream_rq_503=1",
                "cluster.b.upstream_rq_5xx=1",
                "cluster.b.upstream_rq_completed=2",
            ]
        );
        // The histograms exist once a response (of that origin) was timed.
        assert!(store.find("cluster.b.upstream_rq_time").is_none());
        assert!(store.find("cluster.b.external.upstream_rq_time").is_none());
        stats.timed(3.0, Origin::External);
        assert!(store.find("cluster.b.upstream_rq_time").is_some());
        assert!(store.find("cluster.b.external.upstream_rq_time").is_some());
        assert!(store.find("cluster.b.internal.upstream_rq_time").is_none());
    }

    #[test]
    fn origin_is_read_from_the_connection_managers_header() {
        let mut h = http::HeaderMap::new();
        assert_eq!(Origin::of(&h), Origin::External);
        h.insert("x-envoy-internal", "true".parse().expect("value"));
        assert_eq!(Origin::of(&h), Origin::Internal);
        h.insert("x-envoy-internal", "false".parse().expect("value"));
        assert_eq!(Origin::of(&h), Origin::External);
    }
}
