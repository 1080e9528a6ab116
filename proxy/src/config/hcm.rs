//! The HTTP connection manager and its HTTP filter chain.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto

use super::access_log::{translate_access_logs, AccessLog};
use super::compressor::{translate_compressor, CompressorFilter, GzipCompressor};
use super::dynamic::{config_source, ConfigSource};
use super::error::{FieldPath, Result};
use super::extension;
use super::fault::{translate_fault, FaultSettings};
use super::fields::{check, Acknowledged};
use super::grpc_stats::GrpcStatsFilter;
use super::hcm_options::{
    http2_settings, limits, path_handling, upgrades, Http2Settings, Limits, PathHandling,
};
use super::istio::IstioHttp;
use super::resolver::Resolver;
use super::route::{translate_route_config, RouteConfig};
use super::slots::Slot;
use std::sync::Arc;
use xds_proto::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::{CodecType, RouteSpecifier},
    http_filter::ConfigType,
    HttpConnectionManager as ProtoHcm,
};
use xds_proto::Extension;

#[derive(Debug)]
pub struct HttpConnectionManager {
    pub stat_prefix: String,
    pub codec: Codec,
    pub routes: RouteSource,
    /// The `server` header on responses Outrigger generates or forwards.
    pub server_name: http::HeaderValue,
    pub server_header: ServerHeader,
    pub forwarding: Forwarding,
    pub limits: Limits,
    pub http2: Http2Settings,
    pub paths: PathHandling,
    /// Upgrade types proxied (`upgrade_configs`), e.g. `websocket`.
    pub upgrades: Vec<String>,
    pub access_logs: Vec<Arc<AccessLog>>,
    /// The fault injection filters of the chain, in order (usually none or one).
    pub faults: Vec<FaultFilter>,
    /// The gzip compressor filters of the chain, in order.
    pub compressors: Vec<GzipCompressor>,
    /// The RBAC filters of the chain, in order; they all run before any fault filter.
    pub rbac: Vec<RbacFilter>,
    /// The JWT authentication filters of the chain, in order; they all run before any RBAC
    /// or fault filter.
    pub jwt_authn: Vec<Arc<super::jwt_authn::JwtAuthn>>,
    /// Istio's metadata exchange and standard metrics, when the chain has either filter.
    pub istio: Option<Arc<IstioHttp>>,
    /// Istio's `istio.alpn`: the ALPN offers upstream TLS handshakes make for this chain's
    /// requests, when the chain has the filter.
    pub istio_alpn: Option<super::istio_alpn::IstioAlpn>,
    /// The gRPC statistics filter, when the chain has one.
    pub grpc_stats: Option<Arc<GrpcStatsFilter>>,
    /// `tracing`: sampling decisions, and spans when a Zipkin provider is configured.
    pub tracing: Option<Arc<super::tracing::HcmTracing>>,
    /// The router's `suppress_envoy_headers`: no `x-envoy-upstream-service-time`,
    /// `x-envoy-expected-rq-timeout-ms`, `x-envoy-original-path`/`-host` or
    /// `x-envoy-overloaded` (`x-envoy-attempt-count` stays, as in Envoy).
    /// Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/router/v3/router.proto
    pub suppress_envoy_headers: bool,
}

/// A fault injection filter in the chain: its name (which routes' `typed_per_filter_config`
/// refer to) and its own settings.
#[derive(Debug)]
pub struct FaultFilter {
    /// Also the namespace of the dynamic metadata it writes.
    pub name: Arc<str>,
    pub settings: Arc<FaultSettings>,
    /// `disabled`: the filter acts only on routes that configure it.
    pub disabled_by_default: bool,
}

/// An RBAC filter in the chain: its name (which routes' `typed_per_filter_config` refer to)
/// and its own policies.
#[derive(Debug)]
pub struct RbacFilter {
    pub name: String,
    pub rbac: Arc<super::rbac::Rbac>,
    /// `disabled`: the filter acts only on routes that configure it.
    pub disabled_by_default: bool,
}

/// Where the connection manager's route table comes from.
#[derive(Debug)]
pub enum RouteSource {
    /// `route_config`: inline, fixed for the life of the listener.
    Static(Arc<RouteConfig>),
    /// `rds`: the named route configuration as RDS last delivered it.
    Rds {
        slot: Arc<Slot<RouteConfig>>,
        source: ConfigSource,
        empty: Arc<RouteConfig>,
    },
}

