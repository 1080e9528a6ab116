//! What a translator may look up while compiling a resource: cluster indexes and static
//! runtime values. Both are resolved at config time so the data path never looks up by name.

use super::bootstrap::RuntimeLayer;
use std::collections::HashMap;

pub struct Resolver<'a> {
    pub clusters: &'a HashMap<String, usize>,
    pub runtime: &'a [RuntimeLayer],
}

impl Resolver<'_> {
    pub fn cluster(&self, name: &str) -> Option<usize> {
        self.clusters.get(name).copied()
    }

    /// The value of a runtime key: the last layer that sets it wins (Envoy's layering).
    pub fn runtime(&self, key: &str) -> Option<&serde_json::Value> {
        self.runtime
            .iter()
            .rev()
            .find_map(|layer| layer.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v))
    }

    /// A runtime key read as an unsigned integer (Envoy's `getInteger`).
    pub fn runtime_u64(&self, key: &str) -> Option<u64> {
        match self.runtime(key)? {
            serde_json::Value::Number(n) => n.as_u64().or_else(|| n.as_f64().map(|f| f as u64)),
            serde_json::Value::String(s) => s.parse().ok(),
            _ => None,
        }
    }
}
