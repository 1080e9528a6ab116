//! What the status server is told by Istio's injector, through the environment: the rewritten
//! kubelet probes (`ISTIO_KUBE_APP_PROBERS`), the application's Prometheus scrape annotations
//! (`ISTIO_PROMETHEUS_ANNOTATIONS`) and the feature switches. Parsed once, at startup; a bad
//! value is a startup error, as it is for pilot-agent.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

/// Ports the sidecar owns. A scrape target on one of them would read the proxy's own surfaces
/// (admin, capture, DNS) or merge the proxy's metrics twice, so pilot-agent refuses them.
pub const RESERVED_PORTS: &[(u16, &str)] = &[
    (15000, "Envoy admin"),
    (15001, "outbound traffic capture"),
    (15004, "pilot debug"),
    (15006, "inbound traffic capture"),
    (15008, "HBONE tunnel"),
    (15020, "pilot-agent status / merged Prometheus"),
    (15021, "Envoy health"),
    (15053, "DNS proxy"),
    (15090, "Envoy Prometheus (already merged)"),
];

/// Why `port` is reserved for Istio, if it is.
pub fn reserved_port_reason(port: u16) -> Option<&'static str> {
    RESERVED_PORTS
        .iter()
        .find(|(p, _)| *p == port)
        .map(|(_, why)| *why)
}

/// Everything the status server reads from the environment.
#[derive(Debug, Clone)]
pub struct StatusOptions {
    /// `INSTANCE_IP`: where HTTP, TCP and gRPC probes go (kubelet probes the pod IP).
    pub pod_ip: Option<IpAddr>,
    /// The pod is IPv6-only: probes leave from `::6` instead of `127.0.0.6`.
    pub ipv6: bool,
    /// The port the status server listens on (15020); a scrape target on it would recurse.
    pub status_port: u16,
    pub probers: AppProbers,
    /// `None`: no application metrics to merge.
    pub scrape: Option<ScrapeConfig>,
    /// `REWRITE_PROBE_LEGACY_LOCALHOST_DESTINATION`: probe `localhost` instead of the pod IP.
    pub probe_localhost: bool,
    /// `ENABLE_PROBE_KEEPALIVE_CONNECTIONS`: reuse HTTP probe connections (kubelet does not).
    pub probe_keepalive: bool,
    /// `ISTIO_ENABLE_HTTP2_PROBING`: offer h2 by ALPN on HTTPS probes, as kubelet does.
    pub http2_probing: bool,
    /// `METRICS_LOCALHOST_ACCESS_ONLY`: only loopback peers may read the merged metrics.
    pub metrics_localhost_only: bool,
    /// `PILOT_AGENT_MERGE_ENVOY_STATS`: include the proxy's own metrics in the merged output.
    pub merge_proxy_stats: bool,
}

impl StatusOptions {
    /// Options with nothing configured: no probers, no application metrics, Istio's defaults.
    pub fn new(status_port: u16) -> Self {
        Self {
            pod_ip: None,
            ipv6: false,
            status_port,
            probers: AppProbers::default(),
            scrape: None,
            probe_localhost: false,
            probe_keepalive: false,
            http2_probing: true,
            metrics_localhost_only: false,
            merge_proxy_stats: true,
        }
    }

    /// Reads the process environment (see [`StatusOptions::from_lookup`]).
    pub fn from_env(status_port: u16) -> Result<Self, String> {
        Self::from_lookup(status_port, |name| std::env::var(name).ok())
    }

