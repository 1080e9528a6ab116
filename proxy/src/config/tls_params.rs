//! `tls_params` compiled: protocol versions, cipher suites and curves mapped to what rustls
//! (ring provider) offers, with BoringSSL's names; what rustls cannot offer is acknowledged
//! (never negotiated) or refused by path.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/transport_sockets/tls/v3/common.proto#extensions-transport-sockets-tls-v3-tlsparameters

use super::error::{FieldPath, Result};
use super::fields::Acknowledged;
use rustls::{CipherSuite, NamedGroup, ProtocolVersion};
use xds_proto::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use xds_proto::pb::envoy::extensions::transport_sockets::tls::v3::tls_parameters::TlsProtocol;

/// `tls_params`, mapped to what rustls offers. Empty lists mean rustls' defaults.
#[derive(Debug, Clone)]
pub struct TlsParams {
    pub min: ProtocolVersion,
    pub max: ProtocolVersion,
    /// TLS 1.2 suites, in preference order (TLS 1.3 suites are not configurable, as in Envoy).
    pub cipher_suites: Vec<CipherSuite>,
    pub curves: Vec<NamedGroup>,
}

impl Default for TlsParams {
    fn default() -> Self {
        // Envoy's server defaults: TLS 1.2 to 1.3 (clients stop at TLS 1.2 unless told; see
        // `translate_upstream`).
        Self {
            min: ProtocolVersion::TLSv1_2,
            max: ProtocolVersion::TLSv1_3,
            cipher_suites: Vec::new(),
            curves: Vec::new(),
        }
    }
}

pub(super) fn tls_params(
    p: &tls::TlsParameters,
    path: &FieldPath,
    acks: &mut Vec<Acknowledged>,
) -> Result<TlsParams> {
    let version = |value: i32, field: &str, default: ProtocolVersion| {
        let fp = path.field(field);
        match TlsProtocol::try_from(value) {
            Ok(TlsProtocol::TlsAuto) => Ok(default),
            Ok(TlsProtocol::TlSv10) | Ok(TlsProtocol::TlSv11) => Ok(ProtocolVersion::TLSv1_0),
            Ok(TlsProtocol::TlSv12) => Ok(ProtocolVersion::TLSv1_2),
            Ok(TlsProtocol::TlSv13) => Ok(ProtocolVersion::TLSv1_3),
            Err(_) => Err(fp.error("unknown TLS version")),
        }
    };
    let mut min = version(
        p.tls_minimum_protocol_version,
        "tls_minimum_protocol_version",
        ProtocolVersion::TLSv1_2,
    )?;
    let max = version(
        p.tls_maximum_protocol_version,
        "tls_maximum_protocol_version",
        ProtocolVersion::TLSv1_3,
    )?;
    if max == ProtocolVersion::TLSv1_0 {
        return Err(path
            .field("tls_maximum_protocol_version")
            .error("TLS 1.0 and 1.1 are not supported (rustls speaks TLS 1.2 and 1.3)"));
    }
    if min == ProtocolVersion::TLSv1_0 {
        acks.push(Acknowledged {
            path: path.field("tls_minimum_protocol_version").to_string(),
            reason: "TLS 1.0 and 1.1 are not offered (rustls speaks TLS 1.2 and 1.3); the minimum is TLS 1.2",
        });
        min = ProtocolVersion::TLSv1_2;
    }
    if version_rank(min) > version_rank(max) {
        return Err(
            path.error("tls_minimum_protocol_version is above tls_maximum_protocol_version")
        );
    }
    let mut cipher_suites = Vec::new();
    for (i, entry) in p.cipher_suites.iter().enumerate() {
        let fp = path.field("cipher_suites").index(i);
        // BoringSSL's equal-preference groups, `[A|B]`, keep their order here.
        let names = entry.trim_start_matches('[').trim_end_matches(']');
        for name in names.split('|') {
            match cipher_suite(name) {
                Suite::Rustls(s) => cipher_suites.push(s),
                Suite::Known => acks.push(Acknowledged {
                    path: fp.to_string(),
                    reason: "a cipher suite rustls does not implement (RSA key exchange, CBC, 3DES or TLS 1.3 names); it is never negotiated",
                }),
                Suite::Unknown => {
                    return Err(fp.error(format!("Failed to initialize cipher suites {name}")))
                }
            }
        }
    }
    if !p.cipher_suites.is_empty() && cipher_suites.is_empty() {
        return Err(path
            .field("cipher_suites")
            .error("none of the cipher suites is implemented by rustls"));
    }
    let mut curves = Vec::new();
    for (i, name) in p.ecdh_curves.iter().enumerate() {
        let group = match name.as_str() {
            "X25519" => NamedGroup::X25519,
            "P-256" | "prime256v1" | "secp256r1" => NamedGroup::secp256r1,
            "P-384" | "secp384r1" => NamedGroup::secp384r1,
            _ => {
                return Err(path
                    .field("ecdh_curves")
                    .index(i)
                    .error(format!("Failed to initialize ECDH curves {name}: not supported by the ring provider (X25519, P-256, P-384)")))
            }
        };
        curves.push(group);
    }
    Ok(TlsParams {
        min,
        max,
        cipher_suites,
        curves,
    })
}

fn version_rank(v: ProtocolVersion) -> u8 {
    match v {
        ProtocolVersion::TLSv1_3 => 3,
        ProtocolVersion::TLSv1_2 => 2,
        _ => 1,
    }
}

enum Suite {
    Rustls(CipherSuite),
    /// A name BoringSSL accepts that rustls does not implement.
    Known,
    Unknown,
}

/// BoringSSL (OpenSSL-style) cipher names.
fn cipher_suite(name: &str) -> Suite {
    use CipherSuite::*;
    Suite::Rustls(match name {
        "ECDHE-ECDSA-AES128-GCM-SHA256" => TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-RSA-AES128-GCM-SHA256" => TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-ECDSA-AES256-GCM-SHA384" => TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-RSA-AES256-GCM-SHA384" => TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-ECDSA-CHACHA20-POLY1305" => TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        "ECDHE-RSA-CHACHA20-POLY1305" => TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        "AES128-GCM-SHA256"
        | "AES256-GCM-SHA384"
        | "AES128-SHA"
        | "AES256-SHA"
        | "ECDHE-ECDSA-AES128-SHA"
        | "ECDHE-RSA-AES128-SHA"
        | "ECDHE-ECDSA-AES256-SHA"
        | "ECDHE-RSA-AES256-SHA"
        | "ECDHE-PSK-AES128-CBC-SHA"
        | "ECDHE-PSK-AES256-CBC-SHA"
        | "ECDHE-PSK-CHACHA20-POLY1305"
        | "PSK-AES128-CBC-SHA"
        | "PSK-AES256-CBC-SHA"
        | "DES-CBC3-SHA"
        | "TLS_AES_128_GCM_SHA256"
        | "TLS_AES_256_GCM_SHA384"
        | "TLS_CHACHA20_POLY1305_SHA256" => return Suite::Known,
        _ => return Suite::Unknown,
    })
}
