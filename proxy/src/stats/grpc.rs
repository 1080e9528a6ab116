//! `cluster.<name>.grpc.*`: the gRPC statistics filter's stats of one cluster, optionally per
//! `<service>.<method>.`. Each stat is created on its first use, as Envoy creates them (a
//! cluster that never sees a gRPC call has none), and its handle is kept, so a call formats a
//! name at most once per stat, never per request.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/grpc_stats_filter

use super::{Counter, Histogram, Store};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

/// Distinct methods with stats of their own, per cluster. With `stats_for_all_methods` the
/// method names come from clients, so Envoy's set grows without bound; past this many, a new
/// method is counted under the cluster only (as a method outside an allowlist is), so a client
/// inventing names cannot grow the proxy's memory.
pub const METHODS_PER_CLUSTER: usize = 1000;

/// `grpc-status` values other than 0..=16 get a counter each (Envoy names it after the
/// value), up to this many per method; rarer ones are still counted as failures.
const OTHER_STATUSES: usize = 16;

/// Well-known gRPC status codes, 0 (OK) to 16 (UNAUTHENTICATED).
const KNOWN_STATUSES: usize = 17;

#[derive(Debug)]
pub struct GrpcClusterStats {
    store: Arc<Store>,
    /// `cluster.<name>.grpc.`
    prefix: String,
    cluster: Arc<GrpcStatSet>,
    /// By `<service>/<method>` as the path has it; the second map for the sets whose service
    /// name has its dots replaced (`replace_dots_in_grpc_service_name`).
    methods: [RwLock<HashMap<Box<str>, Arc<GrpcStatSet>>>; 2],
}

impl GrpcClusterStats {
    /// `cluster_prefix` is `cluster.<stat name>.`.
    pub fn new(store: Arc<Store>, cluster_prefix: &str) -> Self {
        let prefix = format!("{cluster_prefix}grpc.");
        Self {
            cluster: Arc::new(GrpcStatSet::new(prefix.clone())),
            store,
            prefix,
            methods: Default::default(),
        }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The stats without a method (`cluster.<name>.grpc.<stat>`).
    pub fn cluster(&self) -> &Arc<GrpcStatSet> {
        &self.cluster
    }

    /// The stats of one method, created on the method's first call: one hash lookup under a
    /// read lock. `key` is `<service>/<method>`.
    pub fn method(&self, key: &str, replace_dots: bool) -> Arc<GrpcStatSet> {
        let map = &self.methods[usize::from(replace_dots)];
        if let Some(set) = map.read().unwrap_or_else(|e| e.into_inner()).get(key) {
            return set.clone();
        }
        let mut map = map.write().unwrap_or_else(|e| e.into_inner());
        if let Some(set) = map.get(key) {
            return set.clone();
        }
        let total: usize = map.len();
        if total >= METHODS_PER_CLUSTER {
            return self.cluster.clone();
        }
        let (service, method) = key.split_once('/').unwrap_or((key, ""));
        let service = if replace_dots {
            service.replace('.', "_")
        } else {
            service.to_string()
        };
        let set = Arc::new(GrpcStatSet::new(format!(
            "{}{service}.{method}.",
            self.prefix
        )));
        map.insert(key.into(), set.clone());
        set
    }
}

/// The stats under one prefix: a cluster's, or one of its methods'.
#[derive(Debug)]
pub struct GrpcStatSet {
    prefix: String,
    success: OnceLock<Arc<Counter>>,
    failure: OnceLock<Arc<Counter>>,
    total: OnceLock<Arc<Counter>>,
    request_message_count: OnceLock<Arc<Counter>>,
    response_message_count: OnceLock<Arc<Counter>>,
    upstream_rq_time: OnceLock<Arc<Histogram>>,
    statuses: [OnceLock<Arc<Counter>>; KNOWN_STATUSES],
    other_statuses: Mutex<Vec<(Box<str>, Arc<Counter>)>>,
}

impl GrpcStatSet {
    fn new(prefix: String) -> Self {
        Self {
            prefix,
            success: OnceLock::new(),
            failure: OnceLock::new(),
            total: OnceLock::new(),
            request_message_count: OnceLock::new(),
            response_message_count: OnceLock::new(),
            upstream_rq_time: OnceLock::new(),
            statuses: std::array::from_fn(|_| OnceLock::new()),
            other_statuses: Mutex::new(Vec::new()),
        }
    }

