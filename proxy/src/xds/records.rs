//! What the control plane sent and what became of it, kept for `/config_dump`: every accepted
//! resource as received (with its version and when it arrived), whether it is active or still
//! warming, and the last rejected configuration of a resource with the reason.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;
use xds_proto::pb::google::protobuf::Any;

/// The xDS resource types Outrigger subscribes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Cluster,
    Endpoint,
    Listener,
    Route,
    Secret,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Cluster,
        Kind::Endpoint,
        Kind::Listener,
        Kind::Route,
        Kind::Secret,
    ];

    pub fn type_url(self) -> &'static str {
        match self {
            Kind::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            Kind::Endpoint => "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            Kind::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            Kind::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            Kind::Secret => "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
        }
    }

    pub fn from_type_url(url: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.type_url() == url)
    }

    /// LDS and CDS subscribe to everything (wildcard); the others to the names they need.
    pub fn is_wildcard(self) -> bool {
        matches!(self, Kind::Cluster | Kind::Listener)
    }

    /// The short name in Envoy's logs and stats (`cds`, `eds`, ...).
    pub fn short(self) -> &'static str {
        match self {
            Kind::Cluster => "cds",
            Kind::Endpoint => "eds",
            Kind::Listener => "lds",
            Kind::Route => "rds",
            Kind::Secret => "sds",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Record {
    pub version: String,
    pub last_updated: SystemTime,
    pub resource: Any,
}

/// A resource update that was refused, as `UpdateFailureState` shows it.
#[derive(Debug, Clone)]
pub struct Failure {
    pub resource: Any,
    pub details: String,
    pub at: SystemTime,
}

/// Boxed parts: most entries hold one of the four, and a mesh has thousands of entries.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    pub active: Option<Box<Record>>,
    /// Accepted but waiting for what it depends on (EDS for a cluster, RDS for a listener).
    pub warming: Option<Box<Record>>,
    pub error: Option<Box<Failure>>,
    /// The configuration a replaced or removed listener's connections still run on.
    pub draining: Option<Box<Record>>,
}

#[derive(Debug, Default)]
pub struct Records {
    inner: Mutex<BTreeMap<(Kind, String), Entry>>,
    /// The last accepted `version_info` per type (state of the world; delta's system version).
    versions: Mutex<BTreeMap<Kind, String>>,
}

impl Records {
    pub fn activate(&self, kind: Kind, name: &str, record: Record) {
        let mut inner = self.lock();
        let entry = inner.entry((kind, name.to_string())).or_default();
        entry.active = Some(Box::new(record));
        entry.warming = None;
    }

    pub fn warm(&self, kind: Kind, name: &str, record: Record) {
        self.lock()
            .entry((kind, name.to_string()))
            .or_default()
            .warming = Some(Box::new(record));
    }

    /// Moves a warming resource to active (its dependencies arrived).
    pub fn promote(&self, kind: Kind, name: &str) {
        if let Some(entry) = self.lock().get_mut(&(kind, name.to_string())) {
            if let Some(record) = entry.warming.take() {
                entry.active = Some(record);
            }
        }
    }

    pub fn fail(&self, kind: Kind, name: &str, failure: Failure) {
        self.lock()
            .entry((kind, name.to_string()))
            .or_default()
            .error = Some(Box::new(failure));
    }

    pub fn clear_failure(&self, kind: Kind, name: &str) {
        if let Some(entry) = self.lock().get_mut(&(kind, name.to_string())) {
            entry.error = None;
        }
    }

    pub fn remove(&self, kind: Kind, name: &str) {
        let mut inner = self.lock();
        let key = (kind, name.to_string());
        // A removed listener stays listed while its connections drain.
        if let Some(entry) = inner.get_mut(&key) {
            if entry.draining.is_some() {
                entry.active = None;
                entry.warming = None;
                entry.error = None;
                return;
            }
        }
        inner.remove(&key);
    }

    /// A listener is being replaced or removed: its active configuration starts draining.
    pub fn start_drain(&self, name: &str) {
        if let Some(entry) = self.lock().get_mut(&(Kind::Listener, name.to_string())) {
            if let Some(active) = entry.active.clone() {
                entry.draining = Some(active);
            }
        }
    }

    /// The listener's old connections are gone.
    pub fn end_drain(&self, name: &str) {
        let mut inner = self.lock();
        let key = (Kind::Listener, name.to_string());
        if let Some(entry) = inner.get_mut(&key) {
            entry.draining = None;
            if entry.active.is_none() && entry.warming.is_none() && entry.error.is_none() {
                inner.remove(&key);
            }
        }
    }

    /// Whether the accepted resource `name` has exactly this content already.
    pub fn holds(&self, kind: Kind, name: &str, content: &[u8]) -> bool {
        self.lock()
            .get(&(kind, name.to_string()))
            .and_then(|e| e.active.as_ref().or(e.warming.as_ref()))
            .is_some_and(|r| r.resource.value == content)
    }

    /// The active resource `name` of `kind`.
    pub fn active(&self, kind: Kind, name: &str) -> Option<Record> {
        self.lock()
            .get(&(kind, name.to_string()))?
            .active
            .as_deref()
            .cloned()
    }

    /// Every entry of `kind`, by name.
    pub fn of(&self, kind: Kind) -> Vec<(String, Entry)> {
        self.lock()
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .map(|((_, name), entry)| (name.clone(), entry.clone()))
            .collect()
    }

    pub fn set_version(&self, kind: Kind, version: &str) {
        self.versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(kind, version.to_string());
    }

    pub fn version(&self, kind: Kind) -> String {
        self.versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&kind)
            .cloned()
            .unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(Kind, String), Entry>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}
