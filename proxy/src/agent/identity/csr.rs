//! A fresh key and CSR for each issue, and the checks an issued chain must pass before it is
//! served: at least a leaf and a root, a leaf that parses, and a leaf for our key.
//! Istio's agent makes RSA 2048 keys by default; this one makes ECDSA P-256 (what
//! `ECC_SIGNATURE_ALGORITHM=ECDSA` selects there), cheaper to make and to handshake with.

use super::{IdentityError, WorkloadSecret};
use crate::tls::x509::leaf_facts;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::time::SystemTime;

/// A key waiting for its certificate.
pub struct PendingKey {
    key: rcgen::KeyPair,
    pub csr_pem: String,
}

/// A P-256 key and a CSR naming `spiffe_id` as its only SAN (URI). The CA decides the
/// identity; the SAN is what Istio's agent asks for.
pub fn new_request(spiffe_id: &str) -> Result<PendingKey, IdentityError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| IdentityError::Key(e.to_string()))?;
    let mut params = rcgen::CertificateParams::default();
    // rcgen's default subject is a placeholder common name; Istio's CSRs carry none.
    params.distinguished_name = rcgen::DistinguishedName::new();
    let uri = rcgen::Ia5String::try_from(spiffe_id)
        .map_err(|e| IdentityError::Key(format!("{spiffe_id}: {e}")))?;
    params.subject_alt_names = vec![rcgen::SanType::URI(uri)];
    let csr = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|e| IdentityError::Key(e.to_string()))?;
    Ok(PendingKey { key, csr_pem: csr })
}

/// Checks the CA's answer for `pending` and makes the secret to serve: the whole chain as
/// the certificate (Istio serves the root in it too), the last entry as the root bundle.
pub fn accept(chain: &[String], pending: &PendingKey) -> Result<WorkloadSecret, IdentityError> {
    let bad = |m: String| IdentityError::Response(m);
    let (Some(leaf), Some(root)) = (chain.first(), chain.last()) else {
        return Err(bad("empty certificate chain".into()));
    };
    if chain.len() < 2 {
        return Err(bad(format!(
            "the chain has {} certificate(s); a leaf and a root are needed",
            chain.len()
        )));
    }
    let der = CertificateDer::pem_slice_iter(leaf.as_bytes())
        .next()
        .ok_or_else(|| bad("the leaf is not a PEM certificate".into()))?
        .map_err(|e| bad(format!("the leaf is not a PEM certificate: {e:?}")))?;
    let facts = leaf_facts(&der).ok_or_else(|| bad("the leaf does not parse as X.509".into()))?;
    if facts.public_key != pending.key.public_key_raw() {
        return Err(bad("the leaf is not for the key of the request".into()));
    }
    for (i, pem) in chain.iter().enumerate().skip(1) {
        if CertificateDer::pem_slice_iter(pem.as_bytes())
            .next()
            .is_none_or(|c| c.is_err())
        {
            return Err(bad(format!("chain entry {i} is not a PEM certificate")));
        }
    }
    Ok(WorkloadSecret {
        cert_chain_pem: concat(chain),
        private_key_pem: pending.key.serialize_pem(),
        root_pem: root.clone(),
        not_before: facts.not_before,
        not_after: facts.not_after,
        received: SystemTime::now(),
    })
}

/// The PEMs one after another, each starting on a line of its own.
fn concat(pems: &[String]) -> String {
    let mut out = String::new();
    for (i, pem) in pems.iter().enumerate() {
        out.push_str(pem);
        if i + 1 < pems.len() && !pem.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> (rcgen::Certificate, rcgen::KeyPair) {
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().expect("key");
        (params.self_signed(&key).expect("ca"), key)
    }

    fn leaf_for(key: &rcgen::KeyPair, ca: &(rcgen::Certificate, rcgen::KeyPair)) -> String {
        rcgen::CertificateParams::new(Vec::<String>::new())
            .expect("params")
            .signed_by(key, &ca.0, &ca.1)
            .expect("leaf")
            .pem()
    }

    #[test]
    fn the_csr_names_the_spiffe_id() {
        let pending = new_request("spiffe://td/ns/a/sa/b").expect("csr");
        assert!(pending
            .csr_pem
            .starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        let der = rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(
            pending.csr_pem.as_bytes(),
        )
        .expect("PEM");
        let der: &[u8] = der.as_ref();
        assert!(der
            .windows(b"spiffe://td/ns/a/sa/b".len())
            .any(|w| w == b"spiffe://td/ns/a/sa/b"));
    }

    #[test]
    fn accepts_a_chain_for_our_key_and_refuses_others() {
        let ca = ca();
        let pending = new_request("spiffe://td/ns/a/sa/b").expect("csr");
        let leaf = leaf_for(&pending.key, &ca);
        let secret = accept(&[leaf.clone(), ca.0.pem()], &pending).expect("accepted");
        assert_eq!(secret.root_pem, ca.0.pem());
        assert!(secret.cert_chain_pem.starts_with(&leaf));
        assert!(secret.cert_chain_pem.ends_with(&ca.0.pem()));
        assert!(secret.private_key_pem.contains("PRIVATE KEY"));

        let err = |chain: &[String]| accept(chain, &pending).err().map(|e| e.to_string());
        assert!(err(&[]).is_some());
        assert!(err(std::slice::from_ref(&leaf)).is_some_and(|e| e.contains("a leaf and a root")));
        let other = rcgen::KeyPair::generate().expect("key");
        assert!(err(&[leaf_for(&other, &ca), ca.0.pem()])
            .is_some_and(|e| e.contains("not for the key")));
        assert!(err(&["junk".into(), ca.0.pem()]).is_some());
        assert!(err(&[leaf, "junk".into()]).is_some());
    }
}