    fn counter<'a>(
        &self,
        slot: &'a OnceLock<Arc<Counter>>,
        store: &Store,
        name: &str,
    ) -> &'a Counter {
        slot.get_or_init(|| store.counter(&format!("{}{name}", self.prefix)))
    }

    /// A call ended with this `grpc-status`: `<status>`, then `success` or `failure`, then
    /// `total`, in Envoy's order.
    pub fn status(&self, store: &Store, status: &[u8]) {
        let known = std::str::from_utf8(status)
            .ok()
            .filter(|s| s.len() <= 2 && (s.len() == 1 || !s.starts_with('0')))
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|n| *n < KNOWN_STATUSES);
        match known {
            Some(n) => self.counter(&self.statuses[n], store, &n.to_string()).inc(),
            None => self.other_status(store, status),
        }
        self.outcome(store, status == b"0");
    }

    fn other_status(&self, store: &Store, status: &[u8]) {
        let Ok(name) = std::str::from_utf8(status) else {
            return;
        };
        let mut others = self
            .other_statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some((_, c)) = others.iter().find(|(n, _)| &**n == name) {
            c.inc();
            return;
        }
        if others.len() < OTHER_STATUSES {
            let c = store.counter(&format!("{}{name}", self.prefix));
            c.inc();
            others.push((name.into(), c));
        }
    }

    /// `success` or `failure`, then `total`.
    pub fn outcome(&self, store: &Store, success: bool) {
        if success {
            self.counter(&self.success, store, "success").inc();
        } else {
            self.counter(&self.failure, store, "failure").inc();
        }
        self.counter(&self.total, store, "total").inc();
    }

    pub fn request_messages(&self, store: &Store, n: u64) {
        self.counter(&self.request_message_count, store, "request_message_count")
            .add(n);
    }

    pub fn response_messages(&self, store: &Store, n: u64) {
        self.counter(
            &self.response_message_count,
            store,
            "response_message_count",
        )
        .add(n);
    }

    pub fn upstream_rq_time(&self, store: &Store, ms: u64) {
        self.upstream_rq_time
            .get_or_init(|| store.histogram(&format!("{}upstream_rq_time", self.prefix)))
            .record(ms as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(store: &Store) -> Vec<String> {
        store.snapshot().into_iter().map(|(n, _)| n).collect()
    }

    #[test]
    fn stats_exist_once_used_with_envoys_names() {
        let store = Store::new();
        let grpc = GrpcClusterStats::new(store.clone(), "cluster.c.");
        assert!(names(&store).is_empty());
        let m = grpc.method("a.B/Get", false);
        m.status(&store, b"0");
        m.request_messages(&store, 2);
        grpc.cluster().status(&store, b"14");
        grpc.method("a.B/Get", true).status(&store, b"0");
        assert_eq!(
            names(&store),
            [
                "cluster.c.grpc.14",
                "cluster.c.grpc.a.B.Get.0",
                "cluster.c.grpc.a.B.Get.request_message_count",
                "cluster.c.grpc.a.B.Get.success",
                "cluster.c.grpc.a.B.Get.total",
                "cluster.c.grpc.a_B.Get.0",
                "cluster.c.grpc.a_B.Get.success",
                "cluster.c.grpc.a_B.Get.total",
                "cluster.c.grpc.failure",
                "cluster.c.grpc.total",
            ]
        );
    }

    #[test]
    fn methods_past_the_limit_count_under_the_cluster() {
        let store = Store::new();
        let grpc = GrpcClusterStats::new(store.clone(), "cluster.c.");
        for i in 0..METHODS_PER_CLUSTER {
            grpc.method(&format!("s/m{i}"), false);
        }
        let extra = grpc.method("s/one-too-many", false);
        assert!(Arc::ptr_eq(&extra, grpc.cluster()));
        // A method seen before the limit keeps its own stats.
        assert!(!Arc::ptr_eq(&grpc.method("s/m0", false), grpc.cluster()));
    }

    #[test]
    fn unusual_statuses_are_named_after_their_value_and_bounded() {
        let store = Store::new();
        let grpc = GrpcClusterStats::new(store.clone(), "cluster.c.");
        let set = grpc.cluster();
        set.status(&store, b"07");
        set.status(&store, b"99");
        for i in 0..40 {
            set.status(&store, format!("x{i}").as_bytes());
        }
        let n = names(&store);
        assert!(n.contains(&"cluster.c.grpc.07".to_string()), "{n:?}");
        assert!(n.contains(&"cluster.c.grpc.99".to_string()));
        assert_eq!(n.len(), 2 + OTHER_STATUSES - 2 + 2);
        assert_eq!(
            store.find("cluster.c.grpc.failure").map(|m| match m {
                crate::stats::Metric::Counter(c) => c.value(),
                _ => 0,
            }),
            Some(42)
        );
    }
}
