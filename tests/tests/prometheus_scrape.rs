//! A real Prometheus server (Debian's `prometheus`) scrapes Outrigger twice, as a mesh's
//! Prometheus does: the admin API's `/stats/prometheus`, and Istio's `:15090`-style listener
//! that routes `/stats/prometheus` to the admin cluster. Both targets must be up, their
//! samples ingested, and a known series (`envoy_server_live`) queryable with value 1.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/operations/admin#get--stats-prometheus

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tests::{curl, free_port, Kind, Ports, RunningProxy};

const BOOTSTRAP: &str = r#"
admin: { address: { socket_address: { address: 127.0.0.1, port_value: {{admin}} } } }
static_resources:
  listeners:
  - name: stats
    address: { socket_address: { address: 127.0.0.1, port_value: {{stats}} } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: stats
          route_config:
            virtual_hosts:
            - name: backend
              domains: ["*"]
              routes: [ { match: { prefix: "/stats/prometheus" }, route: { cluster: prometheus_stats } } ]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
  clusters:
  - name: prometheus_stats
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: prometheus_stats
      endpoints: [ { lb_endpoints: [ { endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: {{admin}} } } } } ] } ]
"#;

/// Prometheus, stopped when dropped.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The value of the one sample `query` returns for `job`, if any.
fn sample(api: u16, query: &str, job: &str) -> Option<String> {
    let url = format!(
        "http://127.0.0.1:{api}/api/v1/query?query={}",
        query
            .replace('{', "%7B")
            .replace('}', "%7D")
            .replace('"', "%22")
    );
    let body = curl::request("GET", &url, &[]).ok()?.json();
    body["data"]["result"]
        .as_array()?
        .iter()
        .find(|r| r["metric"]["job"] == job)
        .and_then(|r| r["value"][1].as_str().map(str::to_string))
}

#[test]
fn a_prometheus_server_scrapes_the_admin_api_and_the_stats_listener() {
    let ports = Ports::new(&["admin", "stats"]);
    let _proxy = RunningProxy::start(Kind::Outrigger, &ports.render(BOOTSTRAP), &[]);
    let dir = tempfile::tempdir().expect("a directory for Prometheus");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{ scrape_interval: 1s, scrape_timeout: 1s }}\nscrape_configs:\n- job_name: admin\n  metrics_path: /stats/prometheus\n  static_configs: [ {{ targets: [\"127.0.0.1:{}\"] }} ]\n- job_name: sidecar\n  metrics_path: /stats/prometheus\n  static_configs: [ {{ targets: [\"127.0.0.1:{}\"] }} ]\n",
            ports.get("admin"),
            ports.get("stats")
        ),
    )
    .expect("write the Prometheus config");
    let api = free_port();
    let _prometheus = Prometheus(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{api}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus runs (Debian package `prometheus`; .ci/run installs it)"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let wanted = |job: &str| {
        sample(api, "up", job).as_deref() == Some("1")
            && sample(api, "envoy_server_live", job).as_deref() == Some("1")
    };
    while !(wanted("admin") && wanted("sidecar")) {
        assert!(
            Instant::now() < deadline,
            "Prometheus did not ingest both targets: admin up={:?} live={:?}, sidecar up={:?} live={:?}",
            sample(api, "up", "admin"),
            sample(api, "envoy_server_live", "admin"),
            sample(api, "up", "sidecar"),
            sample(api, "envoy_server_live", "sidecar"),
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    for job in ["admin", "sidecar"] {
        let samples: u64 = sample(api, "scrape_samples_scraped", job)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!(samples > 50, "{job}: {samples} samples scraped");
    }
}
