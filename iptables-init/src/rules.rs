//! An ordered, per-family list of iptables rules and the three texts derived from it:
//! the `iptables-restore` payload, the `-C` checks used to detect an existing install,
//! and the `-D`/`-F`/`-X` commands that undo it. Keeping all three derived from one list
//! is what makes `--cleanup-only` remove exactly what an apply added.

use std::collections::{BTreeMap, HashSet};

/// An IP family; each has its own rule list and its own iptables binaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// The iptables tables we write to. Declaration order is the name order, which is the order
/// tables appear in a restore payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Filter,
    Mangle,
    Nat,
    Raw,
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Mangle => "mangle",
            Table::Nat => "nat",
            Table::Raw => "raw",
        }
    }
}

/// Chains and targets that exist without being declared; they are never `-N`'d nor flushed.
pub fn is_builtin(chain: &str) -> bool {
    matches!(
        chain,
        "INPUT"
            | "OUTPUT"
            | "FORWARD"
            | "PREROUTING"
            | "POSTROUTING"
            | "ACCEPT"
            | "RETURN"
            | "DROP"
    )
}

/// Placeholder inside a versioned rule's arguments, replaced by the family's address.
pub const IP_PLACEHOLDER: &str = "\u{0}ip-version-specific";

/// One rule: `params` is the full iptables argument list starting with `-A CHAIN` or
/// `-I CHAIN POS`, exactly as it appears in a restore payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub table: Table,
    pub chain: String,
    pub params: Vec<String>,
}

impl Rule {
    /// The target when the rule ends in `-j TARGET`; rules whose target takes options
    /// (`-j REDIRECT --to-ports N`) have none, matching how upstream declares chains.
    fn trailing_jump(&self) -> Option<&str> {
        match self.params.as_slice() {
            [.., j, target] if j == "-j" => Some(target),
            _ => None,
        }
    }
}

/// The planned rules for both families, in the order they were added.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    ipv6: bool,
    v4: Vec<Rule>,
    v6: Vec<Rule>,
}

impl RuleSet {
    /// `ipv6 = false` makes every v6 operation a no-op, as upstream's builder does.
    pub fn new(ipv6: bool) -> Self {
        RuleSet {
            ipv6,
            v4: Vec::new(),
            v6: Vec::new(),
        }
    }

    pub fn rules(&self, family: Family) -> &[Rule] {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    fn push(&mut self, family: Family, rule: Rule) {
        match family {
            Family::V4 => self.v4.push(rule),
            Family::V6 if self.ipv6 => self.v6.push(rule),
            Family::V6 => {}
        }
    }

    fn make(table: Table, chain: &str, head: &[&str], args: &[&str], ip: Option<&str>) -> Rule {
        let params = head
            .iter()
            .chain(args.iter())
            .map(|a| match (ip, *a == IP_PLACEHOLDER) {
                (Some(ip), true) => ip.to_string(),
                _ => (*a).to_string(),
            })
            .collect();
        Rule {
            table,
            chain: chain.to_string(),
            params,
        }
    }

    /// `-A` for one family only.
    pub fn append_in(&mut self, family: Family, table: Table, chain: &str, args: &[&str]) {
        let rule = Self::make(table, chain, &["-A", chain], args, None);
        self.push(family, rule);
    }

    /// `-A` in both families.
    pub fn append(&mut self, table: Table, chain: &str, args: &[&str]) {
        self.append_in(Family::V4, table, chain, args);
        self.append_in(Family::V6, table, chain, args);
    }

    /// `-A` in both families, with [`IP_PLACEHOLDER`] replaced by `v4` / `v6`.
    pub fn append_versioned(
        &mut self,
        v4: &str,
        v6: &str,
        table: Table,
        chain: &str,
        args: &[&str],
    ) {
        let r4 = Self::make(table, chain, &["-A", chain], args, Some(v4));
        let r6 = Self::make(table, chain, &["-A", chain], args, Some(v6));
        self.push(Family::V4, r4);
        self.push(Family::V6, r6);
    }

    /// `-I CHAIN POS` for one family only. Inserts stay where they were added in the list.
    pub fn insert_in(
        &mut self,
        family: Family,
        table: Table,
        chain: &str,
        pos: u32,
        args: &[&str],
    ) {
        let pos = pos.to_string();
        let rule = Self::make(table, chain, &["-I", chain, &pos], args, None);
        self.push(family, rule);
    }

    /// `-I CHAIN POS` in both families.
    pub fn insert(&mut self, table: Table, chain: &str, pos: u32, args: &[&str]) {
        self.insert_in(Family::V4, table, chain, pos, args);
        self.insert_in(Family::V6, table, chain, pos, args);
    }

    /// The stdin for `iptables-restore --noflush`, one entry per line. Tables in name order,
    /// each `* table`, then `-N` for every non-built-in chain (owners first in rule order,
    /// then chains that are only jump targets), then the rules, then `COMMIT`.
    pub fn restore_lines(&self, family: Family) -> Vec<String> {
        let rules = self.rules(family);
        let mut per_table: BTreeMap<Table, Vec<String>> = BTreeMap::new();
        let mut seen: HashSet<(Table, &str)> = HashSet::new();
        for r in rules {
            if seen.insert((r.table, r.chain.as_str())) && !is_builtin(&r.chain) {
                per_table
                    .entry(r.table)
                    .or_default()
                    .push(format!("-N {}", r.chain));
            }
        }
        for r in rules {
            if let Some(target) = r.trailing_jump() {
                if seen.insert((r.table, target)) && !is_builtin(target) {
                    per_table
                        .entry(r.table)
                        .or_default()
                        .push(format!("-N {target}"));
                }
            }
        }
        for r in rules {
            per_table
                .entry(r.table)
                .or_default()
                .push(r.params.join(" "));
        }
        let mut out = Vec::new();
        for (table, lines) in per_table {
            if lines.is_empty() {
                continue;
            }
            out.push(format!("* {}", table.name()));
            out.extend(lines);
            out.push("COMMIT".to_string());
        }
        out
    }

    /// The restore payload as one newline-terminated text.
    pub fn restore_payload(&self, family: Family) -> String {
        let mut s = String::new();
        for line in self.restore_lines(family) {
            s.push_str(&line);
            s.push('\n');
        }
        s
    }

    /// Non-built-in chains that own rules, per table, in first-use order.
    pub fn owned_chains(&self, family: Family) -> Vec<(Table, String)> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for r in self.rules(family) {
            if !is_builtin(&r.chain) && seen.insert((r.table, r.chain.clone())) {
                out.push((r.table, r.chain.clone()));
            }
        }
        out
    }

