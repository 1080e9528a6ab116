//! TLS transport sockets and secrets, compiled: certificates parsed and keys loaded at config
//! time (a bad key is a config error with a path, never a failed handshake), SAN matchers
//! compiled, and every SDS reference resolved to the secret slot it reads at handshake time.
//! Building the rustls configurations from these is `crate::tls`'s job.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/transport_sockets/tls/v3/tls.proto
//! https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/transport_sockets/tls/v3/common.proto
//! https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/transport_sockets/tls/v3/secret.proto

use super::error::{FieldPath, Result};
use super::fields::{check, Acknowledged};
use super::matcher::{string_matcher, StringMatcher};
use super::slots::Slot;
use super::values::data_source as data;
use crate::tls::x509::CertInfo;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::ProtocolVersion;
use std::sync::Arc;
use xds_proto::pb::envoy::config::core::v3::{data_source::Specifier, DataSource};
use xds_proto::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use xds_proto::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::ValidationContextType, secret, subject_alt_name_matcher::SanType,
    tls_parameters::TlsProtocol,
};

/// A secret as the proxy uses it; SDS and static `secrets` compile to this. Its `Debug`
/// never shows key material (see [`CertificateSource`]).
pub enum Secret {
    Certificate(Arc<LoadedCertificate>),
    Validation(Arc<Validation>),
    /// Session ticket keys and generic secrets: accepted, consumed by nothing yet.
    Unused,
}

/// The slots every secret name resolves to; static secrets fill them at bootstrap and the
/// xDS clients fill them as SDS delivers (see [`apply_secret`]).
pub use super::secret_slots::SecretSlots;

/// `DownstreamTlsContext`.
#[derive(Debug)]
pub struct DownstreamTls {
    pub common: CommonTls,
    pub require_client_certificate: bool,
    pub require_sni: bool,
    /// `disable_stateful_session_resumption`: no server-side session cache.
    pub session_cache: bool,
    /// `prefer_client_ciphers`: else the server's cipher order wins, Envoy's default.
    pub prefer_client_ciphers: bool,
}

/// `UpstreamTlsContext`.
#[derive(Debug)]
pub struct UpstreamTls {
    pub common: CommonTls,
    /// Sent as SNI; None sends none (Envoy sends no SNI unless `sni` is set).
    pub sni: Option<String>,
}

impl CommonTls {
    /// The SDS secrets the context reads (certificate, validation), added to `slots`.
    pub fn sds_secrets(&self, slots: &mut Vec<Arc<super::slots::Slot<Secret>>>) {
        if let Some(CertificateSource::Sds(slot)) = &self.certificate {
            slots.push(slot.clone());
        }
        match &self.validation {
            Some(ValidationSource::Sds(slot)) => slots.push(slot.clone()),
            Some(ValidationSource::Combined { sds, .. }) => slots.push(sds.clone()),
            _ => {}
        }
    }
}

/// `CommonTlsContext`.
#[derive(Debug)]
pub struct CommonTls {
    /// At most one (see [`certificates`]).
    pub certificate: Option<CertificateSource>,
    pub validation: Option<ValidationSource>,
    /// ALPN, in preference order.
    pub alpn: Vec<Vec<u8>>,
    pub params: TlsParams,
}

pub enum CertificateSource {
    Inline(Arc<LoadedCertificate>),
    Sds(Arc<Slot<Secret>>),
}

/// A `TlsCertificate`: the chain with its loaded key, and what `/certs` and the expiry stats
/// show of it (Envoy shows the leaf only).
pub struct LoadedCertificate {
    pub key: Arc<CertifiedKey>,
    pub origin: CertOrigin,
    /// The leaf's facts; None when its DER cannot be read (rustls accepted it all the same).
    pub leaf: Option<CertInfo>,
}

/// Where a certificate chain or CA bundle was read from, as `/certs` prints it, and the suffix
/// of the stat name Envoy gives a certificate that is not an SDS secret.
#[derive(Debug, Clone, Default)]
pub struct CertOrigin {
    /// The file, or `<inline>`.
    pub path: Arc<str>,
    /// The first 8 hex digits of the SHA-256 of `inline_bytes`. Envoy hashes that field
    /// only, so a file or an `inline_string` gets the hash of nothing (`e3b0c442`).
    pub hash: Arc<str>,
}

