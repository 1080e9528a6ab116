//! `transport_socket_matches`: which socket each endpoint gets, checked against what Envoy 1.40
//! chose for the same clusters (its `cluster.<name>.<match>.total_match_count` stats), and the
//! paths refusals name.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/cluster/v3/cluster.proto#config-cluster-v3-cluster-transportsocketmatch

use super::*;
use crate::config::cluster::{Cluster, Discovery};

const RAW: &str = r#"{ name: envoy.transport_sockets.raw_buffer, typed_config: { "@type": type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer } }"#;

fn cluster(extra: &str, endpoints: &str) -> std::result::Result<Cluster, String> {
    let yaml = format!(
        r#"
static_resources:
  clusters:
  - name: c
    type: STATIC
{extra}
    load_assignment:
      cluster_name: c
      endpoints: {endpoints}
"#
    );
    let loaded = crate::bootstrap::load(&crate::bootstrap::Sources {
        config_yaml: Some(&yaml),
        ..Default::default()
    })
    .map_err(|e| e.to_string())?;
    let mut config =
        crate::config::translate_bootstrap(&loaded.bootstrap).map_err(|e| e.to_string())?;
    Ok(Arc::unwrap_or_clone(config.clusters.remove(0)))
}

/// The socket chosen for each endpoint, by match name ("default" for the cluster's own).
fn chosen(c: &Cluster) -> Vec<String> {
    let Discovery::Static(endpoints) = &c.discovery else {
        panic!("a static cluster");
    };
    endpoints
        .iter()
        .map(|e| match c.transports.select(&e.labels) {
            Selected::Match(i) => c.transports.matches[i].name.clone(),
            Selected::Default => "default".into(),
        })
        .collect()
}

fn ep(port: u16, labels: &str) -> String {
    let metadata = if labels.is_empty() {
        String::new()
    } else {
        format!(
            r#", metadata: {{ filter_metadata: {{ envoy.transport_socket_match: {labels} }} }}"#
        )
    };
    format!(
        r#"{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}{metadata} }}"#
    )
}

fn matches(entries: &[(&str, &str)]) -> String {
    let mut out = String::from("    transport_socket_matches:\n");
    for (name, criteria) in entries {
        out.push_str(&format!(
            "    - {{ name: {name}, match: {criteria}, transport_socket: {RAW} }}\n"
        ));
    }
    out
}

