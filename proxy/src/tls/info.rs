//! What a downstream TLS handshake established, as access logs and Istio's metrics read it:
//! the protocol version and cipher in OpenSSL's names (Envoy's), and the SANs and fingerprint
//! of the peer's certificate and of our own. Computed once per connection (the peer's) or once
//! per certificate (ours), never per request.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/observability/access_log/usage#command-operators

use super::der::subject_alt_names;
use rustls::{CipherSuite, ProtocolVersion};
use std::sync::Arc;

/// The names of one certificate that logs and metrics show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertNames {
    /// URI SANs (SPIFFE identities), joined with `,` as Envoy prints several; shared, as
    /// Istio's metrics key series by it.
    pub uri: Arc<str>,
    pub dns: Arc<str>,
    /// SHA-256 of the DER, lowercase hex.
    pub sha256: String,
}

impl Default for CertNames {
    fn default() -> Self {
        Self {
            uri: Arc::from(""),
            dns: Arc::from(""),
            sha256: String::new(),
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
            sha256: digest.as_ref().iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
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
