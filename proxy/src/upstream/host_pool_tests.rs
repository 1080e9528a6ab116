//! The pool's bookkeeping over real HTTP/1.1 and HTTP/2 connections held in memory (a hyper
//! server on the far end of a duplex pipe): how many connections a host's requests open
//! under `max_requests_per_connection`, what each one carried, which ones closed, and the
//! counters.

use super::*;
use crate::config::address::Endpoint;
use crate::config::circuit_breakers::CircuitBreakers as BreakerConfig;
use crate::stats::Store;
use crate::upstream::HostStats;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::num::NonZeroU32;

/// Per connection opened, in order: the requests it carried and whether it is still open.
type Log = Arc<Mutex<Vec<(usize, bool)>>>;

/// Opens in-memory connections to a hyper server that answers 200 and logs what it saw;
/// each connection waits `delay` before its handshake, so requests can queue meanwhile.
struct InMemory {
    log: Log,
    delay: Duration,
}

impl Opener for InMemory {
    fn open(&self, _destination: Destination, wire: Wire, closed: ConnectionClosed) -> Opening {
        let http2 = wire == Wire::Http2;
        let log = self.log.clone();
        let delay = self.delay;
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            let (client, server) = tokio::io::duplex(64 * 1024);
            let index = {
                let mut log = log.lock().expect("log");
                log.push((0, true));
                log.len() - 1
            };
            let served = log.clone();
            let service = service_fn(move |_request| {
                if let Some(entry) = served.lock().expect("log").get_mut(index) {
                    entry.0 += 1;
                }
                async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                        Bytes::from_static(b"ok"),
                    )))
                }
            });
            tokio::spawn(async move {
                let io = TokioIo::new(server);
                if http2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                }
                if let Some(entry) = log.lock().expect("log").get_mut(index) {
                    entry.1 = false;
                }
            });
            let io = TokioIo::new(client);
            let fail = |e: hyper::Error| UpstreamError::ConnectFailure(e.to_string());
            let sender = if http2 {
                let (sender, connection) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                        .await
                        .map_err(fail)?;
                tokio::spawn(async move {
                    let _closed = closed;
                    let _ = connection.await;
                });
                Sender::Http2(sender)
            } else {
                let (sender, connection) = hyper::client::conn::http1::handshake(io)
                    .await
                    .map_err(fail)?;
                tokio::spawn(async move {
                    let _closed = closed;
                    let _ = connection.await;
                });
                Sender::Http1(sender)
            };
            Ok((sender, Default::default(), None))
        })
    }
}

struct Fixture {
    pools: Arc<ClusterPools>,
    host: Arc<Host>,
    log: Log,
    stats: PoolStats,
}

fn fixture(max_requests: u32, delay: Duration) -> Fixture {
    fixture_with(max_requests, delay, None, BreakerConfig::default())
}

fn fixture_with(
    max_requests: u32,
    delay: Duration,
    stream_cap: Option<u32>,
    breaker_config: BreakerConfig,
) -> Fixture {
    let store = Store::new();
    let counter = |name: &str| store.counter(name);
    let stats = PoolStats {
        rq_total: counter("rq_total"),
        rq_pending_total: counter("rq_pending_total"),
        rq_pending_overflow: counter("rq_pending_overflow"),
        rq_pending_active: store.gauge("rq_pending_active"),
        rq_active_overflow: counter("rq_active_overflow"),
        cx_overflow: counter("cx_overflow"),
        cx_max_requests: counter("cx_max_requests"),
        cx_max_duration_reached: counter("cx_max_duration_reached"),
        cx_idle_timeout: counter("cx_idle_timeout"),
        rq_cancelled: counter("rq_cancelled"),
    };
    let breakers = Arc::new(CircuitBreakers::new(&breaker_config, &store, "c."));
    let log = Log::default();
    let opener = Arc::new(InMemory {
        log: log.clone(),
        delay,
    });
    let limits = ConnectionLimits {
        idle_timeout: None,
        max_requests: NonZeroU32::new(max_requests),
        max_duration: None,
    };
    let pools = Arc::new_cyclic(|myself| {
        ClusterPools::new(
            breakers,
            stats.clone(),
            opener,
            limits,
            stream_cap,
            myself.clone(),
        )
    });
    let host = Arc::new(Host {
        address: Endpoint::Tcp(([127, 0, 0, 1], 1).into()),
        hostname: String::new(),
        weight: 1,
        priority: 0,
        locality: Default::default(),
        authority: "127.0.0.1:1".parse().expect("authority"),
        transport: crate::upstream::transport::Transport::Plain,
        stats: HostStats::default(),
        health: Default::default(),
        pools: Default::default(),
        istio_peer: None,
    });
    Fixture {
        pools,
        host,
        log,
        stats,
    }
}