    /// Reads `INSTANCE_IP`, `ISTIO_KUBE_APP_PROBERS`, `ISTIO_PROMETHEUS_ANNOTATIONS`,
    /// `REWRITE_PROBE_LEGACY_LOCALHOST_DESTINATION`, `ENABLE_PROBE_KEEPALIVE_CONNECTIONS`,
    /// `ISTIO_ENABLE_HTTP2_PROBING`, `METRICS_LOCALHOST_ACCESS_ONLY` and
    /// `PILOT_AGENT_MERGE_ENVOY_STATS` through `lookup`. `ipv6` (the agent's IPv6-only mode)
    /// is left false; the caller sets it.
    pub fn from_lookup(
        status_port: u16,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let flag = |name: &str, default: bool| {
            lookup(name).and_then(|v| parse_bool(&v)).unwrap_or(default)
        };
        let pod_ip = lookup("INSTANCE_IP").and_then(|v| v.trim().parse::<IpAddr>().ok());
        let probers = match lookup("ISTIO_KUBE_APP_PROBERS").filter(|v| !v.is_empty()) {
            Some(json) => parse_app_probers(&json)?,
            None => AppProbers::default(),
        };
        let scrape = match lookup("ISTIO_PROMETHEUS_ANNOTATIONS") {
            Some(json) => parse_scrape_config(&json, status_port)?,
            None => None,
        };
        Ok(Self {
            pod_ip,
            ipv6: false,
            status_port,
            probers,
            scrape,
            probe_localhost: flag("REWRITE_PROBE_LEGACY_LOCALHOST_DESTINATION", false),
            probe_keepalive: flag("ENABLE_PROBE_KEEPALIVE_CONNECTIONS", false),
            http2_probing: flag("ISTIO_ENABLE_HTTP2_PROBING", true),
            metrics_localhost_only: flag("METRICS_LOCALHOST_ACCESS_ONLY", false),
            merge_proxy_stats: flag("PILOT_AGENT_MERGE_ENVOY_STATS", true),
        })
    }

    /// Probes leave from `::6` when the pod is IPv6-only or its IP is a global IPv6 address
    /// (a dual-stack pod whose primary IP is IPv6), else from `127.0.0.6`: an address the
    /// capture rules let through to the application without looping back into the proxy.
    pub fn probe_source(&self) -> IpAddr {
        let v6_pod = match self.pod_ip {
            Some(IpAddr::V6(ip)) => (ip.segments()[0] & 0xffc0) != 0xfe80,
            _ => false,
        };
        if self.ipv6 || v6_pod {
            IpAddr::from([0, 0, 0, 0, 0, 0, 0, 6])
        } else {
            IpAddr::from([127, 0, 0, 6])
        }
    }
}

/// Go's `strconv.ParseBool`, which Istio's env flags use; anything else keeps the default.
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// The rewritten kubelet probes, by the path the kubelet now asks the status server for
/// (`/app-health/<container>/livez`).
#[derive(Debug, Clone, Default)]
pub struct AppProbers(BTreeMap<String, AppProber>);

