//! Non-aggregated xDS: LDS, CDS, RDS and EDS each from their own `api_config_source` (gRPC,
//! state of the world and delta) instead of ADS. The same script runs against Envoy: both must
//! open the same streams (per gRPC service) and ACK/NACK the same responses on each, and give
//! the same traffic outcome after every step.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/config_source.proto#config-core-v3-apiconfigsource

use std::collections::BTreeMap;
use std::time::Duration;
use tests::control_plane::{ControlPlane, Recorded, CLUSTER, ENDPOINT, LISTENER, ROUTE};
use tests::curl::body_becomes;
use tests::xds_resources::resource;
use tests::{envoy_or_skip, free_port, Kind, RunningProxy, Upstream};
use xds_proto::pb::envoy::config::cluster::v3::Cluster;
use xds_proto::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds_proto::pb::envoy::config::listener::v3::Listener;
use xds_proto::pb::envoy::config::route::v3::RouteConfiguration;
use xds_proto::pb::google::protobuf::Any;

/// A gRPC config source of its own over the static cluster `xds-grpc`.
fn source(delta: bool) -> String {
    let api = if delta { "DELTA_GRPC" } else { "GRPC" };
    format!(
        "{{ api_config_source: {{ api_type: {api}, transport_api_version: V3, \
         grpc_services: [{{ envoy_grpc: {{ cluster_name: xds-grpc }} }}] }}, \
         resource_api_version: V3 }}"
    )
}

fn bootstrap(admin: u16, control_plane: u16, delta: bool) -> String {
    let src = source(delta);
    format!(
        r#"
node: {{ id: sidecar~127.0.0.1~test.default~default.svc.cluster.local, cluster: test }}
admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }} }}
dynamic_resources:
  cds_config: {src}
  lds_config: {src}
{}"#,
        tests::xds_resources::xds_grpc_cluster(control_plane)
    )
}

fn cluster(name: &str, delta: bool) -> (String, Any) {
    resource::<Cluster>(
        name,
        &format!(
            "name: {name}\ntype: EDS\nconnect_timeout: 1s\n\
             eds_cluster_config: {{ eds_config: {} }}\n",
            source(delta)
        ),
    )
}

fn endpoints(name: &str, port: u16) -> (String, Any) {
    resource::<ClusterLoadAssignment>(
        name,
        &format!(
            "cluster_name: {name}\nendpoints:\n- lb_endpoints:\n  - endpoint: \
             {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}\n"
        ),
    )
}

fn listener(name: &str, port: u16, routes: &str, delta: bool) -> (String, Any) {
    resource::<Listener>(
        name,
        &format!(
            r#"
name: {name}
address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: {name}
      rds: {{ route_config_name: {routes}, config_source: {src} }}
      http_filters:
      - name: envoy.filters.http.router
        typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
"#,
            src = source(delta)
        ),
    )
}

fn routes(name: &str, cluster: &str) -> (String, Any) {
    resource::<RouteConfiguration>(
        name,
        &format!(
            "name: {name}\nvirtual_hosts:\n- name: all\n  domains: [\"*\"]\n  routes:\n  \
             - match: {{ prefix: \"/\" }}\n    route: {{ cluster: {cluster} }}\n"
        ),
    )
}

/// Per gRPC service: how many streams were opened on it, and what each response got.
fn per_service(requests: &[Recorded]) -> BTreeMap<String, (usize, Vec<String>)> {
    let mut out: BTreeMap<String, (std::collections::BTreeSet<usize>, Vec<String>)> =
        BTreeMap::new();
    for r in requests {
        let entry = out.entry(r.service.to_string()).or_default();
        entry.0.insert(r.stream);
        if r.answers() {
            let verdict = if r.error.is_some() { "NACK" } else { "ACK" };
            entry.1.push(if r.delta {
                format!("{} {verdict}", r.short_type())
            } else {
                format!("{} {verdict} v{}", r.short_type(), r.version_info)
            });
        }
    }
    out.into_iter()
        .map(|(k, (streams, answers))| (k, (streams.len(), answers)))
        .collect()
}

type Steps = Vec<(String, String, BTreeMap<String, (usize, Vec<String>)>)>;

