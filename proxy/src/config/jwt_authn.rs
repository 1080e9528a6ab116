//! The JWT authentication filter (`envoy.filters.http.jwt_authn`, Istio's RequestAuthentication):
//! providers with their keys and token locations, the requirements and the rules that pick
//! them, compiled once. Envoy's run-time behaviour is in `http::jwt_authn`.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/jwt_authn_filter
//! API: https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/jwt_authn/v3/config.proto

use super::error::{FieldPath, Result};
use super::fields::{check, Acknowledged};
use super::matcher::{header_matcher, HeaderMatcher};
use super::resolver::Resolver;
use super::route::PathMatch;
use super::slots::Slot;
use super::values::duration;
use crate::http::jwt_authn::jwks::{self, Jwks};
use crate::upstream::ClusterRuntime;
use http::HeaderName;
use std::sync::Arc;
use std::time::Duration;
use xds_proto::pb::envoy::config::route::v3::RouteMatch;
use xds_proto::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    jwt_provider::JwksSourceSpecifier, jwt_requirement::RequiresType, per_route_config,
    requirement_rule::RequirementType, JwtAuthentication, JwtProvider, JwtRequirement,
    PerRouteConfig, RemoteJwks as ProtoRemoteJwks,
};

/// One JWT authentication filter of a chain.
#[derive(Debug)]
pub struct JwtAuthn {
    /// The filter's name, which routes' `typed_per_filter_config` refer to.
    pub name: String,
    /// Sorted by name.
    pub providers: Vec<Provider>,
    pub rules: Vec<Rule>,
    /// `requirement_map`, sorted by name.
    pub requirement_map: Vec<(String, Arc<Requirement>)>,
    pub bypass_cors_preflight: bool,
    /// Failure replies carry no body and no `www-authenticate`.
    pub strip_failure_response: bool,
    /// Counters are `http.<prefix>.jwt_authn.<stat_prefix>…`.
    pub stat_prefix: String,
    /// `disabled`: the filter acts only on routes that configure it.
    pub disabled_by_default: bool,
}

/// A rule: the first whose match fits the request decides its requirement (None: no JWT
/// is required).
#[derive(Debug)]
pub struct Rule {
    pub path: PathMatch,
    pub headers: Vec<HeaderMatcher>,
    pub requirement: Option<Arc<Requirement>>,
}

/// `JwtRequirement`.
#[derive(Debug)]
pub enum Requirement {
    /// A valid token of this provider (index into `providers`); `audiences` replace the
    /// provider's when given.
    Provider {
        provider: usize,
        audiences: Option<Vec<String>>,
    },
    Any(Vec<Requirement>),
    All(Vec<Requirement>),
    /// Tokens of any provider are verified; the request passes whatever the outcome.
    AllowMissingOrFailed,
    /// Tokens of any provider are verified; the request passes without one, not with a bad one.
    AllowMissing,
}

/// Where a provider looks for tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Header { name: HeaderName, prefix: String },
    Param(String),
    Cookie(String),
}

#[derive(Debug)]
pub struct Provider {
    pub name: String,
    /// Empty: any issuer.
    pub issuer: String,
    pub audiences: Vec<String>,
    pub keys: KeySource,
    pub locations: Vec<Location>,
    pub forward: bool,
    pub forward_payload_header: Option<HeaderName>,
    pub pad_forward_payload_header: bool,
    /// The key of the payload in the filter's dynamic metadata.
    pub payload_in_metadata: Option<String>,
    /// `normalize_payload_in_metadata.space_delimited_claims`.
    pub space_delimited_claims: Vec<String>,
    /// `claim_to_headers`: header, claim path (dot-separated in the API).
    pub claim_to_headers: Vec<(HeaderName, String)>,
    pub clock_skew_seconds: u64,
    /// `require_expiration` (Some(None): any lifetime) or `max_lifetime`: a token without
    /// `exp`, or living longer, is refused.
    pub max_lifetime: Option<Option<Duration>>,
}

#[derive(Debug)]
pub enum KeySource {
    /// None only for an empty data source (no keys: tokens are refused at run time).
    Local(Option<Arc<Jwks>>),
    Remote(Arc<RemoteJwks>),
}

