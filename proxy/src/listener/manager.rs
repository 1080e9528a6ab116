//! The set of listeners as it changes: static ones at startup, then LDS adds, replaces and
//! removes listeners while traffic flows.
//!
//! A replaced listener keeps its socket when its address is unchanged (no connection is
//! refused during the swap): new connections go to the new configuration at once, and the
//! connections of the old one are told to drain (HTTP finishes in-flight requests, then
//! closes). When only filter chains changed, only the connections of the changed chains
//! drain. A removed listener stops accepting, closes its socket and drains its connections.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/listeners/lds

use super::drains::ChainDrainSenders;
use super::runtime::{address_scope, ListenerRuntime, ListenerTable};
use super::{bind, BoundSocket};
use crate::access_log::Files;
use crate::config::address::Endpoint;
use crate::config::dynamic::AdsConfig;
use crate::config::listener::Listener;
use crate::server::{BoundListener, Server};
use crate::upstream::ClusterManager;
use arc_swap::ArcSwap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::watch;

/// What an accept loop serves new connections with: the listener's current runtime (with
/// the drain signals its connections watch). Replaced as a whole when the listener changes.
pub struct Generation {
    pub runtime: Arc<ListenerRuntime>,
}

/// A replaced or removed listener generation, draining until the drain time is up (as in
/// Envoy, for the whole drain time even once its last connection closed).
struct Draining {
    /// The configuration draining: its connections still route with its tables.
    config: Arc<Listener>,
    until: Instant,
    /// Filter chains of an in-place update (`total_filter_chains_draining`); None for a whole
    /// listener (`total_listeners_draining`).
    filter_chains: Option<usize>,
}

struct Active {
    config: Arc<Listener>,
    /// The stat scope, fixed when the socket was bound (`127.0.0.1_8080`).
    scope: String,
    generation: Arc<ArcSwap<Generation>>,
    /// Drains the connections of each filter chain of the current configuration.
    drains: ChainDrainSenders,
    /// Stops the accept loop (and so closes the socket).
    stop: watch::Sender<bool>,
    /// Added from the bootstrap: LDS may not change or remove it.
    from_bootstrap: bool,
}

pub struct ListenerManager {
    server: Arc<Server>,
    /// The access log files every listener's loggers write to.
    files: Arc<Files>,
    clusters: Arc<ClusterManager>,
    node_address: Option<IpAddr>,
    table: Arc<ArcSwap<ListenerTable>>,
    active: Mutex<Vec<Active>>,
    draining: Mutex<Vec<Draining>>,
}

/// Why a listener could not be added or changed; the LDS response is rejected with it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ListenerError(pub String);

impl ListenerManager {
    pub fn new(
        server: Arc<Server>,
        clusters: Arc<ClusterManager>,
        node_address: Option<IpAddr>,
        files: Arc<Files>,
    ) -> Arc<Self> {
        Arc::new(Self {
            server,
            files,
            clusters,
            node_address,
            table: Arc::new(ArcSwap::from_pointee(ListenerTable::default())),
            active: Mutex::new(Vec::new()),
            draining: Mutex::new(Vec::new()),
        })
    }

