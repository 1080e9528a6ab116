//! The test servers: TCP echo and HTTP on the app and remote sides, recording what they saw.
#![allow(clippy::unwrap_used, clippy::expect_used, unused_imports)]

use super::*;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};
use tests::binaries::{outrigger, outrigger_iptables};
use tests::netns::{
    http_get, normalize_iptables_save, prerequisites_met, run_ok, ChildGuard, Netns,
};

// ---------------------------------------------------------------------------------------------
// Servers

/// What a server saw on one connection.
#[derive(Debug, Clone)]
pub(super) struct Seen {
    pub(super) peer: SocketAddr,
    pub(super) local: SocketAddr,
    /// The line (TCP) or the request head (HTTP).
    pub(super) request: String,
}

/// A server in a namespace that records every connection. Stops accepting when dropped.
pub(super) struct Server {
    pub(super) seen: mpsc::Receiver<Seen>,
    pub(super) stop: Arc<AtomicBool>,
}

#[derive(Clone, Copy)]
pub(super) enum Protocol {
    /// Reads a line, answers `<name> got <line> from <peer> at <local>` and closes.
    Line(&'static str),
    /// Reads an HTTP/1.1 request head, answers 200 with body `<name> peer=<peer>` and closes.
    Http(&'static str),
}

impl Server {
    pub(super) fn start(ns: &Netns, addr: &str, protocol: Protocol) -> Server {
        let addr: SocketAddr = addr.parse().unwrap();
        let listener: TcpListener = ns
            .run(move || TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        listener.set_nonblocking(true).unwrap();
        let (tx, seen) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        let tx = tx.clone();
                        thread::spawn(move || serve(stream, peer, protocol, &tx));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => thread::sleep(POLL),
                    Err(_) => thread::sleep(POLL),
                }
            }
        });
        Server { seen, stop }
    }

    /// The next connection the server saw, waiting up to the deadline.
    pub(super) fn next(&self, what: &str) -> Seen {
        self.seen
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("{what}: the server saw no connection within {WAIT:?}"))
    }

    /// Connections seen so far and not yet taken.
    pub(super) fn pending(&self) -> Vec<Seen> {
        self.seen.try_iter().collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

pub(super) fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    protocol: Protocol,
    tx: &mpsc::Sender<Seen>,
) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(WAIT));
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    match protocol {
        Protocol::Line(name) => {
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                return;
            }
            let line = line.trim_end().to_string();
            let _ = writeln!(writer, "{name} got {line} from {peer} at {local}");
            let _ = tx.send(Seen {
                peer,
                local,
                request: line,
            });
        }
        Protocol::Http(name) => {
            let mut head = String::new();
            loop {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) if line == "\r\n" => break,
                    Ok(_) => head.push_str(&line),
                }
            }
            let body = format!("{name} peer={peer}");
            let _ = write!(
                writer,
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tx.send(Seen {
                peer,
                local,
                request: head,
            });
        }
    }
}
