//! The TCP proxy: connects to a host of the cluster (weighted clusters picked per connection,
//! up to `max_connect_attempts` hosts tried) and copies bytes both ways, passing a half-close
//! through (FIN in one direction does not end the other) and closing both sides after
//! `idle_timeout` without traffic.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/listeners/network_filters/tcp_proxy_filter

mod stats;

pub use stats::TcpStats;

use crate::config::tcp_proxy::TcpProxy;
use crate::upstream::{ClusterRuntime, Stream};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tower::Service;

/// Bytes moved per read. The profile in benches/README.md found bulk transfers bound by
/// ~16 KiB system calls; larger reads mean fewer of them, at 128 KiB per proxied connection.
const BUFFER: usize = 64 * 1024;

/// A TCP proxy filter as a listener runs it: its configuration and resolved stats.
#[derive(Debug)]
pub struct TcpContext {
    pub config: Arc<TcpProxy>,
    pub stats: TcpStats,
}

/// Proxies one downstream connection. When its listener drains, the connection keeps going
/// for the drain window and is then closed (Envoy's behaviour for tcp_proxy).
pub async fn proxy(
    downstream: Stream,
    ctx: Arc<TcpContext>,
    info: crate::http::Downstream,
    mut drain: crate::server::Drain,
) {
    let stats = &ctx.stats;
    stats.downstream_cx_total.inc();
    let config = &ctx.config;
    let named = config.pick(crate::random::below(config.total_weight));
    let Some(cluster) = named.and_then(|c| c.current()) else {
        stats.downstream_cx_no_route.inc();
        tracing::debug!(target: "filter", "tcp_proxy {}: no cluster", config.stat_prefix);
        return;
    };
    let Some(upstream) = connect(&cluster, config, info.local).await else {
        return;
    };
    let copied = tokio::select! {
        copied = copy_both_ways(downstream, upstream, config.idle_timeout) => copied,
        _ = drain.expired() => {
            tracing::debug!(target: "filter", "tcp_proxy {}: drain time is up, closing", config.stat_prefix);
            return;
        }
    };
    let (sent, received, idle) = copied;
    if idle {
        stats.idle_timeout.inc();
    }
    stats.downstream_cx_rx_bytes_total.add(sent);
    stats.downstream_cx_tx_bytes_total.add(received);
    cluster.stats.upstream_cx_tx_bytes_total.add(sent);
    cluster.stats.upstream_cx_rx_bytes_total.add(received);
}

/// Tries up to `max_connect_attempts` hosts of the cluster.
async fn connect(
    cluster: &ClusterRuntime,
    config: &TcpProxy,
    original_destination: Option<std::net::SocketAddr>,
) -> Option<crate::upstream::connector::CountedStream> {
    if cluster.config.unsupported_transport.is_some() {
        cluster.stats.upstream_cx_connect_fail.inc();
        return None;
    }
    let mut connector = cluster.pool.connector();
    for _ in 0..config.max_connect_attempts {
        let Some(host) = cluster.choose_host(original_destination, None, None) else {
            cluster.stats.upstream_cx_none_healthy.inc();
            return None;
        };
        let uri = http::Uri::builder()
            .scheme("http")
            .authority(host.authority.clone())
            .path_and_query("/")
            .build()
            .ok()?;
        match connector.call(uri).await {
            Ok(io) => return Some(io.into_inner()),
            Err(e) => {
                cluster.stats.upstream_cx_connect_fail.inc();
                host.stats.cx_connect_fail.fetch_add(1, Relaxed);
                tracing::debug!(target: "filter", "tcp_proxy {}: connect to {} failed: {e}", config.stat_prefix, host.authority);
            }
        }
    }
    None
}

/// Returns (bytes sent upstream, bytes received from upstream, whether the idle timeout fired).
async fn copy_both_ways<D, U>(
    downstream: D,
    upstream: U,
    idle: Option<Duration>,
) -> (u64, u64, bool)
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut down_r, mut down_w) = tokio::io::split(downstream);
    let (mut up_r, mut up_w) = tokio::io::split(upstream);
    let (activity_tx, mut activity_rx) = tokio::sync::watch::channel(());
    let sent = std::sync::atomic::AtomicU64::new(0);
    let received = std::sync::atomic::AtomicU64::new(0);
    let up = copy_half(&mut down_r, &mut up_w, &activity_tx, &sent);
    let down = copy_half(&mut up_r, &mut down_w, &activity_tx, &received);
    let both = async { tokio::join!(up, down) };
    tokio::pin!(both);
    let idled = match idle {
        None => {
            both.await;
            false
        }
        Some(idle) => loop {
            tokio::select! {
                _ = &mut both => break false,
                changed = tokio::time::timeout(idle, activity_rx.changed()) => {
                    if changed.is_err() {
                        tracing::debug!(target: "filter", "tcp_proxy: idle timeout");
                        break true;
                    }
                }
            }
        },
    };
    (sent.load(Relaxed), received.load(Relaxed), idled)
}

async fn copy_half<R, W>(
    reader: &mut R,
    writer: &mut W,
    activity: &tokio::sync::watch::Sender<()>,
    total: &std::sync::atomic::AtomicU64,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if writer.write_all(&buf[..n]).await.is_err() {
            break;
        }
        total.fetch_add(n as u64, Relaxed);
        activity.send_replace(());
    }
    // Pass the half-close on: the other direction keeps flowing.
    let _ = writer.shutdown().await;
}
