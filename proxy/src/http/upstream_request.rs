//! The request an attempt sends upstream: rewritten path and authority, hop-by-hop headers
//! removed, Envoy's `x-envoy-*` request headers added, then the header mutations of every
//! level of the route table.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/headers

use super::forward::Target;
use crate::config::route::{Forward, HostRewrite, PathMatch, Route};
use crate::upstream::UpstreamBody;
use http::{header, HeaderMap, HeaderName, HeaderValue, Request};
use std::time::Duration;

static X_ENVOY_EXPECTED_RQ_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-expected-rq-timeout-ms");
pub static X_ENVOY_ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");
static X_ENVOY_ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");
static X_ENVOY_ORIGINAL_HOST: HeaderName = HeaderName::from_static("x-envoy-original-host");

/// Headers that describe one hop and are never forwarded (RFC 9110 §7.6.1).
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
    header::TRAILER,
];

/// A copy of a request's head for one more attempt (the original stays for the next).
pub fn copy_head(head: &http::request::Parts) -> http::request::Parts {
    let mut copy = Request::new(());
    *copy.method_mut() = head.method.clone();
    *copy.uri_mut() = head.uri.clone();
    *copy.version_mut() = head.version;
    *copy.headers_mut() = head.headers.clone();
    copy.into_parts().0
}

/// Builds the request sent upstream: rewritten path and authority, hop-by-hop headers gone,
/// Envoy's added headers, then the header mutations from the most specific level to the
/// least (weighted cluster, route, virtual host, route configuration).
/// `expected_timeout` is the attempt's (per-try, else what is left of the route timeout);
/// `attempt` counts from 1.
pub fn upstream_request(
    mut parts: http::request::Parts,
    body: UpstreamBody,
    t: &Target<'_>,
    upstream_hostname: &str,
    upstream_authority: &str,
    expected_timeout: Option<Duration>,
    attempt: u32,
) -> Option<Request<UpstreamBody>> {
    let original_authority = parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        })?
        .to_string();
    let original_authority_text = original_authority.clone();
    let authority = match (
        &t.forward.host_rewrite,
        t.weighted.and_then(|w| w.host_rewrite.as_ref()),
    ) {
        (_, Some(literal)) => literal.to_str().ok()?.to_string(),
        (HostRewrite::None, None) => original_authority,
        (HostRewrite::Literal(v), None) => v.to_str().ok()?.to_string(),
        (HostRewrite::Auto, None) if !upstream_hostname.is_empty() => upstream_hostname.to_string(),
        (HostRewrite::Auto, None) => original_authority,
        (HostRewrite::Header(name), None) => {
            match parts.headers.get(name).and_then(|v| v.to_str().ok()) {
                Some(v) if !v.is_empty() => v.to_string(),
                _ => original_authority,
            }
        }
    };
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let rewritten = rewrite_path(path_and_query, t.route, t.forward);
    // Envoy tells the upstream what a rewrite replaced (unless the router suppresses its
    // headers).
    let original_path = (t.envoy_headers
        && (t.forward.prefix_rewrite.is_some() || t.forward.regex_rewrite.is_some()))
    .then(|| HeaderValue::from_str(path_and_query).ok())
    .flatten();
    // Only a route-level host rewrite is reported (not a weighted cluster's own).
    let original_host = (t.envoy_headers
        && !matches!(t.forward.host_rewrite, HostRewrite::None)
        && authority != original_authority_text)
        .then(|| HeaderValue::from_str(&original_authority_text).ok())
        .flatten();
    parts.uri = http::Uri::builder()
        .scheme("http")
        .authority(authority.as_str())
        .path_and_query(rewritten.as_deref().unwrap_or(path_and_query))
        .build()
        .ok()?;
    let keep_te_trailers = parts
        .headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    // An upgrade keeps its `Upgrade` and `Connection` headers as the client wrote them
    // (Envoy strips them only from requests that are not upgrades).
    let upgrade = if t.upgrade {
        parts.headers.get(header::UPGRADE).cloned().map(|kind| {
            let connection = parts.headers.get(header::CONNECTION).cloned();
            (kind, connection)
        })
    } else {
        None
    };
    strip_hop_by_hop(&mut parts.headers);
    if let Some((kind, connection)) = upgrade {
        parts.headers.insert(
            header::CONNECTION,
            connection.unwrap_or(HeaderValue::from_static("upgrade")),
        );
        parts.headers.insert(header::UPGRADE, kind);
    }
    if keep_te_trailers {
        // `te: trailers` is the one TE value that is end to end (gRPC needs it).
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if parts.headers.get(header::HOST).map(|h| h.as_bytes()) != Some(authority.as_bytes()) {
        parts
            .headers
            .insert(header::HOST, HeaderValue::from_str(&authority).ok()?);
    }
    if let Some(path) = original_path {
        parts.headers.insert(X_ENVOY_ORIGINAL_PATH.clone(), path);
    }
    if let Some(host) = original_host {
        parts.headers.insert(X_ENVOY_ORIGINAL_HOST.clone(), host);
    }
    if let Some(timeout) = expected_timeout.filter(|_| t.envoy_headers) {
        parts.headers.insert(
            X_ENVOY_EXPECTED_RQ_TIMEOUT_MS.clone(),
            HeaderValue::from(timeout.as_millis() as u64),
        );
    }
    if t.vh.include_request_attempt_count {
        parts
            .headers
            .insert(X_ENVOY_ATTEMPT_COUNT.clone(), HeaderValue::from(attempt));
    }
    let mutations = [
        t.weighted.map(|w| &w.request_headers),
        Some(&t.route.request_headers),
        Some(&t.vh.request_headers),
        Some(&t.rc.request_headers),
    ];
    // Values reading request headers see them as they arrived (a copy, made only then).
    let snapshot = mutations
        .iter()
        .flatten()
        .any(|m| m.reads_request_headers())
        .then(|| parts.headers.clone());
    let format = t
        .info
        .format_context(parts.version, Some(upstream_authority), snapshot.as_ref());
    for mutation in mutations.into_iter().flatten() {
        mutation.apply(&mut parts.headers, &format);
    }
    Some(Request::from_parts(parts, body))
}

