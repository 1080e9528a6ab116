//! A control plane that fails its streams again and again (istiod restarting, or closing
//! streams at its maximum connection age): a stream that delivered responses resets the
//! reconnect backoff, so every reconnect comes after the base interval, never after the
//! doubled ones of a control plane that stays down. Envoy does the same (its backoff is reset
//! on every message received).
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol (the xDS stream,
//! reconnects with jittered exponential backoff).

use std::time::{Duration, Instant};
use tests::control_plane::ControlPlane;
use tests::curl::body_becomes;
use tests::xds_resources::{ads_bootstrap, serve_backend};
use tests::{envoy_or_skip, free_port, Kind, RunningProxy, Upstream};

const FAILURES: usize = 6;

/// The time from each stream failure to the next stream's first request, and the
/// subscriptions' `update_failure` counters after them all.
fn reconnect_delays(kind: Kind, delta: bool) -> (Vec<Duration>, Vec<String>) {
    let up = Upstream::start("one");
    let cp = ControlPlane::start();
    let port = free_port();
    serve_backend(&cp, up.port(), port);
    let proxy = RunningProxy::start(kind, &ads_bootstrap(free_port(), cp.port(), delta), &[]);
    let url = format!("http://127.0.0.1:{port}/");
    assert_eq!(
        body_becomes(&url, "200 one", Duration::from_secs(10)),
        "200 one"
    );
    let mut delays = Vec::new();
    for _ in 0..FAILURES {
        let stream = cp.streams();
        // The stream has delivered a response (the proxy answered one on it) before it fails.
        cp.wait_for(Duration::from_secs(10), "an answer on the stream", |r| {
            r.iter().any(|r| r.stream == stream && r.answers())
        });
        let failed = Instant::now();
        cp.fail_streams();
        cp.wait_for(Duration::from_secs(40), "a new stream", |r| {
            r.iter().any(|r| r.stream > stream)
        });
        delays.push(failed.elapsed());
    }
    assert_eq!(
        body_becomes(&url, "200 one", Duration::from_secs(10)),
        "200 one"
    );
    let failures = proxy
        .get("/stats")
        .body
        .lines()
        .filter(|l| l.contains("update_failure"))
        .map(str::to_string)
        .collect();
    (delays, failures)
}

/// Full jitter over a 500 ms base puts each reconnect within about half a second; without the
/// reset the fourth to sixth would be drawn from up to 4, 8 and 16 s. The bound leaves room
/// for a busy machine.
fn check(kind: Kind, delta: bool) -> Vec<String> {
    let (delays, failures) = reconnect_delays(kind, delta);
    let slowest = delays.iter().max().copied().unwrap_or_default();
    assert!(
        slowest < Duration::from_millis(2000),
        "{kind:?} (delta {delta}): a reconnect after a stream that delivered responses waited \
         {slowest:?}; all: {delays:?}"
    );
    failures
}

#[test]
fn a_failed_stream_that_delivered_responses_reconnects_at_the_base_backoff_like_envoy() {
    let ours = [check(Kind::Outrigger, false), check(Kind::Outrigger, true)];
    let Some(_) = envoy_or_skip("xds_reconnect") else {
        return;
    };
    let envoy = [check(Kind::Envoy, false), check(Kind::Envoy, true)];
    // Every subscription counts each failed stream in its update_failure, as Envoy's do.
    assert_eq!(
        ours, envoy,
        "update_failure: Outrigger (left), Envoy (right)"
    );
}

/// A stream the control plane closes cleanly (status OK) is counted in the subscriptions'
/// `update_failure` as Envoy counts it.
#[test]
fn a_cleanly_closed_stream_is_counted_like_envoy() {
    let run = |kind: Kind| -> Vec<String> {
        let up = Upstream::start("one");
        let cp = ControlPlane::start();
        let port = free_port();
        serve_backend(&cp, up.port(), port);
        let proxy = RunningProxy::start(kind, &ads_bootstrap(free_port(), cp.port(), true), &[]);
        let url = format!("http://127.0.0.1:{port}/");
        assert_eq!(
            body_becomes(&url, "200 one", Duration::from_secs(10)),
            "200 one"
        );
        cp.drop_streams();
        cp.wait_for(Duration::from_secs(40), "an answer on a new stream", |r| {
            r.iter().any(|r| r.stream > 1 && r.answers())
        });
        proxy
            .get("/stats")
            .body
            .lines()
            .filter(|l| l.contains("update_failure"))
            .map(str::to_string)
            .collect()
    };
    let ours = run(Kind::Outrigger);
    let Some(_) = envoy_or_skip("xds_reconnect") else {
        return;
    };
    assert_eq!(ours, run(Kind::Envoy), "Outrigger (left), Envoy (right)");
}
