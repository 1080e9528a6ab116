//! Differential traffic tests for protocols and streaming: h2c downstream, 1 MiB bodies both
//! ways, a 100 MB response with the proxy's memory sampled, a slow client, 100 concurrent
//! HTTP/2 streams (h2load), gRPC end to end (Python grpcio client and server), websocket
//! upgrades and `Expect: 100-continue`.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};
use tests::curl;
use tests::differential::{
    check, one_vhost, response_text, run_client, summarise, Known, Scenario, Side,
};
use tests::scripted::Behaviour;

const HCM: &str = "https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto";
const UPGRADES: &str =
    "https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/http/upgrades";
const GRPC: &str =
    "https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/other_protocols/grpc";
const FLOW: &str = "https://www.envoyproxy.io/docs/envoy/latest/faq/configuration/flow_control";

/// Differences Outrigger documents (acknowledged fields); none here.
const KNOWN: &[Known] = &[];

const ROUTES: &str = r#"
- match: { prefix: "/h2up" }
  route: { cluster: backend_h2 }
- match: { prefix: "/", grpc: {} }
  route: { cluster: grpc }
- match: { prefix: "/" }
  route: { cluster: backend }
"#;

/// 1 MiB of a repeating pattern, as a file in the side's temporary directory.
fn mebibyte_file(side: &Side) -> String {
    let body: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789"[(i % 36) as usize])
        .collect();
    let path = side.proxy.dir().join("mebibyte.bin");
    fs::write(&path, body).expect("write the request body");
    path.display().to_string()
}

fn post_mebibyte(side: &Side, path: &str, extra: &[&str]) -> String {
    let file = format!("@{}", mebibyte_file(side));
    let mut args = vec!["--path-as-is", "--data-binary", file.as_str()];
    args.extend_from_slice(extra);
    match curl::request("POST", &side.url(path), &args) {
        Ok(r) => response_text(r.status, &r.headers, r.body.as_bytes()),
        Err(f) => format!("  no response: curl exit {:?}\n", f.exit_code),
    }
}

fn post_h1(side: &Side) -> String {
    post_mebibyte(side, "/echo", &[])
}

fn post_h2(side: &Side) -> String {
    post_mebibyte(side, "/echo", &["--http2-prior-knowledge"])
}

fn post_h1_to_h2(side: &Side) -> String {
    post_mebibyte(side, "/h2up/echo", &[])
}

/// The resident set size of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Downloads a 100 MB response to /dev/null while sampling the proxy's RSS; the text says
/// whether everything arrived and whether the growth stayed under 64 MiB (the proxy streams,
/// it does not buffer the response).
fn large_download(side: &Side) -> String {
    let pid = side.proxy.pid();
    let baseline = rss_kib(pid);
    let peak = AtomicU64::new(baseline);
    let done = AtomicBool::new(false);
    let (code, out, err) = thread::scope(|scope| {
        scope.spawn(|| {
            // Sampling, not synchronisation: the loop ends when the download does.
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                thread::sleep(Duration::from_millis(20));
            }
        });
        let result = run_client(
            "curl",
            &[
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{size_download}",
                &side.url("/big"),
            ],
            Duration::from_secs(60),
        );
        done.store(true, Ordering::Relaxed);
        result
    });
    let growth_mib = peak.load(Ordering::Relaxed).saturating_sub(baseline) / 1024;
    if side.kind == tests::Kind::Outrigger {
        eprintln!("large_download: outrigger RSS grew {growth_mib} MiB");
    }
    format!(
        "  curl exit {code:?}: {out} {}\n  rss growth under 64 MiB: {}\n",
        err.trim(),
        growth_mib < 64
    )
}

/// A client reading at 512 KiB/s: the proxy must hold the upstream back, not fail.
fn slow_client(side: &Side) -> String {
    let (code, out, err) = run_client(
        "curl",
        &[
            "-sS",
            "--limit-rate",
            "512K",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}",
            &side.url("/slow-reader"),
        ],
        Duration::from_secs(30),
    );
    format!("  curl exit {code:?}: {out} {}\n", err.trim())
}

