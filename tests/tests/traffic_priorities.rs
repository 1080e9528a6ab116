//! Differential test of priority levels: the same bootstrap (STATIC clusters whose
//! `load_assignment` has a priority 0 and a priority 1 locality) and the same scripted
//! upstreams in front of Envoy and of Outrigger, outlier detection ejecting the upstreams that
//! answer 503. Compared: which hosts serve before any ejection (all of P=0), with one of two
//! P=0 hosts ejected (P=0 health 1.4 * 50% = 70: 30% spills to P=1, compared as a binomial
//! count), with both ejected (all of it to P=1), with every priority ejected (total panic:
//! load by host count), and `/clusters` (priorities, flags) and the membership and
//! `lb_healthy_panic` stats.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/load_balancing/priority
//! and https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/load_balancing/panic_threshold

use std::collections::BTreeMap;
use std::process::Command;
use std::thread;
use std::time::Duration;
use tests::scripted::{Behaviour, Scripted};
use tests::upstream::Reply;
use tests::{envoy_or_skip, Kind, Ports, RunningProxy};

/// Cluster name, then its P=0 and P=1 hosts (role names; `bad*` answer 503).
const CLUSTERS: [(&str, &[&str], &[&str]); 4] = [
    ("healthy", &["a0", "a1"], &["b0", "b1"]),
    ("spill", &["good", "bad"], &["b0", "b1"]),
    ("failover", &["bad0", "bad1"], &["b0", "b1"]),
    ("panic", &["bad0"], &["bad1"]),
];

/// Requests per statistical phase: one curl, one connection, a pick per request.
const N: u32 = 400;

fn bootstrap() -> String {
    let mut routes = String::new();
    let mut clusters = String::new();
    for (name, p0, p1) in CLUSTERS {
        routes.push_str(&format!(
            "\n              - {{ match: {{ prefix: \"/{name}\" }}, route: {{ cluster: {name} }} }}"
        ));
        let locality = |priority: u32, hosts: &[&str]| -> String {
            let endpoints = tests::bootstraps::endpoint_items(name, hosts);
            format!("\n      - priority: {priority}\n        lb_endpoints:{endpoints}")
        };
        // One 503 ejects (for the default 30 s, past the test); every host may go. Envoy
        // hands health changes to its workers up to update_merge_window late: 0 here.
        clusters.push_str(&format!(
            r#"
  - name: {name}
    type: STATIC
    connect_timeout: 1s
    outlier_detection: {{ consecutive_5xx: 1, interval: 0.1s, max_ejection_percent: 100 }}
    common_lb_config: {{ update_merge_window: 0s }}
    load_assignment:
      cluster_name: {name}
      endpoints:{}{}
"#,
            locality(0, p0),
            locality(1, p1)
        ));
    }
    tests::bootstraps::one_listener(&routes, &clusters)
}

/// What one proxy did.
#[derive(Debug, Default)]
struct Observed {
    /// cluster -> who answered -> count.
    served: BTreeMap<String, BTreeMap<String, u32>>,
    /// (cluster, role) -> (`priority`, `health_flags`) from `/clusters`.
    hosts: BTreeMap<(String, String), (String, String)>,
    /// `/clusters?format=json`: (cluster, port) -> the host's `priority` as printed (absent
    /// when 0, proto3 JSON).
    json_priority: BTreeMap<(String, String), Option<u64>>,
    stats: BTreeMap<String, u64>,
}

/// `n` GETs of `/cluster` in one curl (one kept-alive connection): answers by `x-upstream`.
fn send(ports: &Ports, cluster: &str, n: u32) -> BTreeMap<String, u32> {
    let url = format!("http://127.0.0.1:{}/{cluster}", ports.get("listener"));
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-o", "/dev/null", "-D", "-"])
        .args((0..n).map(|_| url.as_str()))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("x-upstream: ") {
            *counts.entry(v.trim().to_string()).or_default() += 1;
        }
    }
    assert_eq!(counts.values().sum::<u32>(), n, "{cluster}: {text}");
    counts
}

