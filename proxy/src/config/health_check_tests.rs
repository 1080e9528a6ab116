//! Translation of `health_checks`: Envoy's defaults, and what is refused with its path.
//! https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/health_check.proto

use super::*;
use xds_proto::pb::envoy::config::cluster::v3::Cluster as ProtoCluster;

fn translate_yaml(checks: &str) -> Result<Option<HealthCheckConfig>> {
    let cluster: ProtoCluster = xds_proto::parse_document(
        &format!("{{ name: c, health_checks: {checks} }}"),
        xds_proto::DocumentFormat::Yaml,
        xds_proto::ParseOptions::default(),
    )
    .expect("health check yaml")
    .value;
    translate_all(
        &cluster.health_checks,
        &FieldPath::root("c").field("health_checks"),
    )
}

fn error(checks: &str) -> String {
    translate_yaml(checks).expect_err("refused").to_string()
}

#[test]
fn http_defaults_follow_envoy() {
    let c = translate_yaml(
        "[{ timeout: 1s, interval: 2s, unhealthy_threshold: 3, healthy_threshold: 2, http_health_check: { path: /hc } }]",
    )
    .expect("valid")
    .expect("one check");
    assert_eq!(c.timeout, Duration::from_secs(1));
    assert_eq!(c.interval, Duration::from_secs(2));
    assert_eq!(c.no_traffic_interval, Duration::from_secs(60));
    assert_eq!(c.no_traffic_healthy_interval, Duration::from_secs(60));
    // unhealthy_interval defaults to interval, its edge to unhealthy_interval, the healthy
    // edge to interval.
    assert_eq!(c.unhealthy_interval, Duration::from_secs(2));
    assert_eq!(c.unhealthy_edge_interval, Duration::from_secs(2));
    assert_eq!(c.healthy_edge_interval, Duration::from_secs(2));
    assert_eq!(c.interval_jitter, Duration::ZERO);
    assert_eq!(c.initial_jitter, Duration::ZERO);
    assert_eq!(c.interval_jitter_percent, 0);
    assert!(c.reuse_connection);
    assert!(!c.always_log_failures);
    assert_eq!((c.unhealthy_threshold, c.healthy_threshold), (3, 2));
    let Checker::Http(h) = c.checker else {
        panic!("an HTTP check")
    };
    assert_eq!(h.expected_statuses, vec![(200, 201)]);
    assert_eq!(h.host, None);
    assert!(!h.http2);
}

#[test]
fn edge_intervals_default_through_unhealthy_interval() {
    let c = translate_yaml(
        "[{ timeout: 1s, interval: 2s, unhealthy_interval: 5s, no_traffic_interval: 3s, unhealthy_threshold: 1, healthy_threshold: 1, reuse_connection: false, tcp_health_check: {} }]",
    )
    .expect("valid")
    .expect("one check");
    assert_eq!(c.unhealthy_edge_interval, Duration::from_secs(5));
    assert_eq!(c.healthy_edge_interval, Duration::from_secs(2));
    assert_eq!(c.no_traffic_healthy_interval, Duration::from_secs(3));
    assert!(!c.reuse_connection);
    assert_eq!(
        c.checker,
        Checker::Tcp(TcpCheck {
            send: Vec::new(),
            receive: Vec::new()
        })
    );
}

#[test]
fn tcp_payloads_are_hex() {
    let c = translate_yaml(
        r#"[{ timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: { send: { text: "70696E67" }, receive: [ { text: "706f" }, { text: "6e67" } ] } }]"#,
    )
    .expect("valid")
    .expect("one check");
    assert_eq!(
        c.checker,
        Checker::Tcp(TcpCheck {
            send: b"ping".to_vec(),
            receive: vec![b"po".to_vec(), b"ng".to_vec()]
        })
    );
    assert!(error(
        r#"[{ timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: { send: { text: "7g" } } }]"#
    )
    .contains("c.health_checks[0].tcp_health_check.send.text"));
}

#[test]
fn http_options_translate() {
    let c = translate_yaml(
        "[{ timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, http_health_check: { path: /h, host: svc, codec_client_type: HTTP2, expected_statuses: [ { start: 200, end: 300 } ], request_headers_to_add: [ { header: { key: X-A, value: b }, append_action: OVERWRITE_IF_EXISTS_OR_ADD } ], request_headers_to_remove: [ user-agent ] } }]",
    )
    .expect("valid")
    .expect("one check");
    let Checker::Http(h) = c.checker else {
        panic!("an HTTP check")
    };
    assert_eq!(h.host.as_deref(), Some("svc"));
    assert!(h.http2);
    assert_eq!(h.expected_statuses, vec![(200, 300)]);
    assert_eq!(h.headers_to_add.len(), 1);
    assert_eq!(h.headers_to_add[0].0.as_str(), "x-a");
    assert!(!h.headers_to_add[0].2);
    assert_eq!(h.headers_to_remove[0].as_str(), "user-agent");
}

#[test]
fn refusals_name_the_field() {
    let base = "timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1";
    assert!(error(
        "[{ interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: {} }]"
    )
    .contains("c.health_checks[0].timeout"));
    assert!(
        error("[{ timeout: 1s, interval: 1s, healthy_threshold: 1, tcp_health_check: {} }]")
            .contains("unhealthy_threshold")
    );
    assert!(error(&format!("[{{ {base} }}]")).contains("health checker"));
    assert!(error(&format!(
        "[{{ {base}, grpc_health_check: {{ authority: \"a b\" }} }}]"
    ))
    .contains("c.health_checks[0].grpc_health_check.authority"));
    assert!(error(&format!("[{{ {base}, http_health_check: {{ path: /h, expected_statuses: [ {{ start: 300, end: 200 }} ] }} }}]"))
        .contains("expected_statuses[0]"));
    assert!(error(&format!(
        "[{{ {base}, tcp_health_check: {{}} }}, {{ {base}, tcp_health_check: {{}} }}]"
    ))
    .contains("Multiple health checks"));
    assert!(error(&format!(
        "[{{ {base}, http_health_check: {{ path: /h, codec_client_type: HTTP3 }} }}]"
    ))
    .contains("codec_client_type"));
    assert!(translate_yaml("[]").expect("none").is_none());
}

#[test]
fn unimplemented_fields_are_refused_with_their_path() {
    for (field, yaml) in [
        ("event_log_path", "event_log_path: /tmp/hc.log"),
        ("tls_options", "tls_options: { alpn_protocols: [h2] }"),
        ("alt_port", "alt_port: 9000"),
        (
            "tcp_health_check.proxy_protocol_config",
            "tcp_health_check: { proxy_protocol_config: {} }",
        ),
    ] {
        let cluster: ProtoCluster = xds_proto::parse_document(
            &format!("{{ name: c, health_checks: [ {{ timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, {yaml} }} ] }}"),
            xds_proto::DocumentFormat::Yaml,
            xds_proto::ParseOptions::default(),
        )
        .expect("health check yaml")
        .value;
        let error = crate::config::fields::check(&cluster, &FieldPath::root("c"), &mut Vec::new())
            .expect_err("refused")
            .to_string();
        assert!(
            error.contains(&format!("c.health_checks[0].{field}")),
            "{field}: {error}"
        );
    }
}
