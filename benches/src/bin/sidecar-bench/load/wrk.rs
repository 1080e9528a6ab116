//! wrk, closed loop: `-t1 -cN` keep-alive, or with `Connection: close` for the
//! new-connection rate (wrk reconnects after every response the server closes).

use super::{run_tool, whole_seconds, Measurement};
use crate::process::Pinning;
use anyhow::Context;
use std::net::SocketAddr;
use std::time::Duration;

pub fn run(
    wrk: &str,
    pinning: Pinning,
    addr: SocketAddr,
    connections: u32,
    duration: Duration,
    close: bool,
) -> anyhow::Result<Measurement> {
    let mut args = vec![
        "-t1".to_string(),
        format!("-c{connections}"),
        format!("-d{}s", whole_seconds(duration)),
    ];
    if close {
        args.extend(["-H".to_string(), "Connection: close".to_string()]);
    }
    args.push(format!("http://{addr}/"));
    let out = run_tool(pinning, wrk, &args)?;
    parse(&out).with_context(|| format!("unexpected wrk output:\n{out}"))
}

/// Reads `N requests in`, `Requests/sec:`, `Non-2xx or 3xx responses:` and `Socket errors:`.
pub fn parse(out: &str) -> Option<Measurement> {
    let mut m = Measurement::default();
    let mut rate = None;
    for line in out.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rate = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            m.errors += v.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            m.errors += v
                .split(',')
                .filter_map(|kv| kv.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        } else if line.contains(" requests in ") {
            m.requests = line.split_whitespace().next()?.parse().ok()?;
        }
    }
    m.value = rate?;
    Some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_wrk_report() {
        let out = "Running 3s test @ http://127.0.0.1:19010/\n  1 threads and 50 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency     1.00ms  100.00us   2.00ms   90.00%\n  60000 requests in 3.00s, 70.00MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 4\nRequests/sec:  20000.50\nTransfer/sec:     23.00MB\n";
        let m = parse(out).expect("parses");
        assert_eq!(m.requests, 60000);
        assert_eq!(m.errors, 7);
        assert!((m.value - 20000.5).abs() < 1e-9);
    }
}
