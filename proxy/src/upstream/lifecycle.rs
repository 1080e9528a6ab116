//! How each upstream connection of a cluster lived and ended, in Envoy's stats: who closed it
//! (`upstream_cx_destroy_local`/`_remote`), whether requests were on it then
//! (`..._with_active_rq`), how long it took to connect and lasted, and how many requests it
//! carried. A connection's [`ConnectionFate`] is written by whoever sees an event (the socket
//! for the peer's close, the pool for a request starting, ending or being abandoned) and read
//! once, when the connection's accounting guard drops.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/upstream/cluster_manager/cluster_stats

use crate::stats::{Counter, Histogram, Store};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;

/// The connection-lifecycle stats of one cluster, resolved once (`cluster.<name>.<stat>`).
#[derive(Debug)]
pub struct LifecycleStats {
    pub destroy: Arc<Counter>,
    pub destroy_local: Arc<Counter>,
    pub destroy_remote: Arc<Counter>,
    pub destroy_with_active_rq: Arc<Counter>,
    pub destroy_local_with_active_rq: Arc<Counter>,
    pub destroy_remote_with_active_rq: Arc<Counter>,
    /// Connection establishment (TCP and TLS) and whole life, in milliseconds.
    pub connect_ms: Arc<Histogram>,
    pub length_ms: Arc<Histogram>,
    /// Requests a connection carried, recorded when it closes (only connections that were
    /// established, as Envoy records it).
    pub rq_per_cx: Arc<Histogram>,
    /// Connections made by the protocol of their pool (HTTP/3 never: Outrigger opens no
    /// QUIC upstreams, the counter stays for Envoy's name).
    pub http1_total: Arc<Counter>,
    pub http2_total: Arc<Counter>,
    pub connect_timeout: Arc<Counter>,
    /// tcp_proxy gave up after `max_connect_attempts` failed connections.
    pub connect_attempts_exceeded: Arc<Counter>,
    /// The upstream announced it will close: HTTP/1.1 `connection: close` (or an HTTP/1.0
    /// response without keep-alive).
    pub close_notify: Arc<Counter>,
    /// A request that gave up waiting for a connection from the pool.
    pub rq_cancelled: Arc<Counter>,
    /// An HTTP/2 stream reset by the upstream, or by Outrigger on a connection that stays.
    pub rq_rx_reset: Arc<Counter>,
    pub rq_tx_reset: Arc<Counter>,
}

impl LifecycleStats {
    /// The stats under `prefix` (`cluster.<stat_name>.`).
    pub fn new(store: &Store, prefix: &str) -> Self {
        let c = |s: &str| store.counter(&format!("{prefix}{s}"));
        let h = |s: &str| store.histogram(&format!("{prefix}{s}"));
        c("upstream_cx_http3_total");
        LifecycleStats {
            destroy: c("upstream_cx_destroy"),
            destroy_local: c("upstream_cx_destroy_local"),
            destroy_remote: c("upstream_cx_destroy_remote"),
            destroy_with_active_rq: c("upstream_cx_destroy_with_active_rq"),
            destroy_local_with_active_rq: c("upstream_cx_destroy_local_with_active_rq"),
            destroy_remote_with_active_rq: c("upstream_cx_destroy_remote_with_active_rq"),
            connect_ms: h("upstream_cx_connect_ms"),
            length_ms: h("upstream_cx_length_ms"),
            rq_per_cx: h("upstream_rq_per_cx"),
            http1_total: c("upstream_cx_http1_total"),
            http2_total: c("upstream_cx_http2_total"),
            connect_timeout: c("upstream_cx_connect_timeout"),
            connect_attempts_exceeded: c("upstream_cx_connect_attempts_exceeded"),
            close_notify: c("upstream_cx_close_notify"),
            rq_cancelled: c("upstream_rq_cancelled"),
            rq_rx_reset: c("upstream_rq_rx_reset"),
            rq_tx_reset: c("upstream_rq_tx_reset"),
        }
    }

    #[cfg(test)]
    pub fn detached() -> Self {
        Self::new(&Store::default(), "test.")
    }
}

/// Flags of a [`ConnectionFate`].
const CONNECTED: u8 = 1;
/// The peer closed the connection: Envoy's `RemoteClose`.
const REMOTE: u8 = 2;
/// Requests were in flight when the peer closed.
const ACTIVE_AT_REMOTE: u8 = 4;
/// An HTTP/1.1 request was given up mid-flight: the connection closes under it, locally.
const ABANDONED: u8 = 8;
/// Outrigger shut its sending half (tcp_proxy passing a client's half-close on).
const WRITE_SHUT: u8 = 16;
/// The connection is one tcp_proxy session's for its whole life: the peer's end of stream
/// is a half-close, and the session is the connection's active request until it ends.
const SESSION: u8 = 32;
/// The connection attempt outlived the cluster's connect timeout.
const TIMED_OUT: u8 = 64;

/// One connection's lifecycle as its events happen; shared by its socket and its pool.
#[derive(Debug)]
pub struct ConnectionFate {
    /// Requests started (high 32 bits) and in flight (low 32 bits): a request's start is one
    /// atomic add.
    requests: AtomicU64,
    flags: AtomicU8,
    stats: Arc<LifecycleStats>,
}

