//! STRICT_DNS and LOGICAL_DNS discovery with the system resolver, refreshed every
//! `dns_refresh_rate`. A failed lookup keeps the hosts already known (Envoy does the same).
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/service_discovery

use super::host::HostSpec;
use super::manager::ClusterRuntime;
use crate::config::address::Endpoint;
use crate::config::cluster::{Discovery, DnsFamily, DnsHost};
use crate::config::transport_match::Selected;
use std::net::SocketAddr;
use std::sync::Arc;

/// Resolves the cluster's hosts until the cluster is replaced or removed (the task holds it
/// weakly, so it ends with the last request using that instance).
pub fn spawn(cluster: &Arc<ClusterRuntime>) {
    let (hosts, refresh, family, first_only) = match &cluster.config.discovery {
        Discovery::StrictDns {
            hosts,
            refresh,
            family,
            ..
        } => (hosts.clone(), *refresh, *family, false),
        Discovery::LogicalDns {
            host,
            refresh,
            family,
            ..
        } => (vec![host.clone()], *refresh, *family, true),
        Discovery::Static(_) | Discovery::Eds { .. } | Discovery::OriginalDst { .. } => return,
    };
    // Each name's addresses take the transport socket its endpoint's labels select.
    let hosts: Vec<(DnsHost, Selected)> = hosts
        .into_iter()
        .map(|h| {
            let selected = cluster.config.transports.select(&h.labels);
            (h, selected)
        })
        .collect();
    let cluster = Arc::downgrade(cluster);
    tokio::spawn(async move {
        loop {
            let resolved = resolve_all(&hosts, family, first_only).await;
            let Some(cluster) = cluster.upgrade() else {
                return;
            };
            if let Some(resolved) = resolved {
                cluster.set_hosts(resolved, cluster.config.priorities);
            }
            drop(cluster);
            tokio::time::sleep(refresh).await;
        }
    });
}

async fn resolve_all(
    hosts: &[(DnsHost, Selected)],
    family: DnsFamily,
    first_only: bool,
) -> Option<Vec<HostSpec>> {
    let mut out = Vec::new();
    for (host, transport) in hosts {
        let addrs: Vec<SocketAddr> =
            match tokio::net::lookup_host((host.host.as_str(), host.port)).await {
                Ok(a) => a.collect(),
                Err(e) => {
                    tracing::debug!(target: "dns", "DNS resolution for {} failed: {e}", host.host);
                    return None;
                }
            };
        let mut picked = pick_family(addrs, family);
        if first_only {
            picked.truncate(1);
        }
        out.extend(picked.into_iter().map(|a| HostSpec {
            address: Endpoint::Tcp(a),
            hostname: host.host.clone(),
            weight: host.weight,
            priority: host.priority,
            locality: host.locality,
            eds_health: host.eds_health,
            transport: *transport,
            istio_peer: None,
        }));
    }
    Some(out)
}

fn pick_family(addrs: Vec<SocketAddr>, family: DnsFamily) -> Vec<SocketAddr> {
    let (v4, v6): (Vec<_>, Vec<_>) = addrs.into_iter().partition(|a| a.is_ipv4());
    match family {
        DnsFamily::V4Only => v4,
        DnsFamily::V6Only => v6,
        // AUTO prefers IPv6 and falls back to IPv4; V4_PREFERRED the reverse.
        DnsFamily::Auto => {
            if v6.is_empty() {
                v4
            } else {
                v6
            }
        }
        DnsFamily::V4Preferred => {
            if v4.is_empty() {
                v6
            } else {
                v4
            }
        }
        DnsFamily::All => v4.into_iter().chain(v6).collect(),
    }
}
