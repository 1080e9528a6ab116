//! Rule planning: a pure function from [`Config`] to the ordered [`RuleSet`], and the
//! dry-run command stream built from it. The order of every append and insert follows
//! istio-iptables exactly, because that order is the order of the rules in the kernel
//! and is what the upstream golden files pin down.

use crate::config::{Config, OwnerGroups, PortSelection};
use crate::rules::{Family, RuleSet, Table, IP_PLACEHOLDER as IP};

mod dns;
mod inbound;

const ISTIO_OUTPUT: &str = "ISTIO_OUTPUT";
const ISTIO_OUTPUT_DNS: &str = "ISTIO_OUTPUT_DNS";
const ISTIO_INBOUND: &str = "ISTIO_INBOUND";
const ISTIO_DIVERT: &str = "ISTIO_DIVERT";
const ISTIO_TPROXY: &str = "ISTIO_TPROXY";
const ISTIO_REDIRECT: &str = "ISTIO_REDIRECT";
const ISTIO_IN_REDIRECT: &str = "ISTIO_IN_REDIRECT";
const ISTIO_DROP: &str = "ISTIO_DROP";

/// The agent's DNS listener.
const DNS_PROXY_PORT: &str = "15053";
/// Mark put on proxy→app loopback traffic in TPROXY mode so inbound capture skips it.
const OUTBOUND_MARK: &str = "1338";
const V4_PASSTHROUGH_SRC: &str = "127.0.0.6/32";
const V6_PASSTHROUGH_SRC: &str = "::6/128";
const V6_LOOPBACK: &str = "::1/128";

use Table::{Mangle, Nat, Raw};

