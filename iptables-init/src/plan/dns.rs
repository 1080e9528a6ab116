//! DNS capture for the agent's resolver on :15053, by resolv.conf server or for all of
//! port 53, in the families that actually have servers.

use super::*;

/// DNS capture: nat redirect of port 53 to the agent, and raw-table conntrack zones that
/// keep app↔agent and agent↔upstream UDP flows from colliding.
pub(super) fn plan_dns(cfg: &Config, uids: &[String], gids: &[String], rs: &mut RuleSet) {
    let all = cfg.capture_all_dns;
    let v4 = &cfg.dns_servers_v4;
    let v6 = &cfg.dns_servers_v6;
    rs.append(Raw, "OUTPUT", &["-j", ISTIO_OUTPUT_DNS]);
    // Jump only in the families that will have something to jump to.
    if all || !v4.is_empty() {
        rs.append_in(Family::V4, Nat, ISTIO_OUTPUT, &["-j", ISTIO_OUTPUT_DNS]);
    }
    if all || !v6.is_empty() {
        rs.append_in(Family::V6, Nat, ISTIO_OUTPUT, &["-j", ISTIO_OUTPUT_DNS]);
    }
    // Upstream writes --to-ports for TCP and --to-port for UDP; both mean the same.
    for (proto, to) in [("tcp", "--to-ports"), ("udp", "--to-port")] {
        if all {
            rs.append(
                Nat,
                ISTIO_OUTPUT_DNS,
                &[
                    "-p",
                    proto,
                    "--dport",
                    "53",
                    "-j",
                    "REDIRECT",
                    to,
                    DNS_PROXY_PORT,
                ],
            );
        } else {
            for (family, servers, bits) in [(Family::V4, v4, "/32"), (Family::V6, v6, "/128")] {
                for s in servers {
                    let dst = format!("{s}{bits}");
                    rs.append_in(
                        family,
                        Nat,
                        ISTIO_OUTPUT_DNS,
                        &[
                            "-p",
                            proto,
                            "--dport",
                            "53",
                            "-d",
                            &dst,
                            "-j",
                            "REDIRECT",
                            to,
                            DNS_PROXY_PORT,
                        ],
                    );
                }
            }
        }
    }

    for (owner, ids) in [("--uid-owner", uids), ("--gid-owner", gids)] {
        for id in ids {
            rs.append(
                Raw,
                ISTIO_OUTPUT_DNS,
                &[
                    "-p", "udp", "--dport", "53", "-m", "owner", owner, id, "-j", "CT", "--zone",
                    "1",
                ],
            );
            rs.append(
                Raw,
                ISTIO_OUTPUT_DNS,
                &[
                    "-p",
                    "udp",
                    "--sport",
                    DNS_PROXY_PORT,
                    "-m",
                    "owner",
                    owner,
                    id,
                    "-j",
                    "CT",
                    "--zone",
                    "2",
                ],
            );
        }
    }
    if all {
        rs.append(Raw, "PREROUTING", &["-j", ISTIO_INBOUND]);
        rs.append(
            Raw,
            ISTIO_OUTPUT_DNS,
            &["-p", "udp", "--dport", "53", "-j", "CT", "--zone", "2"],
        );
        rs.append(
            Raw,
            ISTIO_INBOUND,
            &["-p", "udp", "--sport", "53", "-j", "CT", "--zone", "1"],
        );
        return;
    }
    for (family, servers, bits) in [(Family::V4, v4, "/32"), (Family::V6, v6, "/128")] {
        if !servers.is_empty() {
            rs.append_in(family, Raw, "PREROUTING", &["-j", ISTIO_INBOUND]);
        }
        for s in servers {
            let addr = format!("{s}{bits}");
            rs.append_in(
                family,
                Raw,
                ISTIO_OUTPUT_DNS,
                &[
                    "-p", "udp", "--dport", "53", "-d", &addr, "-j", "CT", "--zone", "2",
                ],
            );
            rs.append_in(
                family,
                Raw,
                ISTIO_INBOUND,
                &[
                    "-p", "udp", "--sport", "53", "-s", &addr, "-j", "CT", "--zone", "1",
                ],
            );
        }
    }
}
