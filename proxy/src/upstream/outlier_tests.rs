//! The detector's arithmetic with explicit clocks: thresholds, ejection times growing and
//! shrinking with the backoff, the ejection budget, enforcement and the rate-based kinds.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/outlier

use super::*;
use crate::config::address::Endpoint;
use crate::config::outlier::translate;
use crate::upstream::HostStats;
use xds_proto::pb::envoy::config::cluster::v3::Cluster as ProtoCluster;

fn host(port: u16) -> Arc<Host> {
    Arc::new(Host {
        address: Endpoint::Tcp(([127, 0, 0, 1], port).into()),
        hostname: String::new(),
        weight: 1,
        priority: 0,
        locality: Default::default(),
        authority: format!("127.0.0.1:{port}").parse().expect("authority"),
        transport: crate::upstream::transport::Transport::Plain,
        stats: HostStats::default(),
        health: Default::default(),
        pools: Default::default(),
        istio_peer: None,
    })
}

fn hosts(n: u16) -> Vec<Arc<Host>> {
    (1..=n).map(host).collect()
}

fn detector(yaml: &str) -> (Detector, Arc<Store>) {
    let cluster: ProtoCluster = xds_proto::parse_document(
        &format!("{{ name: c, outlier_detection: {yaml} }}"),
        xds_proto::DocumentFormat::Yaml,
        xds_proto::ParseOptions::default(),
    )
    .expect("outlier yaml")
    .value;
    let proto = cluster.outlier_detection.unwrap_or_default();
    let config = translate(&proto, &crate::config::error::FieldPath::root("od")).expect("valid");
    let store = Arc::new(Store::default());
    (Detector::new(config, &store, "cluster.c."), store)
}

fn stat(store: &Store, name: &str) -> u64 {
    store
        .counter(&format!("cluster.c.outlier_detection.{name}"))
        .value()
}

/// Hands the detector the thresholds the requests reached, as its task does.
fn drain(d: &Detector, hs: &[Arc<Host>], now: Instant) -> usize {
    let mut guard = d.receiver.lock().expect("receiver");
    let rx = guard.as_mut().expect("not taken");
    let mut n = 0;
    while let Ok((host, kind)) = rx.try_recv() {
        d.on_consecutive(&host, kind, hs, now);
        n += 1;
    }
    n
}

fn ejected(h: &Host) -> bool {
    h.health.has(HealthFlag::FailedOutlierCheck)
}

fn fail(d: &Detector, h: &Arc<Host>, n: usize, code: u16) {
    for _ in 0..n {
        d.report(h, HostResult::Http(code));
    }
}

#[test]
fn five_consecutive_5xx_eject_and_a_success_resets_the_count() {
    let (d, store) = detector("{ max_ejection_percent: 100 }");
    let hs = hosts(2);
    let t0 = Instant::now();
    fail(&d, &hs[0], 4, 500);
    d.report(&hs[0], HostResult::Http(200));
    fail(&d, &hs[0], 4, 500);
    assert_eq!(drain(&d, &hs, t0), 0);
    assert!(!ejected(&hs[0]));
    fail(&d, &hs[0], 1, 500);
    assert_eq!(drain(&d, &hs, t0), 1);
    assert!(ejected(&hs[0]));
    assert_eq!(stat(&store, "ejections_detected_consecutive_5xx"), 1);
    assert_eq!(stat(&store, "ejections_enforced_consecutive_5xx"), 1);
    assert_eq!(stat(&store, "ejections_enforced_total"), 1);
    assert_eq!(stat(&store, "ejections_total"), 1);
    assert_eq!(
        store
            .gauge("cluster.c.outlier_detection.ejections_active")
            .value(),
        1
    );
}

