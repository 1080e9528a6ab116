//! Istio's HTTP metadata exchange and standard metrics between two Outrigger sidecars: a
//! client sidecar (outbound listener, workload `client-v1` of namespace `front`) in front of a
//! server sidecar (inbound listener, workload `server-v2` of namespace `back`) in front of a
//! scripted app (`tests::istio_pair`). HTTP/1.1, HTTP/2 and gRPC requests go through both;
//! both proxies' `/stats/prometheus` must show `istio_requests_total` and the three
//! histograms with the label values `shared/reference/istio-contract.md` §7 gives (Istio's
//! `istio_stats.cc` and its golden files `istio/proxy:testdata/metric/*.yaml.tmpl` are the
//! oracle: the Envoy 1.40 on this machine lacks Istio's contrib filters, so it cannot be run
//! as one). The gRPC message metrics are in `istio_grpc_stats.rs`.

use std::collections::BTreeMap;
use tests::istio::requests_total;
use tests::istio_pair::*;
use tests::pki::Pki;
use tests::scripted::{Behaviour, Scripted};
use tests::upstream::Reply;
use tests::{curl, Kind, Ports, RunningProxy};

fn label_names(body: &str) -> Vec<String> {
    let line = body
        .lines()
        .find(|l| l.starts_with("istio_requests_total{"))
        .expect("a series");
    line.split("\",")
        .filter_map(|p| {
            p.split_once("=\"")
                .map(|(k, _)| k.trim_start_matches("istio_requests_total{").to_string())
        })
        .collect()
}

