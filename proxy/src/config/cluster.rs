//! Clusters: discovery type, endpoints, connect timeout, upstream protocol, socket options.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/cluster/v3/cluster.proto
//! Deprecated fields Envoy still honours (`http2_protocol_options`, `dns_refresh_rate`, ...)
//! are honoured here too.
#![allow(deprecated)]

use super::address::{host_and_port, resolved, Endpoint};
use super::error::{FieldPath, Result};
use super::fields::{check, Acknowledged};
use super::hcm_options::Http2Settings;
pub use super::load_balancing::LbPolicy;
use super::transport_match::{MatchLabels, UpstreamSocket};
pub use super::upstream_http::ConnectionLimits;
use super::upstream_http::UpstreamHttp;
use super::values::optional_duration;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use xds_proto::pb::envoy::config::cluster::v3::{cluster, Cluster as ProtoCluster};
use xds_proto::pb::envoy::config::core::v3::{address, HealthStatus};
use xds_proto::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds_proto::Extension;

#[derive(Debug, Clone)]
pub struct Cluster {
    pub name: String,
    /// The name its stats carry: `alt_stat_name` when set.
    pub stat_name: String,
    pub discovery: Discovery,
    pub lb: LbPolicy,
    pub connect_timeout: Duration,
    pub protocol: UpstreamProtocol,
    pub http2: Http2Settings,
    /// How long an upstream connection lives: idle timeout, requests, maximum duration.
    pub connection_limits: ConnectionLimits,
    /// What each upstream stream may take: its duration, its response's header count.
    pub stream_limits: super::upstream_http::StreamLimits,
    pub tcp_keepalive: Option<TcpKeepalive>,
    pub source_address: Option<SocketAddr>,
    /// `transport_socket` and `transport_socket_matches`: each host's is chosen from these
    /// when its host set is built.
    pub transports: super::transport_match::TransportSockets,
    /// Every host of the cluster would use a transport socket Outrigger does not speak (the
    /// cluster's own, with no matches). Requests to it fail with 503 UF rather than going out
    /// in plain text.
    pub unsupported_transport: Option<String>,
    /// Passive health checking (`outlier_detection`), None when not configured.
    pub outlier: Option<super::outlier::OutlierConfig>,
    /// `common_lb_config.healthy_panic_threshold`, in percent.
    pub panic_threshold: f64,
    /// `common_lb_config.locality_weighted_lb_config`: a pick first chooses a locality by its
    /// weight and health, then a host in it.
    pub locality_weighted: bool,
    /// The inline `load_assignment.policy` (STATIC and DNS clusters; EDS assignments carry
    /// their own).
    pub priorities: PriorityPolicy,
    /// Thresholds per routing priority (Envoy's defaults when unset).
    pub circuit_breakers: super::circuit_breakers::CircuitBreakers,
    /// Active health checking (`health_checks`), None when not configured.
    pub health_check: Option<std::sync::Arc<super::health_check::HealthCheckConfig>>,
    /// What Istio's metrics read of the cluster (`destination_service*`), if anything.
    pub istio: Option<Arc<super::istio::IstioCluster>>,
    /// Requests may offer `istio.alpn`'s ALPN lists (unless `istio.alpn_override: "false"`).
    pub istio_alpn_override: bool,
}

