//! Verdicts: running scenarios on both proxies, comparing what each showed, and reporting
//! every difference not in a test's list of known ones.

use super::{play, Scenario};
use crate::binaries::Kind;
use crate::parallel;
use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

/// A scenario's outcome on both sides.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub name: &'static str,
    pub doc: &'static str,
    pub envoy: String,
    pub outrigger: String,
}

impl Outcome {
    pub fn matches(&self) -> bool {
        self.envoy == self.outrigger
    }

    /// The lines that differ (`-` Envoy only, `+` Outrigger only), each under the step it
    /// belongs to, from a longest-common-subsequence diff of the two texts.
    pub fn report(&self) -> String {
        let mut out = format!("=== {} ({})\n", self.name, self.doc);
        let mut step = "";
        let mut shown = "";
        for (mark, line) in diff_lines(&self.envoy, &self.outrigger) {
            if line.starts_with("step ") {
                step = line;
            }
            if mark != ' ' {
                if shown != step {
                    let _ = writeln!(out, "  {step}");
                    shown = step;
                }
                let who = if mark == '-' {
                    "envoy    "
                } else {
                    "outrigger"
                };
                let _ = writeln!(out, "{mark} {who} | {line}");
            }
        }
        out
    }
}

/// A line diff of `a` and `b`: `' '` common, `'-'` only in `a`, `'+'` only in `b`.
fn diff_lines<'t>(a: &'t str, b: &'t str) -> Vec<(char, &'t str)> {
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    // lcs[i][j]: the longest common subsequence of a[i..] and b[j..].
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push(('+', b[j]));
            j += 1;
        } else {
            out.push(('-', a[i]));
            i += 1;
        }
    }
    out
}

/// Scenarios running at once: each holds two proxies and a few curl processes, mostly waiting.
pub const WORKERS: usize = 6;

/// Runs every scenario on both proxies (Outrigger only when Envoy is not installed: then the
/// Envoy text is empty and nothing is compared).
pub fn run(scenarios: &[Scenario], with_envoy: bool) -> Vec<Outcome> {
    parallel::map(scenarios, WORKERS, |scenario| {
        let started = Instant::now();
        let envoy = if with_envoy {
            play(Kind::Envoy, scenario)
        } else {
            String::new()
        };
        let envoy_took = started.elapsed();
        let outrigger = play(Kind::Outrigger, scenario);
        eprintln!(
            "scenario {}: envoy {envoy_took:.1?}, outrigger {:.1?}",
            scenario.name,
            started.elapsed() - envoy_took
        );
        Outcome {
            name: scenario.name,
            doc: scenario.doc,
            envoy,
            outrigger,
        }
    })
}

/// A difference the project knows of and documents (an acknowledged field in
/// `proxy/src/config/fields.rs`, or a gap still open in an issue, named in the reason), kept
/// so the scenario still runs and the list stays true.
#[derive(Debug, Clone, Copy)]
pub struct Known {
    pub scenario: &'static str,
    pub reason: &'static str,
}

/// Runs `scenarios` and panics with one report of every mismatch not in `known`, and of
/// every `known` entry whose scenario now matches (the list must stay true).
pub fn check(test: &str, scenarios: &[Scenario], known: &[Known]) {
    for k in known {
        assert!(
            scenarios.iter().any(|s| s.name == k.scenario),
            "{test}: known difference for a scenario that does not exist: {}",
            k.scenario
        );
    }
    let mut names: Vec<&str> = scenarios.iter().map(|s| s.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(
        names.len(),
        scenarios.len(),
        "{test}: scenario names repeat"
    );
    let with_envoy = crate::binaries::envoy_or_skip(test).is_some();
    let outcomes = run(scenarios, with_envoy);
    if !with_envoy {
        return;
    }
    // TRAFFIC_VERBOSE=1 prints every scenario's observation, to see what was compared.
    if std::env::var_os("TRAFFIC_VERBOSE").is_some() {
        for outcome in &outcomes {
            eprintln!("=== {}\n{}", outcome.name, outcome.outrigger);
        }
    }
    let mut failures = String::new();
    let mut mismatched = 0;
    for outcome in &outcomes {
        let known = known.iter().find(|k| k.scenario == outcome.name);
        match (outcome.matches(), known) {
            (true, None) => {}
            (false, Some(_)) => {}
            (false, None) => {
                mismatched += 1;
                failures.push_str(&outcome.report());
            }
            (true, Some(k)) => {
                mismatched += 1;
                let _ = writeln!(
                    failures,
                    "=== {}: listed as a known difference ({}) but Envoy and Outrigger now agree: remove it from the list",
                    k.scenario, k.reason
                );
            }
        }
    }
    let passed = outcomes.len() - mismatched;
    eprintln!("{test}: {passed}/{} scenarios as expected", outcomes.len());
    assert!(
        failures.is_empty(),
        "{test}: {mismatched} of {} scenarios differ from Envoy:\n{failures}",
        outcomes.len()
    );
}

/// Runs `program` with `args` (a client such as h2load or python) with a deadline and returns
/// its exit status, stdout and stderr as text.
pub fn run_client(
    program: &str,
    args: &[&str],
    timeout: Duration,
) -> (Option<i32>, String, String) {
    let mut command = Command::new(program);
    command.args(args);
    match crate::process::run(&mut command, timeout) {
        Ok(f) => (f.status.and_then(|s| s.code()), f.stdout, f.stderr),
        Err(e) => (None, String::new(), format!("cannot run {program}: {e}")),
    }
}

/// Stats keyed by (phase, name) where Envoy's and Outrigger's values differ, or that only
/// Outrigger has, one line each; empty when they agree.
pub fn stat_differences(
    envoy: &std::collections::BTreeMap<(String, String), u64>,
    ours: &std::collections::BTreeMap<(String, String), u64>,
) -> Vec<String> {
    envoy
        .iter()
        .filter(|(k, v)| ours.get(*k) != Some(*v))
        .map(|((phase, name), v)| {
            format!(
                "{phase} {name}: Envoy {v}, Outrigger {:?}",
                ours.get(&(phase.clone(), name.clone()))
            )
        })
        .chain(
            ours.keys()
                .filter(|k| !envoy.contains_key(*k))
                .map(|(phase, name)| format!("{phase} {name}: only in Outrigger")),
        )
        .collect()
}
