//! Tests that must use fixed ports (the embedded default bootstrap: admin 15000, demo listener
//! 10000) take this lock first, so that no two of them run at once, whether they share a test
//! binary (threads) or not (nextest runs each test in its own process). The lock is a bound
//! Linux abstract Unix socket: the kernel frees the name when the holder exits, even on a
//! crash, so a lock is never left stale.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, TcpListener};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::thread;
use std::time::{Duration, Instant};

/// Held while a test uses fixed ports; released on drop.
#[derive(Debug)]
pub struct FixedPortsLock {
    _socket: UnixListener,
}

/// Waits (up to `timeout`) for the lock on fixed ports, then checks that `ports` are free on
/// 127.0.0.1, and panics saying who to blame if something outside the tests holds them.
pub fn lock(ports: &[u16], timeout: Duration) -> FixedPortsLock {
    let name = SocketAddr::from_abstract_name(b"outrigger-tests-fixed-ports")
        .expect("a short abstract socket name");
    let deadline = Instant::now() + timeout;
    let socket = loop {
        match UnixListener::bind_addr(&name) {
            Ok(socket) => break socket,
            Err(e) if e.kind() == ErrorKind::AddrInUse && Instant::now() < deadline => {
                // Another test holds it; its runs take a second or two.
                thread::sleep(Duration::from_millis(25));
            }
            Err(e) => panic!("could not take the fixed-ports test lock within {timeout:?}: {e}"),
        }
    };
    for &port in ports {
        if let Err(e) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            panic!(
                "127.0.0.1:{port} is in use outside the tests ({e}); this test needs it: stop \
                 whatever listens there (`ss -ltnp 'sport = :{port}'`)"
            );
        }
    }
    FixedPortsLock { _socket: socket }
}