impl RouteSource {
    /// The table a request is routed with; it stays the same for the whole request.
    pub fn current(&self) -> Arc<RouteConfig> {
        match self {
            RouteSource::Static(rc) => rc.clone(),
            RouteSource::Rds { slot, empty, .. } => slot.get().unwrap_or_else(|| empty.clone()),
        }
    }
}

/// `server_header_transformation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerHeader {
    Overwrite,
    AppendIfAbsent,
    PassThrough,
}

/// How the connection manager treats forwarding headers (`x-forwarded-*`, `x-request-id`,
/// `x-envoy-*`, `via`).
/// Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/headers
#[derive(Debug, Clone, Default)]
pub struct Forwarding {
    pub use_remote_address: bool,
    pub xff_num_trusted_hops: u32,
    pub skip_xff_append: bool,
    pub internal_cidrs: Vec<super::listener::Cidr>,
    pub internal_unix_sockets: bool,
    pub via: Option<http::HeaderValue>,
    pub generate_request_id: bool,
    pub preserve_external_request_id: bool,
    pub always_set_request_id_in_response: bool,
    /// `x-forwarded-client-cert` (`forward_client_cert_details`).
    pub client_cert: ForwardClientCert,
    /// What an appended or set XFCC element carries (`set_current_client_cert_details`).
    pub client_cert_details: ClientCertDetails,
}

/// `forward_client_cert_details`: what becomes of the `x-forwarded-client-cert` header.
/// https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto#enum-extensions-filters-network-http-connection-manager-v3-httpconnectionmanager-forwardclientcertdetails
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ForwardClientCert {
    /// Removed (the default).
    #[default]
    Sanitize,
    /// Forwarded as it came, on mutual TLS connections only.
    ForwardOnly,
    /// Forwarded with this hop's element appended (mutual TLS only).
    AppendForward,
    /// Replaced by this hop's element (mutual TLS only).
    SanitizeSet,
    /// Forwarded as it came, whatever the connection.
    AlwaysForwardOnly,
}

/// The client certificate's details an XFCC element carries besides `By` and `Hash`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientCertDetails {
    pub subject: bool,
    pub uri: bool,
    pub dns: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Auto,
    Http1,
    Http2,
}

