//! `outrigger proxy sidecar` as an injected pod runs it: pilot-agent's flags and environment,
//! pod label files in the working directory, a control plane reached over delta ADS. The node
//! must be the one pilot-agent would build, the in-memory bootstrap must serve Istio's static
//! listeners with Istio's stats matcher, configuration from the control plane must serve
//! traffic, and SIGTERM must drain the inbound listener under load without a failed request.
//! Istio: https://istio.io/latest/docs/ops/deployment/application-health-checks/ (ports),
//! pilot-agent's bootstrap (shared/reference/istio-contract.md §3, §10).

use nix::sys::signal::Signal;
use serde_json::json;
use std::time::{Duration, Instant};
use tests::control_plane::{ControlPlane, CLUSTER, ENDPOINT, LISTENER, ROUTE};
use tests::curl;
use tests::sidecar::{Load, Sidecar};
use tests::xds_resources::{backend_cluster, backend_endpoints, resource, route_to_backend};
use tests::{free_port, Upstream};
use xds_proto::pb::envoy::config::listener::v3::Listener;

/// An inbound listener on 127.0.0.1:`port` routing to `backend` through RDS `local_route`, with
/// the HTTP filters istiod puts in every sidecar chain (grpc_stats, fault, CORS).
fn inbound_listener(port: u16) -> (String, xds_proto::pb::google::protobuf::Any) {
    resource::<Listener>(
        "virtualInbound",
        &format!(
            r#"
name: virtualInbound
traffic_direction: INBOUND
address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: inbound_0.0.0.0_8080
      rds:
        route_config_name: local_route
        config_source: {{ ads: {{}}, resource_api_version: V3 }}
      http_filters:
      - name: envoy.filters.http.grpc_stats
        typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig, emit_filter_state: true, stats_for_all_methods: false }}
      - name: envoy.filters.http.fault
        typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault }}
      - name: envoy.filters.http.cors
        typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors }}
      - name: envoy.filters.http.router
        typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
"#
        ),
    )
}

struct Pod {
    cp: ControlPlane,
    _upstream: Upstream,
    listener: u16,
    sidecar: Sidecar,
}

fn pod(termination_drain: &str, extra_env: &[(&str, &str)]) -> Pod {
    let cp = ControlPlane::start();
    let upstream = Upstream::start("from the app");
    let listener = free_port();
    cp.set(CLUSTER, vec![backend_cluster()]);
    cp.set(ENDPOINT, vec![backend_endpoints(upstream.port())]);
    cp.set(LISTENER, vec![inbound_listener(listener)]);
    cp.set(ROUTE, vec![route_to_backend()]);
    let proxy_config = json!({
        "discoveryAddress": format!("127.0.0.1:{}", cp.port()),
        "controlPlaneAuthPolicy": "NONE",
        "terminationDrainDuration": termination_drain,
        "drainDuration": "20s",
    });
    let mut sidecar = Sidecar::start(
        proxy_config,
        &[
            &[
                ("ISTIO_META_CLUSTER_ID", "Kubernetes"),
                ("ISTIO_META_WORKLOAD_NAME", "reviews-v1"),
            ],
            extra_env,
        ]
        .concat(),
        &[
            "--domain",
            "demo.svc.cluster.local",
            "--proxyLogLevel=warning",
            "--proxyComponentLogLevel=misc:error",
            "--log_output_level=default:info",
        ],
        |dir| {
            std::fs::create_dir_all(dir.join("etc/istio/pod")).expect("mkdir");
            std::fs::write(
                dir.join("etc/istio/pod/labels"),
                "app=\"reviews\"\npod-template-hash=\"5d4f\"\nversion=\"v1\"\n",
            )
            .expect("write labels");
        },
    );
    sidecar.wait_live(Duration::from_secs(20));
    Pod {
        cp,
        _upstream: upstream,
        listener,
        sidecar,
    }
}

