//! Live updates without loss: 1,000 EDS clusters of 10 endpoints arrive over delta ADS (as
//! Istio sends them), then 100 updates (endpoint changes, cluster replacements, route table
//! swaps, listener replacements) are pushed while a load generator keeps 8 connections busy
//! on the clusters being changed, half of them with requests the upstream answers 50 ms late,
//! so that every update finds requests in flight. Not one request may fail.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tests::control_plane::{ControlPlane, CLUSTER, ENDPOINT, LISTENER, ROUTE};
use tests::upstream::DELAY_HEADER;
use tests::xds_resources::{ads_bootstrap, rds_listener, resource};
use tests::{free_port, Kind, RunningProxy, Upstream};
use xds_proto::pb::envoy::config::cluster::v3::Cluster;
use xds_proto::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds_proto::pb::envoy::config::route::v3::RouteConfiguration;
use xds_proto::pb::google::protobuf::Any;

const CLUSTERS: usize = 1000;
const ENDPOINTS: usize = 10;
/// The clusters that get traffic and updates.
const HOT: usize = 20;
const UPDATES: usize = 100;

fn cluster(i: usize, timeout_ms: u64) -> (String, Any) {
    resource::<Cluster>(
        &format!("c{i}"),
        &format!(
            "name: c{i}\ntype: EDS\nconnect_timeout: {}.{:03}s\neds_cluster_config: {{ eds_config: {{ ads: {{}}, resource_api_version: V3 }} }}\n",
            timeout_ms / 1000,
            timeout_ms % 1000
        ),
    )
}

/// Cluster `i`'s assignment: `count` of the upstream ports, starting at `offset`.
fn assignment(i: usize, ports: &[u16], offset: usize, count: usize) -> (String, Any) {
    let endpoints: String = (0..count)
        .map(|k| {
            let port = ports[(offset + k) % ports.len()];
            format!("  - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}\n")
        })
        .collect();
    resource::<ClusterLoadAssignment>(
        &format!("c{i}"),
        &format!("cluster_name: c{i}\nendpoints:\n- lb_endpoints:\n{endpoints}"),
    )
}

fn routes(version: usize) -> (String, Any) {
    let routes: String = (0..HOT)
        .map(|i| {
            format!("    - match: {{ prefix: \"/c{i}/\" }}\n      route: {{ cluster: c{i} }}\n")
        })
        .collect();
    resource::<RouteConfiguration>(
        "routes",
        &format!(
            "name: routes\nresponse_headers_to_add: [{{ header: {{ key: x-routes, value: \"{version}\" }} }}]\nvirtual_hosts:\n- name: all\n  domains: [\"*\"]\n  routes:\n{routes}"
        ),
    )
}

fn listener(port: u16, generation: usize) -> (String, Any) {
    rds_listener(
        "http",
        "127.0.0.1",
        port,
        &format!("soak{generation}"),
        "routes",
    )
}

/// Load on `port` over 8 keep-alive connections until `stop`; counts answers and failures.
struct Load {
    ok: Arc<AtomicU64>,
    in_flight: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16) -> Load {
        let ok = Arc::new(AtomicU64::new(0));
        let in_flight = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (ok, failures, stop, in_flight) = (
                ok.clone(),
                failures.clone(),
                stop.clone(),
                in_flight.clone(),
            );
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the load");
                runtime.block_on(async move {
                    let client: Client<_, Empty<Bytes>> =
                        Client::builder(TokioExecutor::new()).build_http();
                    let workers = (0..8).map(|w| {
                        let (client, ok, failures, stop, in_flight) = (
                            client.clone(),
                            ok.clone(),
                            failures.clone(),
                            stop.clone(),
                            in_flight.clone(),
                        );
                        tokio::spawn(async move {
                            let mut n = 0usize;
                            while !stop.load(Ordering::Relaxed) {
                                let uri = format!("http://127.0.0.1:{port}/c{}/", (w + n) % HOT);
                                n += 1;
                                let mut request = hyper::Request::get(uri.as_str());
                                if w % 2 == 1 {
                                    request = request.header(DELAY_HEADER, "50");
                                }
                                let request = request.body(Empty::new()).expect("a request");
                                in_flight.fetch_add(1, Ordering::SeqCst);
                                let failure = match client.request(request).await {
                                    Ok(response) if response.status() == 200 => {
                                        let _ = response.into_body().collect().await;
                                        None
                                    }
                                    Ok(response) => Some(format!("{uri}: {}", response.status())),
                                    Err(e) => Some(format!("{uri}: {e}")),
                                };
                                in_flight.fetch_sub(1, Ordering::SeqCst);
                                match failure {
                                    None => {
                                        ok.fetch_add(1, Ordering::Relaxed);
                                    }
                                    Some(f) => failures.lock().expect("failures").push(f),
                                }
                            }
                        })
                    });
                    for w in workers.collect::<Vec<_>>() {
                        let _ = w.await;
                    }
                });
            })
        };
        Load {
            ok,
            in_flight,
            failures,
            stop,
            thread: Some(thread),
        }
    }

    /// Requests sent and not yet answered.
    fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::SeqCst)
    }

    fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let failures = self.failures.lock().expect("failures").clone();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

