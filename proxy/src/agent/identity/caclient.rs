//! The client side of the Istio CA: a gRPC channel to `CA_ADDR` over TLS (rustls, ALPN h2,
//! verified against the mounted root bundle) or plaintext, and `CreateCertificate` calls
//! carrying the service account token and the cluster id. A failed call drops the channel,
//! so the next one reconnects with a freshly read root bundle and client certificate.

use super::config::{CaConfig, CaTls, CertFiles};
use super::proto::{create_certificate, IstioCertificateRequest};
use super::IdentityError;
use crate::tls::x509::leaf_facts;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use xds_proto::pb::google::protobuf::{value::Kind, Struct, Value};

/// Talks to one CA.
pub struct CaClient {
    config: CaConfig,
    channel: Option<Channel>,
}

impl CaClient {
    pub fn new(config: CaConfig) -> CaClient {
        CaClient {
            config,
            channel: None,
        }
    }

    /// Asks for a certificate for `csr_pem` valid for `ttl`; returns the chain, leaf first.
    pub async fn sign(
        &mut self,
        csr_pem: &str,
        ttl: Duration,
    ) -> Result<Vec<String>, IdentityError> {
        let timeout = self.config.request_timeout;
        let result = tokio::time::timeout(timeout, self.sign_once(csr_pem, ttl))
            .await
            .unwrap_or_else(|_| Err(IdentityError::Ca(format!("no answer within {timeout:?}"))));
        if result.is_err() {
            self.channel = None;
        }
        result
    }

    async fn sign_once(
        &mut self,
        csr_pem: &str,
        ttl: Duration,
    ) -> Result<Vec<String>, IdentityError> {
        let channel = match &self.channel {
            Some(channel) => channel.clone(),
            None => {
                let channel = connect(&self.config).await?;
                self.channel = Some(channel.clone());
                channel
            }
        };
        let request = self.request(csr_pem, ttl)?;
        let response = create_certificate(channel, request)
            .await
            .map_err(|s| IdentityError::Ca(format!("{:?}: {}", s.code(), s.message())))?;
        Ok(response.cert_chain)
    }

    fn request(
        &self,
        csr_pem: &str,
        ttl: Duration,
    ) -> Result<tonic::Request<IstioCertificateRequest>, IdentityError> {
        let metadata = self.config.cert_signer.as_ref().map(|signer| Struct {
            fields: [(
                "CertSigner".to_string(),
                Value {
                    kind: Some(Kind::StringValue(signer.clone())),
                },
            )]
            .into_iter()
            .collect(),
        });
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr: csr_pem.to_string(),
            validity_duration: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
            metadata,
        });
        let headers = request.metadata_mut();
        // Projected tokens rotate: read the file for every request, as pilot-agent does.
        if let Some(token) = self
            .config
            .token_file
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
        {
            let token = token.trim();
            if !token.is_empty() {
                let value = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
                    IdentityError::Ca("the token is not a valid header value".into())
                })?;
                headers.insert("authorization", value);
            }
        }
        // HTTP/2 header names are lower case; Go's gRPC sends `ClusterID` as `clusterid` too.
        let cluster = MetadataValue::try_from(self.config.cluster_id.as_str())
            .map_err(|_| IdentityError::Ca("the cluster id is not a valid header value".into()))?;
        headers.insert("clusterid", cluster);
        for (name, value) in &self.config.headers {
            let key = MetadataKey::from_bytes(name.to_ascii_lowercase().as_bytes())
                .map_err(|_| IdentityError::Ca(format!("bad CA header name {name:?}")))?;
            let value = MetadataValue::try_from(value.as_str())
                .map_err(|_| IdentityError::Ca(format!("bad CA header value for {name}")))?;
            headers.insert(key, value);
        }
        Ok(request)
    }
}

async fn connect(config: &CaConfig) -> Result<Channel, IdentityError> {
    let address = config.address.clone();
    let ca = |e: String| IdentityError::Ca(format!("{address}: {e}"));
    match &config.tls {
        None => {
            let endpoint = Endpoint::from_shared(format!("http://{address}"))
                .map_err(|e| ca(e.to_string()))?
                .connect_timeout(config.request_timeout);
            endpoint.connect().await.map_err(|e| ca(error_chain(&e)))
        }
        Some(tls) => {
            let client = client_config(tls)?;
            let name = ServerName::try_from(tls.server_name.clone())
                .map_err(|e| ca(format!("bad server name {}: {e}", tls.server_name)))?;
            let endpoint = Endpoint::from_shared(format!("https://{address}"))
                .map_err(|e| ca(e.to_string()))?;
            let target = address.clone();
            let connector = tower::service_fn(move |_: http::Uri| {
                let connector = tokio_rustls::TlsConnector::from(client.clone());
                let (target, name) = (target.clone(), name.clone());
                async move {
                    let tcp = tokio::net::TcpStream::connect(target.as_str()).await?;
                    let _ = tcp.set_nodelay(true);
                    let tls = connector.connect(name, tcp).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(tls))
                }
            });
            tokio::time::timeout(
                config.request_timeout,
                endpoint.connect_with_connector(connector),
            )
            .await
            .map_err(|_| ca("connect timed out".into()))?
            .map_err(|e| ca(error_chain(&e)))
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A rustls client configuration trusting only the CA roots in `tls.root_cert`, offering h2,
/// and presenting the provisioned client certificate when there is a valid one.
fn client_config(tls: &CaTls) -> Result<Arc<rustls::ClientConfig>, IdentityError> {
    let path = tls.root_cert.display().to_string();
    let file = |m: String| IdentityError::File {
        path: path.clone(),
        message: m,
    };
    let pem = std::fs::read(&tls.root_cert).map_err(|e| file(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| file(format!("bad PEM: {e:?}")))?;
        // One unusable root (e.g. a negative serial) must not hide the others.
        if let Err(e) = roots.add(cert) {
            tracing::warn!(target: "secret", "{path}: skipping a root certificate: {e}");
        }
    }
    if roots.is_empty() {
        return Err(file("no usable root certificate".into()));
    }
    let builder =
        rustls::ClientConfig::builder_with_provider(Arc::new(crate::config::tls::provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| IdentityError::Ca(e.to_string()))?
            .with_root_certificates(roots);
    let mut config = match tls.client_cert.as_ref().and_then(client_certificate) {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| IdentityError::Ca(format!("client certificate: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The provisioned certificate and key, when both files read and the leaf has not expired;
/// otherwise the token alone authenticates (pilot-agent falls back the same way).
fn client_certificate(
    files: &CertFiles,
) -> Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain_pem = std::fs::read(&files.cert_chain).ok()?;
    let key_pem = std::fs::read(&files.key).ok()?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&chain_pem)
        .collect::<Result<_, _>>()
        .ok()?;
    let facts = leaf_facts(chain.first()?)?;
    if facts.not_after <= SystemTime::now() {
        tracing::warn!(target: "secret", "{}: expired; authenticating with the token only", files.cert_chain.display());
        return None;
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).ok()?;
    Some((chain, key))
}
