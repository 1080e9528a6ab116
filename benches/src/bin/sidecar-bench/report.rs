//! The Markdown report: environment, the targets with pass/miss, a table per
//! scenario and memory. Every ratio is the median of per-round ratios with its min–max.

use crate::process::Pinning;
use crate::runner::{Results, ScenarioResult};
use crate::scenario::{Metric, Scenario};
use crate::stats::{self, Spread};
use crate::targets::Target;
use crate::tools::Found;
use std::fmt::Write;
use std::path::{Path, PathBuf};

const PROXIES: [Target; 4] = [
    Target::Outrigger,
    Target::Envoy,
    Target::Nginx,
    Target::Haproxy,
];

/// Writes `<date>.md` and the charts into `dir`; returns the paths written.
pub fn write(results: &Results, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let date = crate::date::today();
    let mut written = Vec::new();
    let mut charts = Vec::new();
    for s in &results.scenarios {
        let file = format!("{date}-{}.svg", s.scenario.name());
        crate::chart::scenario(s, &dir.join(&file))?;
        written.push(dir.join(&file));
        charts.push((s.scenario, file));
    }
    let memory_file = format!("{date}-memory.svg");
    if crate::chart::memory(&memory_rows(results), &dir.join(&memory_file))? {
        written.push(dir.join(&memory_file));
    }
    let md = dir.join(format!("{date}.md"));
    std::fs::write(&md, markdown(results, &date, &charts, &memory_file))?;
    written.insert(0, md);
    Ok(written)
}

/// One line for logs and CI: what ran and the headline ratios.
pub fn summary_line(r: &Results) -> String {
    let runs: usize = r
        .scenarios
        .iter()
        .flat_map(|s| &s.rounds)
        .map(|round| round.len())
        .sum();
    let h1 = find(r, Scenario::H1Throughput);
    let ratio = |reference| {
        h1.and_then(|s| stats::ratio(s, Target::Outrigger, reference))
            .map_or("n/a".to_string(), |s| format!("{:.2}", s.median))
    };
    let istio = h1
        .and_then(|s| stats::ratio(s, Target::OutriggerIstio, Target::Outrigger))
        .map_or("n/a".to_string(), |s| format!("{:.3}", s.median));
    format!(
        "sidecar-bench: {} — {} scenarios, {runs} measurements, {} failures, {} skipped, {:.0} s; HTTP/1.1 req/s Outrigger/Envoy {}, Outrigger/direct {}, Outrigger+Istio/Outrigger {istio}",
        if r.failure_count() == 0 { "ok" } else { "FAILED" },
        r.scenarios.len(),
        r.failure_count(),
        r.skipped.len() + r.scenarios.iter().map(|s| s.skipped.len()).sum::<usize>(),
        r.elapsed.as_secs_f64(),
        ratio(Target::Envoy),
        ratio(Target::Direct),
    )
}

/// Machine and tool versions, for the report's header.
pub fn environment(found: &Found, outrigger: &Path, pinning: Pinning) -> Vec<(String, String)> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, v)| v.trim().to_string())
            })
        })
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut env = vec![
        ("CPU".to_string(), format!("{cpu} ({cpus} CPUs)")),
        ("kernel".to_string(), kernel.trim().to_string()),
        (
            "pinning".to_string(),
            format!(
                "{}{}",
                if pinning.enabled {
                    "proxies on CPU 0; load generators and upstreams on CPU 1 (taskset)"
                } else {
                    "none"
                },
                pinning.priority.describe()
            ),
        ),
    ];
    let versions: [(&str, &[&str]); 5] = [
        ("envoy", &["--version"]),
        ("nginx", &["-v"]),
        ("haproxy", &["-v"]),
        ("wrk", &["-v"]),
        ("h2load", &["--version"]),
    ];
    if crate::tools::is_executable(outrigger) {
        let v = crate::tools::version(outrigger, &["--version"]);
        env.push(("outrigger".into(), v));
    }
    for (program, args) in versions {
        if let Some(p) = found.path(program) {
            env.push((program.into(), crate::tools::version(p, args)));
        }
    }
    env
}

fn find(r: &Results, s: Scenario) -> Option<&ScenarioResult> {
    r.scenarios.iter().find(|x| x.scenario == s)
}

fn spread(s: Option<Spread>, digits: usize) -> String {
    match s {
        Some(s) if s.n > 1 => format!("{:.d$} ({:.d$}–{:.d$})", s.median, s.min, s.max, d = digits),
        Some(s) => format!("{:.d$}", s.median, d = digits),
        None => "–".into(),
    }
}

