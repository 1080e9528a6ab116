//! The registry of extension types Outrigger understands: one place that maps an `Any`'s type
//! URL to the decoded message. Translators match on [`Extension`]; a type not listed here is
//! [`AnyError::UnknownType`], which they report as Envoy does ("didn't find a registered
//! implementation") unless the extension is optional.

use crate::pb::envoy::extensions as ext;
use crate::pb::google::protobuf::Any;
use crate::{type_name_of_url, AnyError, XdsMessage};

/// A decoded extension config.
#[derive(Debug, Clone)]
pub enum Extension {
    HttpConnectionManager(
        Box<ext::filters::network::http_connection_manager::v3::HttpConnectionManager>,
    ),
    TcpProxy(Box<ext::filters::network::tcp_proxy::v3::TcpProxy>),
    Router(ext::filters::http::router::v3::Router),
    Compressor(Box<ext::filters::http::compressor::v3::Compressor>),
    GzipCompressor(ext::compression::gzip::compressor::v3::Gzip),
    BrotliCompressor(ext::compression::brotli::compressor::v3::Brotli),
    ZstdCompressor(Box<ext::compression::zstd::compressor::v3::Zstd>),
    Fault(Box<ext::filters::http::fault::v3::HttpFault>),
    GrpcStats(Box<ext::filters::http::grpc_stats::v3::FilterConfig>),
    Cors(ext::filters::http::cors::v3::Cors),
    HttpRbac(Box<ext::filters::http::rbac::v3::Rbac>),
    HttpRbacPerRoute(Box<ext::filters::http::rbac::v3::RbacPerRoute>),
    JwtAuthn(Box<ext::filters::http::jwt_authn::v3::JwtAuthentication>),
    JwtAuthnPerRoute(Box<ext::filters::http::jwt_authn::v3::PerRouteConfig>),
    NetworkRbac(Box<ext::filters::network::rbac::v3::Rbac>),
    UuidRequestId(ext::request_id::uuid::v3::UuidRequestIdConfig),
    CaresDnsResolver(Box<ext::network::dns_resolver::cares::v3::CaresDnsResolverConfig>),
    GetAddrInfoDnsResolver(
        ext::network::dns_resolver::getaddrinfo::v3::GetAddrInfoDnsResolverConfig,
    ),
    TlsInspector(ext::filters::listener::tls_inspector::v3::TlsInspector),
    HttpInspector(ext::filters::listener::http_inspector::v3::HttpInspector),
    OriginalDst(ext::filters::listener::original_dst::v3::OriginalDst),
    OriginalSrc(ext::filters::listener::original_src::v3::OriginalSrc),
    HttpProtocolOptions(Box<ext::upstreams::http::v3::HttpProtocolOptions>),
    RawBuffer(ext::transport_sockets::raw_buffer::v3::RawBuffer),
    UpstreamTlsContext(Box<ext::transport_sockets::tls::v3::UpstreamTlsContext>),
    DownstreamTlsContext(Box<ext::transport_sockets::tls::v3::DownstreamTlsContext>),
    FileAccessLog(Box<ext::access_loggers::file::v3::FileAccessLog>),
    RoundRobinLb(ext::load_balancing_policies::round_robin::v3::RoundRobin),
    LeastRequestLb(Box<ext::load_balancing_policies::least_request::v3::LeastRequest>),
    RandomLb(ext::load_balancing_policies::random::v3::Random),
    RingHashLb(Box<ext::load_balancing_policies::ring_hash::v3::RingHash>),
    MaglevLb(Box<ext::load_balancing_policies::maglev::v3::Maglev>),
    ClusterProvidedLb(ext::load_balancing_policies::cluster_provided::v3::ClusterProvided),
    StdoutAccessLog(ext::access_loggers::stream::v3::StdoutAccessLog),
    StderrAccessLog(ext::access_loggers::stream::v3::StderrAccessLog),
    PreviousHostsPredicate(ext::retry::host::previous_hosts::v3::PreviousHostsPredicate),
}

fn decode<M: XdsMessage>(any: &Any) -> Result<M, AnyError> {
    M::decode_bytes(&any.value).map_err(|e| AnyError::Decode {
        type_name: M::FULL_NAME,
        message: e.to_string(),
    })
}

