//! A fake Istio CA: a real `istio.v1.auth.IstioCertificateService` that checks the bearer
//! token, verifies the CSR's signature, and signs its key for the identity the CA is configured
//! with (as istiod signs the identity it authenticated, never the CSR's SAN), with a
//! configurable lifetime and an optional intermediate. It records every request.
//!
//! [`FakeCa::service`] is a tonic service value to mount next to others (a "fake istiod");
//! [`serve_tls`] serves any tonic routes over TLS with a certificate from this CA.

use outrigger::agent::identity::proto::{
    CertificateServer, CertificateService, IstioCertificateRequest, IstioCertificateResponse,
};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What one `CreateCertificate` call carried.
#[derive(Debug, Clone)]
pub struct CaRequest {
    /// The `authorization` metadata, without `Bearer `.
    pub token: Option<String>,
    /// The `ClusterID` metadata.
    pub cluster_id: Option<String>,
    pub validity_duration: i64,
    /// `metadata.CertSigner`.
    pub cert_signer: Option<String>,
    /// The SPIFFE URI the CSR asked for.
    pub csr_uri: Option<String>,
    /// The URI of the client certificate presented on the TLS connection, if any.
    pub client_uri: Option<String>,
    /// Whether a certificate was issued.
    pub issued: bool,
    pub at: Instant,
}

struct State {
    token: String,
    identity: String,
    /// More workloads: token → identity (istiod signs whoever the token authenticates).
    others: Vec<(String, String)>,
    ttl: Option<Duration>,
    requests: Vec<CaRequest>,
}

struct Inner {
    root: rcgen::Certificate,
    root_key: rcgen::KeyPair,
    intermediate: Option<(rcgen::Certificate, rcgen::KeyPair)>,
    state: Mutex<State>,
}

/// The CA; clones share state.
#[derive(Clone)]
pub struct FakeCa {
    inner: Arc<Inner>,
}

fn ca_params(name: &str) -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params
}

impl FakeCa {
    /// A CA that accepts `token` and issues `identity` (a SPIFFE URI) signed by its root.
    pub fn new(token: &str, identity: &str) -> FakeCa {
        Self::build(token, identity, false)
    }

    /// The same, signing with an intermediate (chains are then leaf, intermediate, root).
    pub fn with_intermediate(token: &str, identity: &str) -> FakeCa {
        Self::build(token, identity, true)
    }

