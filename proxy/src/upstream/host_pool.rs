//! Envoy's connection pool for one host and priority: ready connections, the requests pending
//! for one, and the connections being opened. The circuit breakers decide when a request may
//! wait (`max_pending_requests`), when a connection may open (`max_connections`, except the
//! host's first, which Envoy always opens) and when a request may start (`max_requests`).
//! An HTTP/1.1 connection carries one request at a time and returns to the ready list when its
//! response is read; an HTTP/2 connection stays ready and carries every request.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/connection_pooling

use super::circuit_breakers::{CircuitBreakers, Guard, PriorityBreakers};
use super::pool::{UpstreamBody, UpstreamError};
use super::transport::Destination;
use crate::config::circuit_breakers::Priority;
use hyper::client::conn::{http1, http2};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use tokio::sync::oneshot;

pub enum Sender {
    Http1(http1::SendRequest<UpstreamBody>),
    Http2(http2::SendRequest<UpstreamBody>),
}

impl Sender {
    fn usable(&self) -> bool {
        match self {
            Sender::Http1(s) => s.is_ready(),
            Sender::Http2(s) => !s.is_closed(),
        }
    }
}

/// A connection as the pool hands it out: an HTTP/1.1 one to one request at a time, an
/// HTTP/2 one shared (each request holds a clone of its sender).
pub struct Conn {
    pub sender: Sender,
    pub local: Option<SocketAddr>,
    id: u64,
}

impl Conn {
    /// Another handle on a shared (HTTP/2) connection; None for HTTP/1.1.
    fn share(&self) -> Option<Conn> {
        match &self.sender {
            Sender::Http2(s) => Some(Conn {
                sender: Sender::Http2(s.clone()),
                local: self.local,
                id: self.id,
            }),
            Sender::Http1(_) => None,
        }
    }
}

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
}

/// Opens connections for the pools (the cluster's connector and HTTP/2 settings, in pool.rs).
pub trait Opener: Send + Sync + 'static {
    /// Connects to `destination` and hands back the sender; the opener spawns the
    /// connection's driver, which must hold `closed` until the connection ends.
    fn open(&self, destination: Destination, http2: bool, closed: ConnectionClosed) -> Opening;
}

/// A connection being opened: its sender and local address, or why it failed.
pub type Opening = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<(Sender, Option<SocketAddr>), UpstreamError>>
            + Send,
    >,
>;

/// Held by a connection's driver: when dropped (the connection ended or never opened), the
/// pool forgets the connection and gives its `max_connections` unit back.
pub struct ConnectionClosed {
    pool: Weak<HostPool>,
    id: u64,
    _connection: Guard,
    /// Alive while the connection is: its idle watcher stops when this goes.
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
}

type Key = (Destination, Priority, bool);

/// Every pool of a cluster, by host (and its transport), priority and protocol (Envoy keys its
/// pools so too).
/// A pool goes away when its last connection closes with nothing pending, as Envoy's idle
/// pools do, giving back its `max_connection_pools` unit.
pub struct HostPools {
    map: Mutex<HashMap<Key, Arc<HostPool>>>,
    breakers: Arc<CircuitBreakers>,
    stats: PoolStats,
    opener: Arc<dyn Opener>,
    idle_timeout: Option<Duration>,
    /// Connections are never reused (`max_requests_per_connection: 1`).
    single_use: bool,
    myself: Weak<HostPools>,
}

/// One host's pool for one priority and protocol.
pub struct HostPool {
    key: Key,
    state: Mutex<State>,
    owner: Weak<HostPools>,
    myself: Weak<HostPool>,
    next_id: AtomicU64,
    _pool: Guard,
}

/// A request's hold on a connection: the connection, and the `max_requests` unit.
pub struct Attached {
    pub conn: Conn,
    pub pool: Arc<HostPool>,
    pub request: Guard,
}

