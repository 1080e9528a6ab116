//! The workload identity's configuration, and how pilot-agent's environment fills it
//! (`pilot/cmd/pilot-agent/options`, `pkg/istio-agent/agent.go`). Istio's well-known paths are
//! relative to the working directory (`./etc/certs`, `./var/run/secrets/...`); they are joined
//! to a base directory here so tests can point everything at a temporary directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Everything the identity needs. The sidecar command fills it with [`IdentityConfig::from_env`];
/// tests may build it directly.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
    /// Where certificates come from when no files are served; `None` when the CA is not used
    /// (`FILE_MOUNTED_CERTS`, or workload certificate files mounted for the pod).
    pub ca: Option<CaConfig>,
    /// Requested certificate lifetime (`SECRET_TTL`).
    pub secret_ttl: Duration,
    /// Renew when this fraction of the lifetime is left (`SECRET_GRACE_PERIOD_RATIO`).
    pub grace_ratio: f64,
    /// The ratio is moved up or down by up to this much (`SECRET_GRACE_PERIOD_RATIO_JITTER`).
    pub grace_ratio_jitter: f64,
    /// Write `cert-chain.pem`, `key.pem`, `root-cert.pem` here after each change (`OUTPUT_CERTS`).
    pub output_dir: Option<PathBuf>,
    /// Mode of the written files: 0600, or 0644 inside Kubernetes as pilot-agent does, so other
    /// containers of the pod can read them.
    pub output_mode: u32,
    /// Existing certificate files, served instead of CA-issued ones when present.
    pub files: CertFiles,
    /// How often mounted files are checked for changes.
    pub file_poll: Duration,
    /// The SDS socket Envoy's `sds-grpc` cluster points at.
    pub sds_socket: PathBuf,
}

/// A certificate chain, its key and a root bundle, as files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert_chain: PathBuf,
    pub key: PathBuf,
    pub root: PathBuf,
}

impl CertFiles {
    /// Istio's names in `dir`.
    pub fn in_dir(dir: &Path) -> CertFiles {
        CertFiles {
            cert_chain: dir.join("cert-chain.pem"),
            key: dir.join("key.pem"),
            root: dir.join("root-cert.pem"),
        }
    }
}

/// How to reach the Istio CA.
#[derive(Debug, Clone)]
pub struct CaConfig {
    /// `host:port`.
    pub address: String,
    /// `None`: plaintext (Istio's rule for port 15010).
    pub tls: Option<CaTls>,
    /// The projected service account token, re-read for every request; no header when the
    /// file is missing or empty.
    pub token_file: Option<PathBuf>,
    /// Sent as the `ClusterID` metadata.
    pub cluster_id: String,
    /// `CertSigner` request metadata (`ISTIO_META_CERT_SIGNER`).
    pub cert_signer: Option<String>,
    /// Extra request metadata (pilot-agent's `CA_HEADER_<name>` variables).
    pub headers: Vec<(String, String)>,
    /// Retry timing after a failed request.
    pub backoff: Backoff,
    /// Limit on one request, connection included.
    pub request_timeout: Duration,
}

/// TLS to the CA.
#[derive(Debug, Clone)]
pub struct CaTls {
    /// PEM roots the CA's certificate must chain to; read at each connection, since the
    /// mounted bundle rotates.
    pub root_cert: PathBuf,
    /// The name checked against the CA's certificate.
    pub server_name: String,
    /// A client certificate to present (`PROV_CERT`), when its files exist and it has not
    /// expired: a VM renews with the certificate it was provisioned with.
    pub client_cert: Option<CertFiles>,
}

/// Jittered exponential backoff: each wait is the interval times a random factor in
/// `[1 - jitter, 1 + jitter]`, and the interval grows by `multiplier` up to `max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub multiplier: f64,
    pub jitter: f64,
}

impl Default for Backoff {
    /// pilot-agent's: 500 ms growing by 1.5 up to 60 s, ±50 %.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(60),
            multiplier: 1.5,
            jitter: 0.5,
        }
    }
}

