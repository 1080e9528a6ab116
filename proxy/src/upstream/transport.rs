//! How connections to a host are secured: the transport socket its cluster's
//! `transport_socket_matches` chose for it when its host set was built, held by the host. A
//! connection pool is keyed by the transport (and by the request's ALPN offer), so hosts or
//! requests needing different handshakes never share a connection.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/cluster/v3/cluster.proto#envoy-v3-api-field-config-cluster-v3-cluster-transport-socket-matches

use crate::config::transport_match::{Selected, TransportSockets, UpstreamSocket};
use crate::stats::{Counter, Store};
use crate::tls::{AlpnOffer, ClientTls, ContextManager, TlsStats};
use std::sync::Arc;

/// One transport socket at runtime. Compared by identity: two matches with the same TLS
/// context still keep their connections apart, as each has its own socket factory in Envoy.
#[derive(Debug, Clone)]
pub enum Transport {
    Plain,
    /// Its TLS client: configurations built from the current secrets, rebuilt on rotation.
    Tls(Arc<ClientTls>),
    /// A socket Outrigger does not speak (its name); connecting fails.
    Unsupported(Arc<str>),
}

impl PartialEq for Transport {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Transport::Plain, Transport::Plain) => true,
            (Transport::Tls(a), Transport::Tls(b)) => Arc::ptr_eq(a, b),
            (Transport::Unsupported(a), Transport::Unsupported(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for Transport {}

impl std::hash::Hash for Transport {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        match self {
            Transport::Plain => 0usize.hash(state),
            Transport::Tls(t) => (Arc::as_ptr(t) as usize).hash(state),
            Transport::Unsupported(n) => (Arc::as_ptr(n) as *const u8 as usize).hash(state),
        }
    }
}

/// Where a pooled connection goes and how: the pools' key and the opener's instructions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Destination {
    pub authority: http::uri::Authority,
    pub transport: Transport,
    /// The ALPN list the TLS handshake offers instead of the context's own (only with TLS:
    /// plaintext connections are the same whatever the request asked for).
    pub alpn: Option<AlpnOffer>,
    /// The source address the connection binds (Envoy's `original_src`).
    pub source: Option<OriginalSource>,
}

impl Destination {
    pub fn new(host: &super::Host, via: Via<'_>) -> Self {
        let alpn = match host.transport {
            Transport::Tls(_) => via.alpn.cloned(),
            _ => None,
        };
        Self {
            authority: host.authority.clone(),
            transport: host.transport.clone(),
            alpn,
            source: via.source,
        }
    }
}

/// How a request's upstream connection is made beyond what its host says: the ALPN list its
/// TLS handshake offers (Istio's `istio.alpn`) and the source address it binds (the
/// downstream client's, with Envoy's `original_src`). Connections made differently are never
/// shared.
#[derive(Debug, Clone, Copy, Default)]
pub struct Via<'a> {
    pub alpn: Option<&'a AlpnOffer>,
    pub source: Option<OriginalSource>,
}

/// Envoy's `original_src`: the upstream connection leaves from the downstream client's
/// address (a transparent socket, so the address need not be local) with `mark` on its
/// packets (0: none), which lets iptables route the answers back to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OriginalSource {
    pub ip: std::net::IpAddr,
    pub mark: u32,
}

/// A cluster's transports, built once with the cluster: the cluster's own and one per match,
/// each with its `total_match_count` (counted per host created, as Envoy counts them).
#[derive(Debug)]
pub struct ClusterTransports {
    default: (Transport, Arc<Counter>),
    matches: Box<[(Transport, Arc<Counter>)]>,
}

impl ClusterTransports {
    /// The TLS clients share the cluster's `ssl.*` stats (Envoy's names carry no match name).
    pub fn build(
        config: &TransportSockets,
        store: &Arc<Store>,
        stat_name: &str,
        contexts: &ContextManager,
    ) -> Self {
        let prefix = format!("cluster.{stat_name}.");
        let tls_stats = config
            .all()
            .any(|s| matches!(s, UpstreamSocket::Tls(_)))
            .then(|| Arc::new(TlsStats::new(store, &prefix)));
        let runtime = |socket: &UpstreamSocket| match (socket, &tls_stats) {
            (UpstreamSocket::Tls(spec), Some(stats)) => {
                Transport::Tls(ClientTls::new(spec.clone(), stats.clone(), contexts))
            }
            (UpstreamSocket::Unsupported(name), _) => Transport::Unsupported(name.as_str().into()),
            _ => Transport::Plain,
        };
        let counter = |name: &str| store.counter(&format!("{prefix}{name}.total_match_count"));
        Self {
            default: (runtime(&config.default), counter("default")),
            matches: config
                .matches
                .iter()
                .map(|m| (runtime(&m.socket), counter(&m.name)))
                .collect(),
        }
    }

    fn entry(&self, selected: Selected) -> &(Transport, Arc<Counter>) {
        match selected {
            Selected::Match(i) => self.matches.get(i).unwrap_or(&self.default),
            Selected::Default => &self.default,
        }
    }

    /// The transport of a host `selected` chose, without counting it (comparing a host set).
    pub fn get(&self, selected: Selected) -> &Transport {
        &self.entry(selected).0
    }

    /// The transport for a host being created, counted in its match's stats.
    pub fn for_new_host(&self, selected: Selected) -> Transport {
        let (transport, count) = self.entry(selected);
        count.inc();
        transport.clone()
    }

    /// The cluster's own transport socket (the xDS gRPC client's connector uses it).
    pub fn default(&self) -> &Transport {
        &self.default.0
    }
}
