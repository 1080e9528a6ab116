//! Library level: every upstream golden case through the real CLI parser and the pure
//! planner; the dry-run stream must equal the golden after Go's strings.TrimSpace.
#![allow(clippy::unwrap_used)]

mod common;

use iptables_init::cli::{self, Command};
use iptables_init::plan::dry_run_stream;

#[test]
fn all_golden_cases_match() {
    let cases = common::load_cases();
    assert_eq!(
        cases.len(),
        27,
        "cases.tsv should list the 27 upstream goldens"
    );
    let mut failures = Vec::new();
    for case in &cases {
        let env = |k: &str| {
            case.env
                .iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v.clone())
        };
        let mut cfg = match cli::parse(&case.args, &env) {
            Ok(Command::Run(cfg)) => *cfg,
            other => {
                failures.push(format!("{}: parse gave {other:?}", case.name));
                continue;
            }
        };
        cfg.enable_ipv6 = case.ipv6;
        cfg.dns_servers_v4 = case.dns4.clone();
        cfg.dns_servers_v6 = case.dns6.clone();
        let got = dry_run_stream(&cfg).join("\n");
        let (want, got) = (case.golden.trim(), got.trim());
        if want != got {
            failures.push(format!("{}: {}", case.name, common::diff(want, got)));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} golden cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
