//! Redirect responses: the `Location` built from the route's redirect action.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#config-route-v3-redirectaction

use super::local_reply::local_reply;
use super::router::ResponseBody;
use crate::config::route::{PathMatch, Redirect, RedirectPath, Route};
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};
use hyper::body::Incoming;

pub fn redirect(
    r: &Redirect,
    route: &Route,
    request: &Request<Incoming>,
    host: &str,
    server: &HeaderValue,
) -> Response<ResponseBody> {
    let scheme = r.scheme.as_deref().unwrap_or("http");
    let (bare_host, original_port) = split_host_port(host);
    let new_host = r.host.as_deref().unwrap_or(bare_host);
    let port = match (r.port, r.scheme.as_deref()) {
        (Some(p), _) => Some(p.to_string()),
        // A new host drops the original port; a new scheme keeps it (Envoy 1.40).
        (None, _) if r.host.is_some() => None,
        (None, _) => original_port.map(str::to_string),
    };
    let path_and_query = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let mut location = format!("{scheme}://{new_host}");
    if let Some(p) = port {
        location.push(':');
        location.push_str(&p);
    }
    match &r.path {
        RedirectPath::Keep => location.push_str(path),
        RedirectPath::Replace(p) => location.push_str(p),
        RedirectPath::PrefixRewrite(p) => {
            // The prefix the route matched is replaced; other path matches keep the path.
            let rest = match &route.path {
                PathMatch::Prefix { prefix, .. } | PathMatch::SeparatedPrefix { prefix, .. } => {
                    path.get(prefix.len()..).unwrap_or("")
                }
                _ => path,
            };
            location.push_str(p);
            location.push_str(rest);
        }
    }
    let replaced_has_query = matches!(&r.path, RedirectPath::Replace(p) if p.contains('?'));
    if let (Some(q), false, false) = (query, r.strip_query, replaced_has_query) {
        location.push('?');
        location.push_str(q);
    }
    let mut response = local_reply(r.status, Bytes::new(), server);
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

/// `host:port`, `[v6]:port`, or a bare host.
fn split_host_port(authority: &str) -> (&str, Option<&str>) {
    if let Some(end) = authority.find("]:") {
        return (&authority[..end + 1], Some(&authority[end + 2..]));
    }
    match authority.split_once(':') {
        Some((h, p)) if !p.contains(':') => (h, Some(p)),
        _ => (authority, None),
    }
}
