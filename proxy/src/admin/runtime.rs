//! `/runtime`: the runtime layers by name and every key with its value in each layer and
//! the final (last layer wins) value, all as strings.
//! https://www.envoyproxy.io/docs/envoy/latest/operations/admin#get--runtime

use super::{AdminResponse, Query};
use crate::server::Server;
use serde_json::{json, Map, Value};

pub fn handle(server: &Server, _: &Query) -> AdminResponse {
    let layers = &server.config.runtime;
    let mut keys: Vec<&String> = layers
        .iter()
        .flat_map(|l| l.entries.iter().map(|(k, _)| k))
        .collect();
    keys.sort();
    keys.dedup();
    let mut entries = Map::new();
    for key in keys {
        let values: Vec<String> = layers
            .iter()
            .map(|l| {
                l.entries
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| as_string(v))
                    .unwrap_or_default()
            })
            .collect();
        let last = values.iter().rev().find(|v| !v.is_empty()).cloned();
        entries.insert(
            key.clone(),
            json!({"layer_values": values, "final_value": last.unwrap_or_default()}),
        );
    }
    let names: Vec<&str> = layers.iter().map(|l| l.name.as_str()).collect();
    super::json_response(&json!({"layers": names, "entries": entries}))
}

/// Envoy keeps runtime values as the strings they were written as.
fn as_string(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        // Struct numbers are doubles; Envoy prints whole ones without a fraction.
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::handle;
    use super::super::test_support::{json, server};
    use http::Method;

    #[test]
    fn layers_and_entries() {
        let v = json(handle(&server(), &Method::GET, "/runtime"));
        assert_eq!(v["layers"], serde_json::json!(["static", "admin"]));
        assert_eq!(
            v["entries"]["foo"],
            serde_json::json!({"layer_values": ["bar", ""], "final_value": "bar"})
        );
        assert_eq!(v["entries"]["nested.a"]["final_value"], "1");
        assert_eq!(
            v["entries"]["nested.b"]["layer_values"],
            serde_json::json!(["true", ""])
        );
    }
}
