//! A throwaway PKI for TLS tests: a root CA and workload certificates with SPIFFE URI SANs,
//! generated per test (rcgen) and written as PEM files into a temporary directory, so both
//! proxies can load them by `filename`.

use std::path::PathBuf;
use tempfile::TempDir;

/// `spiffe://cluster.local/ns/default/sa/<sa>`, Istio's identity form.
pub fn spiffe(sa: &str) -> String {
    format!("spiffe://cluster.local/ns/default/sa/{sa}")
}

/// A root CA whose certificates live in `dir`.
pub struct Pki {
    dir: TempDir,
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

/// A workload's files.
#[derive(Debug, Clone)]
pub struct Identity {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub uri: String,
}

impl Pki {
    pub fn new() -> Pki {
        Pki::with_root_validity(rcgen::CertificateParams::default().not_after)
    }

    /// A root that expires at `not_after` (rcgen's default is the year 4096).
    pub fn with_root_validity(not_after: time::OffsetDateTime) -> Pki {
        let mut params = rcgen::CertificateParams::default();
        params.not_after = not_after;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "cluster.local");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::write(dir.path().join("root-cert.pem"), cert.pem()).expect("write the root");
        Pki { dir, cert, key }
    }

    /// The root certificate (PEM file).
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root-cert.pem")
    }

    /// A workload certificate for service account `sa`, signed by the root, usable as client
    /// and server (as Istio's are).
    pub fn identity(&self, sa: &str) -> Identity {
        self.identity_with_dns(sa, &[])
    }

    /// [`Self::identity`] with DNS SANs besides the SPIFFE URI.
    pub fn identity_with_dns(&self, sa: &str, dns: &[&str]) -> Identity {
        self.identity_until(sa, dns, rcgen::CertificateParams::default().not_after)
    }

    /// [`Self::identity_with_dns`] valid until `not_after` (and from a day before now on, so
    /// a date in the past makes an expired certificate).
    pub fn identity_until(
        &self,
        sa: &str,
        dns: &[&str],
        not_after: time::OffsetDateTime,
    ) -> Identity {
        let mut params = rcgen::CertificateParams::default();
        params.not_after = not_after;
        params.not_before =
            not_after.min(time::OffsetDateTime::now_utc()) - time::Duration::days(1);
        let uri = spiffe(sa);
        params.subject_alt_names = vec![rcgen::SanType::URI(
            rcgen::Ia5String::try_from(uri.as_str()).expect("a URI SAN"),
        )];
        params.subject_alt_names.extend(
            dns.iter().map(|d| {
                rcgen::SanType::DnsName(rcgen::Ia5String::try_from(*d).expect("a DNS SAN"))
            }),
        );
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
        ];
        let key = rcgen::KeyPair::generate().expect("workload key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("workload certificate");
        let cert_path = self.dir.path().join(format!("{sa}-cert.pem"));
        let key_path = self.dir.path().join(format!("{sa}-key.pem"));
        std::fs::write(&cert_path, cert.pem()).expect("write the certificate");
        std::fs::write(&key_path, key.serialize_pem()).expect("write the key");
        Identity {
            cert: cert_path,
            key: key_path,
            uri,
        }
    }
}

impl Pki {
    /// A server certificate for DNS name `dns` (istiod's `istiod.istio-system.svc`).
    pub fn server(&self, dns: &str) -> Identity {
        let mut params = rcgen::CertificateParams::new(vec![dns.to_string()]).expect("a DNS name");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().expect("server key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("server certificate");
        let cert_path = self.dir.path().join(format!("{dns}-cert.pem"));
        let key_path = self.dir.path().join(format!("{dns}-key.pem"));
        std::fs::write(&cert_path, cert.pem()).expect("write the certificate");
        std::fs::write(&key_path, key.serialize_pem()).expect("write the key");
        Identity {
            cert: cert_path,
            key: key_path,
            uri: format!("dns:{dns}"),
        }
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}
