//! One upstream connection as its pool sees it: the sender requests go out on, how many more
//! requests it may start (`max_requests_per_connection`) and when it expires
//! (`max_connection_duration`); and the one task per connection that closes it once it has
//! been idle for the idle timeout or has expired.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/protocol.proto#envoy-v3-api-field-config-core-v3-httpprotocoloptions-max-requests-per-connection

use super::lifecycle::{ConnectionFate, InFlight};
use super::pool::UpstreamBody;
use crate::config::cluster::ConnectionLimits;
use crate::stats::Counter;
use hyper::client::conn::{http1, http2};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::time::Instant;

pub enum Sender {
    Http1(http1::SendRequest<UpstreamBody>),
    Http2(http2::SendRequest<UpstreamBody>),
}

impl Sender {
    pub(super) fn usable(&self) -> bool {
        match self {
            Sender::Http1(s) => s.is_ready(),
            Sender::Http2(s) => !s.is_closed(),
        }
    }
}

/// A connection as the pool hands it out: an HTTP/1.1 one to one request at a time, an
/// HTTP/2 one shared (each request holds a clone of its sender; the pool's own handle keeps
/// the connection's lifetime).
/// What is known of an open connection besides its sender: its local address and, over TLS,
/// the identities at both ends (for `%UPSTREAM_LOCAL_ADDRESS%` and Istio's principals).
#[derive(Debug, Clone, Default)]
pub struct ConnectionFacts {
    pub local: Option<SocketAddr>,
    pub identities: Option<std::sync::Arc<crate::tls::UpstreamIdentities>>,
}

pub struct Conn {
    pub sender: Sender,
    pub facts: ConnectionFacts,
    pub(super) id: u64,
    pub(super) life: Lifetime,
    /// How the connection lives and ends (None for connections the stats do not see).
    pub(super) fate: Option<Arc<ConnectionFate>>,
}

impl Conn {
    /// Another handle on a shared (HTTP/2) connection; None for HTTP/1.1. Shares do not
    /// carry the lifetime, the pool's handle does; each holds a [`StreamToken`] that counts
    /// the stream as active on the connection until the token goes (with the response body).
    pub(super) fn share(&self) -> Option<Conn> {
        match &self.sender {
            Sender::Http2(s) => Some(Conn {
                sender: Sender::Http2(s.clone()),
                facts: self.facts.clone(),
                id: self.id,
                life: Lifetime {
                    _stream: self.life.streams.as_ref().map(StreamToken::new),
                    ..Lifetime::default()
                },
                fate: self.fate.clone(),
            }),
            Sender::Http1(_) => None,
        }
    }

    /// An HTTP/2 connection, which requests share.
    pub(super) fn is_shared(&self) -> bool {
        matches!(self.sender, Sender::Http2(_))
    }

    /// A request starts on the connection: in flight until its response ends. A share
    /// hands its handle on the connection's fate to the request.
    pub(super) fn start(&mut self) -> Option<InFlight> {
        let multiplexed = self.is_shared();
        let fate = match multiplexed {
            true => self.fate.take()?,
            false => self.fate.clone()?,
        };
        Some(ConnectionFate::begin(fate, multiplexed))
    }

    /// The share's stream token, to travel with the response body.
    pub(super) fn take_stream(&mut self) -> Option<StreamToken> {
        self.life._stream.take()
    }
}

/// How much longer a connection may serve: the requests it may still start and its deadline.
#[derive(Default)]
pub(super) struct Lifetime {
    /// Requests it may still start; None without a cap.
    remaining: Option<u32>,
    /// The deadline under `max_connection_duration`.
    expiry: Option<Arc<Expiry>>,
    /// HTTP/2: the pool's handle holds this, and each share a token.
    streams: Option<Arc<Streams>>,
    _stream: Option<StreamToken>,
}

/// An HTTP/2 connection's streams in flight, against the cluster's `max_concurrent_streams`,
/// and when the last one ended, for the idle timeout. A stream is in flight from the request
/// taking its share of the connection until its response body ends or is dropped.
/// Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/protocol.proto#envoy-v3-api-field-config-core-v3-http2protocoloptions-max-concurrent-streams
pub(super) struct Streams {
    born: Instant,
    /// Nanoseconds from `born` to the end of the last stream.
    last_done: AtomicU64,
    active: AtomicU32,
    /// The most streams at once (`u32::MAX` without a cap).
    cap: u32,
    /// Told when a stream ends on a connection that was full, so that a request waiting for
    /// room can take it.
    pool: Weak<dyn Watched>,
    id: u64,
}