    fn build(token: &str, identity: &str, intermediate: bool) -> FakeCa {
        let root_key = rcgen::KeyPair::generate().expect("root key");
        let root = ca_params("cluster.local")
            .self_signed(&root_key)
            .expect("root certificate");
        let intermediate = intermediate.then(|| {
            let key = rcgen::KeyPair::generate().expect("intermediate key");
            let cert = ca_params("intermediate")
                .signed_by(&key, &root, &root_key)
                .expect("intermediate certificate");
            (cert, key)
        });
        FakeCa {
            inner: Arc::new(Inner {
                root,
                root_key,
                intermediate,
                state: Mutex::new(State {
                    token: token.into(),
                    identity: identity.into(),
                    others: Vec::new(),
                    ttl: None,
                    requests: Vec::new(),
                }),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Issue certificates valid for `ttl` whatever the request asks (istiod caps them too).
    pub fn set_ttl(&self, ttl: Duration) {
        self.state().ttl = Some(ttl);
    }

    /// Also accepts `token`, issuing `identity` (a SPIFFE URI) for it: a second workload of
    /// the same mesh.
    pub fn add_workload(&self, token: &str, identity: &str) {
        self.state().others.push((token.into(), identity.into()));
    }

    /// The token accepted from now on.
    pub fn set_token(&self, token: &str) {
        self.state().token = token.into();
    }

    /// The root certificate (PEM).
    pub fn root_pem(&self) -> String {
        self.inner.root.pem()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<CaRequest> {
        self.state().requests.clone()
    }

    /// Waits until `n` certificates were issued; panics with the requests seen otherwise.
    pub fn wait_for_issued(&self, n: usize, timeout: Duration) -> Vec<CaRequest> {
        let deadline = Instant::now() + timeout;
        loop {
            let requests = self.requests();
            if requests.iter().filter(|r| r.issued).count() >= n {
                return requests;
            }
            assert!(
                Instant::now() < deadline,
                "fake CA: {n} certificates not issued within {timeout:?}; requests: {requests:#?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The tonic service answering `CreateCertificate`.
    pub fn service(&self) -> CertificateServer<FakeCa> {
        CertificateServer::new(self.clone())
    }

    /// A certificate and key (PEM) signed by the root for DNS names and IPs, usable as a
    /// server certificate (istiod's own) or a client one.
    pub fn issue_for_names(&self, names: &[&str]) -> (String, String) {
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => rcgen::SanType::IpAddress(ip),
                Err(_) => rcgen::SanType::DnsName(
                    rcgen::Ia5String::try_from(n.to_string()).expect("a DNS name"),
                ),
            })
            .collect();
        self.sign(params)
    }

    /// A workload certificate and key (PEM) for `uri`, signed by the root: a peer of the
    /// workload in mTLS tests.
    pub fn issue_for_uri(&self, uri: &str) -> (String, String) {
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(
            rcgen::Ia5String::try_from(uri.to_string()).expect("a URI"),
        )];
        self.sign(params)
    }

    fn sign(&self, mut params: rcgen::CertificateParams) -> (String, String) {
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params
            .signed_by(&key, &self.inner.root, &self.inner.root_key)
            .expect("certificate");
        (cert.pem(), key.serialize_pem())
    }

    /// Signs the CSR's key for the configured identity; the chain, leaf first.
    fn issue(&self, csr_pem: &str, validity: i64, identity: String) -> Result<Vec<String>, String> {
        let key = csr_key(csr_pem)?;
        let ttl = self.state().ttl;
        let ttl = ttl.unwrap_or_else(|| Duration::from_secs(u64::try_from(validity).unwrap_or(0)));
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = vec![rcgen::SanType::URI(
            rcgen::Ia5String::try_from(identity).map_err(|e| e.to_string())?,
        )];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - Duration::from_secs(60);
        params.not_after = now + ttl;
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
        ];
        let inner = &self.inner;
        let mut chain = Vec::new();
        match &inner.intermediate {
            Some((cert, issuer_key)) => {
                let leaf = params
                    .signed_by(&key, cert, issuer_key)
                    .map_err(|e| e.to_string())?;
                chain.push(leaf.pem());
                chain.push(cert.pem());
            }
            None => {
                let leaf = params
                    .signed_by(&key, &inner.root, &inner.root_key)
                    .map_err(|e| e.to_string())?;
                chain.push(leaf.pem());
            }
        }
        chain.push(inner.root.pem());
        Ok(chain)
    }
}

#[tonic::async_trait]
impl CertificateService for FakeCa {
    async fn create_certificate(
        &self,
        request: tonic::Request<IstioCertificateRequest>,
    ) -> Result<tonic::Response<IstioCertificateResponse>, tonic::Status> {
        let text = |name: &str| {
            request
                .metadata()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let token = text("authorization").map(|a| a.trim_start_matches("Bearer ").to_string());
        let cluster_id = text("clusterid");
        let client_uri = request
            .extensions()
            .get::<PeerCertificates>()
            .and_then(|p| p.0.first())
            .and_then(|leaf| {
                outrigger::tls::der::subject_alt_names(leaf)
                    .uri
                    .into_iter()
                    .next()
            });
        let body = request.into_inner();
        let cert_signer = body
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get("CertSigner"))
            .and_then(|v| match &v.kind {
                Some(xds_proto::pb::google::protobuf::value::Kind::StringValue(s)) => {
                    Some(s.clone())
                }
                _ => None,
            });
        let mut record = CaRequest {
            token: token.clone(),
            cluster_id,
            validity_duration: body.validity_duration,
            cert_signer,
            csr_uri: csr_uri(&body.csr),
            client_uri: client_uri.clone(),
            issued: false,
            at: Instant::now(),
        };
        // Like istiod: a valid token, or a client certificate from this CA (rustls checked the
        // chain during the handshake).
        let authenticated = {
            let state = self.state();
            if token.as_deref() == Some(state.token.as_str()) {
                Some(state.identity.clone())
            } else {
                state
                    .others
                    .iter()
                    .find(|(t, _)| Some(t.as_str()) == token.as_deref())
                    .map(|(_, identity)| identity.clone())
                    // A renewal over mTLS: the identity of the certificate presented.
                    .or_else(|| client_uri.clone())
            }
        };
        let result = match authenticated {
            None => Err(tonic::Status::unauthenticated("bad or missing token")),
            Some(identity) => self
                .issue(&body.csr, body.validity_duration, identity)
                .map_err(tonic::Status::invalid_argument),
        };
        record.issued = result.is_ok();
        self.state().requests.push(record);
        result.map(|cert_chain| tonic::Response::new(IstioCertificateResponse { cert_chain }))
    }
}

/// One DER element: (tag, the whole element, its contents, what follows).
type Element<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

fn tlv(input: &[u8]) -> Option<Element<'_>> {
    let tag = *input.first()?;
    let first = *input.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let count = usize::from(first & 0x7f);
        let bytes = input.get(2..2 + count)?;
        (
            bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b)),
            2 + count,
        )
    };
    let end = header.checked_add(len)?;
    let whole = input.get(..end)?;
    Some((tag, whole, &whole[header..], &input[end..]))
}