    /// Adds a listener, or replaces the one of the same name. Binds before anything changes,
    /// so a bind failure leaves the running listeners as they were.
    pub fn add_or_update(
        &self,
        config: Arc<Listener>,
        from_bootstrap: bool,
    ) -> Result<(), ListenerError> {
        let mut active = self.lock();
        if let Some(other) = active.iter().find(|a| {
            a.config.name != config.name
                && a.config.address == config.address
                && a.config.bind_to_port
                && config.bind_to_port
                && !is_port_zero(&config.address)
        }) {
            return Err(ListenerError(format!(
                "error adding listener '{}': listener '{}' has duplicate address '{}' as existing listener",
                config.address, config.name, other.config.name
            )));
        }
        let existing = active.iter().position(|a| a.config.name == config.name);
        if let Some(i) = existing {
            let old = &active[i];
            if old.from_bootstrap && !from_bootstrap {
                return Err(ListenerError(format!(
                    "listener '{}' was added by the bootstrap and cannot be changed by LDS",
                    config.name
                )));
            }
            if old.config.address == config.address
                && old.config.bind_to_port == config.bind_to_port
            {
                self.replace_in_place(&mut active[i], config);
                self.server
                    .stats
                    .counter("listener_manager.listener_modified")
                    .inc();
                self.rebuild_table(&active);
                return Ok(());
            }
        }
        let socket = if config.bind_to_port {
            Some(bind(&config).map_err(|e| {
                self.server
                    .stats
                    .counter("listener_manager.listener_create_failure")
                    .inc();
                ListenerError(format!(
                    "cannot bind '{}' for listener '{}': {e}",
                    config.address, config.name
                ))
            })?)
        } else {
            None
        };
        if let Some(i) = existing {
            let old = active.remove(i);
            self.retire(old);
            self.server
                .stats
                .counter("listener_manager.listener_modified")
                .inc();
        } else {
            self.server
                .stats
                .counter("listener_manager.listener_added")
                .inc();
        }
        let scope = match &socket {
            Some(BoundSocket::Tcp(s)) => s
                .local_addr()
                .map(|a| a.to_string().replace(':', "_"))
                .unwrap_or_default(),
            _ => address_scope(&config.address),
        };
        let (drains, _) = ChainDrainSenders::for_listener(&config, ChainDrainSenders::default());
        let (stop, stop_rx) = watch::channel(false);
        let generation = Arc::new(ArcSwap::from_pointee(Generation {
            runtime: Arc::new(ListenerRuntime::build(
                config.clone(),
                &scope,
                &self.clusters,
                &self.server,
                &self.files,
                drains.receivers(),
            )),
        }));
        if let Some(socket) = socket {
            let address = socket.local_address();
            println!("listener {}: {}", config.name, address);
            self.server.add_bound_listener(BoundListener {
                name: config.name.clone(),
                address,
                inbound: config.inbound,
            });
            tokio::spawn(super::run(
                generation.clone(),
                socket,
                self.table.clone(),
                stop_rx,
                self.node_address,
                self.server.drain_timing(),
            ));
        }
        self.server
            .stats
            .counter("listener_manager.listener_create_success")
            .inc();
        active.push(Active {
            config,
            scope,
            generation,
            drains,
            stop,
            from_bootstrap,
        });
        self.rebuild_table(&active);
        self.update_gauges(&active);
        Ok(())
    }

    /// Removes an LDS listener: it stops accepting and its connections drain.
    pub fn remove(&self, name: &str) -> bool {
        let mut active = self.lock();
        let Some(i) = active
            .iter()
            .position(|a| a.config.name == name && !a.from_bootstrap)
        else {
            return false;
        };
        let old = active.remove(i);
        self.retire(old);
        self.server
            .stats
            .counter("listener_manager.listener_removed")
            .inc();
        self.rebuild_table(&active);
        self.update_gauges(&active);
        true
    }

