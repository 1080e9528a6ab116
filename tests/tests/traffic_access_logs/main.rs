//! Differential access log test: Envoy (the oracle) and Outrigger run the same bootstrap with
//! file access logs in Envoy's default text format, Istio's default text format and JSON (typed,
//! nested, and with `omit_empty_values`) on an HTTP connection manager and on tcp_proxy
//! listeners, and on a listener whose filter chain never matches. The same deterministic
//! traffic goes through both (a 200 from the upstream over HTTP/1.1 and HTTP/2, a POST with a
//! body, a prefix rewrite, a redirect, a direct response, 404 NR, 503 UF from a dead upstream,
//! 503 UH, 504 UT, 503 UC, response trailers, requests refused by the connection manager
//! (escaped slash, underscore header, upgrade not allowed, HTTP/1.0), a client leaving
//! mid-response (DC), a TCP
//! connection, a TCP connection to a dead upstream, and one no filter chain takes), then every
//! line is compared field by field. Fields that differ between any two runs (times, durations, ids,
//! ephemeral ports) are normalised; intentional differences are listed in [`KNOWN`], and a
//! listed difference that no longer occurs fails the test too, so the list stays true.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/observability/access_log/usage

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};
use tests::binaries::Kind;
use tests::scripted::{Behaviour, Scripted};
use tests::{curl, envoy_or_skip, Ports, RunningProxy, Upstream};

mod expectations;
mod fields;

use expectations::*;
use fields::*;

struct Run {
    /// Log file name to its lines.
    logs: BTreeMap<&'static str, Vec<String>>,
    /// Port number to the name it is normalised to.
    ports: BTreeMap<u16, String>,
}

fn run(kind: Kind) -> Run {
    let upstream = Upstream::start("hello from the upstream\n");
    let ports = Ports::new(&[
        "admin_port",
        "http_port",
        "tcp_port",
        "tcp_dead_port",
        "dead_port",
        "no_chain_port",
    ])
    .with("upstream_port", upstream.port());
    let slow = Scripted::start("slow", Behaviour::Delay(Duration::from_secs(2)));
    let closer = Scripted::start("closer", Behaviour::CloseBeforeResponse);
    let trailers = Scripted::start("trailers", Behaviour::Trailers);
    let streamer = Scripted::start("streamer", Behaviour::Stream(1 << 30));
    let ports = ports
        .with("slow_port", slow.port())
        .with("closer_port", closer.port())
        .with("trailers_port", trailers.port())
        .with("streamer_port", streamer.port());
    let dir = tempfile::tempdir().expect("a log directory");
    let bootstrap = ports
        .render(BOOTSTRAP)
        .replace("LOG_DIR", &dir.path().display().to_string())
        .replace("ISTIO_FORMAT", ISTIO_FORMAT);
    let proxy = RunningProxy::start(kind, &bootstrap, &["--file-flush-interval-msec", "50"]);
    let http = ports.get("http_port");
    for (i, (_, method, path, args)) in HTTP_TRAFFIC.iter().enumerate() {
        let id = format!("request-{i}");
        let mut all = vec!["-H", "user-agent: alog-test"];
        let header = format!("x-request-id: {id}");
        all.extend(["-H", header.as_str()]);
        all.extend(args.iter());
        if *method == "RAW" {
            leave_mid_response(http, path, &id);
            continue;
        }
        let url = format!("http://127.0.0.1:{http}{path}");
        curl::request(method, &url, &all).unwrap_or_else(|f| panic!("{}", f.message));
    }
    tcp_exchange(
        ports.get("tcp_port"),
        b"GET /tcp HTTP/1.0\r\nuser-agent: t\r\n\r\n",
    );
    tcp_exchange(ports.get("tcp_dead_port"), b"nobody listens");
    tcp_exchange(ports.get("no_chain_port"), b"no chain matches");
    let logs = read_logs(dir.path(), &proxy);
    let mut names: BTreeMap<u16, String> = [
        "admin_port",
        "http_port",
        "tcp_port",
        "tcp_dead_port",
        "dead_port",
        "no_chain_port",
        "upstream_port",
        "slow_port",
        "closer_port",
        "trailers_port",
        "streamer_port",
    ]
    .iter()
    .map(|n| (ports.get(n), format!("{{{n}}}")))
    .collect();
    names.insert(0, "0".into());
    drop(proxy);
    Run { logs, ports: names }
}

