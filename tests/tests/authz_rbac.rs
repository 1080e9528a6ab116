//! The HTTP and network RBAC filters compared with Envoy, on policies shaped like those istiod
//! generates for AuthorizationPolicies: a DENY filter, then an ALLOW filter with shadow rules
//! (Istio's dry run) and a route that disables it; principals from mutual TLS, from
//! `x-forwarded-for`, and any; permissions on `:method`, paths (query ignored) and headers.
//! For each request both proxies must answer the same status, body and response code details,
//! forward the same requests to the upstream, and count the same `rbac` stats. A TCP listener
//! pair checks the network filter: an allowed connection echoes, a denied one is closed on its
//! first bytes without them reaching the upstream.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/rbac_filter
//! and https://www.envoyproxy.io/docs/envoy/latest/configuration/listeners/network_filters/rbac_filter

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tests::pki::{Identity, Pki};
use tests::scripted::{Behaviour, Scripted};
use tests::{envoy_or_skip, free_port, Kind, RunningProxy, Upstream};

const RBAC: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
const NETWORK_RBAC: &str = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";

fn any() -> Value {
    json!([{ "any": true }])
}

/// Istio's inbound HTTP chain: DENY policies, then ALLOW policies with dry-run shadow rules.
fn http_filters(client: &Identity) -> Value {
    json!([
        { "name": "deny", "typed_config": { "@type": RBAC, "rules": { "action": "DENY", "policies": {
            "ns[foo]-policy[deny-admin]-rule[0]": {
                "permissions": [{ "and_rules": { "rules": [{ "or_rules": { "rules": [
                    { "url_path": { "path": { "prefix": "/api/admin" } } }] } }] } }],
                "principals": [{ "and_ids": { "ids": [{ "any": true }] } }] } } },
            "shadow_rules_stat_prefix": "istio_dry_run_deny_" } },
        { "name": "authz", "typed_config": { "@type": RBAC,
            "rules": { "policies": {
                "ns[foo]-policy[get]-rule[0]": {
                    "permissions": [{ "and_rules": { "rules": [
                        { "or_rules": { "rules": [{ "header": { "name": ":method", "string_match": { "exact": "GET" } } }] } },
                        { "or_rules": { "rules": [{ "url_path": { "path": { "prefix": "/api/" } } }] } }] } }],
                    "principals": [{ "and_ids": { "ids": [{ "any": true }] } }] },
                "ns[foo]-policy[mtls]-rule[0]": {
                    "permissions": [{ "and_rules": { "rules": [{ "any": true }] } }],
                    "principals": [{ "and_ids": { "ids": [{ "or_ids": { "ids": [
                        { "authenticated": { "principal_name": { "exact": client.uri } } },
                        { "authenticated": { "principal_name": { "safe_regex": { "regex": ".*/ns/other/.*" } } } }] } }] } }] },
                "ns[foo]-policy[xff]-rule[0]": {
                    "permissions": [{ "header": { "name": "x-test", "string_match": { "exact": "xff" } } }],
                    "principals": [{ "remote_ip": { "address_prefix": "10.1.2.3", "prefix_len": 32 } }] },
                "ns[foo]-policy[jwt]-rule[0]": {
                    "permissions": any(),
                    "principals": [{ "metadata": { "filter": "istio_authn",
                        "path": [{ "key": "request.auth.principal" }],
                        "value": { "string_match": { "safe_regex": { "regex": ".+" } } } } }] } } },
            "shadow_rules": { "action": "DENY", "policies": {
                "ns[foo]-policy[dry]-rule[0]": {
                    "permissions": [{ "url_path": { "path": { "exact": "/api/shadow" } } }],
                    "principals": any() } } },
            "shadow_rules_stat_prefix": "istio_dry_run_allow_" } },
        { "name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }
    ])
}

fn bootstrap(
    pki: &Pki,
    server: &Identity,
    client: &Identity,
    ports: &Ports,
    log: &std::path::Path,
) -> String {
    let address = |p: u16| json!({ "socket_address": { "address": "127.0.0.1", "port_value": p } });
    let log = |format: &str| {
        json!([{ "name": "envoy.access_loggers.file", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": log, "log_format": { "text_format_source": { "inline_string": format } } } }])
    };
    let hcm = json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "inbound_0.0.0.0_8080",
            "access_log": log("http %REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_CODE_DETAILS% %UPSTREAM_CLUSTER% %ROUTE_NAME%\n"),
            "route_config": { "virtual_hosts": [{ "name": "all", "domains": ["*"], "routes": [
                { "match": { "prefix": "/open/" }, "route": { "cluster": "app" },
                  "typed_per_filter_config": { "authz": {
                      "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute" } } },
                { "match": { "prefix": "/api/" }, "route": { "cluster": "app" } }] }] },
            "http_filters": http_filters(client),
        }
    });
    let tls = json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": {
                "tls_certificates": [{
                    "certificate_chain": { "filename": server.cert },
                    "private_key": { "filename": server.key },
                }],
                "validation_context": { "trusted_ca": { "filename": pki.root() } },
            }
        }
    });
    let tcp = |name: &str, action: &str, port: u16| {
        json!({
            "name": name, "address": address(port),
            "filter_chains": [{ "filters": [
                { "name": "envoy.filters.network.rbac", "typed_config": { "@type": NETWORK_RBAC,
                    "stat_prefix": format!("{name}."),
                    "rules": { "action": action, "policies": { "by-port": {
                        "permissions": [{ "and_rules": { "rules": [{ "or_rules": { "rules": [
                            { "destination_port": port }] } }] } }],
                        "principals": [{ "and_ids": { "ids": [{ "any": true }] } }] } } },
                    "shadow_rules": { "policies": {} },
                    "shadow_rules_stat_prefix": "istio_dry_run_" } },
                { "name": "envoy.filters.network.tcp_proxy", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                    "stat_prefix": name, "cluster": "echo",
                    "access_log": log("tcp %CONNECTION_TERMINATION_DETAILS% %BYTES_RECEIVED% %BYTES_SENT%\n") } }] }]
        })
    };
    let cluster = |name: &str, port: u16| {
        json!({
            "name": name, "type": "STATIC", "connect_timeout": "2s",
            "load_assignment": { "cluster_name": name, "endpoints": [{ "lb_endpoints": [
                { "endpoint": { "address": address(port) } }] }] }
        })
    };
    json!({
        "admin": { "address": address(ports.admin) },
        "static_resources": {
            "listeners": [
                {
                    "name": "http", "address": address(ports.http),
                    "listener_filters": [{ "name": "envoy.filters.listener.tls_inspector",
                        "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector" } }],
                    "filter_chains": [
                        { "filter_chain_match": { "transport_protocol": "tls" }, "filters": [hcm], "transport_socket": tls },
                        { "filter_chain_match": { "transport_protocol": "raw_buffer" }, "filters": [hcm] },
                    ]
                },
                tcp("tcp_allow", "ALLOW", ports.tcp_allow),
                tcp("tcp_deny", "DENY", ports.tcp_deny),
            ],
            "clusters": [cluster("app", ports.app), cluster("echo", ports.echo)]
        }
    })
    .to_string()
}

