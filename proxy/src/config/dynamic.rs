//! Where dynamic resources come from: the bootstrap's `dynamic_resources` (the ADS stream and
//! the LDS/CDS sources) and each `ConfigSource` inside resources (RDS in an HTTP connection
//! manager, EDS in a cluster).
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/config_source.proto
//! and https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/bootstrap/v3/bootstrap.proto#config-bootstrap-v3-bootstrap-dynamicresources
//!
//! Outrigger speaks ADS (state of the world and delta), per-type gRPC streams
//! (`api_config_source` with `GRPC` or `DELTA_GRPC`, for every type), and reads LDS and CDS
//! from files (`path_config_source`, Envoy's filesystem subscriptions). A config source that
//! names another transport (REST, `self`) is refused with its path rather than silently never
//! updating.
#![allow(deprecated)] // `ApiVersion::V2` is deprecated; it is named only to refuse it.

use super::error::{FieldPath, Result};
use super::values::duration;
use std::time::Duration;
use xds_proto::pb::envoy::config::bootstrap::v3::bootstrap::DynamicResources as ProtoDynamic;
use xds_proto::pb::envoy::config::core::v3::{
    api_config_source::ApiType, config_source::ConfigSourceSpecifier, ApiConfigSource, ApiVersion,
    ConfigSource as ProtoConfigSource,
};

/// A resource's config source, reduced to what changes behaviour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSource {
    /// A file holding a `DiscoveryResponse`, watched for changes; None for ADS.
    pub path: Option<std::path::PathBuf>,
    /// A gRPC stream of its own (`api_config_source`); None for ADS.
    pub grpc: Option<AdsConfig>,
    /// How long the first fetch may take before the resource's dependents stop waiting for
    /// it. None waits forever (`0s`; Istio's choice for LDS and CDS). Envoy's default is 15 s.
    pub initial_fetch_timeout: Option<Duration>,
}

const DEFAULT_INITIAL_FETCH_TIMEOUT: Duration = Duration::from_secs(15);

/// A config source for RDS or EDS: ADS, or a gRPC stream of its own (`api_config_source`);
/// files are refused here.
pub fn config_source(c: &ProtoConfigSource, path: &FieldPath) -> Result<ConfigSource> {
    let source = any_config_source(c, path)?;
    if source.path.is_some() {
        return Err(path.error(
            "file config sources are supported for LDS and CDS only; use `ads: {}` or `api_config_source` here",
        ));
    }
    Ok(source)
}

/// An SDS config source: ADS, or a gRPC stream of its own (Istio's `sds-grpc`), with how long
/// what depends on a secret waits for its first fetch (Istio sends `0s`: forever).
pub fn sds_source(c: &ProtoConfigSource, path: &FieldPath) -> Result<SecretSource> {
    let source = any_config_source(c, path)?;
    if source.path.is_some() {
        return Err(path.error("file config sources are not supported for SDS"));
    }
    Ok(SecretSource {
        grpc: source.grpc,
        initial_fetch_timeout: source.initial_fetch_timeout,
    })
}

/// Where a secret is fetched from (`grpc` None: over ADS), and its initial fetch timeout (None:
/// wait forever).
#[derive(Debug, Clone, PartialEq)]
pub struct SecretSource {
    pub grpc: Option<AdsConfig>,
    pub initial_fetch_timeout: Option<Duration>,
}