impl Streams {
    pub(super) fn new(cap: u32, pool: Weak<dyn Watched>, id: u64) -> Arc<Self> {
        Arc::new(Streams {
            born: Instant::now(),
            last_done: AtomicU64::new(0),
            active: AtomicU32::new(0),
            cap,
            pool,
            id,
        })
    }
}

/// A stream's place on an HTTP/2 connection; dropping it ends the stream for the pool.
pub struct StreamToken(Arc<Streams>);

impl StreamToken {
    /// Counted under the pool's lock, after [`Lifetime::has_room`] said yes.
    fn new(streams: &Arc<Streams>) -> Self {
        streams.active.fetch_add(1, Relaxed);
        StreamToken(streams.clone())
    }
}

impl Drop for StreamToken {
    fn drop(&mut self) {
        let streams = &self.0;
        let nanos = u64::try_from(streams.born.elapsed().as_nanos()).unwrap_or(u64::MAX);
        streams.last_done.store(nanos, Relaxed);
        // Only a connection that was full has requests waiting for its room: the pool's lock
        // is taken then, not for every stream.
        if streams.active.fetch_sub(1, Relaxed) == streams.cap {
            if let Some(pool) = streams.pool.upgrade() {
                pool.stream_ended(streams.id);
            }
        }
    }
}

/// When a connection expires, and whether `upstream_cx_max_duration_reached` was counted for
/// it: the watcher counts it at the deadline, or a request that gives the connection back
/// after the deadline but before the watcher ran does, never both.
pub(super) struct Expiry {
    at: Instant,
    counted: AtomicBool,
}

impl Expiry {
    fn passed(&self) -> bool {
        Instant::now() >= self.at
    }

    /// Counts the expiry once.
    fn count(&self, stat: &Counter) {
        if !self.counted.swap(true, Relaxed) {
            stat.inc();
        }
    }
}

impl Lifetime {
    /// The lifetime of a connection established now under `limits`; an HTTP/2 one counts its
    /// streams in `streams`.
    pub(super) fn new(limits: &ConnectionLimits, streams: Option<Arc<Streams>>) -> Self {
        let now = Instant::now();
        Lifetime {
            streams,
            _stream: None,
            remaining: limits.max_requests.map(|m| m.get()),
            expiry: limits.max_duration.map(|d| {
                Arc::new(Expiry {
                    at: now + d,
                    counted: AtomicBool::new(false),
                })
            }),
        }
    }

    /// The connection may carry one more stream now (always, for HTTP/1.1's pool handle,
    /// which the pool never shares).
    pub(super) fn has_room(&self) -> bool {
        self.streams
            .as_ref()
            .is_none_or(|s| s.active.load(Relaxed) < s.cap)
    }

    /// Takes one request off the allowance. True when that was the last one: Envoy counts
    /// `upstream_cx_max_requests` then and starts draining the connection.
    pub(super) fn start_request(&mut self) -> bool {
        match &mut self.remaining {
            Some(n) if *n > 0 => {
                *n -= 1;
                *n == 0
            }
            _ => false,
        }
    }

    /// The connection may start another request: allowance left and not expired. An
    /// expired one is counted here if its watcher has not counted it yet.
    pub(super) fn reusable(&self, max_duration_reached: &Counter) -> bool {
        if self.remaining == Some(0) {
            return false;
        }
        match &self.expiry {
            Some(e) if e.passed() => {
                e.count(max_duration_reached);
                false
            }
            _ => true,
        }
    }

    pub(super) fn expiry(&self) -> Option<Arc<Expiry>> {
        self.expiry.clone()
    }

    /// How long the connection has had no request, given that its pool handle has waited on
    /// the ready list since `ready_since`; None while a request uses it.
    pub(super) fn idle_for(&self, ready_since: Instant) -> Option<Duration> {
        let waited = ready_since.elapsed();
        let Some(streams) = &self.streams else {
            return Some(waited);
        };
        if streams.active.load(Relaxed) > 0 {
            return None;
        }
        let done = streams.born + Duration::from_nanos(streams.last_done.load(Relaxed));
        Some(waited.min(done.elapsed()))
    }
}

