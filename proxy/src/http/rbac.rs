//! The HTTP RBAC filters of a connection manager: each decides the request once its route is
//! known (a route's `RBACPerRoute` replaces the filter's policies), in chain order; a denial is
//! answered with Envoy's 403 and the request goes no further.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/rbac_filter

use super::local_reply::local_reply;
use super::router::Outcome;
use crate::config::hcm::RbacFilter;
use crate::config::per_filter::{PerFilter, PerFilterConfigs};
use crate::rbac::{check, denial_details, Facts, RbacStats};
use http::{HeaderValue, StatusCode};

/// Runs the chain's RBAC filters. `levels` are the matched route's per-filter configs (route,
/// virtual host, route table), None without a route. `metadata`, when given, receives the
/// filters' results (their dynamic metadata).
pub fn apply(
    filters: &[RbacFilter],
    stats: &[RbacStats],
    levels: Option<[&PerFilterConfigs; 3]>,
    facts: &Facts<'_>,
    server: &HeaderValue,
    mut metadata: Option<&mut crate::rbac::RbacMetadata>,
) -> Result<(), Box<Outcome>> {
    for (filter, stats) in filters.iter().zip(stats) {
        let overridden = levels
            .iter()
            .flatten()
            .find_map(|level| level.get(&filter.name));
        let rbac = match overridden {
            Some(PerFilter::Disabled) => continue,
            Some(PerFilter::Rbac(route_rbac)) => &**route_rbac,
            // Another filter's type under this name is not this filter's override.
            None | Some(PerFilter::Fault(_) | PerFilter::Jwt(_)) if filter.disabled_by_default => {
                continue
            }
            None | Some(PerFilter::Fault(_) | PerFilter::Jwt(_)) => &*filter.rbac,
        };
        if let Err(policy) = check(rbac, stats, facts, metadata.as_deref_mut()) {
            tracing::debug!(target: "rbac", "enforced denied, matched policy {}", policy.unwrap_or("none"));
            return Err(Box::new(Outcome {
                response: local_reply(StatusCode::FORBIDDEN, "RBAC: access denied", server),
                flag: None,
                upstream: None,
                info: crate::format::StreamInfo {
                    response_code_details: Some(denial_details(policy).into()),
                    ..Default::default()
                },
            }));
        }
    }
    Ok(())
}
