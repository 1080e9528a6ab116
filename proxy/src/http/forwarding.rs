//! The connection manager's forwarding headers: `x-forwarded-for`, `x-forwarded-proto`,
//! `x-request-id`, `x-envoy-internal`/`x-envoy-external-address`, the sanitising of internal
//! `x-envoy-*` headers on external requests, and `via`.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/headers

use crate::config::hcm::Forwarding;
use http::{HeaderMap, HeaderName, HeaderValue};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) static X_ENVOY_INTERNAL: HeaderName = HeaderName::from_static("x-envoy-internal");
static X_ENVOY_EXTERNAL_ADDRESS: HeaderName = HeaderName::from_static("x-envoy-external-address");
static X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// Headers trusted only on internal requests, whatever `use_remote_address` says: removed
/// from any other request (seen with Envoy 1.40: these go even behind a non-edge proxy, where
/// the rest of `INTERNAL_ONLY` stays).
static INTERNAL_ONLY_ANYWHERE: [HeaderName; 3] = [
    HeaderName::from_static("x-envoy-force-trace"),
    HeaderName::from_static("x-envoy-ip-tags"),
    HeaderName::from_static("x-envoy-original-url"),
];

/// Headers only trusted from inside the mesh: removed from external requests at the edge.
static INTERNAL_ONLY: [HeaderName; 20] = [
    HeaderName::from_static("x-envoy-decorator-operation"),
    HeaderName::from_static("x-envoy-downstream-service-cluster"),
    HeaderName::from_static("x-envoy-downstream-service-node"),
    HeaderName::from_static("x-envoy-expected-rq-timeout-ms"),
    HeaderName::from_static("x-envoy-external-address"),
    HeaderName::from_static("x-envoy-force-trace"),
    HeaderName::from_static("x-envoy-hedge-on-per-try-timeout"),
    HeaderName::from_static("x-envoy-internal"),
    HeaderName::from_static("x-envoy-ip-tags"),
    HeaderName::from_static("x-envoy-max-retries"),
    HeaderName::from_static("x-envoy-original-path"),
    HeaderName::from_static("x-envoy-original-url"),
    HeaderName::from_static("x-envoy-retriable-header-names"),
    HeaderName::from_static("x-envoy-retriable-status-codes"),
    HeaderName::from_static("x-envoy-retry-grpc-on"),
    HeaderName::from_static("x-envoy-retry-on"),
    HeaderName::from_static("x-envoy-upstream-alt-stat-name"),
    HeaderName::from_static("x-envoy-upstream-rq-per-try-timeout-ms"),
    HeaderName::from_static("x-envoy-upstream-rq-timeout-ms"),
    HeaderName::from_static("x-envoy-upstream-stream-duration-ms"),
];

/// The downstream connection a request arrived on.
#[derive(Debug, Clone)]
pub struct Downstream {
    /// None on a Unix socket.
    pub remote: Option<SocketAddr>,
    /// The connection's local address, after the original_dst filter: where the client meant
    /// to connect (ORIGINAL_DST clusters send there).
    pub local: Option<SocketAddr>,
    /// This host's address, appended to `x-forwarded-for` instead of a loopback peer (Envoy's
    /// "local address": the first non-loopback interface address).
    pub node_address: Option<IpAddr>,
    /// The connection's id (`%CONNECTION_ID%`), unique in the process.
    pub connection_id: u64,
    /// What the TLS handshake established, on a TLS connection.
    pub tls: Option<Arc<crate::tls::TlsInfo>>,
    /// With the listener's `original_src`: the address upstream connections leave from.
    pub original_src: Option<crate::upstream::transport::OriginalSource>,
    /// The SNI the TLS inspector read (`%REQUESTED_SERVER_NAME%`, RBAC).
    pub requested_server_name: Option<Arc<str>>,
}

