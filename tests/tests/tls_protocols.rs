//! What a downstream TLS listener offers, probed with `openssl s_client` one protocol version
//! and one cipher at a time: no SSLv3, TLS 1.0 or 1.1, and no cipher without forward secrecy
//! or with CBC, RC4 or 3DES — only TLS 1.2 ECDHE with AEAD ciphers and TLS 1.3. The
//! workload certificates are ECDSA (as Istio's are), so the ECDSA suites are the ones to
//! negotiate.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/transport_sockets/tls/v3/common.proto#extensions-transport-sockets-tls-v3-tlsparameters

use std::io::Write;
use std::process::{Command, Stdio};
use tests::pki::Pki;
use tests::{free_port, Kind, RunningProxy};

fn bootstrap(pki: &Pki, admin: u16, port: u16) -> String {
    let server = pki.identity("server");
    format!(
        r#"
admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }} }}
static_resources:
  listeners:
  - name: tls
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificates: [{{ certificate_chain: {{ filename: "{}" }}, private_key: {{ filename: "{}" }} }}]
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: tls
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{ match: {{ prefix: "/" }}, direct_response: {{ status: 200, body: {{ inline_string: ok }} }} }}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
"#,
        server.cert.display(),
        server.key.display()
    )
}

/// Whether a handshake with `args` (protocol and cipher choices) completes.
fn handshakes(port: u16, args: &[&str]) -> bool {
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl runs");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"Q\n");
    }
    let out = child.wait_with_output().expect("openssl ends");
    let text = String::from_utf8_lossy(&out.stdout);
    // A completed handshake prints `New, TLSv1.x, Cipher is <suite>`; a refused one
    // `Cipher is (NONE)` or nothing.
    text.lines()
        .any(|l| l.contains("Cipher is ") && !l.contains("(NONE)"))
}

#[test]
fn only_modern_protocols_and_aead_ecdhe_ciphers_are_offered() {
    let pki = Pki::new();
    let (admin, port) = (free_port(), free_port());
    let _proxy = RunningProxy::start(Kind::Outrigger, &bootstrap(&pki, admin, port), &[]);
    assert!(handshakes(port, &["-tls1_3"]), "TLS 1.3");
    assert!(
        handshakes(
            port,
            &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"]
        ),
        "TLS 1.2 with ECDHE and AES-GCM"
    );
    assert!(
        handshakes(
            port,
            &["-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305"]
        ),
        "TLS 1.2 with ECDHE and ChaCha20-Poly1305"
    );
    for old in [["-tls1_1"], ["-tls1"]] {
        assert!(!handshakes(port, &old), "{old:?} must be refused");
    }
    let weak = [
        "ECDHE-ECDSA-AES128-SHA",    // CBC
        "ECDHE-ECDSA-AES256-SHA384", // CBC
        "AES128-GCM-SHA256",         // no forward secrecy
        "AES128-SHA",                // no forward secrecy, CBC
        "DES-CBC3-SHA",              // 3DES
        "RC4-SHA",                   // RC4
    ];
    for cipher in weak {
        assert!(
            !handshakes(port, &["-tls1_2", "-cipher", cipher]),
            "{cipher} must be refused"
        );
    }
}

/// testssl.sh (Debian's `testssl.sh`) scans the listener's protocols and every cipher of each
/// against its own list: only TLS 1.2 and 1.3, and only ECDHE key exchange with AEAD ciphers.
#[test]
fn testssl_finds_no_weak_protocol_or_cipher() {
    let pki = Pki::new();
    let (admin, port) = (free_port(), free_port());
    let _proxy = RunningProxy::start(Kind::Outrigger, &bootstrap(&pki, admin, port), &[]);
    let out = std::process::Command::new("testssl")
        .args([
            "--quiet",
            "--color",
            "0",
            "--warnings",
            "off",
            "-p",
            "-E",
            "--fast",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .output()
        .expect("testssl runs (Debian package testssl.sh; .ci/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    for (protocol, verdict) in [
        ("SSLv2", "not offered"),
        ("SSLv3", "not offered"),
        ("TLS 1 ", "not offered"),
        ("TLS 1.1", "not offered"),
        ("TLS 1.2", "offered"),
        ("TLS 1.3", "offered"),
    ] {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(protocol) && l.contains("offered"))
            .unwrap_or_else(|| panic!("no verdict for {protocol}:\n{text}"));
        assert!(
            line.contains(verdict) && (verdict == "not offered" || !line.contains("not offered")),
            "{protocol}: {line}"
        );
    }
    // Cipher lines start with their hex code, e.g. ` xc02b   ECDHE-ECDSA-AES128-GCM-SHA256`.
    let ciphers: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with('x') && l.contains("TLS_"))
        .collect();
    assert!(!ciphers.is_empty(), "testssl listed no cipher:\n{text}");
    for line in ciphers {
        assert!(
            line.contains("ECDH") && (line.contains("AESGCM") || line.contains("CHACHA20")),
            "a weak cipher is offered: {line}"
        );
    }
}