/// Sends one request at a time to `cluster` until each of its `bad*` hosts answered once (and
/// was ejected); the ejection is posted off the request path, so each waits a little.
fn eject_bad(proxy: &RunningProxy, ports: &Ports, cluster: &str, bad: usize) {
    let url = format!("http://127.0.0.1:{}/{cluster}", ports.get("listener"));
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let r = tests::curl::get(&url);
        if let Some(who) = r.header("x-upstream").filter(|w| w.starts_with("bad")) {
            seen.insert(who.to_string());
        }
        thread::sleep(Duration::from_millis(30));
        if seen.len() == bad {
            return;
        }
    }
    panic!(
        "{}: {cluster}: only {seen:?} answered\n{}",
        proxy.kind().name(),
        proxy.logs_for_failure()
    );
}

fn drive(kind: Kind) -> Observed {
    let mut upstreams = Vec::new();
    let mut ports = Ports::new(&["admin", "listener"]);
    for (cluster, p0, p1) in CLUSTERS {
        for h in p0.iter().chain(p1.iter()) {
            let behaviour = if h.starts_with("bad") {
                Behaviour::Reply(Reply {
                    status: 503,
                    headers: Vec::new(),
                    body: "bad\n".into(),
                })
            } else {
                Behaviour::Reply(Reply::text("good\n"))
            };
            let up = Scripted::start(h, behaviour);
            ports = ports.with(&format!("{cluster}_{h}"), up.port());
            upstreams.push(up);
        }
    }
    // One worker: round robin positions are per worker.
    let proxy = RunningProxy::start(kind, &ports.render(&bootstrap()), &["--concurrency", "1"]);
    let mut seen = Observed::default();
    eject_bad(&proxy, &ports, "spill", 1);
    eject_bad(&proxy, &ports, "failover", 2);
    eject_bad(&proxy, &ports, "panic", 2);
    seen.served
        .insert("healthy".into(), send(&ports, "healthy", 8));
    seen.served.insert("spill".into(), send(&ports, "spill", N));
    seen.served
        .insert("failover".into(), send(&ports, "failover", 8));
    seen.served.insert("panic".into(), send(&ports, "panic", N));

    let mut by_port: BTreeMap<String, (&str, &str)> = BTreeMap::new();
    for (c, p0, p1) in CLUSTERS {
        for h in p0.iter().chain(p1.iter()) {
            by_port.insert(ports.get(&format!("{c}_{h}")).to_string(), (c, h));
        }
    }
    for line in proxy.get("/clusters").body.lines() {
        let parts: Vec<&str> = line.split("::").collect();
        let [_, address, key, value] = parts[..] else {
            continue;
        };
        let Some(role) = address.rsplit(':').next().and_then(|p| by_port.get(p)) else {
            continue;
        };
        let entry = seen
            .hosts
            .entry((role.0.into(), role.1.into()))
            .or_default();
        match key {
            "priority" => entry.0 = value.into(),
            "health_flags" => entry.1 = value.into(),
            _ => {}
        }
    }
    let json = proxy.get("/clusters?format=json").json();
    for cluster in json["cluster_statuses"].as_array().into_iter().flatten() {
        for host in cluster["host_statuses"].as_array().into_iter().flatten() {
            let port = host["address"]["socket_address"]["port_value"].to_string();
            if let Some((c, h)) = by_port.get(&port) {
                seen.json_priority
                    .insert(((*c).into(), (*h).into()), host["priority"].as_u64());
            }
        }
    }
    for line in proxy.get("/stats").body.lines() {
        let Some((name, value)) = line.split_once(": ") else {
            continue;
        };
        let wanted = name.ends_with(".lb_healthy_panic")
            || name.ends_with(".membership_healthy")
            || name.ends_with(".membership_total");
        if let (true, Ok(v)) = (wanted && name.starts_with("cluster."), value.parse()) {
            seen.stats.insert(name.into(), v);
        }
    }
    if std::env::var_os("PRIORITY_DEBUG").is_some() {
        eprintln!("{}: {seen:#?}", kind.name());
    }
    seen
}

fn count(seen: &Observed, cluster: &str, who: &str) -> u32 {
    seen.served[cluster].get(who).copied().unwrap_or(0)
}

/// `got` of `n` draws within 5 standard deviations of share `p` (a spurious failure about once
/// in 3.5 million runs).
fn binomial(got: u32, n: u32, p: f64, what: &str) {
    let (n, got) = (f64::from(n), f64::from(got));
    let sd = (n * p * (1.0 - p)).sqrt();
    assert!(
        (got - n * p).abs() <= 5.0 * sd,
        "{what}: {got} of {n}, expected {:.0} ± {:.0}",
        n * p,
        5.0 * sd
    );
}

