//! The workload identity against a real CA over TLS (the fake istiod CA of `tests::fake_ca`):
//! the certificate it obtains, retries with a bad token, renewal at half the lifetime,
//! `OUTPUT_CERTS`, mounted certificate files, and the SDS server on its Unix socket as a
//! gRPC client (Envoy's side) sees it. Configuration goes through `IdentityConfig::from_env`
//! with a temporary directory as the root of Istio's well-known paths.

use outrigger::agent::identity::{self, Backoff, IdentityConfig, WorkloadIdentity};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tests::fake_ca::FakeCa;
use xds_proto::pb::envoy::extensions::transport_sockets::tls::v3::{secret, Secret};
use xds_proto::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use xds_proto::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;

const TOKEN: &str = "a-projected-token";
const ID: &str = "spiffe://cluster.local/ns/ns1/sa/sa1";

/// A pod's file system: the token, the mesh root, and whatever else a test writes.
struct Pod {
    dir: tempfile::TempDir,
}

impl Pod {
    fn new(ca: &FakeCa) -> Pod {
        let pod = Pod {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        pod.write("var/run/secrets/tokens/istio-token", &format!("{TOKEN}\n"));
        pod.write("var/run/secrets/istio/root-cert.pem", &ca.root_pem());
        pod
    }

    fn base(&self) -> &Path {
        self.dir.path()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.base().join(rel)
    }

    fn write(&self, rel: &str, content: &str) {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        std::fs::write(path, content).expect("write");
    }

    /// pilot-agent's configuration for `env`, with quick retries and file polls.
    fn config(&self, env: &[(&str, &str)]) -> IdentityConfig {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut config = IdentityConfig::from_env(
            |k| env.get(k).cloned(),
            self.base(),
            "ns1",
            "sa1",
            "istiod.istio-system.svc:15012",
        )
        .expect("a valid configuration");
        if let Some(ca) = &mut config.ca {
            ca.backoff = Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_millis(400),
                multiplier: 2.0,
                jitter: 0.2,
            };
            ca.request_timeout = Duration::from_secs(5);
        }
        config.file_poll = Duration::from_millis(100);
        config
    }
}

fn pems(text: &str) -> Vec<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(text.as_bytes())
        .map(|c| c.expect("a PEM certificate").to_vec())
        .collect()
}

fn uris(cert_der: &[u8]) -> Vec<String> {
    outrigger::tls::der::subject_alt_names(cert_der).uri
}

/// Whether the PEM key is the one certified by the PEM chain's leaf.
fn key_matches(chain: &str, key: &str) -> bool {
    use rustls::pki_types::pem::PemObject;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("a key");
    let signing = rustls::crypto::ring::sign::any_supported_type(&key).expect("a usable key");
    let certs = pems(chain)
        .into_iter()
        .map(rustls::pki_types::CertificateDer::from)
        .collect();
    rustls::sign::CertifiedKey::new(certs, signing)
        .keys_match()
        .is_ok()
}

