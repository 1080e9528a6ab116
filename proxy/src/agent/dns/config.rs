//! What the DNS proxy is told: pilot-agent's environment (`DNS_PROXY_ADDR`,
//! `DNS_FORWARD_PARALLEL`, `DNS_FORWARD_TIMEOUT`, the capture switches), the pod's namespace and
//! domain, and the nameservers and search list of resolv.conf.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `DNS_PROXY_ADDR`'s default.
pub const DEFAULT_ADDR: &str = "localhost:15053";
/// `DNS_FORWARD_TIMEOUT`'s default (Istio's `DefaultUpstreamTimeout`).
pub const DEFAULT_FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
const RESOLV_CONF: &str = "/etc/resolv.conf";
/// Used instead of /etc/resolv.conf when the proxy answers on :53 itself (VMs, Docker).
const AGENT_RESOLV_CONF: &str = "/var/lib/istio/resolv.conf";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// `host:port` to serve on, UDP and TCP. `localhost` means 127.0.0.1 and/or ::1 after the
    /// families of the upstream nameservers, as pilot-agent binds.
    pub addr: String,
    /// Where the upstream nameservers and the search list come from.
    pub resolv_conf: PathBuf,
    /// The port of the upstream nameservers. resolv.conf cannot say one: 53 outside tests.
    pub upstream_port: u16,
    /// Ask every upstream at once and take the first answer (`DNS_FORWARD_PARALLEL`).
    pub forward_parallel: bool,
    /// Per upstream exchange (`DNS_FORWARD_TIMEOUT`).
    pub forward_timeout: Duration,
    /// The pod's namespace (`POD_NAMESPACE`).
    pub namespace: String,
    /// pilot-agent's `--domain`, by default `<namespace>.svc.cluster.local`.
    pub domain: String,
}

impl DnsConfig {
    /// Istio's defaults for a pod in `namespace`; an empty `domain` means
    /// `<namespace>.svc.cluster.local`, as pilot-agent fills it in.
    pub fn new(namespace: &str, domain: &str) -> Self {
        Self {
            addr: DEFAULT_ADDR.to_string(),
            resolv_conf: PathBuf::from(RESOLV_CONF),
            upstream_port: 53,
            forward_parallel: false,
            forward_timeout: DEFAULT_FORWARD_TIMEOUT,
            namespace: namespace.to_string(),
            domain: if domain.is_empty() {
                format!("{namespace}.svc.cluster.local")
            } else {
                domain.to_string()
            },
        }
    }

    /// [`DnsConfig::new`] with pilot-agent's environment variables applied. A value that does
    /// not parse keeps the default (with a warning), as Istio's env package does.
    pub fn from_env(namespace: &str, domain: &str) -> Self {
        let mut config = Self::new(namespace, domain);
        if let Ok(addr) = std::env::var("DNS_PROXY_ADDR") {
            if !addr.is_empty() {
                config.addr = addr;
            }
        }
        config.forward_parallel = env_bool("DNS_FORWARD_PARALLEL", false);
        if let Ok(v) = std::env::var("DNS_FORWARD_TIMEOUT") {
            match parse_go_duration(&v) {
                Some(d) => config.forward_timeout = d,
                None => {
                    tracing::warn!(target: "dns", "invalid DNS_FORWARD_TIMEOUT {v:?}, using 5s")
                }
            }
        }
        config
    }
}

/// Whether pilot-agent would run the DNS proxy: DNS capture on a sidecar
/// (`ISTIO_META_DNS_CAPTURE`), or explicitly (`ISTIO_META_ENABLE_DNS_SERVER`, gateways).
pub fn enabled_from_env(sidecar: bool) -> bool {
    (sidecar && env_bool("ISTIO_META_DNS_CAPTURE", false))
        || env_bool("ISTIO_META_ENABLE_DNS_SERVER", false)
}

/// Go's `strconv.ParseBool`; anything else is the default.
fn env_bool(name: &str, default: bool) -> bool {
    match std::env::var(name).as_deref() {
        Ok("1" | "t" | "T" | "TRUE" | "true" | "True") => true,
        Ok("0" | "f" | "F" | "FALSE" | "false" | "False") => false,
        Ok(other) if !other.is_empty() => {
            tracing::warn!(target: "dns", "invalid boolean {name}={other:?}, using {default}");
            default
        }
        _ => default,
    }
}

/// Go's `time.ParseDuration` (see [`crate::agent::duration`]); None when it does not parse.
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    crate::agent::duration::parse(text).ok()
}

/// What resolv.conf says, as Go's miekg/dns reads it: `nameserver` lines in order, and the
/// search list from the last `search` or `domain` line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<IpAddr>,
    pub search: Vec<String>,
}

