//! Where a gRPC config source's stream goes: through a static cluster (`envoy_grpc`), or on a
//! channel of its own to a gRPC target URI (`google_grpc`), in plaintext or TLS.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/grpc_service.proto
//! Target URIs: https://github.com/grpc/grpc/blob/master/doc/naming.md

use super::error::{FieldPath, Result};
use super::values::data_source;
use xds_proto::pb::envoy::config::core::v3::grpc_service::google_grpc::channel_credentials::CredentialSpecifier;
use xds_proto::pb::envoy::config::core::v3::grpc_service::{
    GoogleGrpc as ProtoGoogleGrpc, TargetSpecifier,
};
use xds_proto::pb::envoy::config::core::v3::GrpcService;

/// The port a target without one is dialled on (gRPC's default).
const DEFAULT_PORT: u16 = 443;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GrpcTarget {
    /// `envoy_grpc.cluster_name`: a static cluster of the bootstrap, through its connector.
    Cluster(String),
    /// `google_grpc`: a channel of its own (boxed: config sources are kept by value).
    Google(Box<GoogleGrpc>),
}

impl std::fmt::Display for GrpcTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GrpcTarget::Cluster(name) => write!(f, "cluster '{name}'"),
            GrpcTarget::Google(g) => write!(f, "target '{}'", g.target_uri),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoogleGrpc {
    /// As configured, for logs.
    pub target_uri: String,
    pub address: TargetAddress,
    /// `channel_credentials.ssl_credentials`; None is a plaintext channel (no credentials, or
    /// `local_credentials`).
    pub tls: Option<SslCredentials>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TargetAddress {
    /// A host name or IP address, resolved when the channel connects.
    Tcp {
        host: String,
        port: u16,
    },
    Unix(std::path::PathBuf),
}

/// TLS for a `google_grpc` channel: the server is verified against `root_certs`, and
/// `cert_chain` with `private_key` is the client's certificate when both are set (PEM).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SslCredentials {
    pub root_certs: Vec<u8>,
    pub cert_chain: Vec<u8>,
    pub private_key: Vec<u8>,
}

impl std::fmt::Debug for SslCredentials {
    // The key never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SslCredentials")
            .field(
                "root_certs",
                &format_args!("{} bytes", self.root_certs.len()),
            )
            .field(
                "cert_chain",
                &format_args!("{} bytes", self.cert_chain.len()),
            )
            .field("private_key", &"[redacted]")
            .finish()
    }
}

/// The target of `service` (a config source's one gRPC service, at `path`).
pub fn grpc_target(service: &GrpcService, path: &FieldPath) -> Result<GrpcTarget> {
    match &service.target_specifier {
        Some(TargetSpecifier::EnvoyGrpc(e)) => Ok(GrpcTarget::Cluster(e.cluster_name.clone())),
        Some(TargetSpecifier::GoogleGrpc(g)) => {
            google_grpc(g, &path.field("google_grpc")).map(|g| GrpcTarget::Google(Box::new(g)))
        }
        None => Err(path.error("a gRPC target is required")),
    }
}

fn google_grpc(g: &ProtoGoogleGrpc, path: &FieldPath) -> Result<GoogleGrpc> {
    // Envoy's validation requires both.
    if g.stat_prefix.is_empty() {
        return Err(path
            .field("stat_prefix")
            .error("value length must be at least 1"));
    }
    let address =
        target_address(&g.target_uri).map_err(|why| path.field("target_uri").error(why))?;
    let credentials = path.field("channel_credentials");
    let tls = match g
        .channel_credentials
        .as_ref()
        .and_then(|c| c.credential_specifier.as_ref())
    {
        None => None,
        Some(CredentialSpecifier::LocalCredentials(_)) => {
            // gRPC's local credentials refuse a connection that is not local.
            if !is_local(&address) {
                return Err(credentials
                    .field("local_credentials")
                    .error("local credentials need a Unix socket or loopback target"));
            }
            None
        }
        Some(CredentialSpecifier::SslCredentials(ssl)) => {
            let ssl_path = credentials.field("ssl_credentials");
            let read = |source, field: &str| data_source(source, &ssl_path.field(field));
            let tls = SslCredentials {
                root_certs: read(ssl.root_certs.as_ref(), "root_certs")?,
                cert_chain: read(ssl.cert_chain.as_ref(), "cert_chain")?,
                private_key: read(ssl.private_key.as_ref(), "private_key")?,
            };
            if tls.root_certs.is_empty() {
                // gRPC would fall back to the system's roots, which Outrigger does not load.
                return Err(ssl_path
                    .field("root_certs")
                    .error("root certificates are required (system roots are not loaded)"));
            }
            if tls.cert_chain.is_empty() != tls.private_key.is_empty() {
                return Err(ssl_path.error("cert_chain and private_key go together"));
            }
            crate::xds::google_grpc::client_config(&tls).map_err(|e| ssl_path.error(e))?;
            Some(tls)
        }
        Some(CredentialSpecifier::GoogleDefault(_)) => {
            return Err(credentials
                .field("google_default")
                .error("Google default credentials are not supported"))
        }
    };
    Ok(GoogleGrpc {
        target_uri: g.target_uri.clone(),
        address,
        tls,
    })
}

