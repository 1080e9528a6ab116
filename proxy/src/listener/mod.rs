//! Listeners: bind (with SO_REUSEPORT and the configured backlog), accept, choose the filter
//! chain, and hand the connection to its network filter.

mod drains;
mod filter_chain;
mod http_inspector;
mod manager;
mod original_dst;
pub(crate) mod peek;
mod runtime;

pub use manager::{Generation, ListenerError, ListenerManager};

pub use filter_chain::select_filter_chain;
pub use original_dst::original_destination;
pub use runtime::{
    address_scope, is_own_address, local_ips, ChainRuntime, ListenerRuntime, ListenerTable,
};

use crate::config::address::Endpoint;
use crate::config::listener::{Inspector, Listener};
use crate::config::listener_filter_predicate::Predicate;
use crate::http::{serve_connection, Downstream};
use crate::tls::inspector::Detected;
use arc_swap::ArcSwap;
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
        Endpoint::Tcp(addr) => bind_tcp(*addr, listener).map(BoundSocket::Tcp),
        Endpoint::Unix(path) => {
            // A stale socket file from an earlier run would make bind fail.
            let _ = std::fs::remove_file(path);
            UnixListener::bind(path).map(BoundSocket::Unix)
        }
    }
}

fn bind_tcp(addr: SocketAddr, listener: &Listener) -> std::io::Result<TcpListener> {
    let (reuse_port, backlog) = (listener.reuse_port, listener.backlog);
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
    if listener.transparent {
        // TPROXY delivers connections for addresses that are not local: IP_TRANSPARENT lets
        // the socket accept them (needs CAP_NET_ADMIN).
        if addr.is_ipv4() {
            socket.set_ip_transparent_v4(true)?;
        } else {
            socket.set_ip_transparent_v6(true)?;
        }
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    TcpListener::from_std(socket.into())
}

/// Accepts connections until `stop` fires, then closes the socket; each connection is served
/// by the listener's generation current when it was accepted and watches that generation's
/// drain signal. With the `original_dst` filter the connection's pre-redirect destination
/// becomes its local address, and with `use_original_dst` it is handed to the listener at
/// that address.
pub async fn run(
    generation: Arc<ArcSwap<Generation>>,
    socket: BoundSocket,
    table: Arc<ArcSwap<ListenerTable>>,
    mut stop: watch::Receiver<bool>,
    node_address: Option<std::net::IpAddr>,
    drain_timing: crate::server::DrainTiming,
) {
    let bound = match &socket {
        BoundSocket::Tcp(l) => l.local_addr().ok(),
        BoundSocket::Unix(_) => None,
    };
    // Read once: a listener that gains the original_dst filter in an update is rare enough
    // that listing interfaces up front for every TCP listener is the simpler choice.
    let local_ips = if bound.is_some() {
        local_ips()
    } else {
        Vec::new()
    };
    loop {
        let accepted = tokio::select! {
            _ = crate::server::wait_drain(&mut stop) => break,
            accepted = accept(&socket) => accepted,
        };
        let current = generation.load_full();
        let listener = &current.runtime.config;
        let Accepted {
            stream,
            peer,
            mut local,
        } = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and similar: log, back off briefly, keep listening.
                tracing::warn!(target: "conn_handler", "listener {}: accept failed: {e}", listener.name);
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let original = match (&stream, local) {
            (DownstreamStream::Tcp(tcp), Some(l)) if listener.original_dst => {
                original_destination(tcp, l, listener.transparent)
            }
            _ => None,
        };
        let table = table.load();
        let mut target = &current.runtime;
        if let (Some(destination), Some(bound)) = (original, bound) {
            if is_own_address(destination, bound, &local_ips) {
                tracing::debug!(target: "conn_handler", "listener {}: connection to the capture port itself ({destination}) closed", listener.name);
                continue;
            }
            local = Some(destination);
            if listener.use_original_dst {
                if let Some(other) = table.find(destination) {
                    target = other;
                }
            }
        }
        let mut counted = target.stats.accepted();
        let connection_id = crate::http::forwarding::next_connection_id();
        let target = target.clone();
        // The accepting listener's `original_src` applies, also after a hand-off.
        let original_src = listener.original_src.and_then(|mark| {
            peer.map(|p| crate::upstream::transport::OriginalSource { ip: p.ip(), mark })
        });
        let downstream = Downstream {
            remote: peer,
            local,
            node_address,
            connection_id,
            tls: None,
            original_src,
            requested_server_name: None,
        };

        // Listener filters, the chain's transport socket and its network filter run on the
        // connection's own task, so a slow ClientHello or handshake never holds up accepting.
        tokio::spawn(async move {
            counted.activate();
            serve(&target, stream, downstream, drain_timing).await;
        });
    }
}

/// Runs the listener filters, picks the filter chain, terminates TLS if the chain has it and
/// hands the connection to the chain's network filter.
async fn serve(
    target: &ListenerRuntime,
    stream: DownstreamStream,
    downstream: Downstream,
    drain_timing: crate::server::DrainTiming,
) {
    let config = &target.config;
    let Some(detected) = listener_filters(target, &stream, downstream.local).await else {
        tracing::debug!(target: "conn_handler", "listener {}: the client closed or the listener filters timed out; closing", config.name);
        return;
    };
    let chosen = match select_filter_chain(config, downstream.local, downstream.remote, &detected) {
        Some(i) => config.filter_chains.get(i).map(|c| {
            (
                c,
                target.chains.get(i),
                target.tls.get(i).cloned().flatten(),
            )
        }),
        None => config
            .default_filter_chain
            .as_ref()
            .map(|c| (c, target.default_chain.as_ref(), target.default_tls.clone())),
    };
    let Some((chain, Some(chain_runtime), tls)) = chosen else {
        target.stats.no_filter_chain_match.inc();
        target.log_rejected(
            downstream.remote,
            downstream.local,
            downstream.connection_id,
        );
        tracing::debug!(target: "conn_handler", "listener {}: no filter chain matches {:?} ({detected:?})", config.name, downstream.remote);
        return;
    };
    if let Some(transport) = &chain.unsupported_transport {
        tracing::debug!(target: "conn_handler", "listener {}: closing connection: transport socket {transport} is not supported", config.name);
        return;
    }
    let mut downstream = downstream;
    downstream.requested_server_name = detected.sni.as_deref().map(Arc::from);
    let stream = match tls {
        None => stream,
        Some(tls) => match tls.accept(stream).await {
            Ok((s, info)) => {
                downstream.tls = Some(Arc::new(info));
                DownstreamStream::Tls(Box::new(tokio_rustls::TlsStream::Server(s)))
            }
            Err(e) => {
                tracing::debug!(target: "connection", "listener {}: TLS handshake with {:?} failed: {e}", config.name, downstream.remote);
                return;
            }
        },
    };
    // The connection drains with its chain: an update that keeps the chain leaves it alone.
    let drain = crate::server::Drain::new(target.drains.for_chain(chain.fingerprint), drain_timing);
    match chain_runtime.clone() {
        ChainRuntime::Http(ctx) => serve_connection(stream, ctx, downstream, drain).await,
        ChainRuntime::Tcp(ctx) => crate::tcp::proxy(stream, ctx, downstream, drain).await,
        ChainRuntime::Close => {}
    }
}

/// What the listener filters learn for chain matching, each in its configured order; None
/// when the client closes first, or when they time out and the listener says to close
/// (`continue_on_listener_filters_timeout: false`). A timeout that continues matches with
/// what the filters found so far.
async fn listener_filters(
    target: &ListenerRuntime,
    stream: &DownstreamStream,
    local: Option<SocketAddr>,
) -> Option<Detected> {
    let config = &target.config;
    let mut detected = Detected::raw();
    let tcp = match stream {
        DownstreamStream::Tcp(tcp) if !config.inspectors.is_empty() => tcp,
        _ => return Some(detected),
    };
    let port = local.map(|a| a.port());
    let stats = &target.stats;
    stats.downstream_pre_cx_active.inc();
    let inspect = inspect(&config.inspectors, port, target, tcp, &mut detected);
    let finished = match config.listener_filters_timeout {
        None => remote_close(inspect.await, stats),
        Some(limit) => match tokio::time::timeout(limit, inspect).await {
            Ok(finished) => remote_close(finished, stats),
            Err(_) => {
                stats.downstream_pre_cx_timeout.inc();
                config.continue_on_listener_filters_timeout
            }
        },
    };
    stats.downstream_pre_cx_active.dec();
    finished.then_some(detected)
}

/// Counts a client that closed while the listener filters read its first bytes.
fn remote_close(finished: bool, stats: &runtime::ListenerStats) -> bool {
    if !finished {
        stats.downstream_listener_filter_remote_close.inc();
    }
    finished
}

/// Runs the inspecting filters in turn, recording what each finds in `detected`; false when
/// the client closed before they could decide.
async fn inspect(
    inspectors: &[(Inspector, Option<Predicate>)],
    port: Option<u16>,
    target: &ListenerRuntime,
    tcp: &tokio::net::TcpStream,
    detected: &mut Detected,
) -> bool {
    for (inspector, disabled) in inspectors {
        // `filter_disabled`: skipped for connections its predicate matches.
        if disabled.as_ref().is_some_and(|d| d.matches(port)) {
            continue;
        }
        match inspector {
            Inspector::Tls => match crate::tls::inspector::inspect(tcp).await {
                // Envoy's TLS inspector reports only what it finds: a plaintext connection keeps
                // the application protocol an HTTP inspector before it found.
                Some(found) if found.transport == "tls" => *detected = found,
                Some(_) => {}
                None => return false,
            },
            // Envoy's HTTP inspector leaves connections that some filter found to be TLS alone.
            Inspector::Http if detected.transport == "tls" => {}
            Inspector::Http => {
                let Some(stats) = &target.http_inspector else {
                    continue;
                };
                match http_inspector::inspect(tcp, stats).await {
                    Some(verdict) => {
                        if let Some(alpn) = verdict.alpn() {
                            detected.alpn = vec![alpn.to_string()];
                        }
                    }
                    None => return false,
                }
            }
        }
    }
    true
}

/// A downstream stream: TCP or Unix.
pub type DownstreamStream = crate::upstream::Stream;

struct Accepted {
    stream: DownstreamStream,
    peer: Option<SocketAddr>,
    local: Option<SocketAddr>,
}

async fn accept(socket: &BoundSocket) -> std::io::Result<Accepted> {
    match socket {
        BoundSocket::Tcp(l) => {
            let (stream, peer) = l.accept().await?;
            let _ = stream.set_nodelay(true);
            let local = stream.local_addr().ok();
            Ok(Accepted {
                stream: DownstreamStream::Tcp(stream),
                peer: Some(peer),
                local,
            })
        }
        BoundSocket::Unix(l) => {
            let (stream, _) = l.accept().await?;
            Ok(Accepted {
                stream: DownstreamStream::Unix(stream),
                peer: None,
                local: None,
            })
        }
    }
}
