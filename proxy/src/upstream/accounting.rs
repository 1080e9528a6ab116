//! Upstream connection accounting: `upstream_cx_total` and `upstream_cx_active` for the
//! cluster and its host, kept right by a guard that lives as long as the connection.

use super::host::{Host, HostSet};
use crate::stats::{Counter, Gauge};
use arc_swap::ArcSwap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct ConnectionAccounting {
    pub cx_total: Arc<Counter>,
    pub cx_active: Arc<Gauge>,
    /// The cluster's hosts, to find a connection's host by its authority.
    pub hosts: Arc<ArcSwap<HostSet>>,
}

impl ConnectionAccounting {
    /// Counts a new connection to `authority`; the guard uncounts it when dropped.
    pub fn opened(&self, authority: &str) -> ConnectionGuard {
        self.cx_total.inc();
        self.cx_active.inc();
        let host = self
            .hosts
            .load()
            .hosts
            .iter()
            .find(|h| h.authority.as_str() == authority)
            .cloned();
        if let Some(h) = &host {
            h.stats.cx_total.fetch_add(1, Relaxed);
            h.stats.cx_active.fetch_add(1, Relaxed);
        }
        ConnectionGuard {
            cx_active: self.cx_active.clone(),
            host,
        }
    }
}

#[derive(Debug)]
pub struct ConnectionGuard {
    cx_active: Arc<Gauge>,
    host: Option<Arc<Host>>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.cx_active.dec();
        if let Some(h) = &self.host {
            h.stats.cx_active.fetch_sub(1, Relaxed);
        }
    }
}
