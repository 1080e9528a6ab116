//! Route tables: virtual hosts by domain with Envoy's precedence, routes in order, actions with
//! clusters resolved to indexes at config time.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route.proto and
//! https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto

use super::error::{FieldPath, Result};
use super::header_mutation::{header_mutation, HeaderMutation};
use super::matcher::{full_regex, header_matcher, HeaderMatcher};
use super::values::{inline_data, optional_duration};
use bytes::Bytes;
use regex::Regex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use xds_proto::pb::envoy::config::route::v3 as proto;

#[derive(Debug)]
pub struct RouteConfig {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
    domains: DomainIndex,
    pub request_headers: HeaderMutation,
    pub response_headers: HeaderMutation,
}

#[derive(Debug)]
pub struct VirtualHost {
    pub name: String,
    pub routes: Vec<Route>,
    pub request_headers: HeaderMutation,
    pub response_headers: HeaderMutation,
}

#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub path: PathMatch,
    pub headers: Vec<HeaderMatcher>,
    pub action: Action,
    pub request_headers: HeaderMutation,
    pub response_headers: HeaderMutation,
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
    Forward(Forward),
    Redirect(Redirect),
    DirectResponse {
        status: http::StatusCode,
        body: Bytes,
    },
}

#[derive(Debug)]
pub struct Forward {
    /// Index into the configuration's cluster list; None when the cluster is unknown and
    /// `validate_clusters` is off (the request then gets 503, Envoy's NC).
    pub cluster: Option<usize>,
    pub cluster_name: Arc<str>,
    /// None disables the timeout (Envoy's `timeout: 0s`); the default is 15 s.
    pub timeout: Option<Duration>,
    pub prefix_rewrite: Option<String>,
    pub host_rewrite: HostRewrite,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRewrite {
    None,
    Literal(http::HeaderValue),
    /// The upstream host's name (DNS clusters) replaces the authority.
    Auto,
}

#[derive(Debug)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u32>,
    pub path: RedirectPath,
    pub status: http::StatusCode,
    pub strip_query: bool,
}

#[derive(Debug)]
pub enum RedirectPath {
    Keep,
    Replace(String),
    PrefixRewrite(String),
}

