//! Certificate expiry stats and `/certs`, against Envoy on the same configuration: per TLS
//! context `ssl.certificate.<name>.expiration_unix_time_seconds` (the leaf, and the earliest
//! CA of a bundle; named by SDS secret, else `unnamed_[ca_]cert_<hash of inline_bytes>`),
//! `server.days_until_first_cert_expiring`, their Prometheus form (`envoy_tls_certificate`
//! tag), and `/certs` with file, inline and SDS certificates — then an SDS rotation and the
//! removal of the cluster and listener using them.
//! https://www.envoyproxy.io/docs/envoy/latest/configuration/listeners/stats#tls-statistics
//! https://www.envoyproxy.io/docs/envoy/latest/operations/admin#get--certs

use base64::Engine;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tests::control_plane::{ControlPlane, CLUSTER, LISTENER, SECRET};
use tests::pki::{Identity, Pki};
use tests::xds_resources::{certificate_secret, resource, root_secret};
use tests::{envoy_or_skip, free_port, Kind, RunningProxy};
use time::OffsetDateTime;

/// `days` and a half from now: whole days left stay `days` for twelve hours, whatever second
/// each proxy reads the clock in.
fn in_days(days: i64) -> OffsetDateTime {
    OffsetDateTime::now_utc() + time::Duration::days(days) + time::Duration::hours(12)
}

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).expect("read a PEM file")
}

fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("a JSON string")
}

/// The stats this test is about, by name: every certificate gauge and the two server gauges.
fn cert_stats(proxy: &RunningProxy) -> BTreeMap<String, String> {
    proxy
        .get("/stats")
        .body
        .lines()
        .filter(|l| {
            l.contains(".ssl.certificate.")
                || l.starts_with("server.days_until_first_cert_expiring:")
                || l.starts_with("server.seconds_until_first_ocsp_response_expiring:")
        })
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The same in Prometheus form: the sample lines of those families, sorted.
fn cert_prometheus(proxy: &RunningProxy) -> Vec<String> {
    let mut lines: Vec<String> = proxy
        .get("/stats/prometheus")
        .body
        .lines()
        .filter(|l| {
            !l.starts_with('#')
                && (l.contains("_ssl_certificate_expiration_unix_time_seconds")
                    || l.starts_with("envoy_server_days_until_first_cert_expiring")
                    || l.starts_with("envoy_server_seconds_until_first_ocsp_response_expiring"))
        })
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

/// `/certs` with its contexts sorted (Envoy lists them in hash-set order).
fn certs(proxy: &RunningProxy) -> Vec<serde_json::Value> {
    let v = proxy.get("/certs").json();
    let mut contexts = v["certificates"].as_array().cloned().unwrap_or_default();
    contexts.sort_by_key(|c| c.to_string());
    contexts
}

/// Waits until `ready` holds of the certificate stats (Envoy updates the server gauge at its
/// stats flush, every 5 s), then returns them.
fn settled(
    proxy: &RunningProxy,
    what: &str,
    ready: impl Fn(&BTreeMap<String, String>) -> bool,
) -> BTreeMap<String, String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let stats = cert_stats(proxy);
        if ready(&stats) {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "{:?}: {what} never held: {stats:#?}\n{}",
            proxy.kind(),
            proxy.logs_for_failure()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

const TCP_PROXY: &str = r#"
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: t
          cluster: plain"#;

fn listener(name: &str, require_client: bool, common: &str) -> String {
    format!(
        r#"
  - name: {name}
    stat_prefix: {name}
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: {require_client}
          common_tls_context: {common}{TCP_PROXY}"#,
        port = free_port(),
    )
}

fn cluster(name: &str, common: &str) -> String {
    format!(
        r#"
  - name: {name}
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: {name}
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }} }}] }}]
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context: {common}"#,
        port = free_port(),
    )
}

struct Static {
    /// Root A: long-lived; root B: expires first of everything (40 days).
    a: Pki,
    b: Pki,
    bundle: std::path::PathBuf,
    web: Identity,
    client: Identity,
    _dir: tempfile::TempDir,
}

