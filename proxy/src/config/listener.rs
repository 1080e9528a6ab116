//! Listeners, filter chains and their match criteria, and the network filters they run.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/listener/v3/listener.proto and
//! https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/listener/v3/listener_components.proto

use super::access_log::{translate_access_logs, AccessLog};
use super::address::{resolved, Endpoint};
use super::error::{FieldPath, Result};
use super::extension;
use super::fields::{check, Acknowledged};
use super::hcm::{translate_hcm, HttpConnectionManager};
use super::listener_filter_predicate::{self as predicate, Predicate};
use super::resolver::Resolver;
use super::tcp_proxy::{translate_tcp_proxy, TcpProxy};
use super::tls::{translate_downstream, DownstreamTls};
use super::values::optional_duration;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use xds_proto::pb::envoy::config::core::v3::CidrRange;
use xds_proto::pb::envoy::config::listener::v3::{
    filter::ConfigType as FilterConfig, filter_chain_match::ConnectionSourceType,
    listener_filter::ConfigType as ListenerFilterConfig, FilterChain as ProtoFilterChain,
    Listener as ProtoListener,
};
use xds_proto::Extension;

#[derive(Debug)]
pub struct Listener {
    pub name: String,
    pub address: Endpoint,
    pub filter_chains: Vec<FilterChain>,
    pub default_filter_chain: Option<FilterChain>,
    pub reuse_port: bool,
    pub bind_to_port: bool,
    pub backlog: u32,
    pub listener_filters_timeout: Option<Duration>,
    /// `continue_on_listener_filters_timeout`: when the listener filters time out, match the
    /// chain with what they found so far instead of closing the connection.
    pub continue_on_listener_filters_timeout: bool,
    /// The inspecting listener filters, in their configured order: what they learn (SNI, ALPN,
    /// `tls`/`raw_buffer`) is what filter chains match on.
    /// The inspecting listener filters in order, each with its `filter_disabled` predicate.
    pub inspectors: Vec<(Inspector, Option<Predicate>)>,
    pub stat_prefix: String,
    /// `traffic_direction: INBOUND`; `/drain_listeners?inboundonly` drains only these.
    pub inbound: bool,
    /// The `original_dst` listener filter: the connection's destination before iptables
    /// redirected it becomes its local address.
    pub original_dst: bool,
    /// The `original_src` listener filter: upstream connections leave from the client's
    /// address, their packets marked with this (0: no mark).
    pub original_src: Option<u32>,
    /// `use_original_dst`: hand the connection to the listener bound (or not bound) at that
    /// original destination, if there is one.
    pub use_original_dst: bool,
    /// `transparent`: IP_TRANSPARENT, for TPROXY interception.
    pub transparent: bool,
    /// Logged for connections the listener closes itself (no filter chain matches).
    pub access_logs: Vec<Arc<AccessLog>>,
    /// A digest of everything but the filter chains: when an update keeps it, only the
    /// changed chains drain (Envoy's in-place filter chain update).
    pub fingerprint_without_chains: u64,
}

#[derive(Debug)]
pub struct FilterChain {
    pub name: String,
    pub matcher: ChainMatch,
    pub filters: Vec<NetworkFilter>,
    /// The chain's network RBAC filters, in order: they decide on the connection's first
    /// bytes, before the terminal filter sees them.
    pub rbac: Vec<Arc<NetworkRbac>>,
    /// `envoy.transport_sockets.tls`: connections on this chain are TLS-terminated.
    pub tls: Option<Arc<DownstreamTls>>,
    /// The chain asks for a transport socket Outrigger does not speak: its connections are
    /// closed instead of being served in plain text.
    pub unsupported_transport: Option<String>,
    /// A digest of the chain's configuration: an update that keeps a chain unchanged leaves
    /// its connections alone.
    pub fingerprint: u64,
}

/// `envoy.filters.network.rbac`: policies and the stat prefix they count under.
#[derive(Debug)]
pub struct NetworkRbac {
    pub rbac: super::rbac::Rbac,
    pub stat_prefix: String,
}

#[derive(Debug)]
pub enum NetworkFilter {
    HttpConnectionManager(Arc<HttpConnectionManager>),
    TcpProxy(Arc<TcpProxy>),
}