/// How a connection ended, as the stats count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ending {
    pub remote: bool,
    pub with_active_rq: bool,
    /// Established: its requests are recorded in `upstream_rq_per_cx`.
    pub connected: bool,
    pub requests: u32,
}

const ONE_STARTED: u64 = 1 << 32 | 1;

impl ConnectionFate {
    pub(super) fn new(stats: Arc<LifecycleStats>) -> Self {
        ConnectionFate {
            requests: AtomicU64::new(0),
            flags: AtomicU8::new(0),
            stats,
        }
    }

    pub(super) fn stats(&self) -> &LifecycleStats {
        &self.stats
    }

    fn set(&self, flag: u8) {
        self.flags.fetch_or(flag, Relaxed);
    }

    fn has(&self, flag: u8) -> bool {
        self.flags.load(Relaxed) & flag != 0
    }

    fn in_flight(&self) -> u32 {
        self.requests.load(Relaxed) as u32
    }

    pub(super) fn connected(&self) {
        self.set(CONNECTED);
    }

    pub(super) fn timed_out(&self) {
        self.set(TIMED_OUT);
    }

    /// The connection is a tcp_proxy session's (see [`SESSION`]).
    pub fn session(&self) {
        self.set(SESSION);
        self.requests.fetch_add(ONE_STARTED, Relaxed);
    }

    /// A request starts on the connection; it is in flight until its [`InFlight`] ends.
    pub fn begin(fate: Arc<Self>, multiplexed: bool) -> InFlight {
        fate.requests.fetch_add(ONE_STARTED, Relaxed);
        InFlight {
            fate,
            multiplexed,
            over: false,
        }
    }

    /// The socket read the peer's end of stream (`eof`) or an error. Without half-close, the
    /// peer's FIN is its close; a tcp_proxy session's is a half-close, and the connection is
    /// closed by the peer only if its FIN comes after Outrigger's (Envoy raises `RemoteClose`
    /// when the second half closes on a read).
    pub(super) fn peer_closed(&self, eof: bool) {
        let flags = self.flags.load(Relaxed);
        if flags & (REMOTE | ABANDONED) != 0 {
            return;
        }
        if eof && flags & SESSION != 0 && flags & WRITE_SHUT == 0 {
            return;
        }
        let active = if self.in_flight() > 0 {
            ACTIVE_AT_REMOTE
        } else {
            0
        };
        self.set(REMOTE | active);
    }

    pub(super) fn write_shut(&self) {
        self.set(WRITE_SHUT);
    }

    /// How the connection ended, read when it is gone.
    pub fn ending(&self) -> Ending {
        let flags = self.flags.load(Relaxed);
        let connected = flags & CONNECTED != 0;
        // A refused attempt is the peer's answer; one that timed out is given up here.
        let remote = match connected {
            true => flags & REMOTE != 0,
            false => flags & TIMED_OUT == 0,
        };
        let with_active_rq = connected
            && match remote {
                true => flags & ACTIVE_AT_REMOTE != 0,
                false => flags & (ABANDONED | SESSION) != 0,
            };
        Ending {
            remote,
            with_active_rq,
            connected,
            requests: (self.requests.load(Relaxed) >> 32) as u32,
        }
    }

    /// Records the connection's end in its cluster's stats: `upstream_cx_destroy*` and the
    /// histograms.
    pub(super) fn record(&self, lived_ms: f64) {
        record_ending(&self.stats, self.ending(), lived_ms);
    }
}

/// A request in flight on a connection, from its start on the connection to the end of its
/// response. Dropped before [`InFlight::finished`], it was given up: an HTTP/1.1 connection
/// closes under it (Envoy closes the connection of a reset HTTP/1.1 stream); an HTTP/2 stream
/// is reset and the connection serves on (`upstream_rq_tx_reset`).
#[derive(Debug)]
pub struct InFlight {
    fate: Arc<ConnectionFate>,
    multiplexed: bool,
    over: bool,
}

impl InFlight {
    /// The response arrived whole.
    pub fn finished(&mut self) {
        if !self.over {
            self.over = true;
            self.fate.requests.fetch_sub(1, Relaxed);
        }
    }

    /// The upstream reset the stream (HTTP/2 `RST_STREAM`): counted as received, not given up.
    pub fn reset_by_peer(&mut self) {
        if !self.over {
            self.fate.stats.rq_rx_reset.inc();
            self.finished();
        }
    }

    /// Given up by Outrigger: see the type's documentation. Counts `upstream_rq_tx_reset`
    /// for an HTTP/2 stream on a connection the peer has not closed.
    fn abandon(&mut self) {
        if self.over {
            return;
        }
        if !self.multiplexed {
            // The connection goes down with the request still on it.
            self.over = true;
            self.fate.set(ABANDONED);
            return;
        }
        if !self.fate.has(REMOTE) {
            self.fate.stats.rq_tx_reset.inc();
        }
        self.finished();
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.abandon();
    }
}

