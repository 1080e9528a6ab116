//! What a downstream TLS handshake established, as access logs and Istio's metrics read it:
//! the protocol version and cipher in OpenSSL's names (Envoy's), and the SANs and fingerprint
//! of the peer's certificate and of our own. Computed once per connection (the peer's) or once
//! per certificate (ours), never per request.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/observability/access_log/usage#command-operators

use super::der::subject_alt_names;
use crate::stats::{Counter, Store};
use rustls::{CipherSuite, NamedGroup, ProtocolVersion};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The names of one certificate that logs and metrics show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertNames {
    /// URI SANs (SPIFFE identities), joined with `,` as Envoy prints several; shared, as
    /// Istio's metrics key series by it.
    pub uri: Arc<str>,
    pub dns: Arc<str>,
    /// The same SANs one by one, as RBAC matches them.
    pub uri_sans: Vec<String>,
    pub dns_sans: Vec<String>,
    /// SHA-256 of the DER, lowercase hex.
    pub sha256: String,
    /// The subject in RFC 2253 form, as OpenSSL prints it.
    pub subject: Arc<str>,
}

impl Default for CertNames {
    fn default() -> Self {
        Self {
            uri: Arc::from(""),
            dns: Arc::from(""),
            uri_sans: Vec::new(),
            dns_sans: Vec::new(),
            sha256: String::new(),
            subject: Arc::from(""),
        }
    }
}

impl CertNames {
    pub fn of(der: &[u8]) -> Self {
        let sans = subject_alt_names(der);
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        Self {
            uri: sans.uri.join(",").into(),
            dns: sans.dns.join(",").into(),
            uri_sans: sans.uri,
            dns_sans: sans.dns,
            sha256: digest.as_ref().iter().map(|b| format!("{b:02x}")).collect(),
            subject: super::subject::subject_rfc2253(der).into(),
        }
    }
}

/// The identities of an upstream TLS connection (URI SANs): the server's certificate and the
/// one this side presented. Istio's client-side metrics take their principals from them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamIdentities {
    pub peer: Option<Arc<str>>,
    pub local: Option<Arc<str>>,
}

/// One downstream TLS connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    pub version: &'static str,
    pub cipher: &'static str,
    /// The client's certificate, when it sent one (mutual TLS).
    pub peer: Option<CertNames>,
    /// The certificate this side presented.
    pub local: Arc<CertNames>,
}

impl TlsInfo {
    pub fn new(conn: &rustls::ServerConnection, local: Arc<CertNames>) -> Self {
        Self {
            version: version_name(conn.protocol_version()),
            cipher: conn
                .negotiated_cipher_suite()
                .map_or("", |s| cipher_name(s.suite())),
            peer: conn
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|leaf| CertNames::of(leaf.as_ref())),
            local,
        }
    }
}

/// A scope's `ssl.versions.<v>`, `ssl.ciphers.<suite>` and `ssl.curves.<group>` counters,
/// counted once per handshake and created the first time a name is seen.
#[derive(Debug)]
pub struct Negotiated {
    store: Arc<Store>,
    /// `listener.<scope>.ssl.` or `cluster.<name>.ssl.`.
    prefix: String,
    made: Mutex<HashMap<(&'static str, &'static str), Arc<Counter>>>,
}

impl Negotiated {
    pub fn new(store: Arc<Store>, prefix: String) -> Self {
        Self {
            store,
            prefix,
            made: Mutex::new(HashMap::new()),
        }
    }

    /// Counts what a finished handshake negotiated (per connection, not per request).
    pub fn count(&self, conn: &rustls::CommonState) {
        let names = [
            ("versions", version_name(conn.protocol_version())),
            (
                "ciphers",
                conn.negotiated_cipher_suite()
                    .map_or("", |s| cipher_name(s.suite())),
            ),
            (
                "curves",
                conn.negotiated_key_exchange_group()
                    .map_or("", |g| curve_name(g.name())),
            ),
        ];
        let mut made = self.made.lock().unwrap_or_else(|e| e.into_inner());
        for (kind, name) in names {
            if name.is_empty() {
                continue;
            }
            made.entry((kind, name))
                .or_insert_with(|| self.store.counter(&format!("{}{kind}.{name}", self.prefix)))
                .inc();
        }
    }
}

impl Negotiated {
    /// Counts the signature algorithm the peer signed its handshake with (`ssl.sigalgs.*`),
    /// when it presented a certificate.
    pub fn count_sigalg(&self, scheme: rustls::SignatureScheme) {
        let name = sigalg_name(scheme);
        if name.is_empty() {
            return;
        }
        let mut made = self.made.lock().unwrap_or_else(|e| e.into_inner());
        made.entry(("sigalgs", name))
            .or_insert_with(|| {
                self.store
                    .counter(&format!("{}sigalgs.{name}", self.prefix))
            })
            .inc();
    }
}

/// BoringSSL's names of the signature schemes rustls verifies.
fn sigalg_name(scheme: rustls::SignatureScheme) -> &'static str {
    use rustls::SignatureScheme as S;
    match scheme {
        S::ECDSA_NISTP256_SHA256 => "ecdsa_secp256r1_sha256",
        S::ECDSA_NISTP384_SHA384 => "ecdsa_secp384r1_sha384",
        S::ECDSA_NISTP521_SHA512 => "ecdsa_secp521r1_sha512",
        S::ED25519 => "ed25519",
        S::RSA_PSS_SHA256 => "rsa_pss_rsae_sha256",
        S::RSA_PSS_SHA384 => "rsa_pss_rsae_sha384",
        S::RSA_PSS_SHA512 => "rsa_pss_rsae_sha512",
        S::RSA_PKCS1_SHA256 => "rsa_pkcs1_sha256",
        S::RSA_PKCS1_SHA384 => "rsa_pkcs1_sha384",
        S::RSA_PKCS1_SHA512 => "rsa_pkcs1_sha512",
        _ => "",
    }
}

/// BoringSSL's (and so Envoy's) names of the key exchange groups rustls offers.
fn curve_name(group: NamedGroup) -> &'static str {
    match group {
        NamedGroup::X25519 => "X25519",
        NamedGroup::secp256r1 => "P-256",
        NamedGroup::secp384r1 => "P-384",
        NamedGroup::secp521r1 => "P-521",
        _ => "",
    }
}

fn version_name(v: Option<ProtocolVersion>) -> &'static str {
    match v {
        Some(ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "",
    }
}

/// OpenSSL's (and so Envoy's) name of the suites rustls offers.
fn cipher_name(suite: CipherSuite) -> &'static str {
    match suite {
        CipherSuite::TLS13_AES_128_GCM_SHA256 => "TLS_AES_128_GCM_SHA256",
        CipherSuite::TLS13_AES_256_GCM_SHA384 => "TLS_AES_256_GCM_SHA384",
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => "TLS_CHACHA20_POLY1305_SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => "ECDHE-ECDSA-AES128-GCM-SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => "ECDHE-ECDSA-AES256-GCM-SHA384",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => {
            "ECDHE-ECDSA-CHACHA20-POLY1305"
        }
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => "ECDHE-RSA-AES128-GCM-SHA256",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => "ECDHE-RSA-AES256-GCM-SHA384",
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-RSA-CHACHA20-POLY1305",
        _ => "",
    }
}
