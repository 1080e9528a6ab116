//! Peer certificate verification as Envoy does it: the chain against `trusted_ca`, then the
//! leaf's subject alternative names against the SAN matchers (any one matching passes). Envoy
//! does not check an upstream's name against the SNI it sent; only the matchers decide, so the
//! server verifier here is not rustls' hostname-checking one.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/transport_sockets/tls/v3/common.proto#envoy-v3-api-field-extensions-transport-sockets-tls-v3-certificatevalidationcontext-match-typed-subject-alt-names

use super::der::{subject_alt_names, SubjectAltNames};
use crate::config::tls::{SanKind, SanMatcher};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, RootCertStore,
    SignatureScheme,
};
use std::sync::Arc;

/// Whether `cert` passes the matchers (no matchers: it does).
pub fn sans_match(matchers: &[SanMatcher], cert: &CertificateDer<'_>) -> bool {
    if matchers.is_empty() {
        return true;
    }
    let sans = subject_alt_names(cert);
    matchers.iter().any(|m| matcher_matches(m, &sans))
}

fn matcher_matches(m: &SanMatcher, sans: &SubjectAltNames) -> bool {
    let dns = || sans.dns.iter().any(|name| dns_matches(m, name));
    let uri = || sans.uri.iter().any(|u| m.matcher.matches(u));
    let email = || sans.email.iter().any(|e| m.matcher.matches(e));
    let ip = || sans.ip.iter().any(|ip| m.matcher.matches(&ip.to_string()));
    match m.kind {
        SanKind::Dns => dns(),
        SanKind::Uri => uri(),
        SanKind::Email => email(),
        SanKind::Ip => ip(),
        SanKind::Any => dns() || uri() || email() || ip(),
    }
}

/// A DNS SAN against a matcher; a wildcard SAN (`*.example.com`) also matches an exact
/// matcher for a name one label below it, as Envoy's DNS SAN matching does.
fn dns_matches(m: &SanMatcher, san: &str) -> bool {
    if m.matcher.matches(san) {
        return true;
    }
    let Some(suffix) = san.strip_prefix('*') else {
        return false;
    };
    match m.matcher.exact() {
        Some(name) => name.split_once('.').is_some_and(|(label, rest)| {
            !label.is_empty() && format!(".{rest}").eq_ignore_ascii_case(suffix)
        }),
        None => false,
    }
}

/// The upstream side: verifies the server's chain against the trust anchors (when any are
/// configured; without a validation context Envoy accepts any server certificate) and its
/// SANs against the matchers.
#[derive(Debug)]
pub struct UpstreamVerifier {
    pub roots: Option<Arc<RootCertStore>>,
    pub matchers: Vec<SanMatcher>,
    pub provider: Arc<CryptoProvider>,
    pub stats: Arc<super::TlsStats>,
}

impl ServerCertVerifier for UpstreamVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )
            .inspect_err(|_| self.stats.fail_verify_error.inc())?;
        }
        if !sans_match(&self.matchers, end_entity) {
            self.stats.fail_verify_san.inc();
            return Err(Error::InvalidCertificate(CertificateError::NotValidForName));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        let valid = verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )?;
        self.stats.negotiated.count_sigalg(dss.scheme);
        Ok(valid)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        let valid = verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )?;
        self.stats.negotiated.count_sigalg(dss.scheme);
        Ok(valid)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The downstream side: rustls' WebPKI client verifier for the chain, then the SAN matchers.
#[derive(Debug)]
pub struct DownstreamVerifier {
    pub inner: Arc<dyn ClientCertVerifier>,
    pub matchers: Vec<SanMatcher>,
    pub stats: Arc<super::TlsStats>,
}

impl ClientCertVerifier for DownstreamVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
            .inspect_err(|_| self.stats.fail_verify_error.inc())?;
        if !sans_match(&self.matchers, end_entity) {
            self.stats.fail_verify_san.inc();
            return Err(Error::InvalidCertificate(CertificateError::NotValidForName));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        let valid = self.inner.verify_tls12_signature(message, cert, dss)?;
        self.stats.negotiated.count_sigalg(dss.scheme);
        Ok(valid)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        let valid = self.inner.verify_tls13_signature(message, cert, dss)?;
        self.stats.negotiated.count_sigalg(dss.scheme);
        Ok(valid)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::matcher::string_matcher;
    use crate::config::FieldPath;
    use xds_proto::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};

    fn matcher(kind: SanKind, pattern: MatchPattern) -> SanMatcher {
        let proto = StringMatcher {
            match_pattern: Some(pattern),
            ..Default::default()
        };
        SanMatcher {
            kind,
            matcher: string_matcher(&proto, &FieldPath::root("m")).expect("matcher"),
        }
    }

    fn cert(sans: Vec<rcgen::SanType>) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = sans;
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().clone()
    }

    #[test]
    fn typed_matchers_look_only_at_their_san_type() {
        let spiffe = "spiffe://cluster.local/ns/default/sa/web";
        let c = cert(vec![
            rcgen::SanType::URI(rcgen::Ia5String::try_from(spiffe).expect("uri")),
            rcgen::SanType::DnsName(rcgen::Ia5String::try_from("*.example.com").expect("dns")),
            rcgen::SanType::IpAddress("10.0.0.7".parse().expect("ip")),
        ]);
        let yes = |m: SanMatcher| assert!(sans_match(&[m], &c));
        let no = |m: SanMatcher| assert!(!sans_match(&[m], &c));
        yes(matcher(SanKind::Uri, MatchPattern::Exact(spiffe.into())));
        no(matcher(SanKind::Dns, MatchPattern::Exact(spiffe.into())));
        yes(matcher(
            SanKind::Uri,
            MatchPattern::Prefix("spiffe://cluster.local/".into()),
        ));
        yes(matcher(
            SanKind::Uri,
            MatchPattern::Suffix("/sa/web".into()),
        ));
        yes(matcher(
            SanKind::Uri,
            MatchPattern::Contains("/ns/default/".into()),
        ));
        no(matcher(
            SanKind::Uri,
            MatchPattern::Exact("spiffe://cluster.local/ns/default/sa/db".into()),
        ));
        // A wildcard DNS SAN covers one label.
        yes(matcher(
            SanKind::Dns,
            MatchPattern::Exact("api.example.com".into()),
        ));
        no(matcher(
            SanKind::Dns,
            MatchPattern::Exact("a.b.example.com".into()),
        ));
        yes(matcher(SanKind::Ip, MatchPattern::Exact("10.0.0.7".into())));
        no(matcher(SanKind::Email, MatchPattern::Contains("@".into())));
        yes(matcher(
            SanKind::Any,
            MatchPattern::Exact("10.0.0.7".into()),
        ));
        assert!(sans_match(&[], &c));
        // Any one matcher passing is enough.
        assert!(sans_match(
            &[
                matcher(SanKind::Uri, MatchPattern::Exact("spiffe://other".into())),
                matcher(SanKind::Uri, MatchPattern::Exact(spiffe.into())),
            ],
            &c
        ));
    }
}

/// Accepts any server certificate (signatures are still checked, so the handshake itself is
/// sound): for HTTPS app probes, whose certificates kubelet does not verify either, and for
/// tests that check a served certificate by other means.
#[derive(Debug)]
pub struct AcceptAnyServer(pub std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
