//! Listeners: bind (with SO_REUSEPORT and the configured backlog), accept, choose the filter
//! chain, and hand the connection to its network filter.

mod filter_chain;

pub use filter_chain::select_filter_chain;

use crate::config::address::Endpoint;
use crate::config::listener::{FilterChain, Listener, NetworkFilter};
use crate::http::{serve_connection, Downstream, HcmStats, HttpContext};
use crate::stats::{Counter, Gauge, Store};
use crate::tcp::{TcpContext, TcpStats};
use crate::upstream::ClusterManager;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;

/// A bound socket, before it accepts.
#[derive(Debug)]
pub enum BoundSocket {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl BoundSocket {
    pub fn local_address(&self) -> String {
        match self {
            BoundSocket::Tcp(l) => l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            BoundSocket::Unix(l) => l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
                .unwrap_or_default(),
        }
    }
}

/// Binds the listener's address. Called before the server reports LIVE so a port conflict is a
/// startup error, as in Envoy.
pub fn bind(listener: &Listener) -> std::io::Result<BoundSocket> {
    match &listener.address {
        Endpoint::Tcp(addr) => {
            bind_tcp(*addr, listener.reuse_port, listener.backlog).map(BoundSocket::Tcp)
        }
        Endpoint::Unix(path) => {
            // A stale socket file from an earlier run would make bind fail.
            let _ = std::fs::remove_file(path);
            UnixListener::bind(path).map(BoundSocket::Unix)
        }
    }
}

fn bind_tcp(addr: SocketAddr, reuse_port: bool, backlog: u32) -> std::io::Result<TcpListener> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        // Envoy binds `::` dual-stack only when asked (ipv4_compat); default is IPv6 only.
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    TcpListener::from_std(socket.into())
}

/// Per-listener stats (`listener.<address>.*`).
#[derive(Debug)]
struct ListenerStats {
    downstream_cx_total: Arc<Counter>,
    downstream_cx_active: Arc<Gauge>,
    no_filter_chain_match: Arc<Counter>,
}

/// What a filter chain runs, built once per listener with its stats resolved.
#[derive(Clone)]
enum ChainRuntime {
    Http(Arc<HttpContext>),
    Tcp(Arc<TcpContext>),
    /// No filters (valid in Envoy): the connection is closed.
    Close,
}

impl ChainRuntime {
    fn build(chain: &FilterChain, clusters: &Arc<ClusterManager>, store: &Store) -> Self {
        match chain.filters.last() {
            Some(NetworkFilter::HttpConnectionManager(hcm)) => {
                ChainRuntime::Http(Arc::new(HttpContext {
                    hcm: hcm.clone(),
                    clusters: clusters.clone(),
                    stats: HcmStats::new(store, &hcm.stat_prefix),
                }))
            }
            Some(NetworkFilter::TcpProxy(t)) => ChainRuntime::Tcp(Arc::new(TcpContext {
                config: t.clone(),
                stats: TcpStats::new(store, &t.stat_prefix),
            })),
            None => ChainRuntime::Close,
        }
    }
}

/// Accepts connections until `drain` fires, then stops accepting; connections in flight are
/// told to finish (their own drain receivers fire too).
pub async fn run(
    listener: Arc<Listener>,
    socket: BoundSocket,
    clusters: Arc<ClusterManager>,
    store: Arc<Store>,
    mut drain: watch::Receiver<bool>,
    node_address: Option<std::net::IpAddr>,
) {
    let scope = match &socket {
        // Envoy's stat names replace `:` in addresses: `listener.127.0.0.1_8080.*`.
        BoundSocket::Tcp(l) => l
            .local_addr()
            .map(|a| a.to_string().replace(':', "_"))
            .unwrap_or_default(),
        BoundSocket::Unix(_) => listener.name.clone(),
    };
    let scope = if listener.stat_prefix.is_empty() {
        scope
    } else {
        listener.stat_prefix.clone()
    };
    let stats = Arc::new(ListenerStats {
        downstream_cx_total: store.counter(&format!("listener.{scope}.downstream_cx_total")),
        downstream_cx_active: store.gauge(&format!("listener.{scope}.downstream_cx_active")),
        no_filter_chain_match: store.counter(&format!("listener.{scope}.no_filter_chain_match")),
    });
    let runtimes: Vec<ChainRuntime> = listener
        .filter_chains
        .iter()
        .map(|c| ChainRuntime::build(c, &clusters, &store))
        .collect();
    let default_runtime = listener
        .default_filter_chain
        .as_ref()
        .map(|c| ChainRuntime::build(c, &clusters, &store));
    loop {
        let accepted = tokio::select! {
            _ = crate::server::wait_drain(&mut drain) => break,
            accepted = accept(&socket) => accepted,
        };
        let (stream, peer, local) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and similar: log, back off briefly, keep listening.
                tracing::warn!(target: "conn_handler", "listener {}: accept failed: {e}", listener.name);
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        stats.downstream_cx_total.inc();
        let index = select_filter_chain(&listener, local, peer);
        let chain = match index {
            Some(i) => listener.filter_chains.get(i),
            None => listener.default_filter_chain.as_ref(),
        };
        let Some(chain) = chain else {
            stats.no_filter_chain_match.inc();
            tracing::debug!(target: "conn_handler", "listener {}: no filter chain matches {peer:?}", listener.name);
            continue;
        };
        if let Some(transport) = &chain.unsupported_transport {
            tracing::debug!(target: "conn_handler", "listener {}: closing connection: transport socket {transport} is not supported yet", listener.name);
            continue;
        }
        let runtime = match index {
            Some(i) => runtimes.get(i).cloned(),
            None => default_runtime.clone(),
        };
        let stats = stats.clone();
        let drain = drain.clone();
        let clusters = clusters.clone();
        stats.downstream_cx_active.inc();
        tokio::spawn(async move {
            match runtime {
                Some(ChainRuntime::Http(ctx)) => {
                    serve_connection(
                        stream,
                        ctx,
                        Downstream {
                            remote: peer,
                            node_address,
                        },
                        drain,
                    )
                    .await
                }
                Some(ChainRuntime::Tcp(ctx)) => crate::tcp::proxy(stream, ctx, clusters).await,
                Some(ChainRuntime::Close) | None => {}
            }
            stats.downstream_cx_active.dec();
        });
    }
}

/// A downstream stream: TCP or Unix.
pub type DownstreamStream = crate::upstream::Stream;

async fn accept(
    socket: &BoundSocket,
) -> std::io::Result<(DownstreamStream, Option<SocketAddr>, Option<SocketAddr>)> {
    match socket {
        BoundSocket::Tcp(l) => {
            let (stream, peer) = l.accept().await?;
            let _ = stream.set_nodelay(true);
            let local = stream.local_addr().ok();
            Ok((DownstreamStream::Tcp(stream), Some(peer), local))
        }
        BoundSocket::Unix(l) => {
            let (stream, _) = l.accept().await?;
            Ok((DownstreamStream::Unix(stream), None, None))
        }
    }
}
