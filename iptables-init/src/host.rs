//! Facts istio-iptables derives from the host rather than from flags: whether IPv6 is in
//! use, the resolv.conf DNS servers and the proxy uid from `ENVOY_USER`. Two documented
//! overrides (`OUTRIGGER_IPTABLES_IPV6`, `OUTRIGGER_IPTABLES_DNS_SERVERS`) make dry runs
//! hermetic; they are parsed strictly so a typo cannot silently change the rules.

use std::net::IpAddr;

use crate::config::{split_list, Config, DEFAULT_PROXY_UID};
use crate::Error;

/// Override for IPv6 detection: `on` or `off`.
pub const IPV6_OVERRIDE_ENV: &str = "OUTRIGGER_IPTABLES_IPV6";
/// Override for the resolv.conf servers: comma list of IPv4/IPv6 addresses (may be empty).
pub const DNS_OVERRIDE_ENV: &str = "OUTRIGGER_IPTABLES_DNS_SERVERS";

/// The host as seen by the resolver; a trait so tests need no real interfaces.
pub trait HostProbe {
    /// Global (non-loopback, non-link-local) interface addresses, in kernel order.
    fn global_addresses(&self) -> Result<Vec<IpAddr>, String>;
    /// The text of /etc/resolv.conf.
    fn resolv_conf(&self) -> Result<String, String>;
    /// The uid of a user name, if it exists.
    fn user_uid(&self, name: &str) -> Option<u32>;
}

/// The real host: getifaddrs(3), /etc/resolv.conf, getpwnam(3).
pub struct RealHost;

impl HostProbe for RealHost {
    fn global_addresses(&self) -> Result<Vec<IpAddr>, String> {
        let addrs = nix::ifaddrs::getifaddrs().map_err(|e| format!("getifaddrs: {e}"))?;
        let mut out = Vec::new();
        for ifa in addrs {
            let Some(sa) = ifa.address else { continue };
            let ip = if let Some(v4) = sa.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else if let Some(v6) = sa.as_sockaddr_in6() {
                let ip = v6.ip();
                match ip.to_ipv4_mapped() {
                    Some(v4) => IpAddr::V4(v4),
                    None => IpAddr::V6(ip),
                }
            } else {
                continue;
            };
            if is_global(&ip) {
                out.push(ip);
            }
        }
        Ok(out)
    }

    fn resolv_conf(&self) -> Result<String, String> {
        std::fs::read_to_string("/etc/resolv.conf")
            .map_err(|e| format!("failed to load /etc/resolv.conf: {e}"))
    }

    fn user_uid(&self, name: &str) -> Option<u32> {
        nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw())
    }
}

/// Not loopback, not link-local unicast, not link-local multicast (Go's filter).
fn is_global(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !v4.is_loopback() && !v4.is_link_local() && v4.octets()[0..3] != [224, 0, 0]
        }
        IpAddr::V6(v6) => {
            let seg0 = v6.segments()[0];
            !v6.is_loopback()
                && (seg0 & 0xffc0) != 0xfe80
                && !(v6.is_multicast() && (seg0 & 0x000f) == 0x2)
        }
    }
}

/// IPv6 is on when the first global address is IPv6; with `--dual-stack`, when any is.
/// No global address at all is an error, as upstream (there is nothing to capture for).
pub fn ipv6_from_addresses(addrs: &[IpAddr], dual_stack: bool) -> Result<bool, String> {
    let first = addrs
        .first()
        .ok_or_else(|| "no valid local IP address found".to_string())?;
    if dual_stack {
        Ok(addrs.iter().any(IpAddr::is_ipv6))
    } else {
        Ok(first.is_ipv6())
    }
}

/// `nameserver` lines of a resolv.conf, split per family, in canonical text form.
pub fn dns_servers_from_resolv_conf(text: &str) -> (Vec<String>, Vec<String>) {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        if fields.next() != Some("nameserver") {
            continue;
        }
        let Some(addr) = fields.next() else { continue };
        // A zone (fe80::1%eth0) cannot be used as an iptables address; skip it.
        match addr.parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) => v4.push(a.to_string()),
            Ok(IpAddr::V6(a)) => v6.push(a.to_string()),
            Err(_) => eprintln!("warning: ignoring unparsable nameserver {addr:?} in resolv.conf"),
        }
    }
    (v4, v6)
}

