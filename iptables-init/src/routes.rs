//! Policy routing and addresses that iptables alone cannot provide: TPROXY needs marked
//! packets routed to `lo` (`ip rule fwmark M lookup T` + `local default dev lo table T`),
//! and IPv6 needs `::6` on `lo` so the proxy can bind the passthrough source address.
//! Every step is written to be idempotent so re-runs do not stack duplicate rules.

use crate::config::{Config, PortSelection};
use crate::exec::{Exec, ExecError};

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn families(cfg: &Config) -> Vec<&'static str> {
    if cfg.enable_ipv6 {
        vec!["-4", "-6"]
    } else {
        vec!["-4"]
    }
}

/// TPROXY routing is only installed when inbound capture is on, as upstream does.
fn wants_tproxy_routes(cfg: &Config) -> bool {
    cfg.is_tproxy() && cfg.inbound_ports != PortSelection::Unset
}

/// Remove every `fwmark M lookup T` rule of one family (there may be duplicates left by
/// other tools); stops at the first failure, which means "no more".
fn delete_mark_rules(exec: &mut dyn Exec, fam: &str, cfg: &Config) {
    for _ in 0..16 {
        let del = args(&[
            fam,
            "rule",
            "del",
            "fwmark",
            &cfg.tproxy_mark,
            "lookup",
            &cfg.tproxy_route_table,
        ]);
        if exec.run("ip", &del, None).is_err() {
            break;
        }
    }
}

/// Install routes/addresses for `cfg`. Returns the first failure.
pub fn configure(cfg: &Config, exec: &mut dyn Exec) -> Result<(), ExecError> {
    if cfg.enable_ipv6 {
        exec.run(
            "ip",
            &args(&["-6", "addr", "replace", "::6/128", "dev", "lo"]),
            None,
        )?;
    }
    if !wants_tproxy_routes(cfg) {
        return Ok(());
    }
    for fam in families(cfg) {
        delete_mark_rules(exec, fam, cfg);
        let add = args(&[
            fam,
            "rule",
            "add",
            "fwmark",
            &cfg.tproxy_mark,
            "lookup",
            &cfg.tproxy_route_table,
        ]);
        exec.run("ip", &add, None)?;
        let route = args(&[
            fam,
            "route",
            "replace",
            "local",
            "default",
            "dev",
            "lo",
            "table",
            &cfg.tproxy_route_table,
        ]);
        exec.run("ip", &route, None)?;
    }
    Ok(())
}

/// Undo [`configure`]'s TPROXY routing (best effort). `::6` stays: other processes in the
/// pod may have bound it, and upstream never removes it either.
pub fn cleanup(cfg: &Config, exec: &mut dyn Exec) {
    if !wants_tproxy_routes(cfg) {
        return;
    }
    for fam in families(cfg) {
        delete_mark_rules(exec, fam, cfg);
        let route = args(&[
            fam,
            "route",
            "del",
            "local",
            "default",
            "dev",
            "lo",
            "table",
            &cfg.tproxy_route_table,
        ]);
        let _ = exec.run("ip", &route, None);
    }
}
