//! Envoy's connection pool for one host and priority: ready connections, the requests pending
//! for one, and the connections being opened. The circuit breakers decide when a request may
//! wait (`max_pending_requests`), when a connection may open (`max_connections`, except the
//! host's first, which Envoy always opens) and when a request may start (`max_requests`).
//! An HTTP/1.1 connection carries one request at a time and returns to the ready list when its
//! response is read; an HTTP/2 connection stays ready and carries every request. Either stops
//! taking requests once it has started `max_requests_per_connection` of them or has lived for
//! `max_connection_duration` (pool_conn.rs), and then closes when its requests are done.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/connection_pooling

use super::circuit_breakers::{CircuitBreakers, Guard, PriorityBreakers};
use super::host::Host;
use super::pool::UpstreamError;
pub use super::pool_conn::{Conn, Sender};
use super::pool_conn::{Lifetime, Streams, WatchStats, Watched};
use super::response_body::StreamHold;
use super::transport::{Destination, Via};
use crate::config::circuit_breakers::Priority;
use crate::config::cluster::ConnectionLimits;
use crate::tls::AlpnOffer;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;
use tokio::sync::oneshot;

/// A ready connection, and since when it has waited (for the idle timeout).
struct Ready {
    conn: Conn,
    idle_since: tokio::time::Instant,
}

type Waiter = oneshot::Sender<Result<Conn, UpstreamError>>;

#[derive(Default)]
struct State {
    ready: Vec<Ready>,
    pending: VecDeque<Waiter>,
    connecting: usize,
    /// Connections open or opening.
    open: usize,
    /// The pool's `max_connection_pools` unit, held while the pool has a connection or a
    /// request waiting, as Envoy counts its pools that exist.
    unit: Option<Guard>,
}

/// What a pool's connections speak: fixed by the cluster, or chosen by each TLS handshake's
/// ALPN (`auto_config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    Http1,
    Http2,
    Alpn,
}

/// Opens connections for the pools (the cluster's connector and HTTP/2 settings, in pool.rs).
pub trait Opener: Send + Sync + 'static {
    /// Connects to `destination` and hands back the sender (HTTP/1.1 or HTTP/2, as `wire`
    /// says or the handshake chose); the opener spawns the connection's driver, which must
    /// hold `closed` until the connection ends.
    fn open(&self, destination: Destination, wire: Wire, closed: ConnectionClosed) -> Opening;
}

/// A connection being opened: its sender and what is known of it, or why it failed.
pub type Opening =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Opened, UpstreamError>> + Send>>;

/// An open connection: its sender, what is known of it, and its lifecycle (None where the
/// stats do not see it, as in the pool's own tests).
pub type Opened = (
    Sender,
    super::pool_conn::ConnectionFacts,
    Option<Arc<super::lifecycle::ConnectionFate>>,
);

/// Held by a connection's driver: when dropped (the connection ended or never opened), the
/// pool forgets the connection and gives its `max_connections` unit back.
pub struct ConnectionClosed {
    pool: Weak<HostPool>,
    id: u64,
    _connection: Guard,
    /// Alive while the connection is: its watcher stops when this goes.
    _life: Arc<()>,
}

impl Drop for ConnectionClosed {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.closed(self.id);
        }
    }
}

/// The counters the pools bump (`cluster.<name>.*`), shared with the cluster's stats.
#[derive(Debug, Clone)]
pub struct PoolStats {
    pub rq_total: Arc<crate::stats::Counter>,
    pub rq_pending_total: Arc<crate::stats::Counter>,
    pub rq_pending_overflow: Arc<crate::stats::Counter>,
    pub rq_pending_active: Arc<crate::stats::Gauge>,
    pub rq_active_overflow: Arc<crate::stats::Counter>,
    pub cx_overflow: Arc<crate::stats::Counter>,
    /// A connection started its last request under `max_requests_per_connection`.
    pub cx_max_requests: Arc<crate::stats::Counter>,
    /// A connection reached `max_connection_duration`.
    pub cx_max_duration_reached: Arc<crate::stats::Counter>,
    /// An idle connection was closed by the idle timeout.
    pub cx_idle_timeout: Arc<crate::stats::Counter>,
    /// A pending request gave up waiting for a connection.
    pub rq_cancelled: Arc<crate::stats::Counter>,
}

