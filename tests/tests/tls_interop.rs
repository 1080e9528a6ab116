//! Mutual TLS between Outrigger and a real Envoy, in both directions, with SPIFFE identities
//! from a CA generated per test: Envoy as the client sidecar in front of an Outrigger server
//! sidecar, Outrigger as the client in front of an Envoy server, a PERMISSIVE-style port (the
//! TLS inspector splitting mTLS from plaintext, as Istio's inbound listener does), and SAN
//! mismatches refused the same way by both proxies, client side and server side.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/transport_sockets/tls/v3/tls.proto

use serde_json::{json, Value};
use tests::curl::{self, Response};
use tests::pki::{Identity, Pki};
use tests::{envoy_or_skip, free_port, Kind, RunningProxy, Upstream};

/// A DownstreamTlsContext requiring a client certificate whose URI SAN is `peer`.
fn downstream_tls(pki: &Pki, me: &Identity, peer: &str) -> Value {
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": true,
            "common_tls_context": common_tls(pki, me, peer, &["h2", "http/1.1"]),
        }
    })
}

/// An UpstreamTlsContext presenting `me` and accepting a server whose URI SAN is `peer`.
fn upstream_tls(pki: &Pki, me: &Identity, peer: &str) -> Value {
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": "outbound_.8080_._.app.default.svc.cluster.local",
            "common_tls_context": common_tls(pki, me, peer, &["http/1.1"]),
        }
    })
}

fn common_tls(pki: &Pki, me: &Identity, peer: &str, alpn: &[&str]) -> Value {
    json!({
        "alpn_protocols": alpn,
        "tls_params": { "tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3" },
        "tls_certificates": [{
            "certificate_chain": { "filename": me.cert },
            "private_key": { "filename": me.key },
        }],
        "validation_context": {
            "trusted_ca": { "filename": pki.root() },
            "match_typed_subject_alt_names": [{ "san_type": "URI", "matcher": { "exact": peer } }],
        }
    })
}

fn hcm(cluster: &str) -> Value {
    json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "ingress",
            "route_config": { "virtual_hosts": [{ "name": "all", "domains": ["*"],
                "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": cluster } }] }] },
            "http_filters": [{ "name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }]
        }
    })
}

/// How a listener takes connections.
enum Inbound {
    Plain,
    Mtls(Value),
    /// The TLS inspector, one chain for `transport_protocol: tls` (terminated with this
    /// context) and one for `raw_buffer`, both to the same cluster.
    Permissive(Value),
    /// Istio's STRICT mode: the TLS inspector and only the `tls` chain.
    Strict(Value),
}

/// One proxy: a listener on `port` (as `inbound` says) routing everything to cluster `next`
/// at 127.0.0.1:`next_port`, over `outbound` TLS when given.
fn bootstrap(
    admin: u16,
    port: u16,
    inbound: Inbound,
    next_port: u16,
    outbound: Option<Value>,
) -> String {
    let address = |p: u16| json!({ "socket_address": { "address": "127.0.0.1", "port_value": p } });
    let mut listener = json!({ "name": "main", "address": address(port) });
    match inbound {
        Inbound::Plain => listener["filter_chains"] = json!([{ "filters": [hcm("next")] }]),
        Inbound::Mtls(tls) => {
            listener["filter_chains"] =
                json!([{ "filters": [hcm("next")], "transport_socket": tls }])
        }
        Inbound::Strict(tls) => {
            listener["listener_filters"] = json!([{ "name": "envoy.filters.listener.tls_inspector",
                "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector" } }]);
            listener["filter_chains"] = json!([
                { "name": "mtls", "filter_chain_match": { "transport_protocol": "tls" },
                  "filters": [hcm("next")], "transport_socket": tls },
            ]);
        }
        Inbound::Permissive(tls) => {
            listener["listener_filters"] = json!([{ "name": "envoy.filters.listener.tls_inspector",
                "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector" } }]);
            listener["filter_chains"] = json!([
                { "name": "mtls", "filter_chain_match": { "transport_protocol": "tls" },
                  "filters": [hcm("next")], "transport_socket": tls },
                { "name": "plaintext", "filter_chain_match": { "transport_protocol": "raw_buffer" },
                  "filters": [hcm("next")] },
            ]);
        }
    }
    let mut cluster = json!({
        "name": "next", "type": "STATIC", "connect_timeout": "2s",
        "load_assignment": { "cluster_name": "next", "endpoints": [{ "lb_endpoints": [
            { "endpoint": { "address": address(next_port) } }] }] }
    });
    if let Some(tls) = outbound {
        cluster["transport_socket"] = tls;
    }
    json!({
        "admin": { "address": address(admin) },
        "static_resources": { "listeners": [listener], "clusters": [cluster] }
    })
    .to_string()
}

