//! The TCP proxy: connects to a host of the cluster (weighted clusters picked per connection,
//! up to `max_connect_attempts` hosts tried) and copies bytes both ways, passing a half-close
//! through (FIN in one direction does not end the other) and closing both sides after
//! `idle_timeout` without traffic.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/listeners/network_filters/tcp_proxy_filter

mod istio;
mod stats;

pub use istio::TcpIstio;
pub use stats::TcpStats;

use crate::access_log::AccessLogs;
use crate::config::tcp_proxy::TcpProxy;
use crate::format::{Context, ResponseFlags, StreamInfo};
use crate::upstream::{ClusterRuntime, Stream};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes moved per read. The profile in benches/README.md found bulk transfers bound by
/// ~16 KiB system calls; larger reads mean fewer of them, at 128 KiB per proxied connection.
const BUFFER: usize = 64 * 1024;

/// A TCP proxy filter as a listener runs it: its configuration and resolved stats.
#[derive(Debug)]
pub struct TcpContext {
    pub config: Arc<TcpProxy>,
    pub stats: TcpStats,
    pub access_logs: AccessLogs,
    /// The chain's network RBAC filters: they decide when the client's first bytes arrive.
    pub connection_rbac: Vec<crate::rbac::ConnectionRbac>,
    /// Istio's TCP metrics, when the chain has `istio.stats`.
    pub istio: Option<TcpIstio>,
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
    let local = info.local;
    let original_src = info.original_src;
    let mut istio = ctx
        .istio
        .as_ref()
        .map(|i| istio::IstioConnection::new(i, info.tls.clone()));
    // The network RBAC filters decide when the client's first bytes (or its close) arrive.
    let rbac_facts = (!ctx.connection_rbac.is_empty()).then(|| info.clone());
    let connection_rbac = &ctx.connection_rbac;
    let admit = rbac_facts
        .as_ref()
        .map(|d| move || crate::rbac::check_connection(connection_rbac, d));
    let mut log = ConnectionLog::new(&ctx, info);
    let config = &ctx.config;
    let named = config.pick(crate::random::below(config.total_weight));
    let Some(cluster) = named.and_then(|c| c.current()) else {
        stats.downstream_cx_no_route.inc();
        tracing::debug!(target: "filter", "tcp_proxy {}: no cluster", config.stat_prefix);
        log.flag("NC");
        if let Some(i) = istio {
            i.closed(None, flags(&["NC"]), 0, 0);
        }
        log.finish();
        return;
    };
    if let Some(log) = &mut log.0 {
        log.info.upstream_cluster = Some(cluster.log_names.0.clone());
        log.info.upstream_cluster_alt = cluster.log_names.1.clone();
    }
    // Envoy's tcp_proxy checks the DEFAULT priority's `max_connections` before connecting and
    // closes the downstream connection when it is reached (UO, `upstream_cx_overflow`). The
    // unit is held for as long as the proxied connection lives.
    let Some(_connection) = cluster
        .breakers
        .priority(crate::config::circuit_breakers::Priority::Default)
        .connections
        .try_acquire()
    else {
        cluster.stats.upstream_cx_overflow.inc();
        tracing::debug!(target: "filter", "tcp_proxy {}: max_connections reached", config.stat_prefix);
        log.flag("UO");
        if let Some(i) = istio {
            i.closed(Some(&cluster), flags(&["UO"]), 0, 0);
        }
        log.finish();
        return;
    };
    let (upstream, upstream_peer) = match connect(&cluster, config, local, original_src).await {
        Ok((upstream, host)) => {
            if let Some(log) = &mut log.0 {
                log.info.upstream_host = Some(host.authority.clone());
                log.info.upstream_local_address = upstream.stream.local_addr();
            }
            (upstream, host.istio_peer.clone())
        }
        Err(failure) => {
            if let Some(log) = &mut log.0 {
                log.info.upstream_host = failure.host;
                log.info.upstream_transport_failure_reason = failure.reason;
            }
            log.flag(failure.flag);
            if failure.attempts_exhausted {
                log.flag("URX");
            }
            if let Some(i) = istio {
                let names: &[&str] = if failure.attempts_exhausted {
                    &[failure.flag, "URX"]
                } else {
                    &[failure.flag]
                };
                i.closed(Some(&cluster), flags(names), 0, 0);
            }
            log.finish();
            return;
        }
    };
    if let Some(i) = &mut istio {
        i.connected(&cluster, upstream.identities.clone(), upstream_peer);
    }
    let counters = ByteCounters::default();
    let admit = admit
        .as_ref()
        .map(|a| a as &(dyn Fn() -> Result<(), String> + Sync));
    let copy = copy_both_ways(downstream, upstream, config.idle_timeout, &counters, admit);
    tokio::pin!(copy);
    // Istio reports a long connection's bytes every `tcp_reporting_duration`, not only at
    // its end.
    let mut reporting = istio.as_ref().map(|i| {
        let period = i.reporting_period();
        tokio::time::interval_at(tokio::time::Instant::now() + period, period)
    });
    let end = loop {
        tokio::select! {
            end = &mut copy => break end,
            _ = drain.expired() => {
                tracing::debug!(target: "filter", "tcp_proxy {}: drain time is up, closing", config.stat_prefix);
                break CopyEnd::Done;
            }
            _ = next_tick(&mut reporting) => {
                if let Some(i) = &mut istio {
                    i.report(&cluster, counters.sent(), counters.received());
                }
            }
        }
    };
    let (sent, received) = (counters.sent(), counters.received());
    let mut refused_bytes = 0;
    match end {
        CopyEnd::Done => {}
        CopyEnd::Idle => stats.idle_timeout.inc(),
        CopyEnd::Denied { details, bytes } => {
            refused_bytes = bytes;
            if let Some(log) = &mut log.0 {
                log.info.connection_termination_details = Some(details.into());
            }
        }
    }
    if let Some(log) = &mut log.0 {
        // What the client sent, also the bytes a denial kept from the upstream.
        log.info.bytes_received = sent + refused_bytes;
        log.info.bytes_sent = received;
    }
    if let Some(i) = istio {
        i.closed(Some(&cluster), ResponseFlags::NONE, sent, received);
    }
    log.finish();
    stats.downstream_cx_rx_bytes_total.add(sent);
    stats.downstream_cx_tx_bytes_total.add(received);
}