/// What every pool of a cluster shares: the circuit breakers, the counters, the opener and
/// the connections' limits. The pools themselves hang off their hosts ([`HostPools`]), so a
/// request reaches its pool from the host the balancer picked, without a lookup.
pub struct ClusterPools {
    breakers: Arc<CircuitBreakers>,
    stats: PoolStats,
    opener: Arc<dyn Opener>,
    limits: ConnectionLimits,
    /// HTTP/2 streams one connection carries at once (`max_concurrent_streams`; `u32::MAX`
    /// when unset): a request finding every connection full waits for another.
    stream_cap: u32,
    myself: Weak<ClusterPools>,
}

/// A host's pools, one per routing priority, protocol and ALPN offer (Envoy keys its pools by
/// host, priority and protocol; a TLS host's connections offering different ALPN lists stay apart),
/// allocated by the host's first request: most hosts of a mesh never carry one.
#[derive(Default)]
pub struct HostPools(OnceLock<Box<Slots>>);

/// Offers a connection may share beyond the per-slot one before pools of other offers that
/// are idle are dropped (config updates make new offers).
const MAX_OTHER_OFFERS: usize = 8;

#[derive(Default)]
struct Slots {
    /// By priority and protocol ([`slot`]): the pool of requests without an ALPN offer (and of
    /// every request on a plaintext host)...
    plain: [OnceLock<Arc<HostPool>>; 4],
    /// ...and the pool of the first offer seen there. Istio's `istio.alpn` makes one offer
    /// per upstream protocol, so a slot sees one list and this is the only one used.
    offered: [OnceLock<Arc<HostPool>>; 4],
    /// Pools of any other offer, by slot.
    others: Mutex<Vec<(usize, Arc<HostPool>)>>,
}

impl std::fmt::Debug for HostPools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostPools")
            .field("made", &self.0.get().is_some())
            .finish()
    }
}

/// An `auto_config` cluster's pools take the HTTP/1.1 slots: its requests never ask for a
/// protocol of their own.
fn slot(priority: Priority, wire: Wire) -> usize {
    usize::from(priority == Priority::High) * 2 + usize::from(wire == Wire::Http2)
}

/// Two offers make the same handshake when their lists are equal, even if a config update
/// made them apart.
fn same_offer(a: Option<&AlpnOffer>, b: Option<&AlpnOffer>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a == b || a.protocols() == b.protocols(),
        _ => false,
    }
}

impl HostPools {
    /// The pool for `priority`, protocol and `alpn` offer, made on first use.
    fn get(
        &self,
        cluster: &ClusterPools,
        host: &Host,
        via: Via<'_>,
        priority: Priority,
        wire: Wire,
    ) -> Arc<HostPool> {
        let slots = self.0.get_or_init(Box::default);
        let i = slot(priority, wire);
        let make = || HostPool::new(cluster, Destination::new(host, via), priority, wire);
        // A plaintext host's connections are the same whatever the request offered.
        let alpn = via
            .alpn
            .filter(|_| matches!(host.transport, super::transport::Transport::Tls(_)));
        // Connections bound to a client's address (`original_src`) serve that client's
        // address only: they live among the other pools, keyed by it too.
        if via.source.is_none() {
            let Some(offer) = alpn else {
                return slots.plain[i].get_or_init(make).clone();
            };
            let first = slots.offered[i].get_or_init(make);
            if same_offer(first.destination.alpn.as_ref(), Some(offer)) {
                return first.clone();
            }
        }
        let mut others = slots.others.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, pool)) = others.iter().find(|(s, p)| {
            *s == i
                && p.destination.source == via.source
                && same_offer(p.destination.alpn.as_ref(), alpn)
        }) {
            return pool.clone();
        }
        if others.len() >= MAX_OTHER_OFFERS {
            others.retain(|(_, p)| Arc::strong_count(p) > 1 || p.busy());
        }
        let pool = make();
        others.push((i, pool.clone()));
        pool
    }

    /// Some pool of the host has a connection or a request waiting (an ORIGINAL_DST host in
    /// use is kept for the next request to the same address).
    pub fn busy(&self) -> bool {
        let Some(slots) = self.0.get() else {
            return false;
        };
        let others = slots.others.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .plain
            .iter()
            .chain(&slots.offered)
            .filter_map(OnceLock::get)
            .chain(others.iter().map(|(_, p)| p))
            .any(|p| p.busy())
    }
}

