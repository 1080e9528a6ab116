//! Per-endpoint transport sockets (`transport_socket_matches`), as Istio's auto-mTLS uses them:
//! a client sidecar's cluster has an endpoint labelled `tlsMode: istio` (an mTLS server
//! sidecar, real Envoy) and one without (a plaintext app). Envoy and Outrigger run as the
//! client on the same bootstrap, with the certificates as SDS static secrets `default` and
//! `ROOTCA`; both must reach both endpoints, count the same `total_match_count` per match and
//! make one TLS handshake. Then Istio's `istio.alpn` (Outrigger only: stock Envoy does not
//! ship it): against an Envoy server with Istio's inbound chains, which tell mTLS HTTP from
//! mTLS TCP by ALPN, requests through the filter land on the HTTP chain, others on the TCP one.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/cluster/v3/cluster.proto#envoy-v3-api-field-config-cluster-v3-cluster-transport-socket-matches

use serde_json::{json, Value};
use tests::curl;
use tests::pki::{Identity, Pki};
use tests::{envoy_or_skip, free_port, Kind, RunningProxy, Upstream};

fn address(port: u16) -> Value {
    json!({ "socket_address": { "address": "127.0.0.1", "port_value": port } })
}

fn router() -> Value {
    json!({ "name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } })
}

/// A connection manager sending everything to `cluster`, after `filters`.
fn hcm(cluster: &str, mut filters: Vec<Value>) -> Value {
    filters.push(router());
    json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "outbound",
            "route_config": { "virtual_hosts": [{ "name": "all", "domains": ["*"],
                "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": cluster } }] }] },
            "http_filters": filters,
        }
    })
}

/// A connection manager answering every request with `body` itself.
fn answering(body: &str) -> Value {
    json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "inbound",
            "route_config": { "virtual_hosts": [{ "name": "all", "domains": ["*"],
                "routes": [{ "match": { "prefix": "/" },
                    "direct_response": { "status": 200, "body": { "inline_string": body } } }] }] },
            "http_filters": [router()],
        }
    })
}

/// Istio's outbound auto-mTLS socket: SDS `default` and `ROOTCA` (static secrets here), the
/// server's SPIFFE identity, ALPN `istio-peer-exchange, istio` (+ `h2` for HTTP/2 clusters).
fn istio_upstream_tls(server: &Identity, h2: bool) -> Value {
    let mut alpn = vec!["istio-peer-exchange", "istio"];
    if h2 {
        alpn.push("h2");
    }
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": "outbound_.8080_._.app.default.svc.cluster.local",
            "common_tls_context": {
                "alpn_protocols": alpn,
                "tls_certificate_sds_secret_configs": [{ "name": "default" }],
                "combined_validation_context": {
                    "default_validation_context": {
                        "match_typed_subject_alt_names": [{ "san_type": "URI", "matcher": { "exact": server.uri } }]
                    },
                    "validation_context_sds_secret_config": { "name": "ROOTCA" }
                }
            }
        }
    })
}

/// The static secrets Istio's agent would serve over SDS.
fn secrets(pki: &Pki, me: &Identity) -> Value {
    json!([
        { "name": "default", "tls_certificate": {
            "certificate_chain": { "filename": me.cert }, "private_key": { "filename": me.key } } },
        { "name": "ROOTCA", "validation_context": { "trusted_ca": { "filename": pki.root() } } },
    ])
}

/// The two sockets Istio sends for an auto-mTLS cluster.
fn istio_matches(server: &Identity, h2: bool) -> Value {
    json!([
        { "name": "tlsMode-istio", "match": { "tlsMode": "istio" },
          "transport_socket": istio_upstream_tls(server, h2) },
        { "name": "tlsMode-disabled", "match": {},
          "transport_socket": { "name": "envoy.transport_sockets.raw_buffer", "typed_config": {
              "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer" } } },
    ])
}

fn endpoint(port: u16, istio: bool) -> Value {
    let mut e = json!({ "endpoint": { "address": address(port) } });
    if istio {
        e["metadata"] = json!({ "filter_metadata": {
            "envoy.transport_socket_match": { "tlsMode": "istio" },
            "istio": { "workload": "app;default;app;v1;Kubernetes" } } });
    }
    e
}

fn cluster(name: &str, endpoints: Vec<Value>, server: &Identity, h2: bool) -> Value {
    let mut c = json!({
        "name": name, "type": "STATIC", "connect_timeout": "2s",
        "transport_socket_matches": istio_matches(server, h2),
        "load_assignment": { "cluster_name": name, "endpoints": [{ "lb_endpoints": endpoints }] }
    });
    if h2 {
        c["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": { "http2_protocol_options": {} } } });
    }
    c
}

/// Istio's inbound mTLS context: client certificate required, ALPN `alpn`.
fn inbound_tls(pki: &Pki, me: &Identity, peer: &Identity, alpn: &[&str]) -> Value {
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": true,
            "common_tls_context": {
                "alpn_protocols": alpn,
                "tls_certificates": [{ "certificate_chain": { "filename": me.cert },
                    "private_key": { "filename": me.key } }],
                "validation_context": {
                    "trusted_ca": { "filename": pki.root() },
                    "match_typed_subject_alt_names": [{ "san_type": "URI", "matcher": { "exact": peer.uri } }]
                }
            }
        }
    })
}