/// h2load's summary lines: every request must succeed with a 2xx.
fn h2load(side: &Side, path: &str) -> String {
    let (code, out, err) = run_client(
        "h2load",
        &["-n", "1000", "-c", "1", "-m", "100", &side.url(path)],
        Duration::from_secs(60),
    );
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("requests:") || l.starts_with("status codes:"))
        .collect();
    format!(
        "  h2load exit {code:?}\n  {}\n  {}\n",
        lines.join("\n  "),
        err.trim()
    )
}

fn h2load_h1_upstream(side: &Side) -> String {
    h2load(side, "/load")
}

fn h2load_h2_upstream(side: &Side) -> String {
    h2load(side, "/h2up/load")
}

const GRPC_SCRIPT: &str = r#"
import sys
try:
    import grpc
except ImportError:
    print("skipped: python grpcio is not installed", flush=True)
    sys.exit(0)
from concurrent import futures

if sys.argv[1] == "server":
    def unary(request, context):
        context.set_trailing_metadata((("x-trailer", "yes"),))
        return b"echo:" + request
    def fail(request, context):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad request")
    def stream(request, context):
        for i in range(3):
            yield b"part%d" % i
    handler = grpc.method_handlers_generic_handler("test.Echo", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port("127.0.0.1:" + sys.argv[2])
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()
else:
    channel = grpc.insecure_channel(sys.argv[2])
    response, call = channel.unary_unary("/test.Echo/Unary").with_call(b"hello", timeout=5)
    trailers = sorted((k, v) for k, v in call.trailing_metadata() if k == "x-trailer")
    print("unary", response, trailers, call.code())
    for method in ["Fail", "Missing"]:
        try:
            channel.unary_unary("/test.Echo/" + method)(b"x", timeout=5)
            print(method, "succeeded")
        except grpc.RpcError as e:
            print(method, e.code(), e.details())
    print("stream", list(channel.unary_stream("/test.Echo/Stream")(b"", timeout=5)))
"#;

/// Kills the gRPC server this test started (by its own child handle) when dropped.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn grpc_end_to_end(side: &Side) -> String {
    let port = side.ports.get("grpc_port").to_string();
    let mut server = match Command::new("python3")
        .args(["-c", GRPC_SCRIPT, "server", &port])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(child) => ChildGuard(child),
        Err(e) => return format!("  skipped: cannot run python3: {e}\n"),
    };
    let mut first = String::new();
    if let Some(stdout) = server.0.stdout.take() {
        // The server prints one line once it listens (or that grpcio is missing) and exits
        // on error, so this read ends either way.
        let _ = BufReader::new(stdout).read_line(&mut first);
    }
    if first.trim() != "ready" {
        return format!("  {}\n", first.trim());
    }
    let target = format!("127.0.0.1:{}", side.ports.get("listener_port"));
    let (code, out, err) = run_client(
        "python3",
        &["-c", GRPC_SCRIPT, "client", &target],
        Duration::from_secs(30),
    );
    let err = err.lines().last().unwrap_or_default().to_string();
    format!("  client exit {code:?}\n{out}  {err}\n")
}

