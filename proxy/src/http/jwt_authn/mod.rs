//! The JWT authentication filter as a request meets it, after the route is chosen and before
//! RBAC: the requirement for the request (route override, else the first matching rule), the
//! tokens verified against it, their payloads written to the stream's dynamic metadata and
//! headers, and Envoy's 401/403 when the requirement is not met.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/jwt_authn_filter

pub mod extract;
pub mod fetch;
pub mod jwks;
pub mod jwt;
mod requirement;
pub mod status;

use super::local_reply::local_reply;
use super::router::Outcome;
use crate::config::jwt_authn::{JwtAuthn, JwtPerRoute, KeySource};
use crate::config::matcher::RequestHead;
use crate::config::per_filter::{PerFilter, PerFilterConfigs};
use crate::metadata::DynamicMetadata;
use crate::stats::{Counter, Store};
use http::{HeaderValue, StatusCode};
use status::Status;
use std::sync::Arc;

/// The dynamic metadata namespace the filter writes payloads under.
pub const METADATA_NAMESPACE: &str = "envoy.filters.http.jwt_authn";

/// `http.<prefix>.jwt_authn.<filter stat_prefix><name>`.
#[derive(Debug)]
pub struct JwtStats {
    pub allowed: Arc<Counter>,
    pub denied: Arc<Counter>,
    pub cors_preflight_bypassed: Arc<Counter>,
    pub jwks_fetch_success: Arc<Counter>,
    pub jwks_fetch_failed: Arc<Counter>,
    // Envoy's JWT cache is off unless `jwt_cache_config` is set (refused): these stay 0.
    pub jwt_cache_hit: Arc<Counter>,
    pub jwt_cache_miss: Arc<Counter>,
}

impl JwtStats {
    fn new(store: &Store, hcm_prefix: &str, filter_prefix: &str) -> Self {
        let c = |name: &str| {
            store.counter(&format!(
                "http.{hcm_prefix}.jwt_authn.{filter_prefix}{name}"
            ))
        };
        Self {
            allowed: c("allowed"),
            denied: c("denied"),
            cors_preflight_bypassed: c("cors_preflight_bypassed"),
            jwks_fetch_success: c("jwks_fetch_success"),
            jwks_fetch_failed: c("jwks_fetch_failed"),
            jwt_cache_hit: c("jwt_cache_hit"),
            jwt_cache_miss: c("jwt_cache_miss"),
        }
    }
}

/// One filter of a connection manager as it runs: its counters and its providers' remote key
/// caches (by provider index; None for local keys).
#[derive(Debug)]
pub struct JwtFilterRuntime {
    pub config: Arc<JwtAuthn>,
    pub stats: Arc<JwtStats>,
    remote: Vec<Option<Arc<fetch::RemoteCache>>>,
}

impl JwtFilterRuntime {
    pub fn new(config: &Arc<JwtAuthn>, store: &Store, hcm_prefix: &str) -> Self {
        let stats = Arc::new(JwtStats::new(store, hcm_prefix, &config.stat_prefix));
        let remote = config
            .providers
            .iter()
            .map(|p| match &p.keys {
                KeySource::Remote(r) => Some(fetch::RemoteCache::new(r, &stats)),
                KeySource::Local(_) => None,
            })
            .collect();
        Self {
            config: config.clone(),
            stats,
            remote,
        }
    }
}

/// What the filters need of the request besides its headers.
pub struct RequestFacts<'a> {
    pub method: &'a http::Method,
    pub host: &'a str,
    pub scheme: &'a str,
    pub path_and_query: &'a str,
}