pub fn translate_hcm(
    hcm: &ProtoHcm,
    path: &FieldPath,
    resolve: &Resolver<'_>,
    acks: &mut Vec<Acknowledged>,
) -> Result<HttpConnectionManager> {
    check(hcm, path, acks)?;
    let mut uuid_config = None;
    // https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/request_id/uuid/v3/uuid.proto
    if let Some(any) = hcm
        .request_id_extension
        .as_ref()
        .and_then(|e| e.typed_config.as_ref())
    {
        let tc = path.field("request_id_extension").field("typed_config");
        match extension::decode(any, &tc)? {
            Some(Extension::UuidRequestId(uuid)) => {
                check(&uuid, &tc, acks)?;
                uuid_config = Some(uuid);
            }
            _ => return Err(extension::unregistered(&tc, "request_id_extension", any)),
        }
    }
    if hcm.stat_prefix.is_empty() {
        return Err(path.field("stat_prefix").error("must not be empty"));
    }
    let codec = match CodecType::try_from(hcm.codec_type) {
        Ok(CodecType::Auto) => Codec::Auto,
        Ok(CodecType::Http1) => Codec::Http1,
        Ok(CodecType::Http2) => Codec::Http2,
        Ok(CodecType::Http3) => {
            return Err(path.field("codec_type").error("HTTP/3 is not supported"))
        }
        Err(_) => return Err(path.field("codec_type").error("unknown codec")),
    };
    let routes = match &hcm.route_specifier {
        Some(RouteSpecifier::RouteConfig(rc)) => RouteSource::Static(Arc::new(
            translate_route_config(rc, &path.field("route_config"), resolve, true, acks)?,
        )),
        Some(RouteSpecifier::Rds(rds)) => {
            let p = path.field("rds");
            if rds.route_config_name.is_empty() {
                return Err(p.field("route_config_name").error("must not be empty"));
            }
            let source = config_source(
                rds.config_source
                    .as_ref()
                    .ok_or_else(|| p.field("config_source").error("is required"))?,
                &p.field("config_source"),
            )?;
            RouteSource::Rds {
                slot: resolve.route_slot(&rds.route_config_name),
                source,
                // Envoy routes with an empty table (404) until the first RDS response.
                empty: Arc::new(translate_route_config(
                    &Default::default(),
                    &p,
                    resolve,
                    false,
                    acks,
                )?),
            }
        }
        Some(RouteSpecifier::ScopedRoutes(_)) => {
            return Err(path
                .field("scoped_routes")
                .error("scoped routes are not supported"))
        }
        None => return Err(path.error("one of route_config, rds or scoped_routes is required")),
    };
    let HttpFilters {
        faults,
        rbac,
        jwt_authn,
        compressors,
        istio,
        istio_alpn,
        grpc_stats,
        suppress_envoy_headers,
    } = translate_http_filters(hcm, path, resolve, acks)?;
    let server_name = if hcm.server_name.is_empty() {
        "envoy"
    } else {
        &hcm.server_name
    };
    let server_name = http::HeaderValue::from_str(server_name)
        .map_err(|_| path.field("server_name").error("invalid header value"))?;
    use xds_proto::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::ServerHeaderTransformation as T;
    let server_header = match T::try_from(hcm.server_header_transformation) {
        Ok(T::Overwrite) => ServerHeader::Overwrite,
        Ok(T::AppendIfAbsent) => ServerHeader::AppendIfAbsent,
        Ok(T::PassThrough) => ServerHeader::PassThrough,
        Err(_) => {
            return Err(path
                .field("server_header_transformation")
                .error("unknown value"))
        }
    };
    let via = if hcm.via.is_empty() {
        None
    } else {
        Some(
            http::HeaderValue::from_str(&hcm.via)
                .map_err(|_| path.field("via").error("invalid header value"))?,
        )
    };
    let (internal_cidrs, internal_unix_sockets) = match &hcm.internal_address_config {
        Some(c) => (
            super::listener::cidrs(
                &c.cidr_ranges,
                &path.field("internal_address_config").field("cidr_ranges"),
            )?,
            c.unix_sockets,
        ),
        None => (Vec::new(), false),
    };
    let forwarding = Forwarding {
        use_remote_address: hcm.use_remote_address.as_ref().is_some_and(|b| b.value),
        xff_num_trusted_hops: hcm.xff_num_trusted_hops,
        skip_xff_append: hcm.skip_xff_append,
        internal_cidrs,
        internal_unix_sockets,
        via,
        generate_request_id: hcm.generate_request_id.as_ref().is_none_or(|b| b.value),
        preserve_external_request_id: hcm.preserve_external_request_id,
        always_set_request_id_in_response: hcm.always_set_request_id_in_response,
        client_cert: match hcm.forward_client_cert_details {
            0 => ForwardClientCert::Sanitize,
            1 => ForwardClientCert::ForwardOnly,
            2 => ForwardClientCert::AppendForward,
            3 => ForwardClientCert::SanitizeSet,
            4 => ForwardClientCert::AlwaysForwardOnly,
            _ => {
                return Err(path
                    .field("forward_client_cert_details")
                    .error("unknown value"))
            }
        },
        client_cert_details: match &hcm.set_current_client_cert_details {
            None => ClientCertDetails::default(),
            // The fields table refuses the details Outrigger does not produce (`check` above).
            Some(d) => ClientCertDetails {
                subject: d.subject.as_ref().is_some_and(|b| b.value),
                uri: d.uri,
                dns: d.dns,
            },
        },
    };
    Ok(HttpConnectionManager {
        stat_prefix: hcm.stat_prefix.clone(),
        codec,
        routes,
        server_name,
        server_header,
        forwarding,
        limits: limits(hcm, path)?,
        http2: http2_settings(
            hcm.http2_protocol_options.as_ref(),
            &path.field("http2_protocol_options"),
        )?,
        paths: path_handling(hcm, path)?,
        upgrades: upgrades(hcm, path)?,
        access_logs: translate_access_logs(
            &hcm.access_log,
            &path.field("access_log"),
            resolve,
            acks,
        )?,
        faults,
        compressors,
        rbac,
        jwt_authn,
        istio,
        istio_alpn,
        grpc_stats,
        tracing: super::tracing::translate_hcm_tracing(
            hcm.tracing.as_ref(),
            &path.field("tracing"),
            resolve,
            uuid_config.as_ref(),
            acks,
        )?,
        suppress_envoy_headers,
    })
}

