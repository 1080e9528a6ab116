//! Differential test of active health checking: the same bootstrap and the same scripted
//! upstreams in front of Envoy and of Outrigger. Compared: which host serves before, while
//! and after one host fails its HTTP health path, the `/clusters` health flags, and the
//! `health_check.*` and membership stats once both proxies have settled.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/health_checking
//!
//! Every cluster sets `update_merge_window: 0s`: Envoy otherwise hands a health-only change
//! to its workers up to 1 s late when another came within the window (Outrigger applies
//! every change at once), and a phase's requests would race that.
//!
//! Two clusters see no traffic, so after their first round of checks Envoy waits the default
//! `no_traffic_interval` (60 s): their counters settle and compare exactly, one result per
//! host (a healthy one, a 503, a 503 with `x-envoy-immediate-health-check-fail`, a degraded
//! one, a refused connection, a host that never answers; TCP send/receive the same way).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use tests::scripted::{Behaviour, Scripted};
use tests::upstream::Reply;
use tests::{envoy_or_skip, free_port, Kind, Ports, RunningProxy};

/// Cluster, host roles, health check.
const CLUSTERS: [(&str, &[&str], &str); 5] = [
    // With traffic: checks every 100 ms, two results in a row to change state (a 503 fails
    // at once: thresholds apply to network failures only).
    (
        "live",
        &["a", "b"],
        "{ timeout: 0.5s, interval: 0.1s, no_traffic_interval: 0.1s, unhealthy_threshold: 2, healthy_threshold: 2, http_health_check: { path: /healthz, host: hc.example, request_headers_to_add: [ { header: { key: x-check, value: checked } } ] } }",
    ),
    (
        "initial",
        &["ok", "bad", "imm", "deg", "dead", "silent"],
        "{ timeout: 0.3s, interval: 0.1s, unhealthy_threshold: 2, healthy_threshold: 2, http_health_check: { path: /healthz } }",
    ),
    (
        "tcp",
        &["echo", "silent", "dead"],
        r#"{ timeout: 0.3s, interval: 0.1s, unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: { send: { text: "70696e67" }, receive: [ { text: "70696e67" } ] } }"#,
    ),
    // gRPC health checks (the cluster speaks HTTP/2): serving, not serving, an error status,
    // an HTTP answer that is not gRPC, nobody listening.
    (
        "grpc",
        &["serving", "notserving", "unimplemented", "plain", "dead"],
        "{ timeout: 0.3s, interval: 0.1s, unhealthy_threshold: 1, healthy_threshold: 1, grpc_health_check: { service_name: svc, initial_metadata: [ { header: { key: x-meta, value: m } } ] } }",
    ),
    // Its host passes checks (the header on a 200 check changes nothing) but answers requests
    // with `x-envoy-immediate-health-check-fail`: one request fails it at once, a passive
    // failure. Checks are 60 s apart, so it stays failed for the test.
    (
        "passive",
        &["p"],
        "{ timeout: 0.3s, interval: 60s, unhealthy_threshold: 2, healthy_threshold: 1, http_health_check: { path: /healthz } }",
    ),
];

fn bootstrap() -> String {
    let mut clusters = String::new();
    for (name, hosts, check) in CLUSTERS {
        let endpoints = tests::bootstraps::endpoint_items(name, hosts);
        let http2 = if name == "grpc" {
            "\n    http2_protocol_options: {}"
        } else {
            ""
        };
        clusters.push_str(&format!(
            r#"
  - name: {name}
    type: STATIC
    connect_timeout: 1s
    health_checks: [ {check} ]
    common_lb_config: {{ update_merge_window: 0s }}{http2}
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:{endpoints}
"#
        ));
    }
    let routes = r#"
              - { match: { prefix: "/passive" }, route: { cluster: passive } }
              - { match: { prefix: "/" }, route: { cluster: live } }"#;
    tests::bootstraps::one_listener(routes, &clusters)
}

#[derive(Debug, Default, PartialEq)]
struct Observed {
    /// phase -> who answered -> count.
    served: BTreeMap<String, BTreeMap<String, u32>>,
    /// (phase, cluster, role) -> `health_flags`.
    flags: BTreeMap<(String, String, String), String>,
    /// (phase, stat) -> value.
    stats: BTreeMap<(String, String), u64>,
    /// What the live cluster's first health check request looked like.
    check_request: Vec<String>,
    /// And the gRPC cluster's serving host's.
    grpc_check_request: Vec<String>,
}

