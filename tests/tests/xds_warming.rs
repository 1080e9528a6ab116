//! Cluster warming as the control plane sees it: Envoy answers a CDS update only once the
//! clusters it brought are warm (their endpoints arrived, or their initial fetch timed out),
//! so a control plane's view of what the proxy has applied includes the endpoints. Outrigger
//! must answer in the same order, and count the clusters in `cluster_manager.*` alike.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/cluster_manager#cluster-warming

use std::time::Duration;
use tests::control_plane::{ControlPlane, Recorded, CLUSTER, ENDPOINT, LISTENER, ROUTE};
use tests::curl::body_becomes;
use tests::xds_resources::{
    ads_bootstrap, backend_cluster, backend_endpoints, backend_listener, resource,
    route_to_backend, serve_backend,
};
use tests::{envoy_or_skip, free_port, Kind, RunningProxy, Upstream};
use xds_proto::pb::envoy::config::cluster::v3::Cluster;
use xds_proto::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds_proto::pb::google::protobuf::Any;

/// EDS cluster `second` over ADS; `fetch_timeout` bounds its warming.
fn second_cluster(fetch_timeout: &str) -> (String, Any) {
    resource::<Cluster>(
        "second",
        &format!(
            r#"
name: second
type: EDS
connect_timeout: 1s
eds_cluster_config: {{ eds_config: {{ ads: {{}}, resource_api_version: V3, initial_fetch_timeout: {fetch_timeout} }} }}
"#
        ),
    )
}

fn second_endpoints(port: u16) -> (String, Any) {
    resource::<ClusterLoadAssignment>(
        "second",
        &format!(
            r#"
cluster_name: second
endpoints:
- lb_endpoints:
  - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}
"#
        ),
    )
}

/// STATIC cluster `plain` to the upstream: it needs no endpoints from EDS, so it never warms.
fn plain_cluster(port: u16, connect_timeout: &str) -> (String, Any) {
    resource::<Cluster>(
        "plain",
        &format!(
            r#"
name: plain
type: STATIC
connect_timeout: {connect_timeout}
load_assignment:
  cluster_name: plain
  endpoints:
  - lb_endpoints:
    - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}
"#
        ),
    )
}

/// The CDS answers so far: ACK or NACK, with the version for the state of the world.
fn cds_answers(requests: &[Recorded]) -> Vec<String> {
    requests
        .iter()
        .filter(|r| r.answers() && r.type_url == CLUSTER)
        .map(|r| match (&r.error, r.delta) {
            (Some(_), _) => "NACK".to_string(),
            (None, true) => "ACK".to_string(),
            (None, false) => format!("ACK v{}", r.version_info),
        })
        .collect()
}

