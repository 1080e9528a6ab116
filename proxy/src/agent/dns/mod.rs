//! pilot-agent's DNS proxy (`localhost:15053`, UDP and TCP): names from the NDS name table are
//! answered locally, everything else is forwarded to the resolv.conf nameservers. The table is
//! swapped atomically when istiod sends a new one; queries never wait for the control plane.
//!
//! Use: [`DnsProxy::start`] with a [`DnsConfig`], then hand tables in with
//! [`DnsProxy::update`] or register [`DnsProxy::nds_consumer`] with the ADS client.

pub mod config;
mod forward;
pub mod metrics;
pub mod nds;
mod server;
pub mod table;

pub use config::{enabled_from_env, DnsConfig};
pub use metrics::DnsMetrics;
pub use nds::{NameInfo, NameTable, NAME_TABLE_TYPE_URL};

use arc_swap::ArcSwapOption;
use forward::Forwarder;
use std::net::SocketAddr;
use std::sync::Arc;
use table::{LocalContext, LookupTable};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("failed to load {path}: {source}")]
    ResolvConf {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Address(std::io::Error),
    #[error("failed to listen on {protocol} {addr}: {source}")]
    Bind {
        protocol: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What the listeners share with the handle.
struct Shared {
    table: ArcSwapOption<LookupTable>,
    /// The table as received, for `/debug/ndsz`.
    name_table: ArcSwapOption<NameTable>,
    context: LocalContext,
    forwarder: Forwarder,
    /// Forward instead of SERVFAIL while no table has arrived (only when serving on :53).
    respond_before_sync: bool,
    metrics: DnsMetrics,
    ready: watch::Sender<bool>,
}

/// A running DNS proxy. Dropping the handle stops the listeners.
pub struct DnsProxy {
    shared: Arc<Shared>,
    udp: Vec<SocketAddr>,
    tcp: Vec<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for DnsProxy {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl DnsProxy {
    /// Reads resolv.conf, binds UDP and TCP on every address `config.addr` stands for (port 0
    /// picks one free port shared by all of them) and starts serving. Must run inside a tokio
    /// runtime. Until a table arrives, queries get SERVFAIL (as pilot-agent's do).
    pub async fn start(config: DnsConfig) -> Result<DnsProxy, DnsError> {
        let is_root = nix::unistd::getuid().is_root();
        let (addr, resolv_path, respond_before_sync) = config::effective_addr(&config, is_root);
        let resolv =
            config::ResolvConf::read(&resolv_path).map_err(|source| DnsError::ResolvConf {
                path: resolv_path.display().to_string(),
                source,
            })?;
        tracing::debug!(target: "dns", "initialized DNS: search {:?}, servers {:?}", resolv.search, resolv.nameservers);
        let addrs = config::listen_addrs(&addr, &resolv.nameservers)
            .await
            .map_err(DnsError::Address)?;
        let (udp_sockets, tcp_listeners) = bind_all(&addrs).await?;
        let (ready, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            table: ArcSwapOption::empty(),
            name_table: ArcSwapOption::empty(),
            context: LocalContext::new(&config.namespace, &config.domain, resolv.search),
            forwarder: Forwarder {
                servers: resolv
                    .nameservers
                    .iter()
                    .map(|ip| SocketAddr::new(*ip, config.upstream_port))
                    .collect(),
                parallel: config.forward_parallel,
                timeout: config.forward_timeout,
            },
            respond_before_sync,
            metrics: DnsMetrics::default(),
            ready,
        });
        let mut proxy = DnsProxy {
            shared: shared.clone(),
            udp: Vec::new(),
            tcp: Vec::new(),
            tasks: Vec::new(),
        };
        for socket in udp_sockets {
            let local = socket.local_addr().map_err(DnsError::Address)?;
            tracing::info!(target: "dns", "Starting local udp DNS server on {local}");
            proxy.udp.push(local);
            proxy.tasks.push(tokio::spawn(server::serve_udp(
                Arc::new(socket),
                shared.clone(),
            )));
        }
        for listener in tcp_listeners {
            let local = listener.local_addr().map_err(DnsError::Address)?;
            tracing::info!(target: "dns", "Starting local tcp DNS server on {local}");
            proxy.tcp.push(local);
            proxy
                .tasks
                .push(tokio::spawn(server::serve_tcp(listener, shared.clone())));
        }
        Ok(proxy)
    }

    /// Replaces the table; the next query sees the new one. Cheap enough to call per push.
    pub fn update(&self, table: NameTable) {
        update(&self.shared, table);
    }

    /// The ADS hook for NDS: decodes the first resource of a response and swaps the table in.
    /// An undecodable one is refused (the stream NACKs it) and the current table stays.
    pub fn nds_consumer(&self) -> crate::xds::AgentType {
        let shared = Arc::downgrade(&self.shared);
        crate::xds::AgentType {
            type_url: NAME_TABLE_TYPE_URL.to_string(),
            consume: Arc::new(move |resources| {
                // istiod sends the table as one resource; only the first is read, as in Istio.
                let Some(first) = resources.first() else {
                    return Ok(());
                };
                let table = nds::decode(first).inspect_err(|e| {
                    tracing::error!(target: "dns", "{e}");
                })?;
                if let Some(shared) = shared.upgrade() {
                    update(&shared, table);
                }
                Ok(())
            }),
        }
    }

    /// Whether a table has arrived: pilot-agent's readiness requires it when DNS capture is on.
    pub fn is_ready(&self) -> bool {
        *self.shared.ready.borrow()
    }

    /// Turns true once, when the first table arrives.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.shared.ready.subscribe()
    }

    /// `/debug/ndsz`: the table as received plus every derived name not already in it (with
    /// its addresses and registry `Kubernetes`), as proto3 JSON; None before the first table
    /// (pilot-agent then answers 404 with `{}`).
    pub fn ndsz(&self) -> Option<String> {
        let received = self.shared.name_table.load_full()?;
        let mut table = (*received).clone();
        self.shared
            .context
            .for_each_entry(&received, |hosts, v4, v6| {
                for host in hosts {
                    if table.table.contains_key(host) {
                        continue;
                    }
                    let ips = v4
                        .iter()
                        .map(|ip| ip.to_string())
                        .chain(v6.iter().map(|ip| ip.to_string()))
                        .collect();
                    table.table.insert(
                        host.clone(),
                        NameInfo {
                            ips,
                            registry: nds::KUBERNETES_REGISTRY.to_string(),
                            ..Default::default()
                        },
                    );
                }
            });
        Some(nds::to_json(&table))
    }

    pub fn metrics(&self) -> &DnsMetrics {
        &self.shared.metrics
    }

    /// The bound UDP addresses (one per address family served).
    pub fn udp_addrs(&self) -> &[SocketAddr] {
        &self.udp
    }

    pub fn tcp_addrs(&self) -> &[SocketAddr] {
        &self.tcp
    }
}

fn update(shared: &Shared, table: NameTable) {
    let lookup = LookupTable::build(&table, &shared.context);
    tracing::debug!(target: "dns", "updated lookup table with {} hosts", lookup.len());
    shared.table.store(Some(Arc::new(lookup)));
    shared.name_table.store(Some(Arc::new(table)));
    shared.ready.send_replace(true);
}

/// Binds UDP then TCP on each address. With port 0, the first UDP socket picks the port and
/// everything else binds that same one, so a client needs one port for both transports; a
/// port some other process holds for TCP makes it pick again.
async fn bind_all(addrs: &[SocketAddr]) -> Result<(Vec<UdpSocket>, Vec<TcpListener>), DnsError> {
    let pick = addrs.first().is_some_and(|a| a.port() == 0);
    let attempts = if pick { 20 } else { 1 };
    let mut last_error = None;
    for _ in 0..attempts {
        match bind_once(addrs, pick).await {
            Ok(bound) => return Ok(bound),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error
        .unwrap_or_else(|| DnsError::Address(std::io::Error::other("no address to listen on"))))
}

async fn bind_once(
    addrs: &[SocketAddr],
    pick: bool,
) -> Result<(Vec<UdpSocket>, Vec<TcpListener>), DnsError> {
    let mut port = addrs.first().map(|a| a.port()).unwrap_or(0);
    let (mut udp, mut tcp) = (Vec::new(), Vec::new());
    for addr in addrs {
        let addr = SocketAddr::new(addr.ip(), port);
        let socket = UdpSocket::bind(addr)
            .await
            .map_err(|source| DnsError::Bind {
                protocol: "udp",
                addr,
                source,
            })?;
        if pick && port == 0 {
            port = socket.local_addr().map_err(DnsError::Address)?.port();
        }
        udp.push(socket);
    }
    for addr in addrs {
        let addr = SocketAddr::new(addr.ip(), port);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| DnsError::Bind {
                protocol: "tcp",
                addr,
                source,
            })?;
        tcp.push(listener);
    }
    Ok((udp, tcp))
}