#[test]
fn sidecar_builds_pilot_agents_node_and_serves_config_from_the_control_plane() {
    let pod = pod("5s", &[]);
    let sidecar = &pod.sidecar;

    // Delta ADS with the node on the first request only (set_node_on_first_message_only).
    let requests = pod.cp.requests();
    assert!(!requests.is_empty());
    assert!(requests.iter().all(|r| r.delta), "{requests:?}");
    assert!(requests[0].has_node);
    assert!(requests[1..].iter().all(|r| !r.has_node), "{requests:?}");

    let dump = sidecar
        .admin("/config_dump?resource=&mask=bootstrap")
        .json();
    let bootstrap = dump["configs"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["bootstrap"].is_object()))
        .map(|c| c["bootstrap"].clone())
        .unwrap_or_else(|| panic!("no bootstrap in {dump}"));
    let node = &bootstrap["node"];
    assert_eq!(
        node["id"],
        "sidecar~127.0.0.1~app-0.demo~demo.svc.cluster.local"
    );
    assert_eq!(node["cluster"], "reviews.demo", "app label + namespace");
    let md = &node["metadata"];
    assert_eq!(md["CLUSTER_ID"], "Kubernetes");
    assert_eq!(md["WORKLOAD_NAME"], "reviews-v1");
    assert_eq!(md["NAMESPACE"], "demo");
    assert_eq!(md["LABELS"]["app"], "reviews");
    assert!(md["LABELS"].get("pod-template-hash").is_none());
    assert_eq!(md["ISTIO_VERSION"], outrigger_istio_version());
    assert_eq!(md["ENVOY_STATUS_PORT"], json!(sidecar.ports.envoy_status));
    assert_eq!(md["PROXY_CONFIG"]["terminationDrainDuration"], "5s");
    // Istio's static resources are there, named as pilot-agent names them.
    let clusters: Vec<&str> = bootstrap["static_resources"]["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        clusters,
        ["prometheus_stats", "agent", "sds-grpc", "xds-grpc"]
    );

    // Traffic through the listener the control plane sent.
    let url = format!("http://127.0.0.1:{}/", pod.listener);
    assert_eq!(curl::get(&url).body, "from the app");

    // The Prometheus listener answers, and Istio's stats matcher keeps what Istio keeps.
    let prom = curl::get(&format!(
        "http://127.0.0.1:{}/stats/prometheus",
        sidecar.ports.prometheus
    ));
    assert_eq!(prom.status, 200);
    assert!(prom
        .body
        .contains("envoy_cluster_manager_cds_update_success"));
    let stats = sidecar.admin("/stats").body;
    assert!(
        stats.contains("listener_manager.lds.update_success: 1"),
        "{stats}"
    );
    assert!(
        !stats.contains("http.inbound_0.0.0.0_8080.downstream_rq_total"),
        "Istio's inclusion list leaves HCM stats out"
    );
}

fn outrigger_istio_version() -> &'static str {
    "1.32.0"
}

#[test]
fn sigterm_drains_inbound_under_load_without_a_failed_request() {
    let mut pod = pod("2s", &[]);
    let target = std::net::SocketAddr::from(([127, 0, 0, 1], pod.listener));
    let load = Load::start(target, 4);
    std::thread::sleep(Duration::from_millis(500));
    let before = load.so_far();
    assert!(before.ok > 0 && before.failed == 0, "{before:?}");
    let terminated = Instant::now();
    pod.sidecar.signal(Signal::SIGTERM);
    // Clients keep coming during terminationDrainDuration (as they do until the endpoint
    // update reaches them); every answer now asks them to close.
    std::thread::sleep(Duration::from_millis(1200));
    let outcome = load.stop();
    assert_eq!(outcome.failed, 0, "{outcome:?}\n{}", pod.sidecar.logs());
    assert!(
        outcome.closes > 0,
        "draining answers carry Connection: close: {outcome:?}"
    );
    assert!(outcome.ok > before.ok, "{outcome:?}");
    let status = pod.sidecar.wait_exit(Duration::from_secs(10));
    let took = terminated.elapsed();
    assert!(
        status.is_some_and(|s| s.success()),
        "exit {status:?}\n{}",
        pod.sidecar.logs()
    );
    assert!(
        took >= Duration::from_secs(2),
        "it exits after terminationDrainDuration, not before ({took:?})"
    );
    let _ = pod.cp.requests();
}