/// The filters of the chain that act, by kind, each in chain order.
#[derive(Default)]
struct HttpFilters {
    faults: Vec<FaultFilter>,
    rbac: Vec<RbacFilter>,
    jwt_authn: Vec<Arc<super::jwt_authn::JwtAuthn>>,
    compressors: Vec<GzipCompressor>,
    istio: Option<Arc<IstioHttp>>,
    istio_alpn: Option<super::istio_alpn::IstioAlpn>,
    grpc_stats: Option<Arc<GrpcStatsFilter>>,
    /// The router's `suppress_envoy_headers`.
    suppress_envoy_headers: bool,
}

/// Checks the chain and returns the filters that act; the router ends it. Filters Outrigger
/// does not implement are refused unless optional.
fn translate_http_filters(
    hcm: &ProtoHcm,
    path: &FieldPath,
    resolve: &Resolver<'_>,
    acks: &mut Vec<Acknowledged>,
) -> Result<HttpFilters> {
    let mut filters = HttpFilters::default();
    let mut istio = IstioFilters::default();
    let filters_path = path.field("http_filters");
    let count = hcm.http_filters.len();
    for (i, filter) in hcm.http_filters.iter().enumerate() {
        let p = filters_path.index(i);
        if filter.name.is_empty() {
            return Err(p.field("name").error("must not be empty"));
        }
        let any = match &filter.config_type {
            Some(ConfigType::TypedConfig(any)) => any,
            Some(ConfigType::ConfigDiscovery(_)) => {
                return Err(p
                    .field("config_discovery")
                    .error("filter config discovery (ECDS) is not supported"))
            }
            None => return Err(p.error(format!("filter {} has no typed_config", filter.name))),
        };
        let type_name = xds_proto::type_name_of_url(&any.type_url);
        let tc = p.field("typed_config");
        let is_last = i + 1 == count;
        if istio.translate(any, &tc, resolve, acks)? {
            non_terminal_last(is_last, &p, &filter.name, type_name)?;
            continue;
        }
        match extension::decode(any, &tc)? {
            Some(Extension::Router(router)) => {
                check(&router, &tc, acks)?;
                filters.suppress_envoy_headers = router.suppress_envoy_headers;
                if !is_last {
                    return Err(p.error(format!(
                        "terminal filter named {} of type {type_name} must be the last filter in a http filter chain",
                        filter.name
                    )));
                }
            }
            Some(Extension::Fault(fault)) => {
                filters.faults.push(FaultFilter {
                    name: Arc::from(filter.name.as_str()),
                    settings: Arc::new(translate_fault(&fault, &tc, resolve, acks)?),
                    disabled_by_default: filter.disabled,
                });
                non_terminal_last(is_last, &p, &filter.name, type_name)?;
            }
            Some(Extension::HttpRbac(rbac)) => {
                // Outrigger runs RBAC filters before fault filters; a chain that puts a fault
                // first (its abort would answer before RBAC decides) is refused.
                if !filters.faults.is_empty() {
                    return Err(p.error(format!(
                        "RBAC filter {} must come before the chain's fault filters in Outrigger",
                        filter.name
                    )));
                }
                filters.rbac.push(RbacFilter {
                    name: filter.name.clone(),
                    rbac: Arc::new(super::rbac::translate_http_rbac(&rbac, &tc, acks)?),
                    disabled_by_default: filter.disabled,
                });
                non_terminal_last(is_last, &p, &filter.name, type_name)?;
            }
            Some(Extension::JwtAuthn(jwt)) => {
                // Outrigger runs JWT filters before RBAC and fault filters (Istio's order); a
                // chain that puts one of those first is refused.
                if !filters.faults.is_empty() || !filters.rbac.is_empty() {
                    return Err(p.error(format!(
                        "JWT filter {} must come before the chain's RBAC and fault filters in Outrigger",
                        filter.name
                    )));
                }
                filters
                    .jwt_authn
                    .push(Arc::new(super::jwt_authn::translate_jwt_authn(
                        &jwt,
                        &filter.name,
                        filter.disabled,
                        &tc,
                        resolve,
                        acks,
                    )?));
                non_terminal_last(is_last, &p, &filter.name, type_name)?;
            }
            // Without a policy on any route (those are refused), CORS passes every request
            // through unchanged, as Envoy's filter does.
            Some(Extension::Cors(cors)) => {
                check(&cors, &tc, acks)?;
                non_terminal_last(is_last, &p, &filter.name, type_name)?;
            }
            Some(Extension::GrpcStats(grpc_stats)) => {
                let translated = super::grpc_stats::translate_grpc_stats(&grpc_stats, &tc, acks)?;
                // Envoy would count every call once per filter; no control plane sends two.
                if filters.grpc_stats.is_some() {
                    return Err(p.error(
                        "a second envoy.filters.http.grpc_stats filter in one chain is not supported",
                    ));
                }
                filters.grpc_stats = Some(Arc::new(translated));
                non_terminal_last(is_last, &p, &filter.name, type_name)?;
            }
            Some(Extension::Compressor(compressor)) => {
                if let CompressorFilter::Gzip(gzip) =
                    translate_compressor(&compressor, &tc, resolve, acks)?
                {
                    filters.compressors.push(gzip);
                }
                non_terminal_last(is_last, &p, &filter.name, type_name)?;
            }
            _ if filter.is_optional => {
                acks.push(Acknowledged {
                    path: p.to_string(),
                    reason: "optional filter of a type Outrigger does not implement: skipped, as Envoy skips unknown optional filters",
                });
                non_terminal_last(is_last, &p, &filter.name, type_name)?;
            }
            _ => return Err(extension::unregistered(&tc, &filter.name, any)),
        }
    }
    filters.istio_alpn = istio.alpn.take();
    filters.istio = istio.finish(resolve);
    Ok(filters)
}

