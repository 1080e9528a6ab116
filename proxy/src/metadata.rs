//! A stream's dynamic metadata as filters write it and RBAC's `metadata` matchers read it:
//! values by filter namespace, each a JSON object standing for Envoy's `google.protobuf.Struct`
//! (numbers are doubles there, as in JSON). The JWT and fault filters write here; the RBAC
//! filters' results join when a sampled span may read them.

use serde_json::{Map, Value};
use std::sync::Arc;

#[derive(Debug, Clone, Default)]
pub struct DynamicMetadata {
    namespaces: Vec<(Namespace, Map<String, Value>)>,
}

/// A filter's namespace: a well-known name, or a configured filter's own (shared with its
/// configuration, so writing it allocates no name).
#[derive(Debug, Clone)]
pub enum Namespace {
    Static(&'static str),
    Shared(Arc<str>),
}

impl Namespace {
    fn as_str(&self) -> &str {
        match self {
            Namespace::Static(s) => s,
            Namespace::Shared(s) => s,
        }
    }
}

impl From<&'static str> for Namespace {
    fn from(s: &'static str) -> Self {
        Namespace::Static(s)
    }
}

impl From<Arc<str>> for Namespace {
    fn from(s: Arc<str>) -> Self {
        Namespace::Shared(s)
    }
}

impl DynamicMetadata {
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
    }

    /// Merges `fields` into the namespace, replacing keys already there (Envoy's merge of
    /// a filter's `setDynamicMetadata`).
    pub fn merge(&mut self, namespace: impl Into<Namespace>, fields: Map<String, Value>) {
        let namespace = namespace.into();
        match self
            .namespaces
            .iter_mut()
            .find(|(n, _)| n.as_str() == namespace.as_str())
        {
            Some((_, existing)) => existing.extend(fields),
            None => self.namespaces.push((namespace, fields)),
        }
    }

    pub fn namespace(&self, namespace: &str) -> Option<&Map<String, Value>> {
        self.namespaces
            .iter()
            .find(|(n, _)| n.as_str() == namespace)
            .map(|(_, m)| m)
    }

    /// The value at `path` (keys into nested objects) under `namespace`.
    pub fn value(&self, namespace: &str, path: &[String]) -> Option<&Value> {
        let (first, rest) = path.split_first()?;
        let mut v = self.namespace(namespace)?.get(first)?;
        for key in rest {
            v = v.as_object()?.get(key)?;
        }
        Some(v)
    }
}
