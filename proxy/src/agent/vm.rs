//! Mesh expansion on a VM: the files `istioctl x workload entry configure` writes, read as
//! Istio's `istio-start.sh` reads them. `sidecar.env` and `cluster.env` (shell `KEY=value`
//! lines) add to the environment without overriding it, and the VM names map onto the pod
//! names the agent uses (`ISTIO_SVC_IP` → `INSTANCE_IP`, `ISTIO_NAMESPACE` → `POD_NAMESPACE`,
//! the short host name → `POD_NAME`, certificates kept in `./etc/certs`). A pod has none of
//! these files, so nothing here changes a pod's start.

use super::environment::Environment;
use std::path::Path;

/// Where the Debian package and istioctl's instructions put the environment files, relative
/// to the working directory (`/`).
pub const ENV_FILES: &[&str] = &[
    "./var/lib/istio/envoy/sidecar.env",
    "./var/lib/istio/envoy/cluster.env",
];

/// `KEY=value` lines as a shell would read simple assignments: comments and blank lines
/// skipped, an optional `export`, single or double quotes removed.
pub fn parse_env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let (key, value) = line.split_once('=')?;
            let key = key.trim();
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return None;
            }
            let value = value.trim();
            let unquoted = value
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .or_else(|| value.strip_prefix('"').and_then(|v| v.strip_suffix('"')))
                .unwrap_or(value);
            Some((key.to_string(), unquoted.to_string()))
        })
        .collect()
}

/// Adds the VM files' variables and the VM-to-pod name mapping to `env`. Returns whether
/// this looks like a VM (any of the files was there).
pub fn apply(env: &mut Environment, root: &Path) -> bool {
    let mut found = false;
    for file in ENV_FILES {
        let Ok(text) = std::fs::read_to_string(root.join(file)) else {
            continue;
        };
        found = true;
        for (k, v) in parse_env_file(&text) {
            if env.get(&k).is_none() {
                env.set(&k, &v);
            }
        }
    }
    if !found && env.get("ISTIO_SVC_IP").is_none() {
        return false;
    }
    let copy = |env: &mut Environment, from: &str, to: &str| {
        if env.get(to).is_none() {
            if let Some(v) = env.get(from).map(str::to_string) {
                env.set(to, &v);
            }
        }
    };
    copy(env, "ISTIO_SVC_IP", "INSTANCE_IP");
    // istio-start.sh runs the agent with POD_NAMESPACE=${ISTIO_NAMESPACE:-default}.
    let namespace = env.get_or("ISTIO_NAMESPACE", "default").to_string();
    env.set("POD_NAMESPACE", &namespace);
    proxy_config_from_vm_variables(env);
    if env.get("POD_NAME").is_none() {
        if let Some(host) = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
        {
            let short = host.split('.').next().unwrap_or(&host).to_string();
            env.set("POD_NAME", &short);
        }
    }
    for name in ["PROV_CERT", "OUTPUT_CERTS"] {
        if env.get(name).is_none() {
            env.set(name, "./etc/certs");
        }
    }
    true
}

/// istio-start.sh's ProxyConfig: `PILOT_ADDRESS` (or `istiod.<ISTIO_SYSTEM_NAMESPACE>.svc:
/// <ISTIO_PILOT_PORT>`) becomes `discoveryAddress`; without a `PROXY_CONFIG`, the service
/// cluster (`ISTIO_SERVICE`, default `rawvm`) and `ISTIO_CP_AUTH` make one.
fn proxy_config_from_vm_variables(env: &mut Environment) {
    let system_namespace = env
        .get_or("ISTIO_SYSTEM_NAMESPACE", "istio-system")
        .to_string();
    let pilot = env.get("PILOT_ADDRESS").map(str::to_string).or_else(|| {
        env.get("ISTIO_PILOT_PORT")
            .map(|port| format!("istiod.{system_namespace}.svc:{port}"))
    });
    let mut config: serde_json::Map<String, serde_json::Value> = match env.get("PROXY_CONFIG") {
        // PROXY_CONFIG is YAML or JSON; a document that does not parse is left for the
        // ProxyConfig reader to report.
        Some(text) => match serde_yaml_ng::from_str(text) {
            Ok(map) => map,
            Err(_) => return,
        },
        None => {
            let mut map = serde_json::Map::new();
            map.insert(
                "serviceCluster".into(),
                env.get_or("ISTIO_SERVICE", "rawvm").into(),
            );
            map.insert(
                "controlPlaneAuthPolicy".into(),
                env.get_or("ISTIO_CP_AUTH", "MUTUAL_TLS").into(),
            );
            map
        }
    };
    if let Some(address) = pilot {
        config.insert("discoveryAddress".into(), address.into());
    }
    env.set(
        "PROXY_CONFIG",
        &serde_json::Value::Object(config).to_string(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istioctl_cluster_env_maps_onto_the_pod_names() {
        let dir = tempfile_dir();
        let envoy = dir.join("var/lib/istio/envoy");
        std::fs::create_dir_all(&envoy).expect("mkdir");
        std::fs::write(
            envoy.join("cluster.env"),
            "CANONICAL_SERVICE='vm-app'\nISTIO_NAMESPACE='vm-ns'\nISTIO_SVC_IP='10.0.0.7'\n# comment\nISTIO_META_DNS_CAPTURE='true'\nSERVICE_ACCOUNT='vm-sa'\n",
        )
        .expect("write");
        let mut env = Environment::from_pairs([("SERVICE_ACCOUNT", "from-process")]);
        assert!(apply(&mut env, &dir));
        assert_eq!(env.get("INSTANCE_IP"), Some("10.0.0.7"));
        assert_eq!(env.get("POD_NAMESPACE"), Some("vm-ns"));
        assert_eq!(env.get("ISTIO_META_DNS_CAPTURE"), Some("true"));
        assert_eq!(env.get("SERVICE_ACCOUNT"), Some("from-process"));
        assert_eq!(env.get("OUTPUT_CERTS"), Some("./etc/certs"));
        assert!(env.get("POD_NAME").is_some());
        let _ = std::fs::remove_dir_all(&dir);

        let proxy_config: serde_json::Value =
            serde_json::from_str(env.get("PROXY_CONFIG").unwrap_or_default()).expect("JSON");
        assert_eq!(proxy_config["serviceCluster"], "rawvm");
        assert_eq!(proxy_config["controlPlaneAuthPolicy"], "MUTUAL_TLS");

        let mut with_pilot = Environment::from_pairs([
            ("ISTIO_SVC_IP", "10.0.0.8"),
            ("ISTIO_PILOT_PORT", "15012"),
            ("PROXY_CONFIG", "drainDuration: 10s"),
        ]);
        assert!(apply(&mut with_pilot, Path::new("/nonexistent-root")));
        let proxy_config: serde_json::Value =
            serde_json::from_str(with_pilot.get("PROXY_CONFIG").unwrap_or_default()).expect("JSON");
        assert_eq!(
            proxy_config["discoveryAddress"],
            "istiod.istio-system.svc:15012"
        );
        assert_eq!(proxy_config["drainDuration"], "10s");
        assert_eq!(with_pilot.get("POD_NAMESPACE"), Some("default"));

        let mut pod = Environment::from_pairs([("POD_NAME", "p")]);
        assert!(!apply(&mut pod, Path::new("/nonexistent-root")));
        assert_eq!(pod.get("OUTPUT_CERTS"), None);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("outrigger-vm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }
}