/// The address a gRPC target URI names: `host[:port]`, `dns:[//authority/]host[:port]`,
/// `ipv4:address[:port]`, `ipv6:[address][:port]`, `unix:path` or `unix:///absolute/path`.
fn target_address(uri: &str) -> std::result::Result<TargetAddress, String> {
    if let Some(path) = uri.strip_prefix("unix:") {
        let path = path.strip_prefix("//").unwrap_or(path);
        if path.is_empty() {
            return Err("a unix: target needs a path".into());
        }
        return Ok(TargetAddress::Unix(path.into()));
    }
    let host_port = if let Some(rest) = uri.strip_prefix("dns:") {
        // An authority names the DNS server to ask; the system resolver is used instead.
        match rest.strip_prefix("//") {
            Some(with_authority) => match with_authority.split_once('/') {
                Some((_, name)) => name,
                None => return Err(format!("'{uri}' names no host")),
            },
            None => rest,
        }
    } else if let Some(rest) = uri
        .strip_prefix("ipv4:")
        .or_else(|| uri.strip_prefix("ipv6:"))
    {
        if rest.contains(',') {
            return Err("a list of addresses is not supported; name one".into());
        }
        rest
    } else if uri.contains("://") {
        return Err(format!("'{uri}': unsupported target scheme"));
    } else {
        uri
    };
    host_and_port(host_port).ok_or_else(|| format!("'{uri}' is not host:port"))
}

fn host_and_port(s: &str) -> Option<TargetAddress> {
    let (host, port) = if let Some(bracketed) = s.strip_prefix('[') {
        let (host, rest) = bracketed.split_once(']')?;
        let port = match rest.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if rest.is_empty() => DEFAULT_PORT,
            None => return None,
        };
        (host, port)
    } else {
        match s.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().ok()?),
            None => (s, DEFAULT_PORT),
        }
    };
    if host.is_empty() {
        return None;
    }
    Some(TargetAddress::Tcp {
        host: host.to_string(),
        port,
    })
}

fn is_local(address: &TargetAddress) -> bool {
    match address {
        TargetAddress::Unix(_) => true,
        TargetAddress::Tcp { host, .. } => {
            host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16) -> TargetAddress {
        TargetAddress::Tcp {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn target_uris_name_an_address_as_grpc_reads_them() {
        let ok = |uri: &str| target_address(uri).unwrap_or_else(|e| panic!("{uri}: {e}"));
        assert_eq!(ok("127.0.0.1:15010"), tcp("127.0.0.1", 15010));
        assert_eq!(
            ok("istiod.istio-system.svc:15012"),
            tcp("istiod.istio-system.svc", 15012)
        );
        assert_eq!(ok("dns:///istiod:15012"), tcp("istiod", 15012));
        assert_eq!(ok("dns://8.8.8.8/istiod:15012"), tcp("istiod", 15012));
        assert_eq!(ok("dns:istiod"), tcp("istiod", 443));
        assert_eq!(ok("ipv4:10.0.0.1:99"), tcp("10.0.0.1", 99));
        assert_eq!(ok("ipv6:[::1]:99"), tcp("::1", 99));
        assert_eq!(ok("[::1]:7"), tcp("::1", 7));
        assert_eq!(
            ok("unix:./etc/istio/proxy/XDS"),
            TargetAddress::Unix("./etc/istio/proxy/XDS".into())
        );
        assert_eq!(
            ok("unix:///var/run/xds.sock"),
            TargetAddress::Unix("/var/run/xds.sock".into())
        );
        for bad in [
            "",
            ":80",
            "host:notaport",
            "xds:///listener",
            "unix:",
            "ipv4:1.1.1.1:1,2.2.2.2:2",
        ] {
            assert!(target_address(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn only_local_targets_take_local_credentials() {
        assert!(is_local(&tcp("127.0.0.1", 1)));
        assert!(is_local(&tcp("::1", 1)));
        assert!(is_local(&tcp("localhost", 1)));
        assert!(is_local(&TargetAddress::Unix("x".into())));
        assert!(!is_local(&tcp("10.0.0.1", 1)));
    }

    #[test]
    fn the_private_key_is_not_printed() {
        let ssl = SslCredentials {
            root_certs: b"roots".to_vec(),
            cert_chain: Vec::new(),
            private_key: b"SECRET".to_vec(),
        };
        assert!(!format!("{ssl:?}").contains("SECRET"));
    }
}
