//! The subject alternative names of an X.509 certificate, read straight from its DER: just
//! enough of the structure to reach the SAN extension (RFC 5280 §4.1 and §4.2.1.6). The input
//! is a peer's certificate that rustls has already parsed and verified, but this reader still
//! treats it as hostile: every length is checked and nothing here can panic.

use std::net::IpAddr;

/// The SANs of one certificate, by type.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SubjectAltNames {
    pub dns: Vec<String>,
    pub uri: Vec<String>,
    pub email: Vec<String>,
    pub ip: Vec<IpAddr>,
}

const SEQUENCE: u8 = 0x30;
const OID: u8 = 0x06;
const OCTET_STRING: u8 = 0x04;
/// `[3] EXPLICIT Extensions` in TBSCertificate.
const EXTENSIONS: u8 = 0xa3;
/// id-ce-subjectAltName, 2.5.29.17.
const SAN_OID: &[u8] = &[0x55, 0x1d, 0x11];

/// The SANs of `cert` (DER); a certificate without the extension, or one this reader cannot
/// follow, has none.
pub fn subject_alt_names(cert: &[u8]) -> SubjectAltNames {
    san_extension(cert)
        .map(parse_general_names)
        .unwrap_or_default()
}

fn san_extension(cert: &[u8]) -> Option<&[u8]> {
    let (tag, certificate, _) = tlv(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = tlv(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut rest = tbs;
    while !rest.is_empty() {
        let (tag, content, next) = tlv(rest)?;
        rest = next;
        if tag != EXTENSIONS {
            continue;
        }
        let (tag, mut extensions, _) = tlv(content)?;
        if tag != SEQUENCE {
            return None;
        }
        while !extensions.is_empty() {
            let (tag, extension, next) = tlv(extensions)?;
            extensions = next;
            if tag != SEQUENCE {
                return None;
            }
            let (tag, oid, mut fields) = tlv(extension)?;
            if tag != OID || oid != SAN_OID {
                continue;
            }
            // `critical BOOLEAN DEFAULT FALSE` may come before the value.
            while !fields.is_empty() {
                let (tag, value, next) = tlv(fields)?;
                fields = next;
                if tag == OCTET_STRING {
                    return Some(value);
                }
            }
            return None;
        }
    }
    None
}

fn parse_general_names(value: &[u8]) -> SubjectAltNames {
    let mut out = SubjectAltNames::default();
    let Some((SEQUENCE, mut names, _)) = tlv(value) else {
        return out;
    };
    while let Some((tag, content, next)) = tlv(names) {
        names = next;
        let text = || String::from_utf8_lossy(content).into_owned();
        match tag {
            0x81 => out.email.push(text()),
            0x82 => out.dns.push(text()),
            0x86 => out.uri.push(text()),
            0x87 => match content.len() {
                4 => {
                    let mut b = [0u8; 4];
                    b.copy_from_slice(content);
                    out.ip.push(IpAddr::from(b));
                }
                16 => {
                    let mut b = [0u8; 16];
                    b.copy_from_slice(content);
                    out.ip.push(IpAddr::from(b));
                }
                _ => {}
            },
            _ => {}
        }
    }
    out
}

/// The fields of a certificate's TBSCertificate that follow the serial number (signature
/// algorithm, issuer, validity, subject, ...), past the optional `[0]` version.
pub(crate) fn tbs_after_serial(cert: &[u8]) -> Option<&[u8]> {
    tbs_serial(cert).map(|(_, after_serial)| after_serial)
}

/// The serial number's INTEGER contents (big-endian, maybe with a leading zero byte) and
/// the TBSCertificate fields after it.
pub(crate) fn tbs_serial(cert: &[u8]) -> Option<(&[u8], &[u8])> {
    const VERSION: u8 = 0xa0;
    const INTEGER: u8 = 0x02;
    let (SEQUENCE, certificate, _) = tlv(cert)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = tlv(certificate)? else {
        return None;
    };
    let (tag, content, rest) = tlv(tbs)?;
    let (INTEGER, serial, rest) = (if tag == VERSION {
        tlv(rest)?
    } else {
        (tag, content, rest)
    }) else {
        return None;
    };
    Some((serial, rest))
}

/// One DER element: (tag, contents, what follows). Multi-byte tags and indefinite lengths
/// (not DER) are refused.
pub(crate) fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, rest) = rest.split_at(count);
        let len = bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, rest)
    };
    if rest.len() < len {
        return None;
    }
    let (content, rest) = rest.split_at(len);
    Some((tag, content, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_san_type_from_a_generated_certificate() {
        let mut params =
            rcgen::CertificateParams::new(vec!["a.example.com".into()]).expect("params");
        params.subject_alt_names.push(rcgen::SanType::URI(
            rcgen::Ia5String::try_from("spiffe://cluster.local/ns/default/sa/web").expect("uri"),
        ));
        params.subject_alt_names.push(rcgen::SanType::Rfc822Name(
            rcgen::Ia5String::try_from("ops@example.com").expect("email"),
        ));
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("10.1.2.3".parse().expect("ip")));
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("::1".parse().expect("ip")));
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        let sans = subject_alt_names(cert.der());
        assert_eq!(sans.dns, ["a.example.com"]);
        assert_eq!(sans.uri, ["spiffe://cluster.local/ns/default/sa/web"]);
        assert_eq!(sans.email, ["ops@example.com"]);
        assert_eq!(
            sans.ip,
            [
                "10.1.2.3".parse::<IpAddr>().expect("ip"),
                "::1".parse().expect("ip")
            ]
        );
    }

    #[test]
    fn malformed_input_yields_nothing_and_never_panics() {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["x".into()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let der = cert.der().to_vec();
        // Every truncation and a sweep of single-byte corruptions.
        for len in 0..der.len() {
            let _ = subject_alt_names(&der[..len]);
        }
        for i in 0..der.len() {
            let mut bad = der.clone();
            bad[i] ^= 0xff;
            let _ = subject_alt_names(&bad);
        }
        assert_eq!(subject_alt_names(&[]), SubjectAltNames::default());
        assert_eq!(
            subject_alt_names(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
            SubjectAltNames::default()
        );
    }
}