/// A configuration pilot-agent would refuse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("PROV_CERT and FILE_MOUNTED_CERTS are mutually exclusive")]
    ProvCertWithFileMountedCerts,
    #[error("PILOT_CERT_PROVIDER=none but a root CA is needed to reach the CA at {0}")]
    NoRootForCa(String),
    #[error("WORKLOAD_IDENTITY_SOCKET_FILE must be a file name, not a path: {0}")]
    SocketFileNotAName(String),
}

/// Where `CA_ROOT_CA=SYSTEM` looks (Debian's bundle, as in the istio-proxy image).
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

impl IdentityConfig {
    /// pilot-agent's reading of its environment. `base` is the directory Istio's relative
    /// well-known paths hang from (the working directory, `/` in the istio-proxy container);
    /// `discovery_address` is ProxyConfig's, the CA's address when `CA_ADDR` is unset.
    /// Unparsable numbers and durations are logged and replaced by the default, as Istio's
    /// `env` package does.
    pub fn from_env(
        lookup: impl Fn(&str) -> Option<String>,
        base: &Path,
        namespace: &str,
        service_account: &str,
        discovery_address: &str,
    ) -> Result<IdentityConfig, ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let parsed = |name: &str, default: f64| -> f64 {
            get(name)
                .map(|v| {
                    v.trim().parse::<f64>().unwrap_or_else(|_| {
                        tracing::warn!(target: "secret", "{name}={v:?} is not a number; using {default}");
                        default
                    })
                })
                .unwrap_or(default)
        };
        let default_ttl = Duration::from_secs(24 * 3600);
        let secret_ttl = get("SECRET_TTL")
            .map(|v| {
                parse_go_duration(&v).unwrap_or_else(|| {
                    tracing::warn!(target: "secret", "SECRET_TTL={v:?} is not a duration; using 24h");
                    default_ttl
                })
            })
            .unwrap_or(default_ttl);
        let prov_cert = get("PROV_CERT").map(PathBuf::from);
        let mut file_mounted = get("FILE_MOUNTED_CERTS").is_some_and(|v| parse_go_bool(&v));
        if prov_cert.is_some() && file_mounted {
            return Err(ConfigError::ProvCertWithFileMountedCerts);
        }
        let mut files = CertFiles::in_dir(&base.join("etc/certs"));
        // Certificates mounted for the pod (e.g. by a CSI driver) replace the CA entirely.
        let mounted = CertFiles::in_dir(&base.join("var/run/secrets/workload-spiffe-credentials"));
        if [&mounted.cert_chain, &mounted.key, &mounted.root]
            .iter()
            .all(|p| non_empty_file(p))
        {
            files = mounted;
            file_mounted = true;
        }
        let socket_file = get("WORKLOAD_IDENTITY_SOCKET_FILE").unwrap_or_else(|| "socket".into());
        if Path::new(&socket_file).file_name() != Some(std::ffi::OsStr::new(&socket_file)) {
            return Err(ConfigError::SocketFileNotAName(socket_file));
        }
        let ca = if file_mounted {
            None
        } else {
            let explicit = get("CA_ADDR");
            // ISTIOD_SAN only applies when the CA is istiod's discovery address.
            let san = if explicit.is_none() {
                get("ISTIOD_SAN")
            } else {
                None
            };
            let address = explicit.unwrap_or_else(|| discovery_address.to_string());
            let tls = if address.ends_with(":15010") {
                None
            } else {
                let provider = get("PILOT_CERT_PROVIDER").unwrap_or_default();
                let root_cert = match get("CA_ROOT_CA") {
                    Some(v) if v == "SYSTEM" => PathBuf::from(SYSTEM_ROOTS),
                    Some(v) => PathBuf::from(v),
                    None if provider == "custom" => base.join("etc/certs/root-cert.pem"),
                    None => match &prov_cert {
                        Some(dir) => dir.join("root-cert.pem"),
                        None if provider == "none" => {
                            return Err(ConfigError::NoRootForCa(address))
                        }
                        None => base.join("var/run/secrets/istio/root-cert.pem"),
                    },
                };
                Some(CaTls {
                    root_cert,
                    server_name: server_name(&address, san.as_deref()),
                    client_cert: prov_cert.as_deref().map(CertFiles::in_dir),
                })
            };
            Some(CaConfig {
                address,
                tls,
                token_file: Some(base.join("var/run/secrets/tokens/istio-token")),
                cluster_id: get("ISTIO_META_CLUSTER_ID").unwrap_or_default(),
                cert_signer: get("ISTIO_META_CERT_SIGNER"),
                headers: Vec::new(),
                backoff: Backoff::default(),
                request_timeout: Duration::from_secs(30),
            })
        };
        Ok(IdentityConfig {
            trust_domain: get("TRUST_DOMAIN").unwrap_or_else(|| "cluster.local".into()),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
            ca,
            secret_ttl,
            grace_ratio: parsed("SECRET_GRACE_PERIOD_RATIO", 0.5),
            grace_ratio_jitter: parsed("SECRET_GRACE_PERIOD_RATIO_JITTER", 0.01),
            output_dir: get("OUTPUT_CERTS").map(PathBuf::from),
            output_mode: if get("KUBERNETES_SERVICE_HOST").is_some() {
                0o644
            } else {
                0o600
            },
            files,
            file_poll: Duration::from_secs(2),
            sds_socket: base
                .join("var/run/secrets/workload-spiffe-uds")
                .join(socket_file),
        })
    }

    /// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
    pub fn spiffe_id(&self) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

