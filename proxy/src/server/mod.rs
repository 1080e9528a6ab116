//! Running the proxy: logging, the runtime, clusters, listeners and the admin server, from
//! startup to shutdown.

pub mod process_stats;
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
    pub timing: DrainTiming,
    /// How long after the drain started this connection was told to wind down.
    told_after: std::time::Duration,
}

/// `--drain-time-s` and `--drain-strategy`.
/// Envoy: https://www.envoyproxy.io/docs/envoy/latest/operations/cli#cmdoption-drain-strategy
#[derive(Debug, Clone, Copy)]
pub struct DrainTiming {
    pub window: std::time::Duration,
    /// `gradual` (Envoy's default): connections are told to wind down at moments spread over
    /// the window; `immediate`: all at its start.
    pub gradual: bool,
}

impl Drain {
    pub fn new(signal: watch::Receiver<bool>, timing: DrainTiming) -> Self {
        Drain {
            signal,
            timing,
            told_after: std::time::Duration::ZERO,
        }
    }

    /// Resolves when the listener starts draining.
    pub async fn started(&mut self) {
        wait_drain(&mut self.signal).await;
    }

    /// Resolves when this connection is to wind down: when the drain starts, or, with the
    /// gradual strategy, at a random moment within the drain time, so that connections leave
    /// over it rather than all at once (Envoy's drain manager calls its connections back so).
    pub async fn told(&mut self) {
        self.started().await;
        if self.timing.gradual {
            let window = self.timing.window.as_millis() as u64;
            let delay = std::time::Duration::from_millis(crate::random::below(window));
            tokio::time::sleep(delay).await;
            self.told_after = delay;
        }
    }