/// The next connection id: one sequence for the whole process, as Envoy numbers connections.
pub fn next_connection_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Applies Envoy's forwarding rules to a request's headers before routing. Returns the
/// client's address as Envoy determines it (from `x-forwarded-for` unless this is the edge),
/// what RBAC's `remote_ip` matches.
pub fn mutate_request_headers(
    f: &Forwarding,
    headers: &mut HeaderMap,
    downstream: &Downstream,
) -> Option<IpAddr> {
    // Most requests carry no `x-envoy-*` header: one pass over the names spares the two
    // dozen hashed removals below (each hashes its name even when nothing is there).
    let envoy_headers = headers
        .keys()
        .any(|name| name.as_str().starts_with("x-envoy-"));
    let original_xff = headers
        .get(&X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let remote_ip = downstream.remote.map(|a| a.ip());
    // The address Envoy takes as the original client's.
    let client = if f.use_remote_address && f.xff_num_trusted_hops == 0 {
        remote_ip
    } else {
        let skip = if f.use_remote_address {
            f.xff_num_trusted_hops - 1
        } else {
            f.xff_num_trusted_hops
        };
        original_xff
            .as_deref()
            .and_then(|xff| xff_entry(xff, skip as usize))
            .or(remote_ip)
    };
    if f.use_remote_address && !f.skip_xff_append {
        let appended = match remote_ip {
            Some(ip) if ip.is_loopback() => downstream.node_address.or(Some(ip)),
            other => other,
        };
        if let Some(ip) = appended {
            let value = match &original_xff {
                Some(xff) => format!("{xff},{ip}"),
                None => ip.to_string(),
            };
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(X_FORWARDED_FOR.clone(), v);
            }
        }
    }
    // Only this proxy says whether a request is internal.
    if envoy_headers {
        headers.remove(&X_ENVOY_INTERNAL);
    }
    // Envoy trusts an address as internal only when it alone names the client: at the edge
    // (trusting no hop), when the request came without `x-forwarded-for`; when the client is
    // read from that header, when it has a single entry (checked with Envoy 1.40).
    let single_address = if f.use_remote_address && f.xff_num_trusted_hops == 0 {
        original_xff.is_none()
    } else {
        original_xff.as_deref().is_some_and(|x| !x.contains(','))
    };
    let internal = match client {
        Some(ip) => single_address && f.internal_cidrs.iter().any(|c| c.contains(ip)),
        None => f.internal_unix_sockets,
    };
    if !internal && envoy_headers {
        for name in &INTERNAL_ONLY_ANYWHERE {
            headers.remove(name);
        }
    }
    let external_edge_request = f.use_remote_address && !internal;
    // Marked whether or not this is the edge: the router counts the response under
    // `internal.` and trusts the request's `x-envoy-*` controls (seen with Envoy 1.40).
    if internal {
        headers.insert(X_ENVOY_INTERNAL.clone(), HeaderValue::from_static("true"));
    }
    if external_edge_request {
        if envoy_headers {
            for name in &INTERNAL_ONLY {
                headers.remove(name);
            }
        }
        if let Some(ip) = client {
            if let Ok(v) = HeaderValue::from_str(&ip.to_string()) {
                headers.insert(X_ENVOY_EXTERNAL_ADDRESS.clone(), v);
            }
        }
    }
    // An edge proxy sets the scheme it saw; behind trusted proxies (or not at the edge), an
    // existing value is kept.
    if (f.use_remote_address && f.xff_num_trusted_hops == 0)
        || !headers.contains_key(&X_FORWARDED_PROTO)
    {
        let scheme = if downstream.tls.is_some() {
            "https"
        } else {
            "http"
        };
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(scheme));
    }
    let regenerate = external_edge_request && !f.preserve_external_request_id;
    if f.generate_request_id && (regenerate || !headers.contains_key(&X_REQUEST_ID)) {
        headers.insert(X_REQUEST_ID.clone(), new_request_id());
    }
    if let Some(via) = &f.via {
        append_via(headers, via);
    }
    forward_client_cert(f, headers, downstream);
    client
}

