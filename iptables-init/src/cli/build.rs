//! Collected flag values → a validated [`Config`]: ports, CIDRs, modes and names are
//! checked here so planning cannot fail, with errors that name where a value came from.

use std::collections::HashMap;

use super::flags::{find_long, parse_bool, parse_duration, FlagSpec};
use super::Source;
use crate::config::{
    split_list, Backend, Cidr, CidrSelection, Config, InterceptionMode, PortSelection,
};
use crate::Error;

/// Typed access to the collected values, reporting errors against the right source.
struct Values<'a> {
    map: &'a HashMap<&'static str, (String, Source)>,
}

impl Values<'_> {
    fn get(&self, long: &'static str) -> Option<(&str, &Source, &'static FlagSpec)> {
        let spec = find_long(long)?;
        self.map.get(long).map(|(v, s)| (v.as_str(), s, spec))
    }

    fn string(&self, long: &'static str, default: &str) -> String {
        self.get(long)
            .map(|(v, _, _)| v.to_string())
            .unwrap_or_else(|| default.to_string())
    }

    fn boolean(&self, long: &'static str) -> bool {
        self.get(long)
            .and_then(|(v, _, _)| parse_bool(v))
            .unwrap_or(false)
    }

    fn err(&self, long: &'static str, value: &str, why: &str) -> Error {
        let origin = match self.get(long) {
            Some((_, src, spec)) => src.describe(spec),
            None => format!("--{long}"),
        };
        Error::Usage(format!("invalid value {value:?} for {origin}: {why}"))
    }

    /// A single port 1-65535.
    fn port(&self, long: &'static str, default: &str) -> Result<String, Error> {
        let v = self.string(long, default);
        if is_port(&v) {
            Ok(v)
        } else {
            Err(self.err(long, &v, "expected a port number 1-65535"))
        }
    }

    /// A comma list of ports or port ranges (`N` or `N:M`), empty items dropped.
    fn ports(&self, long: &'static str) -> Result<Vec<String>, Error> {
        let raw = self.string(long, "");
        let items = split_list(&raw);
        for p in &items {
            if !is_port_or_range(p) {
                return Err(self.err(long, &raw, &format!("{p:?} is not a port or port range")));
            }
        }
        Ok(items)
    }

    /// A comma list of names that end up as single iptables arguments.
    fn names(&self, long: &'static str, what: &str) -> Result<Vec<String>, Error> {
        let raw = self.string(long, "");
        let items = split_list(&raw);
        for n in &items {
            if !is_token(n) {
                return Err(self.err(long, &raw, &format!("{n:?} is not a valid {what}")));
            }
        }
        Ok(items)
    }

    fn cidrs(&self, long: &'static str, allow_wildcard: bool) -> Result<CidrSelection, Error> {
        let raw = self.string(long, "");
        if raw == "*" {
            if allow_wildcard {
                return Ok(CidrSelection {
                    wildcard: true,
                    cidrs: Vec::new(),
                });
            }
            return Err(self.err(long, &raw, "the wildcard * cannot be excluded"));
        }
        let mut cidrs = Vec::new();
        for item in split_list(&raw) {
            let c = Cidr::parse(&item)
                .map_err(|why| self.err(long, &raw, &format!("bad CIDR: {why}")))?;
            cidrs.push(c);
        }
        Ok(CidrSelection {
            wildcard: false,
            cidrs,
        })
    }

    fn number_u32(&self, long: &'static str, default: &str) -> Result<String, Error> {
        let v = self.string(long, default);
        if v.parse::<u32>().is_ok() {
            Ok(v)
        } else {
            Err(self.err(long, &v, "expected a number 0-4294967295"))
        }
    }
}

fn is_port(s: &str) -> bool {
    matches!(s.parse::<u16>(), Ok(p) if p > 0) && !s.starts_with('+')
}

fn is_port_or_range(s: &str) -> bool {
    match s.split_once(':') {
        Some((a, b)) => is_port(a) && is_port(b) && a.parse::<u16>().ok() <= b.parse::<u16>().ok(),
        None => is_port(s),
    }
}

/// Something that will be a single argument in a restore line: non-empty, no whitespace,
/// no quoting characters.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && c != '"' && c != '\'')
}