/// Decodes `any` by its type URL.
pub fn decode_extension(any: &Any) -> Result<Extension, AnyError> {
    use Extension as E;
    let name = type_name_of_url(&any.type_url);
    macro_rules! registry {
        ($($variant:ident($ty:ty) $(boxed $boxed:tt)?),* $(,)?) => {
            $(if name == <$ty as XdsMessage>::FULL_NAME {
                return decode::<$ty>(any).map(|m| E::$variant(registry!(@wrap m $($boxed)?)));
            })*
        };
        (@wrap $m:ident yes) => { Box::new($m) };
        (@wrap $m:ident) => { $m };
    }
    registry! {
        HttpConnectionManager(ext::filters::network::http_connection_manager::v3::HttpConnectionManager) boxed yes,
        TcpProxy(ext::filters::network::tcp_proxy::v3::TcpProxy) boxed yes,
        Router(ext::filters::http::router::v3::Router),
        Compressor(ext::filters::http::compressor::v3::Compressor) boxed yes,
        GzipCompressor(ext::compression::gzip::compressor::v3::Gzip),
        BrotliCompressor(ext::compression::brotli::compressor::v3::Brotli),
        ZstdCompressor(ext::compression::zstd::compressor::v3::Zstd) boxed yes,
        Fault(ext::filters::http::fault::v3::HttpFault) boxed yes,
        GrpcStats(ext::filters::http::grpc_stats::v3::FilterConfig) boxed yes,
        Cors(ext::filters::http::cors::v3::Cors),
        HttpRbac(ext::filters::http::rbac::v3::Rbac) boxed yes,
        HttpRbacPerRoute(ext::filters::http::rbac::v3::RbacPerRoute) boxed yes,
        JwtAuthn(ext::filters::http::jwt_authn::v3::JwtAuthentication) boxed yes,
        JwtAuthnPerRoute(ext::filters::http::jwt_authn::v3::PerRouteConfig) boxed yes,
        NetworkRbac(ext::filters::network::rbac::v3::Rbac) boxed yes,
        UuidRequestId(ext::request_id::uuid::v3::UuidRequestIdConfig),
        CaresDnsResolver(ext::network::dns_resolver::cares::v3::CaresDnsResolverConfig) boxed yes,
        GetAddrInfoDnsResolver(ext::network::dns_resolver::getaddrinfo::v3::GetAddrInfoDnsResolverConfig),
        TlsInspector(ext::filters::listener::tls_inspector::v3::TlsInspector),
        HttpInspector(ext::filters::listener::http_inspector::v3::HttpInspector),
        OriginalDst(ext::filters::listener::original_dst::v3::OriginalDst),
        OriginalSrc(ext::filters::listener::original_src::v3::OriginalSrc),
        HttpProtocolOptions(ext::upstreams::http::v3::HttpProtocolOptions) boxed yes,
        RawBuffer(ext::transport_sockets::raw_buffer::v3::RawBuffer),
        UpstreamTlsContext(ext::transport_sockets::tls::v3::UpstreamTlsContext) boxed yes,
        DownstreamTlsContext(ext::transport_sockets::tls::v3::DownstreamTlsContext) boxed yes,
        FileAccessLog(ext::access_loggers::file::v3::FileAccessLog) boxed yes,
        RoundRobinLb(ext::load_balancing_policies::round_robin::v3::RoundRobin),
        LeastRequestLb(ext::load_balancing_policies::least_request::v3::LeastRequest) boxed yes,
        RandomLb(ext::load_balancing_policies::random::v3::Random),
        RingHashLb(ext::load_balancing_policies::ring_hash::v3::RingHash) boxed yes,
        MaglevLb(ext::load_balancing_policies::maglev::v3::Maglev) boxed yes,
        ClusterProvidedLb(ext::load_balancing_policies::cluster_provided::v3::ClusterProvided),
        StdoutAccessLog(ext::access_loggers::stream::v3::StdoutAccessLog),
        StderrAccessLog(ext::access_loggers::stream::v3::StderrAccessLog),
        PreviousHostsPredicate(ext::retry::host::previous_hosts::v3::PreviousHostsPredicate),
    }
    Err(AnyError::UnknownType(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_types_decode_and_unknown_ones_are_named() {
        let router = crate::pack(&ext::filters::http::router::v3::Router::default());
        assert!(matches!(
            decode_extension(&router),
            Ok(Extension::Router(_))
        ));
        let unknown = Any {
            type_url: "type.googleapis.com/x.y.Z".into(),
            value: Vec::new(),
        };
        assert!(
            matches!(decode_extension(&unknown), Err(AnyError::UnknownType(n)) if n == "x.y.Z")
        );
        let broken = Any {
            type_url: router.type_url.clone(),
            value: vec![0xff, 0xff],
        };
        assert!(matches!(
            decode_extension(&broken),
            Err(AnyError::Decode { .. })
        ));
    }
}
