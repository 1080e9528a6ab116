//! Cluster warming as the control plane sees it: Envoy answers a CDS update only once the
//! clusters it brought are warm (their endpoints arrived, or their initial fetch timed out),
//! so a control plane's view of what the proxy has applied includes the endpoints. Outrigger
//! must answer in the same order, and count the clusters in `cluster_manager.*` alike.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/cluster_manager#cluster-warming

use std::time::Duration;
use tests::control_plane::{ControlPlane, Recorded, CLUSTER, ENDPOINT};
use tests::curl::body_becomes;
use tests::xds_resources::{
    ads_bootstrap, backend_cluster, backend_endpoints, resource, serve_backend,
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