/// One host's pool for one priority, protocol and ALPN offer.
pub struct HostPool {
    destination: Destination,
    priority: Priority,
    wire: Wire,
    /// Its connections are HTTP/2, shared by requests: from the start when the cluster says
    /// so, from the first handshake that picks `h2` under ALPN.
    multiplexed: AtomicBool,
    state: Mutex<State>,
    /// Weak: the cluster's pools reach the hosts through the connector's accounting.
    owner: Weak<ClusterPools>,
    myself: Weak<HostPool>,
    next_id: AtomicU64,
}

/// A request's hold on a connection: the connection, the `max_requests` unit, and its place
/// among the requests in flight on the connection.
pub struct Attached {
    pub conn: Conn,
    pub pool: Arc<HostPool>,
    pub request: Guard,
    pub in_flight: Option<super::lifecycle::InFlight>,
}

impl ClusterPools {
    pub fn new(
        breakers: Arc<CircuitBreakers>,
        stats: PoolStats,
        opener: Arc<dyn Opener>,
        limits: ConnectionLimits,
        stream_cap: Option<u32>,
        myself: Weak<ClusterPools>,
    ) -> Self {
        ClusterPools {
            breakers,
            stats,
            opener,
            limits,
            stream_cap: stream_cap.unwrap_or(u32::MAX).max(1),
            myself,
        }
    }

    /// Waits for a connection to `host` as Envoy's pool does, and admits the request on it.
    /// Overflow of `max_pending_requests` or `max_requests` fails with
    /// [`UpstreamError::Overflow`].
    pub async fn attach(
        &self,
        host: &Host,
        via: Via<'_>,
        priority: Priority,
        wire: Wire,
    ) -> Result<Attached, UpstreamError> {
        let breakers = self.breakers.priority(priority);
        let pool = host.pools.get(self, host, via, priority, wire);
        let conn = match pool.checkout(self, breakers) {
            Some(conn) => conn,
            None => {
                let Some(_pending) = breakers.pending_requests.try_acquire() else {
                    self.stats.rq_pending_overflow.inc();
                    pool.give_back_unit_if_idle();
                    return Err(UpstreamError::Overflow);
                };
                self.stats.rq_pending_total.inc();
                self.stats.rq_pending_active.inc();
                // A request that stops waiting (its caller gave up) is `upstream_rq_cancelled`.
                let cancelled = super::lifecycle::Cancelled(&self.stats.rq_cancelled);
                let waited = pool.wait(self, breakers).await;
                std::mem::forget(cancelled);
                self.stats.rq_pending_active.dec();
                waited?
            }
        };
        let Some(request) = breakers.requests.try_acquire() else {
            self.stats.rq_active_overflow.inc();
            pool.give_back(conn);
            return Err(UpstreamError::Overflow);
        };
        let mut conn = conn;
        // An HTTP/2 connection's allowance is kept by the pool's handle (see `share`).
        if conn.life.start_request() {
            self.stats.cx_max_requests.inc();
        }
        self.stats.rq_total.inc();
        let in_flight = conn.start();
        Ok(Attached {
            conn,
            pool,
            request,
            in_flight,
        })
    }
}