fn markdown(r: &Results, date: &str, charts: &[(Scenario, String)], memory: &str) -> String {
    let mut m = String::new();
    let p = &r.plan;
    let _ = writeln!(m, "# sidecar-bench, {date}\n");
    let _ = writeln!(
        m,
        "{} run: {} round(s) per scenario, {:.1} s per measurement ({:.1} s for the latency runs){}, every target measured once per round in a rotating order; wall time {:.0} s. Ratios are medians of per-round ratios, with min–max over rounds. Produced by `cargo run -p benches --release --bin sidecar-bench{}`; see `benches/README.md` for the method.\n",
        if p.smoke { "Smoke" } else { "Full" },
        p.rounds,
        p.run.as_secs_f64(),
        p.latency_run.as_secs_f64(),
        if p.warmup.is_some() { ", after a 1 s warm-up per target" } else { "" },
        r.elapsed.as_secs_f64(),
        if p.smoke { " -- --smoke" } else { "" },
    );
    m.push_str("| environment | |\n| --- | --- |\n");
    for (k, v) in &r.environment {
        let _ = writeln!(m, "| {k} | {} |", v.replace('|', "/"));
    }
    m.push('\n');
    targets_section(&mut m, r);
    for s in &r.scenarios {
        scenario_section(&mut m, s, charts);
    }
    memory_section(&mut m, r, memory);
    if !r.skipped.is_empty() || r.failure_count() > 0 {
        m.push_str("## Skipped and failed\n\n");
        let scenario_lines = r.scenarios.iter().flat_map(|s| {
            s.skipped
                .iter()
                .chain(&s.failures)
                .map(move |l| format!("{}: {l}", s.scenario.name()))
        });
        for line in r
            .skipped
            .iter()
            .chain(&r.failures)
            .cloned()
            .chain(scenario_lines)
        {
            let _ = writeln!(m, "- {line}");
        }
    }
    m
}

/// The issues' targets (9: the data path, 6: mTLS), each as measured in this run.
fn targets_section(m: &mut String, r: &Results) {
    m.push_str(
        "## Targets (issues 9, 8 and 6)\n\n| target | measured | goal | |\n| --- | --- | --- | --- |\n",
    );
    let o = Target::Outrigger;
    let ratio = |s: Scenario, reference| find(r, s).and_then(|s| stats::ratio(s, o, reference));
    let load_rss = find(r, Scenario::H1Throughput).and_then(|s| rss_ratio(s, o, Target::Envoy));
    let idle = match (r.idle_rss_kib.get(&o), r.idle_rss_kib.get(&Target::Envoy)) {
        (Some(a), Some(b)) if *b > 0 => Spread::of(&[*a as f64 / *b as f64]),
        _ => None,
    };
    // Istio's telemetry (issue 8): the same Outrigger with and without Istio's HTTP chain,
    // measured in the same rounds.
    let istio =
        find(r, Scenario::H1Throughput).and_then(|s| stats::ratio(s, Target::OutriggerIstio, o));
    // Two scenarios measured at different times: the ratio of Outrigger's medians, one value.
    let mtls_vs_plain = match (
        find(r, Scenario::MtlsThroughput).and_then(|s| stats::values(s, o)),
        find(r, Scenario::H1Throughput).and_then(|s| stats::values(s, o)),
    ) {
        (Some(t), Some(p)) if p.median > 0.0 => Spread::of(&[t.median / p.median]),
        _ => None,
    };
    let rows: [(&str, Option<Spread>, f64, bool); 10] = [
        (
            "HTTP/1.1 req/s with Istio's HTTP chain (MX + istio.stats) / without (issue 8: under 5% cost)",
            istio,
            0.95,
            true,
        ),
        (
            "HTTP/1.1 req/s per core, Outrigger / Envoy",
            ratio(Scenario::H1Throughput, Target::Envoy),
            2.0,
            true,
        ),
        (
            "HTTP/1.1 req/s per core, Outrigger / nginx",
            ratio(Scenario::H1Throughput, Target::Nginx),
            1.0,
            true,
        ),
        (
            "added p99 at 1,000 req/s, Outrigger / Envoy",
            ratio(Scenario::H1Latency, Target::Envoy),
            0.5,
            false,
        ),
        (
            "HTTP/1.1 throughput, Outrigger / direct",
            ratio(Scenario::H1Throughput, Target::Direct),
            0.6,
            true,
        ),
        (
            "TCP throughput, Outrigger / direct",
            ratio(Scenario::TcpThroughput, Target::Direct),
            0.8,
            true,
        ),
        ("idle RSS, Outrigger / Envoy", idle, 0.2, false),
        ("RSS under load, Outrigger / Envoy", load_rss, 0.33, false),
        (
            "mTLS handshakes/s per core, Outrigger / Envoy (issue 6)",
            ratio(Scenario::MtlsHandshakes, Target::Envoy),
            1.2,
            true,
        ),
        (
            "mTLS keep-alive req/s, Outrigger / its plaintext h1-throughput (issue 6)",
            mtls_vs_plain,
            0.8,
            true,
        ),
    ];
    for (name, value, goal, higher) in rows {
        let (goal_text, met) = match (higher, value) {
            (true, v) => (format!("≥ {goal}"), v.map(|v| v.median >= goal)),
            (false, v) => (format!("≤ {goal}"), v.map(|v| v.median <= goal)),
        };
        let status = match met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "not measured",
        };
        let _ = writeln!(
            m,
            "| {name} | {} | {goal_text} | {status} |",
            spread(value, 2)
        );
    }
    m.push('\n');
}

