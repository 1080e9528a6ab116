//! pilot-agent's `proxy` command line. Flags come as `--name value` or `--name=value`, and
//! unknown flags are tolerated as pilot-agent tolerates them (its flag parser whitelists them),
//! because injection templates of newer Istio releases may pass flags we do not know.

use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq)]
pub struct ProxyArgs {
    /// `sidecar` (the default) or `router`; only sidecar is served.
    pub node_type: String,
    /// `--domain`, the DNS domain of the node id (default `<ns>.svc.cluster.local`).
    pub domain: Option<String>,
    /// `--proxyLogLevel` (Envoy's `-l`).
    pub proxy_log_level: String,
    /// `--proxyComponentLogLevel` (Envoy's `--component-log-level`).
    pub proxy_component_log_level: Option<String>,
    /// `--log_output_level`, the agent's own scopes (`default:info,dns:debug`).
    pub log_output_level: Option<String>,
    /// `--concurrency` (legacy; ProxyConfig.concurrency is preferred).
    pub concurrency: Option<usize>,
    /// `--meshConfig`, the mesh config file whose `defaultConfig` is the base ProxyConfig.
    pub mesh_config: PathBuf,
    /// `--serviceCluster`.
    pub service_cluster: Option<String>,
    /// `--outlierLogPath`.
    pub outlier_log_path: Option<String>,
    /// `--log_as_json`.
    pub log_as_json: bool,
    /// Flags we accepted without acting on them, for a startup warning.
    pub ignored: Vec<String>,
}

impl Default for ProxyArgs {
    fn default() -> Self {
        ProxyArgs {
            node_type: "sidecar".to_string(),
            domain: None,
            proxy_log_level: "warning".to_string(),
            proxy_component_log_level: Some("misc:error".to_string()),
            log_output_level: None,
            concurrency: None,
            mesh_config: PathBuf::from("./etc/istio/config/mesh"),
            service_cluster: None,
            outlier_log_path: None,
            log_as_json: false,
            ignored: Vec::new(),
        }
    }
}

/// Flags that take no value.
const BOOLEAN_FLAGS: &[&str] = &["log_as_json", "profiling", "log_caller", "help"];

/// Parses the arguments after `proxy`.
pub fn parse(args: &[String]) -> Result<ProxyArgs, String> {
    let mut parsed = ProxyArgs::default();
    let mut positional = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            positional.push(arg.clone());
            continue;
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag, None),
        };
        let value = if BOOLEAN_FLAGS.contains(&name) {
            inline.or_else(|| Some("true".to_string()))
        } else if inline.is_some() {
            inline
        } else if i < args.len() && !args[i].starts_with('-') {
            i += 1;
            Some(args[i - 1].clone())
        } else {
            None
        };
        let value = value.unwrap_or_default();
        match name {
            "domain" => parsed.domain = Some(value),
            "proxyLogLevel" => parsed.proxy_log_level = value,
            "proxyComponentLogLevel" => {
                parsed.proxy_component_log_level = Some(value).filter(|v| !v.is_empty())
            }
            "log_output_level" => parsed.log_output_level = Some(value),
            "concurrency" => {
                parsed.concurrency = Some(
                    value
                        .parse()
                        .map_err(|_| format!("--concurrency: not a number: {value:?}"))?,
                )
            }
            "meshConfig" => parsed.mesh_config = PathBuf::from(value),
            "serviceCluster" => parsed.service_cluster = Some(value),
            "outlierLogPath" => parsed.outlier_log_path = Some(value),
            "log_as_json" => parsed.log_as_json = value != "false",
            _ => parsed.ignored.push(format!("--{name}")),
        }
    }
    if let Some(node_type) = positional.first() {
        parsed.node_type = node_type.clone();
    }
    if parsed.node_type != "sidecar" {
        return Err(format!(
            "proxy type {:?} is not supported: Outrigger runs as a sidecar only",
            parsed.node_type
        ));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn injection_template_arguments() {
        let args = parse(&strings(&[
            "sidecar",
            "--domain",
            "default.svc.cluster.local",
            "--proxyLogLevel=warning",
            "--proxyComponentLogLevel=misc:error",
            "--log_output_level=default:info",
            "--stsPort",
            "15463",
            "--log_as_json",
        ]))
        .expect("parses");
        assert_eq!(args.domain.as_deref(), Some("default.svc.cluster.local"));
        assert_eq!(args.proxy_log_level, "warning");
        assert_eq!(
            args.proxy_component_log_level.as_deref(),
            Some("misc:error")
        );
        assert_eq!(args.log_output_level.as_deref(), Some("default:info"));
        assert!(args.log_as_json);
        assert_eq!(args.ignored, vec!["--stsPort"]);
    }

    #[test]
    fn router_is_refused_and_sidecar_is_the_default() {
        assert!(parse(&strings(&["router"])).is_err());
        assert_eq!(parse(&[]).expect("parses").node_type, "sidecar");
        assert!(parse(&strings(&["--concurrency", "x"])).is_err());
    }
}
