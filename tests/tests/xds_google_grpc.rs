//! ADS over a `google_grpc` target instead of a static cluster: a plaintext channel to
//! `host:port`, and TLS (`ssl_credentials`) verified against the configured root by the
//! target's host name. The same control plane feeds Envoy and Outrigger; the ACK sequence and
//! the traffic after it must agree.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/grpc_service.proto#config-core-v3-grpcservice-googlegrpc

use std::time::Duration;
use tests::control_plane::{ControlPlane, IstiodOptions, Recorded};
use tests::curl::body_becomes;
use tests::xds_resources::{ads_bootstrap, serve_backend};
use tests::{envoy_or_skip, free_port, Kind, RunningProxy, Upstream};

/// The answers so far: type, ACK or NACK, and the version accepted.
fn answers(requests: &[Recorded]) -> Vec<String> {
    requests
        .iter()
        .filter(|r| r.answers())
        .map(|r| {
            let verdict = if r.error.is_some() { "NACK" } else { "ACK" };
            format!("{} {verdict} v{}", r.short_type(), r.version_info)
        })
        .collect()
}

/// The ADS bootstrap with its gRPC service replaced by `google_grpc` to `target_uri`.
fn bootstrap(target_uri: &str, credentials: &str) -> String {
    let ads = ads_bootstrap(free_port(), 1, false);
    let envoy_grpc = "grpc_services: [{ envoy_grpc: { cluster_name: xds-grpc } }]";
    assert!(ads.contains(envoy_grpc), "the ADS bootstrap changed: {ads}");
    ads.replace(
        envoy_grpc,
        &format!(
            "grpc_services: [{{ google_grpc: {{ target_uri: \"{target_uri}\", stat_prefix: ads{credentials} }} }}]"
        ),
    )
}

/// Serves the backend over `cp`, reached at `target_uri`, and returns what the proxy did.
fn transcript(kind: Kind, cp: &ControlPlane, target_uri: &str, credentials: &str) -> Vec<String> {
    let upstream = Upstream::start("one");
    let port = free_port();
    serve_backend(cp, upstream.port(), port);
    let before = cp.requests().len();
    let proxy = RunningProxy::start(kind, &bootstrap(target_uri, credentials), &[]);
    let url = format!("http://127.0.0.1:{port}/");
    let traffic = body_becomes(&url, "200 one", Duration::from_secs(10));
    let mut out = vec![format!("traffic: {traffic}")];
    out.extend(answers(&cp.requests()[before..]));
    drop(proxy);
    out
}

#[test]
fn ads_over_a_plaintext_google_grpc_target_follows_envoy() {
    let cp = ControlPlane::start();
    let target = format!("127.0.0.1:{}", cp.port());
    let ours = transcript(Kind::Outrigger, &cp, &target, "");
    assert_eq!(
        ours.first().map(String::as_str),
        Some("traffic: 200 one"),
        "{ours:?}"
    );
    if envoy_or_skip("ads_over_a_plaintext_google_grpc_target").is_none() {
        return;
    }
    let cp = ControlPlane::start();
    let target = format!("127.0.0.1:{}", cp.port());
    let envoy = transcript(Kind::Envoy, &cp, &target, "");
    assert_eq!(ours, envoy, "Outrigger (left) and Envoy (right) differ");
}

#[test]
fn ads_over_google_grpc_with_ssl_credentials_follows_envoy() {
    let pki = tests::pki::Pki::new();
    let server = pki.server("localhost");
    let start = || {
        let tls = tests::tls_incoming::server_config(
            &std::fs::read(&server.cert).expect("cert"),
            &std::fs::read(&server.key).expect("key"),
        );
        ControlPlane::start_istiod(IstiodOptions {
            tls,
            token: None,
            add: None,
        })
    };
    let credentials = format!(
        ", channel_credentials: {{ ssl_credentials: {{ root_certs: {{ filename: \"{}\" }} }} }}",
        pki.root().display()
    );
    let cp = start();
    let ours = transcript(
        Kind::Outrigger,
        &cp,
        &format!("localhost:{}", cp.port()),
        &credentials,
    );
    assert_eq!(
        ours.first().map(String::as_str),
        Some("traffic: 200 one"),
        "{ours:?}"
    );
    if envoy_or_skip("ads_over_google_grpc_with_ssl_credentials").is_none() {
        return;
    }
    let cp = start();
    let envoy = transcript(
        Kind::Envoy,
        &cp,
        &format!("localhost:{}", cp.port()),
        &credentials,
    );
    assert_eq!(ours, envoy, "Outrigger (left) and Envoy (right) differ");
}

/// A root that did not sign the control plane's certificate: no stream is established, and
/// the proxy stays up and keeps trying.
#[test]
fn a_google_grpc_target_with_the_wrong_root_is_not_trusted() {
    let pki = tests::pki::Pki::new();
    let other = tests::pki::Pki::new();
    let server = pki.server("localhost");
    let tls = tests::tls_incoming::server_config(
        &std::fs::read(&server.cert).expect("cert"),
        &std::fs::read(&server.key).expect("key"),
    );
    let cp = ControlPlane::start_istiod(IstiodOptions {
        tls,
        token: None,
        add: None,
    });
    let credentials = format!(
        ", channel_credentials: {{ ssl_credentials: {{ root_certs: {{ filename: \"{}\" }} }} }}",
        other.root().display()
    );
    // The initial fetch gives up after 1 s, so the proxy goes LIVE without a control plane.
    let config = bootstrap(&format!("localhost:{}", cp.port()), &credentials)
        .replace("initial_fetch_timeout: 0s", "initial_fetch_timeout: 1s");
    let proxy = RunningProxy::start(Kind::Outrigger, &config, &[]);
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(cp.streams(), 0, "a stream got through an untrusted channel");
    assert_eq!(
        proxy.get("/ready").status,
        200,
        "{}",
        proxy.logs_for_failure()
    );
    assert!(
        proxy.stderr().contains("ADS stream to target")
            || proxy.stdout().contains("ADS stream to target"),
        "the failed stream is not logged\n{}",
        proxy.logs_for_failure()
    );
}
