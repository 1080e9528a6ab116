//! Differential test of outlier detection and the panic threshold: the same bootstrap and the
//! same scripted upstreams (healthy ones, ones answering 503, a port nothing listens on) in
//! front of Envoy and of Outrigger, with short intervals. Compared: which upstream served
//! each phase's requests (before ejection, while ejected, after the host returns), the
//! `/clusters` health flags and success rates, and the `outlier_detection.*`, `lb_healthy_panic`
//! and membership stats.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/outlier
//! and https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/load_balancing/panic_threshold

use std::collections::BTreeMap;
use std::thread;
use std::time::Duration;
use tests::scripted::{Behaviour, Scripted};
use tests::upstream::Reply;
use tests::{envoy_or_skip, free_port, Kind, Ports, RunningProxy};

/// Cluster name, then its hosts (role names) and its outlier detection / lb settings.
const CLUSTERS: [(&str, &[&str], &str); 5] = [
    // Three 503s in a row eject `bad` for 4 s (one of two is 50% ejected: within budget).
    (
        "c5xx",
        &["good", "bad"],
        "outlier_detection: { consecutive_5xx: 3, interval: 0.1s, base_ejection_time: 4s, max_ejection_percent: 50 }",
    ),
    // The default 10% budget: Envoy ejects a host only when the share ejected after it stays
    // within the budget, so of two hosts none goes (ejections_overflow counts).
    (
        "budget",
        &["good", "bad"],
        "outlier_detection: { consecutive_5xx: 3, interval: 0.1s }",
    ),
    // One 503 ejects; with both bad hosts out 1 of 3 is healthy: 1.4 * 33% < 50%, panic.
    (
        "panic",
        &["good", "bad1", "bad2"],
        "outlier_detection: { consecutive_5xx: 1, interval: 0.1s, max_ejection_percent: 100 }",
    ),
    // The same without a panic threshold: only `good` serves.
    (
        "nopanic",
        &["good", "bad1", "bad2"],
        "outlier_detection: { consecutive_5xx: 1, interval: 0.1s, max_ejection_percent: 100 }
    common_lb_config: { healthy_panic_threshold: { value: 0 }, update_merge_window: 0s }",
    ),
    // Connect failures counted apart from responses: two eject the dead host.
    (
        "local",
        &["good", "dead"],
        "outlier_detection: { split_external_local_origin_errors: true, consecutive_local_origin_failure: 2, interval: 0.1s, max_ejection_percent: 100 }",
    ),
];

fn bootstrap() -> String {
    let mut routes = String::new();
    let mut clusters = String::new();
    for (name, hosts, extra) in CLUSTERS {
        routes.push_str(&format!(
            "\n              - {{ match: {{ prefix: \"/{name}\" }}, route: {{ cluster: {name} }} }}"
        ));
        let endpoints = tests::bootstraps::endpoint_items(name, hosts);
        // Envoy hands a change of host health to its workers up to update_merge_window (1 s
        // by default) late; a loaded machine then sees the ejection land mid-phase. Outrigger
        // applies changes at once, so the window is 0 here.
        let merge_window = if extra.contains("common_lb_config") {
            ""
        } else {
            "\n    common_lb_config: { update_merge_window: 0s }"
        };
        clusters.push_str(&format!(
            r#"
  - name: {name}
    type: STATIC
    connect_timeout: 1s
    {extra}{merge_window}
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:{endpoints}
"#
        ));
    }
    tests::bootstraps::one_listener(&routes, &clusters)
}

/// What one proxy did, keyed so the two runs compare directly.
#[derive(Debug, Default, PartialEq)]
struct Observed {
    /// (phase, cluster) -> who answered -> count; a local reply is `local <status>`.
    served: BTreeMap<(String, String), BTreeMap<String, u32>>,
    /// (phase, cluster, host role) -> `health_flags` and `success_rate` from `/clusters`.
    flags: BTreeMap<(String, String, String), (String, String)>,
    /// (phase, stat) -> value.
    stats: BTreeMap<(String, String), u64>,
}

struct Run {
    proxy: RunningProxy,
    ports: Ports,
    seen: Observed,
}

impl Run {
    fn send(&mut self, phase: &str, cluster: &str, n: u32) {
        for _ in 0..n {
            let who = self.one(cluster);
            *self
                .seen
                .served
                .entry((phase.into(), cluster.into()))
                .or_default()
                .entry(who)
                .or_default() += 1;
        }
    }

    fn one(&self, cluster: &str) -> String {
        let url = format!("http://127.0.0.1:{}/{cluster}", self.ports.get("listener"));
        let r = tests::curl::get(&url);
        match r.header("x-upstream") {
            Some(name) => format!("{name} {}", r.status),
            None => format!("local {}", r.status),
        }
    }

