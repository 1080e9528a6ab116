//! Upstream connection accounting: `upstream_cx_total` and `upstream_cx_active` for the
//! cluster and its host, kept right by a guard that lives as long as the connection, and the
//! bytes the connection carries (`upstream_cx_rx_bytes_total`, `upstream_cx_tx_bytes_total`).
//! A connection is counted from its attempt, as Envoy counts it (a connection that never
//! connects is one too), and its end is recorded by its [`ConnectionFate`] (lifecycle.rs).

use super::host::{Host, HostSet};
use super::lifecycle::{ConnectionFate, LifecycleStats};
use crate::stats::{Counter, Gauge};
use arc_swap::ArcSwap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct ConnectionAccounting {
    pub cx_total: Arc<Counter>,
    pub cx_active: Arc<Gauge>,
    /// Bytes read from and written to the cluster's connections, as the proxy sees them
    /// (above TLS, as Envoy counts: HTTP/1.1 heads and bodies, HTTP/2 frames, tcp_proxy data).
    pub cx_rx_bytes_total: Arc<Counter>,
    pub cx_tx_bytes_total: Arc<Counter>,
    /// `upstream_cx_rx_bytes_buffered`/`tx_bytes_buffered`: what Envoy's gauges show, each
    /// connection's buffer as of its last read or write (see [`ConnectionGuard`]).
    pub cx_rx_bytes_buffered: Arc<Gauge>,
    pub cx_tx_bytes_buffered: Arc<Gauge>,
    /// The cluster's hosts, to find a connection's host by its authority.
    pub hosts: Arc<ArcSwap<HostSet>>,
    /// How connections end (`upstream_cx_destroy*`, `upstream_cx_length_ms`, ...).
    pub lifecycle: Arc<LifecycleStats>,
}

impl ConnectionAccounting {
    /// Counts a connection attempt to `authority`; the guard uncounts it when dropped, and
    /// records how it ended.
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
            rx_bytes: self.cx_rx_bytes_total.clone(),
            tx_bytes: self.cx_tx_bytes_total.clone(),
            rx_buffered: self.cx_rx_bytes_buffered.clone(),
            tx_buffered: self.cx_tx_bytes_buffered.clone(),
            last_rx: 0,
            last_tx: 0,
            host,
            fate: Arc::new(ConnectionFate::new(self.lifecycle.clone())),
            born: Instant::now(),
        }
    }
}

#[derive(Debug)]
pub struct ConnectionGuard {
    cx_active: Arc<Gauge>,
    rx_bytes: Arc<Counter>,
    tx_bytes: Arc<Counter>,
    rx_buffered: Arc<Gauge>,
    tx_buffered: Arc<Gauge>,
    /// This connection's share of the buffered gauges.
    last_rx: u64,
    last_tx: u64,
    host: Option<Arc<Host>>,
    fate: Arc<ConnectionFate>,
    born: Instant,
}

impl ConnectionGuard {
    /// The connection's lifecycle, which its pool shares.
    pub fn fate(&self) -> &Arc<ConnectionFate> {
        &self.fate
    }

    /// Established (TCP, and TLS when the transport has it): `upstream_cx_connect_ms`.
    pub fn connected(&self) {
        self.fate.connected();
        self.fate
            .stats()
            .connect_ms
            .record(millis(self.born.elapsed()));
    }

    /// The attempt outlived the connect timeout: `upstream_cx_connect_timeout`, and a close
    /// of Outrigger's.
    pub fn timed_out(&self) {
        self.fate.timed_out();
        self.fate.stats().connect_timeout.inc();
    }

    /// Counts `n` bytes read from the connection, as they arrive (a long stream's bytes show
    /// while it lasts, as in Envoy). Envoy's read buffer gauge shows the buffer as it stood
    /// after the connection's last read, which is that read's bytes: the codec has consumed
    /// the earlier ones. Outrigger's reader (hyper, the TCP copy) takes each read whole, so
    /// the same value is the honest one here.
    pub fn received(&mut self, n: usize) {
        let n = n as u64;
        self.rx_bytes.add(n);
        self.rx_buffered.adjust(self.last_rx, n);
        self.last_rx = n;
    }

    /// Counts a write of which the socket took `n` of `offered` bytes; what it did not take
    /// is the connection's write buffer until the next write (0 when it keeps up).
    pub fn sent(&mut self, n: usize, offered: usize) {
        self.tx_bytes.add(n as u64);
        let left = offered.saturating_sub(n) as u64;
        self.tx_buffered.adjust(self.last_tx, left);
        self.last_tx = left;
    }

    /// A write the socket could not take yet: `offered` bytes wait.
    pub fn blocked(&mut self, offered: usize) {
        let waiting = offered as u64;
        self.tx_buffered.adjust(self.last_tx, waiting);
        self.last_tx = waiting;
    }
}

/// Milliseconds as Envoy's timing histograms record them (whole milliseconds).
fn millis(d: std::time::Duration) -> f64 {
    d.as_millis() as f64
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.fate.record(millis(self.born.elapsed()));
        self.cx_active.dec();
        self.rx_buffered.sub(self.last_rx);
        self.tx_buffered.sub(self.last_tx);
        if let Some(h) = &self.host {
            h.stats.cx_active.fetch_sub(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_counted_as_they_pass_and_buffers_leave_with_the_connection() {
        let gauge = || Arc::new(Gauge::default());
        let a = ConnectionAccounting {
            cx_total: Arc::default(),
            cx_active: gauge(),
            cx_rx_bytes_total: Arc::default(),
            cx_tx_bytes_total: Arc::default(),
            cx_rx_bytes_buffered: gauge(),
            cx_tx_bytes_buffered: gauge(),
            hosts: Arc::new(ArcSwap::from_pointee(HostSet::default())),
            lifecycle: Arc::new(LifecycleStats::detached()),
        };
        let mut one = a.opened("127.0.0.1:1");
        let mut two = a.opened("127.0.0.1:2");
        one.received(100);
        one.received(40);
        two.received(7);
        one.sent(10, 30);
        two.blocked(5);
        assert_eq!(a.cx_rx_bytes_total.value(), 147);
        assert_eq!(a.cx_tx_bytes_total.value(), 10);
        // Each connection's last read, and what its socket has not taken yet.
        assert_eq!(a.cx_rx_bytes_buffered.value(), 47);
        assert_eq!(a.cx_tx_bytes_buffered.value(), 25);
        two.sent(5, 5);
        assert_eq!(a.cx_tx_bytes_buffered.value(), 20);
        drop(one);
        assert_eq!(a.cx_rx_bytes_buffered.value(), 7);
        assert_eq!(a.cx_tx_bytes_buffered.value(), 0);
        assert_eq!(a.cx_rx_bytes_total.value(), 147, "totals stay");
    }
}
