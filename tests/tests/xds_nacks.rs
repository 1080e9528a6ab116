//! A control plane sending what must be refused — undecodable bytes, a resource of the wrong
//! type, a broken cluster among good ones — gets a NACK, and the configuration serving keeps
//! serving; a state-of-the-world response with one bad cluster is handled as Envoy handles it.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#ack-nack-and-resource-type-instance-version

use std::time::Duration;
use tests::control_plane::{ControlPlane, CLUSTER, ENDPOINT, LISTENER, ROUTE};
use tests::curl::body_becomes;
use tests::xds_resources::{
    ads_bootstrap, backend_cluster, backend_listener, resource, serve_backend,
};
use tests::{envoy_or_skip, free_port, Kind, RunningProxy, Upstream};
use xds_proto::pb::envoy::config::cluster::v3::Cluster;
use xds_proto::pb::google::protobuf::Any;

/// Input from the control plane never takes the proxy down: resources that are not valid
/// protobuf, resources of another type than the response's, and an unknown type are each
/// refused (NACK) while the running configuration keeps serving.
#[test]
fn garbage_from_the_control_plane_is_refused_and_serving_goes_on() {
    let up = Upstream::start("one");
    let cp = ControlPlane::start();
    let port = free_port();
    serve_backend(&cp, up.port(), port);
    let proxy = RunningProxy::start(
        Kind::Outrigger,
        &ads_bootstrap(free_port(), cp.port(), true),
        &[],
    );
    let url = format!("http://127.0.0.1:{port}/");
    assert_eq!(
        body_becomes(&url, "200 one", Duration::from_secs(10)),
        "200 one"
    );
    let garbage = |type_url: &str, bytes: &[u8]| Any {
        type_url: type_url.to_string(),
        value: bytes.to_vec(),
    };
    let cases: Vec<(&str, Any)> = vec![
        (CLUSTER, garbage(CLUSTER, &[0xff, 0xff, 0xff, 0xff, 0x0f])),
        (LISTENER, garbage(LISTENER, b"\x0a\x05ab")),
        (ROUTE, garbage(ROUTE, &[0x12, 0x80, 0x80, 0x80, 0x80, 0x10])),
        (ENDPOINT, garbage(ENDPOINT, &[0x0a, 0xff])),
        // A listener where a cluster should be.
        (CLUSTER, backend_listener("127.0.0.1", port).1),
    ];
    for (i, (type_url, any)) in cases.into_iter().enumerate() {
        let before = cp
            .requests()
            .iter()
            .filter(|r| r.type_url == type_url && r.error.is_some())
            .count();
        let name = if type_url == ENDPOINT || type_url == ROUTE {
            // Named resources are only sent when subscribed.
            if type_url == ENDPOINT {
                "backend"
            } else {
                "local_route"
            }
            .to_string()
        } else {
            format!("garbage-{i}")
        };
        let mut set = vec![(name, any)];
        if type_url == CLUSTER {
            set.push(backend_cluster());
        }
        if type_url == LISTENER {
            set.push(backend_listener("127.0.0.1", port));
        }
        cp.set(type_url, set);
        cp.wait_for(
            Duration::from_secs(5),
            &format!("a NACK for case {i}"),
            |r| {
                r.iter()
                    .filter(|r| r.type_url == type_url && r.error.is_some())
                    .count()
                    > before
            },
        );
        assert_eq!(
            body_becomes(&url, "200 one", Duration::from_secs(5)),
            "200 one",
            "case {i}: {}",
            proxy.logs_for_failure()
        );
    }
    assert_eq!(proxy.get("/ready").status, 200);
}

/// A state-of-the-world response with one bad resource among good ones: the response is
/// NACKed, and the good resources are applied or not exactly as Envoy does.
#[test]
fn one_bad_cluster_among_good_ones_is_handled_like_envoy() {
    let run = |kind: Kind| -> Vec<String> {
        let up = Upstream::start("one");
        let cp = ControlPlane::start();
        let port = free_port();
        serve_backend(&cp, up.port(), port);
        let proxy = RunningProxy::start(kind, &ads_bootstrap(free_port(), cp.port(), false), &[]);
        let extra = resource::<Cluster>(
            "extra",
            "name: extra\ntype: STATIC\nconnect_timeout: 1s\nload_assignment: { cluster_name: extra }\n",
        );
        // EDS without an EDS config: both proxies refuse it.
        let broken =
            resource::<Cluster>("broken", "name: broken\ntype: EDS\nconnect_timeout: 1s\n");
        cp.set(CLUSTER, vec![backend_cluster(), extra, broken]);
        cp.wait_for(Duration::from_secs(5), "the CDS NACK", |r| {
            r.iter().any(|r| r.type_url == CLUSTER && r.error.is_some())
        });
        std::thread::sleep(Duration::from_millis(300));
        let dump = proxy
            .get("/config_dump?resource=dynamic_active_clusters")
            .json();
        let mut names: Vec<String> = dump["configs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["cluster"]["name"].as_str().map(str::to_string))
            .collect();
        names.sort();
        let nacked_version = cp
            .requests()
            .iter()
            .rev()
            .find(|r| r.type_url == CLUSTER && r.error.is_some())
            .map(|r| r.version_info.clone())
            .unwrap_or_default();
        vec![
            format!("{names:?}"),
            format!("NACK keeps v{nacked_version}"),
        ]
    };
    let ours = run(Kind::Outrigger);
    // The good new cluster is applied; the NACK names the version still held.
    assert_eq!(ours, vec!["[\"backend\", \"extra\"]", "NACK keeps v1"]);
    let Some(_) = envoy_or_skip("one_bad_cluster_among_good_ones_is_handled_like_envoy") else {
        return;
    };
    assert_eq!(ours, run(Kind::Envoy));
}
