//! TLS on connections: rustls server and client configurations built from the compiled
//! contexts (`config::tls`), the peer verifiers, the ClientHello inspector and the TLS stats.
//!
//! Rotation: a context reads its secrets from their slots. The rustls configuration built from
//! them is cached together with the identity of the secrets it was built from; a handshake that
//! finds a slot holding a different secret rebuilds it first. New connections therefore use a
//! rotated certificate at once, while established ones keep the configuration they started on.

mod alpn;
mod contexts;
pub mod der;
mod info;
pub mod inspector;
pub mod subject;
mod verify;
pub mod x509;

pub use alpn::AlpnOffer;
pub use contexts::{Certificates, ContextManager, REFRESH_INTERVAL};

use crate::config::tls::{
    provider, CertificateSource, DownstreamTls, Secret, TlsParams, UpstreamTls, Validation,
    ValidationSource,
};
use crate::stats::{Counter, Store};
use arc_swap::ArcSwapOption;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ProtocolVersion, RootCertStore, ServerConfig, SignatureScheme};
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

pub use info::{CertNames, TlsInfo, UpstreamIdentities};
pub use verify::sans_match;
pub use verify::AcceptAnyServer;

/// `<scope>ssl.*`, Envoy's names for a listener's or cluster's TLS outcomes.
#[derive(Debug)]
pub struct TlsStats {
    pub handshake: Arc<Counter>,
    pub connection_error: Arc<Counter>,
    pub fail_verify_san: Arc<Counter>,
    pub fail_verify_error: Arc<Counter>,
    pub no_certificate: Arc<Counter>,
    /// `ssl.versions.*`, `ssl.ciphers.*`, `ssl.curves.*`: made on first use, as Envoy's are.
    pub(crate) negotiated: info::Negotiated,
    /// `listener.<scope>.` or `cluster.<name>.`, where the context's certificate gauges go.
    scope: Arc<str>,
}

impl TlsStats {
    /// `prefix` is `listener.<scope>.` or `cluster.<name>.`.
    pub fn new(store: &Arc<Store>, prefix: &str) -> Self {
        let c = |s: &str| store.counter(&format!("{prefix}ssl.{s}"));
        Self {
            handshake: c("handshake"),
            connection_error: c("connection_error"),
            fail_verify_san: c("fail_verify_san"),
            fail_verify_error: c("fail_verify_error"),
            no_certificate: c("no_certificate"),
            negotiated: info::Negotiated::new(store.clone(), format!("{prefix}ssl.")),
            scope: prefix.into(),
        }
    }

    fn scope(&self) -> Arc<str> {
        self.scope.clone()
    }

    #[cfg(test)]
    fn detached() -> Self {
        Self::new(&Arc::new(Store::default()), "test.")
    }
}

/// Why a configuration could not be built: a referenced secret has not arrived (or is of the
/// wrong kind), or its contents do not make a usable configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("secret {0} is not available")]
    MissingSecret(String),
    #[error("{0}")]
    Invalid(String),
}

impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> Self {
        TlsError::Invalid(e.to_string())
    }
}

/// The secrets a configuration was built from, by identity.
type Inputs = (usize, usize);

fn identity<T>(value: &Option<Arc<T>>) -> usize {
    value
        .as_ref()
        .map_or(0, |v| Arc::as_ptr(v) as *const () as usize)
}

/// The certificate a context presents now.
fn current_certificate(
    source: Option<&CertificateSource>,
) -> Result<(Option<Arc<CertifiedKey>>, usize), TlsError> {
    match source {
        None => Ok((None, 0)),
        Some(CertificateSource::Inline(loaded)) => Ok((Some(loaded.key.clone()), 0)),
        Some(CertificateSource::Sds(slot)) => {
            let secret = slot.get();
            let id = identity(&secret);
            match secret.as_deref() {
                Some(Secret::Certificate(loaded)) => Ok((Some(loaded.key.clone()), id)),
                _ => Err(TlsError::MissingSecret(slot.name.to_string())),
            }
        }
    }
}