struct Run {
    proxy: RunningProxy,
    ports: Ports,
    seen: Observed,
}

impl Run {
    fn send(&mut self, phase: &str, n: u32) {
        let url = format!("http://127.0.0.1:{}/", self.ports.get("listener"));
        for _ in 0..n {
            let r = tests::curl::get(&url);
            let who = match r.header("x-upstream") {
                Some(name) => format!("{name} {}", r.status),
                None => format!("local {}", r.status),
            };
            *self
                .seen
                .served
                .entry(phase.into())
                .or_default()
                .entry(who)
                .or_default() += 1;
        }
    }

    /// (cluster, role) -> health flags, from `/clusters`.
    fn flags(&self) -> BTreeMap<(String, String), String> {
        let mut by_port = BTreeMap::new();
        for (c, hosts, _) in CLUSTERS {
            for h in hosts {
                by_port.insert(self.ports.get(&format!("{c}_{h}")), (c, *h));
            }
        }
        let mut out = BTreeMap::new();
        for line in self.proxy.get("/clusters").body.lines() {
            let parts: Vec<&str> = line.split("::").collect();
            let [cluster, address, "health_flags", value] = parts[..] else {
                continue;
            };
            let Some(port) = address.rsplit(':').next().and_then(|p| p.parse().ok()) else {
                continue;
            };
            if let Some((c, role)) = by_port.get(&port) {
                if *c == cluster {
                    out.insert((c.to_string(), role.to_string()), value.to_string());
                }
            }
        }
        out
    }

    fn stats(&self) -> BTreeMap<String, u64> {
        self.proxy
            .get("/stats")
            .body
            .lines()
            .filter_map(|l| l.split_once(": "))
            .filter(|(n, _)| {
                n.starts_with("cluster.")
                    && (n.contains(".health_check.") || n.ends_with(".membership_healthy"))
            })
            .filter_map(|(n, v)| Some((n.to_string(), v.parse().ok()?)))
            .collect()
    }

    /// Polls until `done` holds for the flags and stats (with a deadline), then records them;
    /// counters of the live cluster keep moving, so only its gauges are kept.
    fn settle(
        &mut self,
        phase: &str,
        done: impl Fn(&BTreeMap<(String, String), String>, &BTreeMap<String, u64>) -> bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let (flags, stats) = loop {
            let (flags, stats) = (self.flags(), self.stats());
            if done(&flags, &stats) {
                break (flags, stats);
            }
            assert!(
                Instant::now() < deadline,
                "{}: {phase} did not settle: {flags:?} {stats:?}",
                self.proxy.kind().name()
            );
            thread::sleep(Duration::from_millis(20));
        };
        for ((c, role), f) in flags {
            self.seen.flags.insert((phase.into(), c, role), f);
        }
        for (name, v) in stats {
            let moving = name.starts_with("cluster.live.health_check.")
                && !name.ends_with(".healthy")
                && !name.ends_with(".degraded");
            if !moving {
                self.seen.stats.insert((phase.into(), name), v);
            }
        }
    }
}

fn flag<'a>(flags: &'a BTreeMap<(String, String), String>, c: &str, role: &str) -> &'a str {
    flags
        .get(&(c.to_string(), role.to_string()))
        .map_or("", String::as_str)
}

/// Every result of the first round is in: attempts == successes + failures == hosts.
fn round_done(stats: &BTreeMap<String, u64>, cluster: &str, hosts: u64) -> bool {
    let s = |n: &str| {
        stats
            .get(&format!("cluster.{cluster}.health_check.{n}"))
            .copied()
            .unwrap_or(0)
    };
    s("attempt") == hosts && s("success") + s("failure") == hosts
}

