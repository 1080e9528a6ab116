//! Filter chain selection, by Envoy's documented order: at each criterion, the chains with a
//! value that matches win over the chains that leave it empty; chains that set it and do not
//! match drop out.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/listener/v3/listener_components.proto#config-listener-v3-filterchainmatch
//!
//! SNI, ALPN and the transport protocol come from the TLS inspector, ALPN also from the HTTP
//! inspector; without them a connection has neither SNI nor ALPN, and its transport protocol
//! is `raw_buffer`.

use crate::config::listener::{ChainMatch, Cidr, Listener, SourceType};
use crate::tls::inspector::Detected;
use std::net::{IpAddr, SocketAddr};

/// The index of the chain for a connection, or None (use the default chain, if any).
pub fn select_filter_chain(
    listener: &Listener,
    local: Option<SocketAddr>,
    peer: Option<SocketAddr>,
    detected: &Detected,
) -> Option<usize> {
    let mut candidates: Vec<usize> = (0..listener.filter_chains.len()).collect();
    let m = |i: &usize| &listener.filter_chains[*i].matcher;

    let port = local.map(|a| a.port());
    narrow(&mut candidates, |i| match (m(i).destination_port, port) {
        (None, _) => Some(0),
        (Some(want), Some(got)) if want == got => Some(1),
        _ => None,
    });
    let dst = local.map(|a| a.ip());
    narrow(&mut candidates, |i| cidr_rank(&m(i).prefix_ranges, dst));
    narrow(&mut candidates, |i| {
        server_name_rank(&m(i).server_names, detected.sni.as_deref())
    });
    narrow(&mut candidates, |i| {
        match m(i).transport_protocol.as_str() {
            "" => Some(0),
            p if p == detected.transport => Some(1),
            _ => None,
        }
    });
    narrow(&mut candidates, |i| {
        let wanted = &m(i).application_protocols;
        if wanted.is_empty() {
            Some(0)
        } else {
            detected
                .alpn
                .iter()
                .any(|p| wanted.contains(p))
                .then_some(1)
        }
    });
    let src = peer.map(|a| a.ip());
    narrow(&mut candidates, |i| {
        cidr_rank(&m(i).direct_source_prefix_ranges, src)
    });
    narrow(&mut candidates, |i| source_type_rank(m(i), src, dst));
    narrow(&mut candidates, |i| {
        cidr_rank(&m(i).source_prefix_ranges, src)
    });
    let src_port = peer.map(|a| a.port());
    narrow(&mut candidates, |i| {
        match (&m(i).source_ports[..], src_port) {
            ([], _) => Some(0),
            (ports, Some(p)) if ports.contains(&p) => Some(1),
            _ => None,
        }
    });
    candidates.first().copied()
}

/// An exact name ranks above every wildcard, a longer wildcard suffix above a shorter one
/// (`*.b.example.com` over `*.example.com`), and chains without names rank lowest.
fn server_name_rank(names: &[String], sni: Option<&str>) -> Option<u32> {
    if names.is_empty() {
        return Some(0);
    }
    let sni = sni?;
    names
        .iter()
        .filter_map(|name| match name.strip_prefix('*') {
            None => (name == sni).then_some(u32::MAX),
            // `*.example.com` keeps ".example.com"; the SNI needs a label before it.
            Some(suffix) => (sni.len() > suffix.len() && sni.ends_with(suffix))
                .then(|| 1 + u32::try_from(suffix.len()).unwrap_or(u32::MAX - 2)),
        })
        .max()
}

/// Keeps the candidates with the highest rank; None drops a candidate.
fn narrow(candidates: &mut Vec<usize>, rank: impl Fn(&usize) -> Option<u32>) {
    let ranked: Vec<(usize, u32)> = candidates
        .iter()
        .filter_map(|i| rank(i).map(|r| (*i, r)))
        .collect();
    let best = ranked.iter().map(|(_, r)| *r).max();
    candidates.clear();
    candidates.extend(
        ranked
            .into_iter()
            .filter(|(_, r)| Some(*r) == best)
            .map(|(i, _)| i),
    );
}

/// Empty ranges match with rank 0; otherwise the longest matching prefix ranks (1 + length).
fn cidr_rank(ranges: &[Cidr], ip: Option<IpAddr>) -> Option<u32> {
    if ranges.is_empty() {
        return Some(0);
    }
    let ip = ip?;
    ranges
        .iter()
        .filter(|c| c.contains(ip))
        .map(|c| 1 + u32::from(c.len))
        .max()
}