impl Cluster {
    /// The EDS service name its endpoints come under, for EDS clusters.
    pub fn eds_service_name(&self) -> Option<&str> {
        match &self.discovery {
            Discovery::Eds { service_name, .. } => Some(service_name),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Discovery {
    Static(Vec<LbEndpoint>),
    StrictDns {
        hosts: Vec<DnsHost>,
        refresh: Duration,
        respect_ttl: bool,
        family: DnsFamily,
    },
    LogicalDns {
        host: DnsHost,
        refresh: Duration,
        respect_ttl: bool,
        family: DnsFamily,
    },
    /// Endpoints arrive over EDS under `service_name` (the cluster's
    /// `eds_cluster_config.service_name`, or its own name); until then the cluster has none.
    Eds {
        service_name: String,
        /// How long the cluster warms waiting for its first assignment (None: forever).
        initial_fetch_timeout: Option<Duration>,
        /// The gRPC stream of its own the assignment comes on (`api_config_source`); None
        /// for ADS.
        source: Option<super::dynamic::AdsConfig>,
    },
    /// The upstream is the downstream connection's original destination (or the address in
    /// an HTTP header), Envoy's ORIGINAL_DST.
    OriginalDst {
        /// `x-envoy-original-dst-host` (or `http_header_name`) overrides the destination.
        http_header: Option<http::HeaderName>,
        port_override: Option<u16>,
    },
}

pub use super::load_balancing::PriorityPolicy;

#[derive(Debug, Clone)]
pub struct LbEndpoint {
    pub address: Endpoint,
    pub weight: u32,
    /// The priority of its `LocalityLbEndpoints` (0 is the highest).
    pub priority: u32,
    pub locality: Locality,
    pub eds_health: EdsHealth,
    /// What `transport_socket_matches` read of its metadata and its locality's.
    pub labels: MatchLabels,
    /// Its `istio.workload` metadata, the peer Istio's client-side metrics fall back to.
    pub istio_peer: Option<Arc<crate::stats::istio::Peer>>,
}

/// The peer an endpoint's `filter_metadata.istio.workload` string names.
fn istio_peer(
    e: &xds_proto::pb::envoy::config::endpoint::v3::LbEndpoint,
) -> Option<Arc<crate::stats::istio::Peer>> {
    use xds_proto::pb::google::protobuf::value::Kind;
    let istio = e.metadata.as_ref()?.filter_metadata.get("istio")?;
    match istio.fields.get("workload")?.kind.as_ref()? {
        Kind::StringValue(s) => crate::stats::istio::Peer::from_endpoint_metadata(s).map(Arc::new),
        _ => None,
    }
}

/// An endpoint's EDS `health_status`, as balancing sees it: UNHEALTHY and TIMEOUT fail it,
/// DEGRADED serves from the degraded list, DRAINING leaves it out (Envoy 1.40's host flags
/// `/failed_eds_health`, `/degraded_eds_health`, `/eds_status_draining`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum EdsHealth {
    #[default]
    Healthy,
    Unhealthy,
    Degraded,
    Draining,
}

impl EdsHealth {
    pub fn of(status: i32) -> Self {
        match HealthStatus::try_from(status) {
            Ok(HealthStatus::Unhealthy | HealthStatus::Timeout) => EdsHealth::Unhealthy,
            Ok(HealthStatus::Degraded) => EdsHealth::Degraded,
            Ok(HealthStatus::Draining) => EdsHealth::Draining,
            _ => EdsHealth::Healthy,
        }
    }
}

/// Which `LocalityLbEndpoints` of the assignment an endpoint belongs to, and that
/// locality's `load_balancing_weight` (0 when unset), for locality-weighted balancing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Locality {
    pub index: u32,
    pub weight: u32,
}

/// A translated `ClusterLoadAssignment`: its endpoints and the policy that shapes priority
/// loads.
#[derive(Debug, Clone)]
pub struct Assignment {
    pub endpoints: Vec<LbEndpoint>,
    pub priorities: PriorityPolicy,
}

#[derive(Debug, Clone)]
pub struct DnsHost {
    pub host: String,
    pub port: u16,
    pub weight: u32,
    pub priority: u32,
    pub locality: Locality,
    pub eds_health: EdsHealth,
    /// Every address the name resolves to takes the transport socket these labels select.
    pub labels: MatchLabels,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsFamily {
    Auto,
    V4Only,
    V6Only,
    V4Preferred,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    Http2,
    UseDownstream,
    /// `auto_config`: each TLS connection offers ALPN `h2,http/1.1` (unless its context or
    /// the request says otherwise) and speaks what the server picks, HTTP/1.1 when it picks
    /// none.
    /// https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/upstreams/http/v3/http_protocol_options.proto#envoy-v3-api-field-extensions-upstreams-http-v3-httpprotocoloptions-auto-config
    Auto,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpKeepalive {
    pub probes: Option<u32>,
    pub time: Option<Duration>,
    pub interval: Option<Duration>,
}

pub fn translate_cluster(
    c: &ProtoCluster,
    path: &FieldPath,
    secrets: &super::tls::SecretSlots,
    acks: &mut Vec<Acknowledged>,
) -> Result<Cluster> {
    check(c, path, acks)?;
    if c.name.is_empty() {
        return Err(path.field("name").error("must not be empty"));
    }
    upstream_network_filters(c, path, acks)?;
    if let Some(any) = c
        .typed_dns_resolver_config
        .as_ref()
        .and_then(|r| r.typed_config.as_ref())
    {
        let tc = path
            .field("typed_dns_resolver_config")
            .field("typed_config");
        match super::extension::decode(any, &tc)? {
            Some(Extension::CaresDnsResolver(cares)) => check(&*cares, &tc, acks)?,
            Some(Extension::GetAddrInfoDnsResolver(g)) => check(&g, &tc, acks)?,
            _ => {
                return Err(super::extension::unregistered(
                    &tc,
                    "typed_dns_resolver_config",
                    any,
                ))
            }
        }
    }
    let original_dst = matches!(
        &c.cluster_discovery_type,
        Some(cluster::ClusterDiscoveryType::Type(t)) if *t == cluster::DiscoveryType::OriginalDst as i32
    );
    let (lb, typed_locality_weighted) =
        super::load_balancing::lb_policy(c, original_dst, path, acks)?;
    let connect_timeout =
        optional_duration(c.connect_timeout.as_ref(), &path.field("connect_timeout"))?
            .unwrap_or(Duration::from_secs(5));
    if connect_timeout.is_zero() {
        return Err(path
            .field("connect_timeout")
            .error("must be greater than 0s"));
    }
    let discovery_type = match &c.cluster_discovery_type {
        Some(cluster::ClusterDiscoveryType::Type(t)) => cluster::DiscoveryType::try_from(*t)
            .map_err(|_| path.field("type").error("unknown discovery type"))?,
        Some(cluster::ClusterDiscoveryType::ClusterType(_)) => {
            return Err(path
                .field("cluster_type")
                .error("custom cluster types are not supported"))
        }
        None => cluster::DiscoveryType::Static,
    };
    let family = match cluster::DnsLookupFamily::try_from(c.dns_lookup_family) {
        Ok(cluster::DnsLookupFamily::Auto) => DnsFamily::Auto,
        Ok(cluster::DnsLookupFamily::V4Only) => DnsFamily::V4Only,
        Ok(cluster::DnsLookupFamily::V6Only) => DnsFamily::V6Only,
        Ok(cluster::DnsLookupFamily::V4Preferred) => DnsFamily::V4Preferred,
        Ok(cluster::DnsLookupFamily::All) => DnsFamily::All,
        Err(_) => return Err(path.field("dns_lookup_family").error("unknown family")),
    };
    let refresh = optional_duration(c.dns_refresh_rate.as_ref(), &path.field("dns_refresh_rate"))?
        .unwrap_or(Duration::from_secs(5));
    if refresh <= Duration::from_millis(1) {
        return Err(path
            .field("dns_refresh_rate")
            .error("value must be greater than 1ms"));
    }
    check_locality_weights(c, path)?;
    let discovery = match discovery_type {
        cluster::DiscoveryType::Static => Discovery::Static(static_endpoints(c, path)?),
        cluster::DiscoveryType::StrictDns => Discovery::StrictDns {
            hosts: dns_hosts(c, path)?,
            refresh,
            respect_ttl: c.respect_dns_ttl,
            family,
        },
        cluster::DiscoveryType::LogicalDns => {
            // Envoy counts every configured endpoint, whatever its priority or health.
            let configured: Vec<usize> = c
                .load_assignment
                .iter()
                .flat_map(|la| la.endpoints.iter().map(|l| l.lb_endpoints.len()))
                .collect();
            let mut hosts = dns_hosts(c, path)?;
            if configured != [1] || hosts.len() != 1 {
                return Err(path
                    .field("load_assignment")
                    .error("LOGICAL_DNS clusters must have a single locality_lb_endpoint and a single lb_endpoint"));
            }
            Discovery::LogicalDns {
                host: hosts.remove(0),
                refresh,
                respect_ttl: c.respect_dns_ttl,
                family,
            }
        }
        cluster::DiscoveryType::Eds if c.eds_cluster_config.is_none() => {
            return Err(path.error("cannot create an EDS cluster without an EDS config"))
        }
        cluster::DiscoveryType::Eds => {
            let eds = c.eds_cluster_config.as_ref();
            let service_name = eds
                .map(|e| e.service_name.clone())
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| c.name.clone());
            let source = eds
                .and_then(|e| e.eds_config.as_ref())
                .map(|c| {
                    super::dynamic::config_source(
                        c,
                        &path.field("eds_cluster_config").field("eds_config"),
                    )
                })
                .transpose()?;
            Discovery::Eds {
                service_name,
                initial_fetch_timeout: source
                    .as_ref()
                    .map_or(Some(Duration::from_secs(15)), |s| s.initial_fetch_timeout),
                source: source.and_then(|s| s.grpc),
            }
        }
        cluster::DiscoveryType::OriginalDst => {
            if c.load_assignment
                .as_ref()
                .is_some_and(|la| !la.endpoints.is_empty())
            {
                return Err(path
                    .field("load_assignment")
                    .error("ORIGINAL_DST clusters must have no load assignment configured"));
            }
            original_dst_config(c, path)?
        }
    };
    let UpstreamHttp {
        protocol,
        http2,
        limits: connection_limits,
        streams: stream_limits,
    } = super::upstream_http::translate(c, path, acks)?;
    let tcp_keepalive = c
        .upstream_connection_options
        .as_ref()
        .and_then(|o| o.tcp_keepalive.as_ref())
        .map(|k| TcpKeepalive {
            probes: k.keepalive_probes.as_ref().map(|v| v.value),
            time: k
                .keepalive_time
                .as_ref()
                .map(|v| Duration::from_secs(u64::from(v.value))),
            interval: k
                .keepalive_interval
                .as_ref()
                .map(|v| Duration::from_secs(u64::from(v.value))),
        });
    let source_address = match c.upstream_bind_config.as_ref() {
        Some(bind) => {
            let p = path.field("upstream_bind_config").field("source_address");
            let sa = bind
                .source_address
                .as_ref()
                .ok_or_else(|| p.error("is required"))?;
            let ip = sa
                .address
                .parse()
                .map_err(|_| p.field("address").error("must be an IP address"))?;
            let port = match &sa.port_specifier {
                Some(xds_proto::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(v)) => {
                    u16::try_from(*v).map_err(|_| p.field("port_value").error("out of range"))?
                }
                _ => 0,
            };
            Some(SocketAddr::new(ip, port))
        }
        None => None,
    };
    let transports = super::transport_match::translate(c, path, secrets, acks)?;
    if protocol == UpstreamProtocol::Auto {
        super::upstream_http::alpn_capable(&transports, &c.name, path)?;
    }
    let unsupported_transport = match &transports.default {
        UpstreamSocket::Unsupported(name) if transports.matches.is_empty() => Some(name.clone()),
        _ => None,
    };
    let circuit_breakers = super::circuit_breakers::translate(
        c.circuit_breakers.as_ref(),
        &path.field("circuit_breakers"),
    )?;
    let health_check =
        super::health_check::translate_all(&c.health_checks, &path.field("health_checks"))?;
    if let Some(super::health_check::Checker::Grpc(_)) = health_check.as_ref().map(|h| &h.checker) {
        if protocol != UpstreamProtocol::Http2 {
            // Envoy's wording.
            return Err(path.field("health_checks").error(format!(
                "{} cluster must support HTTP/2 for gRPC healthchecking",
                c.name
            )));
        }
    }
    Ok(Cluster {
        name: c.name.clone(),
        stat_name: if c.alt_stat_name.is_empty() {
            c.name.clone()
        } else {
            c.alt_stat_name.clone()
        },
        discovery,
        lb,
        connect_timeout,
        protocol,
        http2,
        connection_limits,
        stream_limits,
        tcp_keepalive,
        source_address,
        transports,
        unsupported_transport,
        outlier: c
            .outlier_detection
            .as_ref()
            .map(|o| super::outlier::translate(o, &path.field("outlier_detection")))
            .transpose()?,
        panic_threshold: super::outlier::panic_threshold(c, path)?,
        locality_weighted: typed_locality_weighted
            || matches!(
                c.common_lb_config
                    .as_ref()
                    .and_then(|l| l.locality_config_specifier.as_ref()),
                Some(
                    cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(_)
                )
            ),
        priorities: super::load_balancing::priority_policy(
            c.load_assignment.as_ref(),
            &path.field("load_assignment"),
        )?,
        circuit_breakers,
        health_check: health_check.map(std::sync::Arc::new),
        istio: super::istio::IstioCluster::of(&c.name, c.metadata.as_ref()).map(Arc::new),
        istio_alpn_override: super::istio_alpn::cluster_allows_override(c.metadata.as_ref()),
    })
}

/// The endpoints of every priority (the balancer spills load between them), those the
/// assignment marks unhealthy, degraded or draining too (their hosts carry the EDS flag):
/// (locality index, endpoint index, priority, endpoint, transport socket match labels,
/// locality).
fn selected_endpoints(
    la: Option<&ClusterLoadAssignment>,
) -> impl Iterator<
    Item = (
        usize,
        usize,
        u32,
        &xds_proto::pb::envoy::config::endpoint::v3::LbEndpoint,
        MatchLabels,
        Locality,
    ),
> {
    la.into_iter().flat_map(|la| {
        la.endpoints.iter().enumerate().flat_map(|(i, l)| {
            l.lb_endpoints.iter().enumerate().map(move |(j, e)| {
                let labels = MatchLabels::of(e.metadata.as_ref(), l.metadata.as_ref());
                let locality = Locality {
                    index: u32::try_from(i).unwrap_or(u32::MAX),
                    weight: l.load_balancing_weight.as_ref().map_or(0, |w| w.value),
                };
                (i, j, l.priority, e, labels, locality)
            })
        })
    })
}

/// A cluster's `filters` (upstream network filters). Istio puts its TCP metadata exchange
/// there on mesh clusters; like the listener-side one it has nothing to do, because Outrigger
/// never negotiates its ALPN (`istio_tcp.rs`). Any other upstream filter is refused.
/// https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/cluster/v3/cluster.proto#envoy-v3-api-field-config-cluster-v3-cluster-filters
fn upstream_network_filters(
    c: &ProtoCluster,
    path: &FieldPath,
    acks: &mut Vec<Acknowledged>,
) -> Result<()> {
    for (i, f) in c.filters.iter().enumerate() {
        let p = path.field("filters").index(i);
        let tc = p.field("typed_config");
        let Some(any) = &f.typed_config else {
            return Err(p.error(format!("filter {} has no typed_config", f.name)));
        };
        let typed = match xds_proto::type_name_of_url(&any.type_url) {
            t if t == <xds_proto::TypedStruct as xds_proto::XdsMessage>::FULL_NAME
                || t == xds_proto::XDS_TYPED_STRUCT =>
            {
                <xds_proto::TypedStruct as xds_proto::XdsMessage>::decode_bytes(&any.value)
                    .map_err(|e| tc.error(format!("invalid TypedStruct: {e}")))?
            }
            _ => return Err(super::extension::unregistered(&tc, &f.name, any)),
        };
        if xds_proto::type_name_of_url(&typed.type_url) != super::istio_tcp::TCP_METADATA_EXCHANGE {
            return Err(tc.error(format!(
                "upstream network filter {} ({}) is not supported",
                f.name, typed.type_url
            )));
        }
        acks.push(Acknowledged {
            path: tc.to_string(),
            reason: "the TCP metadata exchange runs only on ALPN istio-peer-exchange, which Outrigger never negotiates: the filter has nothing to do",
        });
    }
    Ok(())
}

fn original_dst_config(c: &ProtoCluster, path: &FieldPath) -> Result<Discovery> {
    let Some(cluster::LbConfig::OriginalDstLbConfig(o)) = &c.lb_config else {
        return Ok(Discovery::OriginalDst {
            http_header: None,
            port_override: None,
        });
    };
    let p = path.field("original_dst_lb_config");
    if o.metadata_key.is_some() {
        return Err(p
            .field("metadata_key")
            .error("metadata keys are not supported"));
    }
    let http_header = if o.use_http_header {
        let name = if o.http_header_name.is_empty() {
            "x-envoy-original-dst-host"
        } else {
            &o.http_header_name
        };
        Some(
            http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                .map_err(|_| p.field("http_header_name").error("invalid header name"))?,
        )
    } else {
        None
    };
    let port_override = o
        .upstream_port_override
        .as_ref()
        .map(|v| {
            u16::try_from(v.value)
                .map_err(|_| p.field("upstream_port_override").error("out of range"))
        })
        .transpose()?;
    Ok(Discovery::OriginalDst {
        http_header,
        port_override,
    })
}

fn check_locality_weights(c: &ProtoCluster, path: &FieldPath) -> Result<()> {
    if let Some(la) = &c.load_assignment {
        for (i, l) in la.endpoints.iter().enumerate() {
            if l.load_balancing_weight
                .as_ref()
                .is_some_and(|w| w.value == 0)
            {
                return Err(path
                    .field("load_assignment")
                    .field("endpoints")
                    .index(i)
                    .field("load_balancing_weight")
                    .error("value must be greater than or equal to 1"));
            }
        }
    }
    Ok(())
}

/// The path of one endpoint under a load assignment at `path`.
fn endpoint_path(path: &FieldPath, i: usize, j: usize) -> FieldPath {
    path.field("endpoints")
        .index(i)
        .field("lb_endpoints")
        .index(j)
}

fn endpoint_weight(
    e: &xds_proto::pb::envoy::config::endpoint::v3::LbEndpoint,
    path: &FieldPath,
) -> Result<u32> {
    match e.load_balancing_weight.as_ref().map(|w| w.value) {
        None => Ok(1),
        Some(0) => Err(path
            .field("load_balancing_weight")
            .error("must be at least 1")),
        Some(w) => Ok(w),
    }
}

fn endpoint_address<'a>(
    e: &'a xds_proto::pb::envoy::config::endpoint::v3::LbEndpoint,
    path: &FieldPath,
) -> Result<Option<&'a xds_proto::pb::envoy::config::core::v3::Address>> {
    use xds_proto::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
    match &e.host_identifier {
        Some(HostIdentifier::Endpoint(ep)) => Ok(ep.address.as_ref()),
        Some(HostIdentifier::EndpointName(_)) => Err(path
            .field("endpoint_name")
            .error("named endpoints are not supported")),
        None => Err(path.field("endpoint").error("is required")),
    }
}