    /// Host flags and rates of every cluster, by role.
    fn snapshot(&mut self, phase: &str) {
        let mut by_port: BTreeMap<u16, (&str, &str)> = BTreeMap::new();
        for (c, hosts, _) in CLUSTERS {
            for h in hosts {
                by_port.insert(self.ports.get(&format!("{c}_{h}")), (c, h));
            }
        }
        let text = self.proxy.get("/clusters").body;
        for line in text.lines() {
            let parts: Vec<&str> = line.split("::").collect();
            let [_, address, key, value] = parts[..] else {
                continue;
            };
            let Some(port) = address.rsplit(':').next().and_then(|p| p.parse().ok()) else {
                continue;
            };
            let Some((cluster, role)) = by_port.get(&port) else {
                continue;
            };
            let entry = self
                .seen
                .flags
                .entry((phase.into(), (*cluster).into(), (*role).into()))
                .or_default();
            match key {
                "health_flags" => entry.0 = value.into(),
                "success_rate" => entry.1 = value.into(),
                _ => {}
            }
        }
        let stats = self.proxy.get("/stats").body;
        for line in stats.lines() {
            let Some((name, value)) = line.split_once(": ") else {
                continue;
            };
            let wanted = name.starts_with("cluster.")
                && (name.contains(".outlier_detection.")
                    || name.ends_with(".lb_healthy_panic")
                    || name.ends_with(".membership_healthy")
                    || name.ends_with(".membership_total"));
            if let (true, Ok(v)) = (wanted, value.parse()) {
                self.seen.stats.insert((phase.into(), name.into()), v);
            }
        }
    }
}

fn drive(kind: Kind) -> Observed {
    let mut upstreams = Vec::new();
    let mut ports = Ports::new(&["admin", "listener"]);
    for (cluster, hosts, _) in CLUSTERS {
        for h in hosts {
            let port = match *h {
                "dead" => free_port(),
                name => {
                    let behaviour = if name.starts_with("bad") {
                        Behaviour::Reply(Reply {
                            status: 503,
                            headers: Vec::new(),
                            body: "bad\n".into(),
                        })
                    } else {
                        Behaviour::Reply(Reply::text("good\n"))
                    };
                    let up = Scripted::start(name, behaviour);
                    let port = up.port();
                    upstreams.push(up);
                    port
                }
            };
            ports = ports.with(&format!("{cluster}_{h}"), port);
        }
    }
    // One worker: Envoy keeps a round-robin position per worker, and each request here is a
    // new connection, so with several workers the rotation would not be exact.
    let proxy = RunningProxy::start(kind, &ports.render(&bootstrap()), &["--concurrency", "1"]);
    let mut run = Run {
        proxy,
        ports,
        seen: Observed::default(),
    };
    // One 503 ejects here, so the order of the rest depends on when the ejection lands:
    // requests go one by one, with time for it, until each bad host has answered once.
    for cluster in ["panic", "nopanic"] {
        let mut bad_seen = 0;
        for _ in 0..10 {
            if run.one(cluster).starts_with("bad") {
                bad_seen += 1;
            }
            if bad_seen == 2 {
                break;
            }
            thread::sleep(Duration::from_millis(30));
        }
        assert_eq!(
            bad_seen,
            2,
            "{} {cluster}: each bad host answered once",
            kind.name()
        );
    }
    // Before: round robin over every host; each bad host reaches its threshold.
    run.send("1 before", "c5xx", 6);
    let ejected_at = std::time::Instant::now();
    run.send("1 before", "budget", 6);
    run.send("1 before", "local", 4);
    // Ejections are decided off the request path (Envoy posts them to its main thread).
    thread::sleep(Duration::from_millis(100));
    run.snapshot("2 ejected");
    run.send("2 ejected", "c5xx", 6);
    run.send("2 ejected", "budget", 6);
    run.send("2 ejected", "local", 4);
    run.send("2 ejected", "panic", 9);
    run.send("2 ejected", "nopanic", 6);
    run.snapshot("3 after ejected traffic");
    // base_ejection_time (4 s; long enough for the phase above on a loaded CI machine) and a
    // sweep (0.1 s) after the ejection, `bad` of c5xx is back.
    thread::sleep(
        (ejected_at + Duration::from_millis(4300))
            .saturating_duration_since(std::time::Instant::now()),
    );
    run.snapshot("4 returned");
    run.send("4 returned", "c5xx", 6);
    if std::env::var_os("OUTLIER_DEBUG").is_some() {
        eprintln!("{}: {:#?}", kind.name(), run.seen);
    }
    run.seen
}