/// istiod is reached over TLS (verified against the mesh root, by the name in ISTIOD_SAN)
/// with the projected token, re-read for every stream: a wrong token is refused, and once
/// kubelet writes the right one the next stream gets in.
#[test]
fn sidecar_reaches_istiod_over_tls_with_the_projected_token() {
    let pki = tests::pki::Pki::new();
    let server = pki.server("istiod.istio-system.svc");
    let tls = tests::tls_incoming::server_config(
        &std::fs::read(&server.cert).expect("cert"),
        &std::fs::read(&server.key).expect("key"),
    );
    let cp = ControlPlane::start_istiod(tests::control_plane::IstiodOptions {
        tls,
        token: Some("good-token".into()),
        add: None,
    });
    let upstream = Upstream::start("over mTLS-free inbound");
    let listener = free_port();
    cp.set(CLUSTER, vec![backend_cluster()]);
    cp.set(ENDPOINT, vec![backend_endpoints(upstream.port())]);
    cp.set(LISTENER, vec![inbound_listener(listener)]);
    cp.set(ROUTE, vec![route_to_backend()]);
    let root = std::fs::read(pki.root()).expect("root");
    let mut sidecar = Sidecar::start(
        json!({"discoveryAddress": format!("127.0.0.1:{}", cp.port())}),
        &[("ISTIOD_SAN", "istiod.istio-system.svc")],
        &[],
        |dir| {
            std::fs::create_dir_all(dir.join("var/run/secrets/istio")).expect("mkdir");
            std::fs::create_dir_all(dir.join("var/run/secrets/tokens")).expect("mkdir");
            std::fs::write(dir.join("var/run/secrets/istio/root-cert.pem"), &root).expect("root");
            std::fs::write(
                dir.join("var/run/secrets/tokens/istio-token"),
                "stale-token\n",
            )
            .expect("token");
        },
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cp
        .authorizations()
        .iter()
        .any(|a| a == "Bearer stale-token")
    {
        assert!(
            Instant::now() < deadline,
            "no stream arrived\n{}",
            sidecar.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(cp.requests().is_empty(), "a refused stream sends nothing");
    std::fs::write(
        sidecar.dir().join("var/run/secrets/tokens/istio-token"),
        "good-token\n",
    )
    .expect("rotate the token");
    sidecar.wait_live(Duration::from_secs(20));
    assert_eq!(
        cp.authorizations().last().map(String::as_str),
        Some("Bearer good-token")
    );
    let url = format!("http://127.0.0.1:{listener}/");
    assert_eq!(curl::get(&url).body, "over mTLS-free inbound");
}

fn http_status(url: &str) -> u16 {
    curl::request("GET", url, &[])
        .map(|r| r.status)
        .unwrap_or(0)
}

fn wait_status(url: &str, want: u16, sidecar: &Sidecar) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_status(url) != want {
        assert!(
            Instant::now() < deadline,
            "{url} never answered {want}\n{}",
            sidecar.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Readiness as the kubelet sees it: :15021/healthz/ready through the proxy's static listener
/// to the agent's status server, which with DNS capture also waits for istiod's name table;
/// then the DNS proxy answers from that table (Istio's NDS) and `outrigger wait` agrees.
#[test]
fn readiness_through_15021_waits_for_the_name_table_and_dns_answers_from_it() {
    let dns_port = free_port();
    let dns_addr = format!("127.0.0.1:{dns_port}");
    let pod = pod(
        "5s",
        &[
            ("ISTIO_META_DNS_CAPTURE", "true"),
            ("DNS_PROXY_ADDR", dns_addr.as_str()),
        ],
    );
    let sidecar = &pod.sidecar;
    let ready = format!(
        "http://127.0.0.1:{}/healthz/ready",
        sidecar.ports.envoy_status
    );
    // LIVE, but no name table yet: not ready.
    assert_eq!(http_status(&ready), 503, "{}", sidecar.logs());

    let mut table = outrigger::agent::dns::NameTable::default();
    table.table.insert(
        "ratings.demo.svc.cluster.local".into(),
        outrigger::agent::dns::NameInfo {
            ips: vec!["10.96.0.42".into()],
            registry: "Kubernetes".into(),
            shortname: "ratings".into(),
            namespace: "demo".into(),
            alt_hosts: Vec::new(),
        },
    );
    pod.cp.set(
        tests::control_plane::NAME_TABLE,
        vec![(
            String::new(),
            xds_proto::pb::google::protobuf::Any {
                type_url: outrigger::agent::dns::NAME_TABLE_TYPE_URL.into(),
                value: outrigger::agent::dns::nds::encode(&table),
            },
        )],
    );
    wait_status(&ready, 200, sidecar);

    let dig = std::process::Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            &dns_port.to_string(),
            "+short",
            "+tries=1",
            "+time=3",
            "ratings",
            "A",
        ])
        .output()
        .expect("dig (bind9-dnsutils)");
    assert_eq!(
        String::from_utf8_lossy(&dig.stdout).trim(),
        "10.96.0.42",
        "{}",
        sidecar.logs()
    );

    let wait = std::process::Command::new(tests::outrigger().path)
        .args(["wait", "--url", &ready, "--timeoutSeconds", "5"])
        .output()
        .expect("outrigger wait");
    assert!(wait.status.success(), "{wait:?}");
}

/// EXIT_ON_ZERO_ACTIVE_CONNECTIONS: after SIGTERM and MINIMUM_DRAIN_DURATION the sidecar
/// stays while a connection is open, and exits once the last one closes.
#[test]
fn exit_on_zero_active_connections_waits_for_the_last_connection() {
    let mut pod = pod(
        "5s",
        &[
            ("EXIT_ON_ZERO_ACTIVE_CONNECTIONS", "true"),
            ("MINIMUM_DRAIN_DURATION", "500ms"),
        ],
    );
    let target = std::net::SocketAddr::from(([127, 0, 0, 1], pod.listener));
    let held = std::net::TcpStream::connect(target).expect("a connection to hold");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pod
        .sidecar
        .admin("/stats")
        .body
        .lines()
        .any(|l| l.ends_with("downstream_cx_active: 1") && l.starts_with("listener."))
    {
        assert!(
            Instant::now() < deadline,
            "{}",
            pod.sidecar.admin("/stats").body
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    pod.sidecar.signal(Signal::SIGTERM);
    // Past the minimum drain, the open connection keeps the sidecar up.
    assert!(
        pod.sidecar.wait_exit(Duration::from_millis(1500)).is_none(),
        "exited with a connection open\n{}",
        pod.sidecar.logs()
    );
    drop(held);
    let status = pod.sidecar.wait_exit(Duration::from_secs(3));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        pod.sidecar.logs()
    );
}
