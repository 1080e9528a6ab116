//! Which clusters an EDS assignment reaches: every cluster whose `eds_cluster_config`
//! names that service (several may share one), followed through a cluster changing its
//! service name and a sharing cluster being removed. Outrigger finds the clusters of a
//! service through an index rather than a scan; this checks the index against Envoy.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/cluster/v3/cluster.proto#envoy-v3-api-msg-config-cluster-v3-cluster-edsclusterconfig

use std::time::{Duration, Instant};
use tests::control_plane::{ControlPlane, CLUSTER, ENDPOINT};
use tests::xds_resources::{ads_bootstrap, resource};
use tests::{envoy_or_skip, free_port, Kind, RunningProxy};
use xds_proto::pb::envoy::config::cluster::v3::Cluster;
use xds_proto::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds_proto::pb::google::protobuf::Any;

fn cluster(name: &str, service: &str) -> (String, Any) {
    resource::<Cluster>(
        name,
        &format!(
            "name: {name}\ntype: EDS\nconnect_timeout: 1s\neds_cluster_config: {{ service_name: {service}, eds_config: {{ ads: {{}}, resource_api_version: V3 }} }}\n"
        ),
    )
}

fn assignment(service: &str, port: u16) -> (String, Any) {
    resource::<ClusterLoadAssignment>(
        service,
        &format!(
            "cluster_name: {service}\nendpoints:\n- lb_endpoints:\n  - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}\n"
        ),
    )
}

/// `cluster=host` for the clusters named in `of`, sorted, from `/clusters`.
fn hosts(proxy: &RunningProxy, of: &[&str]) -> String {
    let body = proxy.get("/clusters").body;
    let mut found: Vec<String> = body
        .lines()
        .filter_map(|l| {
            let mut parts = l.split("::");
            let (cluster, host, stat) = (parts.next()?, parts.next()?, parts.next()?);
            (of.contains(&cluster) && stat == "cx_active").then(|| format!("{cluster}={host}"))
        })
        .collect();
    found.sort();
    found.join(" ")
}

/// Polls until the hosts are `want`; returns what was seen last.
fn hosts_become(proxy: &RunningProxy, of: &[&str], want: &str) -> String {
    let start = Instant::now();
    loop {
        let seen = hosts(proxy, of);
        if seen == want || start.elapsed() > Duration::from_secs(10) {
            return seen;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn transcript(kind: Kind) -> Vec<String> {
    let cp = ControlPlane::start();
    cp.set(
        ENDPOINT,
        vec![
            assignment("shared", 1001),
            assignment("c-one", 1002),
            assignment("c-two", 1003),
        ],
    );
    cp.set(
        CLUSTER,
        vec![
            cluster("a", "shared"),
            cluster("b", "shared"),
            cluster("c", "c-one"),
            cluster("d", "c-one"),
        ],
    );
    let proxy = RunningProxy::start(kind, &ads_bootstrap(free_port(), cp.port(), true), &[]);
    let all = ["a", "b", "c", "d"];
    let mut out = vec![hosts_become(
        &proxy,
        &all,
        "a=127.0.0.1:1001 b=127.0.0.1:1001 c=127.0.0.1:1002 d=127.0.0.1:1002",
    )];

    // `c` now takes its endpoints from `c-two`, which the proxy has yet to ask for.
    cp.set(
        CLUSTER,
        vec![
            cluster("a", "shared"),
            cluster("b", "shared"),
            cluster("c", "c-two"),
            cluster("d", "c-one"),
        ],
    );
    out.push(hosts_become(
        &proxy,
        &all,
        "a=127.0.0.1:1001 b=127.0.0.1:1001 c=127.0.0.1:1003 d=127.0.0.1:1002",
    ));

    // `a` goes; `b` still follows `shared`, and `c` no longer follows `c-one` (`d` keeps the
    // proxy subscribed to it).
    cp.set(
        CLUSTER,
        vec![
            cluster("b", "shared"),
            cluster("c", "c-two"),
            cluster("d", "c-one"),
        ],
    );
    out.push(hosts_become(
        &proxy,
        &all,
        "b=127.0.0.1:1001 c=127.0.0.1:1003 d=127.0.0.1:1002",
    ));
    cp.set(
        ENDPOINT,
        vec![
            assignment("shared", 1004),
            assignment("c-one", 1005),
            assignment("c-two", 1003),
        ],
    );
    out.push(hosts_become(
        &proxy,
        &all,
        "b=127.0.0.1:1004 c=127.0.0.1:1003 d=127.0.0.1:1005",
    ));
    // Nothing reached `c` from its old service (a late change would show by now).
    std::thread::sleep(Duration::from_millis(300));
    out.push(hosts(&proxy, &all));
    out
}

#[test]
fn an_assignment_reaches_every_cluster_of_its_service_and_no_other() {
    let want = [
        "a=127.0.0.1:1001 b=127.0.0.1:1001 c=127.0.0.1:1002 d=127.0.0.1:1002",
        "a=127.0.0.1:1001 b=127.0.0.1:1001 c=127.0.0.1:1003 d=127.0.0.1:1002",
        "b=127.0.0.1:1001 c=127.0.0.1:1003 d=127.0.0.1:1002",
        "b=127.0.0.1:1004 c=127.0.0.1:1003 d=127.0.0.1:1005",
        "b=127.0.0.1:1004 c=127.0.0.1:1003 d=127.0.0.1:1005",
    ];
    assert_eq!(transcript(Kind::Outrigger), want, "Outrigger");
    let Some(_) = envoy_or_skip("xds_eds_services") else {
        return;
    };
    assert_eq!(transcript(Kind::Envoy), want, "Envoy");
}
