//! Differential test of `--mode validate`: every bootstrap in `tests/corpus/validate/` gets the
//! same verdict from Outrigger as from Envoy (the oracle), and every Outrigger error names the
//! field path it is about. Files in `known-differences/` are the documented exceptions: Envoy
//! accepts them, Outrigger refuses them naming the field it does not implement yet (or, marked
//! `# outrigger: accepts`, Envoy enforces a limit Outrigger cannot reproduce).
//!
//! All disagreements are collected and reported together, with both outputs.

use std::fmt::Write as _;
use tests::corpus::{self, CorpusFile};
use tests::{envoy_or_skip, outrigger, parallel, run_validate, validate, Proxy, Verdict};

/// Both verdicts for one file; `envoy` is None when Envoy is not installed (outside CI).
struct Outcome {
    file: CorpusFile,
    outrigger: Verdict,
    envoy: Option<Verdict>,
}

/// Runs both implementations on every file, each run a job of its own so that the slow Envoy
/// start-ups overlap with each other and with Outrigger's runs.
fn run_all(files: Vec<CorpusFile>, ours: &Proxy, envoy: Option<&Proxy>) -> Vec<Outcome> {
    let mut jobs: Vec<(usize, &Proxy)> = files.iter().enumerate().map(|(i, _)| (i, ours)).collect();
    if let Some(envoy) = envoy {
        jobs.extend(files.iter().enumerate().map(|(i, _)| (i, envoy)));
    }
    let verdicts = parallel::map(&jobs, parallel::default_workers(), |(i, bin)| {
        run_validate(bin, &files[*i].path, &[])
    });
    let (ours, theirs) = verdicts.split_at(files.len());
    files
        .into_iter()
        .enumerate()
        .map(|(i, file)| Outcome {
            file,
            outrigger: ours[i].clone(),
            envoy: theirs.get(i).cloned(),
        })
        .collect()
}

fn verdict_word(ok: bool) -> &'static str {
    if ok {
        "accepts"
    } else {
        "rejects"
    }
}

fn both_outputs(o: &Outcome) -> String {
    let mut s = format!(
        "  outrigger {} ({:.2?}):\n{}",
        verdict_word(o.outrigger.ok),
        o.outrigger.elapsed,
        indent(&o.outrigger.output)
    );
    if let Some(envoy) = &o.envoy {
        let _ = write!(
            s,
            "  envoy {}:\n{}",
            verdict_word(envoy.ok),
            indent(&last_lines(&envoy.output, 6))
        );
    }
    s
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("      {l}\n")).collect()
}

/// Envoy's errors come after pages of start-up logs; the end is what matters.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The checks every Outrigger run must pass whatever Envoy says.
fn check_outrigger(o: &Outcome, problems: &mut Vec<String>) {
    let v = &o.outrigger;
    if v.timed_out {
        problems.push(format!(
            "{}: outrigger gave no verdict within {:?}\n{}",
            o.file.name,
            validate::OUTRIGGER_TIMEOUT,
            both_outputs(o)
        ));
    } else if !v.ok && !validate::names_field_path(&v.output) {
        problems.push(format!(
            "{}: outrigger's error does not name a field path\n{}",
            o.file.name,
            both_outputs(o)
        ));
    }
}

#[test]
fn outrigger_and_envoy_agree_on_the_corpus() {
    let files = corpus::list(&corpus::dir("validate"));
    assert!(
        files.len() >= 40,
        "the corpus should hold at least 40 files, found {}",
        files.len()
    );
    let ours = outrigger();
    let envoy = envoy_or_skip("outrigger_and_envoy_agree_on_the_corpus");
    let outcomes = run_all(files, &ours, envoy.as_ref());

    let mut mismatches = Vec::new();
    let mut problems = Vec::new();
    for o in &outcomes {
        let Some(expect_ok) = o.file.expect_ok else {
            problems.push(format!(
                "{}: corpus file names start with ok- (Envoy accepts) or err- (Envoy rejects)",
                o.file.name
            ));
            continue;
        };
        if o.file.doc_url().is_none() || o.file.about.is_empty() {
            problems.push(format!(
                "{}: the header must say what the file exercises and cite an Envoy doc page",
                o.file.name
            ));
        }
        check_outrigger(o, &mut problems);
        // Without Envoy, the verdict recorded in the file name stands in for it.
        let (oracle_ok, oracle) = match &o.envoy {
            Some(envoy) => {
                if envoy.ok != expect_ok {
                    problems.push(format!(
                        "{}: the name says Envoy {}, but Envoy {} it: rename the file or fix it\n{}",
                        o.file.name,
                        verdict_word(expect_ok),
                        verdict_word(envoy.ok),
                        both_outputs(o)
                    ));
                }
                (envoy.ok, "envoy")
            }
            None => (expect_ok, "the verdict recorded in the name"),
        };
        if o.outrigger.ok != oracle_ok {
            mismatches.push(format!(
                "{} ({}): outrigger {}, {oracle} {}\n{}",
                o.file.name,
                o.file.about,
                verdict_word(o.outrigger.ok),
                verdict_word(oracle_ok),
                both_outputs(o)
            ));
        }
    }
    let mut report = String::new();
    if !mismatches.is_empty() {
        let _ = writeln!(
            report,
            "{} of {} corpus files get different verdicts:\n",
            mismatches.len(),
            outcomes.len()
        );
        report.push_str(&mismatches.join("\n"));
    }
    if !problems.is_empty() {
        let _ = writeln!(report, "\n{} other problems:\n", problems.len());
        report.push_str(&problems.join("\n"));
    }
    assert!(report.is_empty(), "{report}");
}

#[test]
fn known_differences_are_refused_naming_the_field() {
    let files = corpus::list(&corpus::dir("validate").join("known-differences"));
    assert!(!files.is_empty(), "known-differences/ holds no files");
    let ours = outrigger();
    let envoy = envoy_or_skip("known_differences_are_refused_naming_the_field");
    let outcomes = run_all(files, &ours, envoy.as_ref());

    let mut problems = Vec::new();
    for o in &outcomes {
        let (Some(why), Some(field)) = (&o.file.difference, &o.file.field) else {
            problems.push(format!(
                "{}: a known difference needs `# difference: <why>` and `# field: <path>` header lines",
                o.file.name
            ));
            continue;
        };
        check_outrigger(o, &mut problems);
        if o.file.outrigger_accepts {
            if !o.outrigger.ok {
                problems.push(format!(
                    "{}: marked `outrigger: accepts` but outrigger refuses it\n{}",
                    o.file.name,
                    both_outputs(o)
                ));
            }
            if o.envoy.as_ref().is_some_and(|e| e.ok) {
                problems.push(format!(
                    "{}: Envoy accepts it now: it is no difference\n{}",
                    o.file.name,
                    both_outputs(o)
                ));
            }
            continue;
        }
        if o.outrigger.ok {
            problems.push(format!(
                "{}: outrigger now accepts it ({why}): move it out of known-differences/ as ok-{}\n{}",
                o.file.name,
                o.file.name,
                both_outputs(o)
            ));
        } else if !o.outrigger.output.contains(field.as_str()) {
            problems.push(format!(
                "{}: outrigger's error does not name {field}\n{}",
                o.file.name,
                both_outputs(o)
            ));
        }
        if let Some(envoy) = &o.envoy {
            if !envoy.ok {
                problems.push(format!(
                    "{}: Envoy rejects it too, so it is no difference: move it to the corpus as err-{}\n{}",
                    o.file.name,
                    o.file.name,
                    both_outputs(o)
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems with known differences:\n\n{}",
        problems.len(),
        problems.join("\n")
    );
}
