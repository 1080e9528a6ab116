//! A small in-memory stand-in for iptables/ip6tables (save, restore, -A/-I/-D/-C/-F/-X/-N)
//! so apply, re-run, rollback and cleanup can be tested without root or a kernel.

use std::collections::BTreeMap;

use crate::exec::{Exec, ExecError};
use crate::rules::is_builtin;

type Chains = BTreeMap<String, Vec<Vec<String>>>;

#[derive(Default)]
pub struct FakeKernel {
    /// family ("iptables" / "ip6tables") → table → chain → rule args (after the chain).
    pub state: BTreeMap<String, BTreeMap<String, Chains>>,
    /// Restore of this family fails (after nothing was written).
    pub fail_restore: Option<&'static str>,
    pub calls: Vec<String>,
}

fn err(cmd: &str, detail: &str) -> ExecError {
    ExecError {
        command: cmd.to_string(),
        detail: detail.to_string(),
    }
}

impl FakeKernel {
    fn family(program: &str) -> &'static str {
        if program.starts_with("ip6tables") {
            "ip6tables"
        } else {
            "iptables"
        }
    }

    pub fn save(&self, family: &str) -> String {
        let mut out = String::new();
        for (table, chains) in self.state.get(family).into_iter().flatten() {
            out.push_str(&format!("*{table}\n"));
            for chain in chains.keys() {
                let policy = if is_builtin(chain) { "ACCEPT" } else { "-" };
                out.push_str(&format!(":{chain} {policy} [0:0]\n"));
            }
            for (chain, rules) in chains {
                for r in rules {
                    out.push_str(&format!("-A {chain} {}\n", r.join(" ")));
                }
            }
            out.push_str("COMMIT\n");
        }
        out
    }

    /// Rules of `family` that are not in a built-in-and-empty shape, for assertions.
    pub fn rule_count(&self, family: &str) -> usize {
        self.state
            .get(family)
            .map(|t| t.values().flat_map(|c| c.values()).map(Vec::len).sum())
            .unwrap_or(0)
    }

    pub fn chain_count(&self, family: &str) -> usize {
        self.state
            .get(family)
            .map(|t| {
                t.values()
                    .flat_map(|c| c.keys())
                    .filter(|c| !is_builtin(c))
                    .count()
            })
            .unwrap_or(0)
    }

    fn op(
        &mut self,
        family: &str,
        table: &str,
        args: &[String],
        cmd: &str,
    ) -> Result<(), ExecError> {
        let chains = self
            .state
            .entry(family.to_string())
            .or_default()
            .entry(table.to_string())
            .or_default();
        let (verb, chain, rest) = match args {
            [v, c, rest @ ..] => (v.as_str(), c.clone(), rest),
            _ => return Err(err(cmd, "bad arguments")),
        };
        if is_builtin(&chain) {
            chains.entry(chain.clone()).or_default();
        }
        let exists = chains.contains_key(&chain);
        match verb {
            "-N" if exists => Err(err(cmd, "Chain already exists")),
            "-N" => {
                chains.insert(chain, Vec::new());
                Ok(())
            }
            _ if !exists => Err(err(cmd, "No chain/target/match by that name")),
            "-A" => {
                if let Some(t) = rest.windows(2).find(|w| w[0] == "-j").map(|w| &w[1]) {
                    if t.starts_with("ISTIO_") && !chains.contains_key(t) {
                        return Err(err(cmd, "Couldn't load target"));
                    }
                }
                chains.entry(chain).or_default().push(rest.to_vec());
                Ok(())
            }
            "-I" => {
                let (pos, rule) = rest.split_first().ok_or_else(|| err(cmd, "no position"))?;
                let pos: usize = pos.parse().map_err(|_| err(cmd, "bad position"))?;
                let list = chains.entry(chain).or_default();
                let at = pos.saturating_sub(1).min(list.len());
                list.insert(at, rule.to_vec());
                Ok(())
            }
            "-D" | "-C" => {
                let list = chains.entry(chain).or_default();
                match list.iter().position(|r| r.as_slice() == rest) {
                    Some(i) => {
                        if verb == "-D" {
                            list.remove(i);
                        }
                        Ok(())
                    }
                    None => Err(err(
                        cmd,
                        "Bad rule (does a matching rule exist in that chain?)",
                    )),
                }
            }
            "-F" => {
                chains.entry(chain).or_default().clear();
                Ok(())
            }
            "-X" => {
                let referenced = chains
                    .values()
                    .flatten()
                    .any(|r| r.windows(2).any(|w| w[0] == "-j" && w[1] == chain));
                if referenced || chains.get(&chain).is_some_and(|r| !r.is_empty()) {
                    return Err(err(cmd, "Directory not empty / too many links"));
                }
                chains.remove(&chain);
                Ok(())
            }
            _ => Err(err(cmd, "unsupported verb")),
        }
    }

    fn restore(&mut self, family: &str, payload: &str, cmd: &str) -> Result<(), ExecError> {
        if self.fail_restore == Some(family) {
            return Err(err(cmd, "injected restore failure"));
        }
        let mut table = String::new();
        for line in payload.lines() {
            if let Some(t) = line.strip_prefix('*') {
                table = t.trim().to_string();
            } else if line != "COMMIT" {
                let args: Vec<String> = line.split_whitespace().map(String::from).collect();
                self.op(family, &table, &args, cmd)?;
            }
        }
        Ok(())
    }
}