pub(super) fn build(
    map: &HashMap<&'static str, (String, Source)>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Error> {
    let v = Values { map };
    let d = Config::default();

    let interception_mode = match v.string("istio-inbound-interception-mode", "").as_str() {
        "" | "REDIRECT" => InterceptionMode::Redirect,
        "TPROXY" => InterceptionMode::Tproxy,
        other => {
            return Err(v.err(
                "istio-inbound-interception-mode",
                other,
                "expected REDIRECT or TPROXY",
            ))
        }
    };

    let inbound_raw = v.string("istio-inbound-ports", "");
    let inbound_ports = match inbound_raw.as_str() {
        "" => PortSelection::Unset,
        "*" => PortSelection::All,
        _ => PortSelection::Ports(v.ports("istio-inbound-ports")?),
    };

    let force_iptables_binary = match v.string("force-iptables-binary", "").as_str() {
        "" => None,
        "legacy" => Some(Backend::Legacy),
        "nft" => Some(Backend::Nft),
        other => return Err(v.err("force-iptables-binary", other, "expected legacy or nft")),
    };

    let uid = v.names("proxy-uid", "uid")?.join(",");
    let gid = v.names("proxy-gid", "gid")?.join(",");

    let owner_groups_include = env("ISTIO_OUTBOUND_OWNER_GROUPS").unwrap_or(d.owner_groups_include);
    let owner_groups_exclude =
        env("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE").unwrap_or(d.owner_groups_exclude);
    check_owner_groups(&owner_groups_include, "ISTIO_OUTBOUND_OWNER_GROUPS")?;
    check_owner_groups(&owner_groups_exclude, "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE")?;
    let ipv4_loopback_cidr =
        env("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR").unwrap_or(d.ipv4_loopback_cidr);
    check_loopback_cidr(&ipv4_loopback_cidr)?;

    let cfg = Config {
        proxy_port: v.port("envoy-port", &d.proxy_port)?,
        inbound_capture_port: v.port("inbound-capture-port", &d.inbound_capture_port)?,
        inbound_tunnel_port: v.port("inbound-tunnel-port", &d.inbound_tunnel_port)?,
        proxy_uid: uid,
        proxy_gid: gid,
        interception_mode,
        tproxy_mark: v.number_u32("istio-inbound-tproxy-mark", &d.tproxy_mark)?,
        tproxy_route_table: v
            .number_u32("istio-inbound-tproxy-route-table", &d.tproxy_route_table)?,
        inbound_ports,
        inbound_ports_exclude: v.ports("istio-local-exclude-ports")?,
        outbound_ports_include: v.ports("istio-outbound-ports")?,
        outbound_ports_exclude: v.ports("istio-local-outbound-ports-exclude")?,
        outbound_ip_ranges_include: v.cidrs("istio-service-cidr", true)?,
        outbound_ip_ranges_exclude: v.cidrs("istio-service-exclude-cidr", false)?,
        kube_virt_interfaces: v.names("kube-virt-interfaces", "interface name")?,
        exclude_interfaces: v.names("istio-exclude-interfaces", "interface name")?,
        owner_groups_include,
        owner_groups_exclude,
        ipv4_loopback_cidr,
        redirect_dns: v.boolean("redirect-dns"),
        capture_all_dns: v.boolean("capture-all-dns"),
        drop_invalid: v.boolean("drop-invalid"),
        dual_stack: v.boolean("dual-stack"),
        dry_run: v.boolean("dry-run"),
        skip_rule_apply: v.boolean("skip-rule-apply"),
        run_validation: v.boolean("run-validation"),
        iptables_probe_port: v
            .get("iptables-probe-port")
            .and_then(|(s, _, _)| s.parse().ok())
            .unwrap_or(d.iptables_probe_port),
        probe_timeout: v
            .get("probe-timeout")
            .and_then(|(s, _, _)| parse_duration(s))
            .unwrap_or(d.probe_timeout),
        reconcile: v.boolean("reconcile"),
        cleanup_only: v.boolean("cleanup-only"),
        force_apply: v.boolean("force-apply"),
        native_nftables: v.boolean("native-nftables"),
        cni_mode: v.boolean("cni-mode"),
        network_namespace: v.string("network-namespace", ""),
        force_iptables_binary,
        ..d
    };
    Ok(cfg)
}

/// Upstream caps the include list at 64 groups (one rule holds them all).
fn check_owner_groups(raw: &str, var: &str) -> Result<(), Error> {
    if raw == "*" {
        return Ok(());
    }
    let groups = split_list(raw);
    if let Some(bad) = groups.iter().find(|g| !is_token(g)) {
        return Err(Error::Usage(format!("invalid group {bad:?} in env {var}")));
    }
    if var == "ISTIO_OUTBOUND_OWNER_GROUPS" && groups.len() > 64 {
        return Err(Error::Usage(format!(
            "env {var} lists {} groups; at most 64 are supported",
            groups.len()
        )));
    }
    Ok(())
}

/// Must be an IPv4 loopback prefix with a mask of 8 to 32 bits.
fn check_loopback_cidr(raw: &str) -> Result<(), Error> {
    let bad = |why: String| {
        Error::Usage(format!(
            "invalid value {raw:?} for env ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR: {why}"
        ))
    };
    let c = Cidr::parse(raw).map_err(bad)?;
    if !c.addr.is_ipv4() || !c.addr.is_loopback() {
        return Err(bad("expected an IPv4 loopback address".into()));
    }
    if !(8..=32).contains(&c.bits) {
        return Err(bad("expected a mask of 8 to 32 bits".into()));
    }
    Ok(())
}
