//! The agent's status server (:15020) in front of a real proxy running in this process, asked
//! with curl: pilot-agent's readiness (never ready without xDS, ready once CDS and LDS came over
//! ADS), the merged metrics with an application's, rewritten kubelet probes (HTTP, TCP from
//! 127.0.0.6, gRPC health), and `/drain` and `/quitquitquit` from localhost only.

use outrigger::agent::status::{self, StatusContext, StatusOptions};
use outrigger::server::Proxy;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tests::control_plane::{ControlPlane, CLUSTER, ENDPOINT, LISTENER, ROUTE};
use tests::curl;
use tests::scripted::{Behaviour, Scripted};
use tests::upstream::Reply;
use tests::xds_resources::{
    ads_bootstrap, backend_cluster, backend_endpoints, backend_listener, route_to_backend,
};
use tests::{free_port, Ports, Upstream};

/// A proxy and its status server on one runtime; stopped when dropped.
struct Agent {
    runtime: tokio::runtime::Runtime,
    proxy: Proxy,
    ctx: Arc<StatusContext>,
    status: SocketAddr,
}

impl Agent {
    /// Starts the proxy on `bootstrap` (YAML) and the status server on `status_ip:0`.
    fn start(bootstrap: &str, options: StatusOptions, status_ip: IpAddr) -> Agent {
        use clap::Parser;
        // A drain window of one second: a graceful drain keeps accepting that long.
        let cli = outrigger::cli::Options::parse_from([
            "outrigger",
            "--config-yaml",
            bootstrap,
            "--drain-time-s",
            "1",
        ]);
        let loaded = outrigger::bootstrap::load(&cli.sources()).expect("the bootstrap loads");
        let config = Arc::new(
            outrigger::config::translate_bootstrap(&loaded.bootstrap).expect("it translates"),
        );
        let logging = outrigger::logging::LogControl::detached("warning", None).expect("levels");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let (proxy, ctx, status) = runtime.block_on(async {
            let proxy = Proxy::start(cli, loaded.bootstrap, config, logging, 2)
                .await
                .expect("the proxy starts");
            proxy.start_dynamic();
            proxy.serve();
            let ctx = Arc::new(StatusContext::new(proxy.server.clone(), options));
            let listener = tokio::net::TcpListener::bind((status_ip, 0))
                .await
                .expect("bind the status port");
            let status = listener.local_addr().expect("its address");
            tokio::spawn(status::serve(listener, ctx.clone()));
            (proxy, ctx, status)
        });
        Agent {
            runtime,
            proxy,
            ctx,
            status,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.status.port())
    }

    fn get(&self, path: &str) -> curl::Response {
        curl::get(&self.url(path))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.proxy.server.shutdown();
        let _ = &self.runtime;
    }
}

fn options() -> StatusOptions {
    let mut o = StatusOptions::new(15020);
    o.pod_ip = Some(IpAddr::from([127, 0, 0, 1]));
    o
}

const STATIC: &str = r#"
admin: { address: { socket_address: { address: 127.0.0.1, port_value: {{admin}} } } }
static_resources:
  listeners:
  - name: inbound
    traffic_direction: INBOUND
    address: { socket_address: { address: 127.0.0.1, port_value: {{inbound}} } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: inbound
          cluster: backend
  - name: outbound
    traffic_direction: OUTBOUND
    address: { socket_address: { address: 127.0.0.1, port_value: {{outbound}} } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: outbound
          cluster: backend
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: {{backend}} } } }
"#;

fn static_bootstrap(backend: u16) -> (String, Ports) {
    let ports = Ports::new(&["admin", "inbound", "outbound"]).with("backend", backend);
    (ports.render(STATIC), ports)
}

