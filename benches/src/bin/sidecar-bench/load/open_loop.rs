//! Open-loop HTTP/1.1 load at a fixed rate. Each connection owns a thread and a fixed
//! schedule (`rate / connections` requests per second, connections staggered evenly); a
//! request is sent at its scheduled time or, if the previous response is late, right after
//! it, and its latency is measured from the *scheduled* time. A slow response therefore
//! counts against every request it delays (no coordinated omission), as in wrk2.

use super::http1::Connection;
use super::{HelperReport, Percentiles};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[arg(long)]
    pub addr: SocketAddr,
    /// Requests per second over all connections.
    #[arg(long)]
    pub rate: u32,
    #[arg(long)]
    pub connections: u32,
    #[arg(long)]
    pub millis: u64,
}

pub fn command_args(addr: SocketAddr, rate: u32, connections: u32, d: Duration) -> Vec<String> {
    vec![
        "open-loop".into(),
        "--addr".into(),
        addr.to_string(),
        "--rate".into(),
        rate.to_string(),
        "--connections".into(),
        connections.to_string(),
        "--millis".into(),
        d.as_millis().to_string(),
    ]
}

/// Per-connection result: latencies in µs and the count of failures.
type ConnResult = (Vec<u32>, u64);

pub fn main(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rate > 0 && args.connections > 0,
        "rate and connections must be > 0"
    );
    let interval = Duration::from_secs_f64(f64::from(args.connections) / f64::from(args.rate));
    let duration = Duration::from_millis(args.millis);
    // Open every connection before the clock starts: connect time is not request latency.
    let mut connections = Vec::new();
    for _ in 0..args.connections {
        connections.push(Connection::open(args.addr)?);
    }
    let start = Instant::now() + Duration::from_millis(50);
    let threads: Vec<_> = connections
        .into_iter()
        .enumerate()
        .map(|(i, conn)| {
            let offset = interval.mul_f64(i as f64 / f64::from(args.connections));
            let addr = args.addr;
            std::thread::spawn(move || drive(conn, addr, start + offset, interval, duration))
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in threads {
        let (l, e) = t
            .join()
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))?;
        latencies.extend(l);
        errors += e;
    }
    let requests = latencies.len() as u64;
    let latency = percentiles(&mut latencies);
    let report = HelperReport {
        value: latency.p99,
        requests,
        errors,
        latency: Some(latency),
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

fn drive(
    mut conn: Connection,
    addr: SocketAddr,
    first: Instant,
    interval: Duration,
    duration: Duration,
) -> ConnResult {
    // The default 50 µs timer slack would blur the schedule as much as a fast hop takes.
    let _ = nix::sys::prctl::set_timerslack(1);
    let end = first + duration;
    let mut latencies =
        Vec::with_capacity((duration.as_secs_f64() / interval.as_secs_f64()) as usize + 1);
    let mut errors = 0;
    let mut scheduled = first;
    while scheduled < end {
        let now = Instant::now();
        if scheduled > now {
            std::thread::sleep(scheduled - now);
        }
        match conn.get() {
            Ok(status) if (200..300).contains(&status) => {
                let micros = scheduled.elapsed().as_micros();
                latencies.push(u32::try_from(micros).unwrap_or(u32::MAX));
            }
            Ok(_) => errors += 1,
            Err(_) => {
                errors += 1;
                match Connection::open(addr) {
                    Ok(c) => conn = c,
                    Err(_) => std::thread::sleep(interval),
                }
            }
        }
        scheduled += interval;
    }
    (latencies, errors)
}

/// Nearest-rank percentiles of `samples` (µs); sorts in place.
pub fn percentiles(samples: &mut [u32]) -> Percentiles {
    samples.sort_unstable();
    let at = |q: f64| -> f64 {
        if samples.is_empty() {
            return 0.0;
        }
        let rank = (q * samples.len() as f64).ceil() as usize;
        f64::from(samples[rank.clamp(1, samples.len()) - 1])
    };
    Percentiles {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        p999: at(0.999),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut s: Vec<u32> = (1..=1000).rev().collect();
        let p = percentiles(&mut s);
        assert_eq!((p.p50, p.p90, p.p99, p.p999), (500.0, 900.0, 990.0, 999.0));
        assert_eq!(percentiles(&mut []).p99, 0.0);
    }
}
