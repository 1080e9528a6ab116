//! Certificates from an SDS stream of its own, as Istio's sidecars get them: a TLS listener
//! names its certificate `default` with an `api_config_source` on the `sds-grpc` cluster, and
//! the control plane's SecretDiscoveryService delivers it. Envoy and Outrigger must ask for
//! the same secret, ACK it the same way, and serve TLS with it; a rotated certificate is used
//! by the next connection.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/security/secret

use std::time::{Duration, Instant};
use tests::control_plane::{ControlPlane, Recorded, SECRET};
use tests::pki::{Identity, Pki};
use tests::xds_resources::resource;
use tests::{envoy_or_skip, free_port, Kind, RunningProxy};
use xds_proto::pb::google::protobuf::Any;

fn certificate(identity: &Identity) -> (String, Any) {
    tests::xds_resources::certificate_secret("default", identity)
}

fn bootstrap(admin: u16, control_plane: u16, port: u16) -> String {
    format!(
        r#"
node: {{ id: sidecar~127.0.0.1~sds.default~default.svc.cluster.local, cluster: sds }}
admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }} }}
static_resources:
  clusters:
  - name: sds-grpc
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: sds-grpc
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {control_plane} }} }} }}
  listeners:
  - name: tls
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificate_sds_secret_configs:
            - name: default
              sds_config:
                resource_api_version: V3
                api_config_source:
                  api_type: GRPC
                  transport_api_version: V3
                  grpc_services: [{{ envoy_grpc: {{ cluster_name: sds-grpc }} }}]
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: tls
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                direct_response: {{ status: 200, body: {{ inline_string: secure }} }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
"#
    )
}