/// A config source for LDS or CDS: ADS or a file.
/// Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/overview/xds_api#filesystem-subscriptions
pub fn any_config_source(c: &ProtoConfigSource, path: &FieldPath) -> Result<ConfigSource> {
    let file = match &c.config_source_specifier {
        Some(ConfigSourceSpecifier::Ads(_)) => None,
        Some(ConfigSourceSpecifier::PathConfigSource(p)) => {
            if p.path.is_empty() {
                return Err(path
                    .field("path_config_source")
                    .field("path")
                    .error("must not be empty"));
            }
            // `watched_directory` names where an atomic move lands; the file itself is
            // watched (polled), which sees those moves as well.
            Some(std::path::PathBuf::from(&p.path))
        }
        Some(ConfigSourceSpecifier::Path(p)) if !p.is_empty() => Some(std::path::PathBuf::from(p)),
        Some(ConfigSourceSpecifier::Path(_)) => {
            return Err(path.field("path").error("must not be empty"))
        }
        Some(ConfigSourceSpecifier::ApiConfigSource(_)) => None,
        Some(_) => {
            return Err(path.error(
                "only ADS and file config sources are supported (set `ads: {}` and the bootstrap's ads_config)",
            ))
        }
        None => return Err(path.error("a config source specifier is required")),
    };
    if let Some(f) = &file {
        // Envoy: the path must exist at load time.
        if !f.exists() {
            return Err(path.error(format!(
                "paths must refer to an existing path in the system: '{}' does not exist",
                f.display()
            )));
        }
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
    let grpc = match &c.config_source_specifier {
        Some(ConfigSourceSpecifier::ApiConfigSource(a)) => {
            Some(ads_config(a, &path.field("api_config_source"), None)?)
        }
        _ => None,
    };
    Ok(ConfigSource {
        path: file,
        grpc,
        initial_fetch_timeout,
    })
}

/// A gRPC stream to the control plane: the aggregated one (`ads_config`), or a per-type one
/// (`api_config_source`). Equal values are the same source.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AdsConfig {
    /// `DELTA_GRPC` (Istio's default) rather than state of the world (`GRPC`).
    pub delta: bool,
    /// Where the gRPC stream goes: a static cluster, or a `google_grpc` target.
    pub target: super::grpc_target::GrpcTarget,
    pub set_node_on_first_message_only: bool,
    /// Headers sent with the stream (`initial_metadata`).
    pub initial_metadata: Vec<(String, String)>,
    /// Not an Envoy field: set only by the sidecar agent, which talks to istiod directly. The
    /// projected service-account token in this file is sent as `authorization: Bearer` and
    /// re-read for every stream, because kubelet rotates it.
    pub bearer_token_file: Option<std::path::PathBuf>,
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
        .map(|a| ads_config(a, &path.field("ads_config"), Some(static_clusters)))
        .transpose()?;
    let lds = d
        .lds_config
        .as_ref()
        .map(|c| any_config_source(c, &path.field("lds_config")))
        .transpose()?;
    let cds = d
        .cds_config
        .as_ref()
        .map(|c| any_config_source(c, &path.field("cds_config")))
        .transpose()?;
    let over_ads = |s: &Option<ConfigSource>| {
        s.as_ref()
            .is_some_and(|s| s.path.is_none() && s.grpc.is_none())
    };
    if (over_ads(&lds) || over_ads(&cds)) && ads.is_none() {
        return Err(path
            .field("ads_config")
            .error("ADS config sources need the bootstrap's ads_config"));
    }
    Ok(DynamicResources { ads, lds, cds })
}

fn ads_config(
    a: &ApiConfigSource,
    path: &FieldPath,
    static_clusters: Option<&std::collections::HashSet<String>>,
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
    let target = super::grpc_target::grpc_target(service, &service_path)?;
    if let (super::grpc_target::GrpcTarget::Cluster(cluster), Some(known)) =
        (&target, static_clusters)
    {
        if !known.contains(cluster) {
            return Err(service_path
                .field("envoy_grpc")
                .field("cluster_name")
                .error(format!(
                    "unknown gRPC client cluster '{cluster}' (it must be a static cluster)"
                )));
        }
    }
    let initial_metadata = service
        .initial_metadata
        .iter()
        .map(|h| (h.key.to_ascii_lowercase(), h.value.clone()))
        .collect();
    Ok(AdsConfig {
        delta,
        target,
        set_node_on_first_message_only: a.set_node_on_first_message_only,
        initial_metadata,
        bearer_token_file: None,
    })
}
