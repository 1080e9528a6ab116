//! Inbound capture (nat REDIRECT or mangle TPROXY) and the TPROXY mark bookkeeping
//! that keeps the proxy's own loopback traffic out of inbound capture.

use super::*;

/// Inbound capture: nat REDIRECT to the capture port, or mangle TPROXY.
pub(super) fn plan_inbound(cfg: &Config, rs: &mut RuleSet) {
    if cfg.inbound_ports == PortSelection::Unset {
        return;
    }
    let tproxy = cfg.is_tproxy();
    let table = if tproxy {
        let mark = cfg.tproxy_mark.as_str();
        rs.append(Mangle, ISTIO_DIVERT, &["-j", "MARK", "--set-mark", mark]);
        rs.append(Mangle, ISTIO_DIVERT, &["-j", "ACCEPT"]);
        let mark_mask = format!("{mark}/0xffffffff");
        rs.append_versioned(
            &cfg.ipv4_loopback_cidr,
            V6_LOOPBACK,
            Mangle,
            ISTIO_TPROXY,
            &[
                "!",
                "-d",
                IP,
                "-p",
                "tcp",
                "-j",
                "TPROXY",
                "--tproxy-mark",
                &mark_mask,
                "--on-port",
                &cfg.inbound_capture_port,
            ],
        );
        Mangle
    } else {
        Nat
    };
    rs.append(table, "PREROUTING", &["-p", "tcp", "-j", ISTIO_INBOUND]);

    match &cfg.inbound_ports {
        PortSelection::All => {
            for port in &cfg.inbound_ports_exclude {
                rs.append(
                    table,
                    ISTIO_INBOUND,
                    &["-p", "tcp", "--dport", port, "-j", "RETURN"],
                );
            }
            if tproxy {
                // Established flows go straight to the local socket; new ones through TPROXY.
                rs.append(
                    Mangle,
                    ISTIO_INBOUND,
                    &[
                        "-p",
                        "tcp",
                        "-m",
                        "conntrack",
                        "--ctstate",
                        "RELATED,ESTABLISHED",
                        "-j",
                        ISTIO_DIVERT,
                    ],
                );
                rs.append(Mangle, ISTIO_INBOUND, &["-p", "tcp", "-j", ISTIO_TPROXY]);
            } else {
                rs.append(Nat, ISTIO_INBOUND, &["-p", "tcp", "-j", ISTIO_IN_REDIRECT]);
            }
        }
        PortSelection::Ports(ports) => {
            for port in ports {
                if tproxy {
                    rs.append(
                        Mangle,
                        ISTIO_INBOUND,
                        &[
                            "-p",
                            "tcp",
                            "--dport",
                            port,
                            "-m",
                            "conntrack",
                            "--ctstate",
                            "RELATED,ESTABLISHED",
                            "-j",
                            ISTIO_DIVERT,
                        ],
                    );
                    rs.append(
                        Mangle,
                        ISTIO_INBOUND,
                        &["-p", "tcp", "--dport", port, "-j", ISTIO_TPROXY],
                    );
                } else {
                    rs.append(
                        Nat,
                        ISTIO_INBOUND,
                        &["-p", "tcp", "--dport", port, "-j", ISTIO_IN_REDIRECT],
                    );
                }
            }
        }
        PortSelection::Unset => {}
    }
}

/// TPROXY bookkeeping: carry the mark on the connection, mark proxy→app loopback traffic,
/// and guard `ISTIO_INBOUND` against re-capturing it.
pub(super) fn plan_tproxy_marks(cfg: &Config, uids: &[String], gids: &[String], rs: &mut RuleSet) {
    let mark = cfg.tproxy_mark.as_str();
    let lo4 = cfg.ipv4_loopback_cidr.as_str();
    rs.append(
        Mangle,
        "PREROUTING",
        &[
            "-p",
            "tcp",
            "-m",
            "mark",
            "--mark",
            mark,
            "-j",
            "CONNMARK",
            "--save-mark",
        ],
    );
    rs.append(
        Mangle,
        "OUTPUT",
        &[
            "-p", "tcp", "-o", "lo", "-m", "mark", "--mark", mark, "-j", "RETURN",
        ],
    );
    for (owner, ids) in [("--uid-owner", uids), ("--gid-owner", gids)] {
        for id in ids {
            rs.append_versioned(
                lo4,
                V6_LOOPBACK,
                Mangle,
                "OUTPUT",
                &[
                    "!",
                    "-d",
                    IP,
                    "-p",
                    "tcp",
                    "-o",
                    "lo",
                    "-m",
                    "owner",
                    owner,
                    id,
                    "-j",
                    "MARK",
                    "--set-mark",
                    OUTBOUND_MARK,
                ],
            );
        }
    }
    rs.append(
        Mangle,
        "OUTPUT",
        &[
            "-p",
            "tcp",
            "-m",
            "connmark",
            "--mark",
            mark,
            "-j",
            "CONNMARK",
            "--restore-mark",
        ],
    );
    rs.insert(
        Mangle,
        ISTIO_INBOUND,
        1,
        &["-p", "tcp", "-m", "mark", "--mark", mark, "-j", "RETURN"],
    );
    rs.insert_in(
        Family::V4,
        Mangle,
        ISTIO_INBOUND,
        2,
        &[
            "-p",
            "tcp",
            "-s",
            V4_PASSTHROUGH_SRC,
            "-i",
            "lo",
            "-j",
            "RETURN",
        ],
    );
    rs.insert_in(
        Family::V6,
        Mangle,
        ISTIO_INBOUND,
        2,
        &[
            "-p",
            "tcp",
            "-s",
            V6_PASSTHROUGH_SRC,
            "-i",
            "lo",
            "-j",
            "RETURN",
        ],
    );
    rs.insert(
        Mangle,
        ISTIO_INBOUND,
        3,
        &[
            "-p",
            "tcp",
            "-i",
            "lo",
            "-m",
            "mark",
            "!",
            "--mark",
            OUTBOUND_MARK,
            "-j",
            "RETURN",
        ],
    );
}