async fn within<T>(what: &str, limit: Duration, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {limit:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obtains_a_certificate_over_tls_for_its_spiffe_id() {
    let ca = FakeCa::with_intermediate(TOKEN, ID);
    let server = ca.serve_tls();
    let pod = Pod::new(&ca);
    // `localhost` is checked as istiod.istio-system.svc, as pilot-agent does.
    let config = pod.config(&[
        ("CA_ADDR", &format!("localhost:{}", server.port())),
        ("ISTIO_META_CLUSTER_ID", "cluster-7"),
        ("ISTIO_META_CERT_SIGNER", "signer-a"),
    ]);
    let identity = WorkloadIdentity::start(config);
    let secret = within(
        "the first certificate",
        Duration::from_secs(10),
        identity.ready(),
    )
    .await
    .expect("a secret");
    let chain = pems(&secret.cert_chain_pem);
    assert_eq!(chain.len(), 3, "leaf, intermediate, root");
    assert_eq!(uris(&chain[0]), [ID]);
    assert_eq!(pems(&secret.root_pem), pems(&ca.root_pem()));
    assert_eq!(chain[2], pems(&ca.root_pem())[0]);
    assert!(key_matches(&secret.cert_chain_pem, &secret.private_key_pem));
    let lifetime = secret
        .not_after
        .duration_since(std::time::SystemTime::now())
        .expect("valid");
    assert!(lifetime > Duration::from_secs(23 * 3600), "{lifetime:?}");
    let requests = ca.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    let r = &requests[0];
    assert_eq!(r.token.as_deref(), Some(TOKEN));
    assert_eq!(r.cluster_id.as_deref(), Some("cluster-7"));
    assert_eq!(r.cert_signer.as_deref(), Some("signer-a"));
    assert_eq!(r.validity_duration, 86_400);
    assert_eq!(r.csr_uri.as_deref(), Some(ID));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_token_is_retried_until_the_token_file_is_fixed() {
    let ca = FakeCa::new(TOKEN, ID);
    let server = ca.serve_tls();
    let pod = Pod::new(&ca);
    pod.write("var/run/secrets/tokens/istio-token", "stale-token");
    let identity = WorkloadIdentity::start(
        pod.config(&[("CA_ADDR", &format!("127.0.0.1:{}", server.port()))]),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while ca.requests().len() < 3 {
        assert!(
            Instant::now() < deadline,
            "no retries: {:#?}",
            ca.requests()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(identity.current().is_none());
    // Projected tokens rotate under the agent: the next try reads the new one.
    pod.write("var/run/secrets/tokens/istio-token", TOKEN);
    within("a certificate", Duration::from_secs(10), identity.ready()).await;
    let requests = ca.requests();
    let (failed, issued): (Vec<_>, Vec<_>) = requests.iter().partition(|r| !r.issued);
    assert!(failed.len() >= 3);
    assert!(failed
        .iter()
        .all(|r| r.token.as_deref() == Some("stale-token")));
    assert_eq!(issued.len(), 1);
    // The waits grow (100, 200, 400 ms ± 20 %).
    let gaps: Vec<Duration> = failed.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(gaps[0] >= Duration::from_millis(70), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(150), "{gaps:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renews_at_half_the_lifetime_and_writes_output_certs() {
    let ca = FakeCa::new(TOKEN, ID);
    ca.set_ttl(Duration::from_secs(4));
    let server = ca.serve_tls();
    let pod = Pod::new(&ca);
    let out = pod.path("out");
    let identity = WorkloadIdentity::start(pod.config(&[
        ("CA_ADDR", &format!("127.0.0.1:{}", server.port())),
        ("SECRET_GRACE_PERIOD_RATIO_JITTER", "0"),
        ("OUTPUT_CERTS", out.to_str().expect("a UTF-8 path")),
    ]));
    let mut secrets = identity.subscribe();
    let first = within(
        "the first certificate",
        Duration::from_secs(10),
        identity.ready(),
    )
    .await
    .expect("a secret");
    let issued_at = Instant::now();
    within(
        "a renewal",
        Duration::from_secs(10),
        secrets.wait_for(|s| {
            s.as_ref()
                .is_some_and(|s| s.cert_chain_pem != first.cert_chain_pem)
        }),
    )
    .await
    .expect("the identity runs");
    let renewed_after = issued_at.elapsed();
    // X.509 times are whole seconds, so the lifetime is 3-4 s: renewal after 1.5-2 s.
    assert!(
        renewed_after >= Duration::from_millis(1200)
            && renewed_after <= Duration::from_millis(3000),
        "renewed after {renewed_after:?}"
    );
    let requests = ca.wait_for_issued(2, Duration::from_secs(5));
    let gap = requests[1].at - requests[0].at;
    assert!(gap >= Duration::from_millis(1200), "{gap:?}");
    let second = identity.current().expect("a secret");
    assert_ne!(
        first.private_key_pem, second.private_key_pem,
        "a new key each time"
    );
    // OUTPUT_CERTS holds the current certificate, key (0600) and root.
    let deadline = Instant::now() + Duration::from_secs(2);
    let read = |n: &str| std::fs::read_to_string(out.join(n)).unwrap_or_default();
    while read("cert-chain.pem") != second.cert_chain_pem && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let current = identity.current().expect("a secret");
    assert_eq!(read("cert-chain.pem"), current.cert_chain_pem);
    assert_eq!(read("key.pem"), current.private_key_pem);
    assert_eq!(read("root-cert.pem"), ca.root_pem());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out.join("key.pem"))
        .expect("key.pem")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounted_certificate_files_are_served_and_reloaded() {
    let ca = FakeCa::new(TOKEN, ID);
    let pod = Pod::new(&ca);
    let mount = |uri: &str| {
        let (chain, key) = ca.issue_for_uri(uri);
        pod.write("etc/certs/key.pem", &key);
        pod.write("etc/certs/cert-chain.pem", &chain);
        pod.write("etc/certs/root-cert.pem", &ca.root_pem());
        chain
    };
    let first = mount("spiffe://cluster.local/ns/ns1/sa/first");
    let identity = WorkloadIdentity::start(pod.config(&[("FILE_MOUNTED_CERTS", "true")]));
    let secret = within("the files", Duration::from_secs(5), identity.ready())
        .await
        .expect("a secret");
    assert_eq!(secret.cert_chain_pem, first);
    assert_eq!(secret.root_pem, ca.root_pem());
    let second = mount("spiffe://cluster.local/ns/ns1/sa/second");
    let mut secrets = identity.subscribe();
    within(
        "the new files",
        Duration::from_secs(5),
        secrets.wait_for(|s| s.as_ref().is_some_and(|s| s.cert_chain_pem == second)),
    )
    .await
    .expect("the identity runs");
    assert!(ca.requests().is_empty(), "the CA is not used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provisioned_certificate_authenticates_as_a_vm_does() {
    let ca = FakeCa::new(TOKEN, ID);
    let server = ca.serve_tls();
    let pod = Pod::new(&ca);
    std::fs::remove_file(pod.path("var/run/secrets/tokens/istio-token")).expect("no token");
    // PROV_CERT holds the provisioned certificate, its key and the root to trust the CA with.
    let vm = "spiffe://cluster.local/ns/ns1/sa/vm";
    let (chain, key) = ca.issue_for_uri(vm);
    pod.write("prov/cert-chain.pem", &chain);
    pod.write("prov/key.pem", &key);
    pod.write("prov/root-cert.pem", &ca.root_pem());
    pod.write(
        "var/run/secrets/istio/root-cert.pem",
        "not used with PROV_CERT",
    );
    let prov = pod.path("prov");
    let identity = WorkloadIdentity::start(pod.config(&[
        ("CA_ADDR", &format!("127.0.0.1:{}", server.port())),
        ("PROV_CERT", prov.to_str().expect("a UTF-8 path")),
    ]));
    within("a certificate", Duration::from_secs(10), identity.ready())
        .await
        .expect("a secret");
    let requests = ca.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    assert_eq!(requests[0].token, None);
    assert_eq!(requests[0].client_uri.as_deref(), Some(vm));
}

/// An SDS client on the Unix socket, as Envoy's `sds-grpc` cluster.
async fn sds_client(path: &Path) -> SecretDiscoveryServiceClient<tonic::transport::Channel> {
    let path = path.to_path_buf();
    let channel = tonic::transport::Endpoint::from_static("http://sds")
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }))
        .await
        .expect("connect to the SDS socket");
    SecretDiscoveryServiceClient::new(channel)
}

fn secret_of(response: &DiscoveryResponse) -> Vec<Secret> {
    response
        .resources
        .iter()
        .map(|a| xds_proto::unpack::<Secret>(a).expect("a Secret"))
        .collect()
}

fn request(names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: tests::control_plane::SECRET.into(),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        version_info: version.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sds_socket_serves_default_and_rootca_and_pushes_renewals() {
    let ca = FakeCa::new(TOKEN, ID);
    ca.set_ttl(Duration::from_secs(4));
    let server = ca.serve_tls();
    let pod = Pod::new(&ca);
    let config = pod.config(&[
        ("CA_ADDR", &format!("127.0.0.1:{}", server.port())),
        ("SECRET_GRACE_PERIOD_RATIO_JITTER", "0"),
    ]);
    let socket = config.sds_socket.clone();
    let running = identity::start(config).await.expect("started");
    assert!(running.sds.is_some());
    let mut client = sds_client(&socket).await;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(request(&["default", "ROOTCA"], "", ""))
        .await
        .expect("send");
    let mut responses = client
        .stream_secrets(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("a stream")
        .into_inner();
    let first = within(
        "the first response",
        Duration::from_secs(10),
        responses.message(),
    )
    .await
    .expect("a response")
    .expect("not closed");
    let secrets = secret_of(&first);
    assert_eq!(
        secrets.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["ROOTCA", "default"]
    );
    let Some(secret::Type::ValidationContext(roots)) = &secrets[0].r#type else {
        panic!("ROOTCA is a validation context: {:?}", secrets[0]);
    };
    assert_eq!(
        roots.trusted_ca.as_ref().and_then(|d| d.specifier.clone()),
        Some(
            xds_proto::pb::envoy::config::core::v3::data_source::Specifier::InlineBytes(
                ca.root_pem().into_bytes()
            )
        )
    );
    let Some(secret::Type::TlsCertificate(cert)) = &secrets[1].r#type else {
        panic!("default is a TLS certificate: {:?}", secrets[1]);
    };
    assert!(cert.certificate_chain.is_some() && cert.private_key.is_some());
    // ACK; the renewal then comes as a push of `default` alone (the root is unchanged).
    tx.send(request(
        &["default", "ROOTCA"],
        &first.version_info,
        &first.nonce,
    ))
    .await
    .expect("send");
    let pushed = within(
        "the renewal push",
        Duration::from_secs(10),
        responses.message(),
    )
    .await
    .expect("a response")
    .expect("not closed");
    let names: Vec<String> = secret_of(&pushed).into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["default"]);
    assert_ne!(pushed.version_info, first.version_info);
    ca.wait_for_issued(2, Duration::from_secs(1));
    // Delta and Fetch are not served, as pilot-agent.
    let fetch = client.fetch_secrets(request(&["default"], "", "")).await;
    assert_eq!(
        fetch.err().map(|s| s.code()),
        Some(tonic::Code::Unimplemented)
    );
    drop(running);
    assert!(!socket.exists(), "the socket is removed on stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answering_socket_is_left_alone_and_a_stale_one_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("socket");
    // Someone (SPIRE's agent) answers there: nothing is served.
    let listener = tokio::net::UnixListener::bind(&path).expect("bind");
    assert!(identity::socket_in_use(&path).await.expect("checked"));
    let (_, rx) = tokio::sync::watch::channel(None);
    assert!(identity::SdsServer::start(&path, rx.clone())
        .await
        .expect("checked")
        .is_none());
    // Nobody answers any more: the file is stale, replaced by our server.
    drop(listener);
    assert!(path.exists());
    let server = identity::SdsServer::start(&path, rx)
        .await
        .expect("started")
        .expect("serving");
    assert!(identity::socket_in_use(&path).await.expect("checked"));
    drop(server);
}
