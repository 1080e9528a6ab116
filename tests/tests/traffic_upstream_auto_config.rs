//! An `auto_config` cluster (`HttpProtocolOptions.auto_config`) over TLS, Envoy and Outrigger
//! as the client on the same bootstrap: the TLS handshake offers ALPN `h2,http/1.1` and the
//! connection speaks what the server picks, HTTP/1.1 when it picks none; a context with an
//! ALPN list of its own offers that instead. The servers are real Envoys over TLS answering
//! with the protocol they were spoken to in (`%PROTOCOL%`): one that speaks h2 and HTTP/1.1,
//! one HTTP/1.1 only, one that negotiates no ALPN at all. Known difference: Envoy counts each
//! auto_config connection twice in `upstream_cx_total`; Outrigger counts connections once.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/upstreams/http/v3/http_protocol_options.proto#envoy-v3-api-field-extensions-upstreams-http-v3-httpprotocoloptions-auto-config

use serde_json::{json, Value};
use tests::curl;
use tests::pki::{Identity, Pki};
use tests::{envoy_or_skip, free_port, Kind, RunningProxy};

fn address(port: u16) -> Value {
    json!({ "socket_address": { "address": "127.0.0.1", "port_value": port } })
}

fn router() -> Value {
    json!({ "name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } })
}

/// An Envoy TLS server offering `alpn` (none when empty) that answers 200 with header
/// `x-spoken: <the protocol of the request>`.
fn tls_server(server: &Identity, alpn: &[&str], port: u16) -> RunningProxy {
    let bootstrap = json!({
        "admin": { "address": address(free_port()) },
        "static_resources": { "listeners": [{
            "name": "tls", "address": address(port),
            "filter_chains": [{
                "filters": [{ "name": "envoy.filters.network.http_connection_manager", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "server",
                    "route_config": { "virtual_hosts": [{ "name": "all", "domains": ["*"],
                        "routes": [{ "match": { "prefix": "/" },
                            "direct_response": { "status": 200, "body": { "inline_string": "served\n" } } }],
                        "response_headers_to_add": [{ "header": { "key": "x-spoken", "value": "%PROTOCOL%" } }] }] },
                    "http_filters": [router()],
                } }],
                "transport_socket": { "name": "envoy.transport_sockets.tls", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "common_tls_context": {
                        "alpn_protocols": alpn,
                        "tls_certificates": [{ "certificate_chain": { "filename": server.cert },
                            "private_key": { "filename": server.key } }] } } },
            }]
        }] }
    });
    RunningProxy::start(Kind::Envoy, &bootstrap.to_string(), &[])
}

/// An `auto_config` cluster to `port` over TLS; `alpn` is the context's own list (none when
/// empty).
fn auto_cluster(name: &str, port: u16, pki: &Pki, alpn: &[&str]) -> Value {
    json!({
        "name": name, "type": "STATIC", "connect_timeout": "2s",
        "typed_extension_protocol_options": { "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "auto_config": {} } },
        "transport_socket": { "name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": "backend.test",
            "common_tls_context": {
                "alpn_protocols": alpn,
                "validation_context": { "trusted_ca": { "filename": pki.root() } } } } },
        "load_assignment": { "cluster_name": name, "endpoints": [{ "lb_endpoints": [
            { "endpoint": { "address": address(port) } }] }] }
    })
}

/// A counter from the admin `/stats` (None when absent).
fn stat(proxy: &RunningProxy, name: &str) -> Option<u64> {
    proxy
        .get("/stats")
        .body
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn auto_config_speaks_what_the_tls_handshake_negotiates_as_envoy_does() {
    let Some(_) =
        envoy_or_skip("auto_config_speaks_what_the_tls_handshake_negotiates_as_envoy_does")
    else {
        return;
    };
    let pki = Pki::new();
    let server = pki.server("backend.test");
    let (both, h1_only, no_alpn) = (free_port(), free_port(), free_port());
    let _servers = [
        tls_server(&server, &["h2", "http/1.1"], both),
        tls_server(&server, &["http/1.1"], h1_only),
        tls_server(&server, &[], no_alpn),
    ];
    // cluster, server port, the client context's own ALPN list
    let clusters: [(&str, u16, &[&str]); 4] = [
        ("h2_capable", both, &[]),
        ("http1_only", h1_only, &[]),
        ("no_alpn", no_alpn, &[]),
        ("own_list", both, &["http/1.1"]),
    ];
    let mut outcomes = Vec::new();
    for kind in [Kind::Envoy, Kind::Outrigger] {
        let port = free_port();
        let routes: Vec<Value> = clusters
            .iter()
            .map(|(name, _, _)| {
                json!({ "match": { "prefix": format!("/{name}") }, "route": { "cluster": name } })
            })
            .collect();
        let bootstrap = json!({
            "admin": { "address": address(free_port()) },
            "static_resources": {
                "listeners": [{ "name": "client", "address": address(port),
                    "filter_chains": [{ "filters": [{ "name": "envoy.filters.network.http_connection_manager", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "client",
                        "route_config": { "virtual_hosts": [{ "name": "all", "domains": ["*"], "routes": routes }] },
                        "http_filters": [router()] } }] }] }],
                "clusters": clusters.iter()
                    .map(|(name, p, alpn)| auto_cluster(name, *p, &pki, alpn))
                    .collect::<Vec<_>>(),
            }
        });
        // One worker: the connection counts are compared.
        let proxy = RunningProxy::start(kind, &bootstrap.to_string(), &["--concurrency", "1"]);
        let mut seen = Vec::new();
        for (name, _, _) in &clusters {
            // Two requests each: the second reuses the connection the first negotiated.
            for _ in 0..2 {
                let r = curl::get(&format!("http://127.0.0.1:{port}/{name}"));
                seen.push(format!(
                    "{name}: {} {:?} spoken {:?}",
                    r.status,
                    r.body,
                    r.header("x-spoken")
                ));
            }
            // The connections open: `upstream_cx_total` is not compared, as Envoy 1.40 counts
            // each auto_config connection twice in it (seen: 2 after these two requests, with
            // `upstream_cx_active` 1 and `upstream_cx_http1_total` or `_http2_total` 1).
            seen.push(format!(
                "{name}: upstream_cx_active {:?}",
                stat(&proxy, &format!("cluster.{name}.upstream_cx_active"))
            ));
        }
        outcomes.push((kind, seen, proxy.logs_for_failure()));
    }
    let (envoy, outrigger) = (&outcomes[0], &outcomes[1]);
    assert_eq!(
        envoy.1, outrigger.1,
        "Envoy (left) and Outrigger (right) differ\n{}",
        outrigger.2
    );
    // And what they agree on is what the handshake chose.
    let spoken: Vec<&String> = envoy.1.iter().filter(|l| l.contains("spoken")).collect();
    assert!(spoken[0].contains("\"HTTP/2\""), "{spoken:?}");
    assert!(spoken[2].contains("\"HTTP/1.1\""), "{spoken:?}");
}
