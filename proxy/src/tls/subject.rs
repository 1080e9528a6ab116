//! A certificate's subject as OpenSSL prints it in RFC 2253 form (`X509_NAME_print_ex` with
//! `XN_FLAG_RFC2253`), which Envoy puts in `x-forwarded-client-cert`'s `Subject`: the RDNs last
//! first, joined by `,` (`+` inside one), short attribute names where OpenSSL has them, values
//! escaped. Read from the DER like the SANs (`der.rs`): hostile input gives an empty subject,
//! never a panic.

use super::der::tlv;
use std::fmt::Write;

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;

/// The subject of `cert` (DER), or empty when it cannot be read.
pub fn subject_rfc2253(cert: &[u8]) -> String {
    subject_name(cert).map(print_name).unwrap_or_default()
}

/// The subject `Name` inside TBSCertificate: after the optional version, the serial number,
/// the signature algorithm, the issuer and the validity.
fn subject_name(cert: &[u8]) -> Option<&[u8]> {
    let mut rest = super::der::tbs_after_serial(cert)?;
    for _ in 0..3 {
        rest = tlv(rest)?.2; // signature, issuer, validity
    }
    match tlv(rest)? {
        (SEQUENCE, name, _) => Some(name),
        _ => None,
    }
}

fn print_name(name: &[u8]) -> String {
    let mut rdns = Vec::new();
    let mut rest = name;
    while !rest.is_empty() {
        let Some((SET, rdn, next)) = tlv(rest) else {
            return String::new();
        };
        rest = next;
        let mut avas = Vec::new();
        let mut values = rdn;
        while !values.is_empty() {
            let Some((SEQUENCE, ava, next)) = tlv(values) else {
                return String::new();
            };
            values = next;
            let Some((OID, oid, value)) = tlv(ava) else {
                return String::new();
            };
            avas.push(format!(
                "{}={}",
                attribute_name(oid),
                attribute_value(value)
            ));
        }
        rdns.push(avas.join("+"));
    }
    rdns.reverse();
    rdns.join(",")
}

/// OpenSSL's short name of an attribute type, else its dotted OID.
fn attribute_name(oid: &[u8]) -> String {
    let known: &[(&[u8], &str)] = &[
        (&[0x55, 0x04, 0x03], "CN"),
        (&[0x55, 0x04, 0x04], "SN"),
        (&[0x55, 0x04, 0x05], "serialNumber"),
        (&[0x55, 0x04, 0x06], "C"),
        (&[0x55, 0x04, 0x07], "L"),
        (&[0x55, 0x04, 0x08], "ST"),
        (&[0x55, 0x04, 0x09], "street"),
        (&[0x55, 0x04, 0x0a], "O"),
        (&[0x55, 0x04, 0x0b], "OU"),
        (&[0x55, 0x04, 0x0c], "title"),
        (&[0x55, 0x04, 0x2a], "GN"),
        (
            &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01],
            "emailAddress",
        ),
        (
            &[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19],
            "DC",
        ),
        (
            &[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01],
            "UID",
        ),
    ];
    if let Some((_, name)) = known.iter().find(|(k, _)| *k == oid) {
        return name.to_string();
    }
    dotted(oid)
}

fn dotted(oid: &[u8]) -> String {
    let mut arcs: Vec<u64> = Vec::new();
    let mut value: u64 = 0;
    for &b in oid {
        value = (value << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            arcs.push(value);
            value = 0;
        }
    }
    let Some(&first) = arcs.first() else {
        return String::new();
    };
    let (a, b) = match first {
        0..=39 => (0, first),
        40..=79 => (1, first - 40),
        _ => (2, first - 80),
    };
    let mut out = format!("{a}.{b}");
    for arc in &arcs[1..] {
        let _ = write!(out, ".{arc}");
    }
    out
}

/// A string value with RFC 2253's escapes (and OpenSSL's: control characters and bytes past
/// ASCII as `\XX`); a value of a type that is not a string is dumped as `#` and its DER in hex.
fn attribute_value(der: &[u8]) -> String {
    let Some((tag, content, _)) = tlv(der) else {
        return String::new();
    };
    // UTF8String, PrintableString, T61String, IA5String, VisibleString.
    if !matches!(tag, 0x0c | 0x13 | 0x14 | 0x16 | 0x1a) {
        let mut out = String::from("#");
        for b in der {
            let _ = write!(out, "{b:02X}");
        }
        return out;
    }
    let mut out = String::new();
    let last = content.len().saturating_sub(1);
    for (i, &b) in content.iter().enumerate() {
        let first_or_last_space = b == b' ' && (i == 0 || i == last);
        if matches!(b, b',' | b'+' | b'"' | b'\\' | b'<' | b'>' | b';')
            || (i == 0 && b == b'#')
            || first_or_last_space
        {
            out.push('\\');
            out.push(char::from(b));
        } else if !(0x20..0x7f).contains(&b) {
            let _ = write!(out, "\\{b:02X}");
        } else {
            out.push(char::from(b));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rdns_last_first_with_short_names_and_escapes() {
        let mut params =
            rcgen::CertificateParams::new(vec!["a.example".to_string()]).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Acme, Inc.");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "#web +1");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        assert_eq!(subject_rfc2253(cert.der()), "CN=\\#web \\+1,O=Acme\\, Inc.");
        assert_eq!(subject_rfc2253(b"\x30\x03\x02\x01\x01"), "");
        assert_eq!(
            dotted(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d]),
            "1.2.840.113549"
        );
    }
}
