//! A stream's dynamic metadata as filters write it and RBAC's `metadata` matchers read it:
//! values by filter namespace, each a JSON object standing for Envoy's `google.protobuf.Struct`
//! (numbers are doubles there, as in JSON). The JWT filters write here; the RBAC filters'
//! results join when a sampled span may read them.

use serde_json::{Map, Value};

#[derive(Debug, Clone, Default)]
pub struct DynamicMetadata {
    namespaces: Vec<(&'static str, Map<String, Value>)>,
}

impl DynamicMetadata {
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
    }

    /// Merges `fields` into the namespace, replacing keys already there (Envoy's merge of
    /// a filter's `setDynamicMetadata`).
    pub fn merge(&mut self, namespace: &'static str, fields: Map<String, Value>) {
        match self.namespaces.iter_mut().find(|(n, _)| *n == namespace) {
            Some((_, existing)) => existing.extend(fields),
            None => self.namespaces.push((namespace, fields)),
        }
    }

    pub fn namespace(&self, namespace: &str) -> Option<&Map<String, Value>> {
        self.namespaces
            .iter()
            .find(|(n, _)| *n == namespace)
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