#[test]
fn two_sidecars_exchange_metadata_and_report_istio_metrics() {
    let app = Scripted::start(
        "app",
        Behaviour::Reply(Reply {
            status: 200,
            headers: vec![("grpc-status".into(), "0".into())],
            body: "hello\n".into(),
        }),
    );
    let ports =
        Ports::new(&["client", "server", "client_admin", "server_admin"]).with("app", app.port());
    let (client_yaml, server_yaml) = bootstraps(&ports, None);
    let server = RunningProxy::start(Kind::Outrigger, &server_yaml, &[]);
    let client = RunningProxy::start(Kind::Outrigger, &client_yaml, &[]);
    let url = format!("http://127.0.0.1:{}/hello", ports.get("client"));

    let h1 = curl::request("GET", &url, &["--http1.1"]).expect("HTTP/1.1");
    assert_eq!(h1.status, 200, "{}", server.logs_for_failure());
    // The client's app sees neither side's exchange headers: the client sidecar strips the
    // server's from the response.
    assert_eq!(h1.header("x-envoy-peer-metadata"), None);
    assert_eq!(h1.header("x-envoy-peer-metadata-id"), None);
    for _ in 0..2 {
        let h2 = curl::request("GET", &url, &["--http2-prior-knowledge"]).expect("HTTP/2");
        assert_eq!(h2.status, 200);
    }
    let grpc = curl::request(
        "POST",
        &format!("http://127.0.0.1:{}/pkg.Svc/Call", ports.get("client")),
        &[
            "--http2-prior-knowledge",
            "-H",
            "content-type: application/grpc",
            "--data",
            "grpc-frame",
        ],
    )
    .expect("gRPC");
    assert_eq!(grpc.status, 200);
    // Garbage from a peer is no peer, and the request goes through.
    let garbage = format!("http://127.0.0.1:{}/garbage", ports.get("server"));
    let g = curl::request(
        "GET",
        &garbage,
        &[
            "-H",
            "x-envoy-peer-metadata: %%%not-base64",
            "-H",
            "x-envoy-peer-metadata-id: x",
        ],
    )
    .expect("garbage survives");
    assert_eq!(g.status, 200);
    let g = curl::request("GET", &garbage, &["-H", "x-envoy-peer-metadata: Dw=="])
        .expect("not a Struct survives");
    assert_eq!(g.status, 200);

    // The app never sees the exchange headers.
    let received = app.requests();
    assert_eq!(received.len(), 6);
    for r in &received {
        assert_eq!(r.header("x-envoy-peer-metadata"), None, "{r:?}");
        assert_eq!(r.header("x-envoy-peer-metadata-id"), None, "{r:?}");
    }

    // Both ends record at stream end; give the last log a moment.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let client_body = client.get("/stats/prometheus").body;
    let server_body = server.get("/stats/prometheus").body;
    let expected_names: Vec<String> = [
        "reporter",
        "source_workload",
        "source_canonical_service",
        "source_canonical_revision",
        "source_workload_namespace",
        "source_principal",
        "source_app",
        "source_version",
        "source_cluster",
        "destination_workload",
        "destination_workload_namespace",
        "destination_principal",
        "destination_app",
        "destination_version",
        "destination_service",
        "destination_canonical_service",
        "destination_canonical_revision",
        "destination_service_name",
        "destination_service_namespace",
        "destination_cluster",
        "request_protocol",
        "response_code",
        "grpc_response_status",
        "response_flags",
        "connection_security_policy",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(label_names(&client_body), expected_names);
    assert_eq!(label_names(&server_body), expected_names);
    assert!(client_body.contains("# TYPE istio_requests_total counter\n"));
    assert!(client_body.contains("# TYPE istio_request_duration_milliseconds histogram\n"));
    assert!(client_body.contains("istio_build{component=\"proxy\",tag=\"1.24.2\"} 1\n"));
    assert!(!client_body.contains("envoy_istio"), "no envoy_ prefix");
    // Without the gRPC statistics filter there are no message counts to report (Istio reads
    // them from that filter's state).
    assert!(!client_body.contains("istio_request_messages_total"));
    assert!(!server_body.contains("istio_response_messages_total"));

    // Client side: reporter=source, the local workload is the source, the peer (from the
    // server's response headers) the destination.
    let pairs = |m: &BTreeMap<String, String>, keys: &[&str]| -> Vec<String> {
        keys.iter().map(|k| format!("{k}={}", m[*k])).collect()
    };
    let series = requests_total(&client_body);
    let http = series
        .iter()
        .find(|(m, _)| m["request_protocol"] == "http")
        .expect("an http series on the client");
    assert_eq!(
        pairs(
            &http.0,
            &expected_names
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
        ),
        [
            "reporter=source",
            "source_workload=client-v1",
            "source_canonical_service=client",
            "source_canonical_revision=v1",
            "source_workload_namespace=front",
            "source_principal=unknown",
            "source_app=client",
            "source_version=v1",
            "source_cluster=Kubernetes",
            "destination_workload=server-v2",
            "destination_workload_namespace=back",
            "destination_principal=unknown",
            "destination_app=server",
            "destination_version=v2",
            "destination_service=server.back.svc.cluster.local",
            "destination_canonical_service=server",
            "destination_canonical_revision=v2",
            "destination_service_name=server",
            "destination_service_namespace=back",
            "destination_cluster=Kubernetes",
            "request_protocol=http",
            "response_code=200",
            "grpc_response_status=",
            "response_flags=-",
            "connection_security_policy=unknown",
        ]
    );
    // HTTP/1.1 and HTTP/2 requests share a series (the protocol label is http for both).
    assert_eq!(http.1, 3, "{client_body}");
    let grpc_series = series
        .iter()
        .find(|(m, _)| m["request_protocol"] == "grpc")
        .expect("a grpc series on the client");
    assert_eq!(grpc_series.0["grpc_response_status"], "0");
    assert_eq!(grpc_series.1, 1);
    assert!(client_body.contains("istio_request_duration_milliseconds_count{reporter=\"source\""));

    // Server side: reporter=destination, the peer (from the request headers) the source.
    let series = requests_total(&server_body);
    let http = series
        .iter()
        .find(|(m, _)| m["request_protocol"] == "http" && m["source_workload"] == "client-v1")
        .expect("an http series on the server");
    assert_eq!(
        pairs(
            &http.0,
            &expected_names
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
        ),
        [
            "reporter=destination",
            "source_workload=client-v1",
            "source_canonical_service=client",
            "source_canonical_revision=v1",
            "source_workload_namespace=front",
            "source_principal=unknown",
            "source_app=client",
            "source_version=v1",
            "source_cluster=Kubernetes",
            "destination_workload=server-v2",
            "destination_workload_namespace=back",
            "destination_principal=unknown",
            "destination_app=server",
            "destination_version=v2",
            // disable_host_header_fallback: the local canonical name.
            "destination_service=server",
            "destination_canonical_service=server",
            "destination_canonical_revision=v2",
            "destination_service_name=server",
            "destination_service_namespace=back",
            "destination_cluster=Kubernetes",
            "request_protocol=http",
            "response_code=200",
            "grpc_response_status=",
            "response_flags=-",
            "connection_security_policy=none",
        ]
    );
    assert_eq!(http.1, 3);
    // The garbage requests came with no usable peer: unknown source, counted all the same.
    let unknown = series
        .iter()
        .find(|(m, _)| m["source_workload"] == "unknown")
        .expect("the garbage requests' series");
    assert_eq!(unknown.1, 2);
    assert_eq!(unknown.0["source_canonical_revision"], "latest");
    // Histogram counts match the request counts.
    let count_line = server_body
        .lines()
        .find(|l| {
            l.starts_with("istio_response_bytes_count{")
                && l.contains("source_workload=\"unknown\"")
        })
        .expect("a response bytes count");
    assert!(count_line.ends_with(" 2"), "{count_line}");

    promtool_accepts(&client_body);
    promtool_accepts(&server_body);
}

/// Over mutual TLS the server side knows both identities: the client's certificate is the
/// source principal, its own the destination principal, and the policy is `mutual_tls`. The
/// client side takes the same principals from its upstream connection.
#[test]
fn principals_and_mutual_tls_come_from_the_connection() {
    let app = Scripted::start("app", Behaviour::Reply(Reply::text("hello\n")));
    let pki = Pki::new();
    let (client_id, server_id) = (pki.identity("client"), pki.identity("server"));
    let mtls = Mtls {
        pki: &pki,
        client: &client_id,
        server: &server_id,
    };
    let ports =
        Ports::new(&["client", "server", "client_admin", "server_admin"]).with("app", app.port());
    let (client_yaml, server_yaml) = bootstraps(&ports, Some(&mtls));
    let server = RunningProxy::start(Kind::Outrigger, &server_yaml, &[]);
    let client = RunningProxy::start(Kind::Outrigger, &client_yaml, &[]);
    let url = format!("http://127.0.0.1:{}/hello", ports.get("client"));
    let r = curl::request("GET", &url, &[]).expect("through both sidecars");
    assert_eq!(r.status, 200, "{}", server.logs_for_failure());
    // Plaintext straight to the server's mTLS port is refused.
    let direct = format!("http://127.0.0.1:{}/hello", ports.get("server"));
    assert!(curl::request("GET", &direct, &[]).is_err());
    std::thread::sleep(std::time::Duration::from_millis(200));
    let labels = |body: &str| -> Vec<String> {
        let series = requests_total(body);
        let (m, _) = series.first().expect("a series");
        [
            "source_principal",
            "destination_principal",
            "connection_security_policy",
        ]
        .iter()
        .map(|k| format!("{k}={}", m[*k]))
        .collect()
    };
    assert_eq!(
        labels(&server.get("/stats/prometheus").body),
        [
            format!("source_principal={}", client_id.uri),
            format!("destination_principal={}", server_id.uri),
            "connection_security_policy=mutual_tls".to_string(),
        ]
    );
    // The client side reads its upstream connection: its own certificate is the source, the
    // server's the destination; the policy stays `unknown` on the client, as in Istio.
    assert_eq!(
        labels(&client.get("/stats/prometheus").body),
        [
            format!("source_principal={}", client_id.uri),
            format!("destination_principal={}", server_id.uri),
            "connection_security_policy=unknown".to_string(),
        ]
    );
}

/// A client sidecar calling an upstream without a sidecar (no exchange headers come back)
/// takes the destination from the endpoint's `istio.workload` metadata, Istio's compact
/// `workload;namespace;canonical service;revision;cluster` string; app and version stay
/// unknown as in Istio.
#[test]
fn without_an_exchange_the_endpoints_istio_workload_metadata_names_the_destination() {
    let app = Scripted::start("app", Behaviour::Reply(Reply::text("plain\n")));
    let ports = Ports::new(&["client", "client_admin"]).with("app", app.port());
    let cluster = format!(
        r#"  - name: "{OUTBOUND_CLUSTER}"
    connect_timeout: 1s
    type: STATIC
    load_assignment:
      cluster_name: "{OUTBOUND_CLUSTER}"
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{{{app}}}} }} }} }}
          metadata: {{ filter_metadata: {{ istio: {{ workload: "plain-v3;back;plain;v3;Kubernetes" }} }} }}
