//! pilot-agent's lifecycle subcommands on the real `outrigger` binary: `request` prints what a
//! local admin answers (and refuses ports outside pilot-agent's list), `wait` succeeds once a
//! readiness URL answers 200 and fails after its timeout when nothing does.

use std::process::Command;
use std::time::Duration;
use tests::bootstraps::http_and_tcp;
use tests::process::{self, Finished};
use tests::{fixed_ports, free_port, outrigger, Kind, RunningProxy, Upstream};

fn run(args: &[&str]) -> Finished {
    let mut command = Command::new(outrigger().path);
    command.args(args);
    process::run(&mut command, Duration::from_secs(20)).expect("outrigger runs")
}

fn code(f: &Finished) -> Option<i32> {
    f.status.and_then(|s| s.code())
}

#[test]
fn request_prints_the_admin_answer_on_the_default_port() {
    // pilot-agent only lets `request` reach 15000, 15004, 15020 and 15021: the proxy must sit
    // on the real admin port.
    let _lock = fixed_ports::lock(&[15000], Duration::from_secs(60));
    let upstream = Upstream::start("backend\n");
    let (_, ports) = http_and_tcp(upstream.port());
    let bootstrap = ports
        .with("admin_port", 15000)
        .render(tests::bootstraps::HTTP_AND_TCP);
    let _proxy = RunningProxy::start(Kind::Outrigger, &bootstrap, &[]);

    let f = run(&["request", "GET", "server_info"]);
    assert_eq!(code(&f), Some(0), "{}", f.stderr);
    let info: serde_json::Value = serde_json::from_str(&f.stdout).expect("stdout is the JSON");
    assert_eq!(info["state"], "LIVE");

    // A 404 is printed and not an error (pilot-agent's rule); the path may start with '/'.
    let f = run(&["request", "--debug-port=15000", "GET", "/nope"]);
    assert_eq!(code(&f), Some(0), "{}", f.stderr);
    assert!(f.stdout.starts_with("invalid path."), "{}", f.stdout);

    // Other failures exit 255 with the status and body on stderr; stdout stays clean.
    let f = run(&["request", "GET", "quitquitquit"]);
    assert_eq!(code(&f), Some(255));
    assert_eq!(f.stdout, "");
    assert!(
        f.stderr.contains(
            "received unsuccessful status code 405: Method GET not allowed, POST required."
        ),
        "{}",
        f.stderr
    );
}

#[test]
fn request_refuses_ports_outside_the_list() {
    let f = run(&["request", "--debug-port", "8080", "GET", "server_info"]);
    assert_eq!(code(&f), Some(255));
    assert!(
        f.stderr
            .contains("debug port 8080 is not in allowed list [15000 15004 15020 15021]"),
        "{}",
        f.stderr
    );
    let f = run(&["request", "GET"]);
    assert_eq!(code(&f), Some(255), "{}", f.stderr);
}

#[test]
fn wait_succeeds_when_ready_and_times_out_when_nothing_listens() {
    let upstream = Upstream::start("backend\n");
    let (bootstrap, _) = http_and_tcp(upstream.port());
    let proxy = RunningProxy::start(Kind::Outrigger, &bootstrap, &[]);
    let url = proxy.url("/ready");
    let f = run(&["wait", "--url", &url, "--periodMillis", "100"]);
    assert_eq!(code(&f), Some(0), "{}\n{}", f.stdout, f.stderr);
    assert!(f.stdout.contains("Envoy is ready!"), "{}", f.stdout);

    let nothing = format!("http://127.0.0.1:{}/healthz/ready", free_port());
    let f = run(&[
        "wait",
        "--url",
        &nothing,
        "--timeoutSeconds=1",
        "--periodMillis=100",
    ]);
    assert_eq!(code(&f), Some(255), "{}", f.stdout);
    assert!(
        f.stderr
            .contains("timeout waiting for Envoy proxy to become ready. Last error: dial tcp"),
        "{}",
        f.stderr
    );
    assert!(f.elapsed < Duration::from_secs(5), "{:?}", f.elapsed);

    // A non-200 answer is not ready either.
    let f = run(&[
        "wait",
        "--url",
        &proxy.url("/nope"),
        "--timeoutSeconds=1",
        "--periodMillis=100",
    ]);
    assert_eq!(code(&f), Some(255));
    assert!(
        f.stderr.contains("Last error: HTTP status code 404"),
        "{}",
        f.stderr
    );
}
