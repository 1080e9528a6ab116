//! Where dynamic resources come from: the bootstrap's `dynamic_resources` (the ADS stream and
//! the LDS/CDS sources) and each `ConfigSource` inside resources (RDS in an HTTP connection
//! manager, EDS in a cluster).
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/config_source.proto
//! and https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/bootstrap/v3/bootstrap.proto#config-bootstrap-v3-bootstrap-dynamicresources
//!
//! Outrigger speaks ADS (state of the world and delta). A config source that names another
//! transport (a per-type `api_config_source`, files, `self`) is refused with its path by the
//! field policy rather than silently never updating.
#![allow(deprecated)] // `ApiVersion::V2` is deprecated; it is named only to refuse it.

use super::error::{FieldPath, Result};
use super::values::duration;
use std::time::Duration;
use xds_proto::pb::envoy::config::bootstrap::v3::bootstrap::DynamicResources as ProtoDynamic;
use xds_proto::pb::envoy::config::core::v3::{
    api_config_source::ApiType, config_source::ConfigSourceSpecifier, grpc_service,
    ApiConfigSource, ApiVersion, ConfigSource as ProtoConfigSource,
};

/// A resource's config source, reduced to what changes behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigSource {
    /// How long the first fetch may take before the resource's dependents stop waiting for
    /// it. None waits forever (`0s`; Istio's choice for LDS and CDS). Envoy's default is 15 s.
    pub initial_fetch_timeout: Option<Duration>,
}

const DEFAULT_INITIAL_FETCH_TIMEOUT: Duration = Duration::from_secs(15);

pub fn config_source(c: &ProtoConfigSource, path: &FieldPath) -> Result<ConfigSource> {
    match &c.config_source_specifier {
        Some(ConfigSourceSpecifier::Ads(_)) => {}
        Some(_) => return Err(path.error(
            "only ADS config sources are supported (set `ads: {}` and the bootstrap's ads_config)",
        )),
        None => return Err(path.error("a config source specifier is required")),
    }
    if ApiVersion::try_from(c.resource_api_version) == Ok(ApiVersion::V2) {
        return Err(path
            .field("resource_api_version")
            .error("the v2 xDS API is not supported"));
    }
    let initial_fetch_timeout = match &c.initial_fetch_timeout {
        None => Some(DEFAULT_INITIAL_FETCH_TIMEOUT),
        Some(d) => {
            let d = duration(d, &path.field("initial_fetch_timeout"))?;
            (!d.is_zero()).then_some(d)
        }
    };
    Ok(ConfigSource {
        initial_fetch_timeout,
    })
}

/// The aggregated stream to the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdsConfig {
    /// `DELTA_GRPC` (Istio's default) rather than state of the world (`GRPC`).
    pub delta: bool,
    /// The static cluster the gRPC stream runs over (`envoy_grpc.cluster_name`).
    pub cluster: String,
    pub set_node_on_first_message_only: bool,
    /// Headers sent with the stream (`initial_metadata`).
    pub initial_metadata: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DynamicResources {
    pub ads: Option<AdsConfig>,
    pub lds: Option<ConfigSource>,
    pub cds: Option<ConfigSource>,
}

pub fn dynamic_resources(
    d: &ProtoDynamic,
    path: &FieldPath,
    static_clusters: &std::collections::HashSet<String>,
) -> Result<DynamicResources> {
    let ads = d
        .ads_config
        .as_ref()
        .map(|a| ads_config(a, &path.field("ads_config"), static_clusters))
        .transpose()?;
    let lds = d
        .lds_config
        .as_ref()
        .map(|c| config_source(c, &path.field("lds_config")))
        .transpose()?;
    let cds = d
        .cds_config
        .as_ref()
        .map(|c| config_source(c, &path.field("cds_config")))
        .transpose()?;
    if (lds.is_some() || cds.is_some()) && ads.is_none() {
        return Err(path
            .field("ads_config")
            .error("ADS config sources need the bootstrap's ads_config"));
    }
    Ok(DynamicResources { ads, lds, cds })
}

fn ads_config(
    a: &ApiConfigSource,
    path: &FieldPath,
    static_clusters: &std::collections::HashSet<String>,
) -> Result<AdsConfig> {
    let delta = match ApiType::try_from(a.api_type) {
        Ok(ApiType::Grpc | ApiType::AggregatedGrpc) => false,
        Ok(ApiType::DeltaGrpc | ApiType::AggregatedDeltaGrpc) => true,
        _ => {
            return Err(path
                .field("api_type")
                .error("ADS needs api_type GRPC or DELTA_GRPC"))
        }
    };
    if ApiVersion::try_from(a.transport_api_version) == Ok(ApiVersion::V2) {
        return Err(path
            .field("transport_api_version")
            .error("the v2 xDS API is not supported"));
    }
    if !a.cluster_names.is_empty() {
        return Err(path
            .field("cluster_names")
            .error("cluster_names is only for REST config sources; use grpc_services"));
    }
    let [service] = a.grpc_services.as_slice() else {
        return Err(path
            .field("grpc_services")
            .error("exactly one gRPC service is required"));
    };
    let service_path = path.field("grpc_services").index(0);
    let cluster = match &service.target_specifier {
        Some(grpc_service::TargetSpecifier::EnvoyGrpc(e)) => e.cluster_name.clone(),
        Some(grpc_service::TargetSpecifier::GoogleGrpc(_)) => {
            return Err(service_path
                .field("google_grpc")
                .error("google_grpc targets are not supported; use envoy_grpc"))
        }
        None => return Err(service_path.error("a gRPC target is required")),
    };
    if !static_clusters.contains(&cluster) {
        return Err(service_path
            .field("envoy_grpc")
            .field("cluster_name")
            .error(format!(
                "unknown gRPC client cluster '{cluster}' (it must be a static cluster)"
            )));
    }
    let initial_metadata = service
        .initial_metadata
        .iter()
        .map(|h| (h.key.to_ascii_lowercase(), h.value.clone()))
        .collect();
    Ok(AdsConfig {
        delta,
        cluster,
        set_node_on_first_message_only: a.set_node_on_first_message_only,
        initial_metadata,
    })
}
