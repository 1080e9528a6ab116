//! Dynamic configuration over ADS, state of the world and delta, against a real gRPC control
//! plane: initial fetch and warming, endpoint and route updates, a rejected listener (NACK)
//! that leaves the running one serving, listener removal, and a dropped stream. The same
//! script runs against Envoy (the oracle); both must ACK and NACK the same responses and give
//! the same traffic outcome after every step.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol

use std::time::{Duration, Instant};
use tests::control_plane::{ControlPlane, Recorded, CLUSTER, ENDPOINT, LISTENER, ROUTE};
use tests::curl::body_becomes;
use tests::xds_resources::{
    ads_bootstrap, backend_cluster, backend_endpoints, backend_listener, resource,
    route_to_backend, serve_backend,
};
use tests::{envoy_or_skip, free_port, Kind, RunningProxy, Upstream};
use xds_proto::pb::envoy::config::listener::v3::Listener;
use xds_proto::pb::envoy::config::route::v3::RouteConfiguration;
use xds_proto::pb::google::protobuf::Any;

fn route_direct() -> (String, Any) {
    resource::<RouteConfiguration>(
        "local_route",
        r#"
name: local_route
virtual_hosts:
- name: all
  domains: ["*"]
  routes:
  - match: { prefix: "/" }
    direct_response: { status: 200, body: { inline_string: "direct" } }
"#,
    )
}

/// What one response got: the type, and ACK (with the version accepted) or NACK. Every answer
/// must echo the nonce of a response its stream was sent.
fn answers(requests: &[Recorded]) -> Vec<String> {
    requests
        .iter()
        .filter(|r| r.answers())
        .map(|r| {
            assert!(r.nonce_sent, "an answer with a nonce never sent: {r:?}");
            let verdict = if r.error.is_some() { "NACK" } else { "ACK" };
            if r.delta {
                format!("{} {verdict}", r.short_type())
            } else {
                format!("{} {verdict} v{}", r.short_type(), r.version_info)
            }
        })
        .collect()
}