/// An Envoy server sidecar with Istio's inbound mTLS chains for one port: the HTTP chain
/// (ALPN `istio-http/*`, `istio-h2`) answers `http-chain`, the TCP chain (ALPN
/// `istio-peer-exchange`, `istio`) answers `tcp-chain`, and a TLS client offering neither
/// (plain mTLS, as without `istio.alpn`) lands on the TCP chain's fallback, as Istio's
/// STRICT TCP chain takes it.
fn istio_server(pki: &Pki, server: &Identity, client: &Identity, port: u16) -> RunningProxy {
    let inspector = json!([{ "name": "envoy.filters.listener.tls_inspector", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector" } }]);
    let bootstrap = json!({
        "admin": { "address": address(free_port()) },
        "static_resources": { "listeners": [{
            "name": "inbound", "address": address(port), "listener_filters": inspector,
            "filter_chains": [
                { "name": "http", "filter_chain_match": { "transport_protocol": "tls",
                    "application_protocols": ["istio-http/1.0", "istio-http/1.1", "istio-h2"] },
                  "filters": [answering("http-chain")],
                  "transport_socket": inbound_tls(pki, server, client, &["h2", "http/1.1"]) },
                { "name": "tcp", "filter_chain_match": { "transport_protocol": "tls" },
                  "filters": [answering("tcp-chain")],
                  "transport_socket": inbound_tls(pki, server, client, &["istio-peer-exchange", "h2", "http/1.1"]) },
            ]
        }] }
    });
    RunningProxy::start(Kind::Envoy, &bootstrap.to_string(), &[])
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

fn get(port: u16) -> (u16, String) {
    let r = curl::get(&format!("http://127.0.0.1:{port}/hello"));
    (r.status, r.body)
}

#[test]
fn tls_mode_istio_endpoints_get_mutual_tls_and_the_others_plaintext_as_in_envoy() {
    let Some(_) = envoy_or_skip(
        "tls_mode_istio_endpoints_get_mutual_tls_and_the_others_plaintext_as_in_envoy",
    ) else {
        return;
    };
    let pki = Pki::new();
    let (client, server) = (pki.identity("client"), pki.identity("server"));
    let (secure_app, plain_app) = (Upstream::start("secure"), Upstream::start("plain"));
    // The mTLS server sidecar in front of the secure app: real Envoy.
    let server_port = free_port();
    let server_bootstrap = json!({
        "admin": { "address": address(free_port()) },
        "static_resources": {
            "listeners": [{ "name": "inbound", "address": address(server_port),
                "filter_chains": [{ "filters": [hcm("app", vec![])],
                    "transport_socket": inbound_tls(&pki, &server, &client, &["h2", "http/1.1"]) }] }],
            "clusters": [{ "name": "app", "type": "STATIC", "connect_timeout": "2s",
                "load_assignment": { "cluster_name": "app", "endpoints": [{ "lb_endpoints": [
                    { "endpoint": { "address": address(secure_app.port()) } }] }] } }]
        }
    });
    let server_proxy = RunningProxy::start(Kind::Envoy, &server_bootstrap.to_string(), &[]);
    let mut outcomes = Vec::new();
    for kind in [Kind::Envoy, Kind::Outrigger] {
        let port = free_port();
        let bootstrap = json!({
            "admin": { "address": address(free_port()) },
            "static_resources": {
                "listeners": [{ "name": "outbound", "address": address(port),
                    "filter_chains": [{ "filters": [hcm("svc", vec![])] }] }],
                "clusters": [cluster("svc",
                    vec![endpoint(server_port, true), endpoint(plain_app.port(), false)],
                    &server, false)],
                "secrets": secrets(&pki, &client),
            }
        });
        // One worker: Envoy pools per worker, and the connection counts are compared.
        let proxy = RunningProxy::start(kind, &bootstrap.to_string(), &["--concurrency", "1"]);
        let mut bodies: Vec<String> = (0..4)
            .map(|_| {
                let (status, body) = get(port);
                assert_eq!(
                    status,
                    200,
                    "{kind:?}: {body}\n{}",
                    proxy.logs_for_failure()
                );
                body
            })
            .collect();
        bodies.sort();
        let stats: Vec<(String, Option<u64>)> = [
            "cluster.svc.tlsMode-istio.total_match_count",
            "cluster.svc.tlsMode-disabled.total_match_count",
            "cluster.svc.default.total_match_count",
            "cluster.svc.ssl.handshake",
            "cluster.svc.upstream_cx_total",
        ]
        .iter()
        .map(|name| (name.to_string(), stat(&proxy, name)))
        // And what the handshake negotiated (`ssl.versions.*`, `ssl.ciphers.*`, ...), every
        // non-zero counter of the cluster's TLS (Envoy's certificate expiry gauges aside).
        .chain(
            proxy
                .get("/stats")
                .body
                .lines()
                .filter(|l| {
                    l.starts_with("cluster.svc.ssl.")
                        && !l.starts_with("cluster.svc.ssl.certificate.")
                        && !l.ends_with(": 0")
                })
                .filter_map(|l| l.split_once(": "))
                .map(|(name, value)| (name.to_string(), value.parse().ok())),
        )
        .collect();
        outcomes.push((kind, bodies, stats));
    }
    let (_, envoy_bodies, envoy_stats) = &outcomes[0];
    let (_, outrigger_bodies, outrigger_stats) = &outcomes[1];
    assert_eq!(envoy_bodies, &["plain", "plain", "secure", "secure"]);
    assert_eq!(outrigger_bodies, envoy_bodies);
    assert_eq!(outrigger_stats, envoy_stats);
    assert_eq!(
        envoy_stats[0..4].iter().map(|s| s.1).collect::<Vec<_>>(),
        [Some(1), Some(1), Some(0), Some(1)],
        "one endpoint per match, one handshake (keep-alive)"
    );
    // Both clients' requests to the secure app came over mutual TLS through the server.
    assert_eq!(
        stat(
            &server_proxy,
            &format!("listener.127.0.0.1_{server_port}.ssl.handshake")
        ),
        Some(2)
    );
    assert_eq!(secure_app.requests().len(), 4);
    assert_eq!(plain_app.requests().len(), 4);
}

/// Istio's `istio.alpn` filter config, as pilot writes it.
fn istio_alpn() -> Value {
    json!({ "name": "istio.alpn", "typed_config": {
        "@type": "type.googleapis.com/istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig",
        "alpn_override": [
            { "upstream_protocol": "HTTP10", "alpn_override": ["istio-http/1.0", "istio", "http/1.0"] },
            { "upstream_protocol": "HTTP11", "alpn_override": ["istio-http/1.1", "istio", "http/1.1"] },
            { "upstream_protocol": "HTTP2", "alpn_override": ["istio-h2", "istio", "h2"] },
        ] } })
}

#[test]
fn istio_alpn_sends_mutual_tls_http_to_the_servers_http_chain() {
    let Some(_) = envoy_or_skip("istio_alpn_sends_mutual_tls_http_to_the_servers_http_chain")
    else {
        return;
    };
    let pki = Pki::new();
    let (client, server) = (pki.identity("client"), pki.identity("server"));
    let server_port = free_port();
    let envoy = istio_server(&pki, &server, &client, server_port);
    let [with_alpn, without_alpn, h2, opted_out] = [0; 4].map(|_| free_port());
    let listener = |name: &str, port: u16, cluster: &str, alpn: bool| {
        let filters = if alpn { vec![istio_alpn()] } else { vec![] };
        json!({ "name": name, "address": address(port),
            "filter_chains": [{ "filters": [hcm(cluster, filters)] }] })
    };
    let mut no_override = cluster(
        "svc-opted-out",
        vec![endpoint(server_port, true)],
        &server,
        false,
    );
    no_override["metadata"] =
        json!({ "filter_metadata": { "istio": { "alpn_override": "false" } } });
    let bootstrap = json!({
        "admin": { "address": address(free_port()) },
        "static_resources": {
            "listeners": [
                listener("with-alpn", with_alpn, "svc", true),
                listener("without-alpn", without_alpn, "svc", false),
                listener("h2", h2, "svc-h2", true),
                listener("opted-out", opted_out, "svc-opted-out", true),
            ],
            "clusters": [
                cluster("svc", vec![endpoint(server_port, true)], &server, false),
                cluster("svc-h2", vec![endpoint(server_port, true)], &server, true),
                no_override,
            ],
            "secrets": secrets(&pki, &client),
        }
    });
    let outrigger = RunningProxy::start(Kind::Outrigger, &bootstrap.to_string(), &[]);
    let logs = || {
        format!(
            "{}\n{}",
            outrigger.logs_for_failure(),
            envoy.logs_for_failure()
        )
    };
    // Alternating keeps both kinds of connection in the same pool map: a connection opened
    // with one ALPN offer must never carry a request that wants the other.
    for _ in 0..2 {
        assert_eq!(get(with_alpn), (200, "http-chain".into()), "{}", logs());
        assert_eq!(get(without_alpn), (200, "tcp-chain".into()), "{}", logs());
    }
    assert_eq!(get(h2), (200, "http-chain".into()), "{}", logs());
    assert_eq!(get(opted_out), (200, "tcp-chain".into()), "{}", logs());
    // One connection per offer to `svc`, each reused: two handshakes for four requests.
    assert_eq!(stat(&outrigger, "cluster.svc.ssl.handshake"), Some(2));
    // HTTP/2 was negotiated by ALPN (the server chain offers h2 first).
    let http2 = stat(&envoy, "http.inbound.downstream_cx_http2_total");
    assert_eq!(http2, Some(1), "{}", logs());
}
