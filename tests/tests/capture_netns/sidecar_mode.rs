//! Issue 10 in a pod: `outrigger proxy sidecar` as uid 1337 behind `outrigger-iptables`, its
//! configuration from a fake istiod in the remote namespace (TLS on 10.250.0.2:15012, the
//! projected token checked, delta ADS), an app reached through the captured inbound port, and
//! SIGTERM under load from the remote side: the inbound listener drains and the process exits
//! without a failed request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::thread;
use std::time::Instant;
use tests::binaries::outrigger;
use tests::control_plane::{ControlPlane, IstiodOptions, CLUSTER, LISTENER};
use tests::fake_ca::FakeCa;
use tests::netns::{http_get, ChildGuard, Netns};
use tests::sidecar::Load;
use tests::xds_resources::resource;
use xds_proto::pb::envoy::config::cluster::v3::Cluster;
use xds_proto::pb::envoy::config::listener::v3::Listener;
use xds_proto::pb::google::protobuf::Any;

const ISTIOD: &str = "istiod.istio-system.svc";
const TOKEN: &str = "pod-token";
const APP_ID: &str = "spiffe://cluster.local/ns/demo/sa/app";

/// Istio's capture listeners, trimmed: outbound passthrough on :15001, and inbound HTTP on
/// :15006 through a connection manager to the original destination from 127.0.0.6.
fn listeners() -> Vec<(String, Any)> {
    let outbound = resource::<Listener>(
        "virtualOutbound",
        r#"
name: virtualOutbound
address: { socket_address: { address: 0.0.0.0, port_value: 15001 } }
use_original_dst: true
traffic_direction: OUTBOUND
filter_chains:
- filters:
  - name: envoy.filters.network.tcp_proxy
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
      stat_prefix: PassthroughCluster
      cluster: PassthroughCluster
"#,
    );
    let inbound = resource::<Listener>(
        "virtualInbound",
        r#"
name: virtualInbound
address: { socket_address: { address: 0.0.0.0, port_value: 15006 } }
traffic_direction: INBOUND
listener_filters:
- name: envoy.filters.listener.original_dst
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: inbound_0.0.0.0_8080
      route_config:
        name: inbound|8080||
        virtual_hosts:
        - name: inbound|http|8080
          domains: ["*"]
          routes:
          - match: { prefix: "/" }
            route: { cluster: InboundPassthroughClusterIpv4 }
      http_filters:
      - name: envoy.filters.http.router
        typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
"#,
    );
    vec![outbound, inbound]
}

fn clusters() -> Vec<(String, Any)> {
    vec![
        resource::<Cluster>(
            "PassthroughCluster",
            "name: PassthroughCluster\ntype: ORIGINAL_DST\nlb_policy: CLUSTER_PROVIDED\nconnect_timeout: 5s\n",
        ),
        resource::<Cluster>(
            "InboundPassthroughClusterIpv4",
            r#"
name: InboundPassthroughClusterIpv4
type: ORIGINAL_DST
lb_policy: CLUSTER_PROVIDED
connect_timeout: 5s
upstream_bind_config: { source_address: { address: 127.0.0.6, port_value: 0 } }
"#,
        ),
    ]
}

/// The fake istiod, listening in the remote namespace: ADS and the CA on one TLS port.
fn istiod(topo: &Topology, ca: &FakeCa) -> ControlPlane {
    let (cert, key) = ca.issue_for_names(&[ISTIOD]);
    let tls = tests::tls_incoming::server_config(cert.as_bytes(), key.as_bytes());
    let service = ca.service();
    let listener = topo
        .remote
        .run(|| std::net::TcpListener::bind((REMOTE_IP, 15012)))
        .expect("bind istiod's port in the remote namespace");
    let cp = ControlPlane::start_istiod_on(
        listener,
        IstiodOptions {
            tls,
            token: Some(TOKEN.into()),
            add: Some(Box::new(move |routes| routes.add_service(service))),
        },
    );
    cp.set(CLUSTER, clusters());
    cp.set(LISTENER, listeners());
    cp
}

