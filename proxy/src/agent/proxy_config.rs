//! Istio's ProxyConfig as pilot-agent assembles it: Istio's defaults, then the mesh config
//! file's `defaultConfig`, then `PROXY_CONFIG`, then the pod's `proxy.istio.io/config`
//! annotation, each merged over the last. The merged document is kept whole (it is the node's
//! `PROXY_CONFIG` metadata, which istiod reads) and the fields the agent acts on are read out.

use super::duration;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// The pod annotation holding a ProxyConfig override.
pub const ANNOTATION: &str = "proxy.istio.io/config";

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The merged document, camelCase as in Istio's API.
    pub raw: Value,
    /// The mesh config's `trustDomain` (default `cluster.local`).
    pub trust_domain: String,
    pub discovery_address: String,
    /// `controlPlaneAuthPolicy: NONE` talks to istiod in plaintext.
    pub plaintext_control_plane: bool,
    pub drain_duration: Duration,
    pub termination_drain_duration: Duration,
    /// 0 means one worker per core.
    pub concurrency: Option<usize>,
    pub proxy_admin_port: u16,
    pub status_port: u16,
    pub service_cluster: String,
    pub hold_application_until_proxy_starts: bool,
    /// `proxyMetadata`: extra environment for the agent.
    pub proxy_metadata: BTreeMap<String, String>,
    /// `proxyStatsMatcher`: extra `stats_matcher` inclusions.
    pub stats_inclusion_prefixes: Vec<String>,
    pub stats_inclusion_suffixes: Vec<String>,
    pub stats_inclusion_regexps: Vec<String>,
}

/// Istio's `DefaultProxyConfig` (pkg/config/mesh), the fields that matter to a sidecar.
fn defaults() -> Value {
    json!({
        "configPath": "./etc/istio/proxy",
        "binaryPath": "/usr/local/bin/envoy",
        "serviceCluster": "istio-proxy",
        "drainDuration": "45s",
        "terminationDrainDuration": "5s",
        "discoveryAddress": "istiod.istio-system.svc:15012",
        "controlPlaneAuthPolicy": "MUTUAL_TLS",
        "proxyAdminPort": 15000,
        "statusPort": 15020,
        "concurrency": 2,
    })
}