/// The validation a context applies now.
fn current_validation(
    source: Option<&ValidationSource>,
) -> Result<(Option<Arc<Validation>>, usize), TlsError> {
    let sds = |slot: &crate::config::slots::Slot<Secret>| {
        let secret = slot.get();
        let id = identity(&secret);
        match secret.as_deref() {
            Some(Secret::Validation(v)) => Ok((v.clone(), id)),
            _ => Err(TlsError::MissingSecret(slot.name.to_string())),
        }
    };
    match source {
        None => Ok((None, 0)),
        Some(ValidationSource::Inline(v)) => Ok((Some(v.clone()), 0)),
        Some(ValidationSource::Sds(slot)) => sds(slot).map(|(v, id)| (Some(v), id)),
        Some(ValidationSource::Combined { default, sds: slot }) => {
            let (over, id) = sds(slot)?;
            Ok((Some(Arc::new(default.merged(&over))), id))
        }
    }
}

/// The provider narrowed to `tls_params`' cipher suites and curves, in their order.
fn provider_for(params: &TlsParams) -> CryptoProvider {
    let mut p = provider();
    if !params.cipher_suites.is_empty() {
        let mut suites: Vec<_> = p
            .cipher_suites
            .iter()
            .filter(|s| s.version().version == ProtocolVersion::TLSv1_3)
            .copied()
            .collect();
        suites.extend(
            params
                .cipher_suites
                .iter()
                .filter_map(|want| p.cipher_suites.iter().find(|s| s.suite() == *want).copied()),
        );
        p.cipher_suites = suites;
    }
    if !params.curves.is_empty() {
        p.kx_groups = params
            .curves
            .iter()
            .filter_map(|want| p.kx_groups.iter().find(|g| g.name() == *want).copied())
            .collect();
    }
    p
}

fn versions(params: &TlsParams) -> Vec<&'static rustls::SupportedProtocolVersion> {
    let mut out = Vec::new();
    if params.max == ProtocolVersion::TLSv1_3 {
        out.push(&rustls::version::TLS13);
    }
    if params.min == ProtocolVersion::TLSv1_2 {
        out.push(&rustls::version::TLS12);
    }
    out
}

fn roots(v: &Validation) -> Result<Option<Arc<RootCertStore>>, TlsError> {
    if v.trusted_ca.is_empty() {
        if !v.san_matchers.is_empty() {
            return Err(TlsError::Invalid(
                "SAN matchers without a trusted CA would accept any certificate".into(),
            ));
        }
        return Ok(None);
    }
    let mut store = RootCertStore::empty();
    for ca in &v.trusted_ca {
        store.add(ca.clone())?;
    }
    Ok(Some(Arc::new(store)))
}

