//! Handshakes in memory between a `ServerTls` and a `ClientTls` built from translated
//! contexts: mutual TLS, SAN refusal on both sides, ALPN, and rotation through a secret slot.

use super::*;
use crate::config::fields::Acknowledged;
use crate::config::tls::{translate_downstream, translate_upstream, SecretSlots, TlsResolve};
use crate::config::FieldPath;
use xds_proto::pb::envoy::config::core::v3::{data_source::Specifier, DataSource};
use xds_proto::pb::envoy::extensions::transport_sockets::tls::v3 as pb;

struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

fn ca() -> Ca {
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test root");
    let key = rcgen::KeyPair::generate().expect("key");
    Ca {
        cert: params.self_signed(&key).expect("root"),
        key,
    }
}

/// (certificate PEM, key PEM) for a workload with a SPIFFE URI SAN.
fn workload(ca: &Ca, spiffe: &str) -> (String, String) {
    workload_valid(ca, spiffe, None)
}

/// A calendar date: year, month, day.
type Ymd = (i32, u8, u8);

/// [`workload`] valid only from `not_before` to `not_after` when given.
fn workload_valid(ca: &Ca, spiffe: &str, validity: Option<(Ymd, Ymd)>) -> (String, String) {
    let mut params = rcgen::CertificateParams::default();
    if let Some(((y1, m1, d1), (y2, m2, d2))) = validity {
        params.not_before = rcgen::date_time_ymd(y1, m1, d1);
        params.not_after = rcgen::date_time_ymd(y2, m2, d2);
    }
    params.subject_alt_names = vec![rcgen::SanType::URI(
        rcgen::Ia5String::try_from(spiffe).expect("uri"),
    )];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &ca.cert, &ca.key).expect("cert");
    (cert.pem(), key.serialize_pem())
}

fn inline(s: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineString(s.into())),
        ..Default::default()
    })
}

