//! The workload identity, as pilot-agent keeps it for Envoy: a certificate for the pod's
//! SPIFFE id from the Istio CA (or from mounted files), renewed before it expires, and served
//! to the proxy over SDS on a Unix socket as the `default` and `ROOTCA` secrets.
//!
//! The sidecar command calls [`start`] with an [`IdentityConfig`] (usually from
//! [`IdentityConfig::from_env`]); the parts are public for tests and other uses:
//! [`WorkloadIdentity`] (issue and rotation, published through a `watch` channel),
//! [`SdsServer`], [`CaClient`] and the CA protocol in [`proto`].

mod cache;
mod caclient;
mod config;
mod csr;
mod files;
pub mod proto;
mod sds;

pub use cache::{rotation_delay, WorkloadIdentity};
pub use caclient::CaClient;
pub use config::{
    ca_headers, parse_go_duration, Backoff, CaConfig, CaTls, CertFiles, ConfigError, IdentityConfig,
};
pub use sds::{socket_in_use, SdsServer, ROOT_CA, WORKLOAD};

use std::sync::Arc;
use std::time::SystemTime;

/// The identity as served: what SDS sends and `OUTPUT_CERTS` writes.
#[derive(Clone, PartialEq, Eq)]
pub struct WorkloadSecret {
    /// Leaf first, then intermediates and, as Istio's CA returns it, the root.
    pub cert_chain_pem: String,
    /// PKCS#8 PEM.
    pub private_key_pem: String,
    /// The trust bundle served as `ROOTCA`.
    pub root_pem: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// When this process got it (the start of the lifetime Istio's rotation counts from).
    pub received: SystemTime,
}

impl std::fmt::Debug for WorkloadSecret {
    // The key stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadSecret")
            .field(
                "cert_chain_pem",
                &format!("{} bytes", self.cert_chain_pem.len()),
            )
            .field("root_pem", &format!("{} bytes", self.root_pem.len()))
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The current secret, `None` until the first one arrives.
pub type SecretWatch = tokio::sync::watch::Receiver<Option<Arc<WorkloadSecret>>>;

/// Why an identity operation failed. CA and file failures are retried by the cache; only the
/// socket errors of [`SdsServer::start`] reach the caller.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot make a key or CSR: {0}")]
    Key(String),
    #[error("CA request failed: {0}")]
    Ca(String),
    #[error("unusable CA response: {0}")]
    Response(String),
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("SDS socket {path}: {message}")]
    Socket { path: String, message: String },
}

/// The running identity: the certificate cache and, unless another SDS server (SPIRE)
/// already answers on the socket, the SDS server. Dropping it stops both.
pub struct Identity {
    /// `None` when an existing SDS server owns the socket.
    pub cache: Option<WorkloadIdentity>,
    pub sds: Option<SdsServer>,
}

/// Starts the identity on the current tokio runtime, pilot-agent's way: when the SDS socket
/// already exists and a server answers on it, that server provides the identity and nothing
/// starts here (a stale socket file is removed); otherwise the cache starts fetching (or
/// reading files) and the SDS server listens, answering once the first certificate is in.
pub async fn start(config: IdentityConfig) -> Result<Identity, IdentityError> {
    if socket_in_use(&config.sds_socket).await? {
        tracing::info!(
            target: "secret",
            "an SDS server already answers on {}; not serving workload certificates",
            config.sds_socket.display()
        );
        return Ok(Identity {
            cache: None,
            sds: None,
        });
    }
    let socket = config.sds_socket.clone();
    let cache = WorkloadIdentity::start(config);
    let sds = SdsServer::start(&socket, cache.subscribe()).await?;
    Ok(Identity {
        cache: Some(cache),
        sds,
    })
}
