//! The validated configuration of one run and the value types it is made of.
//! Everything the rule planner reads is here, already checked, so planning cannot fail
//! and a bad flag is reported once, at parse time, naming its flag or env var.

use std::net::IpAddr;
use std::time::Duration;

/// How inbound traffic is captured (`-m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InterceptionMode {
    /// nat `REDIRECT` to the inbound capture port (also what an empty `-m` means).
    #[default]
    Redirect,
    /// mangle `TPROXY` plus policy routing; the proxy keeps the original source.
    Tproxy,
}

/// Which iptables implementation to drive (`--force-iptables-binary`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Legacy,
    Nft,
}

/// A port list that may be the wildcard `*` (`-b`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PortSelection {
    /// The flag is empty: no capture at all.
    #[default]
    Unset,
    /// `*`: every port.
    All,
    /// Explicit ports (may be empty when the flag held only commas, as upstream allows).
    Ports(Vec<String>),
}

/// One CIDR exactly as it will be written into a rule (`addr/bits`, address not masked,
/// IPv6 in canonical text form, as Go's `netip.Prefix.String` writes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub bits: u8,
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.bits)
    }
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, bits) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not in addr/bits form"))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits: u8 = match bits.parse() {
            Ok(b) if b <= max && !(bits.len() > 1 && bits.starts_with('0')) => b,
            _ => return Err(format!("prefix length {bits:?} is not in 0..={max}")),
        };
        Ok(Cidr { addr, bits })
    }

    pub fn is_loopback(&self) -> bool {
        self.addr.is_loopback()
    }
}

/// A CIDR list that may be the wildcard `*` (`-i`, `-x`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CidrSelection {
    pub wildcard: bool,
    pub cidrs: Vec<Cidr>,
}

/// The IPv4 or IPv6 half of a [`CidrSelection`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FamilyRange {
    pub wildcard: bool,
    pub cidrs: Vec<String>,
    pub has_loopback: bool,
}

impl CidrSelection {
    /// Split per family, as rules for one family can only name that family's addresses.
    pub fn split(&self) -> (FamilyRange, FamilyRange) {
        if self.wildcard {
            let all = FamilyRange {
                wildcard: true,
                ..FamilyRange::default()
            };
            return (all.clone(), all);
        }
        let mut v4 = FamilyRange::default();
        let mut v6 = FamilyRange::default();
        for c in &self.cidrs {
            let half = if c.addr.is_ipv4() { &mut v4 } else { &mut v6 };
            half.cidrs.push(c.to_string());
            half.has_loopback |= c.is_loopback();
        }
        (v4, v6)
    }
}

/// Everything one run of `outrigger-iptables` needs. Strings that end up verbatim in
/// rules (ports, uids, marks) are kept as the user wrote them, like upstream does.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `-p`: outbound redirect target.
    pub proxy_port: String,
    /// `-z`: inbound redirect target.
    pub inbound_capture_port: String,
    /// `-e`: always bypassed (HBONE).
    pub inbound_tunnel_port: String,
    /// `-u`: comma list; empty until host facts resolve it from `ENVOY_USER`.
    pub proxy_uid: String,
    /// `-g`: comma list; empty means "same as the uid".
    pub proxy_gid: String,
    pub interception_mode: InterceptionMode,
    pub tproxy_mark: String,
    pub tproxy_route_table: String,
    pub inbound_ports: PortSelection,
    pub inbound_ports_exclude: Vec<String>,
    pub outbound_ports_include: Vec<String>,
    pub outbound_ports_exclude: Vec<String>,
    pub outbound_ip_ranges_include: CidrSelection,
    pub outbound_ip_ranges_exclude: CidrSelection,
    pub kube_virt_interfaces: Vec<String>,
    pub exclude_interfaces: Vec<String>,
    /// `ISTIO_OUTBOUND_OWNER_GROUPS` (raw; `*` = all groups).
    pub owner_groups_include: String,
    /// `ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE` (raw).
    pub owner_groups_exclude: String,
    /// `ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR`.
    pub ipv4_loopback_cidr: String,
    pub redirect_dns: bool,
    pub capture_all_dns: bool,
    pub drop_invalid: bool,
    pub dual_stack: bool,
    pub dry_run: bool,
    pub skip_rule_apply: bool,
    pub run_validation: bool,
    pub iptables_probe_port: u16,
    pub probe_timeout: Duration,
    pub reconcile: bool,
    pub cleanup_only: bool,
    pub force_apply: bool,
    pub native_nftables: bool,
    pub cni_mode: bool,
    pub network_namespace: String,
    pub force_iptables_binary: Option<Backend>,
    /// Host fact: program ip6tables too.
    pub enable_ipv6: bool,
    /// Host fact: resolv.conf IPv4 servers, as text.
    pub dns_servers_v4: Vec<String>,
    /// Host fact: resolv.conf IPv6 servers, as text.
    pub dns_servers_v6: Vec<String>,
}

