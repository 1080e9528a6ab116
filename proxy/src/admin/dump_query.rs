//! `/config_dump` query parameters, with Envoy's semantics:
//! `resource` picks one repeated field out of the dump configs and returns its elements as
//! `{"configs":[...]}`; `mask` is a FieldMask applied to each config (or each resource);
//! `name_regex` keeps only resources whose name fully matches.
//! https://www.envoyproxy.io/docs/envoy/latest/operations/admin#get--config_dump
//!
//! These operate on the JSON form of the dump: paths use proto field names, and the dump
//! carries `@type` on every config and `Any`, so each can be checked against its descriptor.

use prost_reflect::{Kind, MessageDescriptor};
use serde_json::{Map, Value};

#[derive(Debug)]
pub enum DumpError {
    NotFound(String),
    BadRequest(String),
}

pub fn apply(
    configs: Vec<Value>,
    resource: Option<&str>,
    mask: Option<&str>,
    name_regex: Option<&str>,
) -> Result<Value, DumpError> {
    let name_filter = match name_regex.filter(|r| !r.is_empty()) {
        // Envoy matches the whole name (RE2::FullMatch).
        Some(re) => Some(regex::Regex::new(&format!("^(?:{re})$")).map_err(|e| {
            DumpError::BadRequest(format!(
                "INVALID_ARGUMENT: Error while parsing name_regex from {re}: {e}"
            ))
        })?),
        None => None,
    };
    let keep = |v: &Value| match (&name_filter, resource_name(v)) {
        (Some(re), Some(name)) => re.is_match(name),
        _ => true,
    };
    let mask_paths: Option<Vec<Vec<&str>>> = mask
        .filter(|m| !m.is_empty())
        .map(|m| m.split(',').map(|p| p.split('.').collect()).collect());
    let not_applied = || {
        DumpError::BadRequest(format!(
            "FieldMask {} could not be successfully applied to any configs.",
            mask.unwrap_or_default()
        ))
    };

    let mut out = Vec::new();
    match resource.filter(|r| !r.is_empty()) {
        Some(resource) => {
            let mut found = false;
            for config in configs {
                let Some(descriptor) = descriptor_of(&config) else {
                    continue;
                };
                let Some(field) = descriptor.get_field_by_name(resource) else {
                    continue;
                };
                let Kind::Message(element) = field.kind() else {
                    continue;
                };
                if !field.is_list() {
                    continue;
                }
                found = true;
                let type_url = format!("{}{}", xds_proto::TYPE_URL_PREFIX, element.full_name());
                let items = match config {
                    Value::Object(mut fields) => fields.remove(resource),
                    _ => None,
                };
                for item in items
                    .and_then(|v| v.as_array().cloned())
                    .unwrap_or_default()
                {
                    if !keep(&item) {
                        continue;
                    }
                    let mut item = super::json::with_type(&type_url, item);
                    if let Some(paths) = &mask_paths {
                        if !valid_mask(&element, paths) {
                            return Err(not_applied());
                        }
                        trim(&mut item, paths);
                    }
                    out.push(item);
                }
            }
            if !found {
                return Err(DumpError::NotFound(format!(
                    "{resource} not found in config dump"
                )));
            }
        }
        None => {
            for mut config in configs {
                filter_resources(&mut config, &keep);
                if let Some(paths) = &mask_paths {
                    match descriptor_of(&config) {
                        Some(d) if valid_mask(&d, paths) => trim(&mut config, paths),
                        _ => continue,
                    }
                }
                out.push(config);
            }
            if mask_paths.is_some() && out.is_empty() {
                return Err(not_applied());
            }
        }
    }
    let mut dump = Map::new();
    if !out.is_empty() {
        dump.insert("configs".into(), Value::Array(out));
    }
    Ok(Value::Object(dump))
}

fn descriptor_of(value: &Value) -> Option<MessageDescriptor> {
    let type_url = value.get("@type")?.as_str()?;
    xds_proto::descriptor_pool().get_message_by_name(xds_proto::type_name_of_url(type_url))
}

/// The name a resource entry is filtered by: its own `name` (secrets, dynamic listeners) or
/// that of the config it wraps (`cluster.name`, `route_config.name`,
/// `endpoint_config.cluster_name`, ...).
fn resource_name(entry: &Value) -> Option<&str> {
    let fields = entry.as_object()?;
    if let Some(name) = fields.get("name").and_then(Value::as_str) {
        return Some(name);
    }
    fields
        .values()
        .filter_map(Value::as_object)
        .find_map(|inner| {
            inner
                .get("name")
                .or_else(|| inner.get("cluster_name"))
                .and_then(Value::as_str)
        })
}

/// Applies `keep` to every list of resources in a dump config. The bootstrap is not a list of
/// resources and stays whole, as in Envoy.
fn filter_resources(config: &mut Value, keep: &dyn Fn(&Value) -> bool) {
    let Some(fields) = config.as_object_mut() else {
        return;
    };
    for value in fields.values_mut() {
        if let Value::Array(items) = value {
            items.retain(|item| !item.is_object() || keep(item));
        }
    }
    // An emptied section is left out, as Envoy prints repeated fields only when non-empty.
    fields.retain(|_, v| !matches!(v, Value::Array(items) if items.is_empty()));
}

/// Whether every path names fields of `descriptor`. Past an `Any` any path is accepted, since
/// its type is only known per value.
fn valid_mask(descriptor: &MessageDescriptor, paths: &[Vec<&str>]) -> bool {
    paths.iter().all(|path| {
        let mut current = descriptor.clone();
        for (i, segment) in path.iter().enumerate() {
            if current.full_name() == "google.protobuf.Any" {
                return true;
            }
            let Some(field) = current.get_field_by_name(segment) else {
                return false;
            };
            match field.kind() {
                Kind::Message(m) if !field.is_map() => current = m,
                _ => return i == path.len() - 1,
            }
        }
        true
    })
}

/// FieldMask trimming on JSON: keep only the masked paths (and `@type`, so each `Any` still
/// names its type); a path through a repeated field applies to every element.
fn trim(value: &mut Value, paths: &[Vec<&str>]) {
    match value {
        Value::Array(items) => items.iter_mut().for_each(|v| trim(v, paths)),
        Value::Object(fields) => {
            if paths.iter().any(|p| p.is_empty()) {
                return;
            }
            let old = std::mem::take(fields);
            for (key, mut child) in old {
                if key == "@type" {
                    fields.insert(key, child);
                    continue;
                }
                let rest: Vec<Vec<&str>> = paths
                    .iter()
                    .filter(|p| p.first() == Some(&key.as_str()))
                    .map(|p| p[1..].to_vec())
                    .collect();
                if rest.is_empty() {
                    continue;
                }
                trim(&mut child, &rest);
                fields.insert(key, child);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn trim_keeps_paths_and_types() {
        let mut v = json!({"@type": "t", "a": [{"b": 1, "c": 2}], "d": {"e": 3}});
        trim(&mut v, &[vec!["a", "b"], vec!["d"]]);
        assert_eq!(v, json!({"@type": "t", "a": [{"b": 1}], "d": {"e": 3}}));
    }
}