/// A running proxy and the port its listener takes requests on.
struct Hop {
    proxy: RunningProxy,
    port: u16,
}

fn start(kind: Kind, inbound: Inbound, next_port: u16, outbound: Option<Value>) -> Hop {
    let (admin, port) = (free_port(), free_port());
    let proxy = RunningProxy::start(
        kind,
        &bootstrap(admin, port, inbound, next_port, outbound),
        &[],
    );
    Hop { proxy, port }
}

fn get(port: u16) -> Response {
    curl::get(&format!("http://127.0.0.1:{port}/hello"))
}

/// A counter from the admin `/stats` (0 when absent).
fn stat(proxy: &RunningProxy, name: &str) -> u64 {
    proxy
        .get("/stats")
        .body
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn expect_ok(r: &Response, what: &str, logs: &[&RunningProxy]) {
    assert!(
        r.status == 200 && r.body == "app",
        "{what}: {} {}\n{}",
        r.status,
        r.body,
        logs.iter()
            .map(|p| p.logs_for_failure())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn envoy_client_sidecar_reaches_an_outrigger_server_over_mutual_tls() {
    let Some(_) = envoy_or_skip("envoy_client_sidecar_reaches_an_outrigger_server_over_mutual_tls")
    else {
        return;
    };
    let pki = Pki::new();
    let (client, server) = (pki.identity("client"), pki.identity("server"));
    let app = Upstream::start("app");
    let outrigger = start(
        Kind::Outrigger,
        Inbound::Mtls(downstream_tls(&pki, &server, &client.uri)),
        app.port(),
        None,
    );
    let envoy = start(
        Kind::Envoy,
        Inbound::Plain,
        outrigger.port,
        Some(upstream_tls(&pki, &client, &server.uri)),
    );
    expect_ok(
        &get(envoy.port),
        "curl → Envoy → mTLS → Outrigger",
        &[&envoy.proxy, &outrigger.proxy],
    );
    let scope = format!("listener.127.0.0.1_{}", outrigger.port);
    assert_eq!(stat(&outrigger.proxy, &format!("{scope}.ssl.handshake")), 1);
    assert_eq!(stat(&envoy.proxy, "cluster.next.ssl.handshake"), 1);
    // A plaintext client is refused by the mTLS-only port.
    assert!(curl::request("GET", &format!("http://127.0.0.1:{}/", outrigger.port), &[]).is_err());
}

#[test]
fn outrigger_client_reaches_an_envoy_server_over_mutual_tls() {
    let Some(_) = envoy_or_skip("outrigger_client_reaches_an_envoy_server_over_mutual_tls") else {
        return;
    };
    let pki = Pki::new();
    let (client, server) = (pki.identity("client"), pki.identity("server"));
    let app = Upstream::start("app");
    let envoy = start(
        Kind::Envoy,
        Inbound::Mtls(downstream_tls(&pki, &server, &client.uri)),
        app.port(),
        None,
    );
    let outrigger = start(
        Kind::Outrigger,
        Inbound::Plain,
        envoy.port,
        Some(upstream_tls(&pki, &client, &server.uri)),
    );
    for _ in 0..3 {
        expect_ok(
            &get(outrigger.port),
            "curl → Outrigger → mTLS → Envoy",
            &[&outrigger.proxy, &envoy.proxy],
        );
    }
    // Keep-alive: one upstream connection, one handshake.
    assert_eq!(stat(&outrigger.proxy, "cluster.next.ssl.handshake"), 1);
    let scope = format!("listener.127.0.0.1_{}", envoy.port);
    assert_eq!(stat(&envoy.proxy, &format!("{scope}.ssl.handshake")), 1);
}

#[test]
fn a_permissive_port_serves_plaintext_and_mutual_tls() {
    let pki = Pki::new();
    let (client, server) = (pki.identity("client"), pki.identity("server"));
    let app = Upstream::start("app");
    let outrigger = start(
        Kind::Outrigger,
        Inbound::Permissive(downstream_tls(&pki, &server, &client.uri)),
        app.port(),
        None,
    );
    let logs = [&outrigger.proxy];
    expect_ok(
        &get(outrigger.port),
        "plaintext curl → permissive port",
        &logs,
    );
    let (cert, key, root) = (
        client.cert.display().to_string(),
        client.key.display().to_string(),
        pki.root().display().to_string(),
    );
    // curl checks the server's name; the SPIFFE certificate has none, so only the chain.
    let mtls = curl::request(
        "GET",
        &format!("https://127.0.0.1:{}/hello", outrigger.port),
        &[
            "--cert",
            &cert,
            "--key",
            &key,
            "--cacert",
            &root,
            "--insecure",
        ],
    )
    .unwrap_or_else(|f| {
        panic!(
            "mTLS curl: {}\n{}",
            f.message,
            outrigger.proxy.logs_for_failure()
        )
    });
    expect_ok(&mtls, "mTLS curl → permissive port", &logs);
    // TLS without a client certificate matches the TLS chain, which requires one.
    let no_cert = curl::request(
        "GET",
        &format!("https://127.0.0.1:{}/hello", outrigger.port),
        &["--insecure"],
    );
    assert!(
        no_cert.is_err(),
        "a TLS client without a certificate was served"
    );
    let scope = format!("listener.127.0.0.1_{}", outrigger.port);
    assert_eq!(stat(&outrigger.proxy, &format!("{scope}.ssl.handshake")), 1);
    assert_eq!(
        stat(&outrigger.proxy, &format!("{scope}.ssl.connection_error")),
        1
    );

    // An Envoy sidecar reaches the same port over mTLS.
    if envoy_or_skip("a_permissive_port_serves_plaintext_and_mutual_tls").is_some() {
        let envoy = start(
            Kind::Envoy,
            Inbound::Plain,
            outrigger.port,
            Some(upstream_tls(&pki, &client, &server.uri)),
        );
        expect_ok(
            &get(envoy.port),
            "curl → Envoy → mTLS → permissive port",
            &[&envoy.proxy, &outrigger.proxy],
        );
    }
}

/// A STRICT port refuses a plaintext client (no chain matches: the connection closes without
/// a response, `no_filter_chain_match` counts it) and serves mutual TLS, in Envoy and
/// Outrigger alike.
#[test]
fn a_strict_port_refuses_plaintext_and_serves_mutual_tls() {
    let pki = Pki::new();
    let (client, server) = (pki.identity("client"), pki.identity("server"));
    let app = Upstream::start("app");
    let run = |kind: Kind| -> Vec<String> {
        let hop = start(
            kind,
            Inbound::Strict(downstream_tls(&pki, &server, &client.uri)),
            app.port(),
            None,
        );
        let plaintext = curl::request("GET", &format!("http://127.0.0.1:{}/hello", hop.port), &[]);
        let mtls = curl::request(
            "GET",
            &format!("https://127.0.0.1:{}/hello", hop.port),
            &[
                "--cert",
                &client.cert.display().to_string(),
                "--key",
                &client.key.display().to_string(),
                "--insecure",
            ],
        );
        let scope = format!("listener.127.0.0.1_{}", hop.port);
        vec![
            format!(
                "plaintext: {}",
                plaintext.map_or_else(
                    |f| format!("no response (curl {:?})", f.exit_code),
                    |r| r.status.to_string()
                )
            ),
            format!(
                "mTLS: {}",
                mtls.map_or_else(
                    |f| format!("no response (curl {:?})", f.exit_code),
                    |r| r.status.to_string()
                )
            ),
            format!(
                "no_filter_chain_match: {}",
                stat(&hop.proxy, &format!("{scope}.no_filter_chain_match"))
            ),
        ]
    };
    let ours = run(Kind::Outrigger);
    assert!(ours[0].starts_with("plaintext: no response"), "{ours:?}");
    assert_eq!(ours[1], "mTLS: 200", "{ours:?}");
    if envoy_or_skip("a_strict_port_refuses_plaintext_and_serves_mutual_tls").is_some() {
        assert_eq!(ours, run(Kind::Envoy));
    }
}

/// What a client sees when the server's identity is not the one it expects: each proxy as the
/// client, against an Envoy server.
#[test]
fn a_server_san_mismatch_is_refused_by_both_clients_alike() {
    let Some(_) = envoy_or_skip("a_server_san_mismatch_is_refused_by_both_clients_alike") else {
        return;
    };
    let pki = Pki::new();
    let (client, server) = (pki.identity("client"), pki.identity("server"));
    let app = Upstream::start("app");
    let envoy_server = start(
        Kind::Envoy,
        Inbound::Mtls(downstream_tls(&pki, &server, &client.uri)),
        app.port(),
        None,
    );
    let wrong = tests::pki::spiffe("someone-else");
    let mut seen = Vec::new();
    for kind in [Kind::Envoy, Kind::Outrigger] {
        let hop = start(
            kind,
            Inbound::Plain,
            envoy_server.port,
            Some(upstream_tls(&pki, &client, &wrong)),
        );
        let r = get(hop.port);
        let fails = stat(&hop.proxy, "cluster.next.ssl.fail_verify_san");
        seen.push((kind.name(), r.status, r.body.clone(), fails));
    }
    eprintln!("{seen:?}");
    let (envoy, outrigger) = (&seen[0], &seen[1]);
    assert_eq!(envoy.1, 503, "{seen:?}");
    assert_eq!(outrigger.1, envoy.1, "{seen:?}");
    assert_eq!(outrigger.2, envoy.2, "{seen:?}");
    assert_eq!((envoy.3, outrigger.3), (1, 1), "{seen:?}");
    assert!(app.requests().is_empty());
}

/// What happens when the client's identity is not the one the server expects: each proxy as
/// the server, behind an Envoy client.
#[test]
fn a_client_san_mismatch_is_refused_by_both_servers_alike() {
    let Some(_) = envoy_or_skip("a_client_san_mismatch_is_refused_by_both_servers_alike") else {
        return;
    };
    let pki = Pki::new();
    let (client, server) = (pki.identity("client"), pki.identity("server"));
    let app = Upstream::start("app");
    let wrong = tests::pki::spiffe("someone-else");
    let mut seen = Vec::new();
    for kind in [Kind::Envoy, Kind::Outrigger] {
        let server_hop = start(
            kind,
            Inbound::Mtls(downstream_tls(&pki, &server, &wrong)),
            app.port(),
            None,
        );
        let client_hop = start(
            Kind::Envoy,
            Inbound::Plain,
            server_hop.port,
            Some(upstream_tls(&pki, &client, &server.uri)),
        );
        let r = get(client_hop.port);
        let scope = format!("listener.127.0.0.1_{}", server_hop.port);
        let fails = stat(&server_hop.proxy, &format!("{scope}.ssl.fail_verify_san"));
        let handshakes = stat(&server_hop.proxy, &format!("{scope}.ssl.handshake"));
        seen.push((kind.name(), r.status, fails, handshakes));
    }
    eprintln!("{seen:?}");
    let (envoy, outrigger) = (&seen[0], &seen[1]);
    assert_eq!(envoy.1, 503, "{seen:?}");
    assert_eq!(outrigger.1, envoy.1, "{seen:?}");
    assert!(envoy.2 >= 1 && outrigger.2 >= 1, "{seen:?}");
    assert_eq!((envoy.3, outrigger.3), (0, 0), "{seen:?}");
    assert!(app.requests().is_empty());
}
