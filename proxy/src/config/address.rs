//! Socket addresses: `socket_address` (IPv4/IPv6 literals only, as Envoy requires for
//! listeners and STATIC endpoints) and `pipe` (Unix sockets, relative paths allowed).

use super::error::{FieldPath, Result};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use xds_proto::pb::envoy::config::core::v3::{address, socket_address, Address, SocketAddress};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(addr) => write!(f, "{addr}"),
            Endpoint::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

/// An `Address` whose host must be an IP literal.
pub fn resolved(address: Option<&Address>, path: &FieldPath) -> Result<Endpoint> {
    match address.and_then(|a| a.address.as_ref()) {
        Some(address::Address::SocketAddress(sa)) => {
            let path = path.field("socket_address");
            let port = port(sa, &path)?;
            if let Some(v6) = scoped_ipv6(&sa.address, port) {
                return Ok(Endpoint::Tcp(SocketAddr::V6(v6)));
            }
            let ip: IpAddr = sa.address.parse().map_err(|_| {
                path.field("address").error(format!(
                    "malformed IP address: {:?} (a host name needs a STRICT_DNS or LOGICAL_DNS cluster)",
                    sa.address
                ))
            })?;
            Ok(Endpoint::Tcp(SocketAddr::new(ip, port)))
        }
        Some(address::Address::Pipe(pipe)) => {
            if pipe.path.is_empty() {
                return Err(path.field("pipe").field("path").error("must not be empty"));
            }
            if pipe.path.starts_with('@') {
                return Err(path
                    .field("pipe")
                    .field("path")
                    .error("abstract Unix sockets are not supported"));
            }
            Ok(Endpoint::Unix(PathBuf::from(&pipe.path)))
        }
        Some(address::Address::EnvoyInternalAddress(_)) => Err(path
            .field("envoy_internal_address")
            .error("internal listeners are not supported")),
        None => Err(path.error("an address is required")),
    }
}

/// The host and port of a socket address that may name a DNS host.
pub fn host_and_port(address: Option<&Address>, path: &FieldPath) -> Result<(String, u16)> {
    match address.and_then(|a| a.address.as_ref()) {
        Some(address::Address::SocketAddress(sa)) => {
            let path = path.field("socket_address");
            if sa.address.is_empty() {
                return Err(path.field("address").error("must not be empty"));
            }
            Ok((sa.address.clone(), port(sa, &path)?))
        }
        _ => Err(path.error("a socket_address is required for DNS clusters")),
    }
}

fn port(sa: &SocketAddress, path: &FieldPath) -> Result<u16> {
    if sa.protocol == socket_address::Protocol::Udp as i32 {
        return Err(path.field("protocol").error("UDP is not supported"));
    }
    if !sa.resolver_name.is_empty() {
        return Err(path
            .field("resolver_name")
            .error("custom resolvers are not supported"));
    }
    match &sa.port_specifier {
        Some(socket_address::PortSpecifier::PortValue(p)) => u16::try_from(*p).map_err(|_| {
            path.field("port_value")
                .error(format!("port {p} is out of range"))
        }),
        Some(socket_address::PortSpecifier::NamedPort(_)) => Err(path
            .field("named_port")
            .error("named ports are not supported")),
        None => Err(path.field("port_specifier").error("is required")),
    }
}

/// `fe80::1%eth0` or `fe80::1%2`: an IPv6 address with a zone (scope id), which Envoy accepts.
fn scoped_ipv6(address: &str, port: u16) -> Option<std::net::SocketAddrV6> {
    let (ip, zone) = address.split_once('%')?;
    let ip: std::net::Ipv6Addr = ip.parse().ok()?;
    let scope = match zone.parse::<u32>() {
        Ok(index) => index,
        Err(_) => nix::net::if_::if_nametoindex(zone).ok()?,
    };
    Some(std::net::SocketAddrV6::new(ip, port, 0, scope))
}
