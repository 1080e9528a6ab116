//! The TCP proxy: connects to a host of the cluster and copies bytes both ways, passing a
//! half-close through (FIN in one direction does not end the other) and closing both sides
//! after `idle_timeout` without traffic.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/listeners/network_filters/tcp_proxy_filter

use crate::config::tcp_proxy::TcpProxy;
use crate::upstream::{ClusterManager, Connector, Stream};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tower::Service;

const BUFFER: usize = 16 * 1024;

pub async fn proxy(downstream: Stream, config: Arc<TcpProxy>, clusters: Arc<ClusterManager>) {
    let Some(cluster) = config.cluster.and_then(|i| clusters.get(i)) else {
        tracing::debug!(target: "filter", "tcp_proxy {}: unknown cluster {}", config.stat_prefix, config.cluster_name);
        return;
    };
    if cluster.config.unsupported_transport.is_some() {
        cluster.stats.upstream_cx_connect_fail.inc();
        return;
    }
    let Some(host) = cluster.hosts().pick().cloned() else {
        cluster.stats.upstream_cx_none_healthy.inc();
        return;
    };
    let mut connector = Connector {
        connect_timeout: cluster.config.connect_timeout,
        keepalive: cluster.config.tcp_keepalive,
        source: cluster.config.source_address,
    };
    let uri = match http::Uri::builder()
        .scheme("http")
        .authority(host.authority.clone())
        .path_and_query("/")
        .build()
    {
        Ok(u) => u,
        Err(_) => return,
    };
    let upstream = match connector.call(uri).await {
        Ok(io) => io.into_inner(),
        Err(e) => {
            cluster.stats.upstream_cx_connect_fail.inc();
            host.stats
                .cx_connect_fail
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(target: "filter", "tcp_proxy {}: connect to {} failed: {e}", config.stat_prefix, host.authority);
            return;
        }
    };
    cluster.stats.upstream_cx_total.inc();
    cluster.stats.upstream_cx_active.inc();
    let (sent, received) = copy_both_ways(downstream, upstream, config.idle_timeout).await;
    cluster.stats.upstream_cx_tx_bytes_total.add(sent);
    cluster.stats.upstream_cx_rx_bytes_total.add(received);
    cluster.stats.upstream_cx_active.dec();
}

/// Returns (bytes sent upstream, bytes received from upstream).
async fn copy_both_ways(
    downstream: Stream,
    upstream: Stream,
    idle: Option<Duration>,
) -> (u64, u64) {
    let (mut down_r, mut down_w) = tokio::io::split(downstream);
    let (mut up_r, mut up_w) = tokio::io::split(upstream);
    let (activity_tx, mut activity_rx) = tokio::sync::watch::channel(());
    let up = copy_half(&mut down_r, &mut up_w, &activity_tx);
    let down = copy_half(&mut up_r, &mut down_w, &activity_tx);
    let both = async { tokio::join!(up, down) };
    tokio::pin!(both);
    let Some(idle) = idle else { return both.await };
    loop {
        tokio::select! {
            totals = &mut both => return totals,
            changed = tokio::time::timeout(idle, activity_rx.changed()) => {
                if changed.is_err() {
                    tracing::debug!(target: "filter", "tcp_proxy: idle timeout");
                    return (0, 0);
                }
            }
        }
    }
}

async fn copy_half<R, W>(
    reader: &mut R,
    writer: &mut W,
    activity: &tokio::sync::watch::Sender<()>,
) -> u64
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUFFER];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if writer.write_all(&buf[..n]).await.is_err() {
            break;
        }
        total += n as u64;
        activity.send_replace(());
    }
    // Pass the half-close on: the other direction keeps flowing.
    let _ = writer.shutdown().await;
    total
}
