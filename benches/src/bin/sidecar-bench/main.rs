//! `sidecar-bench`: Outrigger side by side with a direct connection, Envoy, nginx and HAProxy,
//! on this machine, in one run. The method (pinning, interleaved rounds, medians of per-round
//! ratios, open-loop latency) is described in `benches/README.md`.
//!
//! The same binary also hosts its helpers (upstream servers and the load generators written
//! in Rust) as hidden subcommands, so each runs as its own process pinned to its own core.

mod chart;
mod configs;
mod date;
mod load;
mod process;
mod procfs;
mod report;
mod runner;
mod scenario;
mod stats;
mod targets;
mod tools;
mod upstream;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "sidecar-bench",
    about = "Outrigger vs direct, Envoy, nginx and HAProxy"
)]
struct Cli {
    /// A few-seconds run (one round, 1 s per measurement, no warm-up) that checks the
    /// harness end to end; missing tools are skipped. Writes to a temporary directory
    /// unless --out is given.
    #[arg(long)]
    smoke: bool,
    /// Run the proxies, upstreams and load generators under SCHED_RR priority 1 (root only),
    /// for a machine shared with other work; the default as root is nice -20.
    #[arg(long)]
    realtime: bool,
    /// Interleaved rounds per scenario (each round measures every target once).
    #[arg(long)]
    rounds: Option<usize>,
    /// Seconds per measurement (the fixed-rate latency runs take 5/3 of this).
    #[arg(long)]
    seconds: Option<u64>,
    /// Only these scenarios (comma-separated names, see --list).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// List the scenarios and exit.
    #[arg(long)]
    list: bool,
    /// Where to write the report and charts (default: benches/results, or a temporary
    /// directory with --smoke).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The Outrigger binary (default: `outrigger` next to this binary, i.e. built by
    /// `cargo build --release -p outrigger` into the same target directory).
    #[arg(long)]
    outrigger: Option<PathBuf>,
    /// First of the local ports the harness uses (it takes the next 60).
    #[arg(long, default_value_t = 19000)]
    base_port: u16,
    #[command(subcommand)]
    helper: Option<Helper>,
}

/// Processes the harness starts from its own binary.
#[derive(Debug, Subcommand)]
enum Helper {
    /// HTTP/1.1 and h2c upstream answering every request with `bytes` bytes.
    #[command(hide = true)]
    UpstreamHttp {
        #[arg(long)]
        port: u16,
        #[arg(long, default_value_t = 1024)]
        bytes: usize,
    },
    /// TCP upstream that writes zeros to every connection until it closes.
    #[command(hide = true)]
    UpstreamTcp {
        #[arg(long)]
        port: u16,
    },
    /// Open-loop HTTP/1.1 generator at a fixed rate; prints a JSON result line.
    #[command(hide = true)]
    OpenLoop(load::open_loop::Args),
    /// Bulk TCP reader; prints a JSON result line.
    #[command(hide = true)]
    TcpSink(load::tcp_sink::Args),
    /// HTTP/1.1-over-mTLS client (keep-alive or a handshake per request); prints a JSON
    /// result line.
    #[command(hide = true)]
    MtlsLoad(load::mtls::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.helper {
        Some(Helper::UpstreamHttp { port, bytes }) => upstream::serve_http(port, bytes),
        Some(Helper::UpstreamTcp { port }) => upstream::serve_tcp(port),
        Some(Helper::OpenLoop(args)) => load::open_loop::main(&args),
        Some(Helper::TcpSink(args)) => load::tcp_sink::main(&args),
        Some(Helper::MtlsLoad(args)) => load::mtls::main(&args),
        None => run(cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sidecar-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.list {
        for s in scenario::Scenario::ALL {
            println!("{:<14} {}", s.name(), s.title());
        }
        println!(
            "{:<14} memory and apply time of a 1,000-cluster xDS push (xds-bench)",
            "xds"
        );
        return Ok(());
    }
    let xds_only = cli.only == ["xds"];
    if xds_only {
        let out = cli
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results"));
        return run_xds_bench(cli.smoke, cli.rounds, &out);
    }
    let only: Vec<String> = cli.only.iter().filter(|o| *o != "xds").cloned().collect();
    let plan = runner::Plan::new(
        cli.smoke,
        cli.realtime,
        cli.rounds,
        cli.seconds,
        &only,
        cli.base_port,
    )?;
    let out = match cli.out {
        Some(dir) => dir,
        None if cli.smoke => std::env::temp_dir().join("sidecar-bench-smoke"),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results"),
    };
    let outrigger = match cli.outrigger {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .map(|d| d.join("outrigger"))
            .unwrap_or_else(|| PathBuf::from("outrigger")),
    };
    let results = runner::run(&plan, &outrigger)?;
    let written = report::write(&results, &out)?;
    for path in &written {
        println!("wrote {}", path.display());
    }
    println!("{}", report::summary_line(&results));
    if cli.only.is_empty() || cli.only.iter().any(|o| o == "xds") {
        run_xds_bench(cli.smoke, cli.rounds, &out)?;
    }
    anyhow::ensure!(
        results.failure_count() == 0,
        "{} failure(s) with the tools present (see the report)",
        results.failure_count()
    );
    Ok(())
}

/// The xDS scenario: `xds-bench` (built beside this binary) in the same results directory,
/// with the same number of rounds; it needs Envoy and the release Outrigger like the rest.
fn run_xds_bench(smoke: bool, rounds: Option<usize>, out: &std::path::Path) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let xds = exe
        .parent()
        .map(|d| d.join("xds-bench"))
        .unwrap_or_else(|| PathBuf::from("xds-bench"));
    let mut command = std::process::Command::new(&xds);
    if smoke {
        command.arg("--smoke");
    } else {
        command
            .arg("--out")
            .arg(out.join(format!("{}-xds.md", date::today())));
        if let Some(r) = rounds {
            command.arg("--rounds").arg(r.to_string());
        }
    }
    println!("sidecar-bench: xDS push (xds-bench) ...");
    let status = command.status().map_err(|e| {
        anyhow::anyhow!(
            "cannot run {} ({e}); build it with `cargo build --release -p benches`",
            xds.display()
        )
    })?;
    anyhow::ensure!(status.success(), "xds-bench failed: {status}");
    Ok(())
}