/// Adds cluster `second` while its endpoints are withheld and notes, at each step, the CDS
/// answers the control plane has: while `second` warms, once its endpoints arrive, and for a
/// third update whose warming ends by its initial fetch timeout (0.8 s).
fn transcript(kind: Kind, delta: bool) -> Vec<String> {
    let upstream = Upstream::start("one");
    let cp = ControlPlane::start();
    let port = free_port();
    serve_backend(&cp, upstream.port(), port);
    let proxy = RunningProxy::start(kind, &ads_bootstrap(free_port(), cp.port(), delta), &[]);
    let url = format!("http://127.0.0.1:{port}/");
    let mut out = vec![format!(
        "initial: {}",
        body_becomes(&url, "200 one", Duration::from_secs(10))
    )];
    let mut note = |step: &str, cp: &ControlPlane| {
        let managed = proxy.get(
            "/stats?filter=^cluster_manager\\.(cluster_added|cluster_modified|cluster_removed|warming_clusters|active_clusters)$",
        );
        out.push(format!(
            "{step}: {:?} {}",
            cds_answers(&cp.requests()),
            managed.body.trim().replace('\n', ", ")
        ));
    };
    note("before", &cp);
    let before = cds_answers(&cp.requests()).len();

    cp.set(CLUSTER, vec![backend_cluster(), second_cluster("0s")]);
    // Time enough for either proxy to apply the update and, if it does not wait, answer.
    std::thread::sleep(Duration::from_millis(1000));
    note("while second warms", &cp);
    cp.set(
        ENDPOINT,
        vec![
            backend_endpoints(upstream.port()),
            second_endpoints(upstream.port()),
        ],
    );
    cp.wait_for(Duration::from_secs(5), "the update's CDS answer", |r| {
        cds_answers(r).len() > before
    });
    note("once its endpoints arrived", &cp);

    // A cluster whose endpoints never come warms by its initial fetch timeout instead.
    cp.set(
        CLUSTER,
        vec![
            backend_cluster(),
            second_cluster("0s"),
            resource::<Cluster>(
                "third",
                r#"
name: third
type: EDS
connect_timeout: 1s
eds_cluster_config: { eds_config: { ads: {}, resource_api_version: V3, initial_fetch_timeout: 0.8s } }
"#,
            ),
            plain_cluster(upstream.port(), "1s"),
        ],
    );
    std::thread::sleep(Duration::from_millis(400));
    note("while third warms", &cp);
    std::thread::sleep(Duration::from_millis(1600));
    note("after third's fetch timed out", &cp);
    // A changed cluster, and two removed. (A changed EDS cluster warms again in Envoy until
    // its endpoints are sent again, which a delta control plane does not do for unchanged
    // ones; Outrigger starts it with the endpoints it holds. The changed one here is STATIC.)
    cp.set(
        CLUSTER,
        vec![backend_cluster(), plain_cluster(upstream.port(), "2s")],
    );
    cp.wait_for(Duration::from_secs(5), "the last CDS answer", |r| {
        cds_answers(r).len() > before + 2
    });
    std::thread::sleep(Duration::from_millis(300));
    note("after one change and two removals", &cp);
    out.push(format!(
        "traffic: {}",
        body_becomes(&url, "200 one", Duration::from_secs(5))
    ));
    drop(proxy);
    out
}

fn check(delta: bool) {
    let ours = transcript(Kind::Outrigger, delta);
    let Some(_) = envoy_or_skip("xds_warming") else {
        return;
    };
    let envoy = transcript(Kind::Envoy, delta);
    assert_eq!(ours, envoy, "Outrigger (left) and Envoy (right) differ");
}

#[test]
fn a_cds_update_is_answered_once_its_clusters_are_warm_sotw() {
    check(false);
}

#[test]
fn a_cds_update_is_answered_once_its_clusters_are_warm_delta() {
    check(true);
}

/// The server's state through initialisation, as `/ready` and the listener manager's gauges
/// show it: PRE_INITIALIZING while the clusters wait for their endpoints, INITIALIZING while
/// the listeners wait for their routes, then LIVE with the workers started. Same in Envoy.
/// The `server.state` gauge is compared only with `/ready`: Envoy refreshes it on its stats
/// flush (every 5 s by default), so during a short initialisation it still reads 0, "LIVE";
/// Outrigger keeps it current.
/// Envoy: https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/operations/init#initialization
#[test]
fn the_server_state_follows_initialisation_like_envoy() {
    let run = |kind: Kind| -> Vec<String> {
        let up = Upstream::start("one");
        let cp = ControlPlane::start();
        cp.set(CLUSTER, vec![backend_cluster()]);
        let proxy = RunningProxy::start_initializing(
            kind,
            &ads_bootstrap(free_port(), cp.port(), true),
            &[],
        );
        let observe = |phase: &str| {
            let stats = proxy.get("/stats").body;
            let mut seen: Vec<String> = stats
                .lines()
                .filter(|l| {
                    [
                        "listener_manager.workers_started: ",
                        "listener_manager.total_listeners_warming: ",
                    ]
                    .iter()
                    .any(|name| l.starts_with(name))
                })
                .map(str::to_string)
                .collect();
            seen.sort();
            let ready = proxy.get("/ready");
            if kind == Kind::Outrigger {
                let state = ["LIVE", "DRAINING", "PRE_INITIALIZING", "INITIALIZING"]
                    .iter()
                    .position(|s| *s == ready.body.trim())
                    .expect("a server state");
                assert!(
                    stats.contains(&format!("server.state: {state}\n")),
                    "server.state is /ready's {}: {stats}",
                    ready.body.trim()
                );
            }
            let dump = proxy.get("/config_dump?resource=dynamic_listeners").json();
            let http = dump["configs"]
                .as_array()
                .and_then(|ls| ls.iter().find(|l| l["name"] == "http").cloned())
                .unwrap_or_default();
            format!(
                "{phase}: ready {} {} | {} | listener active={} warming={}",
                ready.status,
                ready.body.trim(),
                seen.join(", "),
                !http["active_state"].is_null(),
                !http["warming_state"].is_null(),
            )
        };
        let asked =
            |type_url: &'static str| move |r: &[Recorded]| r.iter().any(|r| r.type_url == type_url);
        cp.wait_for(Duration::from_secs(5), "EDS asked for", asked(ENDPOINT));
        std::thread::sleep(Duration::from_millis(300));
        let mut out = vec![observe("clusters warming")];
        cp.set(LISTENER, vec![backend_listener("127.0.0.1", free_port())]);
        cp.set(ENDPOINT, vec![backend_endpoints(up.port())]);
        cp.wait_for(Duration::from_secs(5), "RDS asked for", asked(ROUTE));
        std::thread::sleep(Duration::from_millis(300));
        out.push(observe("listeners warming"));
        cp.set(ROUTE, vec![route_to_backend()]);
        cp.wait_for(Duration::from_secs(5), "the RDS answer", |r| {
            r.iter().any(|r| r.type_url == ROUTE && r.answers())
        });
        std::thread::sleep(Duration::from_millis(300));
        out.push(observe("warm"));
        out
    };
    let ours = run(Kind::Outrigger);
    let Some(_) = envoy_or_skip("the_server_state_follows_initialisation_like_envoy") else {
        return;
    };
    assert_eq!(ours, run(Kind::Envoy), "Outrigger (left) and Envoy (right)");
}

