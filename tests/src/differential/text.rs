//! What a scenario observed, reduced to text for comparison: responses and what the upstreams
//! received, with the values that differ on every run (dates, measured durations, generated
//! ids) reduced to their presence.

use crate::upstream::Received;
use std::fmt::Write as _;

/// Headers whose values differ between any two runs, reduced to their presence:
/// `date` (the clock) and `x-envoy-upstream-service-time` (a measured duration). An
/// `x-request-id` is reduced only when it is a UUID (one the proxy generated), so a client's
/// id that must be preserved is still compared.
/// Values that differ on every run; B3 ids are random (tracing tests compare how they relate).
const VOLATILE: &[&str] = &[
    "date",
    "x-envoy-upstream-service-time",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "b3",
];

fn is_uuid(v: &str) -> bool {
    v.len() == 36
        && v.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// The status, the headers and the body as text. Headers are sorted by name, keeping the
/// order of repeated names: only the relative order of same-name fields carries meaning
/// (RFC 9110 §5.3), and neither proxy promises an order across names.
pub fn response_text(status: u16, headers: &[(String, String)], body: &[u8]) -> String {
    let mut out = format!("  status {status}\n");
    out.push_str(&headers_text("    ", headers));
    let _ = writeln!(out, "  body {}", summarise(body, 400));
    out
}

fn headers_text(prefix: &str, headers: &[(String, String)]) -> String {
    let mut sorted: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| {
            let n = n.to_ascii_lowercase();
            let v = if VOLATILE.contains(&n.as_str()) || (n == "x-request-id" && is_uuid(v)) {
                "<volatile>".to_string()
            } else {
                v.clone()
            };
            (n, v)
        })
        .collect();
    sorted.sort_by(|x, y| x.0.cmp(&y.0));
    sorted
        .iter()
        .map(|(n, v)| format!("{prefix}{n}: {v}\n"))
        .collect()
}

pub(super) fn received_text(name: &str, r: &Received) -> String {
    format!(
        "  upstream {name} got {} {} {}\n{}    body {}\n",
        r.method,
        r.path,
        r.version,
        headers_text("      ", &r.headers),
        // Zipkin reports carry random ids and times; the tracing tests compare their spans.
        if r.path == "/api/v2/spans" {
            "<zipkin spans>".to_string()
        } else {
            summarise(&r.body, 400)
        }
    )
}

/// Bytes as text: short ones whole (escaped), long ones by length and a checksum.
pub fn summarise(bytes: &[u8], limit: usize) -> String {
    if bytes.len() <= limit {
        return format!("{:?}", String::from_utf8_lossy(bytes));
    }
    let sum = bytes.iter().fold(0u64, |acc, b| {
        acc.wrapping_mul(31).wrapping_add(u64::from(*b))
    });
    format!(
        "<{} bytes, checksum {sum:x}, starting {:?}>",
        bytes.len(),
        String::from_utf8_lossy(&bytes[..64.min(bytes.len())])
    )
}

#[cfg(test)]
mod tests {
    use super::response_text;

    #[test]
    fn volatile_headers_keep_presence_and_order_by_name() {
        let h = |n: &str, v: &str| (n.to_string(), v.to_string());
        let text = response_text(
            200,
            &[
                h("x-b", "1"),
                h("Date", "now"),
                h("x-a", "2"),
                h("x-b", "0"),
            ],
            b"hi",
        );
        assert_eq!(
            text,
            "  status 200\n    date: <volatile>\n    x-a: 2\n    x-b: 1\n    x-b: 0\n  body \"hi\"\n"
        );
    }
}