struct Ports {
    admin: u16,
    http: u16,
    tcp_allow: u16,
    tcp_deny: u16,
    app: u16,
    echo: u16,
}

/// What one proxy did: a line per request or connection, its rbac stats, its access log.
#[derive(Debug, PartialEq, Eq)]
struct Observed {
    requests: Vec<String>,
    stats: Vec<String>,
    log: Vec<String>,
}

fn run(kind: Kind, pki: &Pki, server: &Identity, client: &Identity) -> Observed {
    let app = Upstream::start("app");
    let echo = Scripted::start("echo", Behaviour::TcpEcho);
    let ports = Ports {
        admin: free_port(),
        http: free_port(),
        tcp_allow: free_port(),
        tcp_deny: free_port(),
        app: app.port(),
        echo: echo.port(),
    };
    let dir = tempfile::tempdir().expect("a temp dir");
    let log_path = dir.path().join("access.log");
    let proxy = RunningProxy::start(
        kind,
        &bootstrap(pki, server, client, &ports, &log_path),
        &[],
    );
    let cert = client.cert.display().to_string();
    let key = client.key.display().to_string();
    let http = |path: &str| format!("http://127.0.0.1:{}{path}", ports.http);
    let https = |path: &str| format!("https://127.0.0.1:{}{path}", ports.http);
    let cases: Vec<(&str, &str, String, Vec<&str>)> = vec![
        ("allowed GET", "GET", http("/api/x?a=b"), vec![]),
        ("POST without a principal", "POST", http("/api/x"), vec![]),
        ("denied path", "GET", http("/api/admin/users"), vec![]),
        ("no route", "GET", http("/nope"), vec![]),
        ("route disables authz", "POST", http("/open/x"), vec![]),
        (
            "mTLS principal",
            "POST",
            https("/api/x"),
            vec!["-k", "--cert", &cert, "--key", &key],
        ),
        ("one-way TLS", "POST", https("/api/x"), vec!["-k"]),
        (
            "remote_ip from x-forwarded-for",
            "POST",
            http("/api/x"),
            vec!["-H", "x-forwarded-for: 10.1.2.3", "-H", "x-test: xff"],
        ),
        (
            "x-forwarded-for without the header",
            "POST",
            http("/api/x"),
            vec!["-H", "x-forwarded-for: 10.1.2.3"],
        ),
        ("shadow denied", "GET", http("/api/shadow"), vec![]),
        // Envoy's HTTP/1 codec refuses methods outside its list before any filter runs.
        ("lowercase method", "get", http("/api/x"), vec![]),
        ("unknown method", "FOO", http("/api/x"), vec![]),
    ];
    let mut requests = Vec::new();
    for (what, method, url, args) in &cases {
        let before = app.requests().len();
        let r = tests::curl::request(method, url, args)
            .unwrap_or_else(|f| panic!("{}: {what}: {f:?}", kind.name()));
        std::thread::sleep(Duration::from_millis(50));
        let forwarded = app.requests().len() - before;
        requests.push(format!(
            "{what}: {} {:?} forwarded={forwarded}",
            r.status,
            r.body.trim()
        ));
    }
    for (name, port) in [("tcp_allow", ports.tcp_allow), ("tcp_deny", ports.tcp_deny)] {
        let connections = echo.connections();
        requests.push(format!("{name}: {}", tcp_exchange(port)));
        // Envoy connects upstream before the first byte is checked; so must Outrigger.
        let deadline = Instant::now() + Duration::from_secs(3);
        while echo.connections() == connections && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        requests.push(format!(
            "{name}: upstream connections {}",
            echo.connections() - connections
        ));
    }
    let stats = proxy.get("/stats?filter=rbac");
    let mut stats: Vec<String> = stats.body.lines().map(str::to_string).collect();
    stats.sort();
    // Envoy writes access logs in the background: wait for every line.
    let expected = cases.len() + 2;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut log = Vec::new();
    while Instant::now() < deadline {
        log = std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        if log.len() >= expected {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    log.sort();
    drop(proxy);
    Observed {
        requests,
        stats,
        log,
    }
}

/// Sends `ping` and reads until the proxy closes: `echoed "…"`, or what the client saw.
fn tcp_exchange(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("a read timeout");
    // Give the proxy time to connect upstream first, as a client that pauses would.
    std::thread::sleep(Duration::from_millis(200));
    s.write_all(b"ping").expect("write");
    let mut got = [0u8; 16];
    match s.read(&mut got) {
        Ok(0) => "closed".to_string(),
        Ok(n) => format!("echoed {:?}", String::from_utf8_lossy(&got[..n])),
        Err(e) => format!("error {:?}", e.kind()),
    }
}

#[test]
fn rbac_filters_decide_like_envoy() {
    let pki = Pki::new();
    let server = pki.identity("server");
    let client = pki.identity("sleep");
    let ours = run(Kind::Outrigger, &pki, &server, &client);
    // Independent of Envoy: what Istio's policies mean.
    let line = |what: &str| {
        ours.requests
            .iter()
            .find(|l| l.starts_with(&format!("{what}:")))
            .cloned()
            .unwrap_or_default()
    };
    assert!(line("allowed GET").contains("200"), "{ours:#?}");
    assert_eq!(
        line("POST without a principal"),
        "POST without a principal: 403 \"RBAC: access denied\" forwarded=0"
    );
    assert!(line("mTLS principal").contains(" 200 "), "{ours:#?}");
    assert!(line("one-way TLS").contains(" 403 "), "{ours:#?}");
    assert_eq!(line("tcp_deny"), "tcp_deny: closed");
    assert!(
        ours.stats
            .contains(&"http.inbound_0.0.0.0_8080.rbac.denied: 5".to_string()),
        "{ours:#?}"
    );
    // A denial after the route is resolved names the route's cluster, as Envoy's logs do.
    assert!(
        ours.log
            .iter()
            .any(|l| l
                .starts_with("http POST /api/x 403 rbac_access_denied_matched_policy[none] app ")),
        "{:#?}",
        ours.log
    );
    if envoy_or_skip("rbac_filters_decide_like_envoy").is_none() {
        return;
    }
    let envoy = run(Kind::Envoy, &pki, &server, &client);
    assert_eq!(ours, envoy);
}