/// The container's root: the mesh root certificate and the projected token, readable by 1337.
fn pod_root(ca: &FakeCa) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for sub in [
        "var/run/secrets/istio",
        "var/run/secrets/tokens",
        "etc/istio/pod",
    ] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
    }
    std::fs::write(
        dir.path().join("var/run/secrets/istio/root-cert.pem"),
        ca.root_pem(),
    )
    .unwrap();
    std::fs::write(dir.path().join("var/run/secrets/tokens/istio-token"), TOKEN).unwrap();
    std::fs::write(dir.path().join("etc/istio/pod/labels"), "app=\"app\"\n").unwrap();
    let status = std::process::Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    // The emptyDir Istio mounts for the SDS socket, writable by the proxy's uid.
    let uds = dir.path().join("var/run/secrets/workload-spiffe-uds");
    std::fs::create_dir_all(&uds).unwrap();
    std::os::unix::fs::chown(&uds, Some(1337), Some(1337)).unwrap();
    dir
}

fn start_sidecar(pod: &Netns, root: &tempfile::TempDir, env: &[(&str, &str)]) -> ChildGuard {
    let bin = outrigger().path;
    let proxy_config = format!(
        r#"{{"discoveryAddress":"{REMOTE_IP}:15012","terminationDrainDuration":"2s","drainDuration":"20s"}}"#
    );
    let stdout = std::fs::File::create(root.path().join("stdout.log")).unwrap();
    let stderr = std::fs::File::create(root.path().join("stderr.log")).unwrap();
    let child = pod
        .command(&[
            "setpriv",
            "--reuid=1337",
            "--regid=1337",
            "--clear-groups",
            bin.to_str().unwrap(),
            "proxy",
            "sidecar",
            "--domain",
            "demo.svc.cluster.local",
        ])
        .env("POD_NAME", "app-0")
        .env("POD_NAMESPACE", "demo")
        .env("INSTANCE_IP", POD_IP)
        .env("SERVICE_ACCOUNT", "app")
        .env("ISTIOD_SAN", ISTIOD)
        .env("PROXY_CONFIG", proxy_config)
        .envs(env.iter().copied())
        .current_dir(root.path())
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .expect("start outrigger proxy sidecar");
    ChildGuard { child }
}

fn logs(root: &tempfile::TempDir) -> String {
    let read = |f: &str| std::fs::read_to_string(root.path().join(f)).unwrap_or_default();
    format!(
        "--- sidecar stdout ---\n{}--- sidecar stderr ---\n{}",
        read("stdout.log"),
        read("stderr.log")
    )
}