/// `remote_jwks`: fetched through the cluster, cached for `cache_duration`.
#[derive(Debug)]
pub struct RemoteJwks {
    pub cluster: Arc<Slot<ClusterRuntime>>,
    pub cluster_name: String,
    pub uri: http::Uri,
    pub timeout: Duration,
    pub cache_duration: Duration,
    /// `async_fetch`: fetched when the listener starts and refreshed on expiry; a failed
    /// fetch is retried after this long.
    pub async_fetch: Option<Duration>,
}

/// `PerRouteConfig`.
#[derive(Debug, Clone)]
pub enum JwtPerRoute {
    Disabled,
    /// A name of the filter's `requirement_map` (checked per request, as Envoy does).
    RequirementName(String),
}

/// Envoy's defaults: `Authorization: Bearer <token>` and the `access_token` query parameter.
fn default_locations() -> Vec<Location> {
    vec![
        Location::Header {
            name: http::header::AUTHORIZATION,
            prefix: "Bearer ".into(),
        },
        Location::Param("access_token".into()),
    ]
}

pub fn translate_jwt_authn(
    config: &JwtAuthentication,
    name: &str,
    disabled_by_default: bool,
    path: &FieldPath,
    resolve: &Resolver<'_>,
    acks: &mut Vec<Acknowledged>,
) -> Result<JwtAuthn> {
    check(config, path, acks)?;
    let mut names: Vec<&String> = config.providers.keys().collect();
    names.sort();
    let providers = names
        .iter()
        .map(|n| {
            provider(
                n,
                &config.providers[*n],
                &path.field("providers").key(n),
                resolve,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let index = |name: &str| providers.iter().position(|p| p.name == name);
    let mut map_names: Vec<&String> = config.requirement_map.keys().collect();
    map_names.sort();
    let requirement_map = map_names
        .iter()
        .map(|n| {
            let p = path.field("requirement_map").key(n);
            Ok((
                (*n).clone(),
                Arc::new(requirement(&config.requirement_map[*n], &p, &index)?),
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let rules = config
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let p = path.field("rules").index(i);
            let m = r
                .r#match
                .as_ref()
                .ok_or_else(|| p.field("match").error("is required"))?;
            let (path_match, headers) = route_match(m, &p.field("match"))?;
            let requirement = match &r.requirement_type {
                None => None,
                Some(RequirementType::Requires(req)) => {
                    Some(Arc::new(requirement(req, &p.field("requires"), &index)?))
                }
                Some(RequirementType::RequirementName(n)) => Some(
                    requirement_map
                        .iter()
                        .find(|(k, _)| k == n)
                        .map(|(_, r)| r.clone())
                        .ok_or_else(|| {
                            p.field("requirement_name")
                                .error(format!("Wrong requirement_name: {n}"))
                        })?,
                ),
            };
            Ok(Rule {
                path: path_match,
                headers,
                requirement,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(JwtAuthn {
        name: name.to_string(),
        providers,
        rules,
        requirement_map,
        bypass_cors_preflight: config.bypass_cors_preflight,
        strip_failure_response: config.strip_failure_response,
        stat_prefix: config.stat_prefix.clone(),
        disabled_by_default,
    })
}

pub fn translate_per_route(
    config: &PerRouteConfig,
    path: &FieldPath,
    acks: &mut Vec<Acknowledged>,
) -> Result<JwtPerRoute> {
    check(config, path, acks)?;
    match &config.requirement_specifier {
        Some(per_route_config::RequirementSpecifier::Disabled(true)) => Ok(JwtPerRoute::Disabled),
        Some(per_route_config::RequirementSpecifier::Disabled(false)) => {
            Err(path.field("disabled").error("value must equal true"))
        }
        Some(per_route_config::RequirementSpecifier::RequirementName(n)) if !n.is_empty() => {
            Ok(JwtPerRoute::RequirementName(n.clone()))
        }
        Some(per_route_config::RequirementSpecifier::RequirementName(_)) => Err(path
            .field("requirement_name")
            .error("value length must be at least 1 characters")),
        None => Err(path.error("requirement_specifier is required")),
    }
}

fn header_name(name: &str, path: &FieldPath) -> Result<HeaderName> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| path.error(format!("invalid header name {name:?}")))
}

fn provider(
    name: &str,
    p: &JwtProvider,
    path: &FieldPath,
    resolve: &Resolver<'_>,
) -> Result<Provider> {
    let keys = match &p.jwks_source_specifier {
        Some(JwksSourceSpecifier::LocalJwks(source)) => {
            let lp = path.field("local_jwks");
            let text = super::values::data_source(Some(source), &lp)?;
            if text.is_empty() {
                KeySource::Local(None)
            } else {
                // Envoy 1.40 refuses a provider whose local keys do not parse (checked).
                let parsed = jwks::parse(&text).map_err(|status| {
                    lp.error(format!(
                        "Provider '{name}' in jwt_authn config has invalid local jwks: {}",
                        status.message()
                    ))
                })?;
                KeySource::Local(Some(Arc::new(parsed)))
            }
        }
        Some(JwksSourceSpecifier::RemoteJwks(r)) => {
            KeySource::Remote(Arc::new(remote(r, &path.field("remote_jwks"), resolve)?))
        }
        None => return Err(path.error("one of remote_jwks or local_jwks is required")),
    };
    let mut locations = Vec::new();
    for (i, h) in p.from_headers.iter().enumerate() {
        let hp = path.field("from_headers").index(i);
        if h.name.is_empty() {
            return Err(hp
                .field("name")
                .error("value length must be at least 1 characters"));
        }
        locations.push(Location::Header {
            name: header_name(&h.name, &hp.field("name"))?,
            prefix: h.value_prefix.clone(),
        });
    }
    locations.extend(p.from_params.iter().cloned().map(Location::Param));
    locations.extend(p.from_cookies.iter().cloned().map(Location::Cookie));
    if locations.is_empty() {
        locations = default_locations();
    }
    let forward_payload_header = (!p.forward_payload_header.is_empty())
        .then(|| {
            header_name(
                &p.forward_payload_header,
                &path.field("forward_payload_header"),
            )
        })
        .transpose()?;
    let claim_to_headers = p
        .claim_to_headers
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let cp = path.field("claim_to_headers").index(i);
            if !c.claim_path.is_empty() {
                return Err(cp
                    .field("claim_path")
                    .error("claim paths are not supported; use claim_name"));
            }
            if c.claim_name.is_empty() {
                return Err(cp
                    .field("claim_name")
                    .error("value length must be at least 1 characters"));
            }
            Ok((
                header_name(&c.header_name, &cp.field("header_name"))?,
                c.claim_name.clone(),
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let max_lifetime = match (&p.max_lifetime, p.require_expiration) {
        (Some(d), _) => Some(Some(duration(d, &path.field("max_lifetime"))?)),
        (None, true) => Some(None),
        (None, false) => None,
    };
    Ok(Provider {
        name: name.to_string(),
        issuer: p.issuer.clone(),
        audiences: p.audiences.clone(),
        keys,
        locations,
        forward: p.forward,
        forward_payload_header,
        pad_forward_payload_header: p.pad_forward_payload_header,
        payload_in_metadata: (!p.payload_in_metadata.is_empty())
            .then(|| p.payload_in_metadata.clone()),
        space_delimited_claims: p
            .normalize_payload_in_metadata
            .as_ref()
            .map(|n| n.space_delimited_claims.clone())
            .unwrap_or_default(),
        claim_to_headers,
        // Envoy's library default when 0.
        clock_skew_seconds: if p.clock_skew_seconds == 0 {
            60
        } else {
            u64::from(p.clock_skew_seconds)
        },
        max_lifetime,
    })
}

fn remote(r: &ProtoRemoteJwks, path: &FieldPath, resolve: &Resolver<'_>) -> Result<RemoteJwks> {
    use xds_proto::pb::envoy::config::core::v3::http_uri::HttpUpstreamType;
    let up = path.field("http_uri");
    let http_uri = r.http_uri.as_ref().ok_or_else(|| up.error("is required"))?;
    let uri: http::Uri = http_uri.uri.parse().map_err(|_| {
        up.field("uri")
            .error(format!("invalid URI {:?}", http_uri.uri))
    })?;
    if uri.authority().is_none() {
        return Err(up.field("uri").error("must be an absolute URI"));
    }
    let Some(HttpUpstreamType::Cluster(cluster)) = &http_uri.http_upstream_type else {
        return Err(up
            .field("cluster")
            .error("value length must be at least 1 characters"));
    };
    if cluster.is_empty() {
        return Err(up
            .field("cluster")
            .error("value length must be at least 1 characters"));
    }
    let timeout = http_uri
        .timeout
        .as_ref()
        .ok_or_else(|| up.field("timeout").error("value is required"))?;
    let async_fetch = r
        .async_fetch
        .as_ref()
        .map(|a| {
            a.failed_refetch_duration
                .as_ref()
                .map(|d| {
                    duration(
                        d,
                        &path.field("async_fetch").field("failed_refetch_duration"),
                    )
                })
                .transpose()
                .map(|d| d.unwrap_or(Duration::from_secs(1)))
        })
        .transpose()?;
    Ok(RemoteJwks {
        cluster: resolve.cluster_slot(cluster),
        cluster_name: cluster.clone(),
        uri,
        timeout: duration(timeout, &up.field("timeout"))?,
        cache_duration: match &r.cache_duration {
            Some(d) => duration(d, &path.field("cache_duration"))?,
            // Envoy's default: 10 minutes.
            None => Duration::from_secs(600),
        },
        async_fetch,
    })
}

fn requirement(
    r: &JwtRequirement,
    path: &FieldPath,
    index: &dyn Fn(&str) -> Option<usize>,
) -> Result<Requirement> {
    let provider = |name: &str, p: &FieldPath| {
        index(name)
            .ok_or_else(|| p.error(format!("Required provider ['{name}'] is not configured.")))
    };
    let list = |items: &[JwtRequirement], p: &FieldPath| -> Result<Vec<Requirement>> {
        if items.len() < 2 {
            return Err(p.error("value must contain at least 2 item(s)"));
        }
        items
            .iter()
            .enumerate()
            .map(|(i, r)| requirement(r, &p.index(i), index))
            .collect()
    };
    Ok(match &r.requires_type {
        None => return Err(path.error("a requirement type is required")),
        Some(RequiresType::ProviderName(n)) => Requirement::Provider {
            provider: provider(n, &path.field("provider_name"))?,
            audiences: None,
        },
        Some(RequiresType::ProviderAndAudiences(pa)) => Requirement::Provider {
            provider: provider(
                &pa.provider_name,
                &path.field("provider_and_audiences").field("provider_name"),
            )?,
            audiences: Some(pa.audiences.clone()),
        },
        Some(RequiresType::RequiresAny(l)) => Requirement::Any(list(
            &l.requirements,
            &path.field("requires_any").field("requirements"),
        )?),
        Some(RequiresType::RequiresAll(l)) => Requirement::All(list(
            &l.requirements,
            &path.field("requires_all").field("requirements"),
        )?),
        Some(RequiresType::AllowMissingOrFailed(_)) => Requirement::AllowMissingOrFailed,
        Some(RequiresType::AllowMissing(_)) => Requirement::AllowMissing,
        Some(RequiresType::ExtractOnlyWithoutValidation(_)) => {
            return Err(path
                .field("extract_only_without_validation")
                .error("extracting without validation is not supported by Outrigger"))
        }
    })
}

/// A rule's route match: path and headers (the other conditions are refused).
fn route_match(m: &RouteMatch, path: &FieldPath) -> Result<(PathMatch, Vec<HeaderMatcher>)> {
    for (set, field) in [
        (!m.query_parameters.is_empty(), "query_parameters"),
        (m.grpc.is_some(), "grpc"),
        (m.runtime_fraction.is_some(), "runtime_fraction"),
        (m.tls_context.is_some(), "tls_context"),
        (!m.dynamic_metadata.is_empty(), "dynamic_metadata"),
    ] {
        if set {
            return Err(path
                .field(field)
                .error("not supported in a JWT requirement rule by Outrigger"));
        }
    }
    let path_match = super::route::path_match(m, path)?;
    let headers = m
        .headers
        .iter()
        .enumerate()
        .map(|(i, h)| header_matcher(h, &path.field("headers").index(i)))
        .collect::<Result<Vec<_>>>()?;
    Ok((path_match, headers))
}