fn source_type_rank(m: &ChainMatch, src: Option<IpAddr>, dst: Option<IpAddr>) -> Option<u32> {
    let local = match (src, dst) {
        (Some(s), Some(d)) => s.is_loopback() || s == d,
        // Unix sockets are local.
        _ => true,
    };
    match m.source_type {
        SourceType::Any => Some(0),
        SourceType::SameIpOrLoopback if local => Some(1),
        SourceType::External if !local => Some(1),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::address::Endpoint;
    use crate::config::listener::FilterChain;

    fn listener(matchers: Vec<ChainMatch>) -> Listener {
        Listener {
            name: "l".into(),
            address: Endpoint::Tcp(([0, 0, 0, 0], 0).into()),
            filter_chains: matchers
                .into_iter()
                .enumerate()
                .map(|(i, matcher)| FilterChain {
                    name: String::new(),
                    matcher,
                    filters: Vec::new(),
                    rbac: Vec::new(),
                    tls: None,
                    unsupported_transport: None,
                    fingerprint: i as u64,
                })
                .collect(),
            default_filter_chain: None,
            reuse_port: false,
            bind_to_port: true,
            backlog: 128,
            listener_filters_timeout: None,
            continue_on_listener_filters_timeout: false,
            inspectors: Vec::new(),
            stat_prefix: String::new(),
            inbound: false,
            original_dst: false,
            original_src: None,
            access_logs: Vec::new(),
            use_original_dst: false,
            transparent: false,
            fingerprint_without_chains: 0,
        }
    }

    fn addr(s: &str) -> Option<SocketAddr> {
        Some(s.parse().expect("address"))
    }

    fn cidr(s: &str, len: u8) -> Cidr {
        Cidr {
            network: s.parse().expect("ip"),
            len,
        }
    }

    #[test]
    fn destination_port_beats_wildcard_and_longest_prefix_wins() {
        let l = listener(vec![
            ChainMatch::default(),
            ChainMatch {
                destination_port: Some(8080),
                ..Default::default()
            },
            ChainMatch {
                destination_port: Some(9090),
                prefix_ranges: vec![cidr("10.0.0.0", 8)],
                ..Default::default()
            },
            ChainMatch {
                destination_port: Some(9090),
                prefix_ranges: vec![cidr("10.1.0.0", 16)],
                ..Default::default()
            },
        ]);
        assert_eq!(
            select_filter_chain(
                &l,
                addr("10.1.2.3:8080"),
                addr("1.1.1.1:5"),
                &Detected::raw()
            ),
            Some(1)
        );
        assert_eq!(
            select_filter_chain(
                &l,
                addr("10.1.2.3:9090"),
                addr("1.1.1.1:5"),
                &Detected::raw()
            ),
            Some(3)
        );
        assert_eq!(
            select_filter_chain(
                &l,
                addr("10.2.2.3:9090"),
                addr("1.1.1.1:5"),
                &Detected::raw()
            ),
            Some(2)
        );
        // Port 9090 chains exist but none matches the IP: no fallback to other ports.
        assert_eq!(
            select_filter_chain(
                &l,
                addr("11.0.0.1:9090"),
                addr("1.1.1.1:5"),
                &Detected::raw()
            ),
            None
        );
        assert_eq!(
            select_filter_chain(
                &l,
                addr("11.0.0.1:7000"),
                addr("1.1.1.1:5"),
                &Detected::raw()
            ),
            Some(0)
        );
    }

    #[test]
    fn permissive_chains_split_on_transport_and_server_names_prefer_exact() {
        let l = listener(vec![
            ChainMatch {
                transport_protocol: "tls".into(),
                application_protocols: vec!["istio-http/1.1".into()],
                ..Default::default()
            },
            ChainMatch {
                transport_protocol: "raw_buffer".into(),
                ..Default::default()
            },
            ChainMatch {
                transport_protocol: "tls".into(),
                ..Default::default()
            },
            ChainMatch {
                server_names: vec!["*.example.com".into()],
                ..Default::default()
            },
            ChainMatch {
                server_names: vec!["api.example.com".into()],
                ..Default::default()
            },
            ChainMatch {
                server_names: vec!["*.v1.example.com".into()],
                ..Default::default()
            },
        ]);
        let local = addr("10.0.0.1:8080");
        let peer = addr("10.0.0.2:5000");
        let tls = |sni: Option<&str>, alpn: &[&str]| Detected {
            transport: "tls",
            sni: sni.map(str::to_string),
            alpn: alpn.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(
            select_filter_chain(&l, local, peer, &Detected::raw()),
            Some(1)
        );
        assert_eq!(
            select_filter_chain(&l, local, peer, &tls(None, &["istio-http/1.1", "h2"])),
            Some(0)
        );
        assert_eq!(
            select_filter_chain(&l, local, peer, &tls(None, &["h2"])),
            Some(2)
        );
        assert_eq!(
            select_filter_chain(&l, local, peer, &tls(Some("api.example.com"), &[])),
            Some(4)
        );
        assert_eq!(
            select_filter_chain(&l, local, peer, &tls(Some("a.v1.example.com"), &[])),
            Some(5)
        );
        assert_eq!(
            select_filter_chain(&l, local, peer, &tls(Some("web.example.com"), &[])),
            Some(3)
        );
        assert_eq!(
            select_filter_chain(&l, local, peer, &tls(Some("example.com"), &[])),
            Some(2)
        );
    }

    #[test]
    fn tls_only_chains_do_not_take_plaintext_and_source_criteria_narrow() {
        let l = listener(vec![
            ChainMatch {
                transport_protocol: "tls".into(),
                ..Default::default()
            },
            ChainMatch {
                source_type: SourceType::SameIpOrLoopback,
                ..Default::default()
            },
            ChainMatch {
                source_ports: vec![4000],
                ..Default::default()
            },
        ]);
        assert_eq!(
            select_filter_chain(
                &l,
                addr("127.0.0.1:80"),
                addr("127.0.0.1:1"),
                &Detected::raw()
            ),
            Some(1)
        );
        assert_eq!(
            select_filter_chain(
                &l,
                addr("10.0.0.1:80"),
                addr("10.0.0.2:4000"),
                &Detected::raw()
            ),
            Some(2)
        );
        assert_eq!(
            select_filter_chain(
                &l,
                addr("10.0.0.1:80"),
                addr("10.0.0.2:1"),
                &Detected::raw()
            ),
            None
        );
    }
}