fn script(kind: Kind, delta: bool) -> Steps {
    let one = Upstream::start("one");
    let two = Upstream::start("two");
    let cp = ControlPlane::start();
    let (port_a, port_b) = (free_port(), free_port());
    cp.set(CLUSTER, vec![cluster("a", delta), cluster("b", delta)]);
    cp.set(
        ENDPOINT,
        vec![endpoints("a", one.port()), endpoints("b", two.port())],
    );
    cp.set(
        LISTENER,
        vec![
            listener("la", port_a, "ra", delta),
            listener("lb", port_b, "rb", delta),
        ],
    );
    cp.set(ROUTE, vec![routes("ra", "a"), routes("rb", "b")]);
    let proxy = RunningProxy::start(kind, &bootstrap(free_port(), cp.port(), delta), &[]);
    let url_a = format!("http://127.0.0.1:{port_a}/");
    let url_b = format!("http://127.0.0.1:{port_b}/");
    let mut steps = Vec::new();
    let mut step = |name: &str, outcome: String, cp: &ControlPlane| {
        steps.push((name.to_string(), outcome, per_service(&cp.requests())));
    };
    let both = |want_a: &str, want_b: &str| {
        format!(
            "{} / {}",
            body_becomes(&url_a, want_a, Duration::from_secs(10)),
            body_becomes(&url_b, want_b, Duration::from_secs(10))
        )
    };
    step("initial", both("200 one", "200 two"), &cp);

    // An endpoint change on one EDS subscription.
    cp.set(
        ENDPOINT,
        vec![endpoints("a", two.port()), endpoints("b", two.port())],
    );
    let outcome = both("200 two", "200 two");
    cp.wait_for(Duration::from_secs(5), "the EDS ACK", |r| {
        r.iter()
            .filter(|r| r.answers() && r.type_url == ENDPOINT && r.version_info != "1")
            .count()
            >= 1
    });
    step("eds update", outcome, &cp);

    // A route change: listener la now routes to b's cluster... which now is `one`.
    cp.set(
        ENDPOINT,
        vec![endpoints("a", two.port()), endpoints("b", one.port())],
    );
    cp.set(ROUTE, vec![routes("ra", "b"), routes("rb", "b")]);
    step("rds update", both("200 one", "200 one"), &cp);

    // A bad listener is refused on the LDS stream; the running ones keep serving.
    let mut bad = listener("la", port_a, "ra", delta);
    bad.1 = resource::<Listener>(
        "la",
        "name: la\naddress: { socket_address: { address: not-an-ip, port_value: 1 } }\n",
    )
    .1;
    cp.set(LISTENER, vec![bad, listener("lb", port_b, "rb", delta)]);
    cp.wait_for(Duration::from_secs(5), "the LDS NACK", |r| {
        r.iter()
            .any(|r| r.type_url == LISTENER && r.error.is_some())
    });
    step("bad listener", both("200 one", "200 one"), &cp);

    // Every stream dropped: each of the six (CDS, LDS, and one per EDS cluster and RDS table)
    // is opened again and answered. Both proxies back off with jitter, so wait for all six.
    let before = cp.streams();
    cp.drop_streams();
    cp.wait_for(
        Duration::from_secs(30),
        "all six streams answered again",
        |r| {
            let reopened: std::collections::BTreeSet<usize> = r
                .iter()
                .filter(|r| r.stream > before && r.answers())
                .map(|r| r.stream)
                .collect();
            reopened.len() >= 6
        },
    );
    step("reconnect", both("200 one", "200 one"), &cp);
    drop(proxy);
    steps
}

fn check_against_envoy(delta: bool) {
    let ours = script(Kind::Outrigger, delta);
    for (name, outcome, _) in &ours {
        let want = match name.as_str() {
            "initial" => "200 one / 200 two",
            "eds update" => "200 two / 200 two",
            _ => "200 one / 200 one",
        };
        assert_eq!(outcome, want, "step {name}: {ours:#?}");
    }
    let Some(_) = envoy_or_skip("xds_per_type") else {
        return;
    };
    let envoy = script(Kind::Envoy, delta);
    for ((step, ours_outcome, ours_answers), (_, envoy_outcome, envoy_answers)) in
        ours.iter().zip(&envoy)
    {
        assert_eq!(ours_outcome, envoy_outcome, "traffic after step {step}");
        assert_eq!(
            ours_answers, envoy_answers,
            "streams and ACK/NACK sequence per service after step {step}"
        );
    }
}

#[test]
fn per_type_sources_state_of_the_world_follow_envoy() {
    check_against_envoy(false);
}

#[test]
fn per_type_sources_delta_follow_envoy() {
    check_against_envoy(true);
}