/// `filter_chain_match`, with CIDRs parsed. Empty lists match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainMatch {
    pub destination_port: Option<u16>,
    pub prefix_ranges: Vec<Cidr>,
    pub server_names: Vec<String>,
    pub transport_protocol: String,
    pub application_protocols: Vec<String>,
    pub direct_source_prefix_ranges: Vec<Cidr>,
    pub source_type: SourceType,
    pub source_prefix_ranges: Vec<Cidr>,
    pub source_ports: Vec<u16>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SourceType {
    #[default]
    Any,
    SameIpOrLoopback,
    External,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub network: IpAddr,
    pub len: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.network, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            (_, ip) => ip,
        };
        match (self.network, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), self.len),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), self.len),
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], len: u8) -> bool {
    let full = usize::from(len / 8);
    let rest = len % 8;
    a[..full] == b[..full] && (rest == 0 || (a[full] ^ b[full]) >> (8 - rest) == 0)
}

pub fn translate_listener(
    l: &ProtoListener,
    path: &FieldPath,
    resolve: &Resolver<'_>,
    acks: &mut Vec<Acknowledged>,
) -> Result<Listener> {
    check(l, path, acks)?;
    // Istio's filters in the chains report by the listener's direction.
    let resolve = &Resolver {
        inbound: l.traffic_direction
            == xds_proto::pb::envoy::config::core::v3::TrafficDirection::Inbound as i32,
        outbound: l.traffic_direction
            == xds_proto::pb::envoy::config::core::v3::TrafficDirection::Outbound as i32,
        ..*resolve
    };
    // Envoy names an unnamed listener with a generated UUID.
    let name = if l.name.is_empty() {
        generated_name()
    } else {
        l.name.clone()
    };
    let address = resolved(l.address.as_ref(), &path.field("address"))?;
    if l.filter_chains.is_empty() && l.default_filter_chain.is_none() {
        return Err(path.error(format!(
            "no filter chains specified for listener {}",
            l.name
        )));
    }
    let (mut original_dst, mut inspectors, mut original_src) = (false, Vec::new(), None);
    for (i, f) in l.listener_filters.iter().enumerate() {
        let at = path.field("listener_filters").index(i);
        let filter = translate_listener_filter(f, &at, acks)?;
        let disabled = f
            .filter_disabled
            .as_ref()
            .map(|p| predicate::translate(p, &at.field("filter_disabled")))
            .transpose()?;
        match (filter, disabled) {
            (ListenerFilter::Inspector(inspector), disabled) => {
                inspectors.push((inspector, disabled))
            }
            (_, Some(_)) => {
                return Err(at.field("filter_disabled").error(
                    "only the TLS and HTTP inspectors can be disabled per connection in Outrigger",
                ));
            }
            (ListenerFilter::OriginalDst, None) => original_dst = true,
            (ListenerFilter::OriginalSrc(mark), None) => original_src = Some(mark),
        }
    }
    let mut filter_chains: Vec<FilterChain> = Vec::with_capacity(l.filter_chains.len());
    for (i, fc) in l.filter_chains.iter().enumerate() {
        let chain =
            translate_filter_chain(fc, &path.field("filter_chains").index(i), resolve, acks)?;
        if filter_chains.iter().any(|c| c.matcher == chain.matcher) {
            return Err(path.field("filter_chains").index(i).error(format!(
                "multiple filter chains with the same matching rules are defined in listener {}",
                l.name
            )));
        }
        filter_chains.push(chain);
    }
    let default_filter_chain = l
        .default_filter_chain
        .as_ref()
        .map(|fc| translate_filter_chain(fc, &path.field("default_filter_chain"), resolve, acks))
        .transpose()?;
    let fingerprint_without_chains = {
        let mut rest = l.clone();
        rest.filter_chains.clear();
        rest.default_filter_chain = None;
        fingerprint(&xds_proto::XdsMessage::encode_bytes(&rest))
    };
    Ok(Listener {
        fingerprint_without_chains,
        name,
        address,
        filter_chains,
        default_filter_chain,
        reuse_port: l
            .enable_reuse_port
            .as_ref()
            .map(|b| b.value)
            .unwrap_or(true),
        bind_to_port: l.bind_to_port.as_ref().map(|b| b.value).unwrap_or(true),
        backlog: l.tcp_backlog_size.as_ref().map(|v| v.value).unwrap_or(1024),
        listener_filters_timeout: optional_duration(
            l.listener_filters_timeout.as_ref(),
            &path.field("listener_filters_timeout"),
        )?
        .or(Some(Duration::from_secs(15)))
        .filter(|d| !d.is_zero()),
        continue_on_listener_filters_timeout: l.continue_on_listener_filters_timeout,
        inspectors,
        stat_prefix: l.stat_prefix.clone(),
        inbound: l.traffic_direction
            == xds_proto::pb::envoy::config::core::v3::TrafficDirection::Inbound as i32,
        original_dst,
        original_src,
        use_original_dst: l.use_original_dst.as_ref().is_some_and(|b| b.value),
        transparent: l.transparent.as_ref().is_some_and(|b| b.value),
        access_logs: translate_access_logs(
            &l.access_log,
            &path.field("access_log"),
            resolve,
            acks,
        )?,
    })
}

