//! The running server's shared state: what the admin API reads and the knobs it turns.

use crate::cli::Options;
use crate::config::Config;
use crate::logging::LogControl;
use crate::stats::{Gauge, Store};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tokio::sync::watch;
use xds_proto::pb::envoy::config::bootstrap::v3::Bootstrap;

/// Envoy's `ServerInfo.State`, with Envoy's numbering (the `server.state` gauge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ServerState {
    Live = 0,
    Draining = 1,
    PreInitializing = 2,
    Initializing = 3,
}

impl ServerState {
    pub fn name(self) -> &'static str {
        match self {
            ServerState::Live => "LIVE",
            ServerState::Draining => "DRAINING",
            ServerState::PreInitializing => "PRE_INITIALIZING",
            ServerState::Initializing => "INITIALIZING",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            0 => ServerState::Live,
            1 => ServerState::Draining,
            2 => ServerState::PreInitializing,
            _ => ServerState::Initializing,
        }
    }
}

/// Which listeners a drain applies to (`/drain_listeners?inboundonly`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainRequest {
    pub inbound_only: bool,
    pub graceful: bool,
}

/// A listener as bound, for `/listeners` and tests.
#[derive(Debug, Clone)]
pub struct BoundListener {
    pub name: String,
    /// The actual local address (port 0 resolved), or the socket path.
    pub address: String,
    /// Whether the bootstrap marks it inbound (`traffic_direction: INBOUND`).
    pub inbound: bool,
}

pub struct Server {
    pub options: Options,
    pub bootstrap: Bootstrap,
    pub config: Arc<Config>,
    pub stats: Arc<Store>,
    pub logging: LogControl,
    pub clusters: Arc<crate::upstream::ClusterManager>,
    /// Every TLS context in use (shared with the cluster manager, which starts first).
    pub tls_contexts: Arc<crate::tls::ContextManager>,
    /// What the control plane sent, for `/config_dump`.
    pub xds: Arc<crate::xds::Records>,
    /// Types the agent consumes from the ADS stream (NDS, PCDS); empty for an Envoy
    /// bootstrap. Registered before xDS starts (see `server::main_with`).
    pub agent_types: crate::xds::AgentTypes,
    /// The Zipkin reporters, one per collector, shared by connection managers.
    pub tracers: crate::http::tracing::Reporters,
    pub started_at: Instant,
    pub started_wall: SystemTime,
    state: AtomicU8,
    state_gauge: Arc<Gauge>,
    health_check_failed: AtomicBool,
    listeners: std::sync::Mutex<Vec<BoundListener>>,
    shutdown: watch::Sender<bool>,
    drain: watch::Sender<Option<DrainRequest>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// How connections drain: `--drain-time-s` and `--drain-strategy`.
    pub fn drain_timing(&self) -> super::DrainTiming {
        super::DrainTiming {
            window: std::time::Duration::from_secs(self.options.drain_time_s),
            gradual: self.options.drain_strategy == crate::cli::DrainStrategy::Gradual,
        }
    }

    pub fn new(
        options: Options,
        bootstrap: Bootstrap,
        config: Arc<Config>,
        stats: Arc<Store>,
        logging: LogControl,
        clusters: Arc<crate::upstream::ClusterManager>,
    ) -> Arc<Self> {
        let state_gauge = stats.gauge("server.state");
        state_gauge.set(ServerState::PreInitializing as u64);
        Arc::new(Self {
            options,
            bootstrap,
            config,
            stats,
            logging,
            tls_contexts: clusters.tls_contexts.clone(),
            clusters,
            xds: Arc::default(),
            agent_types: crate::xds::AgentTypes::default(),
            tracers: Default::default(),
            started_at: Instant::now(),
            started_wall: SystemTime::now(),
            state: AtomicU8::new(ServerState::PreInitializing as u8),
            state_gauge,
            health_check_failed: AtomicBool::new(false),
            listeners: std::sync::Mutex::new(Vec::new()),
            shutdown: watch::channel(false).0,
            drain: watch::channel(None).0,
        })
    }

    pub fn state(&self) -> ServerState {
        ServerState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub fn set_state(&self, state: ServerState) {
        self.state.store(state as u8, Ordering::Release);
        self.state_gauge.set(state as u64);
    }

    /// Initialisation is over: the server is LIVE (unless it already drains) and, as Envoy
    /// logs it, "starting workers".
    pub fn go_live(&self) {
        if self.state() != ServerState::Draining {
            self.set_state(ServerState::Live);
            self.stats.gauge("server.live").set(1);
        }
        let workers_started = self.stats.gauge("listener_manager.workers_started");
        if workers_started.value() == 0 {
            // From start-up until the workers take connections, as Envoy measures it.
            self.stats
                .histogram("server.initialization_time_ms")
                .record(self.started_at.elapsed().as_secs_f64() * 1000.0);
        }
        workers_started.set(1);
    }

    /// `/healthcheck/fail` and `/healthcheck/ok`.
    pub fn set_health_check_failed(&self, failed: bool) {
        self.health_check_failed.store(failed, Ordering::Release);
        // Envoy reports a failing server as not live.
        self.stats.gauge("server.live").set(u64::from(!failed));
    }

    pub fn health_check_failed(&self) -> bool {
        self.health_check_failed.load(Ordering::Acquire)
    }

    pub fn uptime(&self) -> std::time::Duration {
        self.started_at.elapsed()
    }

    /// `/quitquitquit` and signals.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// `/drain_listeners`: listeners stop accepting; existing connections finish. The server
    /// state stays LIVE, as in Envoy 1.40 (only shutdown and `/healthcheck/fail` change it).
    pub fn drain_listeners(&self, request: DrainRequest) {
        self.drain.send_replace(Some(request));
    }

    pub fn drain_signal(&self) -> watch::Receiver<Option<DrainRequest>> {
        self.drain.subscribe()
    }

    pub fn add_bound_listener(&self, listener: BoundListener) {
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(listener);
    }

    pub fn remove_bound_listener(&self, name: &str) {
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|l| l.name != name);
    }

    pub fn bound_listeners(&self) -> Vec<BoundListener> {
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
