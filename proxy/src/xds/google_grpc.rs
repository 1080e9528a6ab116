//! The channel of a `google_grpc` config source: its own connection to the target (TCP or a
//! Unix socket), in plaintext or TLS with the configured roots and client certificate,
//! offering h2 by ALPN as gRPC does.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/grpc_service.proto#config-core-v3-grpcservice-googlegrpc

use crate::config::grpc_target::{GoogleGrpc, SslCredentials, TargetAddress};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// A lazily connecting channel to `target` (each stream reconnects as needed).
pub fn channel(target: &GoogleGrpc) -> Result<tonic::transport::Channel, String> {
    let tls = target.tls.as_ref().map(client_config).transpose()?;
    let server_name = match &target.address {
        TargetAddress::Tcp { host, .. } => host.clone(),
        TargetAddress::Unix(_) => "localhost".to_string(),
    };
    let name = ServerName::try_from(server_name.clone())
        .map_err(|e| format!("{server_name} is not a TLS server name: {e}"))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint =
        tonic::transport::Endpoint::from_shared(format!("{scheme}://{}", authority(target)))
            .map_err(|e| e.to_string())?
            .http2_keep_alive_interval(std::time::Duration::from_secs(30))
            .keep_alive_while_idle(true);
    let address = target.address.clone();
    let connector = tower::service_fn(move |_: http::Uri| {
        let (address, tls, name) = (address.clone(), tls.clone(), name.clone());
        async move {
            let stream = match &address {
                TargetAddress::Tcp { host, port } => {
                    let tcp = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                    let _ = tcp.set_nodelay(true);
                    secure(tcp, tls, name).await?
                }
                TargetAddress::Unix(path) => {
                    secure(tokio::net::UnixStream::connect(path).await?, tls, name).await?
                }
            };
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// `stream` as the channel uses it: through TLS when the target has credentials for it.
async fn secure<S: Stream + 'static>(
    stream: S,
    tls: Option<Arc<rustls::ClientConfig>>,
    name: ServerName<'static>,
) -> std::io::Result<Box<dyn Stream>> {
    Ok(match tls {
        Some(config) => Box::new(
            tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await?,
        ),
        None => Box::new(stream),
    })
}

/// The `:authority` of the channel's requests: the target's host and port.
fn authority(target: &GoogleGrpc) -> String {
    match &target.address {
        TargetAddress::Tcp { host, port } if host.contains(':') => format!("[{host}]:{port}"),
        TargetAddress::Tcp { host, port } => format!("{host}:{port}"),
        TargetAddress::Unix(_) => "localhost".to_string(),
    }
}

/// Trusts only the configured roots; presents the client certificate when one is set. Also
/// run at translation, so credentials that cannot be used are refused with the config.
pub fn client_config(ssl: &SslCredentials) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ssl.root_certs) {
        let cert = cert.map_err(|e| format!("root_certs: bad PEM: {e:?}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("root_certs: unusable certificate: {e}"))?;
    }
    let builder =
        rustls::ClientConfig::builder_with_provider(Arc::new(crate::config::tls::provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
    let mut config = if ssl.cert_chain.is_empty() {
        builder.with_no_client_auth()
    } else {
        let chain = CertificateDer::pem_slice_iter(&ssl.cert_chain)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cert_chain: bad PEM: {e:?}"))?;
        // The key's own error would not name it; nothing of it is printed.
        let key = PrivateKeyDer::from_pem_slice(&ssl.private_key)
            .map_err(|_| "private_key: not a PEM private key".to_string())?;
        builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("client certificate: {e}"))?
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}