    /// Resolves at the end of the drain time: time is up for the connection.
    pub async fn expired(&mut self) {
        self.started().await;
        let left = self.timing.window.saturating_sub(self.told_after);
        tokio::time::sleep(left).await;
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

/// [`main`] with resource types the agent consumes over the ADS stream (NDS for the DNS
/// proxy), registered before xDS starts.
pub fn main_with(options: Options, agent_types: Vec<crate::xds::AgentType>) -> ExitCode {
    let Some(logging) = install_logging(&options) else {
        return ExitCode::FAILURE;
    };
    let loaded = match bootstrap::load(&options.sources()) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(target: "main", "error initializing configuration: {e}");
            eprintln!("error initializing configuration: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some((config, runtime, workers)) = prepare(&options, &loaded, |_| {}) else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async move {
        let init_only = options.mode == Mode::InitOnly;
        let proxy = match Proxy::start(options, loaded.bootstrap, config, logging, workers).await {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        for agent_type in agent_types {
            proxy.server.agent_types.register(agent_type);
        }
        proxy.start_dynamic();
        if init_only {
            return ExitCode::SUCCESS;
        }
        proxy.serve();
        wait_for_shutdown(&proxy.server).await;
        tracing::info!(target: "main", "shutting down");
        proxy.finish().await;
        ExitCode::SUCCESS
    })
}

/// Installs logging from the command line; prints the error and returns None when it cannot.
pub fn install_logging(options: &Options) -> Option<LogControl> {
    match LogControl::install(
        &options.log_level,
        options.component_log_level.as_deref(),
        options.log_path.as_deref(),
    ) {
        Ok(l) => Some(l),
        Err(e) => {
            eprintln!("error: {e}");
            None
        }
    }
}

/// Translates a loaded bootstrap and builds the runtime with one worker per `--concurrency`
/// (default: the cores). `adjust` sees the translated config before it is frozen (the sidecar
/// agent sets what no bootstrap field can say). Errors are printed; None means exit with
/// failure.
pub fn prepare(
    options: &Options,
    loaded: &bootstrap::Loaded,
    adjust: impl FnOnce(&mut Config),
) -> Option<(Arc<Config>, tokio::runtime::Runtime, usize)> {
    for field in &loaded.unknown_fields {
        tracing::warn!(target: "config", "ignored unknown field: {field}");
    }
    let config = match config::translate_bootstrap(&loaded.bootstrap) {
        Ok(mut c) => {
            adjust(&mut c);
            Arc::new(c)
        }
        Err(e) => {
            tracing::error!(target: "main", "error initializing configuration: {e}");
            eprintln!("error initializing configuration: {e}");
            return None;
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
            return None;
        }
    };
    // Build the descriptor pool now so the first /config_dump does not pay for it.
    let _ = xds_proto::descriptor_pool();
    Some((config, runtime, workers))
}

/// The running proxy: what `main` (or the sidecar agent, which runs the proxy in its own
/// process) starts and later stops.
pub struct Proxy {
    pub server: Arc<Server>,
    pub listeners: Arc<ListenerManager>,
    clusters: Arc<ClusterManager>,
    config: Arc<Config>,
    files: Arc<crate::access_log::Files>,
}

impl Proxy {
    /// Starts clusters, the admin API and the static listeners. A listener that cannot bind is
    /// a startup error, reported before anything dynamic starts.
    pub async fn start(
        options: Options,
        bootstrap: xds_proto::pb::envoy::config::bootstrap::v3::Bootstrap,
        config: Arc<Config>,
        logging: LogControl,
        workers: usize,
    ) -> Result<Proxy, String> {
        let stats = Store::with_config(config.stats.clone());
        stats.gauge("server.concurrency").set(workers as u64);
        process_stats::register(
            &stats,
            &process_stats::Startup {
                restart_epoch: options.restart_epoch,
                version_override: bootstrap
                    .stats_server_version_override
                    .as_ref()
                    .map(|v| v.value),
            },
        );
        let clusters = Arc::new(ClusterManager::new(
            config.cluster_slots.clone(),
            &config.clusters,
            &stats,
        ));
        clusters.start_discovery();
        let server = Server::new(
            options,
            bootstrap,
            config.clone(),
            stats.clone(),
            logging,
            clusters.clone(),
        );

        if let Some(address) = &config.admin_address {
            let crate::config::address::Endpoint::Tcp(addr) = address else {
                return Err("the admin address must be a TCP socket address".to_string());
            };
            let socket = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot bind the admin address {addr}: {e}"))?;
            let bound = socket
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            println!("admin: http://{bound}/ (config_dump, stats, clusters, listeners, ready)");
            tokio::spawn(crate::admin::serve(server.clone(), socket));
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
            listeners
                .add_or_update(l.clone(), true)
                .map_err(|e| e.to_string())?;
        }
        Ok(Proxy {
            server,
            listeners,
            clusters,
            config,
            files,
        })
    }

    /// Starts xDS (files and ADS). Without dynamic resources the server is LIVE at once; with
    /// ADS the client reports LIVE once the initial resources are warm.
    pub fn start_dynamic(&self) {
        let stats = &self.server.stats;
        record_listener_manager_stats(stats);
        if !crate::xds::spawn(&self.server, &self.clusters, &self.listeners, &self.config) {
            self.server.go_live();
        }
    }

    /// The background duties of a serving proxy: drains asked for by the admin API, pruning
    /// drained listeners, uptime.
    pub fn serve(&self) {
        tokio::spawn(forward_drains(
            self.server.drain_signal(),
            self.listeners.clone(),
        ));
        tokio::spawn(watch_drains(self.listeners.clone()));
        tokio::spawn(track_uptime(self.server.clone()));
        tokio::spawn(refresh_certificates(self.server.tls_contexts.clone()));
    }

    /// Flushes what must not be lost at exit (buffered access logs).
    pub async fn finish(&self) {
        self.files.flush_all().await;
    }
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
            listeners.drain(r.inbound_only, r.graceful);
        }
    }
}

async fn track_uptime(server: Arc<Server>) {
    let uptime = server.stats.gauge("server.uptime");
    let memory = process_stats::Memory::new(&server.stats);
    loop {
        uptime.set(server.uptime().as_secs());
        memory.refresh();
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// `server.days_until_first_cert_expiring` follows the clock, and the gauges of contexts that
/// are gone go with them.
async fn refresh_certificates(contexts: Arc<crate::tls::ContextManager>) {
    loop {
        tokio::time::sleep(crate::tls::REFRESH_INTERVAL).await;
        contexts.refresh();
    }
}

/// Resolves on `/quitquitquit`, SIGINT or SIGTERM.
pub async fn wait_for_shutdown(server: &Server) {
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
    // Set by `Server::go_live` once initialisation is over.
    stats.gauge("listener_manager.workers_started");
}