/// A listener filter that peeks at a connection's first bytes for filter chain matching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inspector {
    /// `tls_inspector`: SNI, ALPN and the `tls` transport protocol from a ClientHello.
    Tls,
    /// `http_inspector`: `http/1.0`, `http/1.1` or `h2c` from a plaintext connection's first bytes.
    /// https://www.envoyproxy.io/docs/envoy/latest/configuration/listeners/listener_filters/http_inspector
    Http,
}

/// The listener filters Outrigger runs.
enum ListenerFilter {
    OriginalDst,
    Inspector(Inspector),
    /// `original_src` with its mark.
    OriginalSrc(u32),
}

fn translate_listener_filter(
    f: &xds_proto::pb::envoy::config::listener::v3::ListenerFilter,
    path: &FieldPath,
    acks: &mut Vec<Acknowledged>,
) -> Result<ListenerFilter> {
    let any = match &f.config_type {
        Some(ListenerFilterConfig::TypedConfig(any)) => any,
        Some(_) => return Err(path.error("listener filter config discovery is not supported")),
        None => return Err(path.error(format!("listener filter {} has no typed_config", f.name))),
    };
    let tc = path.field("typed_config");
    let filter = match extension::decode(any, &tc)? {
        Some(Extension::TlsInspector(m)) => {
            check(&m, &tc, acks)?;
            ListenerFilter::Inspector(Inspector::Tls)
        }
        Some(Extension::HttpInspector(m)) => {
            check(&m, &tc, acks)?;
            ListenerFilter::Inspector(Inspector::Http)
        }
        Some(Extension::OriginalDst(m)) => {
            check(&m, &tc, acks)?;
            ListenerFilter::OriginalDst
        }
        // https://www.envoyproxy.io/docs/envoy/latest/configuration/listeners/listener_filters/original_src_filter
        Some(Extension::OriginalSrc(m)) => {
            check(&m, &tc, acks)?;
            if m.bind_port {
                return Err(tc
                    .field("bind_port")
                    .error("binding the client's port is not implemented (Envoy hides it as not implemented too)"));
            }
            ListenerFilter::OriginalSrc(m.mark)
        }
        _ => return Err(extension::unregistered(&tc, &f.name, any)),
    };
    Ok(filter)
}

