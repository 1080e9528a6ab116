//! Running the proxy: logging, the runtime, clusters, listeners and the admin server, from
//! startup to shutdown.

pub mod state;
pub use state::{BoundListener, DrainRequest, Server, ServerState};

use crate::cli::{Mode, Options};
use crate::config::Config;
use crate::listener::ListenerManager;
use crate::logging::LogControl;
use crate::stats::Store;
use crate::upstream::ClusterManager;
use crate::{bootstrap, config};
use std::process::ExitCode;
use std::sync::Arc;
use tokio::sync::watch;

/// What a connection watches to know it must wind down: the drain signal of its listener
/// generation, and how long it may take to finish after it (`--drain-time-s`) before it is
/// closed regardless.
#[derive(Debug, Clone)]
pub struct Drain {
    pub signal: watch::Receiver<bool>,
    pub window: std::time::Duration,
}

impl Drain {
    /// Resolves when the listener starts draining.
    pub async fn started(&mut self) {
        wait_drain(&mut self.signal).await;
    }

    /// Resolves `window` after the drain started: time is up for the connection.
    pub async fn expired(&mut self) {
        self.started().await;
        tokio::time::sleep(self.window).await;
    }
}

/// Resolves once `drain` is set (or its sender is gone). `wait_for` returns a guard that is
/// not `Send`; it is dropped here so callers can use this inside `select!` in spawned tasks.
pub async fn wait_drain(drain: &mut watch::Receiver<bool>) {
    let _ = drain.wait_for(|d| *d).await;
}

pub fn main(options: Options) -> ExitCode {
    main_with(options, Vec::new())
}

/// [`main`] for sidecar mode: `agent_types` are the resource types the agent consumes over the
/// ADS stream (NDS for the DNS proxy), registered before xDS starts.
pub fn main_with(options: Options, agent_types: Vec<crate::xds::AgentType>) -> ExitCode {
    let logging = match LogControl::install(
        &options.log_level,
        options.component_log_level.as_deref(),
        options.log_path.as_deref(),
    ) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let loaded = match bootstrap::load(&options.sources()) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(target: "main", "error initializing configuration: {e}");
            eprintln!("error initializing configuration: {e}");
            return ExitCode::FAILURE;
        }
    };
    for field in &loaded.unknown_fields {
        tracing::warn!(target: "config", "ignored unknown field: {field}");
    }
    let config = match config::translate_bootstrap(&loaded.bootstrap) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            tracing::error!(target: "main", "error initializing configuration: {e}");
            eprintln!("error initializing configuration: {e}");
            return ExitCode::FAILURE;
        }
    };
    for ack in &config.acknowledged {
        tracing::warn!(target: "config", "{} is accepted but not acted on: {}", ack.path, ack.reason);
    }
    let workers = options.concurrency.filter(|c| *c > 0).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Build the descriptor pool now so the first /config_dump does not pay for it.
    let _ = xds_proto::descriptor_pool();
    runtime.block_on(run(
        options,
        loaded.bootstrap,
        config,
        logging,
        workers,
        agent_types,
    ))
}

