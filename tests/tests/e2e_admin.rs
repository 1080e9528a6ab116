//! The admin API through a real client (curl), on a bootstrap with an HTTP listener (inline
//! route config to a STATIC cluster pointing at a recording test upstream) and a tcp_proxy
//! listener to the same cluster. What each endpoint must say is Envoy's documented behaviour
//! (https://www.envoyproxy.io/docs/envoy/latest/operations/admin), checked against Envoy 1.40.
//!
//! The last group runs each check on Envoy first (when installed), so the expectation is the
//! oracle's, then on Outrigger.

use regex::Regex;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tests::{bootstraps, curl, envoy_or_skip, Kind, Ports, RunningProxy, Upstream};

struct Setup {
    upstream: Upstream,
    proxy: RunningProxy,
    ports: Ports,
}

impl Setup {
    fn start() -> Setup {
        Self::start_kind(Kind::Outrigger)
    }

    fn start_kind(kind: Kind) -> Setup {
        let upstream = Upstream::start("from upstream\n");
        let (bootstrap, ports) = bootstraps::http_and_tcp(upstream.port());
        let proxy = RunningProxy::start(kind, &bootstrap, &[]);
        Setup {
            upstream,
            proxy,
            ports,
        }
    }

    fn http_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports.get("http_port"))
    }

    fn addr(&self, name: &str) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.get(name)))
    }

    /// `n` GETs through the HTTP listener, each answered by the upstream.
    fn send_requests(&self, n: usize) {
        for i in 0..n {
            let r = curl::get(&self.http_url(&format!("/req/{i}")));
            assert_eq!(
                (r.status, r.body.as_str()),
                (200, "from upstream\n"),
                "request {i} through the listener\n{}",
                self.proxy.logs_for_failure()
            );
        }
    }

    /// `/stats` as a map from name to the value text.
    fn stats(&self) -> Vec<(String, String)> {
        let r = self.proxy.get("/stats");
        assert_eq!(r.status, 200, "{r:?}");
        stat_lines(&r.body)
    }

    fn stat(&self, name: &str) -> Option<String> {
        self.stats()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }
}

