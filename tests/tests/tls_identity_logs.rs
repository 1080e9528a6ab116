//! What a downstream TLS connection tells access logs, compared with Envoy: the same
//! bootstrap (a port taking mutual TLS, one-way TLS and plaintext, as a PERMISSIVE port with
//! an optional client certificate) in front of Envoy and of Outrigger, the same three requests
//! from curl, and the access log lines of the TLS command operators.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/observability/access_log/usage#command-operators

use serde_json::json;
use tests::pki::{Identity, Pki};
use tests::{envoy_or_skip, free_port, Kind, RunningProxy, Upstream};

const FORMAT: &str = "%DOWNSTREAM_PEER_URI_SAN% %DOWNSTREAM_LOCAL_URI_SAN% %DOWNSTREAM_PEER_DNS_SAN% %DOWNSTREAM_LOCAL_DNS_SAN% %DOWNSTREAM_TLS_VERSION% %DOWNSTREAM_TLS_CIPHER% %DOWNSTREAM_PEER_FINGERPRINT_256%\n";

fn bootstrap(pki: &Pki, server: &Identity, admin: u16, port: u16, app: u16, log: &str) -> String {
    let address = |p: u16| json!({ "socket_address": { "address": "127.0.0.1", "port_value": p } });
    let hcm = json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "inbound",
            "access_log": [{ "name": "envoy.access_loggers.file", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": log, "log_format": { "text_format_source": { "inline_string": FORMAT } } } }],
            "route_config": { "virtual_hosts": [{ "name": "all", "domains": ["*"],
                "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": "app" } }] }] },
            "http_filters": [{ "name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }]
        }
    });
    let tls = json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": false,
            "common_tls_context": {
                "tls_params": { "tls_minimum_protocol_version": "TLSv1_3" },
                "tls_certificates": [{
                    "certificate_chain": { "filename": server.cert },
                    "private_key": { "filename": server.key },
                }],
                "validation_context": { "trusted_ca": { "filename": pki.root() } },
            }
        }
    });
    json!({
        "admin": { "address": address(admin) },
        "static_resources": {
            "listeners": [{
                "name": "inbound", "address": address(port),
                "listener_filters": [{ "name": "envoy.filters.listener.tls_inspector",
                    "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector" } }],
                "filter_chains": [
                    { "filter_chain_match": { "transport_protocol": "tls" }, "filters": [hcm.clone()], "transport_socket": tls },
                    { "filter_chain_match": { "transport_protocol": "raw_buffer" }, "filters": [hcm] },
                ]
            }],
            "clusters": [{
                "name": "app", "type": "STATIC", "connect_timeout": "2s",
                "load_assignment": { "cluster_name": "app", "endpoints": [{ "lb_endpoints": [
                    { "endpoint": { "address": address(app) } }] }] }
            }]
        }
    })
    .to_string()
}

/// The listener's non-zero `ssl.*` counters (its scope, which names the port, left out;
/// Envoy's certificate expiry gauges too, which Outrigger does not have).
fn ssl_stats(proxy: &RunningProxy) -> Vec<String> {
    proxy
        .get("/stats")
        .body
        .lines()
        .filter(|l| l.starts_with("listener.") && !l.ends_with(": 0"))
        .filter_map(|l| l.split_once(".ssl.").map(|(_, rest)| format!("ssl.{rest}")))
        .filter(|l| !l.starts_with("ssl.certificate."))
        .collect()
}

/// The log lines for: mutual TLS, TLS without a client certificate, plaintext; then the
/// listener's `ssl.*` counters.
fn run(kind: Kind, pki: &Pki, server: &Identity, client: &Identity) -> (Vec<String>, Vec<String>) {
    let app = Upstream::start("app");
    let dir = tempfile::tempdir().expect("a log directory");
    let log = dir.path().join("access.log");
    let log_path = log.display().to_string();
    let (admin, port) = (free_port(), free_port());
    let proxy = RunningProxy::start(
        kind,
        &bootstrap(pki, server, admin, port, app.port(), &log_path),
        &["--file-flush-interval-msec", "100"],
    );
    let https = format!("https://127.0.0.1:{port}/");
    let cert = client.cert.display().to_string();
    let key = client.key.display().to_string();
    let requests: [(&str, Vec<&str>); 3] = [
        (https.as_str(), vec!["-k", "--cert", &cert, "--key", &key]),
        (https.as_str(), vec!["-k"]),
        (&format!("http://127.0.0.1:{port}/"), vec![]),
    ];
    for (url, args) in &requests {
        let r = tests::curl::request("GET", url, args)
            .unwrap_or_else(|f| panic!("{}: curl {url} failed: {f:?}", kind.name()));
        assert_eq!(r.status, 200, "{}: {url}", kind.name());
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= requests.len() || std::time::Instant::now() > deadline {
            let stats = ssl_stats(&proxy);
            drop(proxy);
            return (lines, stats);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn tls_command_operators_log_like_envoy() {
    let pki = Pki::new();
    let (server, client) = (pki.identity("server"), pki.identity("client"));
    let (ours, our_stats) = run(Kind::Outrigger, &pki, &server, &client);
    // Two TLS handshakes, one with a client certificate, both TLS 1.3 (the listener's minimum).
    for want in [
        "ssl.handshake: 2",
        "ssl.no_certificate: 1",
        "ssl.versions.TLSv1.3: 2",
    ] {
        assert!(our_stats.iter().any(|l| l == want), "{want}: {our_stats:?}");
    }
    // Independent of Envoy: the identities are the ones the test made.
    let fields: Vec<Vec<&str>> = ours.iter().map(|l| l.split(' ').collect()).collect();
    assert_eq!(fields.len(), 3, "{ours:?}");
    assert_eq!(fields[0][0], client.uri, "peer URI SAN: {ours:?}");
    assert_eq!(fields[0][1], server.uri, "local URI SAN: {ours:?}");
    assert_eq!(fields[0][4], "TLSv1.3", "{ours:?}");
    assert_eq!(fields[0][6].len(), 64, "a SHA-256 fingerprint: {ours:?}");
    assert_eq!(fields[1][0], "-", "no client certificate: {ours:?}");
    assert_eq!(ours[2], "- - - - - - -", "plaintext: {ours:?}");
    if envoy_or_skip("tls_command_operators_log_like_envoy").is_none() {
        return;
    }
    let (envoy, envoy_stats) = run(Kind::Envoy, &pki, &server, &client);
    assert_eq!(envoy, ours, "Envoy's lines, then Outrigger's");
    assert_eq!(
        envoy_stats, our_stats,
        "ssl.* counters: Envoy's, then Outrigger's"
    );
}
