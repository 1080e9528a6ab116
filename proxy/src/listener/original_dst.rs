//! The destination a connection had before iptables redirected it to the proxy:
//! `SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST` for REDIRECT, the socket's own local address for
//! TPROXY (`transparent` listeners), as Envoy's `original_dst` listener filter does.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/listeners/listener_filters/original_dst_filter

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsFd;

/// The original destination of an accepted TCP connection, or None when the kernel has none
/// (the connection was not redirected).
pub fn original_destination<S: AsFd>(
    socket: &S,
    local: SocketAddr,
    transparent: bool,
) -> Option<SocketAddr> {
    if transparent {
        // With TPROXY the socket is bound to the original destination itself.
        return Some(local);
    }
    use nix::sys::socket::{getsockopt, sockopt};
    match local {
        SocketAddr::V4(_) => {
            let raw = getsockopt(socket, sockopt::OriginalDst).ok()?;
            let ip = Ipv4Addr::from(u32::from_be(raw.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(raw.sin_port),
            )))
        }
        SocketAddr::V6(v6) => {
            let raw = getsockopt(socket, sockopt::Ip6tOriginalDst).ok()?;
            let ip = Ipv6Addr::from(raw.sin6_addr.s6_addr);
            // An IPv4 client on a dual-stack socket has an IPv4-mapped destination.
            let addr = match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, u16::from_be(raw.sin6_port))),
                None => SocketAddr::V6(SocketAddrV6::new(
                    ip,
                    u16::from_be(raw.sin6_port),
                    0,
                    v6.scope_id(),
                )),
            };
            Some(addr)
        }
    }
}
