//! Route tables: virtual hosts by domain with Envoy's precedence, routes in order, actions with
//! clusters resolved to indexes at config time.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route.proto and
//! https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto

use super::error::{FieldPath, Result};
use super::fields::Acknowledged;
use super::header_mutation::{header_mutation, HeaderMutation};
use super::matcher::{full_regex, header_matcher, HeaderMatcher, RequestHead};
use super::per_filter::{translate_per_filter, PerFilterConfigs};
use super::redirect::translate_redirect;
pub use super::redirect::{Redirect, RedirectPath};
use super::resolver::Resolver;
use super::retry_policy::translate_retry_policy;
use super::route_action::{hedge_on_per_try_timeout, translate_forward, VhostDefaults};
pub use super::route_action::{ClusterTarget, Forward, HostRewrite, NamedCluster, WeightedTarget};
use super::route_index::RouteIndex;
use super::values::{data_source, data_source_file};
use bytes::Bytes;
use regex::Regex;
use std::collections::HashMap;
use xds_proto::pb::envoy::config::route::v3 as proto;

#[derive(Debug)]
pub struct RouteConfig {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
    domains: DomainIndex,
    pub request_headers: HeaderMutation,
    pub response_headers: HeaderMutation,
    pub per_filter: PerFilterConfigs,
    /// `ignore_port_in_host_matching`: virtual hosts are chosen by the host without its port.
    pub ignore_port_in_host_matching: bool,
}

#[derive(Debug)]
pub struct VirtualHost {
    pub name: String,
    pub routes: Vec<Route>,
    pub request_headers: HeaderMutation,
    pub response_headers: HeaderMutation,
    /// `include_request_attempt_count`: send `x-envoy-attempt-count` upstream.
    pub include_request_attempt_count: bool,
    /// `include_attempt_count_in_response`: tell the client how many attempts were made.
    pub include_attempt_count_in_response: bool,
    pub per_filter: PerFilterConfigs,
    index: RouteIndex,
}

#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub path: PathMatch,
    pub headers: Vec<HeaderMatcher>,
    pub query: Vec<QueryMatcher>,
    /// `grpc: {}`: only requests with a gRPC content type match.
    pub grpc: bool,
    /// `runtime_fraction`, in parts per million; None matches always.
    pub fraction_per_million: Option<u64>,
    pub action: Action,
    pub request_headers: HeaderMutation,
    pub response_headers: HeaderMutation,
    pub per_filter: PerFilterConfigs,
    /// `decorator` and `tracing`.
    pub tracing: Option<std::sync::Arc<super::tracing::RouteTracing>>,
}

#[derive(Debug)]
pub enum PathMatch {
    Prefix {
        prefix: String,
        case_sensitive: bool,
    },
    Exact {
        path: String,
        case_sensitive: bool,
    },
    Regex(Regex),
    /// Matches `prefix` exactly or followed by `/`, `?` or `#`.
    SeparatedPrefix {
        prefix: String,
        case_sensitive: bool,
    },
}

#[derive(Debug)]
pub enum Action {
    // Boxed: a forwarding route is several times larger than the other actions.
    Forward(Box<Forward>),
    Redirect(Redirect),
    DirectResponse {
        status: http::StatusCode,
        body: Bytes,
    },
}

impl RouteConfig {
    /// Envoy's virtual host precedence: exact domain, then the longest `*suffix`, then the
    /// longest `prefix*`, then `*`. The host is compared case-insensitively, port included.
    pub fn virtual_host(&self, host: &str) -> Option<&VirtualHost> {
        let host = if self.ignore_port_in_host_matching {
            without_port(host)
        } else {
            host
        };
        let lower;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = host.to_ascii_lowercase();
            lower.as_str()
        } else {
            host
        };
        let d = &self.domains;
        if let Some(&i) = d.exact.get(host) {
            return Some(&self.virtual_hosts[i]);
        }
        for (suffix, i) in &d.suffixes {
            if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
                return Some(&self.virtual_hosts[*i]);
            }
        }
        for (prefix, i) in &d.prefixes {
            if host.len() > prefix.len() && host.starts_with(prefix.as_str()) {
                return Some(&self.virtual_hosts[*i]);
            }
        }
        d.default.map(|i| &self.virtual_hosts[i])
    }
}