/// Istio's filters of one chain, gathered while the chain is read.
#[derive(Default)]
struct IstioFilters {
    exchange: Option<super::istio::MetadataExchange>,
    stats: Option<super::istio::StatsPlugin>,
    alpn: Option<super::istio_alpn::IstioAlpn>,
}

impl IstioFilters {
    /// Takes the filter if it is one of Istio's: `TypedStruct`-wrapped metadata exchange or
    /// stats, or the ALPN filter. False for any other filter.
    fn translate(
        &mut self,
        any: &xds_proto::pb::google::protobuf::Any,
        tc: &FieldPath,
        resolve: &Resolver<'_>,
        acks: &mut Vec<Acknowledged>,
    ) -> Result<bool> {
        use super::istio;
        let type_name = xds_proto::type_name_of_url(&any.type_url);
        if type_name == istio::ALPN {
            // Two istio.alpn filters in one chain (never seen from Istio): the first's offers
            // apply.
            let alpn = super::istio_alpn::translate(&any.value, tc, acks)?;
            self.alpn.get_or_insert(alpn);
            return Ok(true);
        }
        let wrapper = <xds_proto::TypedStruct as xds_proto::XdsMessage>::FULL_NAME;
        if type_name != wrapper && type_name != xds_proto::XDS_TYPED_STRUCT {
            return Ok(false);
        }
        let typed = <xds_proto::TypedStruct as xds_proto::XdsMessage>::decode_bytes(&any.value)
            .map_err(|e| tc.error(format!("invalid TypedStruct: {e}")))?;
        let inner = xds_proto::type_name_of_url(&typed.type_url);
        let empty = Default::default();
        let value = typed.value.as_ref().unwrap_or(&empty);
        let vp = tc.field("value");
        match inner {
            istio::PEER_METADATA => {
                self.exchange = Some(istio::peer_metadata(value, &vp, acks)?);
            }
            istio::STATS => {
                self.stats = Some(istio::stats_plugin(value, &vp, resolve.inbound, acks)?);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn finish(self, resolve: &Resolver<'_>) -> Option<Arc<IstioHttp>> {
        if self.exchange.is_none() && self.stats.is_none() {
            return None;
        }
        Some(Arc::new(IstioHttp {
            local: resolve.local.clone(),
            exchange: self.exchange.unwrap_or_default(),
            stats: self.stats,
            inbound: resolve.inbound,
        }))
    }
}

fn non_terminal_last(is_last: bool, path: &FieldPath, name: &str, type_name: &str) -> Result<()> {
    if is_last {
        Err(path.error(format!(
            "non-terminal filter named {name} of type {type_name} is the last filter in a http filter chain"
        )))
    } else {
        Ok(())
    }
}