/// GETs `path` over HTTP/1.1, reads the first 64 KiB of the response and closes the
/// connection while the upstream is still sending.
fn leave_mid_response(port: u16, path: &str, id: &str) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the HTTP listener");
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nuser-agent: alog-test\r\nx-request-id: {id}\r\n\r\n"
    );
    s.write_all(request.as_bytes()).expect("send the request");
    let mut got = vec![0u8; 64 * 1024];
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.read_exact(&mut got);
    drop(s);
    // Both proxies log when they notice the close; wait so the lines keep the traffic's order.
    std::thread::sleep(Duration::from_millis(300));
}

/// Sends `bytes` and reads until the proxy closes (the upstream closes after answering an
/// HTTP/1.0 request; a half-close from the client would race with its answer).
fn tcp_exchange(port: u16, bytes: &[u8]) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(bytes);
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
    // The proxy logs a TCP connection once both sides have closed: close ours, then give it a
    // moment before the next connection so lines keep the traffic's order.
    drop(s);
    std::thread::sleep(Duration::from_millis(200));
}

/// Waits until every log has its expected number of lines (flushes are timer-driven).
fn read_logs(dir: &Path, proxy: &RunningProxy) -> BTreeMap<&'static str, Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let logs: BTreeMap<&'static str, Vec<String>> = expected_lines()
            .into_iter()
            .map(|(name, _)| {
                let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
                (name, text.lines().map(str::to_string).collect())
            })
            .collect();
        let complete = expected_lines()
            .iter()
            .all(|(name, labels)| logs[name].len() >= labels.len());
        if complete || Instant::now() > deadline {
            if !complete {
                eprintln!(
                    "{:?}: logs incomplete after 10 s: {logs:#?}\n{}",
                    proxy.kind(),
                    proxy.logs_for_failure()
                );
            }
            return logs;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn access_logs_match_envoy_field_by_field() {
    let Some(_) = envoy_or_skip("access_logs_match_envoy_field_by_field") else {
        return;
    };
    let envoy = run(Kind::Envoy);
    let outrigger = run(Kind::Outrigger);
    let mut unexpected = Vec::new();
    let mut seen_known = vec![false; KNOWN.len()];
    let mut compared = 0;
    for (log, labels) in expected_lines() {
        let (e, o) = (&envoy.logs[log], &outrigger.logs[log]);
        if e.len() != labels.len() || o.len() != labels.len() {
            unexpected.push(format!(
                "{log}: expected {} lines; Envoy wrote {}, Outrigger {}\n  envoy: {e:#?}\n  outrigger: {o:#?}",
                labels.len(),
                e.len(),
                o.len()
            ));
            continue;
        }
        for ((label, e), o) in labels.iter().zip(e).zip(o) {
            let e = normalise(log, label, e, &envoy.ports);
            let o = normalise(log, label, o, &outrigger.ports);
            let e_map: BTreeMap<_, _> = e.iter().cloned().collect();
            let o_map: BTreeMap<_, _> = o.iter().cloned().collect();
            let keys: std::collections::BTreeSet<_> = e_map.keys().chain(o_map.keys()).collect();
            for key in keys {
                compared += 1;
                let (ev, ov) = (e_map.get(key), o_map.get(key));
                if ev == ov {
                    continue;
                }
                let known = KNOWN
                    .iter()
                    .position(|k| k.log == log && k.line == *label && k.field == key);
                match known {
                    Some(i) => seen_known[i] = true,
                    None => unexpected.push(format!(
                        "{log} [{label}] {key}: Envoy {ev:?}, Outrigger {ov:?}"
                    )),
                }
            }
        }
    }
    eprintln!("compared {compared} fields");
    // `ALOG_DUMP=1` prints both sides' raw lines (with `--no-capture`).
    if std::env::var_os("ALOG_DUMP").is_some() {
        eprintln!("Envoy: {:#?}\nOutrigger: {:#?}", envoy.logs, outrigger.logs);
    }
    assert!(compared > 400, "too few fields compared: {compared}");
    for (k, seen) in KNOWN.iter().zip(&seen_known) {
        if !seen {
            unexpected.push(format!(
                "known difference no longer occurs (remove it from KNOWN): {} [{}] {} ({})",
                k.log, k.line, k.field, k.reason
            ));
        }
    }
    assert!(
        unexpected.is_empty(),
        "access logs differ from Envoy's:\n{}",
        unexpected.join("\n")
    );
}