/// Counts `upstream_rq_cancelled` when a request waiting for a connection is dropped (its
/// caller gave up); the pool forgets it once the wait is over.
pub(super) struct Cancelled<'a>(pub &'a Counter);

impl Drop for Cancelled<'_> {
    fn drop(&mut self) {
        self.0.inc();
    }
}

fn record_ending(stats: &LifecycleStats, ending: Ending, lived_ms: f64) {
    stats.destroy.inc();
    let (side, side_active) = match ending.remote {
        true => (&stats.destroy_remote, &stats.destroy_remote_with_active_rq),
        false => (&stats.destroy_local, &stats.destroy_local_with_active_rq),
    };
    side.inc();
    if ending.with_active_rq {
        stats.destroy_with_active_rq.inc();
        side_active.inc();
    }
    stats.length_ms.record(lived_ms);
    if ending.connected {
        stats.rq_per_cx.record(f64::from(ending.requests));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fate() -> (Arc<LifecycleStats>, Arc<ConnectionFate>) {
        let stats = Arc::new(LifecycleStats::detached());
        (stats.clone(), Arc::new(ConnectionFate::new(stats)))
    }

    fn connected() -> Arc<ConnectionFate> {
        let (_, fate) = fate();
        fate.connected();
        fate
    }

    #[test]
    fn a_peer_closing_an_idle_connection_is_remote_without_requests() {
        let fate = connected();
        ConnectionFate::begin(fate.clone(), false).finished();
        ConnectionFate::begin(fate.clone(), false).finished();
        fate.peer_closed(true);
        let end = fate.ending();
        assert!(end.remote && !end.with_active_rq && end.connected);
        assert_eq!(end.requests, 2);
    }

    #[test]
    fn a_peer_closing_under_a_response_is_remote_with_an_active_request() {
        let fate = connected();
        let request = ConnectionFate::begin(fate.clone(), false);
        fate.peer_closed(true);
        drop(request);
        let end = fate.ending();
        assert!(end.remote && end.with_active_rq);
    }

    #[test]
    fn an_abandoned_http1_request_closes_its_connection_locally_with_it_on() {
        let (stats, fate) = fate();
        fate.connected();
        drop(ConnectionFate::begin(fate.clone(), false));
        // hyper may read the peer's FIN while it closes: the close was still Outrigger's.
        fate.peer_closed(true);
        let end = fate.ending();
        assert!(!end.remote && end.with_active_rq);
        assert_eq!(
            stats.rq_tx_reset.value(),
            0,
            "Envoy counts no reset for HTTP/1.1"
        );
    }

    #[test]
    fn an_abandoned_http2_stream_is_a_sent_reset_and_the_connection_serves_on() {
        let (stats, fate) = fate();
        fate.connected();
        drop(ConnectionFate::begin(fate.clone(), true));
        ConnectionFate::begin(fate.clone(), true).reset_by_peer();
        assert_eq!(
            (stats.rq_tx_reset.value(), stats.rq_rx_reset.value()),
            (1, 1)
        );
        let end = fate.ending();
        assert!(!end.remote && !end.with_active_rq);
        assert_eq!(end.requests, 2);
    }

    #[test]
    fn a_session_is_closed_by_whoever_closes_second() {
        // The upstream's FIN first: a half-close; Outrigger closes the rest, locally.
        let fate = connected();
        fate.session();
        fate.peer_closed(true);
        assert_eq!(
            (fate.ending().remote, fate.ending().with_active_rq),
            (false, true)
        );
        // Outrigger's FIN first: the upstream's closes the connection.
        let fate = connected();
        fate.session();
        fate.write_shut();
        fate.peer_closed(true);
        assert_eq!(
            (fate.ending().remote, fate.ending().with_active_rq),
            (true, true)
        );
    }

    #[test]
    fn failed_attempts_are_remote_when_refused_and_local_when_timed_out() {
        let (_, refused) = fate();
        assert!(refused.ending().remote && !refused.ending().connected);
        let (_, slow) = fate();
        slow.timed_out();
        assert!(!slow.ending().remote && !slow.ending().with_active_rq);
    }

    #[test]
    fn endings_are_counted_by_side_and_requests() {
        let stats = LifecycleStats::detached();
        let end = |remote, with_active_rq| Ending {
            remote,
            with_active_rq,
            connected: true,
            requests: 3,
        };
        record_ending(&stats, end(true, true), 5.0);
        record_ending(&stats, end(false, false), 5.0);
        record_ending(&stats, end(false, true), 5.0);
        let v = |c: &Counter| c.value();
        assert_eq!(v(&stats.destroy), 3);
        assert_eq!((v(&stats.destroy_remote), v(&stats.destroy_local)), (1, 2));
        assert_eq!(v(&stats.destroy_with_active_rq), 2);
        assert_eq!(v(&stats.destroy_remote_with_active_rq), 1);
        assert_eq!(v(&stats.destroy_local_with_active_rq), 1);
        assert_eq!(stats.rq_per_cx.snapshot().count, 3);
        assert_eq!(stats.length_ms.snapshot().count, 3);
    }
}
