//! The workload identity end to end, as a sidecar uses it: certificates from the fake Istio CA
//! over TLS, served by the in-process SDS server on a Unix socket, taken by the real proxy
//! binary through a static `sds-grpc` cluster (a `pipe` address, HTTP/2) for an mTLS listener
//! (`default` and `ROOTCA`, client certificates required). A real TLS client sees the
//! CA-issued certificate; after a renewal a new connection sees the new one while a
//! connection opened before keeps working.

use outrigger::agent::identity::{self, Backoff, IdentityConfig};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tests::fake_ca::FakeCa;
use tests::{free_port, Kind, RunningProxy, Upstream};

const TOKEN: &str = "a-projected-token";
const ID: &str = "spiffe://cluster.local/ns/ns1/sa/app";

fn bootstrap(admin: u16, socket: &Path, port: u16, app: u16) -> String {
    let sds = "{ resource_api_version: V3, initial_fetch_timeout: 0s, api_config_source: { api_type: GRPC, set_node_on_first_message_only: true, transport_api_version: V3, grpc_services: [{ envoy_grpc: { cluster_name: sds-grpc } }] } }";
    format!(
        r#"
node: {{ id: sidecar~127.0.0.1~app.ns1~ns1.svc.cluster.local, cluster: app.ns1 }}
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
        - endpoint: {{ address: {{ pipe: {{ path: "{socket}" }} }} }}
  - name: app
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: app
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {app} }} }} }}
  listeners:
  - name: inbound
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificate_sds_secret_configs:
            - name: default
              sds_config: {sds}
            combined_validation_context:
              default_validation_context: {{}}
              validation_context_sds_secret_config:
                name: ROOTCA
                sds_config: {sds}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: app }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
"#,
        socket = socket.display()
    )
}

/// `openssl x509 -serial` of the first certificate in `pem`.
fn serial_of(pem: &str) -> String {
    use std::io::Write;
    let mut x509 = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl");
    x509.stdin
        .take()
        .expect("stdin")
        .write_all(pem.as_bytes())
        .expect("write");
    let out = x509.wait_with_output().expect("openssl x509");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The serial of the certificate served on `port` to a client presenting `client`, when the
/// handshake verifies against `root` and a request gets through.
fn served_serial(port: u16, root: &Path, client: (&Path, &Path)) -> Option<String> {
    let out = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-CAfile",
        ])
        .arg(root)
        .arg("-cert")
        .arg(client.0)
        .arg("-key")
        .arg(client.1)
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !text.contains("Verify return code: 0 (ok)") {
        return None;
    }
    let start = text.find("-----BEGIN CERTIFICATE-----")?;
    let end = text.find("-----END CERTIFICATE-----")? + "-----END CERTIFICATE-----".len();
    Some(serial_of(&text[start..end]))
}

fn wait_for_served(port: u16, root: &Path, client: (&Path, &Path), want: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = None;
    while Instant::now() < deadline {
        last = served_serial(port, root, client);
        if last.as_deref() == Some(want) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the listener on {port} did not serve {want}; last: {last:?}");
}

type Sender = hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>;

/// An HTTP/1.1 connection over mTLS to `port`, kept open.
async fn connect(port: u16, cert_pem: &str, key_pem: &str) -> Sender {
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("client chain");
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key");
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(outrigger::tls::AcceptAnyServer(provider)))
        .with_client_auth_cert(chain, key)
        .expect("client certificate");
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("app.ns1.svc.cluster.local")
        .expect("a name")
        .to_owned();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    sender
}

async fn get(sender: &mut Sender) -> (u16, String) {
    use http_body_util::BodyExt;
    sender.ready().await.expect("the connection is open");
    let request = hyper::Request::get("/")
        .header("host", "app")
        .body(http_body_util::Empty::new())
        .expect("a request");
    let response = sender.send_request(request).await.expect("a response");
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn the_proxy_serves_the_ca_issued_certificate_from_sds_and_follows_its_renewal() {
    let ca = FakeCa::new(TOKEN, ID);
    // Renewal at about half of 6 s: time for the first checks before it.
    ca.set_ttl(Duration::from_secs(6));
    let ca_server = ca.serve_tls();
    let pod = tempfile::tempdir().expect("tempdir");
    let write = |rel: &str, content: &str| {
        let path = pod.path().join(rel);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        std::fs::write(&path, content).expect("write");
        path
    };
    write("var/run/secrets/tokens/istio-token", TOKEN);
    let root = write("var/run/secrets/istio/root-cert.pem", &ca.root_pem());
    let (client_cert, client_key) = ca.issue_for_uri("spiffe://cluster.local/ns/ns1/sa/client");
    let client = (
        write("client/cert.pem", &client_cert),
        write("client/key.pem", &client_key),
    );
    let client = (client.0.as_path(), client.1.as_path());
    let env: HashMap<&str, String> = [
        ("CA_ADDR", format!("127.0.0.1:{}", ca_server.port())),
        ("SECRET_GRACE_PERIOD_RATIO_JITTER", "0".into()),
    ]
    .into_iter()
    .collect();
    let mut config = IdentityConfig::from_env(
        |k| env.get(k).cloned(),
        pod.path(),
        "ns1",
        "app",
        "istiod.istio-system.svc:15012",
    )
    .expect("a configuration");
    if let Some(ca) = &mut config.ca {
        ca.backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            ..Backoff::default()
        };
    }
    let socket = config.sds_socket.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let running = runtime
        .block_on(identity::start(config))
        .expect("the identity starts");
    let cache = running.cache.as_ref().expect("no other SDS server");
    let first = runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), cache.ready()).await })
        .expect("a first certificate in time")
        .expect("a secret");

    let app = Upstream::start("hello from the app");
    let port = free_port();
    let proxy = RunningProxy::start(
        Kind::Outrigger,
        &bootstrap(free_port(), &socket, port, app.port()),
        &[],
    );
    let first_serial = serial_of(&first.cert_chain_pem);
    wait_for_served(port, &root, client, &first_serial);

    // A connection opened now is used again after the renewal.
    let mut before = runtime.block_on(connect(port, &client_cert, &client_key));
    assert_eq!(
        runtime.block_on(get(&mut before)),
        (200, "hello from the app".to_string())
    );

    let renewed = runtime
        .block_on(async {
            let mut secrets = cache.subscribe();
            tokio::time::timeout(
                Duration::from_secs(15),
                secrets.wait_for(|s| {
                    s.as_ref()
                        .is_some_and(|s| s.cert_chain_pem != first.cert_chain_pem)
                }),
            )
            .await
            .map(|s| s.map(|s| s.clone()))
        })
        .expect("a renewal in time")
        .expect("the identity runs")
        .expect("a secret");
    let renewed_serial = serial_of(&renewed.cert_chain_pem);
    assert_ne!(renewed_serial, first_serial);
    wait_for_served(port, &root, client, &renewed_serial);
    assert_eq!(
        runtime.block_on(get(&mut before)),
        (200, "hello from the app".to_string()),
        "the connection opened before the renewal still works\n{}",
        proxy.logs_for_failure()
    );
    let mut after = runtime.block_on(connect(port, &client_cert, &client_key));
    assert_eq!(
        runtime.block_on(get(&mut after)),
        (200, "hello from the app".to_string())
    );
    assert!(ca.requests().iter().filter(|r| r.issued).count() >= 2);
    drop(proxy);
    drop(running);
}