async fn run(
    options: Options,
    bootstrap: xds_proto::pb::envoy::config::bootstrap::v3::Bootstrap,
    config: Arc<Config>,
    logging: LogControl,
    workers: usize,
    agent_types: Vec<crate::xds::AgentType>,
) -> ExitCode {
    let stats = Store::with_config(config.stats.clone());
    stats.gauge("server.concurrency").set(workers as u64);
    let clusters = Arc::new(ClusterManager::new(
        config.cluster_slots.clone(),
        &config.clusters,
        &stats,
    ));
    clusters.start_discovery();
    let init_only = options.mode == Mode::InitOnly;
    let server = Server::new(
        options,
        bootstrap,
        config.clone(),
        stats.clone(),
        logging,
        clusters.clone(),
    );
    server.set_state(ServerState::Initializing);
    for agent_type in agent_types {
        server.agent_types.register(agent_type);
    }

    if let Some(address) = &config.admin_address {
        let crate::config::address::Endpoint::Tcp(addr) = address else {
            eprintln!("error: the admin address must be a TCP socket address");
            return ExitCode::FAILURE;
        };
        match tokio::net::TcpListener::bind(addr).await {
            Ok(socket) => {
                let bound = socket
                    .local_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                println!("admin: http://{bound}/ (config_dump, stats, clusters, listeners, ready)");
                tokio::spawn(crate::admin::serve(server.clone(), socket));
            }
            Err(e) => {
                eprintln!("error: cannot bind the admin address {addr}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }

    let node_address = node_address(server.options.local_address_ip_version);
    let files = Arc::new(crate::access_log::Files::new(
        std::time::Duration::from_millis(server.options.file_flush_interval_msec),
        server
            .options
            .file_flush_min_size_kb
            .map(|kb| kb as usize * 1024),
        stats.clone(),
    ));
    let listeners = ListenerManager::new(
        server.clone(),
        clusters.clone(),
        node_address,
        files.clone(),
    );
    // Static listeners bind before the server reports LIVE: a conflict is a startup error.
    for l in &config.listeners {
        if let Err(e) = listeners.add_or_update(l.clone(), true) {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    // With ADS the client reports LIVE once the initial resources are warm.
    if !crate::xds::spawn(&server, &clusters, &listeners, &config) {
        server.set_state(ServerState::Live);
        stats.gauge("server.live").set(1);
    }
    record_listener_manager_stats(&stats);
    if init_only {
        return ExitCode::SUCCESS;
    }
    tokio::spawn(forward_drains(server.drain_signal(), listeners.clone()));
    tokio::spawn(watch_drains(listeners.clone()));
    tokio::spawn(track_uptime(server.clone()));
    wait_for_shutdown(&server).await;
    tracing::info!(target: "main", "shutting down");
    files.flush_all().await;
    ExitCode::SUCCESS
}

/// Notices when replaced listeners have drained (their config_dump `draining_state` and the
/// `total_listeners_draining` gauge).
async fn watch_drains(listeners: Arc<ListenerManager>) {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        listeners.prune_draining();
    }
}

/// Turns `/drain_listeners` requests into the listeners' drain.
async fn forward_drains(
    mut requests: watch::Receiver<Option<DrainRequest>>,
    listeners: Arc<ListenerManager>,
) {
    while requests.changed().await.is_ok() {
        let request = *requests.borrow_and_update();
        if let Some(r) = request {
            listeners.drain(r.inbound_only);
        }
    }
}

async fn track_uptime(server: Arc<Server>) {
    let uptime = server.stats.gauge("server.uptime");
    loop {
        uptime.set(server.uptime().as_secs());
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

async fn wait_for_shutdown(server: &Server) {
    let mut shutdown = server.shutdown_signal();
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = shutdown.wait_for(|s| *s) => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}

/// Envoy's "local address": the first non-loopback address of the requested family on this
/// host's interfaces. It stands in for loopback peers in `x-forwarded-for`.
fn node_address(version: crate::cli::IpVersion) -> Option<std::net::IpAddr> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    addrs
        .filter_map(|ifa| ifa.address)
        .filter_map(|a| {
            if let Some(v4) = a.as_sockaddr_in() {
                Some(std::net::IpAddr::V4(v4.ip()))
            } else {
                a.as_sockaddr_in6().map(|v6| std::net::IpAddr::V6(v6.ip()))
            }
        })
        .find(|ip| !ip.is_loopback() && ip.is_ipv4() == (version == crate::cli::IpVersion::V4))
}

/// `listener_manager.*` names Envoy creates at startup; the listener manager counts into them.
fn record_listener_manager_stats(stats: &Store) {
    for name in [
        "listener_added",
        "listener_create_success",
        "listener_create_failure",
        "listener_modified",
        "listener_removed",
        "listener_stopped",
        "listener_in_place_updated",
    ] {
        stats.counter(&format!("listener_manager.{name}"));
    }
    for name in [
        "total_listeners_warming",
        "total_listeners_draining",
        "total_filter_chains_draining",
    ] {
        stats.gauge(&format!("listener_manager.{name}")).set(0);
    }
    stats.gauge("listener_manager.workers_started").set(1);
}