/// pilot-agent's `CA_HEADER_<name>=<value>` variables, as extra CA request metadata
/// (`CaConfig::headers`); `from_env` cannot list variables, so the caller passes them here,
/// e.g. `ca_headers(std::env::vars())`.
pub fn ca_headers(vars: impl IntoIterator<Item = (String, String)>) -> Vec<(String, String)> {
    vars.into_iter()
        .filter_map(|(name, value)| {
            let name = name.strip_prefix("CA_HEADER_")?;
            (!name.is_empty()).then(|| (name.to_string(), value))
        })
        .collect()
}

/// The TLS name for `address`: the host, `istiod.istio-system.svc` for any name containing
/// `localhost` (istiod's certificate has no such name), or the explicit override.
fn server_name(address: &str, san: Option<&str>) -> String {
    if let Some(san) = san {
        return san.to_string();
    }
    let host = match address.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => address,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.contains("localhost") {
        "istiod.istio-system.svc".into()
    } else {
        host.to_string()
    }
}

fn non_empty_file(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() > 0)
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(v: &str) -> bool {
    matches!(v, "1" | "t" | "T" | "true" | "TRUE" | "True")
}

/// Go's `time.ParseDuration` (see [`crate::agent::duration`]); None when it does not parse.
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    crate::agent::duration::parse(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(env: &[(&str, &str)], base: &Path) -> Result<IdentityConfig, ConfigError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        IdentityConfig::from_env(
            |k| env.get(k).cloned(),
            base,
            "ns1",
            "sa1",
            "istiod.istio-system.svc:15012",
        )
    }

    #[test]
    fn defaults_follow_pilot_agent() {
        let base = Path::new("/base");
        let c = config(&[("ISTIOD_SAN", "istiod.example")], base).expect("config");
        assert_eq!(c.spiffe_id(), "spiffe://cluster.local/ns/ns1/sa/sa1");
        assert_eq!(c.secret_ttl, Duration::from_secs(86_400));
        assert_eq!((c.grace_ratio, c.grace_ratio_jitter), (0.5, 0.01));
        assert_eq!(c.output_mode, 0o600);
        assert_eq!(c.files, CertFiles::in_dir(Path::new("/base/etc/certs")));
        assert_eq!(
            c.sds_socket,
            Path::new("/base/var/run/secrets/workload-spiffe-uds/socket")
        );
        let ca = c.ca.expect("a CA");
        assert_eq!(ca.address, "istiod.istio-system.svc:15012");
        let tls = ca.tls.expect("TLS");
        assert_eq!(
            tls.root_cert,
            Path::new("/base/var/run/secrets/istio/root-cert.pem")
        );
        assert_eq!(tls.server_name, "istiod.example");
        assert_eq!(tls.client_cert, None);
        assert_eq!(
            ca.token_file.as_deref(),
            Some(Path::new("/base/var/run/secrets/tokens/istio-token"))
        );
    }

    #[test]
    fn explicit_ca_settings() {
        let base = Path::new("/b");
        let c = config(
            &[
                ("CA_ADDR", "ca.example:443"),
                ("ISTIOD_SAN", "ignored.example"),
                ("PROV_CERT", "/prov"),
                ("SECRET_TTL", "1h30m"),
                ("SECRET_GRACE_PERIOD_RATIO", "0.25"),
                ("TRUST_DOMAIN", "td.example"),
                ("ISTIO_META_CERT_SIGNER", "signer"),
                ("ISTIO_META_CLUSTER_ID", "c1"),
                ("OUTPUT_CERTS", "/out"),
                ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
            ],
            base,
        )
        .expect("config");
        assert_eq!(c.spiffe_id(), "spiffe://td.example/ns/ns1/sa/sa1");
        assert_eq!(c.secret_ttl, Duration::from_secs(5_400));
        assert_eq!(c.grace_ratio, 0.25);
        assert_eq!(c.output_dir.as_deref(), Some(Path::new("/out")));
        assert_eq!(c.output_mode, 0o644);
        let ca = c.ca.expect("a CA");
        assert_eq!(ca.cert_signer.as_deref(), Some("signer"));
        assert_eq!(ca.cluster_id, "c1");
        let tls = ca.tls.expect("TLS");
        assert_eq!(tls.server_name, "ca.example");
        assert_eq!(tls.root_cert, Path::new("/prov/root-cert.pem"));
        assert_eq!(tls.client_cert, Some(CertFiles::in_dir(Path::new("/prov"))));
        // CA_ROOT_CA wins over everything; 15010 is plaintext.
        let c = config(&[("CA_ROOT_CA", "/r.pem"), ("PROV_CERT", "/p")], base).expect("config");
        assert_eq!(
            c.ca.and_then(|ca| ca.tls).map(|t| t.root_cert),
            Some(PathBuf::from("/r.pem"))
        );
        let c = config(&[("CA_ADDR", "localhost:15010")], base).expect("config");
        assert!(c.ca.expect("a CA").tls.is_none());
        let c = config(&[("CA_ADDR", "localhost:15012")], base).expect("config");
        assert_eq!(
            c.ca.and_then(|ca| ca.tls).map(|t| t.server_name),
            Some("istiod.istio-system.svc".into())
        );
    }

    #[test]
    fn file_mounted_certificates_turn_the_ca_off() {
        let c = config(&[("FILE_MOUNTED_CERTS", "true")], Path::new("/b")).expect("config");
        assert!(c.ca.is_none());
        assert_eq!(
            config(
                &[("FILE_MOUNTED_CERTS", "true"), ("PROV_CERT", "/p")],
                Path::new("/b")
            )
            .err(),
            Some(ConfigError::ProvCertWithFileMountedCerts)
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let creds = dir
            .path()
            .join("var/run/secrets/workload-spiffe-credentials");
        std::fs::create_dir_all(&creds).expect("mkdir");
        for f in ["cert-chain.pem", "key.pem", "root-cert.pem"] {
            std::fs::write(creds.join(f), "x").expect("write");
        }
        let c = config(&[], dir.path()).expect("config");
        assert!(c.ca.is_none());
        assert_eq!(c.files, CertFiles::in_dir(&creds));
    }

    #[test]
    fn ca_headers_come_from_prefixed_variables() {
        let vars = [
            ("CA_HEADER_X-Tenant", "t1"),
            ("CA_HEADER_", "x"),
            ("PATH", "/bin"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        assert_eq!(
            ca_headers(vars),
            [("X-Tenant".to_string(), "t1".to_string())]
        );
    }

    #[test]
    fn bad_numbers_fall_back_to_defaults() {
        let c = config(
            &[
                ("SECRET_TTL", "a day"),
                ("SECRET_GRACE_PERIOD_RATIO", "half"),
            ],
            Path::new("/b"),
        )
        .expect("config");
        assert_eq!(c.secret_ttl, Duration::from_secs(86_400));
        assert_eq!(c.grace_ratio, 0.5);
        assert!(config(
            &[("WORKLOAD_IDENTITY_SOCKET_FILE", "../x")],
            Path::new("/b")
        )
        .is_err());
    }
}