fn translate_filter_chain(
    fc: &ProtoFilterChain,
    path: &FieldPath,
    resolve: &Resolver<'_>,
    acks: &mut Vec<Acknowledged>,
) -> Result<FilterChain> {
    let matcher = match &fc.filter_chain_match {
        Some(m) => {
            let p = path.field("filter_chain_match");
            if !m.address_suffix.is_empty() || m.suffix_len.is_some() {
                return Err(p.error("address_suffix and suffix_len are not supported"));
            }
            ChainMatch {
                destination_port: m
                    .destination_port
                    .as_ref()
                    .map(|v| {
                        u16::try_from(v.value)
                            .map_err(|_| p.field("destination_port").error("out of range"))
                    })
                    .transpose()?,
                prefix_ranges: cidrs(&m.prefix_ranges, &p.field("prefix_ranges"))?,
                server_names: server_names(&m.server_names, &p.field("server_names"))?,
                transport_protocol: m.transport_protocol.clone(),
                application_protocols: m.application_protocols.clone(),
                direct_source_prefix_ranges: cidrs(
                    &m.direct_source_prefix_ranges,
                    &p.field("direct_source_prefix_ranges"),
                )?,
                source_type: match ConnectionSourceType::try_from(m.source_type) {
                    Ok(ConnectionSourceType::Any) => SourceType::Any,
                    Ok(ConnectionSourceType::SameIpOrLoopback) => SourceType::SameIpOrLoopback,
                    Ok(ConnectionSourceType::External) => SourceType::External,
                    Err(_) => return Err(p.field("source_type").error("unknown source type")),
                },
                source_prefix_ranges: cidrs(
                    &m.source_prefix_ranges,
                    &p.field("source_prefix_ranges"),
                )?,
                source_ports: m
                    .source_ports
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        u16::try_from(*v)
                            .map_err(|_| p.field("source_ports").index(i).error("out of range"))
                    })
                    .collect::<Result<_>>()?,
            }
        }
        None => ChainMatch::default(),
    };
    // A chain without filters is valid in Envoy: its connections are closed at once.
    let mut filters = Vec::with_capacity(fc.filters.len());
    // Istio's TCP metrics, for the chain's tcp_proxy (with where they were configured).
    let mut istio_tcp: Option<(super::istio::StatsPlugin, FieldPath)> = None;
    let mut rbac = Vec::new();
    for (i, f) in fc.filters.iter().enumerate() {
        let p = path.field("filters").index(i);
        let any = match &f.config_type {
            Some(FilterConfig::TypedConfig(any)) => any,
            Some(_) => return Err(p.error("filter config discovery is not supported")),
            None => return Err(p.error(format!("network filter {} has no typed_config", f.name))),
        };
        let tc = p.field("typed_config");
        let is_last = i + 1 == fc.filters.len();
        if !is_last {
            use super::istio_tcp::IstioNetworkFilter;
            match super::istio_tcp::translate(any, &tc, resolve, acks)? {
                Some(IstioNetworkFilter::Stats(stats)) => {
                    istio_tcp = Some((stats, tc));
                    continue;
                }
                Some(IstioNetworkFilter::Nothing) => continue,
                None => {}
            }
        }
        let filter = match extension::decode(any, &tc)? {
            Some(Extension::NetworkRbac(_)) if is_last => {
                return Err(p.error(format!(
                    "non-terminal filter named {} of type envoy.filters.network.rbac is the last filter in a network filter chain",
                    f.name
                )))
            }
            Some(Extension::NetworkRbac(r)) => {
                let (rules, stat_prefix) = super::rbac::translate_network_rbac(&r, &tc, acks)?;
                rbac.push(Arc::new(NetworkRbac {
                    rbac: rules,
                    stat_prefix,
                }));
                continue;
            }
            Some(Extension::HttpConnectionManager(hcm)) => {
                if let Some((_, at)) = istio_tcp.take() {
                    super::istio_tcp::acknowledge_on_http_chain(&at, acks);
                }
                NetworkFilter::HttpConnectionManager(Arc::new(translate_hcm(
                    &hcm, &tc, resolve, acks,
                )?))
            }
            Some(Extension::TcpProxy(t)) => {
                let mut tcp = translate_tcp_proxy(&t, &tc, resolve, acks)?;
                tcp.istio = istio_tcp.take().map(|(stats, _)| {
                    Arc::new(super::istio_tcp::IstioTcp {
                        local: resolve.local.clone(),
                        stats,
                    })
                });
                NetworkFilter::TcpProxy(Arc::new(tcp))
            }
            _ => return Err(extension::unregistered(&tc, &f.name, any)),
        };
        if !is_last {
            return Err(p.error(format!(
                "terminal filter named {} must be the last filter in a network filter chain",
                f.name
            )));
        }
        filters.push(filter);
    }
    let (tls, unsupported_transport) = match &fc.transport_socket {
        None => (None, None),
        Some(ts) => match transport_socket(ts, &path.field("transport_socket"), acks)? {
            Transport::Raw => (None, None),
            Transport::Tls(any) => {
                let p = path.field("transport_socket").field("typed_config");
                let Some(Extension::DownstreamTlsContext(ctx)) = extension::decode(&any, &p)?
                else {
                    return Err(p.error(format!(
                        "{} needs a DownstreamTlsContext on a listener",
                        ts.name
                    )));
                };
                let ctx = translate_downstream(&ctx, &p, &resolve.tls(), acks)?;
                (Some(Arc::new(ctx)), None)
            }
            Transport::Unsupported => (None, Some(ts.name.clone())),
        },
    };
    Ok(FilterChain {
        name: fc.name.clone(),
        matcher,
        filters,
        rbac,
        tls,
        unsupported_transport,
        fingerprint: fingerprint(&prost::Message::encode_to_vec(fc)),
    })
}

/// A transport socket, by its typed config (or, without one, its name).
pub(super) enum Transport {
    Raw,
    Tls(xds_proto::pb::google::protobuf::Any),
    /// Acknowledged: its connections are refused rather than served in plain text.
    Unsupported,
}

