//! Differential scenarios for how downstream connections live and end, in the stats Envoy
//! keeps for them: who closed the connection (`downstream_cx_destroy_local`/`_remote`), whether
//! a request was on it then (`..._active_rq`, `downstream_rq_rx_reset`), the timers that close
//! it, upgrades, HTTP/2 stream resets and the bytes either way. Each scenario reads the
//! connection manager's and the listener's stats after its traffic and compares them with
//! Envoy's.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/stats
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/listeners/stats

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tests::differential::{check, one_vhost, Known, Scenario, Side};
use tests::scripted::Behaviour;

const HCM_STATS: &str =
    "https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/stats";

const KNOWN: &[Known] = &[Known {
    scenario: "curl_http2",
    reason: "HTTP/2 framing: the bytes sent differ by a few bytes from Envoy's codec (its \
                 SETTINGS frame and HPACK encoding), as upstream_cx_tx_bytes_total of HTTP/2 \
                 clusters in stats_prometheus.rs",
}];

fn routes() -> String {
    one_vhost(
        r#"
        - match: { prefix: "/direct" }
          direct_response: { status: 200, body: { inline_string: "direct\n" } }
        - match: { prefix: "/" }
          route: { cluster: backend }
        "#,
    )
}

fn scenario(name: &'static str, upstream: Behaviour) -> Scenario {
    Scenario::http(name, HCM_STATS, &routes()).upstream(upstream)
}

/// The connection stats of the connection manager and its listener, once the connections
/// have had time to close. Values that depend on timing (histograms) are left out.
fn connection_stats(side: &Side) -> String {
    std::thread::sleep(Duration::from_millis(500));
    let stats = side.proxy.get(
        "/stats?filter=^(http\\.traffic\\.downstream_(cx_(total|active|destroy.*|http(1|2|3)_(total|active)|rx_bytes_total|tx_bytes_total|ssl_.*|upgrades_.*|idle_timeout|max_duration_reached|max_requests_reached|drain_close|protocol_error)|rq_(total|active|http(1|2|3)_total|completed|rx_reset|(1|2|3|4|5)xx|header_timeout))|listener\\.127\\.0\\.0\\.1_\\d+\\.(downstream_cx_(total|active|destroy)|downstream_pre_cx_.*|worker_0\\..*|http\\..*))$",
    );
    stats
        .body
        .lines()
        .filter(|l| l.contains(": "))
        .map(|l| format!("  {l}\n"))
        .collect()
}

/// Writes `request` on a fresh connection, reads for `read` (or until the proxy closes), then
/// closes; returns whether the proxy closed first.
fn exchange(side: &Side, request: &[u8], read: Duration) -> String {
    let Ok(mut stream) = TcpStream::connect(side.addr("listener_port")) else {
        return "  no connection\n".into();
    };
    let _ = stream.write_all(request);
    let deadline = Instant::now() + read;
    let mut buf = [0u8; 4096];
    let mut got = 0;
    let closed = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break false;
        }
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break false
            }
            Err(_) => break true,
        }
    };
    format!(
        "  read something: {}; closed by the proxy: {closed}\n",
        got > 0
    )
}

/// A direct response: a proxied one's `x-envoy-upstream-service-time` varies in width.
const GET: &[u8] = b"GET /direct HTTP/1.1\r\nhost: example.test\r\n\r\n";
const SLOW: &[u8] = b"GET /slow HTTP/1.1\r\nhost: example.test\r\n\r\n";

fn idle_then_client_closes(side: &Side) -> String {
    exchange(side, GET, Duration::from_millis(300))
}

/// Three requests in one write on one connection: with `max_requests_per_connection: 2` the
/// second response says `connection: close` and the third request is not answered.
fn three_requests(side: &Side) -> String {
    let Ok(mut stream) = TcpStream::connect(side.addr("listener_port")) else {
        return "  no connection\n".into();
    };
    let _ = stream.write_all(&[GET, GET, GET].concat());
    let _ = stream.set_read_timeout(Some(Duration::from_millis(1500)));
    let mut all = Vec::new();
    let _ = stream.read_to_end(&mut all);
    let text = String::from_utf8_lossy(&all).to_ascii_lowercase();
    format!(
        "  responses: {}; saying connection: close: {}\n",
        text.matches("http/1.1 200").count(),
        text.matches("connection: close").count()
    )
}

fn stays(side: &Side) -> String {
    exchange(side, GET, Duration::from_millis(1500))
}

fn closes_mid_response(side: &Side) -> String {
    exchange(side, SLOW, Duration::from_millis(300))
}

fn closes_mid_head(side: &Side) -> String {
    exchange(
        side,
        b"GET /partial HTTP/1.1\r\nhost: example.test\r\n",
        Duration::from_millis(300),
    )
}

fn asks_to_close(side: &Side) -> String {
    exchange(
        side,
        b"GET /direct/close HTTP/1.1\r\nhost: example.test\r\nconnection: close\r\n\r\n",
        Duration::from_millis(1500),
    )
}

