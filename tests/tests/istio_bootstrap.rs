//! Istio's sidecar bootstrap goldens (pilot-agent's rendered `envoy-rev.json`, one per
//! `ProxyConfig` case) pass `outrigger --mode validate` with the exact flags pilot-agent starts
//! Envoy with, and Envoy agrees, apart from the cases listed in [`ENVOY_REJECTS`].
//!
//! The goldens live in `shared/vectors/istio-bootstrap/`, cloned beside the repository (see its
//! README). Validation opens no sockets and reads none of the paths in these files (the XDS and
//! SDS sockets, the Lightstep token), so the README's placeholder substitutions are not needed
//! here; they are for tests that start the proxy.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use tests::{envoy_or_skip, outrigger, parallel, run_validate, validate, Verdict};

/// pkg/envoy/proxy.go, in its order, for the goldens' inputs (drain 2 s, all node IPs IPv4,
/// agent log level `warning` with a `misc:error` component level).
const PILOT_AGENT_FLAGS: &[&str] = &[
    "--drain-time-s",
    "2",
    "--drain-strategy",
    "immediate",
    "--local-address-ip-version",
    "v4",
    "--file-flush-interval-msec",
    "1000",
    "--disable-hot-restart",
    "--allow-unknown-static-fields",
    "-l",
    "warning",
    "--component-log-level",
    "misc:error",
    "--skip-deprecated-logs",
];

/// Goldens upstream Envoy refuses, why, and a piece of its error that shows it is that reason.
/// Istio ships its own Envoy build (istio/proxy) that has these extensions; Outrigger accepts
/// them and acknowledges what it does not act on.
const ENVOY_REJECTS: &[(&str, &str, &str)] = &[
    (
        "ambient_golden.json",
        "`istio.workload.BootstrapExtension` (metadata discovery) is built only into Istio's proxy",
        "istio.workload.BootstrapExtension",
    ),
    (
        "tracing_lightstep_golden.json",
        "the Lightstep tracer has been removed from upstream Envoy",
        "envoy.config.trace.v3.LightstepConfig",
    ),
];

/// The goldens (shared with the tests that run them), all 30 of them.
fn goldens() -> Vec<PathBuf> {
    let files = tests::istio::goldens();
    assert!(
        files.len() >= 30,
        "expected the 30 Istio goldens in {}, found {}",
        tests::istio::goldens_dir().display(),
        files.len()
    );
    files
}

fn name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn tail(v: &Verdict) -> String {
    let lines: Vec<&str> = v.output.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(6)..]
        .iter()
        .map(|l| format!("      {l}\n"))
        .collect()
}

#[test]
fn istio_goldens_pass_validate_with_pilot_agent_flags() {
    let files = goldens();
    let ours = outrigger();
    let envoy = envoy_or_skip("istio_goldens_pass_validate_with_pilot_agent_flags");
    let mut jobs: Vec<(&Path, &tests::Proxy)> =
        files.iter().map(|f| (f.as_path(), &ours)).collect();
    if let Some(envoy) = &envoy {
        jobs.extend(files.iter().map(|f| (f.as_path(), envoy)));
    }
    let verdicts = parallel::map(&jobs, parallel::default_workers(), |(file, bin)| {
        run_validate(bin, file, PILOT_AGENT_FLAGS)
    });
    let (ours, theirs) = verdicts.split_at(files.len());

    let mut problems = String::new();
    for (i, file) in files.iter().enumerate() {
        let name = name(file);
        let o = &ours[i];
        if !o.ok {
            let _ = writeln!(
                problems,
                "{name}: outrigger rejects it ({:.2?}{})\n{}",
                o.elapsed,
                if o.timed_out { ", timed out" } else { "" },
                tail(o)
            );
        } else if o.timed_out {
            let _ = writeln!(
                problems,
                "{name}: outrigger gave no verdict within {:?}",
                validate::OUTRIGGER_TIMEOUT
            );
        }
        let Some(e) = theirs.get(i) else { continue };
        match ENVOY_REJECTS.iter().find(|(n, _, _)| *n == name) {
            None if !e.ok => {
                let _ = writeln!(
                    problems,
                    "{name}: envoy rejects it; outrigger {}\n{}",
                    if o.ok { "accepts" } else { "rejects" },
                    tail(e)
                );
            }
            Some((_, why, evidence)) if e.ok || !e.output.contains(evidence) => {
                let _ = writeln!(
                    problems,
                    "{name}: listed as refused by Envoy because {why}, but Envoy {}: update ENVOY_REJECTS\n{}",
                    if e.ok { "accepts it" } else { "gives another reason" },
                    tail(e)
                );
            }
            _ => {}
        }
    }
    assert!(problems.is_empty(), "{problems}");
}
