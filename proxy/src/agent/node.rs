//! The node this proxy presents to istiod, built as pilot-agent builds it: the id
//! `sidecar~<ip>~<pod>.<ns>~<domain>`, the service cluster, the locality from the
//! `istio-locality` label, and the metadata istiod generates configuration from
//! (`ISTIO_META_*` and `ISTIO_METAJSON_*` variables, pod labels and annotations, ports,
//! `PROXY_CONFIG`, `ISTIO_VERSION`).

use super::environment::Environment;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The label pilot-agent reads the locality from, `region.zone.subzone`.
const LOCALITY_LABEL: &str = "istio-locality";

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub id: String,
    pub cluster: String,
    /// region, zone, sub_zone.
    pub locality: Option<(String, String, String)>,
    pub metadata: Map<String, Value>,
}

/// What the node is built from, gathered by the sidecar command.
#[derive(Debug, Clone, Default)]
pub struct NodeInputs {
    pub env: Environment,
    /// The merged ProxyConfig document (node metadata `PROXY_CONFIG`).
    pub proxy_config: Value,
    /// `--serviceCluster` or ProxyConfig.serviceCluster.
    pub service_cluster: String,
    /// `--domain`.
    pub domain: Option<String>,
    /// The pod's IPs, the primary first.
    pub instance_ips: Vec<IpAddr>,
    /// The downward API files `/etc/istio/pod/{labels,annotations}`.
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub envoy_status_port: u16,
    pub envoy_prometheus_port: u16,
    pub outlier_log_path: Option<String>,
    pub workload_identity_socket_file: String,
    pub exit_on_zero_active_connections: bool,
}

/// The `key="value"` lines the downward API writes; a line that is not quoted correctly is
/// skipped rather than failing the start.
pub fn parse_downward_api(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let (key, quoted) = line.split_once('=')?;
            // Go's %q quoting agrees with JSON strings for everything labels contain.
            let value: String = serde_json::from_str(quoted.trim()).ok()?;
            Some((key.trim().to_string(), value))
        })
        .collect()
}

pub fn build(inputs: &NodeInputs) -> Node {
    let env = &inputs.env;
    let namespace = env.get_or("POD_NAMESPACE", "default").to_string();
    let pod = env.get("POD_NAME").map(str::to_string).unwrap_or_else(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default()
    });
    let ip = inputs
        .instance_ips
        .first()
        .map(IpAddr::to_string)
        .unwrap_or_else(|| "127.0.0.1".to_string());
    let domain = inputs
        .domain
        .clone()
        .unwrap_or_else(|| format!("{namespace}.svc.cluster.local"));
    let id = format!("sidecar~{ip}~{pod}.{namespace}~{domain}");

    let mut metadata = Map::new();
    // ProxyConfig.proxyMetadata first, so the process environment wins over it.
    if let Some(pm) = inputs
        .proxy_config
        .get("proxyMetadata")
        .and_then(Value::as_object)
    {
        for (k, v) in pm {
            if let (Some(key), Some(v)) = (k.strip_prefix("ISTIO_META_"), v.as_str()) {
                metadata.insert(key.to_string(), json!(v));
            }
        }
    }
    for (key, value) in env.with_prefix("ISTIO_META_") {
        metadata.insert(key.to_string(), json!(value));
    }
    // An ISTIO_METAJSON_* value is a JSON object merged into the metadata at the top level.
    for (name, value) in env.with_prefix("ISTIO_METAJSON_") {
        match serde_json::from_str::<Map<String, Value>>(value) {
            Ok(object) => metadata.extend(object),
            Err(e) => {
                tracing::warn!(target: "agent", "ISTIO_METAJSON_{name} is not a JSON object: {e}")
            }
        }
    }
    if !metadata.contains_key("ISTIO_VERSION") {
        metadata.insert("ISTIO_VERSION".into(), json!(super::ISTIO_VERSION));
    }
    let ips: Vec<String> = inputs.instance_ips.iter().map(IpAddr::to_string).collect();
    metadata.insert("INSTANCE_IPS".into(), json!(ips.join(",")));
    metadata.insert("ENVOY_STATUS_PORT".into(), json!(inputs.envoy_status_port));
    metadata.insert(
        "ENVOY_PROMETHEUS_PORT".into(),
        json!(inputs.envoy_prometheus_port),
    );
    if inputs.exit_on_zero_active_connections {
        metadata.insert("EXIT_ON_ZERO_ACTIVE_CONNECTIONS".into(), json!("true"));
    }
    metadata.insert("METADATA_DISCOVERY".into(), json!("false"));
    metadata.insert(
        "WORKLOAD_IDENTITY_SOCKET_FILE".into(),
        json!(inputs.workload_identity_socket_file),
    );
    metadata.insert("PROXY_CONFIG".into(), inputs.proxy_config.clone());
    metadata.insert("NAME".into(), json!(pod));
    metadata.insert("NAMESPACE".into(), json!(namespace));
    if let Some(sa) = env.get("SERVICE_ACCOUNT") {
        metadata.insert("SERVICE_ACCOUNT".into(), json!(sa));
    }
    if let Some(path) = &inputs.outlier_log_path {
        metadata.insert("OUTLIER_LOG_PATH".into(), json!(path));
    }

    // Labels: ISTIO_METAJSON_LABELS, then the pod's labels over them.
    let mut labels: BTreeMap<String, String> = env
        .get("ISTIO_METAJSON_LABELS")
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default();
    for (k, v) in &inputs.labels {
        // The ReplicaSet's hash changes with every rollout and means nothing to the mesh.
        if k != "pod-template-hash" {
            labels.insert(k.clone(), v.clone());
        }
    }
    let locality = labels.get(LOCALITY_LABEL).map(|l| {
        let normalized = l.replace('.', "/");
        let mut parts = normalized.splitn(3, '/').map(str::to_string);
        (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        )
    });
    if let Some(l) = labels.get_mut(LOCALITY_LABEL) {
        *l = l.replace('.', "/");
    }
    if !labels.is_empty() {
        metadata.insert("LABELS".into(), json!(labels));
    }
    if !inputs.annotations.is_empty() {
        metadata.insert("ANNOTATIONS".into(), json!(inputs.annotations));
    }

    let cluster = service_cluster(
        &inputs.service_cluster,
        labels.get("app").map(String::as_str),
        metadata.get("WORKLOAD_NAME").and_then(Value::as_str),
        &namespace,
    );
    Node {
        id,
        cluster,
        locality,
        metadata,
    }
}