fn websocket(side: &Side) -> String {
    let upgrade = b"GET /ws HTTP/1.1\r\nhost: example.test\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n";
    let Ok(mut stream) = TcpStream::connect(side.addr("listener_port")) else {
        return "  no connection\n".into();
    };
    let _ = stream.write_all(upgrade);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 4096];
    let head = stream.read(&mut buf).unwrap_or(0);
    let switched = buf[..head].starts_with(b"HTTP/1.1 101");
    let _ = stream.write_all(b"ping");
    let echoed = stream.read(&mut buf).unwrap_or(0);
    drop(stream);
    format!("  switched: {switched}; echoed {echoed} bytes\n")
}

/// An HTTP/2 client (prior knowledge) that gives up on a slow request: hyper's client resets
/// the stream (`RST_STREAM`, CANCEL) and keeps its connection, on which a second request
/// then completes.
fn http2_stream_reset(side: &Side) -> String {
    let addr = side.addr("listener_port");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let Ok(tcp) = tokio::net::TcpStream::connect(addr).await else {
            return "  no connection\n".to_string();
        };
        let io = hyper_util::rt::TokioIo::new(tcp);
        let Ok((mut sender, connection)) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await
        else {
            return "  no handshake\n".to_string();
        };
        let driver = tokio::spawn(connection);
        let request = |path: &str| {
            hyper::Request::get(format!("http://example.test{path}"))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .expect("a request")
        };
        let slow = tokio::time::timeout(
            Duration::from_millis(300),
            sender.send_request(request("/slow")),
        )
        .await;
        let gave_up = slow.is_err();
        // The stream's reset reaches the proxy before the connection goes.
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(sender);
        driver.abort();
        format!("  gave up: {gave_up}\n")
    })
}

fn scenarios() -> Vec<Scenario> {
    vec![
        // A keep-alive connection the client closes when it has its response: remote, no
        // request on it; the bytes of a known request and response.
        scenario(
            "client_closes_an_idle_connection",
            Behaviour::Delay(Duration::ZERO),
        )
        .custom(idle_then_client_closes)
        .custom(connection_stats),
        // The client leaves while the upstream is still answering: remote with the request on
        // it, whose stream counts as reset by the client.
        scenario(
            "client_closes_mid_response",
            Behaviour::Delay(Duration::from_secs(2)),
        )
        .custom(closes_mid_response)
        .custom(connection_stats),
        // The client leaves halfway through a request head: Envoy's codec had a stream for it.
        scenario(
            "client_closes_mid_request_head",
            Behaviour::Delay(Duration::ZERO),
        )
        .custom(closes_mid_head)
        .custom(connection_stats),
        // `connection: close` from the client: the proxy closes once it has answered.
        scenario("client_asks_to_close", Behaviour::Delay(Duration::ZERO))
            .custom(asks_to_close)
            .custom(connection_stats),
        // Clients that stay until the proxy closes, or 1.5 s: the idle timeout and the
        // connection's maximum duration. Both start a drain of `drain_timeout` (5 s by
        // default: the client leaves first) before the proxy closes (0.2 s: it closes first).
        // https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto#envoy-v3-api-field-extensions-filters-network-http-connection-manager-v3-httpconnectionmanager-drain-timeout
        scenario("idle_timeout", Behaviour::Delay(Duration::ZERO))
            .hcm("common_http_protocol_options: { idle_timeout: 0.3s }")
            .custom(stays)
            .custom(connection_stats),
        scenario(
            "idle_timeout_then_short_drain",
            Behaviour::Delay(Duration::ZERO),
        )
        .hcm("common_http_protocol_options: { idle_timeout: 0.3s }\ndrain_timeout: 0.2s")
        .custom(stays)
        .custom(connection_stats),
        // https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/protocol.proto#envoy-v3-api-field-config-core-v3-httpprotocoloptions-max-requests-per-connection
        scenario(
            "max_requests_per_connection",
            Behaviour::Delay(Duration::ZERO),
        )
        .hcm("common_http_protocol_options: { max_requests_per_connection: 2 }")
        .custom(three_requests)
        .custom(connection_stats),
        scenario("max_connection_duration", Behaviour::Delay(Duration::ZERO))
            .hcm("common_http_protocol_options: { max_connection_duration: 0.3s }")
            .custom(stays)
            .custom(connection_stats),
        // A websocket: the upgrade is counted, and its stream lasts until the client closes.
        scenario("websocket_upgrade", Behaviour::WebsocketEcho)
            .hcm("upgrade_configs: [{ upgrade_type: websocket }]")
            .custom(websocket)
            .custom(connection_stats),
        // An HTTP/2 client resets one stream; its connection stays until the client leaves.
        scenario(
            "http2_client_resets_a_stream",
            Behaviour::Delay(Duration::from_secs(2)),
        )
        .custom(http2_stream_reset)
        .custom(connection_stats),
        // curl over HTTP/1.1 and HTTP/2 (prior knowledge): the codec counters and bytes (of
        // direct responses: a proxied one's `x-envoy-upstream-service-time` varies in width).
        scenario("curl_http1", Behaviour::Delay(Duration::ZERO))
            .get("/direct")
            .get("/direct")
            .custom(connection_stats),
        scenario("curl_http2", Behaviour::Delay(Duration::ZERO))
            .curl("/h2", &["--http2-prior-knowledge"])
            .custom(connection_stats),
    ]
}

#[test]
fn downstream_connection_stats_match_envoy() {
    check(
        "downstream_connection_stats_match_envoy",
        &scenarios(),
        KNOWN,
    );
}