fn static_endpoints(c: &ProtoCluster, path: &FieldPath) -> Result<Vec<LbEndpoint>> {
    assignment_endpoints(c.load_assignment.as_ref(), &path.field("load_assignment"))
}

/// An EDS `ClusterLoadAssignment` (or a cluster's inline `load_assignment`) at `path`.
/// Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/endpoint/v3/endpoint.proto
pub fn translate_load_assignment(
    la: &ClusterLoadAssignment,
    path: &FieldPath,
    acks: &mut Vec<Acknowledged>,
) -> Result<Assignment> {
    check(la, path, acks)?;
    for (i, l) in la.endpoints.iter().enumerate() {
        if l.load_balancing_weight
            .as_ref()
            .is_some_and(|w| w.value == 0)
        {
            return Err(path
                .field("endpoints")
                .index(i)
                .field("load_balancing_weight")
                .error("value must be greater than or equal to 1"));
        }
    }
    Ok(Assignment {
        endpoints: assignment_endpoints(Some(la), path)?,
        priorities: super::load_balancing::priority_policy(Some(la), path)?,
    })
}

fn assignment_endpoints(
    la: Option<&ClusterLoadAssignment>,
    path: &FieldPath,
) -> Result<Vec<LbEndpoint>> {
    selected_endpoints(la)
        .map(|(i, j, priority, e, labels, locality)| {
            let p = endpoint_path(path, i, j);
            let address = resolved(
                endpoint_address(e, &p)?,
                &p.field("endpoint").field("address"),
            )?;
            Ok(LbEndpoint {
                address,
                weight: endpoint_weight(e, &p)?,
                priority,
                locality,
                eds_health: EdsHealth::of(e.health_status),
                labels,
                istio_peer: istio_peer(e),
            })
        })
        .collect()
}

fn dns_hosts(c: &ProtoCluster, path: &FieldPath) -> Result<Vec<DnsHost>> {
    selected_endpoints(c.load_assignment.as_ref())
        .map(|(i, j, priority, e, labels, locality)| {
            let p = endpoint_path(&path.field("load_assignment"), i, j);
            let address = endpoint_address(e, &p)?;
            if matches!(
                address.and_then(|a| a.address.as_ref()),
                Some(address::Address::Pipe(_))
            ) {
                return Err(p
                    .field("endpoint")
                    .field("address")
                    .error("DNS clusters need socket addresses"));
            }
            let (host, port) = host_and_port(address, &p.field("endpoint").field("address"))?;
            Ok(DnsHost {
                host,
                port,
                weight: endpoint_weight(e, &p)?,
                priority,
                locality,
                eds_health: EdsHealth::of(e.health_status),
                labels,
            })
        })
        .collect()
}