/// Split an override list. Addresses are validated but kept as written, so a test can feed
/// exactly the text upstream's test injects.
fn dns_servers_from_override(raw: &str) -> Result<(Vec<String>, Vec<String>), Error> {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for item in split_list(raw) {
        let item = item.trim().to_string();
        match item.parse::<IpAddr>() {
            Ok(IpAddr::V4(_)) => v4.push(item),
            Ok(IpAddr::V6(_)) => v6.push(item),
            Err(_) => {
                return Err(Error::Usage(format!(
                    "invalid address {item:?} in env {DNS_OVERRIDE_ENV}"
                )))
            }
        }
    }
    Ok((v4, v6))
}

/// Fill in the host-derived fields of `cfg`: uid/gid defaults, IPv6, DNS servers.
pub fn resolve(
    cfg: &mut Config,
    env: &dyn Fn(&str) -> Option<String>,
    host: &dyn HostProbe,
) -> Result<(), Error> {
    if cfg.proxy_uid.is_empty() {
        let user = env("ENVOY_USER").unwrap_or_else(|| "istio-proxy".to_string());
        cfg.proxy_uid = host
            .user_uid(&user)
            .map(|u| u.to_string())
            .unwrap_or_else(|| DEFAULT_PROXY_UID.to_string());
    }
    if cfg.proxy_gid.is_empty() {
        cfg.proxy_gid = cfg.proxy_uid.clone();
    }

    cfg.enable_ipv6 = match env(IPV6_OVERRIDE_ENV).as_deref() {
        Some("on") => true,
        Some("off") => false,
        Some(other) => {
            return Err(Error::Usage(format!(
                "invalid value {other:?} for env {IPV6_OVERRIDE_ENV}: expected on or off"
            )))
        }
        None => {
            let addrs = host.global_addresses().map_err(Error::Host)?;
            ipv6_from_addresses(&addrs, cfg.dual_stack).map_err(Error::Host)?
        }
    };

    // Servers are only needed (and resolv.conf only read) when DNS capture is by server.
    if cfg.redirect_dns && !cfg.capture_all_dns {
        let (v4, v6) = match env(DNS_OVERRIDE_ENV) {
            Some(raw) => dns_servers_from_override(&raw)?,
            None => dns_servers_from_resolv_conf(&host.resolv_conf().map_err(Error::Host)?),
        };
        cfg.dns_servers_v4 = v4;
        cfg.dns_servers_v6 = v6;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    struct FakeHost {
        addrs: Vec<IpAddr>,
        resolv: &'static str,
    }

    impl HostProbe for FakeHost {
        fn global_addresses(&self) -> Result<Vec<IpAddr>, String> {
            Ok(self.addrs.clone())
        }
        fn resolv_conf(&self) -> Result<String, String> {
            Ok(self.resolv.to_string())
        }
        fn user_uid(&self, name: &str) -> Option<u32> {
            (name == "istio-proxy").then_some(1234)
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_detection_follows_first_address_unless_dual_stack() {
        let addrs = [ip("10.0.0.2"), ip("2001:db8::2")];
        assert!(!ipv6_from_addresses(&addrs, false).unwrap());
        assert!(ipv6_from_addresses(&addrs, true).unwrap());
        assert!(ipv6_from_addresses(&[ip("2001:db8::2")], false).unwrap());
        assert!(ipv6_from_addresses(&[], false).is_err());
        assert!(!is_global(&ip("fe80::1")) && !is_global(&ip("127.0.0.1")));
    }

    #[test]
    fn resolve_uses_overrides_and_host() {
        let host = FakeHost {
            addrs: vec![ip("2001:db8::2")],
            resolv: "search x\nnameserver 10.96.0.10\nnameserver fd00::a\n",
        };
        let mut cfg = Config {
            redirect_dns: true,
            ..Config::default()
        };
        resolve(&mut cfg, &|_| None, &host).unwrap();
        assert_eq!(
            (cfg.proxy_uid.as_str(), cfg.proxy_gid.as_str()),
            ("1234", "1234")
        );
        assert!(cfg.enable_ipv6);
        assert_eq!(cfg.dns_servers_v4, vec!["10.96.0.10"]);
        assert_eq!(cfg.dns_servers_v6, vec!["fd00::a"]);

        let mut cfg = Config {
            redirect_dns: true,
            ..Config::default()
        };
        let env = |k: &str| match k {
            IPV6_OVERRIDE_ENV => Some("off".to_string()),
            DNS_OVERRIDE_ENV => Some("127.0.0.53,::127.0.0.53".to_string()),
            _ => None,
        };
        resolve(&mut cfg, &env, &host).unwrap();
        assert!(!cfg.enable_ipv6);
        assert_eq!(cfg.dns_servers_v6, vec!["::127.0.0.53"]);

        let bad = |k: &str| (k == IPV6_OVERRIDE_ENV).then(|| "yes".to_string());
        assert!(resolve(&mut Config::default(), &bad, &host).is_err());
    }
}