fn common(cert: &(String, String), ca: &Ca, san: &str, alpn: &[&str]) -> pb::CommonTlsContext {
    use pb::common_tls_context::ValidationContextType;
    use xds_proto::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};
    pb::CommonTlsContext {
        tls_certificates: vec![pb::TlsCertificate {
            certificate_chain: inline(&cert.0),
            private_key: inline(&cert.1),
            ..Default::default()
        }],
        validation_context_type: Some(ValidationContextType::ValidationContext(
            pb::CertificateValidationContext {
                trusted_ca: inline(&ca.cert.pem()),
                match_typed_subject_alt_names: vec![pb::SubjectAltNameMatcher {
                    san_type: pb::subject_alt_name_matcher::SanType::Uri as i32,
                    matcher: Some(StringMatcher {
                        match_pattern: Some(MatchPattern::Exact(san.into())),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            },
        )),
        alpn_protocols: alpn.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn server(ctx: pb::CommonTlsContext, secrets: &SecretSlots) -> (Arc<ServerTls>, Arc<TlsStats>) {
    let proto = pb::DownstreamTlsContext {
        common_tls_context: Some(ctx),
        require_client_certificate: Some(xds_proto::pb::google::protobuf::BoolValue {
            value: true,
        }),
        ..Default::default()
    };
    let mut acks: Vec<Acknowledged> = Vec::new();
    let spec = translate_downstream(
        &proto,
        &FieldPath::root("server"),
        &TlsResolve { secrets },
        &mut acks,
    )
    .expect("translates");
    let stats = Arc::new(TlsStats::detached());
    let contexts = ContextManager::new(crate::stats::Store::new());
    (
        ServerTls::new(Arc::new(spec), stats.clone(), &contexts),
        stats,
    )
}

fn client(ctx: pb::CommonTlsContext, secrets: &SecretSlots) -> (Arc<ClientTls>, Arc<TlsStats>) {
    let proto = pb::UpstreamTlsContext {
        common_tls_context: Some(ctx),
        sni: "outbound_.8080_._.web.default.svc.cluster.local".into(),
        ..Default::default()
    };
    let spec = translate_upstream(
        &proto,
        &FieldPath::root("client"),
        &TlsResolve { secrets },
        &mut Vec::new(),
    )
    .expect("translates");
    let stats = Arc::new(TlsStats::detached());
    let contexts = ContextManager::new(crate::stats::Store::new());
    (
        ClientTls::new(Arc::new(spec), stats.clone(), &contexts),
        stats,
    )
}

/// Runs one handshake over an in-memory pipe; returns (server ALPN, client result).
async fn handshake(s: &ServerTls, c: &ClientTls) -> (Option<Vec<u8>>, io::Result<()>) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (server, client) = tokio::join!(s.accept(a), c.connect(b, None, None));
    let alpn = server
        .ok()
        .and_then(|(s, _)| s.get_ref().1.alpn_protocol().map(<[u8]>::to_vec));
    (alpn, client.map(|_| ()))
}

const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";
const DB: &str = "spiffe://cluster.local/ns/default/sa/db";

#[tokio::test]
async fn mutual_tls_with_spiffe_sans_and_refusals_on_both_sides() {
    let root = ca();
    let (web, db) = (workload(&root, WEB), workload(&root, DB));
    let secrets = SecretSlots::default();
    // db serves and accepts only web; web connects and accepts only db.
    let (s, s_stats) = server(common(&db, &root, WEB, &["h2", "http/1.1"]), &secrets);
    let (c, c_stats) = client(
        common(&web, &root, DB, &["istio-peer-exchange", "istio", "h2"]),
        &secrets,
    );
    let (alpn, result) = handshake(&s, &c).await;
    result.expect("mutual TLS handshake");
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(s_stats.handshake.value(), 1);
    assert_eq!(c_stats.handshake.value(), 1);

    // The client expects a different server identity: it refuses.
    let (c2, c2_stats) = client(common(&web, &root, WEB, &[]), &secrets);
    let (_, result) = handshake(&s, &c2).await;
    assert!(result.is_err());
    assert_eq!(c2_stats.fail_verify_san.value(), 1);

    // The server expects a different client identity: it refuses.
    let (s3, s3_stats) = server(common(&db, &root, DB, &[]), &secrets);
    let (_, _) = handshake(&s3, &c).await;
    assert_eq!(s3_stats.fail_verify_san.value(), 1);
    assert_eq!(s3_stats.handshake.value(), 0);

    // A certificate from another CA fails chain verification.
    let other = ca();
    let (c4, c4_stats) = client(common(&workload(&other, WEB), &other, DB, &[]), &secrets);
    let (_, result) = handshake(&s, &c4).await;
    assert!(result.is_err());
    assert_eq!(c4_stats.fail_verify_error.value(), 1);
}

#[tokio::test]
async fn expired_and_not_yet_valid_certificates_are_refused_on_both_sides() {
    let root = ca();
    let expired = Some(((2000, 1, 1), (2001, 1, 1)));
    let not_yet = Some(((2090, 1, 1), (2091, 1, 1)));
    let secrets = SecretSlots::default();
    let (web, db) = (workload(&root, WEB), workload(&root, DB));
    let (s, _) = server(common(&db, &root, WEB, &[]), &secrets);
    let (c, _) = client(common(&web, &root, DB, &[]), &secrets);
    handshake(&s, &c).await.1.expect("valid certificates");
    for validity in [expired, not_yet] {
        // A client with such a certificate: the server refuses it.
        let (s2, s2_stats) = server(common(&db, &root, WEB, &[]), &secrets);
        let (bad_client, _) = client(
            common(&workload_valid(&root, WEB, validity), &root, DB, &[]),
            &secrets,
        );
        let _ = handshake(&s2, &bad_client).await;
        assert_eq!(s2_stats.handshake.value(), 0, "{validity:?}");
        assert_eq!(s2_stats.fail_verify_error.value(), 1, "{validity:?}");
        // A server with such a certificate: the client refuses it.
        let (bad_server, _) = server(
            common(&workload_valid(&root, DB, validity), &root, WEB, &[]),
            &secrets,
        );
        let (c2, c2_stats) = client(common(&web, &root, DB, &[]), &secrets);
        let (_, result) = handshake(&bad_server, &c2).await;
        assert!(result.is_err(), "{validity:?}");
        assert_eq!(c2_stats.fail_verify_error.value(), 1, "{validity:?}");
    }
}

#[tokio::test]
async fn offers_without_a_shared_alpn_get_none_and_istio_peer_exchange_is_never_chosen() {
    let root = ca();
    let (web, db) = (workload(&root, WEB), workload(&root, DB));
    let secrets = SecretSlots::default();
    let (s, _) = server(
        common(&db, &root, WEB, &["istio-peer-exchange", "h2", "http/1.1"]),
        &secrets,
    );
    let (c, _) = client(
        common(&web, &root, DB, &["istio-peer-exchange", "istio"]),
        &secrets,
    );
    let (alpn, result) = handshake(&s, &c).await;
    result.expect("handshake without ALPN");
    assert_eq!(alpn, None);
}

#[tokio::test]
async fn a_rotated_sds_certificate_is_used_by_the_next_handshake() {
    use crate::config::tls::apply_secret;
    let root = ca();
    let secrets = SecretSlots::default();
    let secret = |name: &str, cert: &(String, String)| pb::Secret {
        name: name.into(),
        r#type: Some(pb::secret::Type::TlsCertificate(pb::TlsCertificate {
            certificate_chain: inline(&cert.0),
            private_key: inline(&cert.1),
            ..Default::default()
        })),
    };
    apply_secret(
        &secrets,
        &secret("default", &workload(&root, DB)),
        &FieldPath::root("s"),
    )
    .expect("secret");
    let mut ctx = common(&workload(&root, DB), &root, WEB, &[]);
    ctx.tls_certificates.clear();
    ctx.tls_certificate_sds_secret_configs = vec![pb::SdsSecretConfig {
        name: "default".into(),
        ..Default::default()
    }];
    let (s, _) = server(ctx, &secrets);
    let (c, _) = client(common(&workload(&root, WEB), &root, DB, &[]), &secrets);
    handshake(&s, &c).await.1.expect("first certificate");
    // Rotate to a certificate with another identity: the client, which wants DB, now refuses.
    apply_secret(
        &secrets,
        &secret("default", &workload(&root, WEB)),
        &FieldPath::root("s"),
    )
    .expect("secret");
    assert!(handshake(&s, &c).await.1.is_err());
    // A secret that disappears makes handshakes fail rather than fall back.
    crate::config::tls::remove_secret(&secrets, "default");
    assert!(handshake(&s, &c).await.1.is_err());
}

#[tokio::test]
async fn an_alpn_offer_replaces_the_contexts_own_list_for_its_connection() {
    let root = ca();
    let (web, db) = (workload(&root, WEB), workload(&root, DB));
    let secrets = SecretSlots::default();
    // An Istio inbound HTTP chain's server: it only speaks h2 and http/1.1.
    let (s, _) = server(common(&db, &root, WEB, &["h2", "http/1.1"]), &secrets);
    let (c, _) = client(common(&web, &root, DB, &["istio"]), &secrets);
    let offer = AlpnOffer::new(vec![
        b"istio-http/1.1".to_vec(),
        b"istio".to_vec(),
        b"http/1.1".to_vec(),
    ]);
    assert_eq!(
        offered(&s, &c, Some(&offer)).await.as_deref(),
        Some(&b"http/1.1"[..])
    );
    // Cached per offer, and the context's own list is untouched by it.
    assert_eq!(
        offered(&s, &c, Some(&offer)).await.as_deref(),
        Some(&b"http/1.1"[..])
    );
    assert_eq!(offered(&s, &c, None).await, None);
}

/// The ALPN the server chose for a handshake where the client offers `offer`.
async fn offered(s: &ServerTls, c: &ClientTls, offer: Option<&AlpnOffer>) -> Option<Vec<u8>> {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (server, client) = tokio::join!(s.accept(a), c.connect(b, None, offer));
    client.expect("handshake");
    server
        .expect("accepted")
        .0
        .get_ref()
        .1
        .alpn_protocol()
        .map(<[u8]>::to_vec)
}