const WEBSOCKET_REQUEST: &str = "GET /ws HTTP/1.1\r\nHost: ws.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// Upgrades, then sends bytes through the tunnel and reads the echo, then half-closes.
fn websocket_echo(side: &Side) -> String {
    let Ok(mut stream) = TcpStream::connect(side.addr("listener_port")) else {
        return "  cannot connect\n".into();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.write_all(WEBSOCKET_REQUEST.as_bytes());
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default().to_string();
    let mut headers: Vec<String> = lines
        .filter(|l| !l.is_empty())
        .map(|l| l.to_ascii_lowercase())
        .filter(|l| !l.starts_with("date:") && !l.starts_with("x-envoy-upstream-service-time:"))
        .collect();
    headers.sort();
    let mut out = format!("  {status}\n  {}\n", headers.join("\n  "));
    if !status.contains(" 101 ") {
        return out;
    }
    let _ = stream.write_all(b"frame-bytes");
    let mut echoed = [0u8; 11];
    let read = stream.read_exact(&mut echoed);
    out.push_str(&format!(
        "  echo {:?} {}\n",
        read.is_ok(),
        summarise(&echoed, 64)
    ));
    tests::differential::shutdown_write(&stream);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut rest = Vec::new();
    let closed = loop {
        match stream.read(&mut [0u8; 64]) {
            Ok(0) => break true,
            Ok(n) => rest.push(n),
            Err(_) => break false,
        }
        if Instant::now() > deadline {
            break false;
        }
    };
    out.push_str(&format!("  closed after half-close: {closed}\n"));
    out
}

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario::http("h2c_downstream_basic", HCM, &one_vhost(ROUTES))
            .curl("/a?b=c", &["--http2-prior-knowledge"])
            .curl("/post", &["--http2-prior-knowledge", "--data-binary", "h2 body"])
            .curl("/h2up/x", &["--http2-prior-knowledge", "-H", "x-custom: 1"]),
        Scenario::http("codec_http1_only_refuses_h2c", HCM, &one_vhost(ROUTES))
            .hcm("codec_type: HTTP1")
            .get("/h1")
            .curl("/h2", &["--http2-prior-knowledge"])
            .raw(&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..]),
        Scenario::http("codec_http2_only", HCM, &one_vhost(ROUTES))
            .hcm("codec_type: HTTP2")
            .curl("/h2", &["--http2-prior-knowledge"])
            .get("/h1")
            .raw(&b"GET /h1 HTTP/1.1\r\nhost: x\r\n\r\n"[..]),
        Scenario::http("post_1mib_h1_echo", FLOW, &one_vhost(ROUTES))
            .upstream(Behaviour::Echo)
            .custom(post_h1),
        Scenario::http("post_1mib_h2_echo", FLOW, &one_vhost(ROUTES))
            .upstream(Behaviour::Echo)
            .custom(post_h2),
        Scenario::http("post_1mib_h1_to_h2_upstream_echo", FLOW, &one_vhost(ROUTES))
            .upstream(Behaviour::Echo)
            .custom(post_h1_to_h2),
        Scenario::http("stream_100mb_bounded_memory", FLOW, &one_vhost(ROUTES))
            .upstream(Behaviour::Stream(100 * 1024 * 1024))
            .custom(large_download),
        Scenario::http("slow_client_reading", FLOW, &one_vhost(ROUTES))
            .upstream(Behaviour::Stream(1024 * 1024))
            .custom(slow_client),
        Scenario::http(
            "h2load_100_concurrent_streams",
            "https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/protocol.proto#config-core-v3-http2protocoloptions",
            &one_vhost(ROUTES),
        )
        .custom(h2load_h1_upstream)
        .custom(h2load_h2_upstream),
        Scenario::http("grpc_end_to_end", GRPC, &one_vhost(ROUTES)).custom(grpc_end_to_end),
        Scenario::http("trailers_h2_to_h2", GRPC, &one_vhost(ROUTES))
            .upstream(Behaviour::Trailers)
            .curl("/h2up/t", &["--http2-prior-knowledge"])
            .get("/h2up/t"),
        Scenario::http("websocket_upgrade", UPGRADES, &one_vhost(ROUTES))
            .hcm("upgrade_configs: [{ upgrade_type: websocket }]")
            .upstream(Behaviour::WebsocketEcho)
            .custom(websocket_echo),
        Scenario::http("websocket_without_upgrade_config_403", UPGRADES, &one_vhost(ROUTES))
            .upstream(Behaviour::WebsocketEcho)
            .custom(websocket_echo)
            .get("/plain"),
        Scenario::http(
            "expect_100_continue",
            "https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto#envoy-v3-api-field-extensions-filters-network-http-connection-manager-v3-httpconnectionmanager-proxy-100-continue",
            &one_vhost(ROUTES),
        )
        .upstream(Behaviour::Echo)
        .curl("/expect", &["-H", "expect: 100-continue", "--data-binary", "continued"])
        // The body follows the head at once, so the exchange completes either way.
        .raw("POST /expect HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\nhello")
        .curl(
            "/expect",
            &["--http2-prior-knowledge", "-H", "expect: 100-continue", "--data-binary", "h2"],
        ),
    ]
}

#[test]
fn protocols_match_envoy() {
    check("protocols_match_envoy", &scenarios(), KNOWN);
}