#[test]
fn one_hundred_updates_under_load_lose_nothing() {
    let upstreams: Vec<Upstream> = (0..ENDPOINTS)
        .map(|i| Upstream::start(&format!("u{i}")))
        .collect();
    let ports: Vec<u16> = upstreams.iter().map(|u| u.port()).collect();
    let cp = ControlPlane::start();
    cp.set(CLUSTER, (0..CLUSTERS).map(|i| cluster(i, 1000)).collect());
    cp.set(
        ENDPOINT,
        (0..CLUSTERS)
            .map(|i| assignment(i, &ports, 0, ENDPOINTS))
            .collect(),
    );
    let port = free_port();
    cp.set(LISTENER, vec![listener(port, 0)]);
    cp.set(ROUTE, vec![routes(0)]);
    let proxy = RunningProxy::start(
        Kind::Outrigger,
        &ads_bootstrap(free_port(), cp.port(), true),
        &[],
    );
    let clusters = proxy
        .get("/stats?filter=cluster_manager.active_clusters")
        .body;
    assert!(
        clusters.contains(&format!("active_clusters: {}", CLUSTERS + 1)),
        "{clusters}"
    );

    let load = Load::start(port);
    std::thread::sleep(Duration::from_millis(300));
    let mut endpoint_sets: Vec<(String, Any)> = (0..CLUSTERS)
        .map(|i| assignment(i, &ports, 0, ENDPOINTS))
        .collect();
    let mut cluster_sets: Vec<(String, Any)> = (0..CLUSTERS).map(|i| cluster(i, 1000)).collect();
    let mut swaps_under_load = 0;
    for k in 0..UPDATES {
        let hot = k % HOT;
        if load.in_flight() > 0 {
            swaps_under_load += 1;
        }
        match k % 4 {
            // Endpoints move: a different half of the upstreams.
            0 => {
                endpoint_sets[hot] = assignment(hot, &ports, k, ENDPOINTS / 2);
                cp.set(ENDPOINT, endpoint_sets.clone());
            }
            // The cluster itself changes: it is replaced while requests use it.
            1 => {
                cluster_sets[hot] = cluster(hot, 1000 + k as u64);
                cp.set(CLUSTER, cluster_sets.clone());
            }
            // A new route table.
            2 => cp.set(ROUTE, vec![routes(k)]),
            // The listener is replaced on its socket; its old connections drain.
            _ => cp.set(LISTENER, vec![listener(port, k)]),
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    // Every update answered (the last answer of each type echoes the last response's nonce),
    // and none refused.
    let requests = cp.wait_for(
        Duration::from_secs(30),
        "the last updates to be answered",
        |r| {
            [CLUSTER, ENDPOINT, LISTENER, ROUTE].iter().all(|t| {
                let last_answer = r.iter().rev().find(|r| r.type_url == *t && r.answers());
                last_answer.is_some()
                    && last_answer.map(|a| a.response_nonce.clone()) == cp.last_nonce(t)
            })
        },
    );
    assert!(
        swaps_under_load >= UPDATES * 9 / 10,
        "only {swaps_under_load} of {UPDATES} updates found requests in flight"
    );
    assert!(
        requests.iter().all(|r| r.error.is_none()),
        "a NACK: {requests:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let (ok, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "{} failed of {}: {:?}",
        failures.len(),
        ok,
        &failures[..failures.len().min(20)]
    );
    assert!(ok > 500, "the load generator made only {ok} requests");
    // The updates took effect: the last route table answers.
    let last_routes = (0..UPDATES)
        .rev()
        .find(|k| k % 4 == 2)
        .expect("a route update");
    let response = tests::curl::get(&format!("http://127.0.0.1:{port}/c0/"));
    assert_eq!(
        response.header("x-routes"),
        Some(last_routes.to_string().as_str())
    );
    eprintln!("{ok} requests, none failed, through {UPDATES} updates");
}