/// The serial number of the certificate served on `port`, once a TLS handshake succeeds
/// (curl checks the chain against `root`; the certificates carry only a SPIFFE URI, so the
/// host name check is left out).
fn served_serial(port: u16, root: &std::path::Path) -> Option<String> {
    let out = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-CAfile",
        ])
        .arg(root)
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let pem_start = text.find("-----BEGIN CERTIFICATE-----")?;
    let pem_end = text.find("-----END CERTIFICATE-----")? + "-----END CERTIFICATE-----".len();
    if !text.contains("Verify return code: 0 (ok)") {
        return None;
    }
    let mut x509 = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    use std::io::Write;
    x509.stdin
        .take()?
        .write_all(&text.as_bytes()[pem_start..pem_end])
        .ok()?;
    let out = x509.wait_with_output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn serial_becomes(port: u16, root: &std::path::Path, not: Option<&str>) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(serial) = served_serial(port, root) {
            if Some(serial.as_str()) != not {
                return serial;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no new certificate served on {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn secret_answers(requests: &[Recorded]) -> Vec<String> {
    requests
        .iter()
        .filter(|r| r.type_url == SECRET)
        .map(|r| {
            if r.answers() {
                format!(
                    "{} v{}",
                    if r.error.is_some() { "NACK" } else { "ACK" },
                    r.version_info
                )
            } else {
                format!("ask {:?}", r.names)
            }
        })
        .collect()
}

fn run(kind: Kind) -> Vec<String> {
    let pki = Pki::new();
    let first = pki.identity("first");
    let second = pki.identity("second");
    let cp = ControlPlane::start();
    cp.set(SECRET, vec![certificate(&first)]);
    let port = free_port();
    let _proxy = RunningProxy::start(kind, &bootstrap(free_port(), cp.port(), port), &[]);
    let served_first = serial_becomes(port, &pki.root(), None);
    cp.set(SECRET, vec![certificate(&second)]);
    let served_second = serial_becomes(port, &pki.root(), Some(&served_first));
    assert_ne!(served_first, served_second);
    cp.wait_for(Duration::from_secs(5), "the rotation's ACK", |r| {
        r.iter()
            .any(|r| r.type_url == SECRET && r.answers() && r.version_info == "2")
    });
    secret_answers(&cp.requests())
}

#[test]
fn certificates_from_an_sds_stream_of_their_own_follow_envoy() {
    let ours = run(Kind::Outrigger);
    assert_eq!(ours, vec!["ask [\"default\"]", "ACK v1", "ACK v2"]);
    let Some(_) = envoy_or_skip("certificates_from_an_sds_stream_of_their_own_follow_envoy") else {
        return;
    };
    assert_eq!(ours, run(Kind::Envoy));
}

/// An LDS listener whose certificate comes over ADS warms until the secret arrives: it is
/// listed as warming and its port is not open; the secret starts it. Same in Envoy.
/// The static listener of `bootstrap` above as an LDS resource named `tls`, its secret
/// fetched through `sds_config`.
fn tls_listener(port: u16, sds_config: serde_json::Value) -> (String, Any) {
    use xds_proto::pb::envoy::config::listener::v3::Listener;
    let doc: serde_json::Value =
        serde_yaml_ng::from_str(&bootstrap(0, 0, port)).expect("the bootstrap parses");
    let mut listener = doc["static_resources"]["listeners"][0].clone();
    listener["filter_chains"][0]["transport_socket"]["typed_config"]["common_tls_context"]
        ["tls_certificate_sds_secret_configs"][0]["sds_config"] = sds_config;
    resource::<Listener>("tls", &serde_json::to_string(&listener).expect("JSON"))
}

/// Whether listener `tls` is active or warming in `/config_dump`, and whether its port accepts.
fn tls_listener_state(proxy: &RunningProxy, port: u16) -> String {
    let dump = proxy.get("/config_dump?resource=dynamic_listeners").json();
    let tls = dump["configs"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["name"] == "tls").cloned())
        .unwrap_or_default();
    format!(
        "active={} warming={} open={}",
        !tls["active_state"].is_null(),
        !tls["warming_state"].is_null(),
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    )
}

/// The dynamic secrets of `/config_dump`, warming and active: name, version, whether it has a
/// timestamp, and the secret as dumped (the private key redacted).
fn dynamic_secrets(proxy: &RunningProxy) -> String {
    let dump = proxy.get("/config_dump").json();
    let secrets = dump["configs"]
        .as_array()
        .and_then(|c| {
            c.iter()
                .find(|c| {
                    c["@type"]
                        .as_str()
                        .is_some_and(|t| t.ends_with("SecretsConfigDump"))
                })
                .cloned()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    for section in ["dynamic_warming_secrets", "dynamic_active_secrets"] {
        for s in secrets[section].as_array().into_iter().flatten() {
            let mut secret = s["secret"].clone();
            // The certificate itself is whatever the test generated; keep the shape.
            if let Some(chain) =
                secret.pointer_mut("/tls_certificate/certificate_chain/inline_string")
            {
                *chain = serde_json::json!("<certificate>");
            }
            out.push(format!(
                "{section} {} v{:?} updated={} {secret}",
                s["name"].as_str().unwrap_or("-"),
                s["version_info"].as_str().unwrap_or("-"),
                s["last_updated"].is_string(),
            ));
        }
    }
    out.join("\n")
}

#[test]
fn a_listener_warms_until_its_secret_arrives_like_envoy() {
    use tests::control_plane::{CLUSTER, LISTENER};
    let run = |kind: Kind| -> Vec<String> {
        let pki = Pki::new();
        let identity = pki.identity("server");
        let cp = ControlPlane::start();
        cp.set(CLUSTER, vec![]);
        cp.set(LISTENER, vec![]);
        let proxy = RunningProxy::start(
            kind,
            &tests::xds_resources::ads_bootstrap(free_port(), cp.port(), true),
            &[],
        );
        let port = free_port();
        cp.set(
            LISTENER,
            vec![tls_listener(
                port,
                serde_json::json!({"ads": {}, "resource_api_version": "V3"}),
            )],
        );
        let state = |proxy: &RunningProxy| tls_listener_state(proxy, port);
        cp.wait_for(Duration::from_secs(5), "the secret asked for", |r| {
            r.iter()
                .any(|r| r.type_url == SECRET && r.names == ["default"])
        });
        std::thread::sleep(Duration::from_millis(300));
        let before = state(&proxy);
        let secrets_before = dynamic_secrets(&proxy);
        cp.set(SECRET, vec![certificate(&identity)]);
        let served = serial_becomes(port, &pki.root(), None);
        vec![
            before,
            secrets_before,
            state(&proxy),
            dynamic_secrets(&proxy),
            format!("served={}", !served.is_empty()),
        ]
    };
    let ours = run(Kind::Outrigger);
    let traffic: Vec<&str> = [0, 2, 4].iter().map(|i| ours[*i].as_str()).collect();
    assert_eq!(
        traffic,
        vec![
            "active=false warming=true open=false",
            "active=true warming=false open=true",
            "served=true"
        ]
    );
    let Some(_) = envoy_or_skip("a_listener_warms_until_its_secret_arrives_like_envoy") else {
        return;
    };
    assert_eq!(ours, run(Kind::Envoy));
}

/// The SDS source's `initial_fetch_timeout` bounds how long a listener waits for a secret that
/// never comes: `1s`, and it starts without it (handshakes needing it fail); `0s`, Istio's
/// setting, and it waits for as long as it takes. Same in Envoy.
/// Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/config_source.proto (initial_fetch_timeout)
#[test]
fn a_secret_waits_for_its_sources_initial_fetch_timeout_like_envoy() {
    use tests::control_plane::{CLUSTER, LISTENER};
    let run = |kind: Kind| -> Vec<String> {
        let mut states = Vec::new();
        // A proxy each: the first source named for a secret is the one it is fetched from.
        for timeout in ["1s", "0s"] {
            let cp = ControlPlane::start();
            cp.set(CLUSTER, vec![]);
            cp.set(LISTENER, vec![]);
            let proxy = RunningProxy::start(
                kind,
                &tests::xds_resources::ads_bootstrap(free_port(), cp.port(), true),
                &[],
            );
            let port = free_port();
            cp.set(
                LISTENER,
                vec![tls_listener(
                    port,
                    serde_json::json!({"ads": {}, "resource_api_version": "V3",
                                       "initial_fetch_timeout": timeout}),
                )],
            );
            std::thread::sleep(Duration::from_millis(2500));
            states.push(format!("{timeout}: {}", tls_listener_state(&proxy, port)));
        }
        states
    };
    let ours = run(Kind::Outrigger);
    assert_eq!(
        ours,
        vec![
            "1s: active=true warming=false open=true",
            "0s: active=false warming=true open=false",
        ]
    );
    let Some(_) = envoy_or_skip("a_secret_waits_for_its_sources_initial_fetch_timeout_like_envoy")
    else {
        return;
    };
    assert_eq!(ours, run(Kind::Envoy));
}

/// A CDS cluster whose client certificate comes over ADS warms until the secret arrives: it
/// is listed among the warming clusters, and the secret makes it active. Same in Envoy.
/// Envoy: https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/security/secret#sds-and-warming
#[test]
fn a_cluster_warms_until_its_secret_arrives_like_envoy() {
    use tests::control_plane::{CLUSTER, LISTENER};
    use xds_proto::pb::envoy::config::cluster::v3::Cluster;
    let run = |kind: Kind| -> Vec<String> {
        let pki = Pki::new();
        let identity = pki.identity("client");
        let cp = ControlPlane::start();
        cp.set(LISTENER, vec![]);
        let cluster = resource::<Cluster>(
            "mtls",
            &format!(
                r#"
name: mtls
type: STATIC
connect_timeout: 1s
load_assignment:
  cluster_name: mtls
  endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }} }}] }}]