fn static_bootstrap(admin: u16, p: &Static) -> String {
    let file_cert = format!(
        "{{ certificate_chain: {{ filename: {} }}, private_key: {{ filename: {} }} }}",
        p.web.cert.display(),
        p.web.key.display()
    );
    let b64 = |path: &std::path::Path| {
        base64::engine::general_purpose::STANDARD.encode(read(path).as_bytes())
    };
    let listeners = [
        listener(
            "files",
            true,
            &format!(
                "{{ tls_certificates: [{file_cert}], validation_context: {{ trusted_ca: {{ filename: {} }} }} }}",
                p.bundle.display()
            ),
        ),
        listener(
            "inline",
            false,
            &format!(
                "{{ tls_certificates: [{{ certificate_chain: {{ inline_bytes: {} }}, private_key: {{ inline_bytes: {} }} }}], validation_context: {{ trusted_ca: {{ inline_string: {} }} }} }}",
                b64(&p.web.cert),
                b64(&p.web.key),
                quoted(&read(&p.a.root()))
            ),
        ),
        listener(
            "secrets",
            true,
            "{ tls_certificate_sds_secret_configs: [{ name: server_cert }], validation_context_sds_secret_config: { name: bundle_ca } }",
        ),
        listener(
            "combined",
            true,
            "{ tls_certificate_sds_secret_configs: [{ name: server_cert }], combined_validation_context: { default_validation_context: { match_typed_subject_alt_names: [{ san_type: URI, matcher: { prefix: \"spiffe://cluster.local/\" } }] }, validation_context_sds_secret_config: { name: bundle_ca } } }",
        ),
    ]
    .concat();
    let clusters = [
        cluster(
            "ca_only",
            &format!(
                "{{ validation_context: {{ trusted_ca: {{ inline_string: {} }} }} }}",
                quoted(&read(&p.a.root()))
            ),
        ),
        cluster(
            "mtls",
            &format!(
                "{{ tls_certificates: [{{ certificate_chain: {{ inline_string: {} }}, private_key: {{ inline_string: {} }} }}], validation_context: {{ trusted_ca: {{ filename: {} }} }} }}",
                quoted(&read(&p.client.cert)),
                quoted(&read(&p.client.key)),
                p.a.root().display()
            ),
        ),
        cluster("no_certificates", "{}"),
    ]
    .concat();
    format!(
        r#"
admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }} }}
static_resources:
  secrets:
  - name: server_cert
    tls_certificate: {file_cert}
  - name: bundle_ca
    validation_context: {{ trusted_ca: {{ filename: {bundle} }} }}
  listeners:{listeners}
  clusters:
  - name: plain
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: plain
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {plain} }} }} }} }}] }}]{clusters}
"#,
        bundle = p.bundle.display(),
        plain = free_port(),
    )
}

type Snapshot = (
    BTreeMap<String, String>,
    Vec<String>,
    Vec<serde_json::Value>,
);

fn snapshot(
    proxy: &RunningProxy,
    what: &str,
    ready: impl Fn(&BTreeMap<String, String>) -> bool,
) -> Snapshot {
    let stats = settled(proxy, what, ready);
    (stats, cert_prometheus(proxy), certs(proxy))
}