impl Exec for FakeKernel {
    fn run(
        &mut self,
        program: &str,
        args: &[String],
        stdin: Option<&str>,
    ) -> Result<String, ExecError> {
        let cmd = format!("{program} {}", args.join(" "));
        self.calls.push(cmd.clone());
        if program == "ip" {
            return Ok(String::new());
        }
        let family = Self::family(program);
        let args: Vec<String> = args
            .iter()
            .filter(|a| !a.starts_with("--wait"))
            .cloned()
            .collect();
        if program.ends_with("-save") {
            return Ok(self.save(family));
        }
        if program.ends_with("-restore") {
            self.restore(family, stdin.unwrap_or_default(), &cmd)?;
            return Ok(String::new());
        }
        match args.as_slice() {
            [t, table, rest @ ..] if t == "-t" => {
                let table = table.clone();
                self.op(family, &table, rest, &cmd)?;
                Ok(String::new())
            }
            _ => Err(err(&cmd, "unsupported invocation")),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::apply::{run, Outcome};
    use crate::config::{CidrSelection, Config, PortSelection};

    fn sidecar(ipv6: bool) -> Config {
        Config {
            proxy_uid: "1337".into(),
            proxy_gid: "1337".into(),
            inbound_ports: PortSelection::All,
            inbound_ports_exclude: vec!["15090".into(), "15021".into(), "15020".into()],
            outbound_ip_ranges_include: CidrSelection {
                wildcard: true,
                cidrs: Vec::new(),
            },
            enable_ipv6: ipv6,
            ..Config::default()
        }
    }

    #[test]
    fn apply_rerun_cleanup() {
        let mut k = FakeKernel::default();
        let cfg = sidecar(true);
        assert_eq!(run(&cfg, &mut k).unwrap(), Outcome::Applied);
        assert_eq!(k.chain_count("iptables"), 4);
        assert_eq!(k.chain_count("ip6tables"), 4);
        let rules = k.rule_count("iptables");

        assert_eq!(run(&cfg, &mut k).unwrap(), Outcome::AlreadyInPlace);
        assert_eq!(k.rule_count("iptables"), rules);

        let cleanup = Config {
            cleanup_only: true,
            ..cfg.clone()
        };
        assert_eq!(run(&cleanup, &mut k).unwrap(), Outcome::CleanedUp);
        for fam in ["iptables", "ip6tables"] {
            assert_eq!(k.rule_count(fam), 0, "{fam}: {}", k.save(fam));
            assert_eq!(k.chain_count(fam), 0, "{fam}: {}", k.save(fam));
        }
    }

    #[test]
    fn changed_config_replaces_old_rules() {
        let mut k = FakeKernel::default();
        run(&sidecar(false), &mut k).unwrap();
        let narrower = Config {
            inbound_ports: PortSelection::Ports(vec!["8080".into()]),
            reconcile: true,
            ..sidecar(false)
        };
        assert_eq!(run(&narrower, &mut k).unwrap(), Outcome::Replaced);
        let save = k.save("iptables");
        assert!(save.contains("--dport 8080 -j ISTIO_IN_REDIRECT"), "{save}");
        assert!(!save.contains("--dport 15090"), "{save}");
        assert!(!save.contains("DROP"), "guardrails must be gone: {save}");
        assert_eq!(run(&narrower, &mut k).unwrap(), Outcome::AlreadyInPlace);
    }

    #[test]
    fn failed_v6_restore_rolls_back_v4() {
        let mut k = FakeKernel {
            fail_restore: Some("ip6tables"),
            ..FakeKernel::default()
        };
        let e = run(&sidecar(true), &mut k).unwrap_err().to_string();
        assert!(
            e.contains("injected restore failure") && e.contains("rolled back"),
            "{e}"
        );
        assert_eq!(k.rule_count("iptables"), 0, "{}", k.save("iptables"));
        assert_eq!(k.chain_count("iptables"), 0);
    }

    #[test]
    fn cleanup_sweeps_rules_from_another_config() {
        let mut k = FakeKernel::default();
        let old = Config {
            kube_virt_interfaces: vec!["eth1".into()],
            ..sidecar(false)
        };
        run(&old, &mut k).unwrap();
        // Cleanup planned from a different config still leaves no Istio chain or jump.
        let cleanup = Config {
            cleanup_only: true,
            ..Config::default()
        };
        run(&cleanup, &mut k).unwrap();
        assert_eq!(k.chain_count("iptables"), 0, "{}", k.save("iptables"));
        assert!(!k.save("iptables").contains("ISTIO_"));
    }
}
