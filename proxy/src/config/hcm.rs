//! The HTTP connection manager and its HTTP filter chain.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto

use super::error::{FieldPath, Result};
use super::fields::{check, Acknowledged};
use super::route::{translate_route_config, RouteConfig};
use std::sync::Arc;
use xds_proto::pb::envoy::extensions::filters::http::{
    compressor::v3::Compressor, router::v3::Router,
};
use xds_proto::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::{CodecType, RouteSpecifier},
    http_filter::ConfigType,
    HttpConnectionManager as ProtoHcm,
};

#[derive(Debug)]
pub struct HttpConnectionManager {
    pub stat_prefix: String,
    pub codec: Codec,
    pub route_config: Arc<RouteConfig>,
    /// The `server` header on responses Outrigger generates or forwards.
    pub server_name: http::HeaderValue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Auto,
    Http1,
    Http2,
}

const ROUTER: &str = "envoy.extensions.filters.http.router.v3.Router";
const COMPRESSOR: &str = "envoy.extensions.filters.http.compressor.v3.Compressor";

pub fn translate_hcm(
    hcm: &ProtoHcm,
    path: &FieldPath,
    cluster_index: &dyn Fn(&str) -> Option<usize>,
    acks: &mut Vec<Acknowledged>,
) -> Result<HttpConnectionManager> {
    check(hcm, path, acks)?;
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
    let route_config = match &hcm.route_specifier {
        Some(RouteSpecifier::RouteConfig(rc)) => {
            translate_route_config(rc, &path.field("route_config"), cluster_index)?
        }
        Some(RouteSpecifier::Rds(_)) => {
            // Acknowledged by the field check: the listener serves 404 until RDS arrives (issue 5).
            translate_route_config(&Default::default(), &path.field("rds"), cluster_index)?
        }
        Some(RouteSpecifier::ScopedRoutes(_)) => {
            return Err(path
                .field("scoped_routes")
                .error("scoped routes are not supported"))
        }
        None => return Err(path.error("one of route_config, rds or scoped_routes is required")),
    };
    // The router is the only filter that acts so far; the others are checked and acknowledged.
    translate_http_filters(hcm, path, acks)?;
    let server_name = if hcm.server_name.is_empty() {
        "envoy"
    } else {
        &hcm.server_name
    };
    let server_name = http::HeaderValue::from_str(server_name)
        .map_err(|_| path.field("server_name").error("invalid header value"))?;
    Ok(HttpConnectionManager {
        stat_prefix: hcm.stat_prefix.clone(),
        codec,
        route_config: Arc::new(route_config),
        server_name,
    })
}

fn translate_http_filters(
    hcm: &ProtoHcm,
    path: &FieldPath,
    acks: &mut Vec<Acknowledged>,
) -> Result<()> {
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
        match type_name {
            ROUTER => {
                let router: Router = xds_proto::unpack(any).map_err(|e| tc.error(e.to_string()))?;
                check(&router, &tc, acks)?;
                if !is_last {
                    return Err(p.error(format!(
                        "terminal filter named {} of type {ROUTER} must be the last filter in a http filter chain",
                        filter.name
                    )));
                }
            }
            COMPRESSOR => {
                let compressor: Compressor =
                    xds_proto::unpack(any).map_err(|e| tc.error(e.to_string()))?;
                check(&compressor, &tc, acks)?;
                non_terminal_last(is_last, &p, &filter.name, type_name)?;
            }
            _ if filter.is_optional => {
                acks.push(Acknowledged {
                    path: p.to_string(),
                    reason: "optional filter of a type Outrigger does not implement: skipped, as Envoy skips unknown optional filters",
                });
                non_terminal_last(is_last, &p, &filter.name, type_name)?;
            }
            _ => {
                return Err(tc.error(format!(
                    "didn't find a registered implementation for '{}' with type URL: '{}'",
                    filter.name, type_name
                )))
            }
        }
    }
    Ok(())
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