fn stat_lines(body: &str) -> Vec<(String, String)> {
    body.lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

#[test]
fn ready_and_server_info_describe_a_live_server() {
    let s = Setup::start();
    let ready = s.proxy.get("/ready");
    assert_eq!((ready.status, ready.body.trim()), (200, "LIVE"));

    let info = s.proxy.get("/server_info");
    assert_eq!(info.status, 200);
    assert_eq!(info.header("content-type"), Some("application/json"));
    let info = info.json();
    for field in [
        "version",
        "state",
        "hot_restart_version",
        "command_line_options",
        "node",
        "uptime_current_epoch",
        "uptime_all_epochs",
    ] {
        assert!(
            info.get(field).is_some(),
            "server_info has no {field}: {info:#}"
        );
    }
    assert_eq!(info["state"], "LIVE");
    assert_eq!(info["node"]["id"], "e2e-node");
    assert_eq!(info["node"]["cluster"], "e2e-cluster");
    let uptime = info["uptime_current_epoch"].as_str().unwrap_or_default();
    assert!(
        Regex::new(r"^\d+s$").expect("regex").is_match(uptime),
        "uptime_current_epoch is a Duration in JSON: {uptime:?}"
    );
    let config_path = info["command_line_options"]["config_path"]
        .as_str()
        .unwrap_or_default();
    assert!(
        config_path.ends_with("bootstrap.yaml"),
        "command_line_options.config_path: {config_path:?}"
    );
}

#[test]
fn clusters_and_listeners_in_text_and_json() {
    let s = Setup::start();
    let up = s.upstream.addr();

    let text = s.proxy.get("/clusters");
    assert_eq!(text.status, 200);
    for line in [
        "backend::observability_name::backend".to_string(),
        "backend::default_priority::max_connections::1024".to_string(),
        "backend::added_via_api::false".to_string(),
        format!("backend::{up}::health_flags::healthy"),
        format!("backend::{up}::weight::1"),
        format!("backend::{up}::rq_total::0"),
    ] {
        assert!(
            text.body.lines().any(|l| l == line),
            "/clusters has no line {line:?}:\n{}",
            text.body
        );
    }

    let json = s.proxy.get("/clusters?format=json").json();
    let cluster = &json["cluster_statuses"][0];
    assert_eq!(cluster["name"], "backend", "{json:#}");
    let host = &cluster["host_statuses"][0];
    assert_eq!(host["address"]["socket_address"]["address"], "127.0.0.1");
    assert_eq!(host["address"]["socket_address"]["port_value"], up.port());
    assert_eq!(host["weight"], 1, "{json:#}");

    let http = s.addr("http_port");
    let tcp = s.addr("tcp_port");
    let listeners = s.proxy.get("/listeners");
    assert_eq!(listeners.status, 200);
    let lines: Vec<&str> = listeners.body.lines().collect();
    assert_eq!(
        lines,
        [
            format!("http_listener::{http}"),
            format!("tcp_listener::{tcp}")
        ],
        "/listeners"
    );

    let json = s.proxy.get("/listeners?format=json").json();
    let statuses = json["listener_statuses"]
        .as_array()
        .unwrap_or_else(|| panic!("no listener_statuses: {json:#}"));
    let seen: Vec<(String, u64)> = statuses
        .iter()
        .map(|l| {
            (
                l["name"].as_str().unwrap_or_default().to_string(),
                l["local_address"]["socket_address"]["port_value"]
                    .as_u64()
                    .unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("http_listener".to_string(), u64::from(http.port())),
            ("tcp_listener".to_string(), u64::from(tcp.port()))
        ],
        "{json:#}"
    );
    // Both listeners accept connections at the addresses they report.
    assert!(curl::connects(http) && curl::connects(tcp));
}

#[test]
fn memory_and_runtime_are_json() {
    let s = Setup::start();
    let memory = s.proxy.get("/memory");
    assert_eq!(memory.status, 200);
    assert_eq!(memory.header("content-type"), Some("application/json"));
    let memory = memory.json();
    for field in ["allocated", "heap_size", "total_physical_bytes"] {
        let value = memory[field].as_str().unwrap_or_default();
        assert!(
            value.parse::<u64>().is_ok(),
            "/memory {field} is a uint64 as a JSON string: {memory:#}"
        );
    }
    let runtime = s.proxy.get("/runtime");
    assert_eq!(runtime.status, 200);
    assert_eq!(runtime.header("content-type"), Some("application/json"));
    let runtime = runtime.json();
    assert!(runtime["layers"].is_array(), "{runtime:#}");
    assert!(runtime["entries"].is_object(), "{runtime:#}");
}

#[test]
fn stats_count_requests_in_every_format() {
    const N: usize = 3;
    let s = Setup::start();
    s.send_requests(N);
    // One connection through the tcp_proxy: curl speaks HTTP/1.1 to the upstream through it.
    let through_tcp = curl::get(&format!("http://{}/over-tcp", s.addr("tcp_port")));
    assert_eq!(through_tcp.body, "from upstream\n");

    let received = s.upstream.requests();
    let paths: Vec<&str> = received.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/req/0", "/req/1", "/req/2", "/over-tcp"]);
    assert_eq!(received[0].method, "GET");

    let stats = s.stats();
    let value = |name: &str| {
        stats
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(value("http.e2e_http.downstream_rq_total"), Some("3"));
    // Envoy counts the tcp_proxy connection as an upstream request of the cluster too.
    assert_eq!(value("cluster.backend.upstream_rq_total"), Some("4"));
    assert_eq!(value("cluster.backend.upstream_rq_200"), Some("3"));
    assert_eq!(value("http.e2e_http.downstream_rq_2xx"), Some("3"));
    assert_eq!(value("server.live"), Some("1"));
    // Counters and gauges come sorted by name (histograms follow them, as in Envoy).
    let names: Vec<&str> = stats
        .iter()
        .filter(|(_, v)| v.parse::<u64>().is_ok())
        .map(|(n, _)| n.as_str())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(
        names, sorted,
        "/stats counters and gauges are sorted by name"
    );

    // ?filter= is a regular expression on the name.
    let filtered = stat_lines(&s.proxy.get("/stats?filter=downstream_rq_total$").body);
    assert!(!filtered.is_empty());
    assert!(
        filtered
            .iter()
            .all(|(n, _)| n.ends_with("downstream_rq_total")),
        "{filtered:?}"
    );
    assert!(filtered.contains(&("http.e2e_http.downstream_rq_total".into(), "3".into())));

    // ?usedonly: what has been written to; an HTTP status class never seen is not.
    let used = stat_lines(&s.proxy.get("/stats?usedonly").body);
    assert!(used.contains(&("http.e2e_http.downstream_rq_total".into(), "3".into())));
    assert!(
        !used
            .iter()
            .any(|(n, _)| n == "http.e2e_http.downstream_rq_5xx"),
        "usedonly lists a stat never written: {used:?}"
    );

    // ?format=json: {"stats": [{"name", "value"}, ..., {"histograms": ...}]}.
    let json = s.proxy.get("/stats?format=json").json();
    let entries = json["stats"]
        .as_array()
        .unwrap_or_else(|| panic!("no stats array: {json:#}"));
    let rq_total = entries
        .iter()
        .find(|e| e["name"] == "http.e2e_http.downstream_rq_total")
        .unwrap_or_else(|| panic!("no http.e2e_http.downstream_rq_total in {json:#}"));
    assert_eq!(rq_total["value"], 3);
    assert!(entries.iter().any(|e| e.get("histograms").is_some()));

    let prom = s.proxy.get("/stats/prometheus");
    assert_eq!(prom.status, 200);
    assert!(
        prom.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain")),
        "{:?}",
        prom.headers
    );
    check_prometheus_text(&prom.body);
}

/// Prometheus text exposition: `# TYPE name kind` lines, and samples `name{labels} value`.
pub fn check_prometheus_text(body: &str) {
    let type_line =
        Regex::new(r"^# TYPE [a-zA-Z_:][a-zA-Z0-9_:]* (counter|gauge|histogram|summary|untyped)$")
            .expect("regex");
    let sample =
        Regex::new(r#"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="[^"]*",?)*\})? \S+$"#)
            .expect("regex");
    let types = body.lines().filter(|l| l.starts_with("# TYPE ")).count();
    assert!(types > 0, "no # TYPE lines:\n{body}");
    for line in body.lines().filter(|l| !l.is_empty()) {
        if line.starts_with('#') {
            assert!(
                type_line.is_match(line) || line.starts_with("# HELP "),
                "bad comment line {line:?}"
            );
        } else {
            assert!(sample.is_match(line), "bad sample line {line:?}");
        }
    }
}

#[test]
fn logging_levels_change_through_post() {
    let s = Setup::start();
    let levels = |body: &str| -> Vec<(String, String)> {
        assert!(body.starts_with("active loggers:"), "{body}");
        body.lines()
            .skip(1)
            .filter_map(|l| l.trim().split_once(": "))
            .map(|(n, l)| (n.to_string(), l.to_string()))
            .collect()
    };

    let listed = s.proxy.post("/logging");
    assert_eq!(listed.status, 200);
    let before = levels(&listed.body);
    assert!(before.iter().any(|(n, _)| n == "upstream"), "{before:?}");

    let all_debug = s.proxy.post("/logging?level=debug");
    assert_eq!(all_debug.status, 200, "{all_debug:?}");
    let now = levels(&s.proxy.post("/logging").body);
    assert_eq!(now.len(), before.len());
    assert!(now.iter().all(|(_, l)| l == "debug"), "{now:?}");

    let one = s.proxy.post("/logging?upstream=trace");
    assert_eq!(one.status, 200, "{one:?}");
    let now = levels(&s.proxy.post("/logging").body);
    for (name, level) in &now {
        let want = if name == "upstream" { "trace" } else { "debug" };
        assert_eq!(level, want, "logger {name}: {now:?}");
    }

    let bad = s.proxy.post("/logging?level=loud");
    assert_eq!(bad.status, 400, "an unknown level is refused: {bad:?}");
}

#[test]
fn post_only_endpoints_refuse_get_with_405() {
    let s = Setup::start();
    for path in [
        "/quitquitquit",
        "/healthcheck/fail",
        "/healthcheck/ok",
        "/drain_listeners",
        "/logging",
        "/logging?level=debug",
    ] {
        let r = s.proxy.get(path);
        assert_eq!(r.status, 405, "GET {path}: {r:?}");
        assert_eq!(r.body.trim(), "Method GET not allowed, POST required.");
    }
    // None of them acted: still LIVE, still listening, still at info.
    let ready = s.proxy.get("/ready");
    assert_eq!((ready.status, ready.body.trim()), (200, "LIVE"));
    assert!(curl::connects(s.addr("http_port")));
    assert!(!s.proxy.post("/logging").body.contains(": debug"));
}

#[test]
fn healthcheck_fail_makes_ready_503_and_ok_restores_it() {
    let s = Setup::start();
    assert_eq!(s.proxy.post("/healthcheck/fail").status, 200);
    let ready = s.proxy.get("/ready");
    assert_eq!((ready.status, ready.body.trim()), (503, "DRAINING"));
    assert_eq!(s.proxy.get("/server_info").json()["state"], "DRAINING");
    // Traffic still flows: failing health checks only tells load balancers to go away.
    s.send_requests(1);

    assert_eq!(s.proxy.post("/healthcheck/ok").status, 200);
    let ready = s.proxy.get("/ready");
    assert_eq!((ready.status, ready.body.trim()), (200, "LIVE"));
    assert_eq!(s.proxy.get("/server_info").json()["state"], "LIVE");
}

#[test]
fn drain_listeners_refuses_new_connections_while_admin_answers() {
    let s = Setup::start();
    s.send_requests(1);
    let drained = s.proxy.post("/drain_listeners");
    assert_eq!((drained.status, drained.body.trim()), (200, "OK"));
    // Envoy closes the listening sockets right away; allow a moment for that to land.
    let deadline = Instant::now() + Duration::from_secs(5);
    let listeners = [s.addr("http_port"), s.addr("tcp_port")];
    while listeners.iter().any(|a| curl::connects(*a)) {
        assert!(
            Instant::now() < deadline,
            "listeners still accept connections 5 s after /drain_listeners\n{}",
            s.proxy.logs_for_failure()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let refused = curl::request("GET", &s.http_url("/after-drain"), &[]);
    assert_eq!(
        refused.as_ref().err().and_then(|f| f.exit_code),
        Some(7),
        "curl could not connect (exit 7): {refused:?}"
    );
    let ready = s.proxy.get("/ready");
    assert_eq!(ready.status, 200, "admin still answers: {ready:?}");
    assert_eq!(s.proxy.get("/server_info").status, 200);
}

// ---- Stats and states checked on Envoy first, then on Outrigger ----

fn for_envoy_then_outrigger(test: &str, check: impl Fn(&Setup)) {
    if envoy_or_skip(test).is_some() {
        check(&Setup::start_kind(Kind::Envoy));
    }
    check(&Setup::start_kind(Kind::Outrigger));
}

fn stat_of(s: &Setup, name: &str) -> String {
    format!("{}: {name} = {:?}", s.proxy.kind().name(), s.stat(name))
}

#[test]
fn upstream_connections_are_counted() {
    for_envoy_then_outrigger("upstream_connections_are_counted", |s| {
        s.send_requests(2);
        let name = "cluster.backend.upstream_cx_total";
        let cx_total: u64 = s.stat(name).and_then(|v| v.parse().ok()).unwrap_or(0);
        let accepted = s.upstream.connections() as u64;
        assert!(
            cx_total >= 1 && cx_total == accepted,
            "{}; the upstream accepted {accepted} connections",
            stat_of(s, name)
        );
        let line = format!("backend::{}::cx_total::{accepted}", s.upstream.addr());
        let clusters = s.proxy.get("/clusters").body;
        assert!(
            clusters.lines().any(|l| l == line),
            "{}: /clusters has no {line:?}",
            s.proxy.kind().name()
        );
    });
}

#[test]
fn listener_stats_are_named_like_envoy() {
    for_envoy_then_outrigger("listener_stats_are_named_like_envoy", |s| {
        s.send_requests(2);
        let name = format!(
            "listener.127.0.0.1_{}.downstream_cx_total",
            s.ports.get("http_port")
        );
        assert_eq!(
            s.stat(&name).as_deref(),
            Some("2"),
            "{}\n{}",
            stat_of(s, &name),
            s.proxy.get("/stats?filter=^listener\\.").body
        );
    });
}

#[test]
fn healthcheck_fail_sets_server_live_to_zero() {
    for_envoy_then_outrigger("healthcheck_fail_sets_server_live_to_zero", |s| {
        assert_eq!(s.stat("server.live").as_deref(), Some("1"));
        s.proxy.post("/healthcheck/fail");
        assert_eq!(
            s.stat("server.live").as_deref(),
            Some("0"),
            "{}",
            stat_of(s, "server.live")
        );
        s.proxy.post("/healthcheck/ok");
        assert_eq!(s.stat("server.live").as_deref(), Some("1"));
    });
}

#[test]
fn tcp_proxy_connections_are_counted() {
    for_envoy_then_outrigger("tcp_proxy_connections_are_counted", |s| {
        let through_tcp = curl::get(&format!("http://{}/over-tcp", s.addr("tcp_port")));
        assert_eq!(through_tcp.body, "from upstream\n");
        let name = "tcp.e2e_tcp.downstream_cx_total";
        assert_eq!(s.stat(name).as_deref(), Some("1"), "{}", stat_of(s, name));
    });
}
