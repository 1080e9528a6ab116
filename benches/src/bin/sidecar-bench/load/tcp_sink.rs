//! TCP bulk reader: N connections read as fast as the path delivers for a fixed time;
//! throughput counts bytes actually received, in MiB/s.

use super::HelperReport;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[arg(long)]
    pub addr: SocketAddr,
    #[arg(long)]
    pub connections: u32,
    #[arg(long)]
    pub millis: u64,
}

pub fn command_args(addr: SocketAddr, connections: u32, d: Duration) -> Vec<String> {
    vec![
        "tcp-sink".into(),
        "--addr".into(),
        addr.to_string(),
        "--connections".into(),
        connections.to_string(),
        "--millis".into(),
        d.as_millis().to_string(),
    ]
}

pub fn main(args: &Args) -> anyhow::Result<()> {
    let duration = Duration::from_millis(args.millis);
    let mut streams = Vec::new();
    for _ in 0..args.connections {
        let s = TcpStream::connect_timeout(&args.addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        streams.push(s);
    }
    // Let the pipes fill before counting, so the number is the steady state.
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + duration;
    let threads: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 256 * 1024];
                let (mut counted, mut errors) = (0u64, 0u64);
                loop {
                    let now = Instant::now();
                    if now >= end {
                        break;
                    }
                    match s.read(&mut buf) {
                        Ok(0) => {
                            errors += 1;
                            break;
                        }
                        Ok(n) if now >= start => counted += n as u64,
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => {
                            errors += 1;
                            break;
                        }
                    }
                }
                (counted, errors)
            })
        })
        .collect();
    let (mut bytes, mut errors) = (0u64, 0u64);
    for t in threads {
        let (b, e) = t
            .join()
            .map_err(|_| anyhow::anyhow!("a reader thread panicked"))?;
        bytes += b;
        errors += e;
    }
    let report = HelperReport {
        value: bytes as f64 / duration.as_secs_f64() / (1024.0 * 1024.0),
        requests: 0,
        errors,
        latency: None,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