/// One request through the pool, its response read to the end.
async fn request(pools: Arc<ClusterPools>, host: Arc<Host>, http2: bool) -> u16 {
    let Ok(Attached {
        mut conn,
        pool,
        request,
        ..
    }) = pools
        .attach(
            &host,
            Default::default(),
            Priority::Default,
            if http2 { Wire::Http2 } else { Wire::Http1 },
        )
        .await
    else {
        return 0;
    };
    let body = Empty::<Bytes>::new().map_err(|e| match e {}).boxed_unsync();
    let mut req = http::Request::new(body);
    if http2 {
        *req.version_mut() = http::Version::HTTP_2;
        *req.uri_mut() = "http://127.0.0.1:1/".parse().expect("uri");
    }
    let sent = match &mut conn.sender {
        Sender::Http1(s) => s.send_request(req).await,
        Sender::Http2(s) => s.send_request(req).await,
    };
    let Ok(response) = sent else {
        return 1;
    };
    let status = response.status().as_u16();
    pool.finish(conn, request);
    let _ = response.into_body().collect().await;
    status
}

/// The log once it holds still (connections close a moment after their last response).
async fn settled(log: &Log) -> Vec<(usize, bool)> {
    let mut last = log.lock().expect("log").clone();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = log.lock().expect("log").clone();
        if now == last {
            return now;
        }
        last = now;
    }
}

#[tokio::test]
async fn http1_connections_close_after_their_allowance() {
    let f = fixture(2, Duration::ZERO);
    for _ in 0..5 {
        assert_eq!(request(f.pools.clone(), f.host.clone(), false).await, 200);
        // The connection returns to the pool once its response is read.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(settled(&f.log).await, [(2, false), (2, false), (1, true)]);
    assert_eq!(f.stats.cx_max_requests.value(), 2);
    assert_eq!(f.stats.rq_total.value(), 5);
}

#[tokio::test]
async fn http2_requests_waiting_for_a_connection_spill_past_its_allowance() {
    // All five wait while the first connection opens: it takes three, and the two left
    // over get a second connection.
    let f = fixture(3, Duration::from_millis(50));
    let requests: Vec<_> = (0..5)
        .map(|_| tokio::spawn(request(f.pools.clone(), f.host.clone(), true)))
        .collect();
    for r in requests {
        assert_eq!(r.await.expect("request task"), 200);
    }
    assert_eq!(settled(&f.log).await, [(3, false), (2, true)]);
    assert_eq!(f.stats.cx_max_requests.value(), 1);
    assert_eq!(f.stats.rq_pending_total.value(), 5);
}

#[tokio::test]
async fn without_a_cap_one_connection_serves_everything() {
    let f = fixture(0, Duration::ZERO);
    for _ in 0..4 {
        assert_eq!(request(f.pools.clone(), f.host.clone(), true).await, 200);
    }
    assert_eq!(settled(&f.log).await, [(4, true)]);
    assert!(f.host.pools.busy(), "the pool keeps its connection");
    assert_eq!(f.stats.cx_max_requests.value(), 0);
}

/// Attaches an HTTP/2 request and sends it, keeping its stream open (the hold a response
/// body would carry) until the returned value is dropped.
async fn open_stream(pools: &Arc<ClusterPools>, host: &Arc<Host>) -> Option<StreamHold> {
    let Attached {
        mut conn,
        pool,
        request,
        ..
    } = pools
        .attach(host, Default::default(), Priority::Default, Wire::Http2)
        .await
        .ok()?;
    let body = Empty::<Bytes>::new().map_err(|e| match e {}).boxed_unsync();
    let mut req = http::Request::new(body);
    *req.version_mut() = http::Version::HTTP_2;
    *req.uri_mut() = "http://127.0.0.1:1/".parse().expect("uri");
    let Sender::Http2(s) = &mut conn.sender else {
        return None;
    };
    s.send_request(req).await.ok()?;
    pool.finish(conn, request)
}

// https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/protocol.proto#envoy-v3-api-field-config-core-v3-http2protocoloptions-max-concurrent-streams
#[tokio::test]
async fn a_full_http2_connection_sends_the_next_stream_to_another_and_takes_it_back_when_one_ends()
{
    let f = fixture_with(0, Duration::ZERO, Some(2), BreakerConfig::default());
    let mut streams = Vec::new();
    for _ in 0..5 {
        streams.push(open_stream(&f.pools, &f.host).await.expect("a stream"));
    }
    // Two, two and one: each connection carries its cap at once.
    assert_eq!(settled(&f.log).await, [(2, true), (2, true), (1, true)]);
    // A stream that ends makes room on its connection for the next request.
    streams.remove(0);
    streams.push(open_stream(&f.pools, &f.host).await.expect("a stream"));
    assert_eq!(settled(&f.log).await, [(3, true), (2, true), (1, true)]);
}

#[tokio::test]
async fn a_request_waits_for_a_stream_to_end_when_no_connection_may_open() {
    let mut breakers = BreakerConfig::default();
    breakers.default.max_connections = 1;
    let f = fixture_with(0, Duration::ZERO, Some(1), breakers);
    let first = open_stream(&f.pools, &f.host).await.expect("a stream");
    let waiting = tokio::spawn({
        let (pools, host) = (f.pools.clone(), f.host.clone());
        async move { open_stream(&pools, &host).await.is_some() }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "no room, no connection: it waits");
    assert_eq!(f.stats.cx_overflow.value(), 1);
    drop(first);
    assert!(
        waiting.await.expect("the waiting request"),
        "it got the freed stream"
    );
    assert_eq!(settled(&f.log).await, [(2, true)]);
}
