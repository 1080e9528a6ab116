//! HTTP/1.1 over mutual TLS, closed loop, for the mTLS hop: N connections on one thread
//! (tokio, current-thread), each presenting the job's client certificate and checking the
//! server's against the job's CA. Keep-alive mode measures requests/s through an established
//! hop; handshake mode opens a new connection for every request (`Connection: close`, session
//! resumption off, so every one is a full handshake) and measures handshakes/s. wrk and
//! h2load cannot present a client certificate, hence this generator.

use super::http1::parse_head;
use super::HelperReport;
use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[arg(long)]
    pub addr: SocketAddr,
    #[arg(long)]
    pub connections: u32,
    #[arg(long)]
    pub millis: u64,
    /// A new connection (full handshake) per request.
    #[arg(long)]
    pub handshakes: bool,
    #[arg(long)]
    pub ca: PathBuf,
    #[arg(long)]
    pub cert: PathBuf,
    #[arg(long)]
    pub key: PathBuf,
}

pub fn command_args(
    addr: SocketAddr,
    connections: u32,
    d: Duration,
    handshakes: bool,
    tls: &crate::scenario::TlsFiles,
) -> Vec<String> {
    let mut args = vec![
        "mtls-load".into(),
        "--addr".into(),
        addr.to_string(),
        "--connections".into(),
        connections.to_string(),
        "--millis".into(),
        d.as_millis().to_string(),
        "--ca".into(),
        tls.ca.display().to_string(),
        "--cert".into(),
        tls.client.cert.display().to_string(),
        "--key".into(),
        tls.client.key.display().to_string(),
    ];
    if handshakes {
        args.push("--handshakes".into());
    }
    args
}

fn client_config(args: &Args) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&args.ca).context("the CA file")? {
        roots.add(ca?)?;
    }
    let chain = CertificateDer::pem_file_iter(&args.cert)
        .context("the client certificate")?
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&args.key).context("the client key")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    // Every new connection is a full handshake, as a sidecar's first connection to a peer.
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

pub fn main(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.connections > 0, "connections must be > 0");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(args)?));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let duration = Duration::from_millis(args.millis);
    let (requests, errors) = runtime.block_on(async {
        // A short ramp before counting, so the number is the steady state.
        let start = Instant::now() + Duration::from_millis(200);
        let end = start + duration;
        let tasks: Vec<_> = (0..args.connections)
            .map(|_| {
                let connector = connector.clone();
                let (addr, handshakes) = (args.addr, args.handshakes);
                tokio::spawn(
                    async move { connection(connector, addr, handshakes, start, end).await },
                )
            })
            .collect();
        let (mut requests, mut errors) = (0u64, 0u64);
        for t in tasks {
            let (r, e) = t.await.unwrap_or((0, 1));
            requests += r;
            errors += e;
        }
        (requests, errors)
    });
    let report = HelperReport {
        value: requests as f64 / duration.as_secs_f64(),
        requests,
        errors,
        latency: None,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// One client: requests (counted from `start`) until `end`; (successful, failed).
async fn connection(
    connector: tokio_rustls::TlsConnector,
    addr: SocketAddr,
    handshakes: bool,
    start: Instant,
    end: Instant,
) -> (u64, u64) {
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: sidecar-bench\r\n{}\r\n",
        if handshakes {
            "Connection: close\r\n"
        } else {
            ""
        }
    );
    let mut buf = vec![0u8; 64 * 1024];
    let (mut ok, mut failed) = (0u64, 0u64);
    'connections: while Instant::now() < end {
        let mut stream = match open(&connector, addr).await {
            Ok(s) => s,
            Err(_) => {
                failed += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        loop {
            let now = Instant::now();
            if now >= end {
                break 'connections;
            }
            match exchange(&mut stream, request.as_bytes(), &mut buf).await {
                Ok(status) if (200..300).contains(&status) => {
                    if now >= start {
                        ok += 1;
                    }
                }
                _ => {
                    failed += 1;
                    continue 'connections;
                }
            }
            if handshakes {
                continue 'connections;
            }
        }
    }
    (ok, failed)
}

async fn open(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(crate::scenario::MTLS_SERVER_NAME)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    connector.connect(name, tcp).await
}

/// Sends one request and reads its whole response; returns the status code.
async fn exchange(
    stream: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    request: &[u8],
    buf: &mut [u8],
) -> std::io::Result<u16> {
    let closed = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed");
    stream.write_all(request).await?;
    let mut filled = 0;
    let (head_len, status, body_len) = loop {
        if filled == buf.len() {
            return Err(std::io::Error::other("response head too large"));
        }
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Err(closed());
        }
        filled += n;
        if let Some(head) = parse_head(&buf[..filled])? {
            break head;
        }
    };
    let mut remaining = (head_len + body_len).saturating_sub(filled);
    while remaining > 0 {
        let want = remaining.min(buf.len());
        let n = stream.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(closed());
        }
        remaining -= n;
    }
    Ok(status)
}