impl CertOrigin {
    fn of(source: Option<&DataSource>) -> CertOrigin {
        let (path, hashed): (&str, &[u8]) = match source.and_then(|s| s.specifier.as_ref()) {
            Some(Specifier::Filename(f)) => (f, b""),
            Some(Specifier::InlineBytes(b)) => ("<inline>", b),
            _ => ("<inline>", b""),
        };
        let digest = ring::digest::digest(&ring::digest::SHA256, hashed);
        let hash: String = digest.as_ref()[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        CertOrigin {
            path: path.into(),
            hash: hash.into(),
        }
    }
}

/// Configs are debug-printed in logs and errors; a certificate prints as its chain length
/// only, so no key (nor anything derived from one) can reach a log.
impl std::fmt::Debug for CertificateSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertificateSource::Inline(k) => {
                write!(f, "Inline(certificate chain of {})", k.key.cert.len())
            }
            CertificateSource::Sds(slot) => write!(f, "Sds({})", slot.name),
        }
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::Certificate(k) => write!(f, "Certificate(chain of {})", k.key.cert.len()),
            Secret::Validation(v) => f.debug_tuple("Validation").field(v).finish(),
            Secret::Unused => f.write_str("Unused"),
        }
    }
}

#[derive(Debug)]
pub enum ValidationSource {
    Inline(Arc<Validation>),
    Sds(Arc<Slot<Secret>>),
    /// `combined_validation_context`: the SDS secret's fields over the default's; SAN matchers
    /// of both apply (Envoy merges the messages, and repeated fields concatenate).
    Combined {
        default: Arc<Validation>,
        sds: Arc<Slot<Secret>>,
    },
}

/// `CertificateValidationContext`, compiled.
#[derive(Debug, Default)]
pub struct Validation {
    /// Trust anchors (`trusted_ca`), DER.
    pub trusted_ca: Vec<CertificateDer<'static>>,
    /// The peer passes when any matcher matches (or there are none).
    pub san_matchers: Vec<SanMatcher>,
    /// Where `trusted_ca` came from, and each of its certificates as `/certs` shows them.
    pub ca_origin: CertOrigin,
    pub ca_info: Vec<CertInfo>,
}