impl HostPool {
    fn new(
        cluster: &ClusterPools,
        destination: Destination,
        priority: Priority,
        wire: Wire,
    ) -> Arc<HostPool> {
        Arc::new_cyclic(|myself| HostPool {
            destination,
            priority,
            wire,
            multiplexed: AtomicBool::new(wire == Wire::Http2),
            state: Mutex::new(State::default()),
            owner: cluster.myself.clone(),
            myself: myself.clone(),
            next_id: AtomicU64::new(0),
        })
    }

    fn multiplexed(&self) -> bool {
        self.multiplexed.load(Relaxed)
    }

    /// It has a connection or a request waiting.
    fn busy(&self) -> bool {
        let state = self.lock();
        state.open > 0 || !state.pending.is_empty()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A ready connection: HTTP/1.1 takes it off the list, HTTP/2 shares the first one with
    /// room for another stream (and a share that takes the connection's last allowed stream
    /// retires it, draining it).
    fn checkout(&self, pools: &ClusterPools, breakers: &PriorityBreakers) -> Option<Conn> {
        let mut state = self.lock();
        if state.unit.is_none() {
            state.unit = Some(breakers.connection_pools.acquire());
        }
        if self.multiplexed() {
            state.ready.retain(|r| r.conn.sender.usable());
            let i = state
                .ready
                .iter()
                .position(|r| r.conn.is_shared() && r.conn.life.has_room())?;
            let ready = &mut state.ready[i];
            let shared = ready.conn.share();
            if ready.conn.life.start_request() {
                pools.stats.cx_max_requests.inc();
                state.ready.remove(i);
            }
            return shared;
        }
        while let Some(r) = state.ready.pop() {
            if r.conn.sender.usable() {
                return Some(r.conn);
            }
        }
        None
    }

    /// Queues the request and opens a connection for it if the pool needs one and may.
    async fn wait(
        &self,
        pools: &ClusterPools,
        breakers: &PriorityBreakers,
    ) -> Result<Conn, UpstreamError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.lock();
            state.pending.push_back(tx);
            self.maybe_open(&mut state, pools, breakers);
        }
        rx.await
            .unwrap_or_else(|_| Err(UpstreamError::Reset("connection pool closed".into())))
    }

    /// Envoy's rule: open a connection when more requests wait than the connections being
    /// opened will carry (one request each for HTTP/1.1, `max_concurrent_streams` for HTTP/2),
    /// within `max_connections`, counting `upstream_cx_overflow` when over it; a pool without
    /// any connection opens one anyway.
    fn maybe_open(&self, state: &mut State, pools: &ClusterPools, breakers: &PriorityBreakers) {
        // Under ALPN, a connection still being opened counts as HTTP/1.1 until one picks h2.
        let per_connection = if self.multiplexed() {
            usize::try_from(pools.stream_cap).unwrap_or(usize::MAX)
        } else {
            1
        };
        let needed = state.pending.len() > state.connecting.saturating_mul(per_connection);
        if !needed {
            return;
        }
        let guard = match breakers.connections.try_acquire() {
            Some(g) => g,
            None => {
                pools.stats.cx_overflow.inc();
                if state.open > 0 {
                    return;
                }
                breakers.connections.acquire()
            }
        };
        state.connecting += 1;
        state.open += 1;
        let id = self.next_id.fetch_add(1, Relaxed);
        let life = Arc::new(());
        let alive = Arc::downgrade(&life);
        let closed = ConnectionClosed {
            pool: self.myself.clone(),
            id,
            _connection: guard,
            _life: life,
        };
        let opening = pools
            .opener
            .open(self.destination.clone(), self.wire, closed);
        let Some(pool) = self.myself.upgrade() else {
            return;
        };
        let limits = pools.limits;
        let stream_cap = pools.stream_cap;
        let stats = WatchStats {
            idle_timeout: pools.stats.cx_idle_timeout.clone(),
            max_duration_reached: pools.stats.cx_max_duration_reached.clone(),
        };
        tokio::spawn(async move {
            let watched: Weak<dyn Watched> = pool.myself.clone();
            let opened = opening.await.map(|(sender, facts, fate)| {
                // Streams are counted on an HTTP/2 connection, whichever way it became one.
                let streams = matches!(sender, Sender::Http2(_))
                    .then(|| Streams::new(stream_cap, watched.clone(), id));
                Conn {
                    sender,
                    facts,
                    id,
                    life: Lifetime::new(&limits, streams),
                    fate,
                }
            });
            if let Ok(conn) = &opened {
                let idle = limits.idle_timeout;
                super::pool_conn::watch(watched, id, idle, conn.life.expiry(), alive, stats);
            }
            pool.opened(opened);
        });
    }

    fn opened(&self, result: Result<Conn, UpstreamError>) {
        // The cluster's pools are gone (the cluster was removed): nothing waits any more.
        let Some(pools) = self.owner.upgrade() else {
            return;
        };
        let mut state = self.lock();
        state.connecting = state.connecting.saturating_sub(1);
        match result {
            Ok(conn) if conn.is_shared() => {
                if self.wire == Wire::Alpn {
                    self.multiplexed.store(true, Relaxed);
                }
                self.offer_shared(state, conn, &pools)
            }
            Ok(conn) => {
                drop(state);
                self.release(conn, &pools);
            }
            Err(e) => {
                // Envoy fails every pending request of the pool when a connection attempt
                // fails, rather than leave them waiting on a host that refuses.
                // (The failed attempt's `closed` already ran, uncounting it.)
                for waiter in state.pending.drain(..) {
                    let _ = waiter.send(Err(e.clone()));
                }
            }
        }
    }

    /// A new HTTP/2 connection: waiting requests share it, as far as its room for streams
    /// and its allowance of them go; it stays ready for later requests unless that allowance
    /// is spent, and requests still waiting then get another connection.
    fn offer_shared(&self, mut state: MutexGuard<'_, State>, mut conn: Conn, pools: &ClusterPools) {
        let (spent, unused) = Self::hand_out(&mut state.pending, &mut conn, pools);
        if !spent {
            state.ready.push(Ready {
                conn,
                idle_since: tokio::time::Instant::now(),
            });
        }
        // Dropping the pool's handle of a spent connection drains it: it closes when the
        // streams given out above have finished.
        if !state.pending.is_empty() {
            let breakers = pools.breakers.priority(self.priority);
            self.maybe_open(&mut state, pools, breakers);
        }
        // A share nobody took ends its stream, which may call back into the pool: not under
        // the lock.
        drop(state);
        drop(unused);
    }

    /// Gives shares of `conn` to waiting requests while it has room and allowance. True when
    /// the allowance is spent; and a share whose request gave up waiting, if no other took it
    /// (the caller drops it once it has released the pool's lock).
    fn hand_out(
        pending: &mut VecDeque<Waiter>,
        conn: &mut Conn,
        pools: &ClusterPools,
    ) -> (bool, Option<Conn>) {
        let mut unused: Option<Conn> = None;
        while !pending.is_empty() {
            let share = match unused.take() {
                Some(share) => share,
                None if conn.life.has_room() => match conn.share() {
                    Some(share) => share,
                    None => break,
                },
                None => break,
            };
            let Some(waiter) = pending.pop_front() else {
                unused = Some(share);
                break;
            };
            match waiter.send(Ok(share)) {
                Ok(()) => {
                    if conn.life.start_request() {
                        pools.stats.cx_max_requests.inc();
                        return (true, None);
                    }
                }
                Err(Ok(back)) => unused = Some(back),
                Err(Err(_)) => {}
            }
        }
        (false, unused)
    }

    /// An HTTP/1.1 connection free for the next request: the first waiting request takes it,
    /// else it waits on the ready list. One past its allowance or its duration is dropped
    /// instead, which closes it.
    fn release(&self, conn: Conn, pools: &ClusterPools) {
        if !conn.life.reusable(&pools.stats.cx_max_duration_reached) {
            return;
        }
        let mut state = self.lock();
        let mut conn = conn;
        while let Some(waiter) = state.pending.pop_front() {
            match waiter.send(Ok(conn)) {
                Ok(()) => return,
                // That request gave up waiting; the next one takes the connection.
                Err(Ok(back)) => conn = back,
                Err(Err(_)) => return,
            }
        }
        // Stamped, not timed: the connection's one watcher reads the stamp, so a request
        // costs no timer (an HTTP/1.1 connection returns here after every request).
        state.ready.push(Ready {
            conn,
            idle_since: tokio::time::Instant::now(),
        });
    }

    /// A connection a request got but could not use (`max_requests` overflow): an HTTP/1.1
    /// one goes back to the pool; an HTTP/2 share is just dropped, the pool keeps its own.
    fn give_back(&self, conn: Conn) {
        if conn.is_shared() {
            return;
        }
        if let Some(pools) = self.owner.upgrade() {
            self.release(conn, &pools);
        }
    }

    /// After a response head: an HTTP/1.1 request stays active (`max_requests`) until its
    /// response is read to the end, when the connection can take the next request and
    /// returns to the pool (unless its allowance or duration is spent). An HTTP/2 stream
    /// returns its hold: its `max_requests` unit and its token on the connection, kept for as
    /// long as the response body carries them.
    pub fn finish(&self, mut conn: Conn, request: Guard) -> Option<StreamHold> {
        if !matches!(conn.sender, Sender::Http1(_)) {
            return Some(StreamHold::new(conn.take_stream(), request));
        }
        let pool = self.myself.upgrade()?;
        tokio::spawn(async move {
            let ready = match &mut conn.sender {
                Sender::Http1(s) => s.ready().await.is_ok(),
                Sender::Http2(_) => false,
            };
            drop(request);
            if let (true, Some(pools)) = (ready, pool.owner.upgrade()) {
                pool.release(conn, &pools);
            }
        });
        None
    }

    /// A connection ended: forget it; requests still waiting may now get a connection.
    fn closed(&self, id: u64) {
        let Some(pools) = self.owner.upgrade() else {
            return;
        };
        let mut state = self.lock();
        state.open = state.open.saturating_sub(1);
        state.ready.retain(|r| r.conn.id != id);
        if !state.pending.is_empty() {
            let breakers = pools.breakers.priority(self.priority);
            self.maybe_open(&mut state, &pools, breakers);
        }
        Self::give_back_unit_if_idle_locked(&mut state);
    }

    /// Gives back the pool's `max_connection_pools` unit when it has no connection and
    /// nothing waits, as Envoy drops such pools.
    fn give_back_unit_if_idle(&self) {
        Self::give_back_unit_if_idle_locked(&mut self.lock());
    }

    fn give_back_unit_if_idle_locked(state: &mut State) {
        if state.open == 0 && state.pending.is_empty() {
            state.unit = None;
        }
    }
}

impl Watched for HostPool {
    fn idle_for(&self, id: u64) -> Option<Duration> {
        let state = self.lock();
        let r = state.ready.iter().find(|r| r.conn.id == id)?;
        r.conn.life.idle_for(r.idle_since)
    }

    fn retire(&self, id: u64) -> bool {
        let taken = {
            let mut state = self.lock();
            let at = state.ready.iter().position(|r| r.conn.id == id);
            at.map(|i| state.ready.remove(i))
        };
        // Dropped here, outside the lock.
        taken.is_some()
    }

    fn stream_ended(&self, id: u64) {
        let Some(pools) = self.owner.upgrade() else {
            return;
        };
        let mut state = self.lock();
        if state.pending.is_empty() {
            return;
        }
        let State { ready, pending, .. } = &mut *state;
        let Some(i) = ready.iter().position(|r| r.conn.id == id) else {
            return;
        };
        let (spent, unused) = Self::hand_out(pending, &mut ready[i].conn, &pools);
        let retired = spent.then(|| ready.remove(i));
        drop(state);
        drop(unused);
        drop(retired);
    }
}

#[cfg(test)]
#[path = "host_pool_tests.rs"]
mod tests;
