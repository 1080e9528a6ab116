//! Applying a plan to the kernel: compare with what is installed, clean up leftovers,
//! restore the new rules, and roll everything back if any step fails, so a pod never
//! starts with half its capture rules. Cleanup undoes the planned rules and then sweeps
//! any remaining `ISTIO_*` chain or jump, and checks that nothing is left.

use crate::config::Config;
use crate::exec::{detect, Binaries, Exec, ExecError};
use crate::rules::{Family, RuleSet};
use crate::state::{self, IstioState};
use crate::{info, plan, routes, Error};

/// What a run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Fresh rules were installed.
    Applied,
    /// Old Istio rules were removed, then the new ones installed.
    Replaced,
    /// The installed rules already match the plan; nothing changed.
    AlreadyInPlace,
    /// `--cleanup-only` removed the rules.
    CleanedUp,
}

struct Target {
    family: Family,
    bins: Binaries,
}

impl Target {
    fn name(&self) -> &'static str {
        match self.family {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    fn iptables(&self, exec: &mut dyn Exec, mut args: Vec<String>) -> Result<String, ExecError> {
        args.extend(self.bins.write_args());
        exec.run(&self.bins.iptables, &args, None)
    }

    fn save(&self, exec: &mut dyn Exec) -> Result<IstioState, Error> {
        Ok(state::parse(&exec.run(&self.bins.save, &[], None)?))
    }
}

fn targets(cfg: &Config, exec: &mut dyn Exec) -> Result<Vec<Target>, Error> {
    let mut out = Vec::new();
    let families: &[Family] = if cfg.enable_ipv6 {
        &[Family::V4, Family::V6]
    } else {
        &[Family::V4]
    };
    for &family in families {
        let bins = detect(exec, family, cfg.force_iptables_binary)?;
        let t = Target { family, bins };
        info(&format!("using {} for {}", t.bins.iptables, t.name()));
        out.push(t);
    }
    Ok(out)
}

/// Program the rules for `cfg` (or remove them with `--cleanup-only`).
pub fn run(cfg: &Config, exec: &mut dyn Exec) -> Result<Outcome, Error> {
    let rs = plan::plan(cfg);
    let targets = targets(cfg, exec)?;

    if cfg.cleanup_only {
        for t in &targets {
            cleanup_family(exec, &rs, t)?;
        }
        routes::cleanup(cfg, exec);
        info("cleanup complete");
        return Ok(Outcome::CleanedUp);
    }

    let mut residue = false;
    let mut compatible = true;
    for t in &targets {
        let current = t.save(exec)?;
        if state::is_clean(&current) {
            compatible = false;
            continue;
        }
        residue = true;
        let expected = state::parse(&rs.restore_payload(t.family));
        let matches = state::same_shape(&expected, &current)
            && rs
                .check_commands(t.family)
                .into_iter()
                .all(|cmd| t.iptables(exec, cmd).is_ok());
        if !matches {
            info(&format!(
                "{}: existing Istio rules differ from the plan",
                t.name()
            ));
            compatible = false;
        }
    }

    if compatible && !cfg.force_apply {
        info("the planned rules are already in place; nothing to change");
        routes::configure(cfg, exec)?;
        return Ok(Outcome::AlreadyInPlace);
    }

    let guarded = residue && cfg.reconcile;
    if guarded {
        info("installing guardrails (drop all TCP/UDP) while rules are replaced");
        for t in &targets {
            remove_guardrails(exec, t);
            for cmd in guardrail_commands("-I") {
                if let Err(e) = t.iptables(exec, cmd) {
                    for t in &targets {
                        remove_guardrails(exec, t);
                    }
                    return Err(e.into());
                }
            }
        }
    }

    let result = replace(cfg, exec, &rs, &targets, residue);
    if guarded {
        info("removing guardrails");
        for t in &targets {
            remove_guardrails(exec, t);
        }
    }
    result
}

fn replace(
    cfg: &Config,
    exec: &mut dyn Exec,
    rs: &RuleSet,
    targets: &[Target],
    residue: bool,
) -> Result<Outcome, Error> {
    if residue {
        info("removing existing Istio rules before applying");
        for t in targets {
            cleanup_family(exec, rs, t)?;
        }
    }
    for t in targets {
        let payload = rs.restore_payload(t.family);
        info(&format!(
            "{} restore payload:\n{}",
            t.name(),
            payload.trim_end()
        ));
        let mut args = vec!["--noflush".to_string()];
        args.extend(t.bins.write_args());
        if let Err(e) = exec.run(&t.bins.restore, &args, Some(&payload)) {
            let rollback = rollback(cfg, exec, rs, targets);
            return Err(Error::Apply {
                step: format!("applying {} rules", t.name()),
                source: e,
                rollback,
            });
        }
    }
    if let Err(e) = routes::configure(cfg, exec) {
        let rollback = rollback(cfg, exec, rs, targets);
        return Err(Error::Apply {
            step: "routing setup".to_string(),
            source: e,
            rollback,
        });
    }
    info("rules applied");
    Ok(if residue {
        Outcome::Replaced
    } else {
        Outcome::Applied
    })
}

/// Undo everything after a failure; returns a sentence for the error message.
fn rollback(cfg: &Config, exec: &mut dyn Exec, rs: &RuleSet, targets: &[Target]) -> String {
    let mut problems = Vec::new();
    for t in targets {
        if let Err(e) = cleanup_family(exec, rs, t) {
            problems.push(e.to_string());
        }
    }
    routes::cleanup(cfg, exec);
    if problems.is_empty() {
        "rolled back: no Istio rules remain".to_string()
    } else {
        format!("rollback incomplete: {}", problems.join("; "))
    }
}

/// Remove this plan's rules from one family, then anything Istio-shaped still there.
fn cleanup_family(exec: &mut dyn Exec, rs: &RuleSet, t: &Target) -> Result<(), Error> {
    // Deleting something absent fails harmlessly; the sweep and final check decide.
    for cmd in rs.cleanup_commands(t.family) {
        let _ = t.iptables(exec, cmd);
    }
    let left = t.save(exec)?;
    for (table, ts) in &left {
        for jump in &ts.jumps {
            if let Some(cmd) = delete_command(table, jump) {
                let _ = t.iptables(exec, cmd);
            }
        }
        for op in ["-F", "-X"] {
            for chain in ts.chains.keys() {
                let _ = t.iptables(
                    exec,
                    vec!["-t".into(), table.clone(), op.into(), chain.clone()],
                );
            }
        }
    }
    let after = t.save(exec)?;
    if state::is_clean(&after) {
        Ok(())
    } else {
        let what: Vec<String> = after
            .iter()
            .flat_map(|(table, ts)| ts.chains.keys().map(move |c| format!("{table}/{c}")))
            .collect();
        Err(Error::CleanupIncomplete(format!(
            "{} still has {}",
            t.name(),
            if what.is_empty() {
                "jumps into ISTIO_* chains".to_string()
            } else {
                what.join(", ")
            }
        )))
    }
}

/// `-A CHAIN args` from a save line → `-t TABLE -D CHAIN args`.
fn delete_command(table: &str, tokens: &[String]) -> Option<Vec<String>> {
    match tokens {
        [verb, chain, rest @ ..] if verb == "-A" || verb == "--append" => {
            let mut v = vec![
                "-t".to_string(),
                table.to_string(),
                "-D".to_string(),
                chain.clone(),
            ];
            v.extend_from_slice(rest);
            Some(v)
        }
        _ => None,
    }
}

/// Filter-table DROPs that keep traffic from escaping capture while rules are swapped.
fn guardrail_commands(op: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for chain in ["INPUT", "FORWARD", "OUTPUT"] {
        for proto in ["tcp", "udp"] {
            let mut cmd = vec![
                "-t".to_string(),
                "filter".to_string(),
                op.to_string(),
                chain.to_string(),
            ];
            if op == "-I" {
                cmd.push("1".to_string());
            }
            cmd.extend(["-p", proto, "-j", "DROP"].map(String::from));
            out.push(cmd);
        }
    }
    out
}

/// Remove guardrails (idempotent: ignores "no such rule").
fn remove_guardrails(exec: &mut dyn Exec, t: &Target) {
    for cmd in guardrail_commands("-D") {
        let _ = t.iptables(exec, cmd);
    }
}