transport_socket:
  name: envoy.transport_sockets.tls
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
    common_tls_context:
      tls_certificate_sds_secret_configs:
      - name: default
        sds_config: {{ ads: {{}}, resource_api_version: V3 }}
"#,
                free_port()
            ),
        );
        // The proxy starts (and is ready) first: a cluster warming at startup would hold
        // initialisation.
        cp.set(CLUSTER, vec![]);
        let proxy = RunningProxy::start(
            kind,
            &tests::xds_resources::ads_bootstrap(free_port(), cp.port(), true),
            &[],
        );
        cp.set(CLUSTER, vec![cluster]);
        let state = |proxy: &RunningProxy| {
            let dump = proxy
                .get("/config_dump?resource=dynamic_active_clusters")
                .json();
            let active = dump["configs"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["cluster"]["name"] == "mtls"));
            let dump = proxy
                .get("/config_dump?resource=dynamic_warming_clusters")
                .json();
            let warming = dump["configs"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["cluster"]["name"] == "mtls"));
            format!("active={active} warming={warming}")
        };
        cp.wait_for(Duration::from_secs(5), "the secret asked for", |r| {
            r.iter()
                .any(|r| r.type_url == SECRET && r.names == ["default"])
        });
        std::thread::sleep(Duration::from_millis(300));
        let before = state(&proxy);
        cp.set(SECRET, vec![certificate(&identity)]);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut after = state(&proxy);
        while after != "active=true warming=false" && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            after = state(&proxy);
        }
        vec![before, after]
    };
    let ours = run(Kind::Outrigger);
    assert_eq!(
        ours,
        vec!["active=false warming=true", "active=true warming=false"]
    );
    let Some(_) = envoy_or_skip("a_cluster_warms_until_its_secret_arrives_like_envoy") else {
        return;
    };
    assert_eq!(ours, run(Kind::Envoy));
}
