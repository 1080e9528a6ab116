//! Locality-weighted load balancing compared with Envoy: the same bootstrap and upstreams in
//! front of both proxies, the same sequence of requests, and how many each upstream served.
//! Cluster `weights`: locality A (weight 1, one host), locality B (weight 3, two hosts of
//! host weights 1 and 3), locality C (no weight: no traffic). Cluster `spill`: priority 0 holds
//! locality A (weight 1) and locality B (weight 1, one host of two answering, the other on a
//! port nothing listens on, failed by outlier detection after its first error), so B's
//! availability scales its weight down.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/load_balancing/locality_weight

use std::collections::BTreeMap;
use tests::scripted::{Behaviour, Scripted};
use tests::upstream::Reply;
use tests::{curl, envoy_or_skip, free_port, Kind, Ports, RunningProxy};

const ROUTES: &str = r#"
              - { match: { prefix: "/weights" }, route: { cluster: weights } }
              - { match: { prefix: "/typed" }, route: { cluster: typed } }
              - { match: { prefix: "/spill" }, route: { cluster: spill } }"#;

fn endpoint(port: &str, weight: u32) -> String {
    format!(
        "{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{{{{port}}}}} }} }} }}, load_balancing_weight: {weight} }}"
    )
}

fn clusters() -> String {
    format!(
        r#"
  - name: weights
    type: STATIC
    connect_timeout: 1s
    common_lb_config: {{ locality_weighted_lb_config: {{}} }}
    load_assignment:
      cluster_name: weights
      endpoints:
      - {{ locality: {{ zone: a }}, load_balancing_weight: 1, lb_endpoints: [ {a} ] }}
      - {{ locality: {{ zone: b }}, load_balancing_weight: 3, lb_endpoints: [ {b1}, {b2} ] }}
      - {{ locality: {{ zone: c }}, lb_endpoints: [ {c} ] }}
  - name: typed
    type: STATIC
    connect_timeout: 1s
    load_balancing_policy:
      policies:
      - typed_extension_config:
          name: envoy.load_balancing_policies.round_robin
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin
            locality_lb_config: {{ locality_weighted_lb_config: {{}} }}
    load_assignment:
      cluster_name: typed
      endpoints:
      - {{ locality: {{ zone: a }}, load_balancing_weight: 1, lb_endpoints: [ {a} ] }}
      - {{ locality: {{ zone: b }}, load_balancing_weight: 3, lb_endpoints: [ {b1}, {b2} ] }}
      - {{ locality: {{ zone: c }}, lb_endpoints: [ {c} ] }}
  - name: spill
    type: STATIC
    connect_timeout: 1s
    common_lb_config: {{ locality_weighted_lb_config: {{}}, healthy_panic_threshold: {{ value: 0 }}, update_merge_window: 0s }}
    outlier_detection: {{ consecutive_5xx: 1, consecutive_gateway_failure: 1, interval: 60s, base_ejection_time: 60s, max_ejection_percent: 100 }}
    load_assignment:
      cluster_name: spill
      endpoints:
      - {{ locality: {{ zone: a }}, load_balancing_weight: 1, lb_endpoints: [ {sa} ] }}
      - {{ locality: {{ zone: b }}, load_balancing_weight: 1, lb_endpoints: [ {sb}, {sdead} ] }}
"#,
        a = endpoint("a", 1),
        b1 = endpoint("b1", 1),
        b2 = endpoint("b2", 3),
        c = endpoint("c", 1),
        sa = endpoint("sa", 1),
        sb = endpoint("sb", 1),
        sdead = endpoint("sdead", 1),
    )
}

/// Who served `n` requests to `path` (the `x-upstream` header, or the status).
fn served(port: u16, path: &str, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let r = curl::get(&format!("http://127.0.0.1:{port}{path}"));
        let who = r
            .header("x-upstream")
            .map_or_else(|| format!("status {}", r.status), str::to_string);
        *seen.entry(who).or_insert(0) += 1;
    }
    seen
}

fn run(kind: Kind) -> Vec<BTreeMap<String, usize>> {
    let names = ["a", "b1", "b2", "c", "sa", "sb"];
    let upstreams: Vec<Scripted> = names
        .iter()
        .map(|n| Scripted::start(n, Behaviour::Reply(Reply::text(&format!("{n}\n")))))
        .collect();
    let mut ports = Ports::new(&["admin", "listener"]).with("sdead", free_port());
    for (n, u) in names.iter().zip(&upstreams) {
        ports = ports.with(n, u.port());
    }
    let bootstrap = tests::bootstraps::one_listener(ROUTES, &clusters());
    let proxy = RunningProxy::start(kind, &ports.render(&bootstrap), &["--concurrency", "1"]);
    let port = ports.get("listener");
    let weights = served(port, "/weights", 80);
    // The same through a typed round robin policy's locality_lb_config.
    let typed = served(port, "/typed", 80);
    // The dead host fails its first request (503) and is ejected; then locality B has one of
    // two hosts available: 1.4 × 1/2 = 0.7 of its weight against A's full weight.
    // Which healthy host answered which of these depends on where each proxy's locality
    // order starts; only the failure is compared.
    let warm: BTreeMap<String, usize> = served(port, "/spill", 6)
        .into_iter()
        .filter(|(who, _)| who.starts_with("status"))
        .collect();
    let spill = served(port, "/spill", 170);
    drop(proxy);
    vec![weights, typed, warm, spill]
}

#[test]
fn locality_weights_split_traffic_like_envoy() {
    let ours = run(Kind::Outrigger);
    // Independent of Envoy: A 1/4, B 3/4 split 1:3 by host weight, C nothing.
    let weights = &ours[0];
    assert_eq!(weights.get("a"), Some(&20), "{ours:?}");
    assert_eq!(weights.get("b1"), Some(&15), "{ours:?}");
    assert_eq!(weights.get("b2"), Some(&45), "{ours:?}");
    assert_eq!(weights.get("c"), None, "{ours:?}");
    // A at full weight, B at 0.7 of its weight: 100 and 70 of 170.
    assert_eq!(
        ours[1], ours[0],
        "the typed policy's locality weights: {ours:?}"
    );
    assert_eq!(ours[3].get("sa"), Some(&100), "{ours:?}");
    assert_eq!(ours[3].get("sb"), Some(&70), "{ours:?}");
    if envoy_or_skip("locality_weights_split_traffic_like_envoy").is_none() {
        return;
    }
    let envoy = run(Kind::Envoy);
    assert_eq!(envoy, ours, "Envoy, then Outrigger");
}
