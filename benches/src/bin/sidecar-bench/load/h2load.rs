//! h2load over h2c with prior knowledge (an `http://` URI): one connection, N streams.

use super::{run_tool, whole_seconds, Measurement};
use crate::process::Pinning;
use anyhow::Context;
use std::net::SocketAddr;
use std::time::Duration;

pub fn run(
    h2load: &str,
    pinning: Pinning,
    addr: SocketAddr,
    streams: u32,
    duration: Duration,
) -> anyhow::Result<Measurement> {
    let args = vec![
        "-t1".to_string(),
        "-c1".to_string(),
        format!("-m{streams}"),
        "-D".to_string(),
        whole_seconds(duration).to_string(),
        format!("http://{addr}/"),
    ];
    let out = run_tool(pinning, h2load, &args)?;
    parse(&out).with_context(|| format!("unexpected h2load output:\n{out}"))
}

/// Reads `finished in 3.00s, 12345.67 req/s, ...` and
/// `requests: N total, N started, N done, N succeeded, F failed, E errored, T timeout`.
pub fn parse(out: &str) -> Option<Measurement> {
    let mut m = Measurement::default();
    let mut rate = None;
    for line in out.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("finished in") {
            rate = rest
                .split(',')
                .nth(1)?
                .trim()
                .strip_suffix("req/s")?
                .trim()
                .parse()
                .ok();
        } else if let Some(rest) = line.strip_prefix("requests:") {
            for part in rest.split(',') {
                let mut words = part.split_whitespace();
                let n: u64 = words.next()?.parse().ok()?;
                match words.next()? {
                    "succeeded" => m.requests = n,
                    "failed" | "errored" | "timeout" => m.errors += n,
                    _ => {}
                }
            }
        }
    }
    m.value = rate?;
    // Non-2xx responses count as "succeeded" in h2load; its status line tells them apart.
    for line in out.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("status codes:") {
            let non_2xx: u64 = rest
                .split(',')
                .filter(|p| !p.trim_end().ends_with("2xx"))
                .filter_map(|p| p.split_whitespace().next()?.parse::<u64>().ok())
                .sum();
            m.errors += non_2xx;
            m.requests = m.requests.saturating_sub(non_2xx);
        }
    }
    Some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_h2load_report() {
        let out = "finished in 3.00s, 41234.33 req/s, 44.50MB/s\nrequests: 123703 total, 123803 started, 123703 done, 123700 succeeded, 3 failed, 3 errored, 0 timeout\nstatus codes: 123699 2xx, 0 3xx, 0 4xx, 1 5xx\n";
        let m = parse(out).expect("parses");
        assert!((m.value - 41234.33).abs() < 1e-9);
        assert_eq!(m.requests, 123699);
        assert_eq!(m.errors, 7);
    }
}