/// Envoy's response flags by their short names.
fn flags(names: &[&str]) -> ResponseFlags {
    names
        .iter()
        .filter_map(|n| ResponseFlags::named(n))
        .fold(ResponseFlags::NONE, ResponseFlags::with)
}

/// Why no upstream connection was made, for the access log.
struct ConnectFailure {
    flag: &'static str,
    host: Option<http::uri::Authority>,
    reason: Option<String>,
    attempts_exhausted: bool,
}

/// Tries up to `max_connect_attempts` hosts of the cluster.
async fn connect(
    cluster: &ClusterRuntime,
    config: &TcpProxy,
    original_destination: Option<std::net::SocketAddr>,
    original_src: Option<crate::upstream::transport::OriginalSource>,
) -> Result<
    (
        crate::upstream::connector::CountedStream,
        Arc<crate::upstream::Host>,
    ),
    ConnectFailure,
> {
    let mut failure = ConnectFailure {
        flag: "UF",
        host: None,
        reason: None,
        attempts_exhausted: false,
    };
    if cluster.config.unsupported_transport.is_some() {
        cluster.stats.upstream_cx_connect_fail.inc();
        return Err(failure);
    }
    let connector = cluster.pool.connector();
    for _ in 0..config.max_connect_attempts {
        let Some(host) = cluster.choose_host(original_destination, None, None) else {
            cluster.stats.upstream_cx_none_healthy.inc();
            failure.flag = "UH";
            return Err(failure);
        };
        // Over the host's own transport socket; tcp_proxy asks for no ALPN override.
        let via = crate::upstream::transport::Via {
            alpn: None,
            source: original_src,
        };
        let destination = crate::upstream::transport::Destination::new(&host, via);
        // Envoy's TCP pool counts each attempt as a pending request until it connects, and the
        // connected one as a request.
        cluster.stats.upstream_rq_pending_total.inc();
        cluster.stats.upstream_rq_pending_active.inc();
        let connected = connector.connect(&destination).await;
        cluster.stats.upstream_rq_pending_active.dec();
        match connected {
            Ok(io) => {
                cluster.stats.upstream_rq_total.inc();
                // The session is the connection's one request for its whole life.
                io.inner().fate().session();
                cluster
                    .health
                    .report(&host, crate::upstream::HostResult::Connected);
                return Ok((io.into_inner(), host.clone()));
            }
            Err(e) => {
                cluster
                    .health
                    .report(&host, crate::upstream::HostResult::ConnectFailed);
                cluster.stats.upstream_cx_connect_fail.inc();
                host.stats.cx_connect_fail.fetch_add(1, Relaxed);
                tracing::debug!(target: "filter", "tcp_proxy {}: connect to {} failed: {e}", config.stat_prefix, host.authority);
                failure.host = Some(host.authority.clone());
                failure.reason = e.raw_os_error().map(|code| {
                    format!(
                        "delayed connect error: {}",
                        nix::errno::Errno::from_raw(code).desc()
                    )
                });
            }
        }
    }
    failure.attempts_exhausted = true;
    cluster.stats.lifecycle.connect_attempts_exceeded.inc();
    Err(failure)
}

/// The access log record of one proxied connection, when the filter has access logs.
struct ConnectionLog<'a>(Option<PendingConnection<'a>>);

struct PendingConnection<'a> {
    ctx: &'a TcpContext,
    downstream: crate::http::Downstream,
    start: std::time::SystemTime,
    started: std::time::Instant,
    info: StreamInfo,
}

impl<'a> ConnectionLog<'a> {
    fn new(ctx: &'a TcpContext, downstream: crate::http::Downstream) -> Self {
        Self((!ctx.access_logs.is_empty()).then(|| PendingConnection {
            ctx,
            start: std::time::SystemTime::now(),
            started: std::time::Instant::now(),
            info: StreamInfo {
                connection_id: Some(downstream.connection_id),
                requested_server_name: downstream.requested_server_name.clone(),
                ..StreamInfo::default()
            },
            downstream,
        }))
    }