/// Recursively merges `overlay` into `base`: objects merge key by key, anything else replaces.
fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) if existing.is_object() && v.is_object() => merge(existing, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

fn parse_document(origin: &str, text: &str) -> Result<Value, String> {
    if text.trim().is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    let value: Value =
        serde_yaml_ng::from_str(text).map_err(|e| format!("{origin}: not YAML or JSON: {e}"))?;
    match value {
        Value::Object(_) => Ok(value),
        Value::Null => Ok(Value::Object(Map::new())),
        _ => Err(format!("{origin}: expected a mapping")),
    }
}

/// Assembles the ProxyConfig. `mesh_config` is the mesh config file's text (absent file: none),
/// `proxy_config_env` the `PROXY_CONFIG` value, `annotations` the pod's annotations.
pub fn assemble(
    mesh_config: Option<&str>,
    proxy_config_env: Option<&str>,
    annotations: &BTreeMap<String, String>,
) -> Result<ProxyConfig, String> {
    let mut raw = defaults();
    let mut trust_domain = "cluster.local".to_string();
    if let Some(text) = mesh_config {
        let mesh = parse_document("mesh config", text)?;
        if let Some(td) = mesh.get("trustDomain").and_then(Value::as_str) {
            trust_domain = td.to_string();
        }
        if let Some(default_config) = mesh.get("defaultConfig") {
            merge(&mut raw, default_config.clone());
        }
    }
    if let Some(text) = proxy_config_env {
        merge(&mut raw, parse_document("PROXY_CONFIG", text)?);
    }
    if let Some(text) = annotations.get(ANNOTATION) {
        merge(&mut raw, parse_document(ANNOTATION, text)?);
    }
    read(raw, trust_domain)
}

fn read(raw: Value, trust_domain: String) -> Result<ProxyConfig, String> {
    let string = |key: &str| raw.get(key).and_then(Value::as_str).unwrap_or_default();
    let number = |key: &str| -> Result<Option<u64>, String> {
        match raw.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .map(Some)
                .ok_or_else(|| format!("ProxyConfig.{key}: not a whole number")),
            // Protobuf JSON allows numbers as strings.
            Some(Value::String(s)) => s
                .parse()
                .map(Some)
                .map_err(|_| format!("ProxyConfig.{key}: not a number: {s:?}")),
            Some(other) => Err(format!("ProxyConfig.{key}: not a number: {other}")),
        }
    };
    let port = |key: &str, default: u16| -> Result<u16, String> {
        match number(key)? {
            None => Ok(default),
            Some(n) => u16::try_from(n).map_err(|_| format!("ProxyConfig.{key}: not a port")),
        }
    };
    let dur = |key: &str| -> Result<Duration, String> {
        duration::parse(string(key)).map_err(|e| format!("ProxyConfig.{key}: {e}"))
    };
    let strings_at = |matcher: &Value, key: &str| -> Vec<String> {
        matcher
            .get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let matcher = raw.get("proxyStatsMatcher").cloned().unwrap_or(Value::Null);
    let proxy_metadata = raw
        .get("proxyMetadata")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    Ok(ProxyConfig {
        trust_domain,
        discovery_address: string("discoveryAddress").to_string(),
        plaintext_control_plane: string("controlPlaneAuthPolicy") == "NONE",
        drain_duration: dur("drainDuration")?,
        termination_drain_duration: dur("terminationDrainDuration")?,
        concurrency: number("concurrency")?.map(|n| n as usize),
        proxy_admin_port: port("proxyAdminPort", 15000)?,
        status_port: port("statusPort", 15020)?,
        service_cluster: string("serviceCluster").to_string(),
        hold_application_until_proxy_starts: raw
            .get("holdApplicationUntilProxyStarts")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        proxy_metadata,
        stats_inclusion_prefixes: strings_at(&matcher, "inclusionPrefixes"),
        stats_inclusion_suffixes: strings_at(&matcher, "inclusionSuffixes"),
        stats_inclusion_regexps: strings_at(&matcher, "inclusionRegexps"),
        raw,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_merge_in_pilot_agents_order() {
        let mesh = "trustDomain: example.org\ndefaultConfig:\n  discoveryAddress: istiod.custom:15012\n  drainDuration: 10s\n  proxyMetadata:\n    A: mesh\n    B: mesh\n";
        let env = r#"{"proxyMetadata":{"B":"env"},"concurrency":4}"#;
        let annotations = BTreeMap::from([(
            ANNOTATION.to_string(),
            "terminationDrainDuration: 20s".to_string(),
        )]);
        let pc = assemble(Some(mesh), Some(env), &annotations).expect("assembles");
        assert_eq!(pc.trust_domain, "example.org");
        assert_eq!(pc.discovery_address, "istiod.custom:15012");
        assert_eq!(pc.drain_duration, Duration::from_secs(10));
        assert_eq!(pc.termination_drain_duration, Duration::from_secs(20));
        assert_eq!(pc.concurrency, Some(4));
        assert_eq!(pc.proxy_metadata["A"], "mesh");
        assert_eq!(pc.proxy_metadata["B"], "env");
        assert_eq!(pc.status_port, 15020);
    }

    #[test]
    fn defaults_without_any_source() {
        let pc = assemble(None, None, &BTreeMap::new()).expect("assembles");
        assert_eq!(pc.discovery_address, "istiod.istio-system.svc:15012");
        assert_eq!(pc.termination_drain_duration, Duration::from_secs(5));
        assert!(!pc.plaintext_control_plane);
        assert!(assemble(None, Some("drainDuration: soon"), &BTreeMap::new()).is_err());
    }
}
