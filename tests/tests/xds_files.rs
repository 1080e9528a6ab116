//! Filesystem subscriptions for CDS and LDS (`path_config_source`): the same files drive Envoy
//! and Outrigger; each file is replaced atomically (written beside, then renamed, as Envoy
//! asks), and both must serve the same after every change, keep the last good configuration
//! when a file is bad, and count it the same way.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/overview/xds_api#filesystem-subscriptions

use std::path::Path;
use std::time::{Duration, Instant};
use tests::curl::body_becomes;
use tests::{envoy_or_skip, free_port, Kind, RunningProxy, Upstream};

/// How long a change may take to show in traffic.
const WAIT: Duration = Duration::from_secs(10);

fn cds(port: u16) -> String {
    format!(
        r#"
version_info: "c{port}"
resources:
- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: backend
  type: STATIC
  connect_timeout: 1s
  load_assignment:
    cluster_name: backend
    endpoints:
    - lb_endpoints:
      - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}
"#
    )
}

fn lds(port: u16, body: &str) -> String {
    format!(
        r#"
version_info: "l{port}"
resources:
- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: http
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
  filter_chains:
  - filters:
    - name: envoy.filters.network.http_connection_manager
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        stat_prefix: files
        route_config:
          virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
            - match: {{ path: "/direct" }}
              direct_response: {{ status: 200, body: {{ inline_string: "{body}" }} }}
            - match: {{ prefix: "/" }}
              route: {{ cluster: backend }}
        http_filters:
        - name: envoy.filters.http.router
          typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
"#
    )
}

/// Writes `text` to `path` by writing a sibling and renaming it over (an atomic move).
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write the new file");
    std::fs::rename(&tmp, path).expect("move it into place");
}

fn stat(proxy: &RunningProxy, name: &str) -> String {
    let body = proxy.get(&format!("/stats?filter=^{name}$")).body;
    body.trim().rsplit(": ").next().unwrap_or("").to_string()
}

/// The script; returns the outcome of every step.
fn script(kind: Kind) -> Vec<(String, String)> {
    let one = Upstream::start("one");
    let two = Upstream::start("two");
    let dir = tempfile::tempdir().expect("a directory for the xDS files");
    let (cds_path, lds_path) = (dir.path().join("cds.yaml"), dir.path().join("lds.yaml"));
    let (port, other_port) = (free_port(), free_port());
    replace(&cds_path, &cds(one.port()));
    replace(&lds_path, &lds(port, "first"));
    let bootstrap = format!(
        r#"
node: {{ id: files, cluster: files }}
admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }} }}
dynamic_resources:
  cds_config: {{ path_config_source: {{ path: "{cds}", watched_directory: {{ path: "{dir}" }} }}, resource_api_version: V3 }}
  lds_config: {{ path_config_source: {{ path: "{lds}", watched_directory: {{ path: "{dir}" }} }}, resource_api_version: V3 }}
"#,
        admin = free_port(),
        cds = cds_path.display(),
        lds = lds_path.display(),
        dir = dir.path().display(),
    );
    let proxy = RunningProxy::start(kind, &bootstrap, &[]);
    let url = |port: u16, path: &str| format!("http://127.0.0.1:{port}{path}");
    let mut steps = Vec::new();
    steps.push((
        "initial".into(),
        body_becomes(&url(port, "/"), "200 one", WAIT),
    ));

    replace(&cds_path, &cds(two.port()));
    steps.push((
        "cluster moved".into(),
        body_becomes(&url(port, "/"), "200 two", WAIT),
    ));

    replace(&lds_path, &lds(port, "second"));
    steps.push((
        "listener changed".into(),
        body_becomes(&url(port, "/direct"), "200 second", WAIT),
    ));

    // A file that does not describe a valid listener: refused, the last good one serves.
    replace(
        &lds_path,
        &lds(port, "third").replace("stat_prefix: files", "stat_prefix: \"\""),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while stat(&proxy, "listener_manager.lds.update_rejected") != "1" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    steps.push((
        "bad listener file".into(),
        format!(
            "{} rejected={}",
            body_becomes(&url(port, "/direct"), "200 second", WAIT),
            stat(&proxy, "listener_manager.lds.update_rejected")
        ),
    ));

    replace(&lds_path, &lds(other_port, "moved"));
    steps.push((
        "listener moved".into(),
        format!(
            "{} / old port {}",
            body_becomes(&url(other_port, "/direct"), "200 moved", WAIT),
            body_becomes(&url(port, "/direct"), "refused", WAIT)
        ),
    ));
    steps
}

#[test]
fn file_subscriptions_follow_envoy() {
    let ours = script(Kind::Outrigger);
    let want = [
        "200 one",
        "200 two",
        "200 second",
        "200 second rejected=1",
        "200 moved / old port refused",
    ];
    for ((step, got), want) in ours.iter().zip(want) {
        assert_eq!(got, want, "step {step}");
    }
    let Some(_) = envoy_or_skip("file_subscriptions_follow_envoy") else {
        return;
    };
    let envoy = script(Kind::Envoy);
    assert_eq!(ours, envoy);
}