/// `x-forwarded-client-cert` by `forward_client_cert_details`: removed, forwarded, or (on a
/// mutual TLS connection) given this hop's element — `By` (our URI SANs), `Hash` (the client
/// certificate's SHA-256), then the details asked for — appended or set.
/// https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/headers#x-forwarded-client-cert
fn forward_client_cert(f: &Forwarding, headers: &mut HeaderMap, downstream: &Downstream) {
    use crate::config::hcm::ForwardClientCert as Mode;
    if f.client_cert == Mode::AlwaysForwardOnly {
        return;
    }
    let tls = downstream.tls.as_deref();
    let (Some(tls), Some(peer)) = (tls, tls.and_then(|t| t.peer.as_ref())) else {
        headers.remove(&X_FORWARDED_CLIENT_CERT);
        return;
    };
    match f.client_cert {
        Mode::ForwardOnly => return,
        Mode::Sanitize => {
            headers.remove(&X_FORWARDED_CLIENT_CERT);
            return;
        }
        _ => {}
    }
    let names = |joined: &str| -> Vec<String> {
        joined
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    let mut element: Vec<String> = names(&tls.local.uri)
        .into_iter()
        .map(|uri| format!("By={uri}"))
        .collect();
    if !peer.sha256.is_empty() {
        element.push(format!("Hash={}", peer.sha256));
    }
    let details = f.client_cert_details;
    if details.subject {
        element.push(format!("Subject=\"{}\"", peer.subject));
    }
    if details.uri {
        let uris = names(&peer.uri);
        if uris.is_empty() {
            element.push("URI=".to_string());
        }
        element.extend(uris.into_iter().map(|uri| format!("URI={uri}")));
    }
    if details.dns {
        element.extend(names(&peer.dns).into_iter().map(|dns| format!("DNS={dns}")));
    }
    let element = element.join(";");
    let value = match (f.client_cert, headers.get(&X_FORWARDED_CLIENT_CERT)) {
        (Mode::AppendForward, Some(existing)) if !existing.is_empty() => {
            format!("{},{element}", String::from_utf8_lossy(existing.as_bytes()))
        }
        _ => element,
    };
    match HeaderValue::from_str(&value) {
        Ok(v) => {
            headers.insert(X_FORWARDED_CLIENT_CERT.clone(), v);
        }
        Err(_) => {
            headers.remove(&X_FORWARDED_CLIENT_CERT);
        }
    }
}

/// `via` on requests and responses: appended with `, ` to any value already there.
pub fn append_via(headers: &mut HeaderMap, via: &HeaderValue) {
    let value = match headers.get(http::header::VIA) {
        Some(existing) => {
            let mut joined = existing.as_bytes().to_vec();
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(via.as_bytes());
            HeaderValue::from_bytes(&joined).unwrap_or_else(|_| via.clone())
        }
        None => via.clone(),
    };
    headers.insert(http::header::VIA, value);
}

/// The entry `skip` places from the right of an `x-forwarded-for` list, if it is an IP.
fn xff_entry(xff: &str, skip: usize) -> Option<IpAddr> {
    xff.rsplit(',')
        .nth(skip)
        .and_then(|s| s.trim().parse().ok())
}

/// A random (version 4) UUID, as Envoy's default request id extension generates.
pub fn new_request_id() -> HeaderValue {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&crate::random::next_u64().to_le_bytes());
    bytes[8..].copy_from_slice(&crate::random::next_u64().to_le_bytes());
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 36];
    let mut o = 0;
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[o] = b'-';
            o += 1;
        }
        out[o] = HEX[usize::from(b >> 4)];
        out[o + 1] = HEX[usize::from(b & 0xf)];
        o += 2;
    }
    HeaderValue::from_bytes(&out)
        .unwrap_or_else(|_| HeaderValue::from_static("00000000-0000-4000-8000-000000000000"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::listener::Cidr;

    fn run(f: &Forwarding, headers: &[(&str, &str)], remote: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        let downstream = Downstream {
            remote: Some(remote.parse().expect("addr")),
            local: None,
            node_address: Some("192.0.2.2".parse().expect("ip")),
            connection_id: 0,
            tls: None,
            original_src: None,
            requested_server_name: None,
        };
        mutate_request_headers(f, &mut map, &downstream);
        map
    }

    fn get<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
        h.get(name).and_then(|v| v.to_str().ok())
    }

    #[test]
    fn default_keeps_client_headers_and_adds_missing_ones() {
        let f = Forwarding {
            generate_request_id: true,
            ..Default::default()
        };
        let h = run(
            &f,
            &[
                ("x-forwarded-proto", "https"),
                ("x-envoy-retry-on", "5xx"),
                ("x-forwarded-for", "9.9.9.9"),
            ],
            "127.0.0.1:5000",
        );
        assert_eq!(get(&h, "x-forwarded-proto"), Some("https"));
        assert_eq!(get(&h, "x-envoy-retry-on"), Some("5xx"));
        assert_eq!(get(&h, "x-forwarded-for"), Some("9.9.9.9"));
        let id = get(&h, "x-request-id").expect("generated");
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
    }

    #[test]
    fn edge_proxy_appends_node_address_for_loopback_and_sanitises_external_requests() {
        // What Envoy 1.40 sends upstream for the same request (checked by hand).
        let f = Forwarding {
            use_remote_address: true,
            generate_request_id: true,
            via: Some(HeaderValue::from_static("myvia")),
            ..Default::default()
        };
        let h = run(
            &f,
            &[
                ("x-envoy-retry-on", "5xx"),
                ("x-forwarded-for", "9.9.9.9"),
                ("x-forwarded-proto", "https"),
                ("x-request-id", "keep"),
                ("via", "1.1 other"),
            ],
            "127.0.0.1:5000",
        );
        assert_eq!(get(&h, "x-forwarded-for"), Some("9.9.9.9,192.0.2.2"));
        assert_eq!(get(&h, "x-forwarded-proto"), Some("http"));
        assert_ne!(get(&h, "x-request-id"), Some("keep"));
        assert_eq!(get(&h, "via"), Some("1.1 other, myvia"));
        assert_eq!(get(&h, "x-envoy-external-address"), Some("127.0.0.1"));
        assert_eq!(get(&h, "x-envoy-retry-on"), None);
    }

    #[test]
    fn trusted_hops_pick_the_client_from_xff_and_internal_cidrs_mark_internal() {
        let f = Forwarding {
            use_remote_address: true,
            xff_num_trusted_hops: 1,
            generate_request_id: true,
            internal_cidrs: vec![Cidr {
                network: "127.0.0.0".parse().expect("ip"),
                len: 8,
            }],
            ..Default::default()
        };
        let h = run(
            &f,
            &[
                ("x-forwarded-for", "9.9.9.9, 8.8.8.8"),
                ("x-forwarded-proto", "https"),
            ],
            "127.0.0.1:5000",
        );
        assert_eq!(get(&h, "x-envoy-external-address"), Some("8.8.8.8"));
        assert_eq!(get(&h, "x-forwarded-proto"), Some("https"));
        assert_eq!(
            get(&h, "x-forwarded-for"),
            Some("9.9.9.9, 8.8.8.8,192.0.2.2")
        );
        let h = run(
            &f,
            &[
                ("x-forwarded-for", "127.0.0.9"),
                ("x-envoy-retry-on", "5xx"),
            ],
            "127.0.0.1:5000",
        );
        assert_eq!(get(&h, "x-envoy-internal"), Some("true"));
        assert_eq!(get(&h, "x-envoy-retry-on"), Some("5xx"));
    }

    /// Not at the edge, a request whose single `x-forwarded-for` entry is an internal address
    /// is marked internal too (Envoy 1.40 sends `x-envoy-internal: true` upstream).
    #[test]
    fn internal_without_remote_address_is_marked() {
        let f = Forwarding {
            internal_cidrs: vec![Cidr {
                network: "127.0.0.0".parse().expect("ip"),
                len: 8,
            }],
            ..Default::default()
        };
        let h = run(&f, &[("x-forwarded-for", "127.0.0.1")], "127.0.0.1:5000");
        assert_eq!(get(&h, "x-envoy-internal"), Some("true"));
        let h = run(&f, &[("x-forwarded-for", "10.0.0.1")], "127.0.0.1:5000");
        assert_eq!(get(&h, "x-envoy-internal"), None);
        let h = run(&f, &[], "127.0.0.1:5000");
        assert_eq!(get(&h, "x-envoy-internal"), None);
    }

    #[test]
    fn request_ids_are_distinct() {
        assert_ne!(new_request_id(), new_request_id());
    }
}
