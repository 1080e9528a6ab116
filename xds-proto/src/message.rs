//! The concrete messages Outrigger encodes and decodes, each with non-generic entry points.
//!
//! prost's `decode`/`encode` are generic over the buffer type; called from another crate in a
//! release build they re-instantiate the whole reachable message tree there (Bootstrap reaches
//! almost all of it). `#[inline(never)]` methods compiled once here avoid that.

use crate::pb;
use prost::Message;

/// A message of the Envoy API that Outrigger reads or writes.
pub trait XdsMessage: Sized + Default + Clone + Send + Sync + 'static {
    /// The protobuf full name, e.g. `envoy.config.listener.v3.Listener`.
    const FULL_NAME: &'static str;
    fn decode_bytes(bytes: &[u8]) -> Result<Self, prost::DecodeError>;
    fn encode_bytes(&self) -> Vec<u8>;
    fn type_url() -> String {
        format!("{}{}", crate::TYPE_URL_PREFIX, Self::FULL_NAME)
    }
}

macro_rules! xds_messages {
    ($($ty:path => $name:literal,)*) => {$(
        impl XdsMessage for $ty {
            const FULL_NAME: &'static str = $name;
            #[inline(never)]
            fn decode_bytes(bytes: &[u8]) -> Result<Self, prost::DecodeError> {
                <Self as Message>::decode(bytes)
            }
            #[inline(never)]
            fn encode_bytes(&self) -> Vec<u8> {
                self.encode_to_vec()
            }
        }
    )*};
}