impl Validation {
    /// This validation with `over`'s fields laid on top (for `combined_validation_context`).
    pub fn merged(&self, over: &Validation) -> Validation {
        let ca = if over.trusted_ca.is_empty() {
            self
        } else {
            over
        };
        Validation {
            trusted_ca: ca.trusted_ca.clone(),
            ca_origin: ca.ca_origin.clone(),
            ca_info: ca.ca_info.clone(),
            san_matchers: self
                .san_matchers
                .iter()
                .chain(&over.san_matchers)
                .cloned()
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SanKind {
    /// The deprecated `match_subject_alt_names`: any DNS, URI, email or IP SAN.
    Any,
    Dns,
    Uri,
    Email,
    Ip,
}

#[derive(Debug, Clone)]
pub struct SanMatcher {
    pub kind: SanKind,
    pub matcher: StringMatcher,
}

pub use super::tls_params::TlsParams;

/// The provider every key is loaded with and every configuration is built from. Ring: see
/// DESIGN.md ("TLS provider") for the measurement behind the choice.
pub fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// What a TLS translator needs besides the proto.
pub struct TlsResolve<'a> {
    pub secrets: &'a SecretSlots,
}

pub fn translate_downstream(
    ctx: &tls::DownstreamTlsContext,
    path: &FieldPath,
    resolve: &TlsResolve<'_>,
    acks: &mut Vec<Acknowledged>,
) -> Result<DownstreamTls> {
    let common_path = path.field("common_tls_context");
    check(ctx, path, acks)?;
    let common = ctx.common_tls_context.clone().unwrap_or_default();
    let common = common_tls(&common, &common_path, resolve, acks)?;
    if common.certificate.is_none() {
        return Err(common_path
            .field("tls_certificates")
            .error("No TLS certificates found for server context"));
    }
    let require_client_certificate = ctx.require_client_certificate.is_some_and(|b| b.value);
    if require_client_certificate && common.validation.is_none() {
        return Err(path
            .field("require_client_certificate")
            .error("requires a validation context to verify client certificates against"));
    }
    let session_cache = !ctx.disable_stateful_session_resumption;
    Ok(DownstreamTls {
        common,
        require_client_certificate,
        require_sni: ctx.require_sni.is_some_and(|b| b.value),
        session_cache,
        prefer_client_ciphers: ctx.prefer_client_ciphers,
    })
}

pub fn translate_upstream(
    ctx: &tls::UpstreamTlsContext,
    path: &FieldPath,
    resolve: &TlsResolve<'_>,
    acks: &mut Vec<Acknowledged>,
) -> Result<UpstreamTls> {
    let common_path = path.field("common_tls_context");
    check(ctx, path, acks)?;
    let proto_common = ctx.common_tls_context.clone().unwrap_or_default();
    let mut common = common_tls(&proto_common, &common_path, resolve, acks)?;
    // Envoy's client side offers at most TLS 1.2 unless told otherwise (its servers go to
    // TLS 1.3): "By default, it's TLSv1_2 for clients and TLSv1_3 for servers", and an
    // Envoy client against an Envoy server negotiates TLS 1.2 (seen in
    // `traffic_transport_matches`). An explicit minimum of TLS 1.3 stands.
    let max_unset = proto_common
        .tls_params
        .as_ref()
        .is_none_or(|p| p.tls_maximum_protocol_version == TlsProtocol::TlsAuto as i32);
    if max_unset && common.params.min != ProtocolVersion::TLSv1_3 {
        common.params.max = ProtocolVersion::TLSv1_2;
    }
    let sni = if ctx.sni.is_empty() {
        None
    } else {
        rustls::pki_types::ServerName::try_from(ctx.sni.as_str()).map_err(|_| {
            path.field("sni")
                .error(format!("invalid SNI {:?}", ctx.sni))
        })?;
        Some(ctx.sni.clone())
    };
    Ok(UpstreamTls { common, sni })
}

fn common_tls(
    c: &tls::CommonTlsContext,
    path: &FieldPath,
    resolve: &TlsResolve<'_>,
    acks: &mut Vec<Acknowledged>,
) -> Result<CommonTls> {
    let mut certificates = Vec::new();
    for (i, cert) in c.tls_certificates.iter().enumerate() {
        let p = path.field("tls_certificates").index(i);
        certificates.push(CertificateSource::Inline(Arc::new(certified_key(
            cert, &p,
        )?)));
    }
    for (i, sds) in c.tls_certificate_sds_secret_configs.iter().enumerate() {
        let p = path.field("tls_certificate_sds_secret_configs").index(i);
        certificates.push(CertificateSource::Sds(sds_slot(sds, &p, resolve)?));
    }
    if certificates.len() > 1 {
        // Envoy picks among several by SNI and key type; one per context is what Istio sends.
        return Err(path
            .field("tls_certificates")
            .error("more than one certificate per TLS context is not supported"));
    }
    let validation = match &c.validation_context_type {
        None => None,
        Some(ValidationContextType::ValidationContext(v)) => {
            let p = path.field("validation_context");
            let v = validation(v, &p)?;
            require_trust_anchors(&v, &p)?;
            Some(ValidationSource::Inline(Arc::new(v)))
        }
        Some(ValidationContextType::ValidationContextSdsSecretConfig(sds)) => {
            Some(ValidationSource::Sds(sds_slot(
                sds,
                &path.field("validation_context_sds_secret_config"),
                resolve,
            )?))
        }
        Some(ValidationContextType::CombinedValidationContext(combined)) => {
            let p = path.field("combined_validation_context");
            let default = combined
                .default_validation_context
                .as_ref()
                .map(|v| validation(v, &p.field("default_validation_context")))
                .transpose()?
                .unwrap_or_default();
            let Some(sds) = &combined.validation_context_sds_secret_config else {
                return Err(p
                    .field("validation_context_sds_secret_config")
                    .error("is required"));
            };
            Some(ValidationSource::Combined {
                default: Arc::new(default),
                sds: sds_slot(
                    sds,
                    &p.field("validation_context_sds_secret_config"),
                    resolve,
                )?,
            })
        }
        Some(_) => {
            return Err(path.error("certificate providers are not supported"));
        }
    };
    let mut alpn = Vec::with_capacity(c.alpn_protocols.len());
    for (i, protocol) in c.alpn_protocols.iter().enumerate() {
        if protocol == ISTIO_PEER_EXCHANGE {
            acks.push(Acknowledged {
                path: path.field("alpn_protocols").index(i).to_string(),
                reason: "istio-peer-exchange is never negotiated: the TCP metadata exchange behind it is not implemented, and selecting it without speaking it would corrupt the stream",
            });
            continue;
        }
        if protocol.is_empty() || protocol.len() > 255 {
            return Err(path
                .field("alpn_protocols")
                .index(i)
                .error("an ALPN protocol is 1 to 255 bytes"));
        }
        alpn.push(protocol.as_bytes().to_vec());
    }
    let params = match &c.tls_params {
        Some(p) => super::tls_params::tls_params(p, &path.field("tls_params"), acks)?,
        None => TlsParams::default(),
    };
    Ok(CommonTls {
        certificate: certificates.into_iter().next(),
        validation,
        alpn,
        params,
    })
}

/// Istio's ALPN for its TCP metadata exchange.
pub const ISTIO_PEER_EXCHANGE: &str = "istio-peer-exchange";

fn sds_slot(
    sds: &tls::SdsSecretConfig,
    path: &FieldPath,
    resolve: &TlsResolve<'_>,
) -> Result<Arc<Slot<Secret>>> {
    if sds.name.is_empty() {
        return Err(path.field("name").error("must not be empty"));
    }
    let slot = resolve.secrets.slot(&sds.name);
    if let Some(source) = &sds.sds_config {
        // Where the xDS clients fetch it from: ADS, or its own stream (Istio's sds-grpc).
        let source = super::dynamic::sds_source(source, &path.field("sds_config"))?;
        resolve.secrets.subscribe(&sds.name, source);
    }
    if sds.sds_config.is_none() && slot.get().is_none() {
        // Without a config source the secret must be one of the bootstrap's static secrets.
        return Err(path
            .field("name")
            .error(format!("Unknown static secret: {}", sds.name)));
    }
    Ok(slot)
}

/// A `TlsCertificate` as a certificate chain with its loaded key. Errors never quote the key.
fn certified_key(cert: &tls::TlsCertificate, path: &FieldPath) -> Result<LoadedCertificate> {
    let chain_path = path.field("certificate_chain");
    let key_path = path.field("private_key");
    let chain_pem = data(cert.certificate_chain.as_ref(), &chain_path)?;
    let key_pem = data(cert.private_key.as_ref(), &key_path)?;
    if chain_pem.is_empty() {
        return Err(chain_path.error("is required"));
    }
    if key_pem.is_empty() {
        return Err(key_path.error("is required"));
    }
    let chain = certificates(&chain_pem, &chain_path)?;
    let leaf = chain.first().and_then(|c| CertInfo::of(c.as_ref()));
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|_| key_path.error("Failed to load private key: no PEM private key found"))?;
    let key = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
        // rustls' errors describe the failure, never the key material.
        path.error(format!(
            "Failed to load certificate chain and private key: {e}"
        ))
    })?;
    Ok(LoadedCertificate {
        key: Arc::new(key),
        origin: CertOrigin::of(cert.certificate_chain.as_ref()),
        leaf,
    })
}