pub(super) fn transport_socket(
    ts: &xds_proto::pb::envoy::config::core::v3::TransportSocket,
    path: &FieldPath,
    acks: &mut Vec<Acknowledged>,
) -> Result<Transport> {
    use xds_proto::pb::envoy::config::core::v3::transport_socket::ConfigType;
    let any = match &ts.config_type {
        Some(ConfigType::TypedConfig(any)) => any.clone(),
        None if ts.name == "envoy.transport_sockets.raw_buffer" || ts.name == "raw_buffer" => {
            return Ok(Transport::Raw)
        }
        None => return Err(path.error(format!("transport socket {} has no typed_config", ts.name))),
    };
    let tc = path.field("typed_config");
    match extension::decode(&any, &tc)? {
        Some(Extension::RawBuffer(m)) => {
            check(&m, &tc, acks)?;
            Ok(Transport::Raw)
        }
        Some(Extension::DownstreamTlsContext(_)) | Some(Extension::UpstreamTlsContext(_)) => {
            Ok(Transport::Tls(any))
        }
        _ => {
            acks.push(Acknowledged {
                path: path.to_string(),
                reason:
                    "this transport socket is not implemented; connections using it are refused",
            });
            Ok(Transport::Unsupported)
        }
    }
}

/// `server_names` entries: exact names or a leading `*.` wildcard, lowercased.
fn server_names(names: &[String], path: &FieldPath) -> Result<Vec<String>> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let wildcard_ok =
                !name.contains('*') || (name.starts_with("*.") && name[1..].find('*').is_none());
            if !wildcard_ok {
                return Err(path.index(i).error(format!(
                    "partial wildcards are not supported in \"server_names\": {name}"
                )));
            }
            Ok(name.to_ascii_lowercase())
        })
        .collect()
}

/// A random version-4 UUID, the name Envoy gives a listener that has none.
fn generated_name() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut bytes = [0u8; 16];
    for chunk in bytes.chunks_mut(8) {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0);
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

pub(super) fn cidrs(ranges: &[CidrRange], path: &FieldPath) -> Result<Vec<Cidr>> {
    ranges
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let p = path.index(i);
            let network: IpAddr = r.address_prefix.parse().map_err(|_| {
                p.field("address_prefix")
                    .error(format!("malformed IP address: {}", r.address_prefix))
            })?;
            let max = if network.is_ipv4() { 32 } else { 128 };
            let len = r.prefix_len.as_ref().map(|v| v.value).unwrap_or(0);
            // Envoy clamps an over-long prefix to the address length.
            Ok(Cidr {
                network,
                len: len.min(max) as u8,
            })
        })
        .collect()
}

impl Listener {
    /// The RDS route configurations this listener's HTTP connection managers route with: the
    /// listener warms until each has arrived.
    pub fn rds_routes(
        &self,
    ) -> Vec<(
        Arc<super::slots::Slot<super::route::RouteConfig>>,
        super::dynamic::ConfigSource,
    )> {
        self.rds_subscriptions()
            .into_iter()
            .map(|(slot, source, _)| (slot, source))
            .collect()
    }

    /// As [`Listener::rds_routes`], with the stat prefix of the connection manager that uses
    /// each (its RDS stats are `http.<stat_prefix>.rds.<name>.*`).
    pub fn rds_subscriptions(
        &self,
    ) -> Vec<(
        Arc<super::slots::Slot<super::route::RouteConfig>>,
        super::dynamic::ConfigSource,
        String,
    )> {
        self.filter_chains
            .iter()
            .chain(self.default_filter_chain.as_ref())
            .flat_map(|chain| &chain.filters)
            .filter_map(|filter| match filter {
                NetworkFilter::HttpConnectionManager(hcm) => match &hcm.routes {
                    super::hcm::RouteSource::Rds { slot, source, .. } => {
                        Some((slot.clone(), source.clone(), hcm.stat_prefix.clone()))
                    }
                    super::hcm::RouteSource::Static(_) => None,
                },
                NetworkFilter::TcpProxy(_) => None,
            })
            .collect()
    }
}

/// A digest of a message's encoding, to tell an unchanged piece of configuration from a
/// changed one (not a security boundary).
fn fingerprint(encoded: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    encoded.hash(&mut hasher);
    hasher.finish()
}

impl Listener {
    /// The SDS secrets this listener's TLS chains name: like its route tables, the listener
    /// warms until each has arrived (Envoy's init manager waits for them too).
    pub fn sds_secrets(&self) -> Vec<Arc<super::slots::Slot<super::tls::Secret>>> {
        let mut slots = Vec::new();
        for chain in self
            .filter_chains
            .iter()
            .chain(self.default_filter_chain.as_ref())
        {
            if let Some(tls) = &chain.tls {
                tls.common.sds_secrets(&mut slots);
            }
        }
        slots
    }

    /// Whether everything the listener waits for (route tables, secrets) has arrived.
    pub fn dependencies_ready(&self) -> bool {
        self.rds_routes()
            .iter()
            .all(|(slot, _)| slot.get().is_some())
            && self.sds_secrets().iter().all(|slot| slot.get().is_some())
    }
}
