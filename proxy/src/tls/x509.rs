//! The facts read from a certificate's DER besides its names: validity, serial number and the
//! subject public key — what the agent's identity checks of an issued certificate and what
//! `/certs` and the expiry stats show. The input comes from a CA, a file or the control plane,
//! so every length is checked (`tls::der::tlv`) and malformed input yields `None`, never a
//! panic.

use super::der::{subject_alt_names, SubjectAltNames};
use crate::tls::der::tlv;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One certificate as Envoy's `/certs` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Lowercase hex without leading zero bytes, as BoringSSL's `BN_bn2hex` prints it.
    pub serial: String,
    pub sans: SubjectAltNames,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl CertInfo {
    pub fn of(cert: &[u8]) -> Option<CertInfo> {
        let facts = leaf_facts(cert)?;
        let (serial, _) = super::der::tbs_serial(cert)?;
        Some(CertInfo {
            serial: serial_hex(serial),
            sans: subject_alt_names(cert),
            not_before: facts.not_before,
            not_after: facts.not_after,
        })
    }

    /// Seconds since the epoch the certificate expires at (Envoy's
    /// `expiration_unix_time_seconds`).
    pub fn expiry_unix(&self) -> u64 {
        self.not_after
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    /// Whole days left before it expires, 0 once it has (Envoy's `days_until_expiration`:
    /// `ASN1_TIME_diff` days, nothing for a past date, printed as 0).
    pub fn days_left(&self, now: SystemTime) -> u64 {
        // In whole seconds on both sides, as BoringSSL compares an `ASN1_TIME` made from
        // `time_t`: a certificate issued for exactly 40 days has 40 left in its first second.
        let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.expiry_unix().saturating_sub(now) / 86_400
    }
}

fn serial_hex(integer: &[u8]) -> String {
    let first = integer
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(integer.len());
    let digits: String = integer[first..]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if digits.is_empty() {
        "0".to_string()
    } else {
        digits
    }
}

const SEQUENCE: u8 = 0x30;
const BIT_STRING: u8 = 0x03;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// What a certificate says about its validity and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafFacts {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The `subjectPublicKey` bits (for EC keys, the uncompressed point).
    pub public_key: Vec<u8>,
}

/// Reads `cert` (DER).
pub fn leaf_facts(cert: &[u8]) -> Option<LeafFacts> {
    let rest = crate::tls::der::tbs_after_serial(cert)?;
    // signature, issuer
    let (_, _, rest) = tlv(rest)?;
    let (_, _, rest) = tlv(rest)?;
    let (SEQUENCE, validity, rest) = tlv(rest)? else {
        return None;
    };
    let (tag, not_before, validity) = tlv(validity)?;
    let not_before = time(tag, not_before)?;
    let (tag, not_after, _) = tlv(validity)?;
    let not_after = time(tag, not_after)?;
    // subject
    let (_, _, rest) = tlv(rest)?;
    let (SEQUENCE, spki, _) = tlv(rest)? else {
        return None;
    };
    let (SEQUENCE, _, spki) = tlv(spki)? else {
        return None;
    };
    let (BIT_STRING, bits, _) = tlv(spki)? else {
        return None;
    };
    // The first byte counts the unused bits of the last byte; keys use whole bytes.
    let (&0, key) = bits.split_first()? else {
        return None;
    };
    Some(LeafFacts {
        not_before,
        not_after,
        public_key: key.to_vec(),
    })
}

/// UTCTime (`YYMMDDHHMMSSZ`, years 1950–2049 per RFC 5280) or GeneralizedTime
/// (`YYYYMMDDHHMMSSZ`).
fn time(tag: u8, text: &[u8]) -> Option<SystemTime> {
    let text = std::str::from_utf8(text).ok()?;
    let digits = text.strip_suffix('Z')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (year, rest) = match (tag, digits.len()) {
        (UTC_TIME, 12) => {
            let yy: i64 = digits[..2].parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &digits[2..])
        }
        (GENERALIZED_TIME, 14) => (digits[..4].parse().ok()?, &digits[4..]),
        _ => return None,
    };
    let field = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (month, day) = (field(0)?, field(2)?);
    let (hour, minute, second) = (field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second;
    let seconds = u64::try_from(seconds).ok()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(seconds))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> (rcgen::KeyPair, Vec<u8>) {
        let mut params = rcgen::CertificateParams::new(vec!["x".into()]).expect("params");
        params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        (key, cert.der().to_vec())
    }

    fn unix(t: SystemTime) -> u64 {
        t.duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    #[test]
    fn reads_validity_in_both_time_forms_and_the_key() {
        // rcgen writes UTCTime before 2050 and GeneralizedTime from 2050 on.
        let (key, der) = cert((2024, 2, 29), (2051, 1, 1));
        let facts = leaf_facts(&der).expect("facts");
        assert_eq!(unix(facts.not_before), 1_709_164_800);
        assert_eq!(unix(facts.not_after), 2_556_144_000);
        assert_eq!(facts.public_key, key.public_key_raw());
    }

    #[test]
    fn serial_is_printed_as_boringssl_does() {
        assert_eq!(serial_hex(&[0x00, 0xff, 0x01]), "ff01");
        assert_eq!(serial_hex(&[0x0a, 0xbc]), "0abc");
        assert_eq!(serial_hex(&[0x00]), "0");
        let (_, der) = cert((2024, 1, 1), (2025, 1, 1));
        let info = CertInfo::of(&der).expect("info");
        assert_eq!(info.expiry_unix(), 1_735_689_600);
        assert_eq!(info.sans.dns, ["x"]);
        assert_eq!(
            info.days_left(UNIX_EPOCH + Duration::from_secs(1_735_689_600 - 86_401)),
            1
        );
        assert_eq!(
            info.days_left(UNIX_EPOCH + Duration::from_secs(1_735_689_601)),
            0
        );
        // A fraction of a second into the last full day still counts it.
        let just_after = Duration::from_millis(1_735_689_600_000 - 86_400_000 + 500);
        assert_eq!(info.days_left(UNIX_EPOCH + just_after), 1);
    }

    #[test]
    fn malformed_input_yields_nothing_and_never_panics() {
        let (_, der) = cert((2024, 1, 1), (2025, 1, 1));
        for len in 0..der.len() {
            assert!(leaf_facts(&der[..len]).is_none());
        }
        for i in 0..der.len() {
            let mut bad = der.clone();
            bad[i] ^= 0xff;
            let _ = leaf_facts(&bad);
        }
        assert!(time(UTC_TIME, b"991301000000Z").is_none());
        assert!(time(GENERALIZED_TIME, b"20240101000000").is_none());
    }
}