/// Plan every rule for `cfg`. Pure: reads nothing but `cfg`.
pub fn plan(cfg: &Config) -> RuleSet {
    let mut rs = RuleSet::new(cfg.enable_ipv6);
    let lo4 = cfg.ipv4_loopback_cidr.as_str();
    let (v4_exclude, v6_exclude) = cfg.outbound_ip_ranges_exclude.split();
    let (v4_include, v6_include) = cfg.outbound_ip_ranges_include.split();
    let redirect_dns = cfg.dns_capture_effective();
    let tunnel = cfg.inbound_tunnel_port.as_str();
    let uids = cfg.uids();
    let gids = cfg.gids();

    // Excluded interfaces bypass everything, so their RETURNs come first.
    for nic in &cfg.exclude_interfaces {
        rs.append(Nat, "PREROUTING", &["-i", nic, "-j", "RETURN"]);
        rs.append(Nat, "OUTPUT", &["-o", nic, "-j", "RETURN"]);
    }
    if cfg.is_tproxy() {
        for nic in &cfg.exclude_interfaces {
            rs.append(Mangle, "PREROUTING", &["-i", nic, "-j", "RETURN"]);
            rs.append(Mangle, "OUTPUT", &["-o", nic, "-j", "RETURN"]);
        }
    }
    for nic in &cfg.kube_virt_interfaces {
        rs.insert(Nat, "PREROUTING", 1, &["-i", nic, "-j", "RETURN"]);
    }
    if cfg.drop_invalid {
        rs.append(
            Mangle,
            "PREROUTING",
            &["-m", "conntrack", "--ctstate", "INVALID", "-j", ISTIO_DROP],
        );
        rs.append(Mangle, ISTIO_DROP, &["-j", "DROP"]);
    }

    rs.append(
        Nat,
        ISTIO_INBOUND,
        &["-p", "tcp", "--dport", tunnel, "-j", "RETURN"],
    );
    rs.append(
        Nat,
        ISTIO_REDIRECT,
        &["-p", "tcp", "-j", "REDIRECT", "--to-ports", &cfg.proxy_port],
    );
    rs.append(
        Nat,
        ISTIO_IN_REDIRECT,
        &[
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            &cfg.inbound_capture_port,
        ],
    );

    inbound::plan_inbound(cfg, &mut rs);

    rs.append(Nat, "OUTPUT", &["-j", ISTIO_OUTPUT]);
    for port in &cfg.outbound_ports_exclude {
        rs.append(
            Nat,
            ISTIO_OUTPUT,
            &["-p", "tcp", "--dport", port, "-j", "RETURN"],
        );
        rs.append(
            Nat,
            ISTIO_OUTPUT,
            &["-p", "udp", "--dport", port, "-j", "RETURN"],
        );
    }
    // The proxy's inbound passthrough binds 127.0.0.6 / ::6; never capture it again.
    rs.append_versioned(
        V4_PASSTHROUGH_SRC,
        V6_PASSTHROUGH_SRC,
        Nat,
        ISTIO_OUTPUT,
        &["-o", "lo", "-s", IP, "-j", "RETURN"],
    );

    let keep_lo_return = !v4_include.has_loopback && !v6_include.has_loopback;
    for (owner, ids) in [("--uid-owner", &uids), ("--gid-owner", &gids)] {
        for id in ids.iter() {
            // Proxy → own pod IP via lo (app → VIP → proxy → self) goes back through inbound.
            // With DNS capture the uid rule also spares port 53 (agent → local resolver);
            // upstream applies that to the uid rule only.
            let dports = format!("53,{tunnel}");
            if redirect_dns && owner == "--uid-owner" {
                rs.append_versioned(
                    lo4,
                    V6_LOOPBACK,
                    Nat,
                    ISTIO_OUTPUT,
                    &[
                        "-o",
                        "lo",
                        "!",
                        "-d",
                        IP,
                        "-p",
                        "tcp",
                        "-m",
                        "multiport",
                        "!",
                        "--dports",
                        &dports,
                        "-m",
                        "owner",
                        owner,
                        id,
                        "-j",
                        ISTIO_IN_REDIRECT,
                    ],
                );
            } else {
                rs.append_versioned(
                    lo4,
                    V6_LOOPBACK,
                    Nat,
                    ISTIO_OUTPUT,
                    &[
                        "-o",
                        "lo",
                        "!",
                        "-d",
                        IP,
                        "-p",
                        "tcp",
                        "!",
                        "--dport",
                        tunnel,
                        "-m",
                        "owner",
                        owner,
                        id,
                        "-j",
                        ISTIO_IN_REDIRECT,
                    ],
                );
            }
            // App → itself over lo is not captured, unless loopback was asked for with -i.
            if keep_lo_return {
                if redirect_dns {
                    rs.append(
                        Nat,
                        ISTIO_OUTPUT,
                        &[
                            "-o", "lo", "-p", "tcp", "!", "--dport", "53", "-m", "owner", "!",
                            owner, id, "-j", "RETURN",
                        ],
                    );
                } else {
                    rs.append(
                        Nat,
                        ISTIO_OUTPUT,
                        &["-o", "lo", "-m", "owner", "!", owner, id, "-j", "RETURN"],
                    );
                }
            }
            // The proxy's own egress must never loop back into it.
            rs.append(
                Nat,
                ISTIO_OUTPUT,
                &["-m", "owner", owner, id, "-j", "RETURN"],
            );
        }
    }

    match cfg.owner_groups() {
        OwnerGroups::AllExcept(groups) => {
            for g in &groups {
                rs.append(
                    Nat,
                    ISTIO_OUTPUT,
                    &["-m", "owner", "--gid-owner", g, "-j", "RETURN"],
                );
            }
        }
        OwnerGroups::Only(groups) => {
            let mut args: Vec<&str> = Vec::new();
            for g in &groups {
                args.extend(["-m", "owner", "!", "--gid-owner", g.as_str()]);
            }
            args.extend(["-j", "RETURN"]);
            rs.append(Nat, ISTIO_OUTPUT, &args);
        }
    }

    if redirect_dns {
        dns::plan_dns(cfg, &uids, &gids, &mut rs);
    }

    rs.append_versioned(
        lo4,
        V6_LOOPBACK,
        Nat,
        ISTIO_OUTPUT,
        &["-d", IP, "-j", "RETURN"],
    );
    for (family, range) in [(Family::V4, &v4_exclude), (Family::V6, &v6_exclude)] {
        for cidr in &range.cidrs {
            rs.append_in(family, Nat, ISTIO_OUTPUT, &["-d", cidr, "-j", "RETURN"]);
        }
    }
    for port in &cfg.outbound_ports_include {
        rs.append(
            Nat,
            ISTIO_OUTPUT,
            &["-p", "tcp", "--dport", port, "-j", ISTIO_REDIRECT],
        );
    }
    for (family, range) in [(Family::V4, &v4_include), (Family::V6, &v6_include)] {
        if range.wildcard {
            rs.append_in(family, Nat, ISTIO_OUTPUT, &["-j", ISTIO_REDIRECT]);
            for nic in &cfg.kube_virt_interfaces {
                rs.insert_in(
                    family,
                    Nat,
                    "PREROUTING",
                    1,
                    &["-i", nic, "-j", ISTIO_REDIRECT],
                );
            }
        } else {
            for cidr in &range.cidrs {
                for nic in &cfg.kube_virt_interfaces {
                    rs.insert_in(
                        family,
                        Nat,
                        "PREROUTING",
                        1,
                        &["-i", nic, "-d", cidr, "-j", ISTIO_REDIRECT],
                    );
                }
                rs.append_in(
                    family,
                    Nat,
                    ISTIO_OUTPUT,
                    &["-d", cidr, "-j", ISTIO_REDIRECT],
                );
            }
        }
    }

    if cfg.is_tproxy() {
        inbound::plan_tproxy_marks(cfg, &uids, &gids, &mut rs);
    }
    rs
}

/// The lines istio-iptables' dry-run stub records, assuming no Istio rules exist yet:
/// both state probes, then either the restore payloads or (with `--cleanup-only`) the
/// undo commands, then the final dumps. Empty with `--skip-rule-apply`.
pub fn dry_run_stream(cfg: &Config) -> Vec<String> {
    if cfg.skip_rule_apply {
        return Vec::new();
    }
    let rs = plan(cfg);
    let mut out = vec!["iptables-save".to_string(), "ip6tables-save".to_string()];
    let families: &[(Family, &str)] = if cfg.enable_ipv6 {
        &[(Family::V4, "iptables"), (Family::V6, "ip6tables")]
    } else {
        &[(Family::V4, "iptables")]
    };
    for (family, binary) in families {
        if cfg.cleanup_only {
            for cmd in rs.cleanup_commands(*family) {
                out.push(format!("{binary} {}", cmd.join(" ")));
            }
        } else {
            out.extend(rs.restore_lines(*family));
        }
    }
    out.push("iptables-save".to_string());
    if cfg.enable_ipv6 {
        out.push("ip6tables-save".to_string());
    }
    out
}