/// The CSR's P-256 public key, once its signature verifies (PKCS#10, RFC 2986).
fn csr_key(csr_pem: &str) -> Result<CsrKey, String> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map_err(|e| format!("not a PEM CSR: {e:?}"))?;
    let bad = || "malformed CSR".to_string();
    let (_, _, request, _) = tlv(der.as_ref()).ok_or_else(bad)?;
    let (_, info_whole, info, rest) = tlv(request).ok_or_else(bad)?;
    let (_, _, _, rest) = tlv(rest).ok_or_else(bad)?;
    let (_, _, signature, _) = tlv(rest).ok_or_else(bad)?;
    // version, subject, then subjectPKInfo { algorithm, BIT STRING }.
    let (_, _, _, info_rest) = tlv(info).ok_or_else(bad)?;
    let (_, _, _, info_rest) = tlv(info_rest).ok_or_else(bad)?;
    let (_, _, spki, _) = tlv(info_rest).ok_or_else(bad)?;
    let (_, _, _, spki_rest) = tlv(spki).ok_or_else(bad)?;
    let (_, _, bits, _) = tlv(spki_rest).ok_or_else(bad)?;
    let point = bits.get(1..).ok_or_else(bad)?.to_vec();
    let signature = signature.get(1..).ok_or_else(bad)?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, &point)
        .verify(info_whole, signature)
        .map_err(|_| "the CSR signature does not verify (only P-256 keys are accepted)")?;
    Ok(CsrKey(point))
}

/// The SPIFFE URI a CSR names, found in its DER.
fn csr_uri(csr_pem: &str) -> Option<String> {
    use rustls::pki_types::pem::PemObject;
    let der =
        rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes()).ok()?;
    let der: &[u8] = der.as_ref();
    // A URI general name: tag [6] (0x86) and a short length right before the text.
    let start = der.windows(9).position(|w| w == b"spiffe://")?;
    let len = usize::from(*der.get(start.checked_sub(1)?)?);
    let text = der.get(start..start + len)?;
    Some(String::from_utf8_lossy(text).into_owned())
}

struct CsrKey(Vec<u8>);

impl rcgen::PublicKeyData for CsrKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// A TLS gRPC server on 127.0.0.1, on a thread and runtime of its own (so sync and async
/// tests can both use it); stops when dropped.
pub struct TlsServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsServer {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl FakeCa {
    /// Serves this CA alone over TLS, with a certificate for `istiod.istio-system.svc`,
    /// `localhost` and 127.0.0.1 signed by its root.
    pub fn serve_tls(&self) -> TlsServer {
        let (cert, key) =
            self.issue_for_names(&["istiod.istio-system.svc", "localhost", "127.0.0.1"]);
        let routes = tonic::service::Routes::new(self.service());
        serve_tls_with_client_roots(routes, &cert, &key, Some(&self.root_pem()))
    }
}

/// Serves `routes` (e.g. `Routes::new(ca.service()).add_service(ads)`) over TLS with the
/// PEM certificate chain and key, ALPN h2, on a free port of 127.0.0.1.
pub fn serve_tls(routes: tonic::service::Routes, cert_pem: &str, key_pem: &str) -> TlsServer {
    serve_tls_with_client_roots(routes, cert_pem, key_pem, None)
}

/// [`serve_tls`], also asking for a client certificate (optional, as istiod does) that must
/// chain to `client_roots` (PEM) when one is presented; handlers find the presented chain as
/// a [`PeerCertificates`] request extension.
pub fn serve_tls_with_client_roots(
    routes: tonic::service::Routes,
    cert_pem: &str,
    key_pem: &str,
    client_roots: Option<&str>,
) -> TlsServer {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("server certificate PEM");
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .expect("server key PEM");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("protocol versions");
    let builder = match client_roots {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots.add(cert.expect("a root PEM")).expect("a root");
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .allow_unauthenticated()
                    .build()
                    .expect("a client verifier");
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .expect("server certificate");
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the TLS server");
    listener
        .set_nonblocking(true)
        .expect("a non-blocking listener");
    let addr = listener.local_addr().expect("a bound address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the TLS server");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
            let (conns, incoming) = tokio::sync::mpsc::channel::<std::io::Result<TlsConn>>(16);
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let (acceptor, conns) = (acceptor.clone(), conns.clone());
                    // Handshakes run apart, so a client that never finishes one blocks nobody.
                    tokio::spawn(async move {
                        if let Ok(tls) = acceptor.accept(tcp).await {
                            let _ = conns.send(Ok(TlsConn(tls))).await;
                        }
                    });
                }
            });
            let incoming = tokio_stream::wrappers::ReceiverStream::new(incoming);
            let _ = tonic::transport::Server::builder()
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
        });
    });
    TlsServer {
        addr,
        stop: Some(stop),
        thread: Some(thread),
    }
}

/// A server-side TLS connection tonic can serve (tonic's own TLS types are not enabled).
struct TlsConn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

/// The client's certificate chain (DER), leaf first; empty when it presented none.
#[derive(Debug, Clone)]
pub struct PeerCertificates(pub Vec<Vec<u8>>);

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = PeerCertificates;
    fn connect_info(&self) -> Self::ConnectInfo {
        let certs = self.0.get_ref().1.peer_certificates().unwrap_or_default();
        PeerCertificates(certs.iter().map(|c| c.to_vec()).collect())
    }
}

impl tokio::io::AsyncRead for TlsConn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsConn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