#[test]
fn certificate_stats_and_certs_follow_envoy_for_inline_file_and_static_secrets() {
    let dir = tempfile::tempdir().expect("a directory");
    let a = Pki::with_root_validity(in_days(3650));
    let b = Pki::with_root_validity(in_days(40));
    // Root B second in the bundle and expiring first: the bundle's gauge and the server's
    // days are its, whatever the order.
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, read(&a.root()) + &read(&b.root())).expect("write the bundle");
    let p = Static {
        web: a.identity_until("web", &["web.example"], in_days(90)),
        client: a.identity_until("client", &[], in_days(70)),
        a,
        b,
        bundle,
        _dir: dir,
    };
    let run = |kind: Kind| {
        let proxy = RunningProxy::start(kind, &static_bootstrap(free_port(), &p), &[]);
        snapshot(&proxy, "the server gauge is computed", |s| {
            s.get("server.days_until_first_cert_expiring")
                .is_some_and(|d| d != "4294967295")
        })
    };
    let ours = run(Kind::Outrigger);
    let gauge = |scope: &str, name: &str| {
        ours.0
            .get(&format!(
                "{scope}.ssl.certificate.{name}.expiration_unix_time_seconds"
            ))
            .cloned()
            .unwrap_or_else(|| panic!("no gauge {scope} {name}: {:#?}", ours.0))
    };
    let b_expiry = read_expiry(&p.b.root());
    assert_eq!(
        gauge("listener.files", "unnamed_ca_cert_e3b0c442"),
        b_expiry
    );
    assert_eq!(gauge("listener.secrets", "bundle_ca"), b_expiry);
    assert_eq!(gauge("listener.combined", "bundle_ca"), b_expiry);
    assert_eq!(
        gauge("listener.files", "unnamed_cert_e3b0c442"),
        read_expiry(&p.web.cert)
    );
    let hash = |path: &std::path::Path| {
        let digest = ring::digest::digest(&ring::digest::SHA256, read(path).as_bytes());
        digest.as_ref()[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    gauge(
        "listener.inline",
        &format!("unnamed_cert_{}", hash(&p.web.cert)),
    );
    gauge("cluster.mtls", "unnamed_cert_e3b0c442");
    assert_eq!(ours.0["server.days_until_first_cert_expiring"], "40");
    assert_eq!(
        ours.0["server.seconds_until_first_ocsp_response_expiring"],
        "0"
    );
    assert_eq!(ours.2.len(), 7, "{:#?}", ours.2);
    let line = format!(
        "envoy_listener_ssl_certificate_expiration_unix_time_seconds{{envoy_tls_certificate=\"bundle_ca\",envoy_listener_address=\"secrets\"}} {b_expiry}"
    );
    assert!(ours.1.contains(&line), "{line} in {:#?}", ours.1);
    let Some(_) = envoy_or_skip(
        "certificate_stats_and_certs_follow_envoy_for_inline_file_and_static_secrets",
    ) else {
        return;
    };
    let envoy = run(Kind::Envoy);
    assert_eq!(ours.0, envoy.0, "/stats");
    assert_eq!(ours.1, envoy.1, "/stats/prometheus");
    assert_eq!(ours.2, envoy.2, "/certs");
}

/// The expiry of the first certificate in `path`, in seconds since the epoch, as `/stats`
/// prints it.
fn read_expiry(path: &std::path::Path) -> String {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(read(path).as_bytes())
        .expect("a PEM certificate");
    outrigger::tls::x509::CertInfo::of(der.as_ref())
        .expect("a readable certificate")
        .expiry_unix()
        .to_string()
}

/// Istio's shape: certificate `default` and CA `ROOTCA` over ADS, for an inbound listener and
/// an outbound cluster.
const SDS_COMMON: &str = "{ tls_certificate_sds_secret_configs: [{ name: default, sds_config: { ads: {}, resource_api_version: V3 } }], validation_context_sds_secret_config: { name: ROOTCA, sds_config: { ads: {}, resource_api_version: V3 } } }";

/// An expired workload certificate is rotated over SDS to a fresh one: the gauges and `/certs`
/// follow at once and the server's days with the next flush; removing the cluster, then the
/// listener, takes their certificate gauges and contexts away. Envoy does the same.
#[test]
fn certificate_stats_follow_sds_rotation_and_removal_like_envoy() {
    let pki = Pki::with_root_validity(in_days(3650));
    let expired = pki.identity_until(
        "expired",
        &[],
        OffsetDateTime::now_utc() - time::Duration::days(3),
    );
    let fresh = pki.identity_until("fresh", &[], in_days(30));
    let listener_yaml = listener("mesh", true, SDS_COMMON);
    let listener_yaml = listener_yaml
        .trim_start()
        .trim_start_matches("- ")
        .replace("\n    ", "\n");
    let cluster_yaml = cluster("mtls", SDS_COMMON);
    let cluster_yaml = cluster_yaml
        .trim_start()
        .trim_start_matches("- ")
        .replace("\n    ", "\n");
    let run = |kind: Kind| -> Vec<Snapshot> {
        use xds_proto::pb::envoy::config::cluster::v3::Cluster;
        use xds_proto::pb::envoy::config::listener::v3::Listener;
        let cp = ControlPlane::start();
        cp.set(
            SECRET,
            vec![
                certificate_secret("default", &expired),
                root_secret("ROOTCA", &pki),
            ],
        );
        cp.set(CLUSTER, vec![resource::<Cluster>("mtls", &cluster_yaml)]);
        cp.set(LISTENER, vec![resource::<Listener>("mesh", &listener_yaml)]);
        let proxy = RunningProxy::start(
            kind,
            &tests::xds_resources::ads_bootstrap(free_port(), cp.port(), true),
            &["--drain-time-s", "1"],
        );
        let has = |s: &BTreeMap<String, String>, scope: &str| {
            s.keys()
                .any(|k| k.starts_with(&format!("{scope}.ssl.certificate.default.")))
        };
        let days = |s: &BTreeMap<String, String>, want: &str| {
            s.get("server.days_until_first_cert_expiring")
                .map(String::as_str)
                == Some(want)
        };
        let mut out = vec![snapshot(
            &proxy,
            "the expired certificate is counted",
            |s| has(s, "listener.mesh") && has(s, "cluster.mtls") && days(s, "0"),
        )];
        cp.set(
            SECRET,
            vec![
                certificate_secret("default", &fresh),
                root_secret("ROOTCA", &pki),
            ],
        );
        let fresh_expiry = read_expiry(&fresh.cert);
        out.push(snapshot(
            &proxy,
            "the rotated certificate is counted",
            |s| {
                days(s, "30")
                    && s.get("listener.mesh.ssl.certificate.default.expiration_unix_time_seconds")
                        == Some(&fresh_expiry)
                    && s.get("cluster.mtls.ssl.certificate.default.expiration_unix_time_seconds")
                        == Some(&fresh_expiry)
            },
        ));
        cp.set(CLUSTER, vec![]);
        out.push(snapshot(&proxy, "the cluster's gauges are gone", |s| {
            !has(s, "cluster.mtls")
        }));
        cp.set(LISTENER, vec![]);
        out.push(snapshot(&proxy, "the listener's gauges are gone", |s| {
            !has(s, "listener.mesh") && days(s, "4294967295")
        }));
        out
    };
    let ours = run(Kind::Outrigger);
    let stats: Vec<_> = ours.iter().map(|s| s.0.len()).collect();
    // Each scope has `default` and `ROOTCA`, plus the two server gauges.
    assert_eq!(stats, [6, 6, 4, 2], "{ours:#?}");
    let contexts: Vec<_> = ours.iter().map(|s| s.2.len()).collect();
    assert_eq!(contexts, [2, 2, 1, 0], "{ours:#?}");
    assert_eq!(ours[0].2[0]["cert_chain"][0]["days_until_expiration"], "0");
    assert_eq!(ours[1].2[0]["cert_chain"][0]["days_until_expiration"], "30");
    assert_eq!(ours[1].2[0]["cert_chain"][0]["path"], "<inline>");
    let Some(_) = envoy_or_skip("certificate_stats_follow_sds_rotation_and_removal_like_envoy")
    else {
        return;
    };
    let envoy = run(Kind::Envoy);
    for (step, (ours, envoy)) in ours.iter().zip(&envoy).enumerate() {
        assert_eq!(ours.0, envoy.0, "/stats, step {step}");
        assert_eq!(ours.1, envoy.1, "/stats/prometheus, step {step}");
        assert_eq!(ours.2, envoy.2, "/certs, step {step}");
    }
}
