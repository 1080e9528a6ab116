//! Istio's sidecar bootstrap goldens (`shared/vectors/istio-bootstrap/*_golden.json`, cloned
//! beside the repository) and what it takes to start a proxy on one: pilot-agent's flags and
//! the fixed ports rewritten to free ones (see that directory's README, "Placeholders").

use crate::ports::free_port;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// pilot-agent's flags for the goldens' inputs (pkg/envoy/proxy.go): drain 2 s, IPv4 node
/// addresses, agent log level `warning`.
pub const PILOT_AGENT_FLAGS: &[&str] = &[
    "--drain-time-s",
    "2",
    "--drain-strategy",
    "immediate",
    "--local-address-ip-version",
    "v4",
    "--file-flush-interval-msec",
    "1000",
    "--disable-hot-restart",
    "--allow-unknown-static-fields",
    "-l",
    "warning",
];

pub fn goldens_dir() -> PathBuf {
    vectors_dir().join("istio-bootstrap")
}

/// `shared/vectors/`: the data taken from Istio that tests replay.
pub fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors")
}

/// Every `*_golden.json`, sorted by name.
pub fn goldens() -> Vec<PathBuf> {
    let dir = goldens_dir();
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e} (CI clones shared/ beside the repository)",
            dir.display()
        )
    });
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a readable directory entry").path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with("_golden.json"))
        })
        .collect();
    files.sort();
    files
}

/// The ports of a sidecar bootstrap, rewritten from Istio's fixed ones.
#[derive(Debug, Clone, Copy)]
pub struct SidecarPorts {
    /// 15000 (15005 in some goldens); the `prometheus_stats` cluster points here too.
    pub admin: u16,
    /// 15090: the proxy's own `/stats/prometheus`.
    pub prometheus: u16,
    /// 15021: `/healthz/ready`, routed to the agent.
    pub status: u16,
    /// 15091 and 15092: secure metrics (TLS) in `secure_metrics_golden.json`.
    pub secure_metrics: u16,
    pub secure_agent_metrics: u16,
    /// 15020: the agent, which the `agent` cluster points at. Allocated and released, so
    /// nothing listens there: connections to it are refused, as when the agent is down.
    pub agent: u16,
}

impl SidecarPorts {
    pub fn allocate() -> Self {
        SidecarPorts {
            admin: free_port(),
            prometheus: free_port(),
            status: free_port(),
            secure_metrics: free_port(),
            secure_agent_metrics: free_port(),
            agent: free_port(),
        }
    }

    fn map(&self, port: u64) -> Option<u16> {
        Some(match port {
            15000 | 15005 => self.admin,
            15090 => self.prometheus,
            15021 => self.status,
            15091 => self.secure_metrics,
            15092 => self.secure_agent_metrics,
            15020 => self.agent,
            _ => return None,
        })
    }
}

/// A golden made runnable: every `port_value` that is one of Istio's fixed ports becomes the
/// matching port of `ports` (names and node metadata keep the originals, as they are only
/// labels), and the xDS socket `/tmp/XDS` moves to pilot-agent's production path relative to
/// the working directory, `./etc/istio/proxy/XDS`, so a run touches nothing shared. The SDS
/// socket is already relative.
pub fn rewrite(golden: &str, ports: &SidecarPorts) -> String {
    let mut doc: Value = serde_json::from_str(golden).expect("an Istio golden is JSON");
    walk(&mut doc, ports);
    serde_json::to_string_pretty(&doc).expect("JSON serialises")
}

fn walk(value: &mut Value, ports: &SidecarPorts) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if key == "port_value" {
                    if let Some(p) = v.as_u64().and_then(|p| ports.map(p)) {
                        *v = Value::from(p);
                    }
                } else if key == "path" && v.as_str() == Some("/tmp/XDS") {
                    *v = Value::from("./etc/istio/proxy/XDS");
                } else {
                    walk(v, ports);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| walk(v, ports)),
        _ => {}
    }
}

/// Every `initial_fetch_timeout` set to `timeout`. The goldens say `0s` (wait for the control
/// plane forever); with no control plane, Envoy then never leaves PRE_INITIALIZING and never
/// binds its listeners. A short timeout lets it give up on xDS and go LIVE on the static part.
pub fn with_initial_fetch_timeout(bootstrap: &str, timeout: &str) -> String {
    let mut doc: Value = serde_json::from_str(bootstrap).expect("a JSON bootstrap");
    fn set(value: &mut Value, timeout: &str) {
        match value {
            Value::Object(map) => {
                for (key, v) in map.iter_mut() {
                    if key == "initial_fetch_timeout" {
                        *v = Value::from(timeout);
                    } else {
                        set(v, timeout);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| set(v, timeout)),
            _ => {}
        }
    }
    set(&mut doc, timeout);
    serde_json::to_string_pretty(&doc).expect("JSON serialises")
}

/// The `istio_requests_total` series of a Prometheus body: labels (as a map) → value.
pub fn requests_total(body: &str) -> Vec<(std::collections::BTreeMap<String, String>, u64)> {
    body.lines()
        .filter_map(|l| l.strip_prefix("istio_requests_total{"))
        .map(|rest| {
            let (labels, value) = rest.rsplit_once("} ").expect("a sample");
            let mut map = std::collections::BTreeMap::new();
            for pair in labels.split("\",") {
                let (k, v) = pair.split_once("=\"").expect("a label");
                map.insert(k.to_string(), v.trim_end_matches('"').to_string());
            }
            (map, value.parse().expect("a count"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{rewrite, with_initial_fetch_timeout, SidecarPorts};

    #[test]
    fn rewrites_port_values_and_the_xds_socket_only() {
        let ports = SidecarPorts {
            admin: 1,
            prometheus: 2,
            status: 3,
            secure_metrics: 4,
            secure_agent_metrics: 5,
            agent: 6,
        };
        let golden = r#"{"name":"0.0.0.0_15090","a":{"port_value":15005},"b":[{"port_value":15090},{"port_value":15021},{"port_value":15020},{"port_value":8080}],"m":{"proxyAdminPort":15000},"pipe":{"path":"/tmp/XDS"},"dr":{"initial_fetch_timeout":"0s"}}"#;
        let out: serde_json::Value =
            serde_json::from_str(&with_initial_fetch_timeout(&rewrite(golden, &ports), "1s"))
                .expect("JSON");
        assert_eq!(
            out,
            serde_json::json!({"name":"0.0.0.0_15090","a":{"port_value":1},"b":[{"port_value":2},{"port_value":3},{"port_value":6},{"port_value":8080}],"m":{"proxyAdminPort":15000},"pipe":{"path":"./etc/istio/proxy/XDS"},"dr":{"initial_fetch_timeout":"1s"}})
        );
    }
}