#[test]
fn without_xds_never_ready_and_metrics_merge_proxy_and_application() {
    let backend = Upstream::start("backend\n");
    let app = Upstream::start_with(Reply::text(
        "# TYPE app_requests_total counter\napp_requests_total 7\n",
    ));
    let (bootstrap, _) = static_bootstrap(backend.port());
    let mut o = options();
    o.scrape = status::config::parse_scrape_config(
        &format!(
            r#"{{"scrape":"true","port":"{}","path":"/stats"}}"#,
            app.port()
        ),
        15020,
    )
    .expect("a scrape config");
    let agent = Agent::start(&bootstrap, o, IpAddr::from([127, 0, 0, 1]));

    // pilot-agent's algorithm wants CDS and LDS updates; a static bootstrap never has them.
    let r = agent.get("/healthz/ready");
    assert_eq!(r.status, 503);
    assert_eq!(
        r.body,
        "config not received from XDS server (is Istiod running?): cds updates: 0 successful, \
         0 rejected; lds updates: 0 successful, 0 rejected\n"
    );

    let r = curl::request(
        "GET",
        &agent.url("/stats/prometheus"),
        &[
            "-H",
            "User-Agent: Prometheus/2.53",
            "-H",
            "X-Prometheus-Scrape-Timeout-Seconds: 5",
        ],
    )
    .expect("a response");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let agent_at = r
        .body
        .find("istio_agent_scrapes_total 1\n")
        .expect("agent metrics");
    let proxy_at = r
        .body
        .find("envoy_server_live{} 1\n")
        .expect("proxy metrics");
    let app_at = r
        .body
        .find("app_requests_total 7\n")
        .expect("application metrics");
    assert!(agent_at < proxy_at && proxy_at < app_at, "{}", r.body);
    assert!(r
        .body
        .contains("# TYPE istio_agent_process_resident_memory_bytes gauge\n"));
    let seen = app.requests();
    let scrape = seen.last().expect("the application was scraped");
    assert_eq!(scrape.path, "/stats");
    assert_eq!(scrape.header("user-agent"), Some("Prometheus/2.53"));
    assert_eq!(
        scrape.header("x-prometheus-scrape-timeout-seconds"),
        Some("5")
    );
    // curl's `Accept: */*` narrowed as pilot-agent narrows it.
    assert_eq!(
        scrape.header("accept"),
        Some("text/plain; q=0.1; version=0.0.4")
    );

    // The query string reaches the proxy's renderer, as pilot-agent passes it to :15090.
    let r = agent.get("/metrics?filter=%5Eserver%5C.live%24");
    assert!(r.body.contains("envoy_server_live{} 1\n"), "{}", r.body);
    assert!(!r.body.contains("envoy_server_uptime"), "{}", r.body);
    assert!(
        r.body.contains("istio_agent_scrapes_total 2\n"),
        "{}",
        r.body
    );

    // Compressed for a scraper that asks (pilot-agent's mux is behind a gzip handler).
    let r = curl::request(
        "GET",
        &agent.url("/metrics"),
        &["-H", "Accept-Encoding: gzip", "-o", "/dev/null", "-D", "-"],
    )
    .expect("a response");
    assert_eq!(r.header("content-encoding"), Some("gzip"));
}