/// pilot-agent's service cluster: an explicit name other than the default, else
/// `<app>.<ns>`, else `<workload>.<ns>`, else `istio-proxy.<ns>`.
fn service_cluster(name: &str, app: Option<&str>, workload: Option<&str>, ns: &str) -> String {
    if !name.is_empty() && name != "istio-proxy" {
        return name.to_string();
    }
    if let Some(app) = app {
        return format!("{app}.{ns}");
    }
    if let Some(workload) = workload.filter(|w| !w.is_empty()) {
        return format!("{workload}.{ns}");
    }
    format!("istio-proxy.{ns}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(env: &[(&str, &str)]) -> NodeInputs {
        NodeInputs {
            env: Environment::from_pairs(env.iter().copied()),
            proxy_config: json!({"proxyMetadata": {"ISTIO_META_FROM_PC": "pc", "OTHER": "x"}}),
            service_cluster: "istio-proxy".into(),
            instance_ips: vec!["10.1.2.3".parse().expect("ip")],
            envoy_status_port: 15021,
            envoy_prometheus_port: 15090,
            workload_identity_socket_file: "socket".into(),
            ..Default::default()
        }
    }

    #[test]
    fn node_id_and_metadata_as_pilot_agent_builds_them() {
        let mut i = inputs(&[
            ("POD_NAME", "reviews-v1-abc"),
            ("POD_NAMESPACE", "bookinfo"),
            ("SERVICE_ACCOUNT", "bookinfo-reviews"),
            ("ISTIO_META_CLUSTER_ID", "Kubernetes"),
            ("ISTIO_META_WORKLOAD_NAME", "reviews-v1"),
            (
                "ISTIO_METAJSON_LABELS",
                r#"{"app":"reviews","version":"v1"}"#,
            ),
        ]);
        i.labels = parse_downward_api(
            "app=\"reviews\"\npod-template-hash=\"abc\"\nistio-locality=\"us-east1.b\"\nversion=\"v1\"",
        );
        let node = build(&i);
        assert_eq!(
            node.id,
            "sidecar~10.1.2.3~reviews-v1-abc.bookinfo~bookinfo.svc.cluster.local"
        );
        assert_eq!(node.cluster, "reviews.bookinfo");
        assert_eq!(
            node.locality,
            Some(("us-east1".into(), "b".into(), String::new()))
        );
        let md = &node.metadata;
        assert_eq!(md["CLUSTER_ID"], "Kubernetes");
        assert_eq!(md["FROM_PC"], "pc");
        assert!(!md.contains_key("OTHER"));
        assert_eq!(md["NAMESPACE"], "bookinfo");
        assert_eq!(md["NAME"], "reviews-v1-abc");
        assert_eq!(md["INSTANCE_IPS"], "10.1.2.3");
        assert_eq!(md["ENVOY_STATUS_PORT"], 15021);
        assert_eq!(md["ISTIO_VERSION"], crate::agent::ISTIO_VERSION);
        assert_eq!(md["LABELS"]["version"], "v1");
        assert!(md["LABELS"].get("pod-template-hash").is_none());
        // METAJSON merges at the top level too.
        assert_eq!(md["app"], "reviews");
    }

    #[test]
    fn service_cluster_falls_back_like_pilot_agent() {
        assert_eq!(service_cluster("custom", Some("a"), None, "ns"), "custom");
        assert_eq!(
            service_cluster("istio-proxy", None, Some("w"), "ns"),
            "w.ns"
        );
        assert_eq!(service_cluster("", None, None, "ns"), "istio-proxy.ns");
        let node = build(&inputs(&[("ISTIO_META_ISTIO_VERSION", "1.27.1")]));
        assert_eq!(node.metadata["ISTIO_VERSION"], "1.27.1");
        assert!(node.id.starts_with("sidecar~10.1.2.3~"));
        assert!(node.id.ends_with(".default~default.svc.cluster.local"));
    }
}
