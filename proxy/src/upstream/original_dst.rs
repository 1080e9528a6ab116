//! The hosts of an ORIGINAL_DST cluster: one per destination address, made when a request or
//! connection first goes there and kept while it is in use, so later requests to the same
//! address share its connection pools (which hang off the host) as Envoy's original
//! destination hosts do.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/service_discovery#original-destination

use super::host::{Host, HostStats};
use super::transport::Transport;
use crate::config::address::Endpoint;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// Below this many hosts the map is not swept.
const SWEEP_FLOOR: usize = 64;

#[derive(Debug)]
pub struct OriginalDstHosts {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    hosts: HashMap<SocketAddr, Arc<Host>>,
    /// The size at which the next new address sweeps out unused hosts: twice the size after
    /// the last sweep, so sweeping costs a constant per new address on average.
    sweep_at: usize,
}

impl Default for OriginalDstHosts {
    fn default() -> Self {
        OriginalDstHosts {
            inner: Mutex::new(Inner {
                hosts: HashMap::new(),
                sweep_at: SWEEP_FLOOR,
            }),
        }
    }
}

impl OriginalDstHosts {
    /// The host for `address`, made on first use. The lookup by address is the one a
    /// destination known only per connection needs; it replaces making a host (and a pool)
    /// per request.
    /// `transport` makes the new host's transport socket (counting its match).
    pub fn host(
        &self,
        address: SocketAddr,
        transport: impl FnOnce() -> Transport,
    ) -> Option<Arc<Host>> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = inner.hosts.get(&address) {
            return Some(h.clone());
        }
        if inner.hosts.len() >= inner.sweep_at {
            // Unused: nobody else holds the host and its pools have no connection (Envoy
            // purges such hosts every `cleanup_interval`).
            inner
                .hosts
                .retain(|_, h| Arc::strong_count(h) > 1 || h.pools.busy());
            inner.sweep_at = (inner.hosts.len() * 2).max(SWEEP_FLOOR);
        }
        let host = Arc::new(Host {
            authority: address.to_string().parse().ok()?,
            address: Endpoint::Tcp(address),
            hostname: String::new(),
            weight: 1,
            priority: 0,
            locality: Default::default(),
            transport: transport(),
            stats: HostStats::default(),
            health: Default::default(),
            pools: Default::default(),
            istio_peer: None,
        });
        inner.hosts.insert(address, host.clone());
        Some(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain() -> Transport {
        Transport::Plain
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn one_host_per_address() {
        let hosts = OriginalDstHosts::default();
        let a = hosts.host(addr(1), plain).expect("host");
        let again = hosts.host(addr(1), plain).expect("host");
        assert!(Arc::ptr_eq(&a, &again));
        let b = hosts.host(addr(2), plain).expect("host");
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!(b.authority.as_str(), "127.0.0.1:2");
    }

    #[test]
    fn unused_hosts_are_swept_as_new_addresses_come() {
        let hosts = OriginalDstHosts::default();
        let held = hosts.host(addr(1), plain).expect("host");
        for port in 2..1000 {
            hosts.host(addr(port), plain);
        }
        let inner = hosts.inner.lock().expect("lock");
        assert!(inner.hosts.len() < 2 * SWEEP_FLOOR, "{}", inner.hosts.len());
        assert!(
            inner.hosts.contains_key(&addr(1)),
            "a host in use stays: {held:?}"
        );
    }
}