#[test]
fn ejection_time_grows_with_ejections_up_to_the_maximum_and_shrinks_while_healthy() {
    let (d, _) = detector(
        "{ max_ejection_percent: 100, interval: 1s, base_ejection_time: 10s, max_ejection_time: 25s }",
    );
    let hs = hosts(1);
    let h = &hs[0];
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    // Ejected at t0 for 10 s: still out at 9 s, back at 10 s.
    assert!(d.eject(h, Ejection::Consecutive5xx, &hs, t0));
    assert!(!d.on_interval(&hs, at(9)));
    assert!(ejected(h));
    assert!(d.on_interval(&hs, at(10)));
    assert!(!ejected(h));
    // Ejected again before any healthy sweep: 2 x base.
    assert!(d.eject(h, Ejection::Consecutive5xx, &hs, at(10)));
    assert!(!d.on_interval(&hs, at(29)));
    assert!(d.on_interval(&hs, at(30)));
    // Third time: 3 x base = 30 s, capped at max_ejection_time (25 s).
    assert!(d.eject(h, Ejection::Consecutive5xx, &hs, at(30)));
    assert!(!d.on_interval(&hs, at(54)));
    assert!(d.on_interval(&hs, at(55)));
    // Each healthy sweep takes one step off the multiplier (3 -> 1 after two sweeps)...
    d.on_interval(&hs, at(56));
    d.on_interval(&hs, at(57));
    // ... so the next ejection lasts 2 x base.
    assert!(d.eject(h, Ejection::Consecutive5xx, &hs, at(57)));
    assert!(!d.on_interval(&hs, at(76)));
    assert!(d.on_interval(&hs, at(77)));
}

#[test]
fn the_ejection_budget_counts_overflows() {
    // Default 10%: with two hosts, ejecting one would make 50% ejected, so none may go.
    let (d, store) = detector("{}");
    let hs = hosts(2);
    let t0 = Instant::now();
    fail(&d, &hs[0], 5, 503);
    fail(&d, &hs[1], 5, 503);
    drain(&d, &hs, t0);
    assert!(!ejected(&hs[0]) && !ejected(&hs[1]));
    // 503 is also a gateway error: both runs are detected, and the budget refuses both
    // before enforcement is considered.
    assert_eq!(stat(&store, "ejections_overflow"), 4);
    assert_eq!(
        stat(&store, "ejections_detected_consecutive_gateway_failure"),
        2
    );
    assert_eq!(stat(&store, "ejections_detected_consecutive_5xx"), 2);
    // 50% of four: two fit (25% and 50% after each), the third does not (75%).
    let (d, store) = detector("{ max_ejection_percent: 50 }");
    let hs = hosts(4);
    for h in &hs {
        fail(&d, h, 5, 500);
    }
    drain(&d, &hs, t0);
    assert_eq!(hs.iter().filter(|h| ejected(h)).count(), 2);
    assert_eq!(stat(&store, "ejections_overflow"), 2);
    // always_eject_one_host lets one go whatever the percentage.
    let (d, _) = detector("{ max_ejection_percent: 0, always_eject_one_host: true }");
    let hs = hosts(2);
    fail(&d, &hs[0], 5, 500);
    fail(&d, &hs[1], 5, 500);
    drain(&d, &hs, t0);
    assert_eq!(hs.iter().filter(|h| ejected(h)).count(), 1);
}

#[test]
fn enforcement_percentages_gate_ejection_but_not_detection() {
    // Gateway failures are detected by default but enforced at 0%.
    let (d, store) = detector("{ consecutive_5xx: 100, max_ejection_percent: 100 }");
    let hs = hosts(1);
    fail(&d, &hs[0], 5, 502);
    drain(&d, &hs, Instant::now());
    assert!(!ejected(&hs[0]));
    assert_eq!(
        stat(&store, "ejections_detected_consecutive_gateway_failure"),
        1
    );
    assert_eq!(
        stat(&store, "ejections_enforced_consecutive_gateway_failure"),
        0
    );
    // A 500 is a 5xx but not a gateway error: it breaks the gateway run.
    let (d, store) = detector(
        "{ consecutive_5xx: 100, enforcing_consecutive_gateway_failure: 100, max_ejection_percent: 100 }",
    );
    fail(&d, &hs[0], 4, 503);
    fail(&d, &hs[0], 1, 500);
    fail(&d, &hs[0], 4, 504);
    drain(&d, &hs, Instant::now());
    assert!(!ejected(&hs[0]));
    d.report(&hs[0], HostResult::ConnectFailed);
    drain(&d, &hs, Instant::now());
    assert!(ejected(&hs[0]), "a connect failure counts as a 503");
    assert_eq!(
        stat(&store, "ejections_enforced_consecutive_gateway_failure"),
        1
    );
}