impl RouteConfig {
    /// Envoy's virtual host precedence: exact domain, then the longest `*suffix`, then the
    /// longest `prefix*`, then `*`. The host is compared case-insensitively, port included.
    pub fn virtual_host(&self, host: &str) -> Option<&VirtualHost> {
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

impl RouteConfig {
    /// The virtual host and the first route of it that matches, or None (Envoy's NR).
    /// `path` excludes the query string.
    pub fn find_route(
        &self,
        host: &str,
        path: &str,
        headers: &http::HeaderMap,
    ) -> Option<(&VirtualHost, &Route)> {
        let vh = self.virtual_host(host)?;
        let route = vh
            .routes
            .iter()
            .find(|r| r.path.matches(path) && r.headers.iter().all(|h| h.matches(headers)))?;
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

/// Translates a route configuration. `cluster_index` resolves a cluster name; static route
/// tables refuse unknown clusters (Envoy's `validate_clusters` default for static config).
pub fn translate_route_config(
    rc: &proto::RouteConfiguration,
    path: &FieldPath,
    cluster_index: &dyn Fn(&str) -> Option<usize>,
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
        .unwrap_or(true);
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
        let mut routes = Vec::with_capacity(vh.routes.len());
        for (j, route) in vh.routes.iter().enumerate() {
            routes.push(translate_route(
                route,
                &vh_path.field("routes").index(j),
                cluster_index,
                validate,
                max_body,
            )?);
        }
        virtual_hosts.push(VirtualHost {
            name: vh.name.clone(),
            routes,
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
    })
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
    cluster_index: &dyn Fn(&str) -> Option<usize>,
    validate: bool,
    max_body: usize,
) -> Result<Route> {
    let m_path = path.field("match");
    let m = route
        .r#match
        .as_ref()
        .ok_or_else(|| m_path.error("a route match is required"))?;
    let case_sensitive = m.case_sensitive.as_ref().map(|b| b.value).unwrap_or(true);
    use proto::route_match::PathSpecifier as P;
    let fold = |s: &str| {
        if case_sensitive {
            s.to_string()
        } else {
            s.to_ascii_lowercase()
        }
    };
    let path_match = match &m.path_specifier {
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
    };
    let headers = m
        .headers
        .iter()
        .enumerate()
        .map(|(i, h)| header_matcher(h, &m_path.field("headers").index(i)))
        .collect::<Result<Vec<_>>>()?;
    use proto::route::Action as A;
    let action = match &route.action {
        Some(A::Route(ra)) => Action::Forward(translate_forward(
            ra,
            &path.field("route"),
            cluster_index,
            validate,
        )?),
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
            let body = match &d.body {
                Some(b) => Bytes::from(inline_data(b, &d_path.field("body"))?),
                None => Bytes::new(),
            };
            if body.len() > max_body {
                return Err(d_path.field("body").error(format!(
                    "response body size is {} bytes; maximum is {max_body}",
                    body.len()
                )));
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
    Ok(Route {
        name: route.name.clone(),
        path: path_match,
        headers,
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
    })
}

fn translate_forward(
    ra: &proto::RouteAction,
    path: &FieldPath,
    cluster_index: &dyn Fn(&str) -> Option<usize>,
    validate: bool,
) -> Result<Forward> {
    use proto::route_action::{ClusterSpecifier as C, HostRewriteSpecifier as H};
    let name = match &ra.cluster_specifier {
        Some(C::Cluster(name)) if !name.is_empty() => name.clone(),
        Some(C::Cluster(_)) => return Err(path.field("cluster").error("must not be empty")),
        Some(_) => return Err(path.error("only `cluster` is supported as a cluster specifier")),
        None => return Err(path.error("a cluster specifier is required")),
    };
    let cluster = match cluster_index(&name) {
        Some(i) => Some(i),
        None if validate => {
            return Err(path
                .field("cluster")
                .error(format!("unknown cluster '{name}'")))
        }
        None => None,
    };
    let timeout = match optional_duration(ra.timeout.as_ref(), &path.field("timeout"))? {
        None => Some(Duration::from_secs(15)),
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
    };
    let host_rewrite = match &ra.host_rewrite_specifier {
        None => HostRewrite::None,
        Some(H::HostRewriteLiteral(h)) => {
            HostRewrite::Literal(http::HeaderValue::from_str(h).map_err(|_| {
                path.field("host_rewrite_literal")
                    .error("invalid header value")
            })?)
        }
        Some(H::AutoHostRewrite(b)) if b.value => HostRewrite::Auto,
        Some(H::AutoHostRewrite(_)) => HostRewrite::None,
        Some(_) => return Err(path.error("this host rewrite specifier is not supported")),
    };
    Ok(Forward {
        cluster,
        cluster_name: Arc::from(name.as_str()),
        timeout,
        prefix_rewrite: (!ra.prefix_rewrite.is_empty()).then(|| ra.prefix_rewrite.clone()),
        host_rewrite,
    })
}

fn translate_redirect(r: &proto::RedirectAction, path: &FieldPath) -> Result<Redirect> {
    use proto::redirect_action::{
        PathRewriteSpecifier as P, RedirectResponseCode as C, SchemeRewriteSpecifier as S,
    };
    let status = match C::try_from(r.response_code) {
        Ok(C::MovedPermanently) => http::StatusCode::MOVED_PERMANENTLY,
        Ok(C::Found) => http::StatusCode::FOUND,
        Ok(C::SeeOther) => http::StatusCode::SEE_OTHER,
        Ok(C::TemporaryRedirect) => http::StatusCode::TEMPORARY_REDIRECT,
        Ok(C::PermanentRedirect) => http::StatusCode::PERMANENT_REDIRECT,
        Err(_) => {
            return Err(path
                .field("response_code")
                .error(format!("unknown response code {}", r.response_code)))
        }
    };
    // Envoy's validation: redirect parts become a Location header, so no NUL, CR or LF.
    let header_safe = |value: &str, field: &str| {
        if value.contains(['\0', '\r', '\n']) {
            Err(path
                .field(field)
                .error("value must not contain NUL, CR or LF"))
        } else {
            Ok(())
        }
    };
    header_safe(&r.host_redirect, "host_redirect")?;
    if let Some(S::SchemeRedirect(s)) = &r.scheme_rewrite_specifier {
        header_safe(s, "scheme_redirect")?;
    }
    match &r.path_rewrite_specifier {
        Some(P::PathRedirect(p)) => header_safe(p, "path_redirect")?,
        Some(P::PrefixRewrite(p)) => header_safe(p, "prefix_rewrite")?,
        _ => {}
    }
    let scheme = match &r.scheme_rewrite_specifier {
        Some(S::HttpsRedirect(true)) => Some("https".to_string()),
        Some(S::SchemeRedirect(s)) if !s.is_empty() => Some(s.to_ascii_lowercase()),
        _ => None,
    };
    let path_rewrite = match &r.path_rewrite_specifier {
        None => RedirectPath::Keep,
        Some(P::PathRedirect(p)) => RedirectPath::Replace(p.clone()),
        Some(P::PrefixRewrite(p)) => RedirectPath::PrefixRewrite(p.clone()),
        Some(_) => return Err(path.error("regex path rewrites in redirects are not supported yet")),
    };
    // A uint32 in Envoy's API, not range-checked: it is written into Location as given.
    let port = (r.port_redirect != 0).then_some(r.port_redirect);
    Ok(Redirect {
        scheme,
        host: (!r.host_redirect.is_empty()).then(|| r.host_redirect.clone()),
        port,
        path: path_rewrite,
        status,
        strip_query: r.strip_query,
    })
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