/// Per-round ratio of peak RSS during a scenario.
fn rss_ratio(s: &ScenarioResult, t: Target, reference: Target) -> Option<Spread> {
    let v: Vec<f64> = s
        .rounds
        .iter()
        .filter_map(|round| {
            let a = round.get(&t)?.peak_rss_kib? as f64;
            let b = round.get(&reference)?.peak_rss_kib? as f64;
            (b > 0.0).then_some(a / b)
        })
        .collect();
    Spread::of(&v)
}

fn scenario_section(m: &mut String, s: &ScenarioResult, charts: &[(Scenario, String)]) {
    let sc = s.scenario;
    let _ = writeln!(m, "## {}: {}\n", sc.name(), sc.title());
    let latency = sc.metric() == Metric::Latency;
    let _ = write!(
        m,
        "| target | {} | × direct | × Envoy{} |",
        sc.unit(),
        if latency { " (added p99)" } else { "" }
    );
    if latency {
        m.push_str(" p50 µs | p90 µs | p99.9 µs |");
    }
    m.push_str(" proxy CPU s / 10k req | peak RSS MiB | errors |\n|---|---|---|---|");
    m.push_str(if latency { "---|---|---|" } else { "" });
    m.push_str("---|---|---|\n");
    for t in Target::ALL {
        let Some(value) = stats::values(s, t) else {
            continue;
        };
        // Direct adds no latency: its "added p99 × Envoy" would read as a meaningless 0.
        let vs = |reference| {
            let skip = t == reference || (latency && t == Target::Direct);
            (!skip).then(|| stats::ratio(s, t, reference)).flatten()
        };
        let digits = if latency { 0 } else { 1 };
        let _ = write!(
            m,
            "| {} | {} | {} | {} |",
            t.name(),
            spread(Some(value), digits),
            spread(vs(Target::Direct), 2),
            spread(vs(Target::Envoy), 2)
        );
        if latency {
            let pick: [fn(&crate::load::Percentiles) -> f64; 3] =
                [|p| p.p50, |p| p.p90, |p| p.p999];
            for f in pick {
                let v = stats::per_run(s, t, |run| run.measurement.latency.as_ref().map(f));
                let _ = write!(m, " {} |", spread(v, 0));
            }
        }
        let cpu = stats::per_run(s, t, |run| run.cpu_per_10k());
        let rss = stats::per_run(s, t, |run| run.peak_rss_kib.map(|k| k as f64 / 1024.0));
        let errors: u64 = s
            .rounds
            .iter()
            .filter_map(|r| r.get(&t))
            .map(|r| r.measurement.errors)
            .sum();
        let cpu = if sc.counts_requests() {
            spread(cpu, 3)
        } else {
            "–".into()
        };
        let _ = writeln!(m, " {cpu} | {} | {errors} |", spread(rss, 1));
    }
    if let Some((_, file)) = charts.iter().find(|(c, _)| *c == sc) {
        let _ = writeln!(m, "\n![{}]({file})\n", sc.name());
    }
}

/// (target, idle RSS MiB, peak RSS under HTTP/1.1 load MiB) for the proxies measured.
pub fn memory_rows(r: &Results) -> Vec<(Target, f64, Option<f64>)> {
    let h1 = find(r, Scenario::H1Throughput);
    PROXIES
        .iter()
        .filter_map(|t| {
            let idle = *r.idle_rss_kib.get(t)? as f64 / 1024.0;
            let load = h1
                .and_then(|s| {
                    stats::per_run(s, *t, |run| run.peak_rss_kib.map(|k| k as f64 / 1024.0))
                })
                .map(|s| s.median);
            Some((*t, idle, load))
        })
        .collect()
}

fn memory_section(m: &mut String, r: &Results, chart: &str) {
    let rows = memory_rows(r);
    if rows.is_empty() {
        return;
    }
    m.push_str("## Memory\n\nIdle: VmRSS 1 s after start, before any load. Under load: peak VmRSS sampled every 100 ms during the HTTP/1.1 throughput runs (median over rounds). Process and children summed (nginx master + worker).\n\n| target | idle RSS MiB | × Envoy | RSS under load MiB | × Envoy |\n|---|---|---|---|---|\n");
    let envoy = rows.iter().find(|(t, ..)| *t == Target::Envoy).copied();
    for (t, idle, load) in &rows {
        let x = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "–".into(),
        };
        let load_text = load.map_or("–".into(), |l| format!("{l:.1}"));
        let _ = writeln!(
            m,
            "| {} | {idle:.1} | {} | {load_text} | {} |",
            t.name(),
            x(Some(*idle), envoy.map(|e| e.1)),
            x(*load, envoy.and_then(|e| e.2))
        );
    }
    let _ = writeln!(m, "\n![memory]({chart})\n");
}