/// PEM certificates; at least one.
fn certificates(pem: &[u8], path: &FieldPath) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| path.error(format!("Failed to load certificate: {e}")))?;
    if certs.is_empty() {
        return Err(path.error("Failed to load certificate: no PEM certificate found"));
    }
    Ok(certs)
}

fn validation(v: &tls::CertificateValidationContext, path: &FieldPath) -> Result<Validation> {
    let ca_path = path.field("trusted_ca");
    let ca = data(v.trusted_ca.as_ref(), &ca_path)?;
    let trusted_ca = if ca.is_empty() {
        Vec::new()
    } else {
        certificates(&ca, &ca_path)?
    };
    if v.trust_chain_verification
        != tls::certificate_validation_context::TrustChainVerification::VerifyTrustChain as i32
    {
        return Err(path
            .field("trust_chain_verification")
            .error("only VERIFY_TRUST_CHAIN is supported"));
    }
    let mut san_matchers = Vec::new();
    for (i, m) in v.match_typed_subject_alt_names.iter().enumerate() {
        let p = path.field("match_typed_subject_alt_names").index(i);
        let kind = match SanType::try_from(m.san_type) {
            Ok(SanType::Dns) => SanKind::Dns,
            Ok(SanType::Uri) => SanKind::Uri,
            Ok(SanType::Email) => SanKind::Email,
            Ok(SanType::IpAddress) => SanKind::Ip,
            Ok(SanType::OtherName) => {
                return Err(p.field("san_type").error("OTHER_NAME is not supported"))
            }
            _ => return Err(p.field("san_type").error("a SAN type is required")),
        };
        let Some(matcher) = &m.matcher else {
            return Err(p.field("matcher").error("is required"));
        };
        san_matchers.push(SanMatcher {
            kind,
            matcher: string_matcher(matcher, &p.field("matcher"))?,
        });
    }
    #[allow(deprecated)]
    for (i, m) in v.match_subject_alt_names.iter().enumerate() {
        let p = path.field("match_subject_alt_names").index(i);
        san_matchers.push(SanMatcher {
            kind: SanKind::Any,
            matcher: string_matcher(m, &p)?,
        });
    }
    Ok(Validation {
        ca_info: trusted_ca
            .iter()
            .filter_map(|c| CertInfo::of(c.as_ref()))
            .collect(),
        ca_origin: CertOrigin::of(v.trusted_ca.as_ref()),
        trusted_ca,
        san_matchers,
    })
}

