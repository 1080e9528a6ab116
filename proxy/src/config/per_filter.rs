//! `typed_per_filter_config`: HTTP filter settings a route table, virtual host or route
//! overrides, keyed by the filter's name in the connection manager's chain. The most specific
//! level that names a filter wins, replacing the filter's own settings.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#envoy-v3-api-field-config-route-v3-route-typed-per-filter-config

use super::error::{FieldPath, Result};
use super::extension;
use super::fault::{translate_fault, FaultSettings};
use super::fields::{check, Acknowledged};
use super::resolver::Resolver;
use std::collections::HashMap;
use std::sync::Arc;
use xds_proto::pb::envoy::config::route::v3::FilterConfig;
use xds_proto::pb::google::protobuf::Any;
use xds_proto::{Extension, XdsMessage};

/// What one level says about one filter.
#[derive(Debug, Clone)]
pub enum PerFilter {
    Fault(Arc<FaultSettings>),
    /// `RBACPerRoute`: these policies replace the RBAC filter's own.
    Rbac(Arc<super::rbac::Rbac>),
    /// The JWT filter's `PerRouteConfig`.
    Jwt(super::jwt_authn::JwtPerRoute),
    /// `FilterConfig.disabled`: the filter does nothing for these requests.
    Disabled,
}

/// One level's overrides, sorted by filter name. Usually empty or one entry, so a request
/// scans it only when the connection manager has a filter that can be overridden.
#[derive(Debug, Clone, Default)]
pub struct PerFilterConfigs(Vec<(String, PerFilter)>);

impl PerFilterConfigs {
    pub fn get(&self, filter_name: &str) -> Option<&PerFilter> {
        self.0
            .iter()
            .find(|(name, _)| name == filter_name)
            .map(|(_, c)| c)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

pub fn translate_per_filter(
    map: &HashMap<String, Any>,
    path: &FieldPath,
    resolve: &Resolver<'_>,
    acks: &mut Vec<Acknowledged>,
) -> Result<PerFilterConfigs> {
    let mut names: Vec<&String> = map.keys().collect();
    names.sort();
    let mut configs = Vec::with_capacity(names.len());
    for name in names {
        let p = path.field("typed_per_filter_config").key(name);
        if let Some(config) = translate_one(name, &map[name], &p, resolve, acks)? {
            configs.push((name.clone(), config));
        }
    }
    Ok(PerFilterConfigs(configs))
}

fn translate_one(
    name: &str,
    any: &Any,
    path: &FieldPath,
    resolve: &Resolver<'_>,
    acks: &mut Vec<Acknowledged>,
) -> Result<Option<PerFilter>> {
    let type_name = xds_proto::type_name_of_url(&any.type_url);
    // `FilterConfig` wraps a config to mark it optional or to disable the filter.
    if type_name == FilterConfig::FULL_NAME {
        let wrapper: FilterConfig =
            xds_proto::unpack(any).map_err(|e| path.error(e.to_string()))?;
        check(&wrapper, path, acks)?;
        if wrapper.disabled {
            return Ok(Some(PerFilter::Disabled));
        }
        let Some(inner) = &wrapper.config else {
            return Err(path.field("config").error("is required unless disabled"));
        };
        return match translate_one(name, inner, &path.field("config"), resolve, acks) {
            Err(_) if wrapper.is_optional && !known(inner) => {
                acks.push(Acknowledged {
                    path: path.to_string(),
                    reason: "optional per-route config of a filter type Outrigger does not implement: skipped, as Envoy skips it",
                });
                Ok(None)
            }
            other => other,
        };
    }
    match extension::decode(any, path)? {
        Some(Extension::Fault(fault)) => Ok(Some(PerFilter::Fault(Arc::new(translate_fault(
            &fault, path, resolve, acks,
        )?)))),
        Some(Extension::HttpRbacPerRoute(rbac)) => Ok(Some(PerFilter::Rbac(Arc::new(
            super::rbac::translate_per_route(&rbac, path, acks)?,
        )))),
        Some(Extension::JwtAuthnPerRoute(jwt)) => Ok(Some(PerFilter::Jwt(
            super::jwt_authn::translate_per_route(&jwt, path, acks)?,
        ))),
        _ => Err(path.error(format!(
            "no per-route config of type '{type_name}' is supported for filter '{name}'"
        ))),
    }
}

/// Whether Outrigger has a per-route implementation for this type.
fn known(any: &Any) -> bool {
    matches!(
        xds_proto::decode_extension(any),
        Ok(Extension::Fault(_) | Extension::HttpRbacPerRoute(_) | Extension::JwtAuthnPerRoute(_))
    )
}