fn expect(who: &str, seen: &Observed) {
    let exact = |cluster: &str, want: &[(&str, u32)]| {
        let want: BTreeMap<String, u32> = want.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        assert_eq!(seen.served[cluster], want, "{who}: {cluster}");
    };
    // Every host healthy: P=0 takes everything, round robin.
    exact("healthy", &[("a0", 4), ("a1", 4)]);
    // Both P=0 hosts ejected: P=1 (100% healthy) takes everything; no panic, since the
    // normalized total health is 100.
    exact("failover", &[("b0", 4), ("b1", 4)]);
    // One of two P=0 hosts ejected: 70% stays on `good`, 30% spills to P=1, whose two hosts
    // take turns.
    let good = count(seen, "spill", "good");
    binomial(good, N, 0.7, &format!("{who}: spill to P=0"));
    let (b0, b1) = (count(seen, "spill", "b0"), count(seen, "spill", "b1"));
    assert_eq!(
        good + b0 + b1,
        N,
        "{who}: spill: {:?}",
        seen.served["spill"]
    );
    assert!(
        b0.abs_diff(b1) <= 1,
        "{who}: spill P=1 rotation {b0} / {b1}"
    );
    // Every host of every priority ejected: total panic, load by host count (1 : 1), all
    // hosts in play.
    let p0 = count(seen, "panic", "bad0");
    binomial(p0, N, 0.5, &format!("{who}: total panic to P=0"));
    assert_eq!(p0 + count(seen, "panic", "bad1"), N, "{who}: panic");
    // Panic picks are counted; the priorities and flags are in /clusters.
    assert_eq!(
        seen.stats["cluster.panic.lb_healthy_panic"],
        u64::from(N),
        "{who}"
    );
    assert_eq!(seen.stats["cluster.failover.lb_healthy_panic"], 0, "{who}");
    assert_eq!(seen.stats["cluster.spill.membership_total"], 4, "{who}");
    assert_eq!(seen.stats["cluster.spill.membership_healthy"], 3, "{who}");
    assert_eq!(
        seen.hosts[&("spill".to_string(), "b1".to_string())],
        ("1".to_string(), "healthy".to_string()),
        "{who}"
    );
    assert_eq!(
        seen.hosts[&("spill".to_string(), "bad".to_string())],
        ("0".to_string(), "/failed_outlier_check".to_string()),
        "{who}"
    );
    assert_eq!(
        seen.json_priority[&("spill".to_string(), "b0".to_string())],
        Some(1),
        "{who}"
    );
}

#[test]
fn priority_levels_spill_over_and_fail_over_as_in_envoy() {
    let Some(_) = envoy_or_skip("priority_levels_spill_over_and_fail_over_as_in_envoy") else {
        return;
    };
    let (envoy, outrigger) = thread::scope(|s| {
        let envoy = s.spawn(|| drive(Kind::Envoy));
        let ours = s.spawn(|| drive(Kind::Outrigger));
        (
            envoy.join().expect("the Envoy run"),
            ours.join().expect("the Outrigger run"),
        )
    });
    expect("envoy", &envoy);
    expect("outrigger", &outrigger);
    // The two proxies' spill and panic shares agree as two binomial draws can (5 sd of the
    // difference).
    for (cluster, host, p) in [("spill", "good", 0.7), ("panic", "bad0", 0.5)] {
        let diff =
            f64::from(count(&envoy, cluster, host)) - f64::from(count(&outrigger, cluster, host));
        let sd = (2.0 * f64::from(N) * p * (1.0 - p)).sqrt();
        assert!(
            diff.abs() <= 5.0 * sd,
            "{cluster}: envoy {envoy:?} outrigger {outrigger:?}"
        );
    }
    assert_eq!(
        envoy.hosts, outrigger.hosts,
        "/clusters priority and health_flags"
    );
    assert_eq!(
        envoy.json_priority, outrigger.json_priority,
        "/clusters?format=json priority"
    );
    assert_eq!(
        envoy.stats, outrigger.stats,
        "membership and lb_healthy_panic stats"
    );
}