/// `host` without a trailing `:port` (an IPv6 literal keeps its brackets).
fn without_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(colon)
            if host[colon + 1..].bytes().all(|b| b.is_ascii_digit())
                && (!host.starts_with('[') || host[..colon].ends_with(']')) =>
        {
            &host[..colon]
        }
        _ => host,
    }
}

impl RouteConfig {
    /// The virtual host and the first route of it that matches, or None (Envoy's NR).
    /// `path` excludes the query string; `query` is what follows the `?` (or empty).
    pub fn find_route(
        &self,
        host: &str,
        path: &str,
        query: &str,
        head: &RequestHead<'_>,
    ) -> Option<(&VirtualHost, &Route)> {
        let vh = self.virtual_host(host)?;
        let route = vh.index.find(&vh.routes, path, query, head)?;
        Some((vh, route))
    }
}

#[derive(Debug, Default)]
struct DomainIndex {
    exact: HashMap<String, usize>,
    /// `*.example.com` stored as `.example.com`, longest first.
    suffixes: Vec<(String, usize)>,
    /// `example.*` stored as `example.`, longest first.
    prefixes: Vec<(String, usize)>,
    default: Option<usize>,
}

/// Translates a route configuration. `resolve` resolves a cluster name; static route
/// tables refuse unknown clusters (Envoy's `validate_clusters` default for static config).
/// `validate_by_default`: what an unset `validate_clusters` means. Envoy checks the clusters of
/// inline route tables but not of RDS ones (clusters may arrive later by CDS).
pub fn translate_route_config(
    rc: &proto::RouteConfiguration,
    path: &FieldPath,
    resolve: &Resolver<'_>,
    validate_by_default: bool,
    acks: &mut Vec<Acknowledged>,
) -> Result<RouteConfig> {
    // Envoy's default limit on inline direct_response bodies.
    let max_body = rc
        .max_direct_response_body_size_bytes
        .as_ref()
        .map(|v| v.value as usize)
        .unwrap_or(4096);
    let validate = rc
        .validate_clusters
        .as_ref()
        .map(|b| b.value)
        .unwrap_or(validate_by_default);
    let mut domains = DomainIndex::default();
    let mut virtual_hosts = Vec::with_capacity(rc.virtual_hosts.len());
    for (i, vh) in rc.virtual_hosts.iter().enumerate() {
        let vh_path = path.field("virtual_hosts").index(i);
        if vh.domains.is_empty() {
            return Err(vh_path
                .field("domains")
                .error("at least one domain is required"));
        }
        for (j, domain) in vh.domains.iter().enumerate() {
            let d_path = vh_path.field("domains").index(j);
            index_domain(
                &mut domains,
                &domain.to_ascii_lowercase(),
                i,
                &vh.name,
                &d_path,
            )?;
        }
        let defaults = VhostDefaults {
            retry: match &vh.retry_policy {
                Some(p) => Some(std::sync::Arc::new(translate_retry_policy(
                    p,
                    &vh_path.field("retry_policy"),
                )?)),
                None => None,
            },
            hedge: vh.hedge_policy.as_ref().map(hedge_on_per_try_timeout),
            buffer_limit: buffer_limit(
                vh.request_body_buffer_limit.as_ref().map(|v| v.value),
                #[allow(deprecated)]
                vh.per_request_buffer_limit_bytes.as_ref().map(|v| v.value),
            ),
        };
        let mut routes = Vec::with_capacity(vh.routes.len());
        for (j, route) in vh.routes.iter().enumerate() {
            routes.push(translate_route(
                route,
                &vh_path.field("routes").index(j),
                resolve,
                validate,
                max_body,
                &defaults,
                acks,
            )?);
        }
        virtual_hosts.push(VirtualHost {
            name: vh.name.clone(),
            index: RouteIndex::build(&routes),
            routes,
            include_request_attempt_count: vh.include_request_attempt_count,
            include_attempt_count_in_response: vh.include_attempt_count_in_response,
            per_filter: translate_per_filter(&vh.typed_per_filter_config, &vh_path, resolve, acks)?,
            request_headers: header_mutation(
                &vh.request_headers_to_add,
                &vh.request_headers_to_remove,
                &vh_path,
                "request",
            )?,
            response_headers: header_mutation(
                &vh.response_headers_to_add,
                &vh.response_headers_to_remove,
                &vh_path,
                "response",
            )?,
        });
    }
    domains
        .suffixes
        .sort_by_key(|d| std::cmp::Reverse(d.0.len()));
    domains
        .prefixes
        .sort_by_key(|d| std::cmp::Reverse(d.0.len()));
    Ok(RouteConfig {
        name: rc.name.clone(),
        virtual_hosts,
        domains,
        request_headers: header_mutation(
            &rc.request_headers_to_add,
            &rc.request_headers_to_remove,
            path,
            "request",
        )?,
        response_headers: header_mutation(
            &rc.response_headers_to_add,
            &rc.response_headers_to_remove,
            path,
            "response",
        )?,
        per_filter: translate_per_filter(&rc.typed_per_filter_config, path, resolve, acks)?,
        ignore_port_in_host_matching: rc.ignore_port_in_host_matching,
    })
}