xds_messages! {
    pb::envoy::config::bootstrap::v3::Bootstrap => "envoy.config.bootstrap.v3.Bootstrap",
    pb::envoy::config::listener::v3::Listener => "envoy.config.listener.v3.Listener",
    pb::envoy::config::cluster::v3::Cluster => "envoy.config.cluster.v3.Cluster",
    pb::envoy::config::route::v3::RouteConfiguration => "envoy.config.route.v3.RouteConfiguration",
    pb::envoy::config::route::v3::FilterConfig => "envoy.config.route.v3.FilterConfig",
    pb::envoy::config::endpoint::v3::ClusterLoadAssignment => "envoy.config.endpoint.v3.ClusterLoadAssignment",
    pb::envoy::extensions::transport_sockets::tls::v3::Secret => "envoy.extensions.transport_sockets.tls.v3.Secret",
    pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext => "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
    pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext => "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
    pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer => "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer",
    pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager => "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
    pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy => "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
    pb::envoy::extensions::filters::http::router::v3::Router => "envoy.extensions.filters.http.router.v3.Router",
    pb::envoy::extensions::filters::http::fault::v3::HttpFault => "envoy.extensions.filters.http.fault.v3.HTTPFault",
    pb::envoy::extensions::filters::http::rbac::v3::Rbac => "envoy.extensions.filters.http.rbac.v3.RBAC",
    pb::envoy::extensions::filters::http::rbac::v3::RbacPerRoute => "envoy.extensions.filters.http.rbac.v3.RBACPerRoute",
    pb::envoy::extensions::filters::http::jwt_authn::v3::JwtAuthentication => "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
    pb::envoy::extensions::filters::http::jwt_authn::v3::PerRouteConfig => "envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig",
    pb::envoy::extensions::filters::network::rbac::v3::Rbac => "envoy.extensions.filters.network.rbac.v3.RBAC",
    pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit => "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
    pb::envoy::extensions::filters::http::compressor::v3::Compressor => "envoy.extensions.filters.http.compressor.v3.Compressor",
    pb::envoy::extensions::compression::gzip::compressor::v3::Gzip => "envoy.extensions.compression.gzip.compressor.v3.Gzip",
    pb::envoy::extensions::compression::brotli::compressor::v3::Brotli => "envoy.extensions.compression.brotli.compressor.v3.Brotli",
    pb::envoy::extensions::compression::zstd::compressor::v3::Zstd => "envoy.extensions.compression.zstd.compressor.v3.Zstd",
    pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector => "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
    pb::envoy::extensions::filters::listener::http_inspector::v3::HttpInspector => "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector",
    pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst => "envoy.extensions.filters.listener.original_dst.v3.OriginalDst",
    pb::envoy::extensions::filters::http::grpc_stats::v3::FilterConfig => "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
    pb::envoy::extensions::network::dns_resolver::cares::v3::CaresDnsResolverConfig => "envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig",
    pb::envoy::extensions::network::dns_resolver::getaddrinfo::v3::GetAddrInfoDnsResolverConfig => "envoy.extensions.network.dns_resolver.getaddrinfo.v3.GetAddrInfoDnsResolverConfig",
    pb::envoy::extensions::request_id::uuid::v3::UuidRequestIdConfig => "envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig",
    pb::envoy::config::trace::v3::ZipkinConfig => "envoy.config.trace.v3.ZipkinConfig",
    pb::envoy::extensions::filters::http::cors::v3::Cors => "envoy.extensions.filters.http.cors.v3.Cors",
    pb::envoy::extensions::filters::listener::original_src::v3::OriginalSrc => "envoy.extensions.filters.listener.original_src.v3.OriginalSrc",
    pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions => "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    pb::envoy::extensions::access_loggers::file::v3::FileAccessLog => "envoy.extensions.access_loggers.file.v3.FileAccessLog",
    pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate => "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate",
    pb::envoy::extensions::load_balancing_policies::round_robin::v3::RoundRobin => "envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin",
    pb::envoy::extensions::load_balancing_policies::least_request::v3::LeastRequest => "envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest",
    pb::envoy::extensions::load_balancing_policies::random::v3::Random => "envoy.extensions.load_balancing_policies.random.v3.Random",
    pb::envoy::extensions::load_balancing_policies::ring_hash::v3::RingHash => "envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash",
    pb::envoy::extensions::load_balancing_policies::maglev::v3::Maglev => "envoy.extensions.load_balancing_policies.maglev.v3.Maglev",
    pb::envoy::extensions::load_balancing_policies::cluster_provided::v3::ClusterProvided => "envoy.extensions.load_balancing_policies.cluster_provided.v3.ClusterProvided",
    pb::envoy::extensions::access_loggers::stream::v3::StdoutAccessLog => "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
    pb::envoy::extensions::access_loggers::stream::v3::StderrAccessLog => "envoy.extensions.access_loggers.stream.v3.StderrAccessLog",
    pb::envoy::admin::v3::ConfigDump => "envoy.admin.v3.ConfigDump",
    pb::envoy::admin::v3::BootstrapConfigDump => "envoy.admin.v3.BootstrapConfigDump",
    pb::envoy::admin::v3::ListenersConfigDump => "envoy.admin.v3.ListenersConfigDump",
    pb::envoy::admin::v3::ClustersConfigDump => "envoy.admin.v3.ClustersConfigDump",
    pb::envoy::admin::v3::RoutesConfigDump => "envoy.admin.v3.RoutesConfigDump",
    pb::envoy::admin::v3::SecretsConfigDump => "envoy.admin.v3.SecretsConfigDump",
    pb::envoy::admin::v3::EndpointsConfigDump => "envoy.admin.v3.EndpointsConfigDump",
    pb::envoy::service::discovery::v3::DiscoveryRequest => "envoy.service.discovery.v3.DiscoveryRequest",
    pb::envoy::service::discovery::v3::DiscoveryResponse => "envoy.service.discovery.v3.DiscoveryResponse",
    pb::envoy::service::discovery::v3::DeltaDiscoveryRequest => "envoy.service.discovery.v3.DeltaDiscoveryRequest",
    pb::envoy::service::discovery::v3::DeltaDiscoveryResponse => "envoy.service.discovery.v3.DeltaDiscoveryResponse",
    pb::google::protobuf::Struct => "google.protobuf.Struct",
    pb::envoy::config::core::v3::Node => "envoy.config.core.v3.Node",
    crate::TypedStruct => "udpa.type.v1.TypedStruct",
}
