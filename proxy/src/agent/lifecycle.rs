//! How the sidecar ends. On SIGTERM (or SIGINT) the inbound listeners drain at once (they stop
//! accepting; HTTP/1.1 answers carry `Connection: close`, HTTP/2 gets GOAWAY) while outbound
//! keeps serving the application's own shutdown for `terminationDrainDuration`, as
//! pilot-agent does. Unlike pilot-agent, which then kills Envoy, the process then waits for the
//! inbound connections still open to finish (at most `drainDuration` more), so a request in
//! flight is not cut. `/quitquitquit` exits at once; after `/drain` (a native sidecar's preStop)
//! SIGTERM exits at once too, as pilot-agent does.

use crate::server::{DrainRequest, Proxy};
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Debug, Clone)]
pub struct Lifecycle {
    pub termination_drain_duration: Duration,
    /// `drainDuration`: the longest the inbound connections get after that.
    pub drain_duration: Duration,
    /// EXIT_ON_ZERO_ACTIVE_CONNECTIONS: after `minimum_drain_duration`, exit once no
    /// connection (inbound or outbound) is open, instead of after a fixed time.
    pub exit_on_zero_active_connections: bool,
    pub minimum_drain_duration: Duration,
}

/// How often the drain looks at the open connections.
const POLL: Duration = Duration::from_millis(100);

/// Resolves when the process should exit. `drained` says whether `/drain` already drained the
/// listeners (a native sidecar's preStop hook); SIGTERM then exits at once.
pub async fn run(proxy: &Proxy, lifecycle: &Lifecycle, drained: impl Fn() -> bool) {
    let server = &proxy.server;
    let mut shutdown = server.shutdown_signal();
    let mut terminate = signal(SignalKind::terminate()).ok();
    let terminated = async {
        match terminate.as_mut() {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = shutdown.wait_for(|s| *s) => {
            tracing::info!(target: "agent", "exiting (quitquitquit)");
            return;
        }
        _ = tokio::signal::ctrl_c() => {}
        _ = terminated => {}
    }
    if drained() {
        tracing::info!(target: "agent", "terminated after /drain: exiting");
        return;
    }
    tracing::info!(target: "agent", "terminated: draining inbound listeners");
    server.drain_listeners(DrainRequest {
        inbound_only: true,
        graceful: true,
    });
    let started = tokio::time::Instant::now();
    if lifecycle.exit_on_zero_active_connections {
        tokio::time::sleep(lifecycle.minimum_drain_duration).await;
        loop {
            let open = proxy.listeners.active_connections(false);
            if open == 0 {
                break;
            }
            tracing::debug!(target: "agent", "{open} connections still open");
            tokio::time::sleep(POLL).await;
        }
        tracing::info!(target: "agent", "no connection left after {:?}: exiting", started.elapsed());
        return;
    }
    tokio::time::sleep(lifecycle.termination_drain_duration).await;
    let deadline = tokio::time::Instant::now() + lifecycle.drain_duration;
    loop {
        let open = proxy.listeners.active_connections(true);
        if open == 0 {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(target: "agent", "{open} inbound connections still open after the drain: exiting anyway");
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    tracing::info!(target: "agent", "drained after {:?}: exiting", started.elapsed());
}