/// The dynamic parts of `/config_dump?include_eds`: which sections hold which resources, with
/// which versions, and whether a rejected update is shown with its error.
fn dump_summary(proxy: &RunningProxy) -> String {
    let dump = proxy.get("/config_dump?include_eds").json();
    let mut out = Vec::new();
    for config in dump["configs"].as_array().into_iter().flatten() {
        let kind = config["@type"]
            .as_str()
            .unwrap_or("")
            .rsplit('.')
            .next()
            .unwrap_or("");
        let names = |section: &str, name: &dyn Fn(&serde_json::Value) -> String| -> Vec<String> {
            config[section]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| format!("{}@{}", name(e), e["version_info"].as_str().unwrap_or("")))
                .collect()
        };
        match kind {
            "ClustersConfigDump" => out.push(format!(
                "clusters v{} active {:?} warming {:?}",
                config["version_info"].as_str().unwrap_or(""),
                names("dynamic_active_clusters", &|e| e["cluster"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .into()),
                names("dynamic_warming_clusters", &|e| e["cluster"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .into()),
            )),
            "ListenersConfigDump" => {
                out.push(format!(
                    "listeners v{}",
                    config["version_info"].as_str().unwrap_or("")
                ));
                // Envoy 1.40 also lists a rejected update as an entry without a name; Outrigger
                // shows it only as the named listener's error_state, so nameless entries are
                // left out of the comparison.
                for l in config["dynamic_listeners"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|l| l["name"].as_str().is_some_and(|n| !n.is_empty()))
                {
                    out.push(format!(
                        "listener {} active@{} error@{} failed {}",
                        l["name"].as_str().unwrap_or(""),
                        l["active_state"]["version_info"].as_str().unwrap_or("-"),
                        l["error_state"]["version_info"].as_str().unwrap_or("-"),
                        l["error_state"]["failed_configuration"]["name"]
                            .as_str()
                            .unwrap_or("-"),
                    ));
                }
            }
            "RoutesConfigDump" => out.push(format!(
                "routes {:?}",
                names("dynamic_route_configs", &|e| e["route_config"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .into())
            )),
            "EndpointsConfigDump" => out.push(format!(
                "endpoints {:?}",
                names("dynamic_endpoint_configs", &|e| e["endpoint_config"]
                    ["cluster_name"]
                    .as_str()
                    .unwrap_or("")
                    .into())
            )),
            _ => {}
        }
    }
    out.join("\n")
}

/// The names of the subscription stats (`*.cds.*`, `*.lds.*`, `*.rds.*`, `update_*`,
/// `control_plane.*`), one per line.
fn xds_stat_names(proxy: &RunningProxy) -> String {
    let body = proxy.get("/stats").body;
    let names: std::collections::BTreeSet<&str> = body
        .lines()
        .filter_map(|l| l.split_once(": ").map(|(n, _)| n))
        .filter(|n| {
            n.starts_with("control_plane.")
                || n.contains(".cds.")
                || n.contains(".lds.")
                || n.contains(".rds.")
                || n.contains(".eds.")
                || n.contains("update_")
        })
        // HTTP/2 codec stats (`*.http2.inbound_window_update_frames_flood`) are not xDS's.
        .filter(|n| !n.contains(".http2."))
        .collect();
    names.into_iter().collect::<Vec<_>>().join("\n")
}

/// The scripted session; returns, per step, the traffic outcome and the answers so far.
/// The first request of each type on streams after `stream`: what a reconnecting proxy asks
/// for, with the versions it says it holds (state of the world `version_info`, delta
/// `initial_resource_versions`).
fn resubscriptions(requests: &[Recorded], stream: usize) -> String {
    let mut firsts: std::collections::BTreeMap<&str, String> = Default::default();
    for r in requests
        .iter()
        .filter(|r| r.stream > stream && !r.answers())
    {
        let mut names = r.names.clone();
        names.sort();
        firsts.entry(r.short_type()).or_insert_with(|| {
            format!(
                "{} v{:?} names {names:?} held {:?}",
                r.short_type(),
                r.version_info,
                r.initial_versions
            )
        });
    }
    firsts.into_values().collect::<Vec<_>>().join("\n")
}

fn script(kind: Kind, delta: bool) -> Vec<(String, String, Vec<String>)> {
    let one = Upstream::start("one");
    let two = Upstream::start("two");
    let cp = ControlPlane::start();
    let port = free_port();
    serve_backend(&cp, one.port(), port);
    let admin = free_port();
    let proxy = RunningProxy::start(kind, &ads_bootstrap(admin, cp.port(), delta), &[]);
    let url = format!("http://127.0.0.1:{port}/");
    let mut steps = Vec::new();
    let mut step = |name: &str, outcome: String, cp: &ControlPlane| {
        steps.push((name.to_string(), outcome, answers(&cp.requests())));
    };

    // Initial fetch: the listener serves once CDS, EDS, LDS and RDS are in.
    step(
        "initial",
        body_becomes(&url, "200 one", Duration::from_secs(10)),
        &cp,
    );

    // An endpoint change takes effect without touching the listener.
    cp.set(ENDPOINT, vec![backend_endpoints(two.port())]);
    let outcome = body_becomes(&url, "200 two", Duration::from_secs(10));
    cp.wait_for(Duration::from_secs(5), "the EDS ACK", |r| {
        r.iter()
            .filter(|r| r.answers() && r.type_url == ENDPOINT)
            .count()
            >= 2
    });
    step("eds update", outcome, &cp);

    // A listener that cannot be built is refused; the running one keeps serving.
    cp.set(LISTENER, vec![backend_listener("not-an-ip", port)]);
    let requests = cp.wait_for(Duration::from_secs(5), "the LDS NACK", |r| {
        r.iter()
            .any(|r| r.type_url == LISTENER && r.error.is_some())
    });
    if kind == Kind::Outrigger {
        // The NACK names the resource and the field, as `--mode validate` would.
        let detail = requests
            .iter()
            .find_map(|r| r.error.clone().filter(|_| r.type_url == LISTENER))
            .unwrap_or_default();
        assert!(
            detail.starts_with("listener 'http': ")
                && detail.contains("socket_address.address")
                && detail.contains("not-an-ip"),
            "{detail}"
        );
    }
    step(
        "bad listener",
        body_becomes(&url, "200 two", Duration::from_secs(10)),
        &cp,
    );
    step("config_dump", dump_summary(&proxy), &cp);

    // A route update is an atomic swap of the table.
    cp.set(LISTENER, vec![backend_listener("127.0.0.1", port)]);
    cp.set(ROUTE, vec![route_direct()]);
    step(
        "rds update",
        body_becomes(&url, "200 direct", Duration::from_secs(10)),
        &cp,
    );
    // The listener's update went through: its error_state is gone, or kept, as in Envoy.
    step("config_dump after the fix", dump_summary(&proxy), &cp);

    // A dropped stream: the proxy reconnects and keeps serving meanwhile.
    let streams = cp.streams();
    cp.drop_streams();
    // Both proxies back off before reconnecting; wait until every type is answered again.
    cp.wait_for(
        Duration::from_secs(30),
        "every type answered on a new stream",
        |r| {
            [CLUSTER, ENDPOINT, LISTENER, ROUTE].iter().all(|t| {
                r.iter()
                    .any(|r| r.stream > streams && r.answers() && r.type_url == *t)
            })
        },
    );
    step(
        "reconnect",
        body_becomes(&url, "200 direct", Duration::from_secs(10)),
        &cp,
    );
    step("resubscribe", resubscriptions(&cp.requests(), streams), &cp);

    // The xDS stats both keep (names only: counts depend on timing), and the version gauges
    // (hashes of the versions accepted).
    step("stats", xds_stat_names(&proxy), &cp);
    let versions: Vec<String> = proxy
        .get("/stats")
        .body
        .lines()
        .filter(|l| l.contains(".version: ") && !l.contains("version_text"))
        // Envoy's is a number from its source revision.
        .filter(|l| !l.starts_with("server.version: "))
        .map(str::to_string)
        .collect();
    step("version gauges", versions.join("\n"), &cp);

    // Removing the listener closes its port.
    cp.set(LISTENER, vec![]);
    step(
        "listener removed",
        body_becomes(&url, "refused", Duration::from_secs(10)),
        &cp,
    );
    drop(proxy);
    steps
}

fn check_against_envoy(delta: bool) {
    let ours = script(Kind::Outrigger, delta);
    for (name, outcome, _) in &ours {
        let want = match name.as_str() {
            "initial" => "200 one",
            "eds update" | "bad listener" => "200 two",
            "config_dump"
            | "config_dump after the fix"
            | "stats"
            | "version gauges"
            | "resubscribe" => continue,
            "rds update" | "reconnect" => "200 direct",
            _ => "refused",
        };
        assert_eq!(outcome, want, "step {name}: {ours:#?}");
    }
    let Some(_) = envoy_or_skip("xds_ads") else {
        return;
    };
    let envoy = script(Kind::Envoy, delta);
    for ((step, ours_outcome, ours_answers), (_, envoy_outcome, envoy_answers)) in
        ours.iter().zip(&envoy)
    {
        assert_eq!(ours_outcome, envoy_outcome, "traffic after step {step}");
        assert_eq!(
            ours_answers, envoy_answers,
            "ACK/NACK sequence after step {step}"
        );
    }
}

#[test]
fn state_of_the_world_follows_envoy() {
    check_against_envoy(false);
}

#[test]
fn delta_follows_envoy() {
    check_against_envoy(true);
}

#[test]
fn delta_reconnect_sends_the_versions_held() {
    let up = Upstream::start("one");
    let cp = ControlPlane::start();
    let port = free_port();
    serve_backend(&cp, up.port(), port);
    let admin = free_port();
    let proxy = RunningProxy::start(Kind::Outrigger, &ads_bootstrap(admin, cp.port(), true), &[]);
    assert_eq!(
        body_becomes(
            &format!("http://127.0.0.1:{port}/"),
            "200 one",
            Duration::from_secs(10)
        ),
        "200 one"
    );
    cp.drop_streams();
    let requests = cp.wait_for(Duration::from_secs(10), "re-subscription", |r| {
        r.iter().any(|r| r.stream == 2 && r.type_url == LISTENER)
    });
    let first_of_stream_2: Vec<&Recorded> = requests
        .iter()
        .filter(|r| r.stream == 2 && !r.answers())
        .collect();
    let cds = first_of_stream_2
        .iter()
        .find(|r| r.type_url == CLUSTER)
        .expect("CDS re-requested");
    assert!(
        cds.has_node,
        "the first request of a stream carries the node"
    );
    assert_eq!(
        cds.initial_versions.keys().collect::<Vec<_>>(),
        vec!["backend"],
        "{cds:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = proxy.get("/stats?filter=control_plane").body;
        if stats.contains("control_plane.connected_state: 1") {
            break;
        }
        assert!(Instant::now() < deadline, "not connected again: {stats}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Istio's `xds-grpc` cluster is a Unix socket at a path relative to the proxy's working
/// directory. The proxy runs in a temporary directory under the system's; the socket is put
/// beside it and named with `../`.
#[test]
fn ads_over_a_unix_socket_at_a_relative_path() {
    let name = format!("outrigger-xds-{}-{}.sock", std::process::id(), free_port());
    let path = std::env::temp_dir().join(&name);
    let cp = ControlPlane::start_unix(&path);
    let up = Upstream::start("one");
    let port = free_port();
    serve_backend(&cp, up.port(), port);
    let tcp = format!(
        "socket_address: {{ address: 127.0.0.1, port_value: {} }}",
        cp.port()
    );
    let bootstrap = ads_bootstrap(free_port(), cp.port(), true)
        .replace(&tcp, &format!("pipe: {{ path: \"../{name}\" }}"));
    assert!(bootstrap.contains(&name));
    let _proxy = RunningProxy::start(Kind::Outrigger, &bootstrap, &[]);
    assert_eq!(
        body_becomes(
            &format!("http://127.0.0.1:{port}/"),
            "200 one",
            Duration::from_secs(10)
        ),
        "200 one"
    );
    let _ = std::fs::remove_file(&path);
}

/// A replaced listener is listed with its old configuration as `draining_state`, and counted
/// in `listener_manager.total_listeners_draining`, until `--drain-time-s` is up; then it is
/// gone. Same in Envoy.
#[test]
fn a_replaced_listener_drains_for_the_drain_time_like_envoy() {
    let run = |kind: Kind| -> Vec<String> {
        let up = Upstream::start("one");
        let cp = ControlPlane::start();
        let port = free_port();
        serve_backend(&cp, up.port(), port);
        let proxy = RunningProxy::start(
            kind,
            &ads_bootstrap(free_port(), cp.port(), false),
            &["--drain-time-s", "2"],
        );
        let state = |proxy: &RunningProxy| {
            let dump = proxy.get("/config_dump?resource=dynamic_listeners").json();
            let listeners = dump["configs"].as_array().cloned().unwrap_or_default();
            let http = listeners
                .iter()
                .find(|l| l["name"] == "http")
                .cloned()
                .unwrap_or_default();
            let gauge = proxy
                .get("/stats?filter=total_listeners_draining")
                .body
                .trim()
                .to_string();
            format!(
                "active@{} draining@{} {gauge}",
                http["active_state"]["version_info"].as_str().unwrap_or("-"),
                http["draining_state"]["version_info"]
                    .as_str()
                    .unwrap_or("-"),
            )
        };
        let before = state(&proxy);
        // The same listener with another stat prefix: replaced on its socket.
        let (name, any) = backend_listener("127.0.0.1", port);
        let mut changed: Listener = xds_proto::unpack(&any).expect("a listener");
        changed.stat_prefix = "replaced".into();
        cp.set(LISTENER, vec![(name, xds_proto::pack(&changed))]);
        cp.wait_for(Duration::from_secs(5), "the LDS ACK", |r| {
            r.iter()
                .any(|r| r.type_url == LISTENER && r.answers() && r.version_info == "2")
        });
        std::thread::sleep(Duration::from_millis(200));
        let during = state(&proxy);
        std::thread::sleep(Duration::from_millis(3500));
        let after = state(&proxy);
        vec![before, during, after]
    };
    let ours = run(Kind::Outrigger);
    assert_eq!(
        ours,
        vec![
            "active@1 draining@- listener_manager.total_listeners_draining: 0",
            "active@2 draining@1 listener_manager.total_listeners_draining: 1",
            "active@2 draining@- listener_manager.total_listeners_draining: 0",
        ]
    );
    let Some(_) = envoy_or_skip("a_replaced_listener_drains_for_the_drain_time_like_envoy") else {
        return;
    };
    assert_eq!(ours, run(Kind::Envoy));
}

/// A listener of two filter chains, the second (default) unused by the test's traffic;
/// `first` and `default` set each chain's stat prefix.
fn two_chain_listener(port: u16, first: &str, default: &str) -> (String, Any) {
    let chain = |prefix: &str| {
        format!(
            r#"
    filters:
    - name: envoy.filters.network.http_connection_manager
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        stat_prefix: {prefix}
        rds:
          route_config_name: local_route
          config_source: {{ ads: {{}}, resource_api_version: V3 }}
        http_filters:
        - name: envoy.filters.http.router
          typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}"#
        )
    };
    resource::<Listener>(
        "http",
        &format!(
            "name: http\naddress: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}\nfilter_chains:\n- {}\ndefault_filter_chain:{}\n",
            chain(first).trim_start(),
            chain(default)
        ),
    )
}

/// Sends a GET on an open HTTP/1.1 connection and returns the response's `connection`
/// header ("-" when absent).
fn connection_header(stream: &mut std::net::TcpStream) -> String {
    use std::io::{Read, Write};
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
        .expect("send a request");
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).expect("read the response");
        assert!(n > 0, "the connection closed before a response");
        response.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&response).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            if body.len() >= length {
                return head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("connection:")
                            .map(|v| v.trim().to_string())
                    })
                    .unwrap_or_else(|| "-".into());
            }
        }
    }
}