/// `request_body_buffer_limit`, else the deprecated `per_request_buffer_limit_bytes`
/// (values past the address space are as good as unlimited).
fn buffer_limit(limit: Option<u64>, deprecated: Option<u32>) -> Option<usize> {
    limit
        .map(|l| usize::try_from(l).unwrap_or(usize::MAX))
        .or(deprecated.map(|l| l as usize))
}

fn index_domain(
    d: &mut DomainIndex,
    domain: &str,
    vh: usize,
    vh_name: &str,
    path: &FieldPath,
) -> Result<()> {
    let duplicate = || {
        path.error(format!(
            "only unique values for domains are permitted; duplicate entry of domain {domain} in virtual host {vh_name}"
        ))
    };
    if domain == "*" {
        if d.default.replace(vh).is_some() {
            return Err(duplicate());
        }
    } else if let Some(suffix) = domain.strip_prefix('*') {
        if d.suffixes.iter().any(|(s, _)| s == suffix) {
            return Err(duplicate());
        }
        d.suffixes.push((suffix.to_string(), vh));
    } else if let Some(prefix) = domain.strip_suffix('*') {
        if d.prefixes.iter().any(|(p, _)| p == prefix) {
            return Err(duplicate());
        }
        d.prefixes.push((prefix.to_string(), vh));
    } else if d.exact.insert(domain.to_string(), vh).is_some() {
        // An inner `*` (`foo.*.com`) is no wildcard: Envoy matches it as an exact domain.
        return Err(duplicate());
    }
    Ok(())
}

