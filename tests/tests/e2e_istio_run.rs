//! Istio's sidecar bootstrap goldens, served: each golden with its fixed ports rewritten to free
//! ones (admin 15000/15005 and the `prometheus_stats` cluster that points at it, listeners
//! 15090/15021/15091/15092, the agent's 15020), started with pilot-agent's flags. Its static
//! listeners bind, `/stats/prometheus` on the 15090 listener is the admin's Prometheus text
//! (routed through `prometheus_stats`), and `/healthz/ready` on the 15021 listener answers as
//! Envoy does when the agent (15020) is not running: 503.
//!
//! Goldens run in parallel, a few at a time, to keep the file well under a minute.

use serde_json::Value;
use std::fs;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use tests::istio::{self, SidecarPorts, PILOT_AGENT_FLAGS};
use tests::{curl, envoy_or_skip, parallel, Kind, RunningProxy};

/// Istio's fixed listener ports found in `golden`, in order.
fn listener_ports(golden: &str) -> Vec<u64> {
    let doc: Value = serde_json::from_str(golden).expect("a golden is JSON");
    doc["static_resources"]["listeners"]
        .as_array()
        .map(|ls| {
            ls.iter()
                .filter_map(|l| l["address"]["socket_address"]["port_value"].as_u64())
                .collect()
        })
        .unwrap_or_default()
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn check_golden(path: &Path) {
    let golden = fs::read_to_string(path).expect("read the golden");
    let ports = SidecarPorts::allocate();
    // With the agent down there is no control plane: like Envoy, Outrigger would wait for it
    // forever with the goldens' `initial_fetch_timeout: 0s`, so the wait is shortened.
    let proxy = RunningProxy::start(
        Kind::Outrigger,
        &istio::with_initial_fetch_timeout(&istio::rewrite(&golden, &ports), "0.1s"),
        PILOT_AGENT_FLAGS,
    );
    let fixed = listener_ports(&golden);
    assert!(
        fixed.contains(&15090) && fixed.contains(&15021),
        "the golden has the 15090 and 15021 listeners: {fixed:?}"
    );
    for port in fixed {
        let port = match port {
            15090 => ports.prometheus,
            15021 => ports.status,
            15091 => ports.secure_metrics,
            15092 => ports.secure_agent_metrics,
            other => panic!("a listener on an unexpected port {other}"),
        };
        assert!(
            curl::connects(local(port)),
            "the listener for {port} does not accept connections\n{}",
            proxy.logs_for_failure()
        );
    }

    let prom = curl::get(&format!(
        "http://{}/stats/prometheus",
        local(ports.prometheus)
    ));
    assert_eq!(
        prom.status,
        200,
        "/stats/prometheus on the 15090 listener: {prom:?}\n{}",
        proxy.logs_for_failure()
    );
    assert!(
        prom.body.lines().any(|l| l.starts_with("# TYPE envoy_")),
        "/stats/prometheus on the 15090 listener is not the admin's Prometheus text:\n{}",
        prom.body
    );

    let ready = curl::get(&format!("http://{}/healthz/ready", local(ports.status)));
    assert_eq!(
        ready.status,
        503,
        "/healthz/ready with the agent down: {ready:?}\n{}",
        proxy.logs_for_failure()
    );
}

#[test]
fn istio_goldens_serve_their_static_listeners() {
    let goldens = istio::goldens();
    assert!(
        goldens.len() >= 30,
        "expected the 30 Istio goldens, found {}",
        goldens.len()
    );
    let outcomes = parallel::map(&goldens, parallel::default_workers(), |path| {
        catch_unwind(AssertUnwindSafe(|| check_golden(path))).map_err(|panic| {
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panicked".into())
        })
    });
    let problems: Vec<String> = goldens
        .iter()
        .zip(outcomes)
        .filter_map(|(path, outcome)| outcome.err().map(|e| format!("{}: {e}", name(path))))
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// `/healthz/ready` on the 15021 listener of `default_golden.json`, from `kind`. Envoy waits
/// forever for a control plane with the golden's `initial_fetch_timeout: 0s`, never binding its
/// listeners; both get 100 ms, after which Envoy goes LIVE on the static part.
fn healthz_ready(kind: Kind) -> curl::Response {
    let path: PathBuf = istio::goldens_dir().join("default_golden.json");
    let golden = fs::read_to_string(&path).expect("read default_golden.json");
    let ports = SidecarPorts::allocate();
    let bootstrap = istio::with_initial_fetch_timeout(&istio::rewrite(&golden, &ports), "0.1s");
    let _proxy = RunningProxy::start(kind, &bootstrap, PILOT_AGENT_FLAGS);
    curl::get(&format!("http://{}/healthz/ready", local(ports.status)))
}

#[test]
fn healthz_ready_status_matches_envoy_when_the_agent_is_down() {
    let ours = healthz_ready(Kind::Outrigger);
    let Some(_) = envoy_or_skip("healthz_ready_status_matches_envoy_when_the_agent_is_down") else {
        return;
    };
    let envoy = healthz_ready(Kind::Envoy);
    assert_eq!(envoy.status, 503, "Envoy: {envoy:?}");
    assert_eq!(
        ours.status, envoy.status,
        "outrigger: {ours:?}\nenvoy: {envoy:?}"
    );
    assert_eq!(
        ours.header("content-type"),
        envoy.header("content-type"),
        "outrigger: {ours:?}\nenvoy: {envoy:?}"
    );
}

#[test]
fn healthz_ready_body_matches_envoy_when_the_agent_is_down() {
    let Some(_) = envoy_or_skip("healthz_ready_body_matches_envoy_when_the_agent_is_down") else {
        return;
    };
    let (ours, envoy) = (healthz_ready(Kind::Outrigger), healthz_ready(Kind::Envoy));
    assert_eq!(
        ours.body, envoy.body,
        "outrigger: {ours:?}\nenvoy: {envoy:?}"
    );
}
