//! Endpoints' `health_status` compared with Envoy: every status of the assignment is a host
//! (`membership_total` counts them all), UNHEALTHY and TIMEOUT fail it (`/failed_eds_health`),
//! DEGRADED serves from the degraded list (`/degraded_eds_health`), DRAINING leaves it out
//! (`/eds_status_draining`); the host flags, membership gauges and who takes traffic match.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/health_check.proto#enum-config-core-v3-healthstatus

use std::collections::BTreeSet;
use tests::scripted::{Behaviour, Scripted};
use tests::upstream::Reply;
use tests::{curl, envoy_or_skip, Kind, Ports, RunningProxy};

/// (upstream, health_status).
const HOSTS: [(&str, &str); 6] = [
    ("healthy", "HEALTHY"),
    ("unhealthy", "UNHEALTHY"),
    ("draining", "DRAINING"),
    ("timeout", "TIMEOUT"),
    ("degraded", "DEGRADED"),
    ("unknown", "UNKNOWN"),
];

fn clusters() -> String {
    let endpoints: String = HOSTS
        .iter()
        .map(|(name, status)| {
            format!(
                "\n        - {{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{{{{name}}}}} }} }} }}, health_status: {status} }}"
            )
        })
        .collect();
    format!(
        r#"
  - name: c
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: c
      endpoints:
      - lb_endpoints:{endpoints}
"#
    )
}

#[derive(Debug, PartialEq)]
struct Seen {
    /// `<upstream name> <health flags>` per host.
    flags: BTreeSet<String>,
    membership: Vec<String>,
    served: BTreeSet<String>,
}

fn run(kind: Kind) -> Seen {
    let upstreams: Vec<Scripted> = HOSTS
        .iter()
        .map(|(n, _)| Scripted::start(n, Behaviour::Reply(Reply::text(&format!("{n}\n")))))
        .collect();
    let mut ports = Ports::new(&["admin", "listener"]);
    for ((n, _), u) in HOSTS.iter().zip(&upstreams) {
        ports = ports.with(n, u.port());
    }
    let routes = r#"
              - { match: { prefix: "/" }, route: { cluster: c } }"#;
    let bootstrap = tests::bootstraps::one_listener(routes, &clusters());
    let proxy = RunningProxy::start(kind, &ports.render(&bootstrap), &["--concurrency", "1"]);
    // Ports differ per side: hosts are named by their upstream.
    let mut flags = BTreeSet::new();
    for line in proxy.get("/clusters").body.lines() {
        let parts: Vec<&str> = line.split("::").collect();
        if let ["c", address, "health_flags", value] = parts[..] {
            let port: Option<u16> = address.rsplit(':').next().and_then(|p| p.parse().ok());
            let name = HOSTS
                .iter()
                .find(|(n, _)| Some(ports.get(n)) == port)
                .map_or("?", |(n, _)| n);
            flags.insert(format!("{name} {value}"));
        }
    }
    let membership: Vec<String> = proxy
        .get("/stats?filter=^cluster.c.membership_")
        .body
        .lines()
        .filter(|l| !l.contains("membership_change"))
        .map(str::to_string)
        .collect();
    // The healthy hosts take most requests and the degraded one the rest (the level's
    // health is 1.4 × 2/5 healthy, 1.4 × 1/5 degraded): over 60 requests each is seen.
    let url = format!("http://127.0.0.1:{}/", ports.get("listener"));
    let served = (0..60)
        .map(|_| {
            curl::get(&url)
                .header("x-upstream")
                .unwrap_or("local")
                .to_string()
        })
        .collect();
    drop(proxy);
    drop(upstreams);
    Seen {
        flags,
        membership,
        served,
    }
}

#[test]
fn eds_health_statuses_shape_hosts_like_envoy() {
    let ours = run(Kind::Outrigger);
    let flags: BTreeSet<&str> = ours.flags.iter().map(String::as_str).collect();
    for want in [
        "healthy healthy",
        "unhealthy /failed_eds_health",
        "draining /eds_status_draining",
        "timeout /failed_eds_health",
        "degraded /degraded_eds_health",
        "unknown healthy",
    ] {
        assert!(flags.contains(want), "{want}: {ours:?}");
    }
    assert_eq!(
        ours.served,
        ["degraded", "healthy", "unknown"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        "{ours:?}"
    );
    if envoy_or_skip("eds_health_statuses_shape_hosts_like_envoy").is_none() {
        return;
    }
    assert_eq!(run(Kind::Envoy), ours, "Envoy, then Outrigger");
}