/// Runs the chain's JWT filters in order. `levels` are the matched route's per-filter configs
/// (route, virtual host, route table). Payloads go to `metadata`.
pub async fn apply(
    filters: &[JwtFilterRuntime],
    levels: Option<[&PerFilterConfigs; 3]>,
    headers: &mut http::HeaderMap,
    facts: &RequestFacts<'_>,
    server: &HeaderValue,
    metadata: &mut DynamicMetadata,
) -> Result<(), Box<Outcome>> {
    for filter in filters {
        let config = &*filter.config;
        let stats = &filter.stats;
        let overridden = levels
            .iter()
            .flatten()
            .find_map(|level| match level.get(&config.name) {
                Some(PerFilter::Disabled) => Some(Override::FilterOff),
                Some(PerFilter::Jwt(JwtPerRoute::Disabled)) => Some(Override::Disabled),
                Some(PerFilter::Jwt(JwtPerRoute::RequirementName(n))) => {
                    Some(Override::Requirement(n))
                }
                // Another filter's type under this name is not this filter's override.
                _ => None,
            });
        let route_requirement = match overridden {
            // The filter is not in the route's chain at all: nothing is counted.
            Some(Override::FilterOff) => continue,
            None if config.disabled_by_default => continue,
            // The filter's own per-route `disabled` lets the request through as allowed
            // (checked against Envoy 1.40's counters).
            Some(Override::Disabled) => {
                stats.allowed.inc();
                continue;
            }
            Some(Override::Requirement(name)) => Some(name),
            None => None,
        };
        // https://www.w3.org/TR/cors/#cross-origin-request-with-preflight: a preflight carries
        // no credentials.
        if config.bypass_cors_preflight && is_cors_preflight(facts.method, headers) {
            stats.cors_preflight_bypassed.inc();
            stats.allowed.inc();
            continue;
        }
        let (path, query) = facts
            .path_and_query
            .split_once('?')
            .unwrap_or((facts.path_and_query, ""));
        let requirement = match route_requirement {
            Some(name) => match config.requirement_map.iter().find(|(k, _)| k == name) {
                Some((_, r)) => Some(r.clone()),
                None => {
                    let names: Vec<&str> = config
                        .requirement_map
                        .iter()
                        .map(|(k, _)| k.as_str())
                        .collect();
                    let message = format!(
                        "Wrong requirement_name: {name}. It should be one of [{}]",
                        names.join(",")
                    );
                    stats.denied.inc();
                    return Err(Box::new(reply(
                        StatusCode::FORBIDDEN,
                        message.clone(),
                        None,
                        format!("jwt_authn_access_denied{{{}}}", message.replace(' ', "_")),
                        server,
                    )));
                }
            },
            None => {
                let head = RequestHead {
                    headers,
                    method: Some(facts.method.as_str()),
                    authority: Some(facts.host),
                    path: Some(facts.path_and_query),
                    scheme: Some(facts.scheme),
                };
                config
                    .rules
                    .iter()
                    .find(|r| {
                        r.path.matches(path) && r.headers.iter().all(|h| h.matches_request(&head))
                    })
                    .and_then(|r| r.requirement.clone())
            }
        };
        let Some(requirement) = requirement else {
            stats.allowed.inc();
            continue;
        };
        let mut verification = requirement::Verification::new(filter, headers, query);
        let status = verification.verify(&requirement).await;
        let extracted = verification.into_extracted();
        if !extracted.is_empty() {
            metadata.merge(METADATA_NAMESPACE, extracted);
        }
        if status == Status::Ok {
            stats.allowed.inc();
            continue;
        }
        stats.denied.inc();
        tracing::debug!(target: "jwt", "Jwt authentication completed with: {}", status.message());
        let code = if status == Status::JwtAudienceNotAllowed {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::UNAUTHORIZED
        };
        if config.strip_failure_response {
            return Err(Box::new(reply(
                code,
                String::new(),
                None,
                status.details(),
                server,
            )));
        }
        let mut challenge = format!(
            "Bearer realm=\"{}://{}{}\"",
            facts.scheme, facts.host, facts.path_and_query
        );
        if status != Status::JwtMissed {
            challenge.push_str(", error=\"invalid_token\"");
        }
        return Err(Box::new(reply(
            code,
            status.message().to_string(),
            HeaderValue::from_str(&challenge).ok(),
            status.details(),
            server,
        )));
    }
    Ok(())
}

/// What a route says about one JWT filter.
enum Override<'a> {
    /// `FilterConfig.disabled`.
    FilterOff,
    /// `PerRouteConfig.disabled`.
    Disabled,
    Requirement(&'a String),
}

fn is_cors_preflight(method: &http::Method, headers: &http::HeaderMap) -> bool {
    let present = |h: http::HeaderName| headers.get(h).is_some_and(|v| !v.is_empty());
    method == http::Method::OPTIONS
        && present(http::header::ORIGIN)
        && present(http::header::ACCESS_CONTROL_REQUEST_METHOD)
}

fn reply(
    code: StatusCode,
    body: String,
    challenge: Option<HeaderValue>,
    details: String,
    server: &HeaderValue,
) -> Outcome {
    let mut response = local_reply(code, body, server);
    if let Some(v) = challenge {
        response
            .headers_mut()
            .insert(http::header::WWW_AUTHENTICATE, v);
    }
    Outcome {
        response,
        flag: None,
        upstream: None,
        info: crate::format::StreamInfo {
            response_code_details: Some(details.into()),
            ..Default::default()
        },
    }
}

#[cfg(test)]
mod tests;