    /// The names of the listeners LDS manages.
    pub fn dynamic_names(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|a| !a.from_bootstrap)
            .map(|a| a.config.name.clone())
            .collect()
    }

    /// Open downstream connections of the listeners LDS added (the bootstrap's own, such as
    /// Istio's readiness and Prometheus listeners, do not count), or of the inbound ones only:
    /// what a shutdown waits for. Connections of a replaced generation are not counted.
    pub fn active_connections(&self, inbound_only: bool) -> u64 {
        self.lock()
            .iter()
            .filter(|a| !a.from_bootstrap && (a.config.inbound || !inbound_only))
            .map(|a| {
                a.generation
                    .load()
                    .runtime
                    .stats
                    .downstream_cx_active
                    .value()
            })
            .sum()
    }

    /// `/drain_listeners`: the connections of every listener (or of the inbound ones) drain
    /// (HTTP/1.1 answers carry `Connection: close`, HTTP/2 gets GOAWAY). Without `graceful`
    /// the listeners stop accepting at once; with it they keep accepting (new connections
    /// drain from their first request) until the drain time (`--drain-time-s`) is over, as
    /// Envoy's graceful drain does, so clients still routed here are not refused.
    pub fn drain(self: &Arc<Self>, inbound_only: bool, graceful: bool) {
        let mut names = Vec::new();
        for a in self.lock().iter() {
            if a.config.inbound || !inbound_only {
                a.drains.drain_all();
                if graceful {
                    names.push(a.config.name.clone());
                } else {
                    a.stop.send_replace(true);
                }
            }
        }
        if names.is_empty() {
            return;
        }
        let manager = self.clone();
        let window = std::time::Duration::from_secs(self.server.options.drain_time_s);
        tokio::spawn(async move {
            tokio::time::sleep(window).await;
            for a in manager.lock().iter() {
                if names.contains(&a.config.name) {
                    a.stop.send_replace(true);
                }
            }
        });
    }

    fn replace_in_place(&self, old: &mut Active, config: Arc<Listener>) {
        // Envoy updates in place when only filter chains changed: the connections of the
        // chains that stay keep running undisturbed.
        let in_place = old.config.fingerprint_without_chains == config.fingerprint_without_chains;
        let previous = std::mem::take(&mut old.drains);
        let (drains, changed) = if in_place {
            ChainDrainSenders::for_listener(&config, previous)
        } else {
            let (fresh, _) = ChainDrainSenders::for_listener(&config, ChainDrainSenders::default());
            (fresh, previous)
        };
        let runtime = Arc::new(ListenerRuntime::build(
            config.clone(),
            &old.scope,
            &self.clusters,
            &self.server,
            &self.files,
            drains.receivers(),
        ));
        old.generation.store(Arc::new(Generation { runtime }));
        // Connections accepted under the old configuration finish what they are doing and
        // close; the socket itself never stops accepting.
        changed.drain_all();
        old.drains = drains;
        if in_place {
            self.server
                .stats
                .counter("listener_manager.listener_in_place_updated")
                .inc();
            self.track_drain(old.config.clone(), Some(changed.len()));
        } else {
            self.start_draining(old.config.clone());
        }
        old.config = config;
    }

    fn retire(&self, old: Active) {
        self.start_draining(old.config.clone());
        old.stop.send_replace(true);
        old.drains.drain_all();
        if old.config.bind_to_port {
            self.server.remove_bound_listener(&old.config.name);
        }
        if let Endpoint::Unix(path) = &old.config.address {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Tracks a generation until the drain time is up (`draining_state` in config_dump,
    /// `total_listeners_draining`); its connections are closed by then.
    fn start_draining(&self, config: Arc<Listener>) {
        self.server.xds.start_drain(&config.name);
        self.track_drain(config, None);
    }

    fn track_drain(&self, config: Arc<Listener>, filter_chains: Option<usize>) {
        if filter_chains == Some(0) {
            return;
        }
        let window = std::time::Duration::from_secs(self.server.options.drain_time_s);
        self.draining_lock().push(Draining {
            config,
            until: Instant::now() + window,
            filter_chains,
        });
        self.prune_draining();
    }

    /// The RDS tables the listeners route with, those still draining included: a replaced
    /// listener's tables stay subscribed until its drain is over, as in Envoy.
    pub fn route_sources(&self) -> Vec<(Option<AdsConfig>, String)> {
        let now = Instant::now();
        let active: Vec<Arc<Listener>> = self.lock().iter().map(|a| a.config.clone()).collect();
        let draining: Vec<Arc<Listener>> = self
            .draining_lock()
            .iter()
            .filter(|d| d.until > now)
            .map(|d| d.config.clone())
            .collect();
        active
            .iter()
            .chain(&draining)
            .flat_map(|l| l.rds_routes())
            .map(|(slot, source)| (source.grpc, slot.name.to_string()))
            .collect()
    }

    /// Forgets drains that are over.
    pub fn prune_draining(&self) {
        let mut draining = self.draining_lock();
        let now = Instant::now();
        draining.retain(|d| {
            let done = now >= d.until;
            if done && d.filter_chains.is_none() {
                self.server.xds.end_drain(&d.config.name);
            }
            !done
        });
        let listeners = draining
            .iter()
            .filter(|d| d.filter_chains.is_none())
            .count();
        let chains: usize = draining.iter().filter_map(|d| d.filter_chains).sum();
        let stats = &self.server.stats;
        stats
            .gauge("listener_manager.total_listeners_draining")
            .set(listeners as u64);
        stats
            .gauge("listener_manager.total_filter_chains_draining")
            .set(chains as u64);
    }

    fn draining_lock(&self) -> std::sync::MutexGuard<'_, Vec<Draining>> {
        self.draining.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn rebuild_table(&self, active: &[Active]) {
        let runtimes = active
            .iter()
            .map(|a| a.generation.load().runtime.clone())
            .collect();
        self.table.store(Arc::new(ListenerTable::new(runtimes)));
    }

    fn update_gauges(&self, active: &[Active]) {
        let stats = &self.server.stats;
        stats
            .gauge("listener_manager.total_listeners_active")
            .set(active.len() as u64);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Active>> {
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn is_port_zero(address: &Endpoint) -> bool {
    matches!(address, Endpoint::Tcp(a) if a.port() == 0)
}
