//! The SDS server Envoy's `sds-grpc` cluster talks to, on a Unix socket, as pilot-agent's
//! (`security/pkg/nodeagent/sds`): state of the world `StreamSecrets` only; `ROOTCA` is the
//! trust bundle, `file-cert:`/`file-root:` names are read from the files they name, and any
//! other name (normally `default`) is the workload certificate. Each stream gets a response
//! when it asks for names it has not been sent, and a push when what it was sent changes.

use super::IdentityError;
use super::{SecretWatch, WorkloadSecret};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};
use xds_proto::pb::envoy::config::core::v3::{data_source::Specifier, DataSource};
use xds_proto::pb::envoy::extensions::transport_sockets::tls::v3::{
    secret, CertificateValidationContext, Secret, TlsCertificate,
};
use xds_proto::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use xds_proto::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};

/// The workload certificate's secret name.
pub const WORKLOAD: &str = "default";
/// The trust bundle's secret name.
pub const ROOT_CA: &str = "ROOTCA";
const SECRET_TYPE: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
/// `file-root:system`: the system bundle (pilot-agent's `CACertFilePath`).
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A running SDS server; dropping it stops serving and removes the socket.
pub struct SdsServer {
    path: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl SdsServer {
    /// Listens on `path` (creating its directory) and serves the secrets of `secrets`.
    /// `Ok(None)` when a server already answers there; a stale socket file is replaced.
    pub async fn start(
        path: &Path,
        secrets: SecretWatch,
    ) -> Result<Option<SdsServer>, IdentityError> {
        let socket_error = |e: std::io::Error| IdentityError::Socket {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        if socket_in_use(path).await? {
            return Ok(None);
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(socket_error)?;
        }
        let listener = tokio::net::UnixListener::bind(path).map_err(socket_error)?;
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        let service = SecretDiscoveryServiceServer::new(Sds {
            secrets,
            versions: Arc::new(AtomicU64::new(0)),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shown = path.display().to_string();
        tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(target: "secret", "the SDS server on {shown} stopped: {e}");
            }
        });
        tracing::info!(target: "secret", "serving SDS on {}", path.display());
        Ok(Some(SdsServer {
            path: path.to_path_buf(),
            stop: Some(stop),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SdsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether a server answers on the socket `path` (SPIRE's agent, say). A socket nobody
/// answers on is removed, as pilot-agent does; a missing one is not in use.
pub async fn socket_in_use(path: &Path) -> Result<bool, IdentityError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(false);
    };
    if meta.is_file() {
        return Ok(false);
    }
    let connect = tokio::net::UnixStream::connect(path);
    if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), connect).await {
        return Ok(true);
    }
    tracing::info!(target: "secret", "removing the stale SDS socket {}", path.display());
    std::fs::remove_file(path).map_err(|e| IdentityError::Socket {
        path: path.display().to_string(),
        message: format!("stale socket cannot be removed: {e}"),
    })?;
    Ok(false)
}

struct Sds {
    secrets: SecretWatch,
    /// `version_info` of the responses, shared by all streams.
    versions: Arc<AtomicU64>,
}

type Responses<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl SecretDiscoveryService for Sds {
    type StreamSecretsStream = Responses<DiscoveryResponse>;
    type DeltaSecretsStream = Responses<DeltaDiscoveryResponse>;

    async fn stream_secrets(
        &self,
        request: tonic::Request<tonic::Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::StreamSecretsStream>, tonic::Status> {
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(serve_stream(
            request.into_inner(),
            self.secrets.clone(),
            self.versions.clone(),
            tx,
        ));
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn delta_secrets(
        &self,
        _: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::DeltaSecretsStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("DeltaSecrets not implemented"))
    }

    async fn fetch_secrets(
        &self,
        _: tonic::Request<DiscoveryRequest>,
    ) -> Result<tonic::Response<DiscoveryResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("FetchSecrets not implemented"))
    }
}

async fn serve_stream(
    mut requests: tonic::Streaming<DiscoveryRequest>,
    mut secrets: SecretWatch,
    versions: Arc<AtomicU64>,
    tx: mpsc::Sender<Result<DiscoveryResponse, tonic::Status>>,
) {
    let mut stream = StreamState::default();
    loop {
        tokio::select! {
            request = requests.next() => match request {
                Some(Ok(request)) => stream.on_request(request),
                Some(Err(e)) => {
                    tracing::debug!(target: "secret", "SDS stream ended: {e}");
                    return;
                }
                None => return,
            },
            changed = secrets.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = tx.closed() => return,
        }
        let current = secrets.borrow_and_update().clone();
        if let Some(response) = stream.due(current.as_deref(), &versions) {
            if tx.send(Ok(response)).await.is_err() {
                return;
            }
        }
    }
}

/// One stream's protocol state.
#[derive(Default)]
struct StreamState {
    names: BTreeSet<String>,
    /// The nonce of the last response; requests answering an older one are stale.
    nonce: Option<String>,
    /// Per name, the content last sent, so only changes are sent again.
    sent: BTreeMap<String, Content>,
}

impl StreamState {
    fn on_request(&mut self, request: DiscoveryRequest) {
        let DiscoveryRequest {
            response_nonce,
            resource_names,
            error_detail,
            ..
        } = request;
        if !response_nonce.is_empty() && self.nonce.as_ref().is_some_and(|n| *n != response_nonce) {
            tracing::debug!(target: "secret", "SDS: ignoring a request for stale nonce {response_nonce}");
            return;
        }
        if let Some(error) = error_detail {
            // Like pilot-agent: logged, not resent; the next change is pushed as usual.
            tracing::warn!(target: "secret", "SDS: the proxy rejected {resource_names:?}: {}", error.message);
            return;
        }
        let names: BTreeSet<String> = resource_names.into_iter().collect();
        // A name dropped and asked again later is answered again.
        self.sent.retain(|name, _| names.contains(name));
        self.names = names;
    }

    /// A response with every subscribed secret whose content differs from what this stream
    /// was sent; nothing before the first certificate (the proxy waits, with
    /// `initial_fetch_timeout: 0s`).
    fn due(
        &mut self,
        current: Option<&WorkloadSecret>,
        versions: &AtomicU64,
    ) -> Option<DiscoveryResponse> {
        let current = current?;
        let mut resources = Vec::new();
        for name in &self.names {
            let Some(content) = content(name, current) else {
                continue;
            };
            if self.sent.get(name) == Some(&content) {
                continue;
            }
            resources.push(xds_proto::pack(&to_secret(name, &content)));
            self.sent.insert(name.clone(), content);
        }
        if resources.is_empty() {
            return None;
        }
        let version = versions.fetch_add(1, Ordering::Relaxed) + 1;
        let nonce = format!("{version}-{:016x}", crate::random::next_u64());
        self.nonce = Some(nonce.clone());
        Some(DiscoveryResponse {
            version_info: version.to_string(),
            resources,
            type_url: SECRET_TYPE.to_string(),
            nonce,
            ..Default::default()
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Content {
    Certificate { chain: String, key: String },
    Roots(String),
}

/// What the secret `name` holds now; `None` when its files cannot be read (logged; asked
/// again on the next change).
fn content(name: &str, current: &WorkloadSecret) -> Option<Content> {
    let read = |path: &str| match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) => {
            tracing::warn!(target: "secret", "SDS: secret {name}: {path}: {e}");
            None
        }
    };
    if name == ROOT_CA {
        return Some(Content::Roots(current.root_pem.clone()));
    }
    if let Some(path) = name.strip_prefix("file-root:") {
        let path = if path == "system" { SYSTEM_ROOTS } else { path };
        return read(path).map(Content::Roots);
    }
    if let Some(files) = name.strip_prefix("file-cert:") {
        let Some((cert, key)) = files.split_once('~') else {
            tracing::warn!(target: "secret", "SDS: secret {name}: expected file-cert:<cert>~<key>");
            return None;
        };
        return Some(Content::Certificate {
            chain: read(cert)?,
            key: read(key)?,
        });
    }
    Some(Content::Certificate {
        chain: current.cert_chain_pem.clone(),
        key: current.private_key_pem.clone(),
    })
}

fn inline(text: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineBytes(text.as_bytes().to_vec())),
        ..Default::default()
    })
}

fn to_secret(name: &str, content: &Content) -> Secret {
    let kind = match content {
        Content::Certificate { chain, key } => secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(chain),
            private_key: inline(key),
            ..Default::default()
        }),
        Content::Roots(roots) => secret::Type::ValidationContext(CertificateValidationContext {
            trusted_ca: inline(roots),
            ..Default::default()
        }),
    };
    Secret {
        name: name.to_string(),
        r#type: Some(kind),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;
    use xds_proto::pb::google::rpc::Status;

    fn secret(tag: &str, root: &str) -> WorkloadSecret {
        WorkloadSecret {
            cert_chain_pem: format!("chain {tag}"),
            private_key_pem: format!("key {tag}"),
            root_pem: root.into(),
            not_before: SystemTime::UNIX_EPOCH,
            not_after: SystemTime::UNIX_EPOCH,
            received: SystemTime::UNIX_EPOCH,
        }
    }

    fn request(names: &[&str], nonce: &str, nack: bool) -> DiscoveryRequest {
        DiscoveryRequest {
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            response_nonce: nonce.into(),
            type_url: SECRET_TYPE.into(),
            error_detail: nack.then(|| Status {
                message: "bad".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn names(response: &DiscoveryResponse) -> Vec<String> {
        response
            .resources
            .iter()
            .map(|any| {
                xds_proto::unpack::<Secret>(any)
                    .map(|s| s.name)
                    .unwrap_or_default()
            })
            .collect()
    }

    #[test]
    fn answers_new_names_pushes_changes_and_follows_acks() {
        let versions = AtomicU64::new(0);
        let mut s = StreamState::default();
        s.on_request(request(&["default"], "", false));
        // Nothing until there is a certificate.
        assert!(s.due(None, &versions).is_none());
        let one = secret("1", "root1");
        let r = s.due(Some(&one), &versions).expect("a response");
        assert_eq!(names(&r), ["default"]);
        // The ACK asks for nothing new.
        s.on_request(request(&["default"], &r.nonce, false));
        assert!(s.due(Some(&one), &versions).is_none());
        // ROOTCA added on the same stream: only it is sent.
        s.on_request(request(&["default", "ROOTCA"], &r.nonce, false));
        let r = s.due(Some(&one), &versions).expect("a response");
        assert_eq!(names(&r), ["ROOTCA"]);
        // A stale request (old nonce) is ignored.
        s.on_request(request(&[], "old", false));
        assert_eq!(s.names.len(), 2);
        // Rotation with the same root: default alone; a new root: both.
        let two = secret("2", "root1");
        let r = s.due(Some(&two), &versions).expect("a push");
        assert_eq!(names(&r), ["default"]);
        let three = secret("3", "root2");
        let r = s.due(Some(&three), &versions).expect("a push");
        assert_eq!(names(&r), ["ROOTCA", "default"]);
        // A NACK is not answered.
        s.on_request(request(&["default", "ROOTCA"], &r.nonce, true));
        assert!(s.due(Some(&three), &versions).is_none());
        assert_eq!(r.version_info, "4");
    }

    #[test]
    fn secrets_have_istio_shapes() {
        let one = secret("1", "root1");
        let as_secret = |name: &str| content(name, &one).map(|c| to_secret(name, &c));
        let Some(Secret {
            name,
            r#type: Some(secret::Type::TlsCertificate(cert)),
        }) = as_secret("default")
        else {
            panic!("default is a TLS certificate");
        };
        assert_eq!(name, "default");
        assert_eq!(cert.certificate_chain, inline("chain 1"));
        assert_eq!(cert.private_key, inline("key 1"));
        let Some(Secret {
            r#type: Some(secret::Type::ValidationContext(roots)),
            ..
        }) = as_secret("ROOTCA")
        else {
            panic!("ROOTCA is a validation context");
        };
        assert_eq!(roots.trusted_ca, inline("root1"));
        // pilot-agent answers any other name with the workload certificate.
        assert!(matches!(
            as_secret("other").and_then(|s| s.r#type),
            Some(secret::Type::TlsCertificate(_))
        ));
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, "C").expect("write");
        std::fs::write(&key, "K").expect("write");
        let name = format!("file-cert:{}~{}", cert.display(), key.display());
        assert_eq!(
            content(&name, &one),
            Some(Content::Certificate {
                chain: "C".into(),
                key: "K".into()
            })
        );
        let name = format!("file-root:{}", cert.display());
        assert_eq!(content(&name, &one), Some(Content::Roots("C".into())));
        assert_eq!(content("file-root:/nonexistent", &one), None);
    }
}