fn drive(kind: Kind) -> Observed {
    let mut upstreams = Vec::new();
    let mut ports = Ports::new(&["admin", "listener"]);
    let b_healthy = Arc::new(AtomicBool::new(true));
    let mut grpc_serving = None;
    for (cluster, hosts, _) in CLUSTERS {
        for h in hosts {
            let behaviour = match (cluster, *h) {
                (_, "dead") => None,
                ("live", "b") => Some(Behaviour::HealthSwitch {
                    path: "/healthz".into(),
                    healthy: b_healthy.clone(),
                }),
                ("live", _) => Some(Behaviour::HealthSwitch {
                    path: "/healthz".into(),
                    healthy: Arc::new(AtomicBool::new(true)),
                }),
                ("tcp", "echo") => Some(Behaviour::TcpEcho),
                ("grpc", "serving") => Some(Behaviour::GrpcHealth(Some(1))),
                ("grpc", "notserving") => Some(Behaviour::GrpcHealth(Some(2))),
                ("grpc", "unimplemented") => Some(Behaviour::GrpcHealth(None)),
                // Reads until the peer half-closes, which a check never does: no answer.
                (_, "silent") => Some(Behaviour::TcpHalfClose),
                (_, "ok") => Some(Behaviour::Reply(Reply::text("ok\n"))),
                (_, "p") => Some(Behaviour::Reply(Reply {
                    status: 200,
                    headers: vec![("x-envoy-immediate-health-check-fail".into(), "true".into())],
                    body: "failing\n".into(),
                })),
                (_, "deg") => Some(Behaviour::Reply(Reply {
                    status: 200,
                    headers: vec![("x-envoy-degraded".into(), "true".into())],
                    body: "degraded\n".into(),
                })),
                (_, role) => Some(Behaviour::Reply(Reply {
                    status: 503,
                    headers: if role == "imm" {
                        vec![("x-envoy-immediate-health-check-fail".into(), "true".into())]
                    } else {
                        Vec::new()
                    },
                    body: "bad\n".into(),
                })),
            };
            let port = match behaviour {
                None => free_port(),
                Some(b) => {
                    if (cluster, *h) == ("grpc", "serving") {
                        grpc_serving = Some(upstreams.len());
                    }
                    let up = Scripted::start(h, b);
                    let port = up.port();
                    upstreams.push(up);
                    port
                }
            };
            ports = ports.with(&format!("{cluster}_{h}"), port);
        }
    }
    let proxy = RunningProxy::start(kind, &ports.render(&bootstrap()), &["--concurrency", "1"]);
    let mut run = Run {
        proxy,
        ports,
        seen: Observed::default(),
    };
    run.settle("1 start", |f, s| {
        flag(f, "live", "a") == "healthy"
            && flag(f, "live", "b") == "healthy"
            && round_done(s, "initial", 6)
            && round_done(s, "tcp", 3)
            && round_done(s, "passive", 1)
            && round_done(s, "grpc", 5)
            && !flag(f, "initial", "silent").is_empty()
            && flag(f, "initial", "silent") != "/failed_active_hc"
            && flag(f, "tcp", "silent") != "/failed_active_hc"
    });
    run.send("1 start", 4);
    b_healthy.store(false, Ordering::SeqCst);
    run.settle("2 b failing", |f, _| {
        flag(f, "live", "b") == "/failed_active_hc"
    });
    run.send("2 b failing", 4);
    b_healthy.store(true, Ordering::SeqCst);
    run.settle("3 b back", |f, _| flag(f, "live", "b") == "healthy");
    run.send("3 b back", 4);
    // The no-traffic clusters checked each host once (no_traffic_interval is 60 s).
    run.settle("4 end", |_, s| {
        round_done(s, "initial", 6) && round_done(s, "tcp", 3) && round_done(s, "grpc", 5)
    });
    let passive = format!("http://127.0.0.1:{}/passive", run.ports.get("listener"));
    let status = tests::curl::get(&passive).status;
    run.seen
        .served
        .entry("5 passive".into())
        .or_default()
        .insert(format!("p {status}"), 1);
    run.settle("5 passive", |f, s| {
        flag(f, "passive", "p") != "healthy"
            && s.get("cluster.passive.health_check.passive_failure") == Some(&1)
    });
    run.seen.check_request = first_request(&upstreams[0]);
    if let Some(serving) = grpc_serving.and_then(|i| upstreams.get(i)) {
        run.seen.grpc_check_request = first_request(serving);
    }
    if std::env::var_os("HC_DEBUG").is_some() {
        eprintln!("{}: {:#?}", kind.name(), run.seen);
    }
    run.seen
}

