//! `%START_TIME%`'s default rendering: ISO 8601 in UTC with milliseconds
//! (`2025-11-22T04:34:56.123Z`), computed without a date library.

use std::fmt::Write;
use std::time::SystemTime;

pub fn iso8601_millis(t: SystemTime, out: &mut String) {
    let since = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    if !(0..=9999).contains(&y) {
        let _ = write!(
            out,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60,
            since.subsec_millis()
        );
        return;
    }
    // Every access log line has one: digits are placed in a template rather than through
    // `fmt`, which cost ~2,000 instructions per line.
    let mut text = *b"0000-00-00T00:00:00.000Z";
    digits(&mut text[0..4], y as u64);
    digits(&mut text[5..7], u64::from(m));
    digits(&mut text[8..10], u64::from(d));
    digits(&mut text[11..13], rem / 3600);
    digits(&mut text[14..16], rem % 3600 / 60);
    digits(&mut text[17..19], rem % 60);
    digits(&mut text[20..23], u64::from(since.subsec_millis()));
    out.push_str(std::str::from_utf8(&text).unwrap_or_default());
}

/// Writes the last `slot.len()` decimal digits of `n` into `slot`, zero-padded.
fn digits(slot: &mut [u8], mut n: u64) {
    for place in slot.iter_mut().rev() {
        *place = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// Days since 1970-01-01 to (year, month, day): Howard Hinnant's civil_from_days.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `%START_TIME(format)%`: the strftime specifiers Envoy users write (`%Y %m %d %H %M %S %s`,
/// `%z` as `+0000`, `%%`) plus Envoy's `%Nf` fractional seconds; others are kept verbatim.
pub fn strftime(t: SystemTime, format: &str, out: &mut String) {
    let since = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let _ = match chars.next() {
            Some('Y') => write!(out, "{y:04}"),
            Some('m') => write!(out, "{m:02}"),
            Some('d') => write!(out, "{d:02}"),
            Some('H') => write!(out, "{:02}", rem / 3600),
            Some('M') => write!(out, "{:02}", rem % 3600 / 60),
            Some('S') => write!(out, "{:02}", rem % 60),
            Some('s') => write!(out, "{secs}"),
            Some('z') => write!(out, "+0000"),
            Some('%') => write!(out, "%"),
            Some(n @ '1'..='9') if chars.peek() == Some(&'f') => {
                chars.next();
                let digits = n.to_digit(10).unwrap_or(9) as usize;
                let nanos = format!("{:09}", since.subsec_nanos());
                write!(out, "{}", &nanos[..digits.min(9)])
            }
            Some(other) => write!(out, "%{other}"),
            None => write!(out, "%"),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    /// The digit template agrees with the general strftime path over leap days, year ends
    /// and millisecond padding.
    #[test]
    fn iso8601_agrees_with_strftime() {
        let seconds = [
            0,
            59,
            951_782_400,
            951_868_799,
            1_709_164_800,
            1_763_786_096,
            4_102_444_799,
        ];
        for s in seconds {
            for ms in [0, 5, 42, 999] {
                let t = UNIX_EPOCH + Duration::from_secs(s) + Duration::from_millis(ms);
                let mut fast = String::new();
                iso8601_millis(t, &mut fast);
                let mut general = String::new();
                strftime(t, "%Y-%m-%dT%H:%M:%S.%3fZ", &mut general);
                assert_eq!(fast, general, "{s}.{ms}");
            }
        }
        let mut out = String::new();
        iso8601_millis(
            UNIX_EPOCH + Duration::from_millis(951_782_400_007),
            &mut out,
        );
        assert_eq!(out, "2000-02-29T00:00:00.007Z");
    }
}