#[test]
fn the_first_match_whose_criteria_all_hold_wins() {
    let c = cluster(
        &matches(&[
            ("multi", r#"{ a: "1", b: 2, c: true }"#),
            ("num", "{ a: 1 }"),
            ("list", r#"{ l: ["x", "z"] }"#),
            ("also-multi", r#"{ a: "1" }"#),
        ]),
        &format!(
            "[{{ lb_endpoints: [{}, {}, {}, {}, {}, {}] }}]",
            // Extra labels do not matter; every criterion must be there and equal.
            ep(1, r#"{ a: "1", b: 2, c: true, d: extra }"#),
            ep(2, "{ a: 1 }"),
            // "2" is a string, not the number 2: only the later, smaller match holds.
            ep(3, r#"{ a: "1", b: "2", c: true }"#),
            ep(4, r#"{ l: ["x", "z"] }"#),
            // A list criterion is equality with the list, not membership.
            ep(5, r#"{ l: "x" }"#),
            ep(6, ""),
        ),
    )
    .expect("translates");
    assert_eq!(
        chosen(&c),
        ["multi", "num", "also-multi", "list", "default", "default"]
    );
}

#[test]
fn an_empty_match_takes_every_endpoint_it_reaches() {
    let c = cluster(
        &matches(&[
            ("tlsMode-istio", "{ tlsMode: istio }"),
            ("tlsMode-disabled", "{}"),
        ]),
        &format!(
            "[{{ lb_endpoints: [{}, {}, {}] }}]",
            ep(1, "{ tlsMode: istio }"),
            ep(2, ""),
            ep(3, "{ tlsMode: disabled }")
        ),
    )
    .expect("translates");
    assert_eq!(
        chosen(&c),
        ["tlsMode-istio", "tlsMode-disabled", "tlsMode-disabled"]
    );
}

#[test]
fn locality_labels_count_only_when_no_match_takes_the_endpoint_labels() {
    // Envoy 1.40 tries the endpoint's labels against every match first, so an endpoint without
    // labels is taken by an empty match before its locality's labels are looked at.
    let locality =
        r#"metadata: { filter_metadata: { envoy.transport_socket_match: { zone: z1 } } }"#;
    let endpoints = format!(
        "[{{ {locality}, lb_endpoints: [{}, {}, {}] }}, {{ lb_endpoints: [{}] }}]",
        ep(1, "{ tlsMode: istio }"),
        ep(2, ""),
        ep(3, "{ other: x }"),
        ep(4, ""),
    );
    let c = cluster(
        &matches(&[("tls", "{ tlsMode: istio }"), ("zone", "{ zone: z1 }")]),
        &endpoints,
    )
    .expect("translates");
    assert_eq!(chosen(&c), ["tls", "zone", "zone", "default"]);
    let with_empty = cluster(
        &matches(&[("zone", "{ zone: z1 }"), ("any", "{}")]),
        &endpoints,
    )
    .expect("translates");
    assert_eq!(chosen(&with_empty), ["any", "any", "any", "any"]);
}

#[test]
fn no_match_means_the_clusters_own_socket_plaintext_when_it_has_none() {
    let c = cluster(
        &matches(&[("tls", "{ tlsMode: istio }")]),
        &format!("[{{ lb_endpoints: [{}] }}]", ep(1, "")),
    )
    .expect("translates");
    assert_eq!(chosen(&c), ["default"]);
    assert!(matches!(c.transports.default, UpstreamSocket::Plain));
    assert!(c.unsupported_transport.is_none());
}

#[test]
fn a_match_with_tls_compiles_its_context() {
    let tls = r#"{ name: envoy.transport_sockets.tls, typed_config: { "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext, sni: peer.example, common_tls_context: { alpn_protocols: [istio-peer-exchange, istio] } } }"#;
    let c = cluster(
        &format!(
            "    transport_socket_matches:\n    - {{ name: tls, match: {{ tlsMode: istio }}, transport_socket: {tls} }}\n"
        ),
        &format!("[{{ lb_endpoints: [{}] }}]", ep(1, "{ tlsMode: istio }")),
    )
    .expect("translates");
    let UpstreamSocket::Tls(ctx) = c.transports.socket(Selected::Match(0)) else {
        panic!("a TLS match");
    };
    assert_eq!(ctx.sni.as_deref(), Some("peer.example"));
    // istio-peer-exchange is never offered (no TCP metadata exchange behind it).
    assert_eq!(ctx.common.alpn, [b"istio".to_vec()]);
}

#[test]
fn refusals_name_the_match() {
    let err = cluster(
        &format!(
            "    transport_socket_matches:\n    - {{ name: a, match: {{}}, transport_socket: {RAW} }}\n    - {{ name: b, match: {{}} }}\n"
        ),
        "[]",
    )
    .expect_err("refused");
    assert!(
        err.contains("clusters[0].transport_socket_matches[1].transport_socket: is required"),
        "{err}"
    );
    let err = cluster(
        &format!(
            "    transport_socket_matches:\n    - {{ match: {{}}, transport_socket: {RAW} }}\n"
        ),
        "[]",
    )
    .expect_err("refused");
    assert!(
        err.contains("clusters[0].transport_socket_matches[0].name"),
        "{err}"
    );
    let downstream = r#"{ name: envoy.transport_sockets.tls, typed_config: { "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext } }"#;
    let err = cluster(
        &format!(
            "    transport_socket_matches:\n    - {{ name: a, transport_socket: {RAW} }}\n    - {{ name: b, transport_socket: {downstream} }}\n"
        ),
        "[]",
    )
    .expect_err("refused");
    assert!(
        err.contains("clusters[0].transport_socket_matches[1].transport_socket.typed_config"),
        "{err}"
    );
    let sds = r#"{ name: envoy.transport_sockets.tls, typed_config: { "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext, common_tls_context: { tls_certificate_sds_secret_configs: [{ name: missing }] } } }"#;
    let err = cluster(
        &format!("    transport_socket_matches:\n    - {{ name: a, transport_socket: {sds} }}\n"),
        "[]",
    )
    .expect_err("refused");
    assert!(
        err.contains("clusters[0].transport_socket_matches[0].transport_socket.typed_config.common_tls_context.tls_certificate_sds_secret_configs[0].name"),
        "{err}"
    );
}

#[test]
fn an_unsupported_socket_in_a_match_refuses_only_its_hosts() {
    let odd = r#"{ name: envoy.transport_sockets.tap, typed_config: { "@type": type.googleapis.com/envoy.extensions.transport_sockets.tap.v3.Tap } }"#;
    let c = cluster(
        &format!("    transport_socket_matches:\n    - {{ name: odd, match: {{ x: y }}, transport_socket: {odd} }}\n"),
        &format!("[{{ lb_endpoints: [{}, {}] }}]", ep(1, "{ x: y }"), ep(2, "")),
    )
    .expect("translates");
    assert_eq!(chosen(&c), ["odd", "default"]);
    assert!(matches!(
        c.transports.socket(Selected::Match(0)),
        UpstreamSocket::Unsupported(_)
    ));
    assert!(c.unsupported_transport.is_none());
}

#[test]
fn a_matchs_sds_secrets_are_subscribed_and_read_from_their_slots_like_the_clusters_own() {
    let sds = |name: &str| {
        format!(r#"{{ name: {name}, sds_config: {{ ads: {{}}, resource_api_version: V3 }} }}"#)
    };
    let yaml = format!(
        r#"{{ name: c, transport_socket_matches: [{{ name: tls, match: {{ tlsMode: istio }}, transport_socket: {{ name: envoy.transport_sockets.tls, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext, common_tls_context: {{ tls_certificate_sds_secret_configs: [{}], validation_context_sds_secret_config: {} }} }} }} }}] }}"#,
        sds("default"),
        sds("ROOTCA")
    );
    let proto: ProtoCluster =
        xds_proto::parse_document(&yaml, xds_proto::DocumentFormat::Yaml, Default::default())
            .expect("cluster yaml")
            .value;
    let secrets = SecretSlots::default();
    let sockets = translate(&proto, &FieldPath::root("c"), &secrets, &mut Vec::new())
        .expect("translates before its secrets arrive");
    // Asked for over ADS, as the cluster-level socket's secrets are.
    let wanted: Vec<String> = secrets.names_from(None).into_iter().collect();
    assert_eq!(wanted, ["ROOTCA", "default"]);
    // The context reads the slots SDS fills (and refills on rotation).
    let UpstreamSocket::Tls(ctx) = &sockets.matches[0].socket else {
        panic!("a TLS match");
    };
    let Some(super::super::tls::CertificateSource::Sds(slot)) = &ctx.common.certificate else {
        panic!("an SDS certificate");
    };
    assert!(Arc::ptr_eq(slot, &secrets.slot("default")));
}