"#
    );
    let yaml = format!(
        "{}admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{{{client_admin}}}} }} }} }}\nstatic_resources:\n  listeners:\n{}  clusters:\n{cluster}",
        node("sidecar~10.0.0.1~client-v1-abcde.front~front.svc.cluster.local", "client-v1", "front", "client", "v1"),
        listener(
            "OUTBOUND",
            "client",
            OUTBOUND_CLUSTER,
            r#"{ upstream_discovery: [{ istio_headers: {} }], upstream_propagation: [{ istio_headers: {} }] }"#,
            "{}",
            "",
            false,
        ),
    );
    let client = RunningProxy::start(Kind::Outrigger, &ports.render(&yaml), &[]);
    let url = format!("http://127.0.0.1:{}/", ports.get("client"));
    assert_eq!(
        curl::request("GET", &url, &[]).expect("through").status,
        200
    );
    std::thread::sleep(std::time::Duration::from_millis(200));
    let series = requests_total(&client.get("/stats/prometheus").body);
    let (labels, _) = series.first().expect("a series");
    for (k, v) in [
        ("destination_workload", "plain-v3"),
        ("destination_workload_namespace", "back"),
        ("destination_canonical_service", "plain"),
        ("destination_canonical_revision", "v3"),
        ("destination_cluster", "Kubernetes"),
        ("destination_app", "unknown"),
        ("destination_version", "unknown"),
    ] {
        assert_eq!(labels[k], v, "{k} in {labels:?}");
    }
}
