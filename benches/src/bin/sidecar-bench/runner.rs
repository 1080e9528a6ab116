//! One run: start the upstreams and every target, read idle memory, then for each scenario
//! measure every target once per round, in an order that rotates each round, recording the
//! proxy's CPU time and peak memory alongside each measurement.

use crate::load::{self, Measurement};
use crate::process::{Pinning, Priority, Spawned, LOAD_CORE};
use crate::procfs;
use crate::scenario::{Job, Scenario};
use crate::targets::{self, Running, Target};
use crate::tools::Found;
use anyhow::{bail, Context};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// How long and how often to measure.
#[derive(Debug, Clone)]
pub struct Plan {
    pub smoke: bool,
    pub rounds: usize,
    pub run: Duration,
    /// Fixed-rate latency runs are longer: p99.9 needs samples.
    pub latency_run: Duration,
    pub warmup: Option<Duration>,
    pub scenarios: Vec<Scenario>,
    pub job: Job,
    /// Run everything measured under SCHED_RR (see `Priority::Realtime`).
    pub realtime: bool,
}

impl Plan {
    pub fn new(
        smoke: bool,
        realtime: bool,
        rounds: Option<usize>,
        seconds: Option<u64>,
        only: &[String],
        base_port: u16,
    ) -> anyhow::Result<Self> {
        let scenarios = if only.is_empty() {
            Scenario::ALL.to_vec()
        } else {
            only.iter()
                .map(|n| {
                    Scenario::by_name(n).with_context(|| format!("no scenario `{n}` (see --list)"))
                })
                .collect::<anyhow::Result<_>>()?
        };
        let seconds = seconds.unwrap_or(if smoke { 1 } else { 3 }).max(1);
        let run = Duration::from_secs(seconds);
        Ok(Self {
            smoke,
            rounds: rounds.unwrap_or(if smoke { 1 } else { 5 }).max(1),
            run,
            latency_run: run.mul_f64(5.0 / 3.0),
            warmup: (!smoke).then_some(Duration::from_secs(1)),
            scenarios,
            job: Job::new(base_port),
            realtime,
        })
    }
}

/// One measurement of one target, with what the proxy spent on it.
#[derive(Debug, Clone)]
pub struct Run {
    pub measurement: Measurement,
    /// Proxy CPU seconds (user + system) during the run; None for direct.
    pub cpu_seconds: Option<f64>,
    /// Proxy peak RSS during the run, KiB; None for direct.
    pub peak_rss_kib: Option<u64>,
}

impl Run {
    pub fn cpu_per_10k(&self) -> Option<f64> {
        let cpu = self.cpu_seconds?;
        (self.measurement.requests > 0).then(|| cpu * 10_000.0 / self.measurement.requests as f64)
    }
}

#[derive(Debug, Clone)]
pub struct ScenarioResult {
    pub scenario: Scenario,
    pub rounds: Vec<BTreeMap<Target, Run>>,
    /// Targets this scenario cannot run on here (a missing module), with why.
    pub skipped: Vec<String>,
    /// Measurements that failed: a harness or proxy problem, never expected.
    pub failures: Vec<String>,
}

#[derive(Debug)]
pub struct Results {
    pub plan: Plan,
    pub environment: Vec<(String, String)>,
    /// Missing tools, and what they leave out.
    pub skipped: Vec<String>,
    /// Targets whose tools are present but that did not start.
    pub failures: Vec<String>,
    pub idle_rss_kib: BTreeMap<Target, u64>,
    pub scenarios: Vec<ScenarioResult>,
    pub elapsed: Duration,
}