/// Checks a validation context that must stand alone (not the default half of a combined
/// one): SAN matching without trust anchors would accept any self-signed certificate.
pub fn require_trust_anchors(v: &Validation, path: &FieldPath) -> Result<()> {
    if v.trusted_ca.is_empty() && !v.san_matchers.is_empty() {
        return Err(path.error(
            "SAN-based verification of peer certificates without trusted CA is insecure and not allowed",
        ));
    }
    Ok(())
}

/// A `Secret` resource compiled. `check` has accepted its fields.
pub fn translate_secret(
    s: &tls::Secret,
    path: &FieldPath,
    acks: &mut Vec<Acknowledged>,
) -> Result<Secret> {
    check(s, path, acks)?;
    if s.name.is_empty() {
        return Err(path.field("name").error("must not be empty"));
    }
    Ok(match &s.r#type {
        Some(secret::Type::TlsCertificate(c)) => {
            Secret::Certificate(Arc::new(certified_key(c, &path.field("tls_certificate"))?))
        }
        Some(secret::Type::ValidationContext(v)) => {
            Secret::Validation(Arc::new(validation(v, &path.field("validation_context"))?))
        }
        _ => Secret::Unused,
    })
}

/// The hook the xDS client calls when SDS delivers (or replaces) a secret: it is compiled and
/// published to its slot, so new handshakes use it and established connections keep theirs.
pub fn apply_secret(slots: &SecretSlots, s: &tls::Secret, path: &FieldPath) -> Result<()> {
    let secret = translate_secret(s, path, &mut Vec::new())?;
    slots.slot(&s.name).set(Some(Arc::new(secret)));
    Ok(())
}

/// The hook for an SDS removal: handshakes needing the secret fail until it returns.
pub fn remove_secret(slots: &SecretSlots, name: &str) {
    if let Some(slot) = slots.find(name) {
        slot.set(None);
    }
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