/// Default uid when `-u` is empty and `ENVOY_USER` does not resolve.
pub const DEFAULT_PROXY_UID: &str = "1337";

impl Default for Config {
    /// Upstream's `DefaultConfig()`: ports 15001/15006/15008, mark 1337, table 133.
    fn default() -> Self {
        Config {
            proxy_port: "15001".into(),
            inbound_capture_port: "15006".into(),
            inbound_tunnel_port: "15008".into(),
            proxy_uid: String::new(),
            proxy_gid: String::new(),
            interception_mode: InterceptionMode::Redirect,
            tproxy_mark: "1337".into(),
            tproxy_route_table: "133".into(),
            inbound_ports: PortSelection::Unset,
            inbound_ports_exclude: Vec::new(),
            outbound_ports_include: Vec::new(),
            outbound_ports_exclude: Vec::new(),
            outbound_ip_ranges_include: CidrSelection::default(),
            outbound_ip_ranges_exclude: CidrSelection::default(),
            kube_virt_interfaces: Vec::new(),
            exclude_interfaces: Vec::new(),
            owner_groups_include: "*".into(),
            owner_groups_exclude: String::new(),
            ipv4_loopback_cidr: "127.0.0.1/32".into(),
            redirect_dns: false,
            capture_all_dns: false,
            drop_invalid: false,
            dual_stack: false,
            dry_run: false,
            skip_rule_apply: false,
            run_validation: false,
            iptables_probe_port: 15002,
            probe_timeout: Duration::from_secs(5),
            reconcile: false,
            cleanup_only: false,
            force_apply: false,
            native_nftables: false,
            cni_mode: false,
            network_namespace: String::new(),
            force_iptables_binary: None,
            enable_ipv6: false,
            dns_servers_v4: Vec::new(),
            dns_servers_v6: Vec::new(),
        }
    }
}

/// Split a comma list, dropping empty items (so a trailing comma is harmless).
pub fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

/// Owner-group capture filter derived from the two env-only variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerGroups {
    /// Include is `*`: capture every group except these.
    AllExcept(Vec<String>),
    /// Capture only these groups (an empty list captures none).
    Only(Vec<String>),
}

impl Config {
    pub fn owner_groups(&self) -> OwnerGroups {
        if self.owner_groups_include == "*" {
            OwnerGroups::AllExcept(split_list(&self.owner_groups_exclude))
        } else {
            OwnerGroups::Only(split_list(&self.owner_groups_include))
        }
    }

    pub fn uids(&self) -> Vec<String> {
        split_list(&self.proxy_uid)
    }

    pub fn gids(&self) -> Vec<String> {
        split_list(&self.proxy_gid)
    }

    pub fn is_tproxy(&self) -> bool {
        self.interception_mode == InterceptionMode::Tproxy
    }

    /// DNS capture as actually planned: `--redirect-dns` silently turns itself off when
    /// there is no server to capture and `--capture-all-dns` is off (upstream behaviour).
    pub fn dns_capture_effective(&self) -> bool {
        self.redirect_dns
            && (self.capture_all_dns
                || !self.dns_servers_v4.is_empty()
                || !self.dns_servers_v6.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_text_round_trips_like_go() {
        let c = Cidr::parse("2001:DB8:0::/32").expect("valid");
        assert_eq!(c.to_string(), "2001:db8::/32");
        let c = Cidr::parse("10.1.2.3/8").expect("valid");
        assert_eq!(c.to_string(), "10.1.2.3/8");
        assert!(Cidr::parse("10.0.0.0").is_err());
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("10.0.0.0/08").is_err());
        assert!(Cidr::parse("nope/8").is_err());
    }

    #[test]
    fn split_per_family_marks_loopback() {
        let sel = CidrSelection {
            wildcard: false,
            cidrs: vec![
                Cidr::parse("127.1.2.3/32").expect("valid"),
                Cidr::parse("2001:db8::/32").expect("valid"),
            ],
        };
        let (v4, v6) = sel.split();
        assert!(v4.has_loopback && !v6.has_loopback);
        assert_eq!(v4.cidrs, vec!["127.1.2.3/32"]);
        assert_eq!(v6.cidrs, vec!["2001:db8::/32"]);
    }
}