fn translate_route(
    route: &proto::Route,
    path: &FieldPath,
    resolve: &Resolver<'_>,
    validate: bool,
    max_body: usize,
    vhost: &VhostDefaults,
    acks: &mut Vec<Acknowledged>,
) -> Result<Route> {
    let m_path = path.field("match");
    let m = route
        .r#match
        .as_ref()
        .ok_or_else(|| m_path.error("a route match is required"))?;
    let path_match = path_match(m, &m_path)?;
    let headers = m
        .headers
        .iter()
        .enumerate()
        .map(|(i, h)| header_matcher(h, &m_path.field("headers").index(i)))
        .collect::<Result<Vec<_>>>()?;
    use proto::route::Action as A;
    let action = match &route.action {
        Some(A::Route(ra)) => Action::Forward(Box::new(translate_forward(
            ra,
            &path.field("route"),
            resolve,
            validate,
            vhost,
            buffer_limit(
                route.request_body_buffer_limit.as_ref().map(|v| v.value),
                #[allow(deprecated)]
                route
                    .per_request_buffer_limit_bytes
                    .as_ref()
                    .map(|v| v.value),
            ),
        )?)),
        Some(A::Redirect(r)) => Action::Redirect(translate_redirect(r, &path.field("redirect"))?),
        Some(A::DirectResponse(d)) => {
            let d_path = path.field("direct_response");
            let status = u16::try_from(d.status)
                .ok()
                .filter(|s| (200..600).contains(s))
                .and_then(|s| http::StatusCode::from_u16(s).ok())
                .ok_or_else(|| {
                    d_path
                        .field("status")
                        .error(format!("status {} must be in [200, 600)", d.status))
                })?;
            let body_path = d_path.field("body");
            let body = Bytes::from(data_source(d.body.as_ref(), &body_path)?);
            if body.len() > max_body {
                // Envoy's limit holds for a body read from a file too.
                return Err(match data_source_file(d.body.as_ref()) {
                    Some(f) => body_path.field("filename").error(format!(
                        "file {f} size is {} bytes; maximum is {max_body}",
                        body.len()
                    )),
                    None => body_path.error(format!(
                        "response body size is {} bytes; maximum is {max_body}",
                        body.len()
                    )),
                });
            }
            Action::DirectResponse { status, body }
        }
        Some(_) => return Err(path.error("this route action is not supported")),
        None => {
            return Err(
                path.error("a route action (route, redirect or direct_response) is required")
            )
        }
    };
    let query = m
        .query_parameters
        .iter()
        .enumerate()
        .map(|(i, q)| query_matcher(q, &m_path.field("query_parameters").index(i)))
        .collect::<Result<Vec<_>>>()?;
    let fraction_per_million = m
        .runtime_fraction
        .as_ref()
        .map(|f| runtime_fraction(f, &m_path.field("runtime_fraction"), resolve))
        .transpose()?;
    Ok(Route {
        tracing: super::tracing::translate_route_tracing(route, path)?,
        name: route.name.clone(),
        path: path_match,
        headers,
        query,
        grpc: m.grpc.is_some(),
        fraction_per_million,
        action,
        request_headers: header_mutation(
            &route.request_headers_to_add,
            &route.request_headers_to_remove,
            path,
            "request",
        )?,
        response_headers: header_mutation(
            &route.response_headers_to_add,
            &route.response_headers_to_remove,
            path,
            "response",
        )?,
        per_filter: translate_per_filter(&route.typed_per_filter_config, path, resolve, acks)?,
    })
}

/// A query parameter condition: present, or its raw value matching (Envoy 1.40 does not
/// percent-decode before matching).
#[derive(Debug)]
pub struct QueryMatcher {
    pub name: String,
    /// None: the parameter only has to be present.
    pub value: Option<super::matcher::StringMatcher>,
}

impl QueryMatcher {
    pub fn matches(&self, query: &str) -> bool {
        let found = query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == self.name).then_some(v)
        });
        match (&self.value, found) {
            (None, found) => found.is_some(),
            (Some(m), Some(v)) => m.matches(v),
            (Some(_), None) => false,
        }
    }
}

fn query_matcher(q: &proto::QueryParameterMatcher, path: &FieldPath) -> Result<QueryMatcher> {
    use proto::query_parameter_matcher::QueryParameterMatchSpecifier as Q;
    if q.name.is_empty() {
        return Err(path.field("name").error("must not be empty"));
    }
    let value = match &q.query_parameter_match_specifier {
        Some(Q::StringMatch(m)) => Some(super::matcher::string_matcher(
            m,
            &path.field("string_match"),
        )?),
        Some(Q::PresentMatch(true)) | None => None,
        Some(Q::PresentMatch(false)) => {
            return Err(path
                .field("present_match")
                .error("present_match: false is not supported"))
        }
    };
    Ok(QueryMatcher {
        name: q.name.clone(),
        value,
    })
}