/// A listener whose route table never comes warms for its RDS source's initial fetch timeout,
/// then starts with no routes (every request gets 404). Same in Envoy.
/// Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/config_source.proto (initial_fetch_timeout)
#[test]
fn a_listener_waits_for_its_route_table_until_the_initial_fetch_timeout_like_envoy() {
    use xds_proto::pb::envoy::config::listener::v3::Listener;
    let run = |kind: Kind| -> Vec<String> {
        let up = Upstream::start("one");
        let cp = ControlPlane::start();
        let port = free_port();
        serve_backend(&cp, up.port(), port);
        let proxy = RunningProxy::start(kind, &ads_bootstrap(free_port(), cp.port(), true), &[]);
        let late_port = free_port();
        let late = resource::<Listener>(
            "late",
            &format!(
                r#"
name: late
address: {{ socket_address: {{ address: 127.0.0.1, port_value: {late_port} }} }}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: late
      rds:
        route_config_name: missing
        config_source: {{ ads: {{}}, resource_api_version: V3, initial_fetch_timeout: 1s }}
      http_filters:
      - name: envoy.filters.http.router
        typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
"#
            ),
        );
        cp.set(LISTENER, vec![backend_listener("127.0.0.1", port), late]);
        let state = |proxy: &RunningProxy| {
            let dump = proxy.get("/config_dump?resource=dynamic_listeners").json();
            let late = dump["configs"]
                .as_array()
                .and_then(|ls| ls.iter().find(|l| l["name"] == "late").cloned())
                .unwrap_or_default();
            let status =
                match tests::curl::request("GET", &format!("http://127.0.0.1:{late_port}/"), &[]) {
                    Ok(r) => r.status.to_string(),
                    Err(_) => "refused".to_string(),
                };
            format!(
                "active={} warming={} answer={status}",
                !late["active_state"].is_null(),
                !late["warming_state"].is_null(),
            )
        };
        cp.wait_for(Duration::from_secs(5), "`missing` asked for", |r| {
            r.iter()
                .any(|r| r.type_url == ROUTE && r.names.iter().any(|n| n == "missing"))
        });
        std::thread::sleep(Duration::from_millis(300));
        let during = state(&proxy);
        std::thread::sleep(Duration::from_millis(2000));
        vec![during, state(&proxy)]
    };
    let ours = run(Kind::Outrigger);
    assert_eq!(
        ours,
        vec![
            "active=false warming=true answer=refused",
            "active=true warming=false answer=404",
        ]
    );
    let Some(_) = envoy_or_skip("a_listener_waits_for_its_route_table") else {
        return;
    };
    assert_eq!(ours, run(Kind::Envoy));
}
