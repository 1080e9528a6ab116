//! Load generators, each run as a process pinned to the load core: wrk and h2load (external),
//! and three written here: an open-loop fixed-rate HTTP/1.1 generator, a TCP bulk reader and
//! an HTTP/1.1-over-mTLS client.

pub mod h2load;
pub mod http1;
pub mod mtls;
pub mod open_loop;
pub mod tcp_sink;
pub mod wrk;

use crate::process::{Pinning, LOAD_CORE};
use crate::scenario::Scenario;
use crate::tools::Found;
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
}

/// One measurement of one target.
#[derive(Debug, Clone, Default)]
pub struct Measurement {
    /// The scenario's headline number (see `Scenario::unit`).
    pub value: f64,
    /// Requests (or connections) completed; 0 for TCP.
    pub requests: u64,
    /// Failed requests, non-2xx responses and socket errors.
    pub errors: u64,
    pub latency: Option<Percentiles>,
}

/// What a run needs to start a load generator.
#[derive(Debug, Clone)]
pub struct Env<'a> {
    pub found: &'a Found,
    pub pinning: Pinning,
}

/// Runs `scenario`'s load against `addr` for `duration`.
pub fn measure(
    scenario: Scenario,
    addr: SocketAddr,
    duration: Duration,
    env: &Env<'_>,
    job: &crate::scenario::Job,
) -> anyhow::Result<Measurement> {
    let tool = |name: &str| {
        env.found
            .program(name)
            .with_context(|| format!("`{name}` not found"))
    };
    match scenario {
        Scenario::H1Throughput => wrk::run(&tool("wrk")?, env.pinning, addr, 50, duration, false),
        Scenario::NewConnections => wrk::run(&tool("wrk")?, env.pinning, addr, 16, duration, true),
        Scenario::H2Streams => h2load::run(&tool("h2load")?, env.pinning, addr, 100, duration),
        Scenario::H1Latency => helper(
            env.pinning,
            open_loop::command_args(addr, 1000, 16, duration),
        ),
        Scenario::TcpThroughput => helper(env.pinning, tcp_sink::command_args(addr, 4, duration)),
        // As h1-throughput and new-conns measure plaintext (50 keep-alive, 16 closing).
        Scenario::MtlsThroughput => helper(
            env.pinning,
            mtls::command_args(addr, 50, duration, false, &job.tls),
        ),
        Scenario::MtlsHandshakes => helper(
            env.pinning,
            mtls::command_args(addr, 16, duration, true, &job.tls),
        ),
    }
}

/// Runs this binary's helper subcommand on the load core and reads its JSON line.
fn helper(pinning: Pinning, args: Vec<String>) -> anyhow::Result<Measurement> {
    let exe = std::env::current_exe()?;
    let mut command = pinning.command(LOAD_CORE, &exe.display().to_string());
    let output = command
        .args(&args)
        .output()
        .context("cannot run the helper")?;
    if !output.status.success() {
        bail!(
            "{} failed: {}",
            args.first().map(String::as_str).unwrap_or("helper"),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let line = String::from_utf8_lossy(&output.stdout);
    let report: HelperReport = serde_json::from_str(line.trim())
        .with_context(|| format!("unreadable helper output: {line}"))?;
    Ok(Measurement {
        value: report.value,
        requests: report.requests,
        errors: report.errors,
        latency: report.latency,
    })
}

/// The line a helper prints on stdout.
#[derive(Debug, Serialize, Deserialize)]
pub struct HelperReport {
    pub value: f64,
    pub requests: u64,
    pub errors: u64,
    pub latency: Option<Percentiles>,
}

/// Runs an external generator on the load core and returns its stdout.
fn run_tool(pinning: Pinning, program: &str, args: &[String]) -> anyhow::Result<String> {
    let mut command = pinning.command(LOAD_CORE, program);
    let output = command
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "{program} failed ({}): {}{}",
            output.status,
            stdout.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(stdout)
}

/// Whole seconds for tools that take them, at least 1.
fn whole_seconds(d: Duration) -> u64 {
    d.as_secs().max(1)
}