pub fn run(plan: &Plan, outrigger: &Path) -> anyhow::Result<Results> {
    let started = std::time::Instant::now();
    let found = Found::probe();
    let mut skipped = found.missing.clone();
    for line in &skipped {
        eprintln!("sidecar-bench: {line}");
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pinning = Pinning {
        enabled: found.path("taskset").is_some() && cpus >= 2,
        priority: match (nix::unistd::geteuid().is_root(), plan.realtime) {
            (true, true) => Priority::Realtime,
            (true, false) => Priority::Nice,
            (false, true) => bail!("--realtime needs root (SCHED_RR)"),
            (false, false) => Priority::Normal,
        },
    };
    let load_before = load_average();
    if !pinning.enabled {
        if !plan.smoke {
            bail!("pinning needs `taskset` (apt-get install util-linux) and 2 CPUs (found {cpus})");
        }
        eprintln!("sidecar-bench: running unpinned (smoke mode)");
    }
    let dir = std::env::temp_dir().join(format!("sidecar-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let job = &plan.job;
    let _upstreams = start_upstreams(job, pinning, &dir)?;

    let starter = Starter {
        job,
        found: &found,
        outrigger,
        pinning,
        dir: &dir,
    };
    let mut running = Vec::new();
    let mut failures = Vec::new();
    for target in Target::ALL {
        if let Some(why) = targets::missing(target, &found, outrigger) {
            eprintln!("sidecar-bench: {} skipped: {why}", target.name());
            skipped.push(format!("{} skipped: {why}", target.name()));
            continue;
        }
        match starter.start(target) {
            Ok(r) => running.push(r),
            Err(e) => {
                let line = format!("{} did not start: {e:#}", target.name());
                eprintln!("sidecar-bench: {line}");
                failures.push(line);
            }
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    let idle_rss_kib = running
        .iter()
        .filter(|r| r.process.is_some())
        .map(|r| (r.target, procfs::rss_kib(&r.pids)))
        .collect();

    let env = load::Env {
        found: &found,
        pinning,
    };
    let mut scenarios = Vec::new();
    for &scenario in &plan.scenarios {
        if let Some(tool) = scenario.tool().filter(|t| found.path(t).is_none()) {
            skipped.push(format!("{} skipped: `{tool}` not found", scenario.name()));
            continue;
        }
        eprintln!("sidecar-bench: {} ...", scenario.title());
        scenarios.push(run_scenario(plan, scenario, &mut running, &env, &starter));
    }
    let mut environment = crate::report::environment(&found, outrigger, pinning);
    environment.push((
        "load average (1 min) before / after".into(),
        format!(
            "{load_before} / {} (other work on the machine shows here)",
            load_average()
        ),
    ));
    drop(running);
    let results = Results {
        plan: plan.clone(),
        environment,
        skipped,
        failures,
        idle_rss_kib,
        scenarios,
        elapsed: started.elapsed(),
    };
    // Keep the configurations and logs when something failed: they are the diagnosis.
    if results.failure_count() == 0 {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!(
            "sidecar-bench: configurations and logs kept in {}",
            dir.display()
        );
    }
    Ok(results)
}

fn start_upstreams(job: &Job, pinning: Pinning, dir: &Path) -> anyhow::Result<Vec<Spawned>> {
    let exe = std::env::current_exe()?.display().to_string();
    let mut out = Vec::new();
    let http = job.http_endpoints.iter().map(|p| ("upstream-http", *p));
    let tcp = job.tcp_endpoints.iter().map(|p| ("upstream-tcp", *p));
    for (kind, port) in http.chain(tcp) {
        let mut command = pinning.command(LOAD_CORE, &exe);
        command.args([kind, "--port", &port.to_string()]);
        if kind == "upstream-http" {
            command.args(["--bytes", &job.response_bytes.to_string()]);
        }
        let name = format!("{kind}-{port}");
        let mut p = Spawned::start(&name, command, &dir.join(format!("{name}.log")))?;
        p.wait_listening(
            SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(5),
        )?;
        out.push(p);
    }
    Ok(out)
}

/// What starting (or restarting) a target needs.
struct Starter<'a> {
    job: &'a Job,
    found: &'a Found,
    outrigger: &'a Path,
    pinning: Pinning,
    dir: &'a Path,
}

impl Starter<'_> {
    fn start(&self, target: Target) -> anyhow::Result<Running> {
        targets::start(
            target,
            self.job,
            self.found,
            self.outrigger,
            self.pinning,
            self.dir,
        )
    }

    /// Restarts `running` if its process has exited (something outside the harness may stop
    /// it on a shared machine); the restart is reported as a failure of that round.
    fn revive(&self, running: &mut Running) -> Option<String> {
        let process = running.process.as_mut()?;
        let why = process.check_alive().err()?;
        let restarted = match self.start(running.target) {
            Ok(fresh) => {
                *running = fresh;
                "restarted"
            }
            Err(_) => "could not restart",
        };
        Some(format!("{why:#}; {restarted}"))
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_default()
}

fn run_scenario(
    plan: &Plan,
    scenario: Scenario,
    running: &mut [Running],
    env: &load::Env<'_>,
    starter: &Starter<'_>,
) -> ScenarioResult {
    let mut result = ScenarioResult {
        scenario,
        rounds: Vec::new(),
        skipped: Vec::new(),
        failures: Vec::new(),
    };
    let listener = scenario.listener();
    let mut active: Vec<usize> = Vec::new();
    for (i, r) in running.iter().enumerate() {
        match r.serves(listener) {
            Ok(()) => active.push(i),
            Err(why) => result.skipped.push(format!("{}: {why}", r.target.name())),
        }
    }
    let duration = match scenario {
        Scenario::H1Latency => plan.latency_run,
        _ => plan.run,
    };
    if let Some(warmup) = plan.warmup {
        for &i in &active {
            let addr = running[i].target.addr(&plan.job, listener);
            let _ = load::measure(scenario, addr, warmup, env, &plan.job);
        }
    }
    for round in 0..plan.rounds {
        let mut measured = BTreeMap::new();
        let n = active.len().max(1);
        for k in 0..active.len() {
            let i = active[(k + round) % n];
            let target = &mut running[i];
            if let Some(why) = starter.revive(target) {
                let line = format!("{} before round {}: {why}", target.target.name(), round + 1);
                eprintln!("sidecar-bench: {line}");
                result.failures.push(line);
            }
            match measure_once(plan, scenario, target, duration, env) {
                Ok(run) => {
                    measured.insert(target.target, run);
                }
                Err(e) => {
                    let line = format!("{} round {}: {e:#}", target.target.name(), round + 1);
                    eprintln!("sidecar-bench: {line}");
                    result.failures.push(line);
                }
            }
            // Let closed connections and the proxy's timers settle before the next target.
            std::thread::sleep(Duration::from_millis(300));
        }
        result.rounds.push(measured);
    }
    result
}

fn measure_once(
    plan: &Plan,
    scenario: Scenario,
    target: &mut Running,
    duration: Duration,
    env: &load::Env<'_>,
) -> anyhow::Result<Run> {
    if let Some(p) = target.process.as_mut() {
        p.check_alive()?;
    }
    let proxied = target.process.is_some();
    let pids = target.pids.clone();
    let cpu_before = procfs::cpu_seconds(&pids);
    let peak = proxied.then(|| procfs::PeakRss::start(pids.clone()));
    let addr = target.target.addr(&plan.job, scenario.listener());
    let measurement = load::measure(scenario, addr, duration, env, &plan.job);
    let peak_rss_kib = peak.map(procfs::PeakRss::finish);
    let cpu_seconds = proxied.then(|| procfs::cpu_seconds(&pids) - cpu_before);
    let measurement = measurement?;
    if measurement.requests == 0 && scenario.counts_requests() {
        bail!("no successful request ({} errors)", measurement.errors);
    }
    Ok(Run {
        measurement,
        cpu_seconds,
        peak_rss_kib,
    })
}

impl Results {
    /// Everything that went wrong with tools present: startup failures and failed runs.
    pub fn failure_count(&self) -> usize {
        self.failures.len()
            + self
                .scenarios
                .iter()
                .map(|s| s.failures.len())
                .sum::<usize>()
    }
}
