//! A listener LDS removes: what happens to new connections at once, to a connection that
//! sends a request while it drains (immediate strategy: the response says `connection:
//! close`), and to an idle connection once `--drain-time-s` is over. Same in Envoy.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/operations/draining

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use tests::control_plane::{ControlPlane, LISTENER};
use tests::xds_resources::{ads_bootstrap, serve_backend};
use tests::{envoy_or_skip, free_port, Kind, RunningProxy, Upstream};

/// Sends one request on `stream` and returns the response's status and `connection` header
/// (`closed` when the connection ends first).
fn exchange(stream: &mut TcpStream) -> String {
    if stream
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
        .is_err()
    {
        return "closed".into();
    }
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return "closed".into(),
            Ok(n) => n,
        };
        response.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&response).to_lowercase();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let header = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
        };
        let length: usize = header("content-length:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if body.len() >= length {
            let status = head.split(' ').nth(1).unwrap_or("?").to_string();
            let connection = header("connection:").unwrap_or_else(|| "-".into());
            return format!("{status} connection={connection}");
        }
    }
}

/// Whether the peer closed an idle connection (EOF or reset) or it is still open.
fn idle_state(stream: &mut TcpStream) -> &'static str {
    stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("a read timeout");
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => "closed",
        Ok(_) => "sent data",
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => "open",
        Err(_) => "closed",
    }
}

/// A new connection's fate: refused, or the answer to a request on it.
fn new_connection(port: u16) -> String {
    match TcpStream::connect(("127.0.0.1", port)) {
        Err(_) => "refused".into(),
        Ok(mut stream) => {
            stream
                .set_read_timeout(Some(Duration::from_secs(2)))
                .expect("a read timeout");
            exchange(&mut stream)
        }
    }
}

fn transcript(kind: Kind) -> Vec<String> {
    let up = Upstream::start("one");
    let cp = ControlPlane::start();
    let port = free_port();
    serve_backend(&cp, up.port(), port);
    let _proxy = RunningProxy::start(
        kind,
        &ads_bootstrap(free_port(), cp.port(), false),
        &["--drain-time-s", "2", "--drain-strategy", "immediate"],
    );
    let connect = || {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("a read timeout");
        stream
    };
    let (mut busy, mut idle) = (connect(), connect());
    let mut out = vec![
        format!("before: busy {}", exchange(&mut busy)),
        format!("before: idle {}", exchange(&mut idle)),
    ];

    cp.set(LISTENER, vec![]);
    cp.wait_for(Duration::from_secs(5), "the LDS ACK", |r| {
        r.iter()
            .any(|r| r.type_url == LISTENER && r.answers() && r.version_info == "2")
    });
    std::thread::sleep(Duration::from_millis(300));
    out.push(format!("draining: new {}", new_connection(port)));
    out.push(format!("draining: busy {}", exchange(&mut busy)));
    out.push(format!("draining: idle {}", idle_state(&mut idle)));
    // The drain time (2 s) is over.
    std::thread::sleep(Duration::from_millis(2500));
    out.push(format!("drained: idle {}", idle_state(&mut idle)));
    out.push(format!("drained: new {}", new_connection(port)));
    out
}

#[test]
fn a_removed_listener_drains_its_connections_and_closes_like_envoy() {
    // What Envoy 1.40 does: the socket stops accepting at once, a request on an old
    // connection is answered with `connection: close`, idle ones close when the drain ends.
    let want = [
        "before: busy 200 connection=-",
        "before: idle 200 connection=-",
        "draining: new refused",
        "draining: busy 200 connection=close",
        "draining: idle open",
        "drained: idle closed",
        "drained: new refused",
    ];
    assert_eq!(transcript(Kind::Outrigger), want, "Outrigger");
    let Some(_) = envoy_or_skip("xds_listener_removal") else {
        return;
    };
    assert_eq!(transcript(Kind::Envoy), want, "Envoy");
}
