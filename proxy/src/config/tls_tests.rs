use super::*;
use crate::config::translate_bootstrap;

fn pem_pair() -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["example.com".into()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    (cert.pem(), key.serialize_pem())
}

/// A bootstrap with one listener whose chain has `tls` (YAML flow mapping) as its
/// DownstreamTlsContext, plus `extra` static resources.
fn listener_with(tls: &str, extra: &str) -> Result<crate::config::Config> {
    let yaml = format!(
        r#"
static_resources:
  listeners:
  - name: l
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: tcp
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: t
          cluster: c
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          {tls}
  clusters:
  - name: c
    load_assignment: {{ cluster_name: c }}
{extra}
"#
    );
    let loaded = crate::bootstrap::load(&crate::bootstrap::Sources {
        config_yaml: Some(&yaml),
        ..Default::default()
    })
    .expect("parses");
    translate_bootstrap(&loaded.bootstrap)
}

fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("string")
}

fn inline_certificate() -> String {
    let (cert, key) = pem_pair();
    format!(
            "common_tls_context: {{ tls_certificates: [{{ certificate_chain: {{ inline_string: {} }}, private_key: {{ inline_string: {} }} }}] }}",
            quoted(&cert),
            quoted(&key)
        )
}

fn error_of(r: Result<crate::config::Config>) -> (String, String) {
    let e = r.expect_err("refused");
    (e.path.clone(), e.message.clone())
}

#[test]
fn a_downstream_context_with_an_inline_certificate_translates() {
    let config = listener_with(&inline_certificate(), "").expect("translates");
    let chain = &config.listeners[0].filter_chains[0];
    let tls = chain.tls.as_ref().expect("a TLS chain");
    assert!(matches!(
        tls.common.certificate,
        Some(CertificateSource::Inline(_))
    ));
    assert!(
        !format!("{tls:?}").contains("PRIVATE"),
        "Debug shows no key"
    );
}

#[test]
fn refusals_name_their_paths() {
    let base = "static_resources.listeners[0].filter_chains[0].transport_socket.typed_config";
    let (path, message) = error_of(listener_with("common_tls_context: {}", ""));
    assert_eq!(path, format!("{base}.common_tls_context.tls_certificates"));
    assert!(message.contains("No TLS certificates"), "{message}");

    let garbage = "common_tls_context: { tls_certificates: [{ certificate_chain: { inline_string: x }, private_key: { inline_string: SECRET-KEY } }] }";
    let (path, message) = error_of(listener_with(garbage, ""));
    assert_eq!(
        path,
        format!("{base}.common_tls_context.tls_certificates[0].certificate_chain")
    );
    assert!(!message.contains("SECRET-KEY"));

    let unsupported = format!(
        "{}\n          ocsp_staple_policy: MUST_STAPLE",
        inline_certificate()
    );
    assert!(listener_with(&unsupported, "").is_ok(), "acknowledged");
    let curve = inline_certificate().replace(
        "common_tls_context: {",
        "common_tls_context: { tls_params: { ecdh_curves: [X25519, P-521] },",
    );
    let (path, _) = error_of(listener_with(&curve, ""));
    assert_eq!(
        path,
        format!("{base}.common_tls_context.tls_params.ecdh_curves[1]")
    );
    let sigalgs = inline_certificate().replace(
        "common_tls_context: {",
        "common_tls_context: { tls_params: { signature_algorithms: [ed25519] },",
    );
    let (path, _) = error_of(listener_with(&sigalgs, ""));
    assert_eq!(
        path,
        format!("{base}.common_tls_context.tls_params.signature_algorithms")
    );
    let san_without_ca = inline_certificate().replace(
            "common_tls_context: {",
            "common_tls_context: { validation_context: { match_typed_subject_alt_names: [{ san_type: URI, matcher: { exact: a } }] },",
        );
    let (path, message) = error_of(listener_with(&san_without_ca, ""));
    assert_eq!(
        path,
        format!("{base}.common_tls_context.validation_context")
    );
    assert!(message.contains("without trusted CA"), "{message}");
    let missing = "common_tls_context: { tls_certificate_sds_secret_configs: [{ name: nope }] }";
    let (path, message) = error_of(listener_with(missing, ""));
    assert_eq!(
        path,
        format!("{base}.common_tls_context.tls_certificate_sds_secret_configs[0].name")
    );
    assert_eq!(message, "Unknown static secret: nope");
}

#[test]
fn cipher_suites_map_to_rustls_or_are_acknowledged_or_refused() {
    let with = |suites: &str| {
        listener_with(
            &inline_certificate().replace(
                "common_tls_context: {",
                &format!("common_tls_context: {{ tls_params: {{ cipher_suites: [{suites}] }},"),
            ),
            "",
        )
    };
    let config = with(
        "\"[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]\", AES128-GCM-SHA256",
    )
    .expect("Istio's list translates");
    let tls = config.listeners[0].filter_chains[0]
        .tls
        .as_ref()
        .expect("tls");
    assert_eq!(tls.common.params.cipher_suites.len(), 2);
    assert!(config
        .acknowledged
        .iter()
        .any(|a| a.path.ends_with("cipher_suites[1]")));
    assert!(with("AES128-GCM-SHA256").is_err(), "nothing rustls can use");
    assert!(with("NOT-A-CIPHER").is_err());
}

#[test]
fn static_secrets_feed_sds_references_and_istio_peer_exchange_is_dropped() {
    let (cert, key) = pem_pair();
    let secrets = format!(
            "  secrets:\n  - name: default\n    tls_certificate: {{ certificate_chain: {{ inline_string: {} }}, private_key: {{ inline_string: {} }} }}\n  - name: ROOTCA\n    validation_context: {{ trusted_ca: {{ inline_string: {} }} }}",
            quoted(&cert),
            quoted(&key),
            quoted(&cert)
        );
    let tls = "common_tls_context: { alpn_protocols: [istio-peer-exchange, h2], tls_certificate_sds_secret_configs: [{ name: default }], combined_validation_context: { default_validation_context: { match_typed_subject_alt_names: [{ san_type: URI, matcher: { prefix: \"spiffe://cluster.local/\" } }] }, validation_context_sds_secret_config: { name: ROOTCA } } }";
    let config = listener_with(tls, &secrets).expect("translates");
    let ctx = config.listeners[0].filter_chains[0]
        .tls
        .as_ref()
        .expect("tls");
    assert_eq!(ctx.common.alpn, vec![b"h2".to_vec()]);
    assert!(
        matches!(ctx.common.certificate, Some(CertificateSource::Sds(ref s)) if s.get().is_some())
    );
    assert!(matches!(
        ctx.common.validation,
        Some(ValidationSource::Combined { .. })
    ));
}