impl AppProbers {
    pub fn get(&self, path: &str) -> Option<&AppProber> {
        self.0.get(path)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One probe: what to dial and how long it may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppProber {
    pub action: ProbeAction,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeAction {
    Http {
        path: String,
        port: u16,
        https: bool,
    },
    Tcp {
        port: u16,
    },
    Grpc {
        port: u16,
        service: String,
    },
}

/// Kubernetes' default `timeoutSeconds`. The API server fills it in, so injected probes carry
/// it; a hand-written prober without it gets the same instead of no limit at all.
const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The JSON shapes of Kubernetes' probe actions, as the injector writes them.
#[derive(Deserialize)]
struct ProberJson {
    #[serde(rename = "httpGet")]
    http_get: Option<HttpGetJson>,
    #[serde(rename = "tcpSocket")]
    tcp_socket: Option<TcpSocketJson>,
    grpc: Option<GrpcJson>,
    #[serde(rename = "timeoutSeconds", default)]
    timeout_seconds: i32,
}

#[derive(Deserialize)]
struct HttpGetJson {
    #[serde(default)]
    path: String,
    port: serde_json::Value,
    #[serde(default)]
    scheme: String,
}

#[derive(Deserialize)]
struct TcpSocketJson {
    port: serde_json::Value,
}

#[derive(Deserialize)]
struct GrpcJson {
    port: i64,
    service: Option<String>,
}

/// Parses `ISTIO_KUBE_APP_PROBERS`. Each key must be `/app-health|app-lifecycle/<container>/
/// <livez|readyz|startupz|prestopz|poststartz>`, each prober exactly one action, and HTTP and
/// TCP ports numbers (a named port cannot be resolved here): pilot-agent refuses to start
/// otherwise, and so do we.
pub fn parse_app_probers(json: &str) -> Result<AppProbers, String> {
    let raw: BTreeMap<String, ProberJson> = serde_json::from_str(json)
        .map_err(|e| format!("failed to decode app prober err = {e}, json string = {json}"))?;
    let mut out = BTreeMap::new();
    for (path, prober) in raw {
        if !valid_prober_path(&path) {
            return Err(format!(
                "invalid path {path}, must be /app-health/<container>/<livez|readyz|startupz> \
                 or /app-lifecycle/<container>/<prestopz|poststartz>"
            ));
        }
        let ProberJson {
            http_get,
            tcp_socket,
            grpc,
            timeout_seconds,
        } = prober;
        let int_port = |v: &serde_json::Value| {
            v.as_i64()
                .and_then(|p| u16::try_from(p).ok())
                .ok_or_else(|| {
                    format!("invalid prober config for {path}, the port must be int type")
                })
        };
        let action = match (http_get, tcp_socket, grpc) {
            (Some(h), None, None) => ProbeAction::Http {
                port: int_port(&h.port)?,
                https: h.scheme == "HTTPS",
                path: if h.path.starts_with('/') {
                    h.path
                } else {
                    format!("/{}", h.path)
                },
            },
            (None, Some(t), None) => ProbeAction::Tcp {
                port: int_port(&t.port)?,
            },
            (None, None, Some(g)) => ProbeAction::Grpc {
                port: u16::try_from(g.port)
                    .map_err(|_| format!("invalid prober config for {path}, bad gRPC port"))?,
                service: g.service.unwrap_or_default(),
            },
            _ => {
                return Err(
                    "invalid prober type, must be one of type httpGet, tcpSocket or gRPC"
                        .to_string(),
                )
            }
        };
        let timeout = match u64::try_from(timeout_seconds) {
            Ok(s) if s > 0 => Duration::from_secs(s),
            _ => DEFAULT_PROBE_TIMEOUT,
        };
        out.insert(path, AppProber { action, timeout });
    }
    Ok(AppProbers(out))
}

fn valid_prober_path(path: &str) -> bool {
    let mut parts = path.split('/');
    let (Some(""), Some(kind), Some(container), Some(probe), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    matches!(kind, "app-health" | "app-lifecycle")
        && !container.is_empty()
        && matches!(
            probe,
            "livez" | "readyz" | "startupz" | "prestopz" | "poststartz"
        )
}

/// Where the application's metrics are: one or more `localhost:<port><path>` targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrapeConfig {
    pub targets: Vec<ScrapeTarget>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrapeTarget {
    pub port: u16,
    pub path: String,
}

#[derive(Deserialize, Default)]
struct ScrapeJson {
    #[serde(default)]
    scrape: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    port: String,
    #[serde(default)]
    targets: Vec<TargetJson>,
}

#[derive(Deserialize)]
struct TargetJson {
    #[serde(default)]
    port: String,
    #[serde(default)]
    path: String,
}

/// Parses `ISTIO_PROMETHEUS_ANNOTATIONS` (`{"scrape":"true","path":"/metrics","port":"8080"}`,
/// or a `targets` list): `scrape: "false"` turns merging off; the path defaults to `/metrics`
/// and the legacy port to 80. A target on the status port or on a port Istio reserves is a
/// startup error, as in pilot-agent.
pub fn parse_scrape_config(json: &str, status_port: u16) -> Result<Option<ScrapeConfig>, String> {
    let raw: ScrapeJson = serde_json::from_str(json)
        .map_err(|e| format!("failed to unmarshal ISTIO_PROMETHEUS_ANNOTATIONS: {e}"))?;
    if raw.scrape == "false" {
        return Ok(None);
    }
    let listed: Vec<(String, String)> = if raw.targets.is_empty() {
        let port = if raw.port.is_empty() {
            "80".to_string()
        } else {
            raw.port
        };
        vec![(port, raw.path)]
    } else {
        raw.targets.into_iter().map(|t| (t.port, t.path)).collect()
    };
    let mut targets = Vec::with_capacity(listed.len());
    for (port_text, path) in listed {
        let port = port_text
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| {
                format!(
                    "invalid prometheus scrape configuration: invalid target port {port_text:?}"
                )
            })?;
        if port == status_port {
            return Err(format!(
                "invalid prometheus scrape configuration: target port {port_text} is the same \
                 as agent port, which may lead to a recursive loop"
            ));
        }
        if let Some(reason) = reserved_port_reason(port) {
            return Err(format!(
                "invalid prometheus scrape configuration: target port {port_text} is reserved \
                 for Istio ({reason}) and cannot be scraped"
            ));
        }
        let path = if path.is_empty() {
            "/metrics".to_string()
        } else {
            path
        };
        targets.push(ScrapeTarget { port, path });
    }
    Ok(Some(ScrapeConfig { targets }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probers_of_each_kind() {
        let p = parse_app_probers(
            r#"{"/app-health/app/livez":{"httpGet":{"path":"hello","port":8080,"scheme":"HTTPS"},"timeoutSeconds":3},
                "/app-health/app/readyz":{"tcpSocket":{"port":9090}},
                "/app-lifecycle/app/prestopz":{"grpc":{"port":7070,"service":"svc"},"timeoutSeconds":2}}"#,
        )
        .expect("parses");
        assert_eq!(p.len(), 3);
        assert_eq!(
            p.get("/app-health/app/livez"),
            Some(&AppProber {
                action: ProbeAction::Http {
                    path: "/hello".into(),
                    port: 8080,
                    https: true
                },
                timeout: Duration::from_secs(3)
            })
        );
        assert_eq!(
            p.get("/app-health/app/readyz").map(|p| p.timeout),
            Some(DEFAULT_PROBE_TIMEOUT)
        );
        assert!(matches!(
            p.get("/app-lifecycle/app/prestopz").map(|p| &p.action),
            Some(ProbeAction::Grpc { port: 7070, service }) if service == "svc"
        ));
    }

    #[test]
    fn probers_refused_as_pilot_agent_refuses_them() {
        for (json, want) in [
            (
                r#"{"/app-health/app/other":{"tcpSocket":{"port":1}}}"#,
                "invalid path",
            ),
            (
                r#"{"/healthz/app/livez":{"tcpSocket":{"port":1}}}"#,
                "invalid path",
            ),
            (r#"{"/app-health/app/livez":{}}"#, "invalid prober type"),
            (
                r#"{"/app-health/app/livez":{"tcpSocket":{"port":1},"grpc":{"port":2}}}"#,
                "invalid prober type",
            ),
            (
                r#"{"/app-health/app/livez":{"httpGet":{"port":"http"}}}"#,
                "the port must be int type",
            ),
            (r#"not json"#, "failed to decode app prober"),
        ] {
            let e = parse_app_probers(json).expect_err(json);
            assert!(e.contains(want), "{json}: {e}");
        }
    }

    #[test]
    fn scrape_config_defaults_and_refusals() {
        assert_eq!(
            parse_scrape_config(r#"{"scrape":"true"}"#, 15020),
            Ok(Some(ScrapeConfig {
                targets: vec![ScrapeTarget {
                    port: 80,
                    path: "/metrics".into()
                }]
            }))
        );
        assert_eq!(
            parse_scrape_config(r#"{"scrape":"false","port":"1"}"#, 15020),
            Ok(None)
        );
        let two = parse_scrape_config(
            r#"{"targets":[{"port":"8080"},{"port":"9090","path":"/m"}]}"#,
            15020,
        )
        .expect("parses")
        .expect("some");
        assert_eq!(two.targets.len(), 2);
        assert_eq!(two.targets[1].path, "/m");
        let e = parse_scrape_config(r#"{"port":"15020"}"#, 15020).expect_err("recursive");
        assert!(e.contains("same as agent port"), "{e}");
        let e = parse_scrape_config(r#"{"port":"15090"}"#, 15020).expect_err("reserved");
        assert!(e.contains("reserved for Istio (Envoy Prometheus"), "{e}");
        let e =
            parse_scrape_config(r#"{"targets":[{"port":"015000"}]}"#, 15020).expect_err("lead 0");
        assert!(e.contains("reserved for Istio (Envoy admin)"), "{e}");
        assert!(parse_scrape_config(r#"{"port":"x"}"#, 15020).is_err());
    }

    #[test]
    fn env_switches_and_probe_source() {
        let o = StatusOptions::from_lookup(15020, |name| match name {
            "INSTANCE_IP" => Some("fd00::5".into()),
            "METRICS_LOCALHOST_ACCESS_ONLY" => Some("true".into()),
            "ISTIO_ENABLE_HTTP2_PROBING" => Some("0".into()),
            "ENABLE_PROBE_KEEPALIVE_CONNECTIONS" => Some("bogus".into()),
            _ => None,
        })
        .expect("parses");
        assert!(o.metrics_localhost_only && !o.http2_probing && !o.probe_keepalive);
        assert_eq!(o.probe_source().to_string(), "::6");
        let mut o = StatusOptions::new(15020);
        o.pod_ip = "fe80::1".parse().ok();
        assert_eq!(o.probe_source().to_string(), "127.0.0.6");
    }
}