/// An upstream's first request: method, path, version, sorted headers and the body in hex.
fn first_request(upstream: &Scripted) -> Vec<String> {
    let Some(first) = upstream.requests().into_iter().next() else {
        return Vec::new();
    };
    let mut headers: Vec<String> = first
        .headers
        .iter()
        .map(|(n, v)| format!("{n}: {v}"))
        .collect();
    headers.sort();
    let body: String = first.body.iter().map(|b| format!("{b:02x}")).collect();
    std::iter::once(format!("{} {} {}", first.method, first.path, first.version))
        .chain(headers)
        .chain(std::iter::once(format!("body {body}")))
        .collect()
}

fn expect(who: &str, seen: &Observed) {
    let served = |phase: &str| -> Vec<(String, u32)> {
        seen.served[phase]
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    };
    let both = vec![("a 200".to_string(), 2), ("b 200".to_string(), 2)];
    assert_eq!(served("1 start"), both, "{who}");
    assert_eq!(
        served("2 b failing"),
        vec![("a 200".to_string(), 4)],
        "{who}"
    );
    assert_eq!(served("3 b back"), both, "{who}");
    let f =
        |c: &str, r: &str| seen.flags[&("4 end".to_string(), c.to_string(), r.to_string())].clone();
    assert_eq!(f("initial", "ok"), "healthy", "{who}");
    assert_eq!(f("initial", "bad"), "/failed_active_hc", "{who}");
    assert_eq!(
        f("initial", "imm"),
        "/failed_active_hc/excluded_via_immediate_hc_fail",
        "{who}"
    );
    assert_eq!(f("initial", "deg"), "/degraded_active_hc", "{who}");
    assert_eq!(
        f("initial", "silent"),
        "/failed_active_hc/active_hc_timeout",
        "{who}"
    );
    assert_eq!(f("tcp", "echo"), "healthy", "{who}");
    assert_eq!(f("tcp", "dead"), "/failed_active_hc", "{who}");
    assert_eq!(f("grpc", "serving"), "healthy", "{who}");
    for failing in ["notserving", "unimplemented", "plain", "dead"] {
        assert_eq!(f("grpc", failing), "/failed_active_hc", "{who} {failing}");
    }
    let p = &seen.flags[&(
        "5 passive".to_string(),
        "passive".to_string(),
        "p".to_string(),
    )];
    assert_eq!(
        p, "/failed_active_hc/excluded_via_immediate_hc_fail",
        "{who}"
    );
    let s = |n: &str| seen.stats[&("5 passive".to_string(), n.to_string())];
    assert_eq!(s("cluster.passive.health_check.failure"), 1, "{who}");
    assert_eq!(s("cluster.passive.health_check.attempt"), 1, "{who}");
    let s = |n: &str| seen.stats[&("4 end".to_string(), n.to_string())];
    assert_eq!(
        s("cluster.initial.health_check.network_failure"),
        2,
        "{who}"
    );
    assert_eq!(s("cluster.initial.health_check.healthy"), 2, "{who}");
    assert_eq!(s("cluster.initial.health_check.degraded"), 1, "{who}");
    assert_eq!(s("cluster.tcp.health_check.success"), 1, "{who}");
}

#[test]
fn health_checks_match_envoy() {
    let Some(_) = envoy_or_skip("health_checks_match_envoy") else {
        return;
    };
    let (envoy, ours) = thread::scope(|s| {
        let envoy = s.spawn(|| drive(Kind::Envoy));
        let ours = s.spawn(|| drive(Kind::Outrigger));
        (
            envoy.join().expect("the Envoy run"),
            ours.join().expect("the Outrigger run"),
        )
    });
    expect("Envoy", &envoy);
    assert_eq!(envoy.served, ours.served, "who served each phase");
    assert_eq!(envoy.flags, ours.flags, "/clusters health flags");
    assert_eq!(
        envoy.check_request, ours.check_request,
        "the HTTP health check request"
    );
    assert_eq!(
        envoy.grpc_check_request, ours.grpc_check_request,
        "the gRPC health check request"
    );
    let differ = tests::differential::stat_differences(&envoy.stats, &ours.stats);
    assert!(differ.is_empty(), "stats differ:\n{}", differ.join("\n"));
    expect("Outrigger", &ours);
}