    /// `iptables -t T -C ...` argument lists that succeed only if every planned rule exists.
    pub fn check_commands(&self, family: Family) -> Vec<Vec<String>> {
        self.rules(family)
            .iter()
            .map(|r| with_table(r.table, rewrite_to(&r.params, "-C")))
            .collect()
    }

    /// Argument lists (without the binary) that undo the planned rules: rules are deleted
    /// newest first, skipping non-jump rules inside ISTIO_* chains (they go with the flush),
    /// then every chain that owns rules is flushed and deleted, newest first.
    pub fn cleanup_commands(&self, family: Family) -> Vec<Vec<String>> {
        let reversed: Vec<&Rule> = self.rules(family).iter().rev().collect();
        let mut out = Vec::new();
        for r in &reversed {
            let in_istio_chain = r.chain.starts_with("ISTIO_");
            let jumps_to_istio = r
                .params
                .windows(2)
                .any(|w| w[0] == "-j" && w[1].starts_with("ISTIO_"));
            if in_istio_chain && !jumps_to_istio {
                continue;
            }
            out.push(with_table(r.table, rewrite_to(&r.params, "-D")));
        }
        let mut seen = HashSet::new();
        for r in &reversed {
            if !is_builtin(&r.chain) && seen.insert((r.table, r.chain.as_str())) {
                for op in ["-F", "-X"] {
                    out.push(vec![
                        "-t".to_string(),
                        r.table.name().to_string(),
                        op.to_string(),
                        r.chain.clone(),
                    ]);
                }
            }
        }
        out
    }
}

/// Replace the leading `-A CHAIN` / `-I CHAIN POS` by `op CHAIN`.
fn rewrite_to(params: &[String], op: &str) -> Vec<String> {
    match params {
        [verb, chain, rest @ ..] if verb == "-A" => {
            let mut v = vec![op.to_string(), chain.clone()];
            v.extend_from_slice(rest);
            v
        }
        [verb, chain, _pos, rest @ ..] if verb == "-I" => {
            let mut v = vec![op.to_string(), chain.clone()];
            v.extend_from_slice(rest);
            v
        }
        other => other.to_vec(),
    }
}

fn with_table(table: Table, params: Vec<String>) -> Vec<String> {
    let mut v = vec!["-t".to_string(), table.name().to_string()];
    v.extend(params);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declares_owner_chains_then_jump_targets() {
        let mut rs = RuleSet::new(false);
        rs.append(Table::Nat, "OUTPUT", &["-j", "ISTIO_OUTPUT"]);
        rs.append(Table::Nat, "ISTIO_A", &["-j", "ISTIO_B"]);
        rs.append(
            Table::Nat,
            "ISTIO_A",
            &["-p", "tcp", "-j", "REDIRECT", "--to-ports", "1"],
        );
        assert_eq!(
            rs.restore_lines(Family::V4),
            vec![
                "* nat",
                "-N ISTIO_A",
                "-N ISTIO_OUTPUT",
                "-N ISTIO_B",
                "-A OUTPUT -j ISTIO_OUTPUT",
                "-A ISTIO_A -j ISTIO_B",
                "-A ISTIO_A -p tcp -j REDIRECT --to-ports 1",
                "COMMIT",
            ]
        );
        assert!(rs.restore_lines(Family::V6).is_empty());
    }

    #[test]
    fn cleanup_undoes_in_reverse_and_drops_position() {
        let mut rs = RuleSet::new(true);
        rs.insert(Table::Nat, "PREROUTING", 1, &["-i", "eth0", "-j", "RETURN"]);
        rs.append(Table::Nat, "ISTIO_X", &["-j", "RETURN"]);
        rs.append(Table::Nat, "OUTPUT", &["-j", "ISTIO_X"]);
        let cmds: Vec<String> = rs
            .cleanup_commands(Family::V6)
            .into_iter()
            .map(|c| c.join(" "))
            .collect();
        assert_eq!(
            cmds,
            vec![
                "-t nat -D OUTPUT -j ISTIO_X",
                "-t nat -D PREROUTING -i eth0 -j RETURN",
                "-t nat -F ISTIO_X",
                "-t nat -X ISTIO_X",
            ]
        );
    }
}