#[test]
fn split_local_origin_errors_count_apart() {
    let (d, store) = detector(
        "{ split_external_local_origin_errors: true, consecutive_local_origin_failure: 3, max_ejection_percent: 100 }",
    );
    let hs = hosts(1);
    for _ in 0..2 {
        d.report(&hs[0], HostResult::ConnectFailed);
    }
    // A response proves the connection: the local run starts again.
    d.report(&hs[0], HostResult::Http(503));
    for _ in 0..2 {
        d.report(&hs[0], HostResult::Timeout);
    }
    drain(&d, &hs, Instant::now());
    assert!(!ejected(&hs[0]));
    d.report(&hs[0], HostResult::ConnectFailed);
    drain(&d, &hs, Instant::now());
    assert!(ejected(&hs[0]));
    assert_eq!(
        stat(
            &store,
            "ejections_enforced_consecutive_local_origin_failure"
        ),
        1
    );
    assert_eq!(stat(&store, "ejections_detected_consecutive_5xx"), 0);
}

#[test]
fn success_rate_and_failure_percentage_judge_the_last_interval() {
    let (d, store) = detector(
        "{ max_ejection_percent: 100, consecutive_5xx: 1000, success_rate_request_volume: 10, enforcing_failure_percentage: 100, failure_percentage_threshold: 90, failure_percentage_request_volume: 10 }",
    );
    let hs = hosts(5);
    for h in &hs[..4] {
        fail(&d, h, 20, 200);
    }
    // 50% success: below mean (90) - 1.9 * stdev (20) = 52.
    fail(&d, &hs[4], 10, 200);
    fail(&d, &hs[4], 10, 500);
    let t0 = Instant::now();
    assert!(d.on_interval(&hs, t0));
    assert!(ejected(&hs[4]));
    assert_eq!(stat(&store, "ejections_enforced_success_rate"), 1);
    assert_eq!(hs[0].health.success_rate(), 100.0);
    assert_eq!(d.averages()[0], 90.0);
    // The next interval starts empty: no rates, nothing judged.
    assert!(!d.on_interval(&hs, t0 + Duration::from_millis(1)));
    assert_eq!(hs[0].health.success_rate(), -1.0);
    // Failure percentage: 95% failures >= 90.
    let (d, store) = detector(
        "{ max_ejection_percent: 100, consecutive_5xx: 1000, enforcing_success_rate: 0, enforcing_failure_percentage: 100, failure_percentage_threshold: 90, failure_percentage_request_volume: 10, failure_percentage_minimum_hosts: 2 }",
    );
    let hs = hosts(2);
    fail(&d, &hs[0], 20, 200);
    fail(&d, &hs[1], 1, 200);
    fail(&d, &hs[1], 19, 503);
    assert!(d.on_interval(&hs, t0));
    assert!(ejected(&hs[1]) && !ejected(&hs[0]));
    assert_eq!(stat(&store, "ejections_enforced_failure_percentage"), 1);
}

#[test]
fn threshold_matches_envoy_example() {
    // Envoy's worked example: {50, 100, 100, 100, 100} -> mean 90, stdev 20, threshold 52.
    let (mean, t) = success_rate_threshold(&[50.0, 100.0, 100.0, 100.0, 100.0], 1.9);
    assert_eq!(mean, 90.0);
    assert!((t - 52.0).abs() < 1e-9, "{t}");
}