fn served(seen: &Observed, phase: &str, cluster: &str) -> Vec<(String, u32)> {
    seen.served
        .get(&(phase.to_string(), cluster.to_string()))
        .map(|m| m.iter().map(|(k, v)| (k.clone(), *v)).collect())
        .unwrap_or_default()
}

fn flags(seen: &Observed, phase: &str, cluster: &str, role: &str) -> String {
    seen.flags
        .get(&(phase.into(), cluster.into(), role.into()))
        .map(|f| f.0.clone())
        .unwrap_or_default()
}

fn stat(seen: &Observed, phase: &str, name: &str) -> u64 {
    seen.stats
        .get(&(phase.into(), name.into()))
        .copied()
        .unwrap_or_else(|| panic!("no stat {name} in phase {phase}"))
}

fn expect(who: &str, seen: &Observed) {
    let pairs = |v: &[(&str, u32)]| -> Vec<(String, u32)> {
        v.iter().map(|(k, n)| (k.to_string(), *n)).collect()
    };
    assert_eq!(
        served(seen, "1 before", "c5xx"),
        pairs(&[("bad 503", 3), ("good 200", 3)]),
        "{who}"
    );
    assert_eq!(
        served(seen, "1 before", "local"),
        pairs(&[("good 200", 2), ("local 503", 2)]),
        "{who}"
    );
    assert_eq!(
        served(seen, "2 ejected", "c5xx"),
        pairs(&[("good 200", 6)]),
        "{who}"
    );
    assert_eq!(
        served(seen, "2 ejected", "local"),
        pairs(&[("good 200", 4)]),
        "{who}"
    );
    assert_eq!(
        served(seen, "2 ejected", "panic"),
        pairs(&[("bad1 503", 3), ("bad2 503", 3), ("good 200", 3)]),
        "{who}: in panic every host serves"
    );
    assert_eq!(
        served(seen, "2 ejected", "nopanic"),
        pairs(&[("good 200", 6)]),
        "{who}"
    );
    assert_eq!(
        served(seen, "4 returned", "c5xx"),
        pairs(&[("bad 503", 3), ("good 200", 3)]),
        "{who}"
    );
    assert_eq!(
        flags(seen, "2 ejected", "c5xx", "bad"),
        "/failed_outlier_check",
        "{who}"
    );
    assert_eq!(flags(seen, "2 ejected", "c5xx", "good"), "healthy", "{who}");
    assert_eq!(
        flags(seen, "2 ejected", "local", "dead"),
        "/failed_outlier_check",
        "{who}"
    );
    assert_eq!(flags(seen, "4 returned", "c5xx", "bad"), "healthy", "{who}");
    assert_eq!(
        stat(
            seen,
            "2 ejected",
            "cluster.c5xx.outlier_detection.ejections_active"
        ),
        1
    );
    assert_eq!(
        stat(
            seen,
            "4 returned",
            "cluster.c5xx.outlier_detection.ejections_active"
        ),
        0
    );
    assert_eq!(
        stat(
            seen,
            "3 after ejected traffic",
            "cluster.panic.lb_healthy_panic"
        ),
        9,
        "{who}"
    );
    assert_eq!(
        stat(
            seen,
            "3 after ejected traffic",
            "cluster.nopanic.lb_healthy_panic"
        ),
        0,
        "{who}"
    );
    assert_eq!(
        stat(
            seen,
            "2 ejected",
            "cluster.local.outlier_detection.ejections_enforced_consecutive_local_origin_failure"
        ),
        1,
        "{who}"
    );
}

#[test]
fn outlier_detection_matches_envoy() {
    let Some(_) = envoy_or_skip("outlier_detection_matches_envoy") else {
        return;
    };
    // Both proxies run at once, each with its own upstreams: the phases are timed.
    let (envoy, ours) = thread::scope(|s| {
        let envoy = s.spawn(|| drive(Kind::Envoy));
        let ours = s.spawn(|| drive(Kind::Outrigger));
        (
            envoy.join().expect("the Envoy run"),
            ours.join().expect("the Outrigger run"),
        )
    });
    expect("Envoy", &envoy);
    expect("Outrigger", &ours);
    assert_eq!(envoy.served, ours.served, "who served each phase");
    assert_eq!(
        envoy.flags, ours.flags,
        "/clusters health flags and success rates"
    );
    let differ = tests::differential::stat_differences(&envoy.stats, &ours.stats);
    assert!(differ.is_empty(), "stats differ:\n{}", differ.join("\n"));
}