    fn flag(&mut self, name: &str) {
        if let Some(p) = &mut self.0 {
            if let Some(f) = ResponseFlags::named(name) {
                p.info.response_flags = p.info.response_flags.with(f);
            }
        }
    }

    fn finish(self) {
        let Some(mut p) = self.0 else { return };
        p.info.duration = Some(p.started.elapsed());
        let upstream = p.info.upstream_host.as_ref().map(|a| a.as_str());
        let connected = p.info.response_flags.is_empty();
        p.ctx.access_logs.log(&Context {
            downstream_remote: p.downstream.remote,
            downstream_local: p.downstream.local,
            upstream_remote: upstream.filter(|_| connected),
            start: p.start,
            protocol: None,
            request_headers: None,
            stream: Some(&p.info),
            downstream_tls: p.downstream.tls.as_deref(),
        });
    }
}

/// Returns (bytes sent upstream, bytes received from upstream, whether the idle timeout fired).
/// Bytes copied so far: client to upstream (`sent`) and back (`received`).
#[derive(Debug, Default)]
struct ByteCounters {
    sent: std::sync::atomic::AtomicU64,
    received: std::sync::atomic::AtomicU64,
}

impl ByteCounters {
    fn sent(&self) -> u64 {
        self.sent.load(Relaxed)
    }
    fn received(&self) -> u64 {
        self.received.load(Relaxed)
    }
}

/// The next tick of `interval`, or never without one.
async fn next_tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// How the copying ended.
enum CopyEnd {
    Done,
    /// Nothing moved for the idle timeout.
    Idle,
    /// A network RBAC filter denied the connection on the client's first bytes (`bytes` of
    /// them, never forwarded).
    Denied {
        details: String,
        bytes: u64,
    },
}

/// Copies both ways until both halves end (each half-close passed on) or, with `idle`, until
/// nothing moved for that long. `admit`, when given, decides the connection on the client's
/// first read: a denial closes both directions at once (Envoy's network RBAC).
async fn copy_both_ways<D, U>(
    downstream: D,
    upstream: U,
    idle: Option<Duration>,
    counters: &ByteCounters,
    admit: Option<&(dyn Fn() -> Result<(), String> + Sync)>,
) -> CopyEnd
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut down_r, mut down_w) = tokio::io::split(downstream);
    let (mut up_r, mut up_w) = tokio::io::split(upstream);
    let activity = Activity::new();
    let up = copy_half(&mut down_r, &mut up_w, &activity, &counters.sent, admit);
    let down = copy_half(&mut up_r, &mut down_w, &activity, &counters.received, None);
    let both = async {
        tokio::pin!(up, down);
        tokio::select! {
            up_end = &mut up => match up_end {
                Ok(()) => down.await.map_or_else(|d| d, |()| CopyEnd::Done),
                Err(denied) => denied,
            },
            _ = &mut down => up.await.map_or_else(|d| d, |()| CopyEnd::Done),
        }
    };
    tokio::pin!(both);
    match idle {
        None => both.await,
        Some(idle) => {
            let mut check = tokio::time::Instant::now() + idle;
            loop {
                tokio::select! {
                    end = &mut both => break end,
                    () = tokio::time::sleep_until(check) => {
                        let quiet = activity.quiet_for();
                        if quiet >= idle {
                            tracing::debug!(target: "filter", "tcp_proxy: idle timeout");
                            break CopyEnd::Idle;
                        }
                        check = tokio::time::Instant::now() + (idle - quiet);
                    }
                }
            }
        }
    }
}

/// When bytes last moved, stamped by the copies and read only when the idle timer fires:
/// re-arming a timer (and waking the connection's task) per chunk had cost throughput.
struct Activity {
    started: std::time::Instant,
    last_micros: std::sync::atomic::AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            started: std::time::Instant::now(),
            last_micros: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.last_micros.store(now, Relaxed);
    }

    fn quiet_for(&self) -> Duration {
        let last = Duration::from_micros(self.last_micros.load(Relaxed));
        self.started.elapsed().saturating_sub(last)
    }
}

async fn copy_half<R, W>(
    reader: &mut R,
    writer: &mut W,
    activity: &Activity,
    total: &std::sync::atomic::AtomicU64,
    mut admit: Option<&(dyn Fn() -> Result<(), String> + Sync)>,
) -> Result<(), CopyEnd>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUFFER];
    loop {
        let read = reader.read(&mut buf).await;
        if let Some(Err(details)) = admit.take().map(|check| check()) {
            let bytes = read.map_or(0, |n| n as u64);
            return Err(CopyEnd::Denied { details, bytes });
        }
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if writer.write_all(&buf[..n]).await.is_err() {
            break;
        }
        total.fetch_add(n as u64, Relaxed);
        activity.touch();
    }
    // Pass the half-close on: the other direction keeps flowing.
    let _ = writer.shutdown().await;
    Ok(())
}