fn wait_live(pod: &Netns, guard: &mut ChildGuard, root: &tempfile::TempDir) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = guard.exited() {
            panic!("the sidecar exited ({status}) before LIVE\n{}", logs(root));
        }
        let ready = pod.run(|| http_get(ADMIN.parse().unwrap(), "/ready", Duration::from_secs(1)));
        if matches!(&ready, Ok((200, body)) if body.trim() == "LIVE") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not LIVE in time ({ready:?})\n{}",
            logs(root)
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sidecar_mode_serves_a_pod_from_istiod_and_drains_on_sigterm() {
    if !prerequisites_met(
        "sidecar_mode_serves_a_pod_from_istiod_and_drains_on_sigterm",
        TOOLS,
    ) {
        return;
    }
    with_pod("REDIRECT", |topo| {
        let ca = FakeCa::new(TOKEN, APP_ID);
        let cp = istiod(topo, &ca);
        let _app = Server::start(&topo.pod, "0.0.0.0:8080", Protocol::Http("app"));
        let root = pod_root(&ca);
        let mut guard = start_sidecar(&topo.pod, &root, &[]);
        wait_live(&topo.pod, &mut guard, &root);
        assert!(cp
            .authorizations()
            .iter()
            .all(|a| a == &format!("Bearer {TOKEN}")));
        // The workload certificate came from istiod's CA with the same token.
        let issued = ca.wait_for_issued(1, Duration::from_secs(10));
        assert_eq!(issued[0].csr_uri.as_deref(), Some(APP_ID));
        assert_eq!(issued[0].token.as_deref(), Some(TOKEN));

        // Inbound from the remote side is captured, served by the connection manager from
        // istiod's listener, and reaches the app from 127.0.0.6.
        let target: SocketAddr = format!("{POD_IP}:8080").parse().unwrap();
        let answer = topo
            .remote
            .run(move || http_get(target, "/", Duration::from_secs(5)));
        assert!(
            matches!(&answer, Ok((200, body)) if body.starts_with("app peer=127.0.0.6:")),
            "{answer:?}\n{}",
            logs(&root)
        );

        // SIGTERM under load: not one request fails.
        let load = topo.remote.run(move || Load::start(target, 4));
        thread::sleep(Duration::from_millis(500));
        let before = load.so_far();
        assert!(
            before.ok > 0 && before.failed == 0,
            "{before:?}\n{}",
            logs(&root)
        );
        let terminated = Instant::now();
        let pid = nix::unistd::Pid::from_raw(guard.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        thread::sleep(Duration::from_millis(1200));
        let outcome = load.stop();
        assert_eq!(outcome.failed, 0, "{outcome:?}\n{}", logs(&root));
        assert!(outcome.ok > before.ok && outcome.closes > 0, "{outcome:?}");
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = guard.exited() {
                break status;
            }
            assert!(Instant::now() < deadline, "still running\n{}", logs(&root));
            thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{status}\n{}", logs(&root));
        assert!(terminated.elapsed() >= Duration::from_secs(2));
    });
}

/// DNS capture (`--redirect-dns --capture-all-dns`): the app's queries to any nameserver are
/// redirected to the sidecar's DNS proxy on :15053, which answers from the name table istiod
/// sends over NDS; the pod is ready (:15021) only once that table arrived.
#[test]
fn sidecar_mode_answers_captured_dns_from_the_name_table() {
    let tools = [TOOLS, &["dig"]].concat();
    if !prerequisites_met(
        "sidecar_mode_answers_captured_dns_from_the_name_table",
        &tools,
    ) {
        return;
    }
    with_pod_args(
        "REDIRECT",
        &["--redirect-dns", "--capture-all-dns"],
        |topo| {
            let ca = FakeCa::new(TOKEN, APP_ID);
            let cp = istiod(topo, &ca);
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
            cp.set(
                tests::control_plane::NAME_TABLE,
                vec![(
                    String::new(),
                    Any {
                        type_url: outrigger::agent::dns::NAME_TABLE_TYPE_URL.into(),
                        value: outrigger::agent::dns::nds::encode(&table),
                    },
                )],
            );
            let root = pod_root(&ca);
            let mut guard = start_sidecar(&topo.pod, &root, &[("ISTIO_META_DNS_CAPTURE", "true")]);
            wait_live(&topo.pod, &mut guard, &root);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let ready = topo.pod.run(|| {
                    http_get(
                        "127.0.0.1:15021".parse().unwrap(),
                        "/healthz/ready",
                        Duration::from_secs(1),
                    )
                });
                if matches!(ready, Ok((200, _))) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "not ready: {ready:?}\n{}",
                    logs(&root)
                );
                thread::sleep(Duration::from_millis(50));
            }
            // The app (uid 1000) asks the remote address as its nameserver; capture answers.
            let out = topo.pod.exec(
                &[
                    "setpriv",
                    "--reuid=1000",
                    "--regid=1000",
                    "--clear-groups",
                    "dig",
                    &format!("@{REMOTE_IP}"),
                    "+short",
                    "+tries=1",
                    "+time=3",
                    "ratings.demo.svc.cluster.local",
                    "A",
                ],
                &[],
            );
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                "10.96.0.42",
                "{out:?}\n{}",
                logs(&root)
            );
        },
    );
}