/// The path after `prefix_rewrite` or `regex_rewrite`, or None when it stays as it is.
fn rewrite_path(path_and_query: &str, route: &Route, f: &Forward) -> Option<String> {
    let (path, query) = match path_and_query.find('?') {
        Some(i) => path_and_query.split_at(i),
        None => (path_and_query, ""),
    };
    if let Some((regex, substitution)) = &f.regex_rewrite {
        return Some(format!(
            "{}{query}",
            regex.replace_all(path, substitution.as_str())
        ));
    }
    let new_prefix = f.prefix_rewrite.as_ref()?;
    match &route.path {
        PathMatch::Prefix { prefix, .. } | PathMatch::SeparatedPrefix { prefix, .. } => {
            Some(format!(
                "{new_prefix}{}",
                path_and_query.get(prefix.len()..).unwrap_or("")
            ))
        }
        PathMatch::Exact { .. } | PathMatch::Regex(_) => Some(format!("{new_prefix}{query}")),
    }
}

pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names finds which are present: most messages carry none, or only
    // `connection`, and a removal hashes its name even when nothing is there.
    let mut present = [false; HOP_BY_HOP.len()];
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present[i] = true;
        }
    }
    if present == [false; HOP_BY_HOP.len()] {
        return;
    }
    // Headers named in `Connection` are hop-by-hop too (`HOP_BY_HOP[0]`).
    if present[0] {
        // Copied out (cheap: shared bytes) to remove while reading; a second value is rare,
        // so the common case allocates nothing.
        let mut values = headers.get_all(header::CONNECTION).iter();
        let first = values.next().cloned();
        let rest: Vec<HeaderValue> = values.cloned().collect();
        for value in first.iter().chain(&rest) {
            let Ok(value) = value.to_str() else { continue };
            for name in value.split(',') {
                if let Ok(name) = HeaderName::from_bytes(name.trim().as_bytes()) {
                    headers.remove(name);
                }
            }
        }
    }
    for (name, here) in HOP_BY_HOP.iter().zip(present) {
        if here {
            headers.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-hop"),
            ("connection", "x-second"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "1"),
            ("x-second", "2"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("x-end-to-end", "3"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        strip_hop_by_hop(&mut headers);
        let left: Vec<&str> = headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(left, ["x-end-to-end"]);

        let mut none = HeaderMap::new();
        none.insert(header::HOST, HeaderValue::from_static("a"));
        strip_hop_by_hop(&mut none);
        assert_eq!(none.len(), 1);
    }
}
