//! `--run-validation`: prove that capture works before the app starts (the CNI
//! `istio-validation` container). Listen where captured traffic lands (the outbound and
//! inbound capture ports on loopback), connect to 127.0.0.6:<probe port> (::6 on IPv6),
//! and succeed once a listener sees a connection whose original destination port is the
//! probe port — which only happens if the kernel rules redirected it.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};

use crate::config::Config;
use crate::info;

/// Original destination port of a redirected connection (SO_ORIGINAL_DST).
fn original_port(stream: &TcpStream) -> Result<u16, String> {
    let peer = stream.peer_addr().map_err(|e| e.to_string())?;
    if peer.is_ipv4() {
        let sa = socket::getsockopt(stream, sockopt::OriginalDst).map_err(|e| e.to_string())?;
        Ok(u16::from_be(sa.sin_port))
    } else {
        let sa = socket::getsockopt(stream, sockopt::Ip6tOriginalDst).map_err(|e| e.to_string())?;
        Ok(u16::from_be(sa.sin6_port))
    }
}

/// Connect from `local` (port 0) to `remote`. Binding matters: from an unbound socket the
/// kernel would pick ::6 as source for ::6, and the passthrough RETURN rule would skip it.
fn connect_from(local: IpAddr, remote: SocketAddr) -> Result<TcpStream, String> {
    let family = if local.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| format!("socket: {e}"))?;
    let local = SockaddrStorage::from(SocketAddr::new(local, 0));
    socket::bind(fd.as_raw_fd(), &local).map_err(|e| format!("bind: {e}"))?;
    socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(remote))
        .map_err(|e| format!("connect {remote}: {e}"))?;
    Ok(TcpStream::from(fd))
}

fn serve(listener: TcpListener, probe_port: u16, stop: Arc<AtomicBool>, done: mpsc::Sender<()>) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut conn, _)) => {
                let _ = conn.set_nonblocking(false);
                match original_port(&conn) {
                    Ok(port) => {
                        // Echo the port for whoever is debugging with a manual connect.
                        let _ = conn.write_all(port.to_string().as_bytes());
                        if port == probe_port {
                            let _ = done.send(());
                            return;
                        }
                    }
                    Err(e) => info(&format!("validation: no original destination: {e}")),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                info(&format!("validation: accept failed: {e}"));
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Run the probe; `Err` carries the reason (the caller exits with code 126).
pub fn run(cfg: &Config) -> Result<(), String> {
    let (listen_ip, probe_ip): (IpAddr, IpAddr) = if cfg.enable_ipv6 {
        (
            Ipv6Addr::LOCALHOST.into(),
            Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6).into(),
        )
    } else {
        (
            Ipv4Addr::LOCALHOST.into(),
            Ipv4Addr::new(127, 0, 0, 6).into(),
        )
    };
    let probe = SocketAddr::new(probe_ip, cfg.iptables_probe_port);
    info(&format!(
        "validating capture: connecting to {probe}, expecting it on {listen_ip} ports {} or {}",
        cfg.proxy_port, cfg.inbound_capture_port
    ));

    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let mut listening = Vec::new();
    for port in [&cfg.proxy_port, &cfg.inbound_capture_port] {
        let Ok(port) = port.parse::<u16>() else {
            continue;
        };
        match TcpListener::bind((listen_ip, port)).and_then(|l| l.set_nonblocking(true).map(|()| l))
        {
            Ok(l) => {
                listening.push(format!("{listen_ip}:{port}"));
                let (stop, tx) = (stop.clone(), tx.clone());
                let probe_port = cfg.iptables_probe_port;
                thread::spawn(move || serve(l, probe_port, stop, tx));
            }
            Err(e) => info(&format!(
                "validation: cannot listen on {listen_ip}:{port}: {e}"
            )),
        }
    }
    if listening.is_empty() {
        return Err(format!(
            "no listener available on {listen_ip} ports {} and {}",
            cfg.proxy_port, cfg.inbound_capture_port
        ));
    }

    let deadline = Instant::now() + cfg.probe_timeout;
    let result = loop {
        if let Err(e) = connect_from(listen_ip, probe) {
            info(&format!("validation: {e}"));
        }
        let now = Instant::now();
        if now >= deadline {
            break Err(format!(
                "validation timeout after {:?}: connections to {probe} were not redirected to {}",
                cfg.probe_timeout,
                listening.join(" or ")
            ));
        }
        // Retry about once a second, as upstream does, but never past the deadline.
        let wait = (deadline - now).min(Duration::from_secs(1));
        if rx.recv_timeout(wait).is_ok() {
            break Ok(());
        }
    };
    stop.store(true, Ordering::Relaxed);
    if result.is_ok() {
        info("validation passed: traffic capture is in place");
    }
    result
}
