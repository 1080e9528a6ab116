//! Certificates as files: reading mounted ones (checked the way Go's `tls.LoadX509KeyPair` is:
//! the key must match the leaf), noticing when they change, and writing issued ones out for
//! `OUTPUT_CERTS` atomically, only when their content changed.

use super::config::CertFiles;
use super::{IdentityError, WorkloadSecret};
use crate::tls::x509::leaf_facts;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::SystemTime;

/// What identifies a version of a file without reading it: mtime, size, inode (Kubernetes
/// swaps a `..data` symlink, which changes the inode even when the mtime is equal).
pub type Stamp = Option<(SystemTime, u64, u64)>;

pub fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

/// The stamps of all three files, compared to notice any change.
pub fn stamps(files: &CertFiles) -> [Stamp; 3] {
    [
        stamp(&files.cert_chain),
        stamp(&files.key),
        stamp(&files.root),
    ]
}

fn read(path: &Path) -> Result<String, IdentityError> {
    std::fs::read_to_string(path).map_err(|e| IdentityError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Whether `path` holds something (pilot-agent's test for "the file is there").
pub fn present(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.len() > 0)
}

/// The root bundle in `path`, if it has at least one certificate.
pub fn read_root(path: &Path) -> Result<String, IdentityError> {
    let pem = read(path)?;
    if CertificateDer::pem_slice_iter(pem.as_bytes()).any(|c| c.is_ok()) {
        Ok(pem)
    } else {
        Err(IdentityError::File {
            path: path.display().to_string(),
            message: "no PEM certificate".into(),
        })
    }
}

/// The mounted chain and key with `root`, once the key matches the leaf (a half-written
/// rotation fails this and is retried on the next poll).
pub fn read_key_cert(files: &CertFiles, root: String) -> Result<WorkloadSecret, IdentityError> {
    let chain = read(&files.cert_chain)?;
    let key = read(&files.key)?;
    let bad = |m: &str| IdentityError::File {
        path: files.cert_chain.display().to_string(),
        message: m.to_string(),
    };
    let leaf = CertificateDer::pem_slice_iter(chain.as_bytes())
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| bad("no PEM certificate"))?;
    let facts = leaf_facts(&leaf).ok_or_else(|| bad("the certificate does not parse"))?;
    let key_der =
        PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|_| IdentityError::File {
            path: files.key.display().to_string(),
            message: "no PEM private key".into(),
        })?;
    let provider = crate::config::tls::provider();
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| bad(&format!("unusable key: {e}")))?;
    rustls::sign::CertifiedKey::new(vec![leaf], signing)
        .keys_match()
        .map_err(|e| bad(&format!("the key does not match the certificate: {e}")))?;
    Ok(WorkloadSecret {
        cert_chain_pem: chain,
        private_key_pem: key,
        root_pem: root,
        not_before: facts.not_before,
        not_after: facts.not_after,
        received: SystemTime::now(),
    })
}

/// Writes the secret as Istio's three files in `dir` with `mode`, each only if it differs
/// from what is there, each through a temporary file and a rename so readers never see half
/// a file. The key goes first: a reader seeing a new chain then finds its key.
pub fn write_out(dir: &Path, mode: u32, secret: &WorkloadSecret) -> Result<(), IdentityError> {
    std::fs::create_dir_all(dir).map_err(|e| IdentityError::File {
        path: dir.display().to_string(),
        message: e.to_string(),
    })?;
    for (name, content) in [
        ("key.pem", &secret.private_key_pem),
        ("cert-chain.pem", &secret.cert_chain_pem),
        ("root-cert.pem", &secret.root_pem),
    ] {
        let path = dir.join(name);
        if std::fs::read(&path).is_ok_and(|old| old == content.as_bytes()) {
            continue;
        }
        atomic_write(&path, content.as_bytes(), mode).map_err(|e| IdentityError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
    }
    Ok(())
}

fn atomic_write(path: &Path, content: &[u8], mode: u32) -> std::io::Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // `mode` at creation is filtered by the umask; set it exactly.
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        file.write_all(content)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn secret(tag: &str) -> WorkloadSecret {
        WorkloadSecret {
            cert_chain_pem: format!("chain {tag}"),
            private_key_pem: format!("key {tag}"),
            root_pem: "root".into(),
            not_before: SystemTime::UNIX_EPOCH,
            not_after: SystemTime::UNIX_EPOCH,
            received: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn writes_three_files_with_the_mode_and_rewrites_only_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        write_out(&out, 0o600, &secret("1")).expect("write");
        let read = |n: &str| std::fs::read_to_string(out.join(n)).expect("read");
        assert_eq!(read("cert-chain.pem"), "chain 1");
        assert_eq!(read("key.pem"), "key 1");
        assert_eq!(read("root-cert.pem"), "root");
        let mode = std::fs::metadata(out.join("key.pem"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let root_before = stamp(&out.join("root-cert.pem"));
        write_out(&out, 0o600, &secret("2")).expect("write");
        assert_eq!(read("key.pem"), "key 2");
        assert_eq!(stamp(&out.join("root-cert.pem")), root_before);
        assert_eq!(std::fs::read_dir(&out).expect("ls").count(), 3);
    }

    #[test]
    fn mounted_files_must_hold_a_matching_pair() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = CertFiles::in_dir(dir.path());
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["a".into()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        std::fs::write(&files.cert_chain, cert.pem()).expect("write");
        std::fs::write(&files.key, key.serialize_pem()).expect("write");
        let secret = read_key_cert(&files, "root".into()).expect("a pair");
        assert_eq!(secret.cert_chain_pem, cert.pem());
        let other = rcgen::KeyPair::generate().expect("key");
        std::fs::write(&files.key, other.serialize_pem()).expect("write");
        assert!(read_key_cert(&files, "root".into()).is_err());
        assert!(read_root(&files.root).is_err());
        std::fs::write(&files.root, cert.pem()).expect("write");
        assert_eq!(read_root(&files.root).expect("root"), cert.pem());
    }
}