#[derive(Debug)]
struct FixedCertificate(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl ResolvesClientCert for FixedCertificate {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// What a server chain's handshakes use: two configurations that differ only in ALPN, so a
/// client whose offer shares nothing with ours gets no ALPN rather than a fatal alert (rustls
/// refuses the handshake then; BoringSSL, and so Envoy, carries on without ALPN).
struct BuiltServer {
    inputs: Inputs,
    with_alpn: Arc<ServerConfig>,
    without_alpn: Arc<ServerConfig>,
    /// The names of the certificate it presents, for logs and metrics.
    local: Arc<CertNames>,
}

/// A listener filter chain's TLS transport socket.
pub struct ServerTls {
    spec: Arc<DownstreamTls>,
    stats: Arc<TlsStats>,
    built: ArcSwapOption<BuiltServer>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    /// A listener filter chain's context, registered with `contexts` for its certificates'
    /// stats and `/certs`.
    pub fn new(
        spec: Arc<DownstreamTls>,
        stats: Arc<TlsStats>,
        contexts: &ContextManager,
    ) -> Arc<Self> {
        let tls = Arc::new(Self {
            spec,
            stats,
            built: ArcSwapOption::empty(),
        });
        contexts.add_server(&tls);
        tls
    }

    fn current(&self) -> Result<Arc<BuiltServer>, TlsError> {
        let common = &self.spec.common;
        let (certificate, cert_id) = current_certificate(common.certificate.as_ref())?;
        let (validation, validation_id) = current_validation(common.validation.as_ref())?;
        let inputs = (cert_id, validation_id);
        if let Some(built) = self.built.load_full() {
            if built.inputs == inputs {
                return Ok(built);
            }
        }
        let certificate = certificate.ok_or_else(|| TlsError::Invalid("no certificate".into()))?;
        let provider = Arc::new(provider_for(&common.params));
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions(&common.params))?;
        let roots = validation.as_deref().map(roots).transpose()?.flatten();
        let builder = match (roots, validation) {
            (Some(roots), Some(validation)) => {
                let mut verifier = WebPkiClientVerifier::builder_with_provider(roots, provider);
                if !self.spec.require_client_certificate {
                    verifier = verifier.allow_unauthenticated();
                }
                let inner = verifier
                    .build()
                    .map_err(|e| TlsError::Invalid(e.to_string()))?;
                builder.with_client_cert_verifier(Arc::new(verify::DownstreamVerifier {
                    inner,
                    matchers: validation.san_matchers.clone(),
                    stats: self.stats.clone(),
                }))
            }
            _ => builder.with_no_client_auth(),
        };
        let local = Arc::new(
            certificate
                .cert
                .first()
                .map(|leaf| CertNames::of(leaf.as_ref()))
                .unwrap_or_default(),
        );
        let mut config = builder.with_cert_resolver(Arc::new(FixedCertificate(certificate)));
        config.ignore_client_order = !self.spec.prefer_client_ciphers;
        if !self.spec.session_cache {
            config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        }
        let without_alpn = Arc::new(config.clone());
        config.alpn_protocols = common.alpn.clone();
        let built = Arc::new(BuiltServer {
            inputs,
            with_alpn: Arc::new(config),
            without_alpn,
            local,
        });
        self.built.store(Some(built.clone()));
        Ok(built)
    }

    /// Terminates TLS on `io`, with what the handshake established. Failures are counted and
    /// returned; the caller closes.
    pub async fn accept<IO>(
        &self,
        io: IO,
    ) -> io::Result<(tokio_rustls::server::TlsStream<IO>, TlsInfo)>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let result = self.handshake(io).await;
        match result {
            Ok((stream, local)) => {
                self.stats.handshake.inc();
                self.stats.negotiated.count(stream.get_ref().1);
                if stream.get_ref().1.peer_certificates().is_none() {
                    self.stats.no_certificate.inc();
                }
                let info = TlsInfo::new(stream.get_ref().1, local);
                Ok((stream, info))
            }
            Err(e) => {
                self.stats.connection_error.inc();
                Err(e)
            }
        }
    }

    async fn handshake<IO>(
        &self,
        io: IO,
    ) -> io::Result<(tokio_rustls::server::TlsStream<IO>, Arc<CertNames>)>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let built = self.current().map_err(io::Error::other)?;
        let start =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io).await?;
        let hello = start.client_hello();
        if self.spec.require_sni && hello.server_name().is_none() {
            return Err(io::Error::other(
                "the client sent no SNI and require_sni is set",
            ));
        }
        let alpn = &self.spec.common.alpn;
        let shared = hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| alpn.iter().any(|ours| ours == p)));
        let config = if shared {
            built.with_alpn.clone()
        } else {
            built.without_alpn.clone()
        };
        Ok((start.into_stream(config).await?, built.local.clone()))
    }
}

struct BuiltClient {
    inputs: Inputs,
    config: Arc<ClientConfig>,
    /// The URI SAN of the certificate this client presents, if any.
    local_uri: Option<Arc<str>>,
    /// The same configuration with another ALPN list, per offer asked for so far (a few:
    /// one per upstream protocol of Istio's `istio.alpn`). Rebuilt with `config`.
    offers: std::sync::Mutex<Vec<(AlpnOffer, Arc<ClientConfig>)>>,
}

/// Offers are made at config time, so a handful exist at once; a bound keeps a stream of
/// config updates (each making new offers) from growing the list without end.
const MAX_OFFERS: usize = 8;

impl BuiltClient {
    fn config_for(&self, alpn: Option<&AlpnOffer>) -> Arc<ClientConfig> {
        let Some(alpn) = alpn else {
            return self.config.clone();
        };
        let mut offers = self.offers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, config)) = offers.iter().find(|(a, _)| a == alpn) {
            return config.clone();
        }
        // A clone shares the verifier, certificate resolver and session cache.
        let mut config = (*self.config).clone();
        config.alpn_protocols = alpn.protocols().to_vec();
        let config = Arc::new(config);
        if offers.len() >= MAX_OFFERS {
            offers.clear();
        }
        offers.push((alpn.clone(), config.clone()));
        config
    }
}