/// What the watcher asks of the connection's pool.
pub(super) trait Watched: Send + Sync + 'static {
    /// How long the connection has waited unused on the ready list; None while in use (or
    /// gone).
    fn idle_for(&self, id: u64) -> Option<Duration>;
    /// Takes the connection off the ready list, if it is there: dropping the pool's handle
    /// closes an idle HTTP/1.1 connection and drains an HTTP/2 one (it takes no new stream
    /// and closes when its streams have finished). True when it was there.
    fn retire(&self, id: u64) -> bool;
    /// A stream ended on an HTTP/2 connection that had no room: a waiting request may take it.
    fn stream_ended(&self, id: u64);
}

/// What a watcher counts.
pub(super) struct WatchStats {
    pub idle_timeout: Arc<Counter>,
    pub max_duration_reached: Arc<Counter>,
}

/// One task per connection for its whole life, spawned only when the connection has a timer:
/// it retires the connection once it has had no request for `idle`, and at its expiry. A connection in use at expiry is closed when its request gives it back
/// (HTTP/1.1, see [`Conn::reusable`]) or when its last stream ends (HTTP/2). The task ends
/// with the connection (`alive`).
pub(super) fn watch(
    pool: Weak<dyn Watched>,
    id: u64,
    idle: Option<Duration>,
    expiry: Option<Arc<Expiry>>,
    alive: Weak<()>,
    stats: WatchStats,
) {
    if idle.is_none() && expiry.is_none() {
        return;
    }
    tokio::spawn(async move {
        let mut idle_check = idle.map(|d| Instant::now() + d);
        loop {
            let wake = match (idle_check, &expiry) {
                (Some(i), Some(e)) => i.min(e.at),
                (Some(i), None) => i,
                (None, Some(e)) => e.at,
                (None, None) => return,
            };
            tokio::time::sleep_until(wake).await;
            if alive.upgrade().is_none() {
                return;
            }
            let Some(pool) = pool.upgrade() else {
                return;
            };
            if let Some(e) = expiry.as_ref().filter(|e| e.passed()) {
                e.count(&stats.max_duration_reached);
                pool.retire(id);
                return;
            }
            if let Some(timeout) = idle {
                // In use: it is stamped again when it comes back, so look again a whole
                // timeout from now.
                let waited = pool.idle_for(id).unwrap_or_default();
                if waited >= timeout {
                    if pool.retire(id) {
                        stats.idle_timeout.inc();
                    }
                    return;
                }
                idle_check = Some(Instant::now() + (timeout - waited));
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    fn limits(max_requests: u32, max_duration: Option<Duration>) -> ConnectionLimits {
        ConnectionLimits {
            idle_timeout: None,
            max_requests: NonZeroU32::new(max_requests),
            max_duration,
        }
    }

    #[tokio::test]
    async fn the_last_allowed_request_is_announced_once_and_ends_reuse() {
        let stat = Counter::default();
        let mut life = Lifetime::new(&limits(3, None), None);
        assert!(!life.start_request());
        assert!(life.reusable(&stat));
        assert!(!life.start_request());
        assert!(life.start_request(), "the third of three is the last");
        assert!(!life.reusable(&stat));
        assert!(!life.start_request(), "announced once");
    }

    #[tokio::test]
    async fn without_a_cap_a_connection_serves_on() {
        let stat = Counter::default();
        let mut life = Lifetime::new(&limits(0, None), None);
        for _ in 0..1000 {
            assert!(!life.start_request());
        }
        assert!(life.reusable(&stat));
    }

    #[tokio::test]
    async fn an_expired_connection_is_not_reused_and_counted_once() {
        let stat = Counter::default();
        let life = Lifetime::new(&limits(0, Some(Duration::from_millis(1))), None);
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(!life.reusable(&stat));
        assert!(!life.reusable(&stat));
        let expiry = life.expiry().expect("an expiry");
        expiry.count(&stat);
        assert_eq!(stat.value(), 1);
    }
}