/// Only the connections of changed filter chains drain: changing the default chain leaves a
/// connection on the first chain alone; changing the first chain drains it (with the
/// immediate strategy, the next response says `connection: close`). Same in Envoy.
#[test]
fn a_filter_chain_update_drains_only_that_chains_connections_like_envoy() {
    let run = |kind: Kind| -> Vec<String> {
        let up = Upstream::start("one");
        let cp = ControlPlane::start();
        let port = free_port();
        cp.set(CLUSTER, vec![backend_cluster()]);
        cp.set(ENDPOINT, vec![backend_endpoints(up.port())]);
        cp.set(LISTENER, vec![two_chain_listener(port, "first", "default")]);
        cp.set(ROUTE, vec![route_to_backend()]);
        let proxy = RunningProxy::start(
            kind,
            &ads_bootstrap(free_port(), cp.port(), false),
            &["--drain-strategy", "immediate"],
        );
        let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("a read timeout");
        let mut seen = vec![connection_header(&mut client)];
        let push = |first: &str, default: &str, version: &str| {
            cp.set(LISTENER, vec![two_chain_listener(port, first, default)]);
            cp.wait_for(Duration::from_secs(5), "the LDS ACK", |r| {
                r.iter()
                    .any(|r| r.type_url == LISTENER && r.answers() && r.version_info == version)
            });
            std::thread::sleep(Duration::from_millis(300));
        };
        let chains_draining = || {
            proxy
                .get("/stats?filter=listener_manager.total_filter_chains_draining")
                .body
                .trim()
                .to_string()
        };
        push("first", "default-changed", "2");
        seen.push(connection_header(&mut client));
        seen.push(chains_draining());
        push("first-changed", "default-changed", "3");
        seen.push(connection_header(&mut client));
        seen.push(chains_draining());
        seen.push(
            proxy
                .get("/stats?filter=listener_manager.listener_in_place_updated")
                .body
                .trim()
                .to_string(),
        );
        seen
    };
    let ours = run(Kind::Outrigger);
    assert_eq!(
        ours,
        vec![
            "-",
            "-",
            "listener_manager.total_filter_chains_draining: 1",
            "close",
            "listener_manager.total_filter_chains_draining: 2",
            "listener_manager.listener_in_place_updated: 2"
        ]
    );
    let Some(_) =
        envoy_or_skip("a_filter_chain_update_drains_only_that_chains_connections_like_envoy")
    else {
        return;
    };
    assert_eq!(ours, run(Kind::Envoy));
}