#[test]
fn an_openmetrics_application_sets_the_merged_content_type() {
    let backend = Upstream::start("backend\n");
    let app = Upstream::start_with(Reply {
        status: 200,
        headers: vec![(
            "content-type".into(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8".into(),
        )],
        body: "# TYPE app_up gauge\napp_up 1\n# EOF\n".into(),
    });
    let (bootstrap, _) = static_bootstrap(backend.port());
    let mut o = options();
    o.scrape =
        status::config::parse_scrape_config(&format!(r#"{{"port":"{}"}}"#, app.port()), 15020)
            .expect("a scrape config");
    let agent = Agent::start(&bootstrap, o, IpAddr::from([127, 0, 0, 1]));
    let r = curl::request(
        "GET",
        &agent.url("/stats/prometheus"),
        &["-H", "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"],
    )
    .expect("a response");
    assert_eq!(
        r.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(r.body.ends_with("app_up 1\n# EOF\n"), "{}", r.body);
    assert_eq!(
        app.requests()
            .last()
            .and_then(|s| s.header("accept").map(str::to_string))
            .as_deref(),
        Some("application/openmetrics-text; q=0.2; version=1.0.0,text/plain; q=0.1; version=0.0.4")
    );
}

#[test]
fn ready_once_cds_and_lds_arrive_over_ads() {
    // The control plane comes up only after the first readiness check: an empty answer to the
    // first CDS and LDS requests would be an update too, and ready.
    let cp_port = free_port();
    let upstream = Upstream::start("backend\n");
    let listener_port = free_port();
    let bootstrap = ads_bootstrap(free_port(), cp_port, false);
    let agent = Agent::start(&bootstrap, options(), IpAddr::from([127, 0, 0, 1]));
    let r = agent.get("/healthz/ready");
    assert_eq!(r.status, 503);
    assert!(
        r.body.starts_with("config not received from XDS server"),
        "{}",
        r.body
    );

    let cp = ControlPlane::start_on(cp_port);
    cp.set(CLUSTER, vec![backend_cluster()]);
    cp.set(ENDPOINT, vec![backend_endpoints(upstream.port())]);
    cp.set(ROUTE, vec![route_to_backend()]);
    cp.set(LISTENER, vec![backend_listener("127.0.0.1", listener_port)]);
    let got = curl::body_becomes(
        &agent.url("/healthz/ready"),
        "200 ",
        Duration::from_secs(10),
    );
    assert_eq!(got, "200 ");
    // Both halves are cached once passed, as in pilot-agent.
    assert_eq!(agent.ctx.ready(), Ok(()));
    let r = agent.get("/stats/prometheus");
    assert!(
        r.body
            .contains("# TYPE istio_agent_startup_duration_seconds gauge\n"),
        "{}",
        r.body
    );
}

#[test]
fn extra_readiness_checks_and_ndsz() {
    let cp = ControlPlane::start();
    let bootstrap = ads_bootstrap(free_port(), cp.port(), false);
    cp.set(CLUSTER, vec![backend_cluster()]);
    let backend = Upstream::start("backend\n");
    cp.set(ENDPOINT, vec![backend_endpoints(backend.port())]);
    cp.set(LISTENER, vec![backend_listener("127.0.0.1", free_port())]);
    cp.set(ROUTE, vec![route_to_backend()]);
    let agent = Agent::start(
        &bootstrap,
        StatusOptions::new(15020),
        IpAddr::from([127, 0, 0, 1]),
    );
    // A second status server on the same proxy, with the sidecar's extra check and DNS table.
    let dns_ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = dns_ready.clone();
    let ctx = Arc::new(
        StatusContext::new(agent.proxy.server.clone(), StatusOptions::new(15020))
            .with_readiness_check(Box::new(move || {
                if flag.load(std::sync::atomic::Ordering::SeqCst) {
                    Ok(())
                } else {
                    Err(
                        "istio DNS capture is turned ON and DNS lookup table is not ready yet"
                            .into(),
                    )
                }
            }))
            .with_ndsz(Box::new(|| Some(r#"{"table":{}}"#.to_string()))),
    );
    let port = agent.runtime.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("address").port();
        tokio::spawn(status::serve(l, ctx.clone()));
        port
    });
    let url = format!("http://127.0.0.1:{port}/healthz/ready");
    let got = curl::body_becomes(
        &url,
        "503 istio DNS capture is turned ON and DNS lookup table is not ready yet\n",
        Duration::from_secs(10),
    );
    assert_eq!(
        got,
        "503 istio DNS capture is turned ON and DNS lookup table is not ready yet\n"
    );
    dns_ready.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(curl::get(&url).status, 200);
    let r = curl::get(&format!("http://127.0.0.1:{port}/debug/ndsz"));
    assert_eq!((r.status, r.body.as_str()), (200, r#"{"table":{}}"#));
    // Without a provider: pilot-agent's 404 `{}`.
    let r = agent.get("/debug/ndsz");
    assert_eq!((r.status, r.body.as_str()), (404, "{}"));
}

#[test]
fn app_probes_http_tcp_and_grpc() {
    let backend = Upstream::start("backend\n");
    let (bootstrap, _) = static_bootstrap(backend.port());
    let ok = Upstream::start("alive\n");
    let failing = Upstream::start_with(Reply {
        status: 500,
        headers: vec![],
        body: "broken\n".into(),
    });
    let redirect = Upstream::start_with(Reply {
        status: 302,
        headers: vec![("location".into(), "http://elsewhere.example/login".into())],
        body: String::new(),
    });
    let slow = Scripted::start("slow", Behaviour::Delay(Duration::from_secs(5)));
    let big = Scripted::start("big", Behaviour::Stream(100_000));
    let tcp_open = TcpListener::bind("127.0.0.1:0").expect("bind");
    let tcp_closed = free_port();
    let serving = Scripted::start("grpc", Behaviour::GrpcHealth(Some(1)));
    let not_serving = Scripted::start("grpc", Behaviour::GrpcHealth(Some(2)));
    let unimplemented = Scripted::start("grpc", Behaviour::GrpcHealth(None));
    let probers = format!(
        r#"{{
        "/app-health/ok/livez": {{"httpGet": {{"path": "healthz", "port": {ok}}}, "timeoutSeconds": 2}},
        "/app-health/failing/livez": {{"httpGet": {{"path": "/", "port": {failing}}}}},
        "/app-health/redirect/readyz": {{"httpGet": {{"path": "/", "port": {redirect}}}}},
        "/app-health/slow/livez": {{"httpGet": {{"path": "/", "port": {slow}}}, "timeoutSeconds": 1}},
        "/app-health/big/startupz": {{"httpGet": {{"path": "/", "port": {big}}}}},
        "/app-health/tcp/livez": {{"tcpSocket": {{"port": {tcp_open}}}}},
        "/app-health/tcp/readyz": {{"tcpSocket": {{"port": {tcp_closed}}}}},
        "/app-health/grpc/livez": {{"grpc": {{"port": {serving}, "service": "app"}}, "timeoutSeconds": 2}},
        "/app-health/grpc/readyz": {{"grpc": {{"port": {not_serving}}}}},
        "/app-lifecycle/grpc/prestopz": {{"grpc": {{"port": {unimplemented}}}}}
        }}"#,
        ok = ok.port(),
        failing = failing.port(),
        redirect = redirect.port(),
        slow = slow.port(),
        big = big.port(),
        tcp_open = tcp_open.local_addr().expect("address").port(),
        serving = serving.port(),
        not_serving = not_serving.port(),
        unimplemented = unimplemented.port(),
    );
    let mut o = options();
    o.probers = status::config::parse_app_probers(&probers).expect("probers parse");
    let agent = Agent::start(&bootstrap, o, IpAddr::from([127, 0, 0, 1]));

    // HTTP: status and body passed through, the kubelet's headers forwarded.
    let r = curl::request(
        "GET",
        &agent.url("/app-health/ok/livez"),
        &[
            "-H",
            "X-Probe: kubelet",
            "-H",
            "User-Agent: kube-probe/1.31",
        ],
    )
    .expect("a response");
    assert_eq!((r.status, r.body.as_str()), (200, "alive\n"));
    let seen = ok.requests();
    let probe = seen.last().expect("the probe reached the application");
    assert_eq!(probe.path, "/healthz");
    assert_eq!(probe.header("x-probe"), Some("kubelet"));
    assert_eq!(probe.header("user-agent"), Some("kube-probe/1.31"));
    let r = agent.get("/app-health/failing/livez");
    assert_eq!((r.status, r.body.as_str()), (500, "broken\n"));
    // A redirect to another host counts as success.
    let r = agent.get("/app-health/redirect/readyz");
    assert_eq!((r.status, r.body.as_str()), (200, ""));
    // The probe's timeout, not curl's: a 500 after about a second.
    let started = Instant::now();
    let r = agent.get("/app-health/slow/livez");
    assert_eq!(r.status, 500);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let r = agent.get("/app-health/big/startupz");
    assert_eq!((r.status, r.body.len()), (200, 10 * 1024));

    // TCP: a connect, from 127.0.0.6.
    let accepted = std::thread::spawn(move || tcp_open.accept().map(|(_, peer)| peer));
    let r = agent.get("/app-health/tcp/livez");
    assert_eq!(r.status, 200);
    let peer = accepted
        .join()
        .expect("the accept thread")
        .expect("accepted");
    assert_eq!(peer.ip(), IpAddr::from([127, 0, 0, 6]));
    assert_eq!(agent.get("/app-health/tcp/readyz").status, 500);

    // gRPC health over h2c.
    assert_eq!(agent.get("/app-health/grpc/livez").status, 200);
    let seen = serving.requests();
    let check = seen.last().expect("a health check");
    assert_eq!(check.path, "/grpc.health.v1.Health/Check");
    assert_eq!(check.version, "HTTP/2.0");
    assert_eq!(&check.body[..], &[0, 0, 0, 0, 5, 0x0a, 3, b'a', b'p', b'p']);
    assert_eq!(agent.get("/app-health/grpc/readyz").status, 500);
    assert_eq!(agent.get("/app-lifecycle/grpc/prestopz").status, 500);

    let r = agent.get("/app-health/nobody/livez");
    assert_eq!(
        (r.status, r.body.as_str()),
        (
            400,
            "app prober config does not exists for /app-health/nobody/livez"
        )
    );
}

/// A non-loopback address of this host, to call the status server as a remote peer would.
fn non_loopback_address() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("10.255.255.255:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[test]
fn drain_and_quit_only_from_localhost() {
    let backend = Scripted::start("backend", Behaviour::TcpEcho);
    let (bootstrap, ports) = static_bootstrap(backend.port());
    let agent = Agent::start(&bootstrap, options(), IpAddr::from([0, 0, 0, 0]));
    let inbound: SocketAddr = ([127, 0, 0, 1], ports.get("inbound")).into();
    let outbound: SocketAddr = ([127, 0, 0, 1], ports.get("outbound")).into();
    assert!(curl::connects(inbound) && curl::connects(outbound));

    match non_loopback_address() {
        Some(ip) => {
            for path in ["/drain", "/quitquitquit", "/debug/ndsz"] {
                let url = format!("http://{ip}:{}{path}", agent.status.port());
                let r = curl::request("POST", &url, &[]).expect("a response");
                assert_eq!(
                    (r.status, r.body.as_str()),
                    (403, "Only requests from localhost are allowed\n"),
                    "{path}"
                );
            }
            assert!(!agent.ctx.skip_drain());
        }
        None => eprintln!("no non-loopback address here: the remote refusal is not checked"),
    }
    let r = agent.get("/drain");
    assert_eq!((r.status, r.body.as_str()), (405, "Method Not Allowed\n"));

    let r = curl::post(&agent.url("/drain"));
    assert_eq!((r.status, r.body.as_str()), (200, "OK"));
    assert!(agent.ctx.skip_drain());
    // pilot-agent's drain is graceful: inbound keeps accepting for the drain time (1 s here),
    // then stops.
    let deadline = Instant::now() + Duration::from_secs(5);
    while curl::connects(inbound) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !curl::connects(inbound),
        "the inbound listener still accepts"
    );
    // Outbound keeps serving: a byte goes through the proxy and back.
    let mut stream = std::net::TcpStream::connect(outbound).expect("outbound accepts");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    use std::io::{Read, Write};
    stream.write_all(b"ping").expect("write");
    let mut got = [0u8; 4];
    stream
        .read_exact(&mut got)
        .expect("echoed through the outbound listener");
    assert_eq!(&got, b"ping");
    // Still ready-or-not as before: a drain does not change pilot-agent's verdict.
    assert_eq!(agent.get("/healthz/ready").status, 503);

    let r = curl::post(&agent.url("/quitquitquit"));
    assert_eq!((r.status, r.body.as_str()), (200, "OK"));
    assert!(*agent.proxy.server.shutdown_signal().borrow());
}