/// A cluster's TLS transport socket.
pub struct ClientTls {
    spec: Arc<UpstreamTls>,
    stats: Arc<TlsStats>,
    built: ArcSwapOption<BuiltClient>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").finish_non_exhaustive()
    }
}

impl ClientTls {
    /// A cluster's context, registered with `contexts` for its certificates' stats and
    /// `/certs`.
    pub fn new(
        spec: Arc<UpstreamTls>,
        stats: Arc<TlsStats>,
        contexts: &ContextManager,
    ) -> Arc<Self> {
        let tls = Arc::new(Self {
            spec,
            stats,
            built: ArcSwapOption::empty(),
        });
        contexts.add_client(&tls);
        tls
    }

    fn current(&self) -> Result<Arc<BuiltClient>, TlsError> {
        let common = &self.spec.common;
        let (certificate, cert_id) = current_certificate(common.certificate.as_ref())?;
        let (validation, validation_id) = current_validation(common.validation.as_ref())?;
        let inputs = (cert_id, validation_id);
        if let Some(built) = self.built.load_full() {
            if built.inputs == inputs {
                return Ok(built);
            }
        }
        let provider = Arc::new(provider_for(&common.params));
        let roots = validation.as_deref().map(roots).transpose()?.flatten();
        let verifier = verify::UpstreamVerifier {
            roots,
            matchers: validation
                .map(|v| v.san_matchers.clone())
                .unwrap_or_default(),
            provider: provider.clone(),
            stats: self.stats.clone(),
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&versions(&common.params))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        let local_uri = certificate
            .as_ref()
            .and_then(|key| key.cert.first())
            .map(|leaf| info::CertNames::of(leaf.as_ref()).uri)
            .filter(|uri| !uri.is_empty());
        let mut config = match certificate {
            Some(key) => builder.with_client_cert_resolver(Arc::new(FixedCertificate(key))),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = common.alpn.clone();
        let built = Arc::new(BuiltClient {
            inputs,
            config: Arc::new(config),
            local_uri,
            offers: Default::default(),
        });
        self.built.store(Some(built.clone()));
        Ok(built)
    }

    /// The context has an ALPN list of its own (`common_tls_context.alpn_protocols`).
    pub fn offers_alpn(&self) -> bool {
        !self.spec.common.alpn.is_empty()
    }

    /// Starts TLS on `io`, a connection to `peer` (None for a Unix socket), offering `alpn`
    /// instead of the context's own ALPN list when given.
    pub async fn connect<IO>(
        &self,
        io: IO,
        peer: Option<IpAddr>,
        alpn: Option<&AlpnOffer>,
    ) -> io::Result<tokio_rustls::client::TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        self.connect_with_identities(io, peer, alpn)
            .await
            .map(|(stream, _)| stream)
    }

    /// [`Self::connect`], also saying which identities the connection joins.
    pub async fn connect_with_identities<IO>(
        &self,
        io: IO,
        peer: Option<IpAddr>,
        alpn: Option<&AlpnOffer>,
    ) -> io::Result<(
        tokio_rustls::client::TlsStream<IO>,
        info::UpstreamIdentities,
    )>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let result = self.handshake(io, peer, alpn).await;
        match &result {
            Ok((stream, _)) => {
                self.stats.handshake.inc();
                self.stats.negotiated.count(stream.get_ref().1);
            }
            Err(_) => self.stats.connection_error.inc(),
        }
        result
    }

    async fn handshake<IO>(
        &self,
        io: IO,
        peer: Option<IpAddr>,
        alpn: Option<&AlpnOffer>,
    ) -> io::Result<(
        tokio_rustls::client::TlsStream<IO>,
        info::UpstreamIdentities,
    )>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let built = self.current().map_err(io::Error::other)?;
        let config = built.config_for(alpn);
        // Without `sni` Envoy sends none; rustls never sends an IP address as SNI.
        let name = match &self.spec.sni {
            Some(sni) => ServerName::try_from(sni.clone())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
            None => ServerName::IpAddress(peer.unwrap_or(IpAddr::from([127, 0, 0, 1])).into()),
        };
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, io)
            .await?;
        let identities = info::UpstreamIdentities {
            peer: stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|leaf| info::CertNames::of(leaf.as_ref()).uri)
                .filter(|uri| !uri.is_empty()),
            local: built.local_uri.clone(),
        };
        Ok((stream, identities))
    }
}

#[cfg(test)]
mod tests;
