//! `x-forwarded-client-cert` as Envoy writes it, compared with Envoy: one listener per
//! `forward_client_cert_details` mode (Istio's inbound chains use APPEND_FORWARD with subject,
//! URI and DNS), each taking mutual TLS, one-way TLS and plaintext, every request arriving with
//! a spoofed XFCC header. The upstream must see the same header (and the same
//! `x-forwarded-proto`) from both proxies. The client certificate carries a URI and two DNS
//! SANs, so the order of the details is checked too.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/headers#x-forwarded-client-cert

use serde_json::json;
use tests::pki::{Identity, Pki};
use tests::{envoy_or_skip, free_port, Kind, RunningProxy, Upstream};

const MODES: [&str; 5] = [
    "SANITIZE",
    "FORWARD_ONLY",
    "APPEND_FORWARD",
    "SANITIZE_SET",
    "ALWAYS_FORWARD_ONLY",
];

const SPOOFED: &str =
    "By=spiffe://cluster.local/ns/x/sa/spoof;URI=spiffe://cluster.local/ns/x/sa/spoof";

fn bootstrap(pki: &Pki, server: &Identity, admin: u16, ports: &[u16], app: u16) -> String {
    let address = |p: u16| json!({ "socket_address": { "address": "127.0.0.1", "port_value": p } });
    let hcm = |mode: &str| {
        json!({
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": mode,
                "forward_client_cert_details": mode,
                "set_current_client_cert_details": { "subject": true, "uri": true, "dns": true },
                "route_config": { "virtual_hosts": [{ "name": "all", "domains": ["*"],
                    "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": "app" } }] }] },
                "http_filters": [{ "name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }]
            }
        })
    };
    let tls = json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": false,
            "common_tls_context": {
                "tls_certificates": [{
                    "certificate_chain": { "filename": server.cert },
                    "private_key": { "filename": server.key },
                }],
                "validation_context": { "trusted_ca": { "filename": pki.root() } },
            }
        }
    });
    let listeners: Vec<_> = MODES
        .iter()
        .zip(ports)
        .map(|(mode, port)| {
            json!({
                "name": mode, "address": address(*port),
                "listener_filters": [{ "name": "envoy.filters.listener.tls_inspector",
                    "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector" } }],
                "filter_chains": [
                    { "filter_chain_match": { "transport_protocol": "tls" }, "filters": [hcm(mode)], "transport_socket": tls },
                    { "filter_chain_match": { "transport_protocol": "raw_buffer" }, "filters": [hcm(mode)] },
                ]
            })
        })
        .collect();
    json!({
        "admin": { "address": address(admin) },
        "static_resources": {
            "listeners": listeners,
            "clusters": [{
                "name": "app", "type": "STATIC", "connect_timeout": "2s",
                "load_assignment": { "cluster_name": "app", "endpoints": [{ "lb_endpoints": [
                    { "endpoint": { "address": address(app) } }] }] }
            }]
        }
    })
    .to_string()
}

/// For each mode, the XFCC header the upstream got for: mutual TLS, one-way TLS, plaintext
/// (`-` when there was none).
fn run(kind: Kind, pki: &Pki, server: &Identity, client: &Identity) -> Vec<String> {
    let app = Upstream::start("app");
    let ports: Vec<u16> = MODES.iter().map(|_| free_port()).collect();
    let proxy = RunningProxy::start(
        kind,
        &bootstrap(pki, server, free_port(), &ports, app.port()),
        &[],
    );
    let cert = client.cert.display().to_string();
    let key = client.key.display().to_string();
    let header = format!("x-forwarded-client-cert: {SPOOFED}");
    let mut seen = Vec::new();
    for (mode, port) in MODES.iter().zip(&ports) {
        let https = format!("https://127.0.0.1:{port}/");
        let http = format!("http://127.0.0.1:{port}/");
        let requests: [(&str, Vec<&str>); 3] = [
            (
                &https,
                vec!["-k", "--cert", &cert, "--key", &key, "-H", &header],
            ),
            (&https, vec!["-k", "-H", &header]),
            (&http, vec!["-H", &header]),
        ];
        for (what, (url, args)) in ["mTLS", "TLS", "plaintext"].iter().zip(&requests) {
            let before = app.requests().len();
            let r = tests::curl::request("GET", url, args)
                .unwrap_or_else(|f| panic!("{}: {mode} {what}: {f:?}", kind.name()));
            assert_eq!(r.status, 200, "{}: {mode} {what}", kind.name());
            let received = app.wait_for_requests(before + 1, std::time::Duration::from_secs(5));
            let header = |name: &str| {
                received[before]
                    .headers
                    .iter()
                    .find(|(k, _)| k == name)
                    .map_or("-".to_string(), |(_, v)| v.clone())
            };
            seen.push(format!(
                "{mode} {what}: {} (proto {})",
                header("x-forwarded-client-cert"),
                header("x-forwarded-proto")
            ));
        }
    }
    drop(proxy);
    seen
}

#[test]
fn forward_client_cert_details_like_envoy() {
    let pki = Pki::new();
    let server = pki.identity("server");
    let client = pki.identity_with_dns("client", &["client.example", "alt.example"]);
    let ours = run(Kind::Outrigger, &pki, &server, &client);
    // Independent of Envoy: Istio's mode on mutual TLS appends this hop's element.
    let append = ours
        .iter()
        .find(|l| l.starts_with("APPEND_FORWARD mTLS:"))
        .expect("a line");
    assert!(
        append.contains(&format!("{SPOOFED},By={};Hash=", server.uri))
            && append.contains(&format!("URI={}", client.uri))
            && append.contains("DNS=client.example;DNS=alt.example"),
        "{append}"
    );
    assert!(
        ours.contains(&"SANITIZE plaintext: - (proto http)".to_string()),
        "{ours:#?}"
    );
    assert!(
        ours.contains(&"SANITIZE TLS: - (proto https)".to_string()),
        "{ours:#?}"
    );
    if envoy_or_skip("forward_client_cert_details_like_envoy").is_none() {
        return;
    }
    let envoy = run(Kind::Envoy, &pki, &server, &client);
    if std::env::var_os("XFCC_VERBOSE").is_some() {
        eprintln!("{ours:#?}");
    }
    assert_eq!(ours, envoy);
}