/// A runtime fraction as parts per million, the runtime key's value overriding the default
/// numerator when a static runtime layer sets it.
pub(super) fn runtime_fraction(
    f: &xds_proto::pb::envoy::config::core::v3::RuntimeFractionalPercent,
    path: &FieldPath,
    resolve: &Resolver<'_>,
) -> Result<u64> {
    use xds_proto::pb::envoy::r#type::v3::fractional_percent::DenominatorType as D;
    let default = f
        .default_value
        .as_ref()
        .ok_or_else(|| path.field("default_value").error("is required"))?;
    let denominator: u64 = match D::try_from(default.denominator) {
        Ok(D::Hundred) => 100,
        Ok(D::TenThousand) => 10_000,
        Ok(D::Million) => 1_000_000,
        Err(_) => {
            return Err(path
                .field("default_value")
                .field("denominator")
                .error("unknown denominator"))
        }
    };
    let numerator = resolve
        .runtime_u64(&f.runtime_key)
        .unwrap_or(u64::from(default.numerator));
    Ok(numerator.min(denominator) * (1_000_000 / denominator))
}

impl Route {
    /// Everything but the path: headers, query parameters, gRPC, runtime fraction.
    pub fn matches_rest(&self, head: &RequestHead<'_>, query: &str) -> bool {
        self.headers.iter().all(|h| h.matches_request(head))
            && self.query.iter().all(|q| q.matches(query))
            && (!self.grpc || crate::http::is_grpc(head.headers))
            && self
                .fraction_per_million
                .is_none_or(|p| crate::random::below(1_000_000) < p)
    }
}

impl PathMatch {
    /// `path` is the request path without the query string.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Prefix {
                prefix,
                case_sensitive,
            } => starts_with(path, prefix, *case_sensitive),
            PathMatch::Exact {
                path: p,
                case_sensitive: true,
            } => path == p,
            PathMatch::Exact {
                path: p,
                case_sensitive: false,
            } => path.eq_ignore_ascii_case(p),
            PathMatch::Regex(r) => r.is_match(path),
            PathMatch::SeparatedPrefix {
                prefix,
                case_sensitive,
            } => {
                starts_with(path, prefix, *case_sensitive)
                    && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/'))
            }
        }
    }
}

fn starts_with(path: &str, prefix: &str, case_sensitive: bool) -> bool {
    let (p, x) = (path.as_bytes(), prefix.as_bytes());
    p.len() >= x.len()
        && if case_sensitive {
            &p[..x.len()] == x
        } else {
            p[..x.len()].eq_ignore_ascii_case(x)
        }
}

/// A route match's path condition (prefix, exact path, regex or separated prefix), compiled;
/// shared by routes and the JWT filter's rules.
pub(super) fn path_match(m: &proto::RouteMatch, m_path: &FieldPath) -> Result<PathMatch> {
    let case_sensitive = m.case_sensitive.as_ref().map(|b| b.value).unwrap_or(true);
    use proto::route_match::PathSpecifier as P;
    let fold = |s: &str| {
        if case_sensitive {
            s.to_string()
        } else {
            s.to_ascii_lowercase()
        }
    };
    Ok(match &m.path_specifier {
        Some(P::Prefix(p)) => PathMatch::Prefix {
            prefix: fold(p),
            case_sensitive,
        },
        Some(P::Path(p)) => PathMatch::Exact {
            path: fold(p),
            case_sensitive,
        },
        Some(P::SafeRegex(r)) => PathMatch::Regex(full_regex(r, &m_path.field("safe_regex"))?),
        Some(P::PathSeparatedPrefix(p)) => {
            if p.contains(['?', '#']) || p.ends_with('/') {
                return Err(m_path
                    .field("path_separated_prefix")
                    .error("must not contain ?, # or end with /"));
            }
            PathMatch::SeparatedPrefix {
                prefix: fold(p),
                case_sensitive,
            }
        }
        Some(_) => return Err(m_path.error("this path specifier is not supported")),
        None => return Err(m_path.error("a path specifier is required")),
    })
}
