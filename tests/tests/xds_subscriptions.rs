//! Subscriptions to named resources follow what the configuration needs: a listener that
//! switches to another route table subscribes to it, and the old table is unsubscribed once
//! the old listener has drained (state of the world: the name leaves `resource_names`; delta:
//! `resource_names_unsubscribe`). Compared with Envoy, request by request.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#how-the-client-specifies-what-resources-to-return

use std::time::Duration;
use tests::control_plane::{ControlPlane, Recorded, LISTENER, ROUTE};
use tests::curl::body_becomes;
use tests::xds_resources::{
    ads_bootstrap, rds_listener, resource, route_to_backend, serve_backend,
};
use tests::{envoy_or_skip, free_port, Kind, RunningProxy, Upstream};
use xds_proto::pb::envoy::config::route::v3::RouteConfiguration;

/// Every RDS request: what it subscribes (and, in delta, unsubscribes), and whether it
/// answers a response.
fn route_requests(requests: &[Recorded]) -> Vec<String> {
    requests
        .iter()
        .filter(|r| r.type_url == ROUTE)
        .map(|r| {
            let mut names = r.names.clone();
            names.sort();
            let mut gone = r.unsubscribe.clone();
            gone.sort();
            let what = if r.answers() { "answer" } else { "request" };
            format!("{what} names {names:?} unsubscribe {gone:?}")
        })
        .collect()
}

fn run(kind: Kind, delta: bool) -> Vec<String> {
    let up = Upstream::start("one");
    let cp = ControlPlane::start();
    let port = free_port();
    serve_backend(&cp, up.port(), port);
    let other = resource::<RouteConfiguration>(
        "other",
        r#"
name: other
virtual_hosts:
- name: all
  domains: ["*"]
  routes:
  - match: { prefix: "/" }
    direct_response: { status: 200, body: { inline_string: "other" } }
"#,
    );
    let proxy = RunningProxy::start(
        kind,
        &ads_bootstrap(free_port(), cp.port(), delta),
        &["--drain-time-s", "1", "--drain-strategy", "immediate"],
    );
    let url = format!("http://127.0.0.1:{port}/");
    assert_eq!(
        body_becomes(&url, "200 one", Duration::from_secs(10)),
        "200 one"
    );
    let before = route_requests(&cp.requests()).len();
    // The listener now routes with `other` (another stat prefix: a full replacement); it warms
    // until the table arrives, and the old listener serves meanwhile.
    cp.set(
        LISTENER,
        vec![rds_listener("http", "127.0.0.1", port, "switched", "other")],
    );
    cp.wait_for(Duration::from_secs(5), "`other` asked for", |r| {
        r.iter()
            .any(|r| r.type_url == ROUTE && r.names.iter().any(|n| n == "other"))
    });
    std::thread::sleep(Duration::from_millis(300));
    cp.set(ROUTE, vec![route_to_backend(), other]);
    assert_eq!(
        body_becomes(&url, "200 other", Duration::from_secs(10)),
        "200 other"
    );
    // The old listener drains for a second; then its table is no longer needed.
    std::thread::sleep(Duration::from_millis(3000));
    drop(proxy);
    route_requests(&cp.requests()).split_off(before)
}

fn check(delta: bool) {
    let ours = run(Kind::Outrigger, delta);
    assert!(
        ours.iter().any(|r| r.contains("\"other\"")),
        "the new table is subscribed: {ours:#?}"
    );
    let Some(_) = envoy_or_skip("xds_subscriptions") else {
        return;
    };
    assert_eq!(
        ours,
        run(Kind::Envoy, delta),
        "Outrigger (left), Envoy (right)"
    );
}

#[test]
fn route_subscriptions_follow_the_listeners_like_envoy_sotw() {
    check(false);
}

#[test]
fn route_subscriptions_follow_the_listeners_like_envoy_delta() {
    check(true);
}