impl HostPools {
    pub fn new(
        breakers: Arc<CircuitBreakers>,
        stats: PoolStats,
        opener: Arc<dyn Opener>,
        idle_timeout: Option<Duration>,
        single_use: bool,
        myself: Weak<HostPools>,
    ) -> Self {
        HostPools {
            map: Mutex::new(HashMap::new()),
            breakers,
            stats,
            opener,
            idle_timeout,
            single_use,
            myself,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Arc<HostPool>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a connection to `destination` as Envoy's pool does, and admits the request
    /// on it. Overflow of `max_pending_requests` or `max_requests` fails with
    /// [`UpstreamError::Overflow`].
    pub async fn attach(
        &self,
        destination: &Destination,
        priority: Priority,
        http2: bool,
    ) -> Result<Attached, UpstreamError> {
        let breakers = self.breakers.priority(priority);
        let pool = {
            let key = (destination.clone(), priority, http2);
            let mut map = self.lock();
            map.entry(key.clone())
                .or_insert_with(|| {
                    Arc::new_cyclic(|myself| HostPool {
                        key,
                        state: Mutex::new(State::default()),
                        owner: self.myself.clone(),
                        myself: myself.clone(),
                        next_id: AtomicU64::new(0),
                        _pool: breakers.connection_pools.acquire(),
                    })
                })
                .clone()
        };
        let ready = pool.checkout();
        let conn = match ready {
            Some(conn) => conn,
            None => {
                let Some(_pending) = breakers.pending_requests.try_acquire() else {
                    self.stats.rq_pending_overflow.inc();
                    pool.forget_if_idle();
                    return Err(UpstreamError::Overflow);
                };
                self.stats.rq_pending_total.inc();
                self.stats.rq_pending_active.inc();
                let waited = pool.wait(self, breakers).await;
                self.stats.rq_pending_active.dec();
                waited?
            }
        };
        let Some(request) = breakers.requests.try_acquire() else {
            self.stats.rq_active_overflow.inc();
            pool.release(conn);
            return Err(UpstreamError::Overflow);
        };
        self.stats.rq_total.inc();
        Ok(Attached {
            conn,
            pool,
            request,
        })
    }
}

impl HostPool {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn http2(&self) -> bool {
        self.key.2
    }

    /// A ready connection: HTTP/1.1 takes it off the list, HTTP/2 shares it.
    fn checkout(&self) -> Option<Conn> {
        let mut state = self.lock();
        if self.http2() {
            state.ready.retain(|r| r.conn.sender.usable());
            return state.ready.first().and_then(|r| r.conn.share());
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
        pools: &HostPools,
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

    /// Envoy's rule: open a connection when more requests wait than connections are opening
    /// (HTTP/2: when none is opening), within `max_connections`, counting
    /// `upstream_cx_overflow` when over it; a pool without any connection opens one anyway.
    fn maybe_open(&self, state: &mut State, pools: &HostPools, breakers: &PriorityBreakers) {
        let needed = if self.http2() {
            state.connecting == 0 && !state.pending.is_empty()
        } else {
            state.pending.len() > state.connecting
        };
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
        let opening = pools.opener.open(self.key.0.clone(), self.http2(), closed);
        let Some(pool) = self.myself.upgrade() else {
            return;
        };
        let idle_timeout = pools.idle_timeout.filter(|_| !self.http2());
        tokio::spawn(async move {
            let opened = opening.await;
            if let (true, Some(timeout)) = (opened.is_ok(), idle_timeout) {
                pool.watch_idle(id, timeout, alive);
            }
            pool.opened(id, opened);
        });
    }

    fn opened(&self, id: u64, result: Result<(Sender, Option<SocketAddr>), UpstreamError>) {
        // The cluster's pools are gone (the cluster was removed): nothing waits any more.
        if self.owner.upgrade().is_none() {
            return;
        }
        let mut state = self.lock();
        state.connecting = state.connecting.saturating_sub(1);
        match result {
            Ok((sender, local)) => {
                let conn = Conn { sender, local, id };
                drop(state);
                self.release(conn);
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

    /// One task per HTTP/1.1 connection for its whole life: it closes the connection once it
    /// has sat ready (unused) for `timeout`, and ends with the connection.
    fn watch_idle(&self, id: u64, timeout: Duration, alive: Weak<()>) {
        let pool = self.myself.clone();
        tokio::spawn(async move {
            let mut wait = timeout;
            loop {
                tokio::time::sleep(wait).await;
                if alive.upgrade().is_none() {
                    return;
                }
                let Some(pool) = pool.upgrade() else {
                    return;
                };
                let mut state = pool.lock();
                wait = match state.ready.iter().position(|r| r.conn.id == id) {
                    Some(i) => {
                        let idle = state.ready[i].idle_since.elapsed();
                        if idle >= timeout {
                            // Dropping the sender closes the idle connection.
                            state.ready.remove(i);
                            return;
                        }
                        timeout - idle
                    }
                    // In use: it is stamped again when it comes back.
                    None => timeout,
                };
            }
        });
    }

    /// A connection free for a request: the first waiting request takes it (HTTP/2: every
    /// waiting request shares it), else it waits on the ready list.
    pub fn release(&self, conn: Conn) {
        let mut state = self.lock();
        if self.http2() {
            for waiter in state.pending.drain(..) {
                if let Some(shared) = conn.share() {
                    let _ = waiter.send(Ok(shared));
                }
            }
            if !state.ready.iter().any(|r| r.conn.id == conn.id) {
                state.ready.push(Ready {
                    conn,
                    idle_since: tokio::time::Instant::now(),
                });
            }
            return;
        }
        let mut conn = conn;
        while let Some(waiter) = state.pending.pop_front() {
            match waiter.send(Ok(conn)) {
                Ok(()) => return,
                // That request gave up waiting; the next one takes the connection.
                Err(Ok(back)) => conn = back,
                Err(Err(_)) => return,
            }
        }
        // Stamped, not timed: the connection's one idle watcher reads the stamp, so a
        // request costs no timer (an HTTP/1.1 connection returns here after every request).
        state.ready.push(Ready {
            conn,
            idle_since: tokio::time::Instant::now(),
        });
    }

    /// After a response head: an HTTP/1.1 request stays active (`max_requests`) until its
    /// response is read to the end, when the connection can take the next request and
    /// returns to the pool (unless connections are single use). An HTTP/2 stream gives its
    /// unit back at the response head: hyper does not tell when a shared connection's stream
    /// ends.
    pub fn finish(&self, mut conn: Conn, request: Guard) {
        if !matches!(conn.sender, Sender::Http1(_)) {
            return;
        }
        let Some(pool) = self.myself.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            let ready = match &mut conn.sender {
                Sender::Http1(s) => s.ready().await.is_ok(),
                Sender::Http2(_) => false,
            };
            drop(request);
            let reuse = pool.owner.upgrade().is_some_and(|p| !p.single_use);
            if ready && reuse {
                pool.release(conn);
            }
        });
    }

    /// A connection ended: forget it; requests still waiting may now get a connection.
    fn closed(&self, id: u64) {
        let Some(pools) = self.owner.upgrade() else {
            return;
        };
        {
            let mut state = self.lock();
            state.open = state.open.saturating_sub(1);
            state.ready.retain(|r| r.conn.id != id);
            if !state.pending.is_empty() {
                let breakers = pools.breakers.priority(self.key.1);
                self.maybe_open(&mut state, &pools, breakers);
            }
        }
        self.forget_if_idle();
    }

    /// Drops the pool from its cluster's map when it has no connection and nothing waits.
    fn forget_if_idle(&self) {
        let Some(pools) = self.owner.upgrade() else {
            return;
        };
        let mut map = pools.lock();
        let idle = {
            let state = self.lock();
            state.open == 0 && state.pending.is_empty()
        };
        if idle
            && map
                .get(&self.key)
                .is_some_and(|p| std::ptr::eq(Arc::as_ptr(p), self))
        {
            map.remove(&self.key);
        }
    }
}