impl ResolvConf {
    pub fn parse(text: &str) -> Self {
        let mut out = ResolvConf::default();
        for line in text.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                ["nameserver", server, ..] => match server.parse::<IpAddr>() {
                    Ok(ip) => out.nameservers.push(ip),
                    // Istio keeps it and fails to dial it on every query; skipping is the same.
                    Err(_) => {
                        tracing::warn!(target: "dns", "resolv.conf: nameserver {server:?} is not an IP address; ignored")
                    }
                },
                ["domain", domain, ..] => out.search = vec![domain.to_string()],
                ["domain"] => out.search.clear(),
                ["search", domains @ ..] => {
                    out.search = domains.iter().map(|d| d.to_string()).collect();
                }
                _ => {}
            }
        }
        out
    }

    pub fn read(path: &Path) -> std::io::Result<Self> {
        Ok(Self::parse(&std::fs::read_to_string(path)?))
    }
}

/// The listening address and the resolv.conf path actually used, after pilot-agent's rules for
/// `:53`: only root may serve there (it then answers before the table arrives, and prefers
/// the agent's own resolv.conf copy); anyone else falls back to the default address.
pub fn effective_addr(config: &DnsConfig, is_root: bool) -> (String, PathBuf, bool) {
    let mut resolv = config.resolv_conf.clone();
    if !config.addr.ends_with(":53") {
        return (config.addr.clone(), resolv, false);
    }
    if !is_root {
        tracing::error!(target: "dns", "DNS address :53 and not running as root, use default");
        return (DEFAULT_ADDR.to_string(), resolv, false);
    }
    if resolv == Path::new(RESOLV_CONF) && Path::new(AGENT_RESOLV_CONF).exists() {
        resolv = PathBuf::from(AGENT_RESOLV_CONF);
    }
    (config.addr.clone(), resolv, true)
}

/// The addresses to bind for `addr`. For `localhost`, loopback of each family some upstream
/// nameserver has (both on dual stack); 127.0.0.1 when there is none to go by.
pub async fn listen_addrs(addr: &str, upstreams: &[IpAddr]) -> std::io::Result<Vec<SocketAddr>> {
    let invalid = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("dns address must be a valid host:port: {addr:?}"),
        )
    };
    let (host, port) = addr.rsplit_once(':').ok_or_else(invalid)?;
    let port: u16 = port.parse().map_err(|_| invalid())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host == "localhost" {
        let mut out = Vec::new();
        if upstreams.iter().any(IpAddr::is_ipv4) || upstreams.is_empty() {
            out.push(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port));
        }
        if upstreams.iter().any(IpAddr::is_ipv6) {
            out.push(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port));
        }
        return Ok(out);
    }
    if host.is_empty() {
        return Ok(vec![SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port)]);
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let first = tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(invalid)?;
    Ok(vec![first])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_as_miekg_reads_it() {
        let conf = ResolvConf::parse(
            "# comment\nsearch ns1.svc.cluster.local svc.cluster.local cluster.local\n\
             nameserver 10.96.0.10\nnameserver fd00::10\nnameserver bogus\noptions ndots:5\n",
        );
        assert_eq!(
            conf.nameservers,
            [
                "10.96.0.10".parse::<IpAddr>().expect("test value"),
                "fd00::10".parse().expect("test value")
            ]
        );
        assert_eq!(
            conf.search,
            [
                "ns1.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local"
            ]
        );
        assert_eq!(
            ResolvConf::parse("domain example.org\n").search,
            ["example.org"]
        );
    }

    #[tokio::test]
    async fn localhost_follows_the_upstream_families() {
        let v4: IpAddr = "10.0.0.1".parse().expect("test value");
        let v6: IpAddr = "fd00::1".parse().expect("test value");
        let bind = |ups: Vec<IpAddr>| async move {
            listen_addrs("localhost:15053", &ups)
                .await
                .expect("test value")
                .into_iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(bind(vec![v4]).await, ["127.0.0.1:15053"]);
        assert_eq!(bind(vec![v6]).await, ["[::1]:15053"]);
        assert_eq!(bind(vec![v4, v6]).await, ["127.0.0.1:15053", "[::1]:15053"]);
        assert_eq!(bind(vec![]).await, ["127.0.0.1:15053"]);
        assert_eq!(
            listen_addrs("[::1]:53", &[]).await.expect("test value")[0].to_string(),
            "[::1]:53"
        );
        assert!(listen_addrs("nonsense", &[]).await.is_err());
    }

    #[test]
    fn port_53_needs_root() {
        let mut c = DnsConfig::new("ns1", "");
        assert_eq!(c.domain, "ns1.svc.cluster.local");
        c.addr = "0.0.0.0:53".into();
        assert_eq!(effective_addr(&c, false).0, DEFAULT_ADDR);
        let (addr, _, early) = effective_addr(&c, true);
        assert_eq!((addr.as_str(), early), ("0.0.0.0:53", true));
    }
}
