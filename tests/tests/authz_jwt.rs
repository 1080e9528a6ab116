//! The JWT authentication filter compared with Envoy, configured as istiod configures it for a
//! RequestAuthentication with two issuers (`origins-0` with a local JWKS of RSA, EC and Ed25519
//! keys, token in `Authorization`, `x-custom-token` or `?token=`; `origins-1` with a remote JWKS
//! served through a cluster), followed by an RBAC filter with Istio's shapes for
//! `requestPrincipals` and `request.auth.claims[...]`. Keys are generated and tokens signed
//! here. For each request both proxies must answer the same status, body and
//! `www-authenticate`, forward the same headers (token, payload header, claim header) and
//! count the same `jwt_authn` and `rbac` stats.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/jwt_authn_filter

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{self, KeyPair};
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tests::upstream::Reply;
use tests::{envoy_or_skip, free_port, Kind, RunningProxy, Upstream};

const JWT: &str =
    "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";
const RBAC: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
const ISSUER_A: &str = "https://issuer-a.example";
const ISSUER_B: &str = "https://issuer-b.example";

/// Signing keys of both issuers and their public JWKS.
struct Keys {
    rsa: signature::RsaKeyPair,
    ec: signature::EcdsaKeyPair,
    ed: signature::Ed25519KeyPair,
    /// Issuer B's RSA key (served by the remote JWKS).
    rsa_b: signature::RsaKeyPair,
    jwks_a: String,
    jwks_b: String,
}

/// An RSA key made by openssl (ring cannot generate RSA keys): the PKCS#8 pair and its
/// public JWK.
fn rsa_key(dir: &std::path::Path, name: &str, kid: &str) -> (signature::RsaKeyPair, Value) {
    let pem = dir.join(format!("{name}.pem"));
    let der = dir.join(format!("{name}.der"));
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl runs");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let (pem_s, der_s) = (pem.display().to_string(), der.display().to_string());
    run(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &pem_s,
    ]);
    run(&[
        "pkcs8", "-topk8", "-nocrypt", "-in", &pem_s, "-outform", "DER", "-out", &der_s,
    ]);
    let modulus = run(&["rsa", "-in", &pem_s, "-noout", "-modulus"]);
    let hex = modulus.trim().trim_start_matches("Modulus=");
    let n: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    let pair = signature::RsaKeyPair::from_pkcs8(&std::fs::read(&der).expect("the DER key"))
        .expect("a PKCS#8 RSA key");
    let jwk = json!({ "kty": "RSA", "kid": kid, "n": B64.encode(n), "e": "AQAB" });
    (pair, jwk)
}

fn keys(dir: &std::path::Path) -> Keys {
    let rng = SystemRandom::new();
    let (rsa, rsa_jwk) = rsa_key(dir, "a", "rsa-a");
    let (rsa_b, rsa_b_jwk) = rsa_key(dir, "b", "rsa-b");
    let ec_pkcs8 =
        signature::EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("an EC key");
    let ec = signature::EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        ec_pkcs8.as_ref(),
        &rng,
    )
    .expect("the EC key");
    let point = ec.public_key().as_ref();
    let ec_jwk = json!({ "kty": "EC", "kid": "ec-a", "crv": "P-256", "alg": "ES256",
        "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65]) });
    let ed_pkcs8 = signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("an Ed25519 key");
    let ed = signature::Ed25519KeyPair::from_pkcs8(ed_pkcs8.as_ref()).expect("the Ed25519 key");
    let ed_jwk = json!({ "kty": "OKP", "kid": "ed-a", "crv": "Ed25519",
        "x": B64.encode(ed.public_key().as_ref()) });
    Keys {
        rsa,
        ec,
        ed,
        rsa_b,
        jwks_a: json!({ "keys": [rsa_jwk, ec_jwk, ed_jwk] }).to_string(),
        jwks_b: json!({ "keys": [rsa_b_jwk] }).to_string(),
    }
}

#[derive(Clone, Copy)]
enum Alg {
    Rs256,
    Ps256,
    Es256,
    EdDsa,
    Rs256B,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// A token signed with `alg`'s key, carrying `claims`.
fn sign(keys: &Keys, alg: Alg, claims: &Value) -> String {
    let (name, kid) = match alg {
        Alg::Rs256 => ("RS256", "rsa-a"),
        Alg::Ps256 => ("PS256", "rsa-a"),
        Alg::Es256 => ("ES256", "ec-a"),
        Alg::EdDsa => ("EdDSA", "ed-a"),
        Alg::Rs256B => ("RS256", "rsa-b"),
    };
    let header = B64.encode(json!({ "alg": name, "kid": kid, "typ": "JWT" }).to_string());
    let payload = B64.encode(claims.to_string());
    let signed = format!("{header}.{payload}");
    let rng = SystemRandom::new();
    let sig = match alg {
        Alg::Rs256 | Alg::Ps256 | Alg::Rs256B => {
            let key = if matches!(alg, Alg::Rs256B) {
                &keys.rsa_b
            } else {
                &keys.rsa
            };
            let padding: &dyn signature::RsaEncoding = if matches!(alg, Alg::Ps256) {
                &signature::RSA_PSS_SHA256
            } else {
                &signature::RSA_PKCS1_SHA256
            };
            let mut sig = vec![0; key.public().modulus_len()];
            key.sign(padding, &rng, signed.as_bytes(), &mut sig)
                .expect("RSA signs");
            sig
        }
        Alg::Es256 => keys
            .ec
            .sign(&rng, signed.as_bytes())
            .expect("EC signs")
            .as_ref()
            .to_vec(),
        Alg::EdDsa => keys.ed.sign(signed.as_bytes()).as_ref().to_vec(),
    };
    format!("{signed}.{}", B64.encode(sig))
}

fn claims(iss: &str, sub: &str, aud: &str, exp_in: i64) -> Value {
    json!({ "iss": iss, "sub": sub, "aud": aud, "iat": now() - 10,
        "exp": (now() as i64 + exp_in) as u64, "scope": "read write" })
}

/// istiod's filter for two jwtRules (`pilot/pkg/security/authn/policy_applier.go`), plus a
/// requirement map for one route.
fn jwt_filter(jwks_a: &str, jwks_port: u16) -> Value {
    let provider = |name: &str| json!({ "provider_name": name });
    let optional = |name: &str| {
        json!({ "requires_any": { "requirements": [
        provider(name), { "allow_missing": {} }] } })
    };
    json!({ "name": "envoy.filters.http.jwt_authn", "typed_config": { "@type": JWT,
        "providers": {
            "origins-0": {
                "issuer": ISSUER_A, "audiences": ["aud-a"],
                "local_jwks": { "inline_string": jwks_a },
                "forward_payload_header": "x-jwt-payload",
                "payload_in_metadata": "payload",
                "normalize_payload_in_metadata": { "space_delimited_claims": ["permission", "scope"] },
                "claim_to_headers": [{ "header_name": "x-jwt-sub", "claim_name": "sub" }],
                "from_headers": [{ "name": "Authorization", "value_prefix": "Bearer " },
                                 { "name": "x-custom-token" }],
                "from_params": ["token"] },
            "origins-1": {
                "issuer": ISSUER_B,
                "remote_jwks": {
                    "http_uri": { "uri": format!("http://jwks.example:{jwks_port}/keys"),
                                  "cluster": "jwks", "timeout": "5s" },
                    "cache_duration": "300s" },
                "forward": true,
                "payload_in_metadata": "payload",
                "normalize_payload_in_metadata": { "space_delimited_claims": ["permission", "scope"] } } },
        "rules": [
            { "match": { "prefix": "/health" } },
            { "match": { "prefix": "/" }, "requires": { "requires_any": { "requirements": [
                provider("origins-0"), provider("origins-1"),
                { "requires_all": { "requirements": [optional("origins-0"), optional("origins-1")] } }] } } }],
        "requirement_map": {
            "strict": { "provider_and_audiences": { "provider_name": "origins-0", "audiences": ["other-aud"] } } },
        "bypass_cors_preflight": true } })
}

/// Istio's RBAC shapes: `requestPrincipals: ["https://issuer-a.example/alice"]` on /api/,
/// `request.auth.claims[groups]: ["admins"]` on /api/claims, a `scope` claim on /api/scope.
fn rbac_filter() -> Value {
    let md = |path: &[&str], value: Value| {
        json!({ "metadata": { "filter": "envoy.filters.http.jwt_authn",
            "path": path.iter().map(|k| json!({ "key": k })).collect::<Vec<_>>(), "value": value } })
    };
    let exact = |s: &str| json!({ "string_match": { "exact": s } });
    let prefix = |p: &str| json!({ "url_path": { "path": { "prefix": p } } });
    let claim = |name: &str, v: &str| {
        md(
            &["payload", name],
            json!({ "or_match": { "value_matchers": [
            { "list_match": { "one_of": exact(v) } }, exact(v)] } }),
        )
    };
    json!({ "name": "envoy.filters.http.rbac", "typed_config": { "@type": RBAC, "rules": { "policies": {
        "ns[foo]-policy[principal]-rule[0]": {
            "permissions": [{ "and_rules": { "rules": [{ "or_rules": { "rules": [prefix("/api/")] } }] } }],
            "principals": [{ "and_ids": { "ids": [{ "or_ids": { "ids": [{ "and_ids": { "ids": [
                md(&["payload", "iss"], exact(ISSUER_A)), md(&["payload", "sub"], exact("alice"))] } }] } }] } }] },
        "ns[foo]-policy[claims]-rule[0]": {
            "permissions": [prefix("/api/claims")],
            "principals": [{ "and_ids": { "ids": [{ "or_ids": { "ids": [claim("groups", "admins")] } }] } }] },
        "ns[foo]-policy[scope]-rule[0]": {
            "permissions": [prefix("/api/scope")],
            "principals": [claim("scope", "write")] },
        "ns[foo]-policy[open]-rule[0]": {
            "permissions": [{ "or_rules": { "rules": [prefix("/open/"), prefix("/health"), prefix("/strict/")] } }],
            "principals": [{ "any": true }] } } } } })
}

fn bootstrap(ports: &Ports, jwks_a: &str) -> String {
    let address = |p: u16| json!({ "socket_address": { "address": "127.0.0.1", "port_value": p } });
    let cluster = |name: &str, port: u16| {
        json!({ "name": name, "type": "STATIC", "connect_timeout": "2s",
            "load_assignment": { "cluster_name": name, "endpoints": [{ "lb_endpoints": [
                { "endpoint": { "address": address(port) } }] }] } })
    };
    let per_route = |config: Value| {
        json!({ "envoy.filters.http.jwt_authn": { "@type":
            "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig", "disabled": config["disabled"],
            "requirement_name": config["requirement_name"] } })
    };
    let mut open = per_route(json!({ "disabled": true }));
    open["envoy.filters.http.jwt_authn"]
        .as_object_mut()
        .map(|o| o.remove("requirement_name"));
    let mut strict = per_route(json!({ "requirement_name": "strict" }));
    strict["envoy.filters.http.jwt_authn"]
        .as_object_mut()
        .map(|o| o.remove("disabled"));
    let hcm = json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "inbound_0.0.0.0_8080",
            "route_config": { "virtual_hosts": [{ "name": "all", "domains": ["*"], "routes": [
                { "match": { "prefix": "/open/" }, "route": { "cluster": "app" }, "typed_per_filter_config": open },
                { "match": { "prefix": "/strict/" }, "route": { "cluster": "app" }, "typed_per_filter_config": strict },
                { "match": { "prefix": "/" }, "route": { "cluster": "app" } }] }] },
            "http_filters": [jwt_filter(jwks_a, ports.jwks), rbac_filter(),
                { "name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }],
        }
    });
    json!({
        "admin": { "address": address(ports.admin) },
        "static_resources": {
            "listeners": [{ "name": "http", "address": address(ports.http),
                "filter_chains": [{ "filters": [hcm] }] }],
            "clusters": [cluster("app", ports.app), cluster("jwks", ports.jwks)]
        }
    })
    .to_string()
}

struct Ports {
    admin: u16,
    http: u16,
    app: u16,
    jwks: u16,
}

#[derive(Debug, PartialEq, Eq)]
struct Observed {
    requests: Vec<String>,
    stats: Vec<String>,
}

fn run(kind: Kind, keys: &Keys) -> Observed {
    let app = Upstream::start("app");
    let jwks = Upstream::start_with(Reply {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: keys.jwks_b.clone(),
    });
    let ports = Ports {
        admin: free_port(),
        http: free_port(),
        app: app.port(),
        jwks: jwks.port(),
    };
    // One worker: Envoy caches fetched keys per worker thread, so with more the number of
    // fetches would depend on which worker takes each connection.
    let proxy = RunningProxy::start(
        kind,
        &bootstrap(&ports, &keys.jwks_a),
        &["--concurrency", "1"],
    );
    let alice = claims(ISSUER_A, "alice", "aud-a", 3600);
    let mut admin_bob = claims(ISSUER_A, "bob", "aud-a", 3600);
    admin_bob["groups"] = json!(["admins", "dev"]);
    let mut dave = claims(ISSUER_B, "dave", "any", 3600);
    dave["groups"] = json!("admins");
    let token = |alg: Alg, c: &Value| sign(keys, alg, c);
    let alice_rs = token(Alg::Rs256, &alice);
    let mut tampered = alice_rs.clone();
    tampered.truncate(tampered.len() - 4);
    tampered.push_str("AAAA");
    let bearer = |t: &str| format!("Authorization: Bearer {t}");
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", ports.http);
    let cases: Vec<(&str, &str, String, Vec<String>)> = vec![
        ("RS256 alice", "GET", url("/api/x"), vec![bearer(&alice_rs)]),
        (
            "PS256 alice",
            "GET",
            url("/api/x"),
            vec![bearer(&token(Alg::Ps256, &alice))],
        ),
        (
            "ES256 alice",
            "GET",
            url("/api/x"),
            vec![bearer(&token(Alg::Es256, &alice))],
        ),
        (
            "EdDSA alice",
            "GET",
            url("/api/x"),
            vec![bearer(&token(Alg::EdDsa, &alice))],
        ),
        (
            "custom header",
            "GET",
            url("/api/x"),
            vec![format!("x-custom-token: {alice_rs}")],
        ),
        (
            "query param",
            "GET",
            url(&format!("/api/x?token={alice_rs}")),
            vec![],
        ),
        ("missing", "GET", url("/api/x"), vec![]),
        (
            "expired",
            "GET",
            url("/api/x"),
            vec![bearer(&token(
                Alg::Rs256,
                &claims(ISSUER_A, "alice", "aud-a", -3600),
            ))],
        ),
        (
            "wrong issuer",
            "GET",
            url("/api/x"),
            vec![bearer(&token(
                Alg::Rs256,
                &claims("https://other.example", "alice", "aud-a", 3600),
            ))],
        ),
        (
            "wrong audience",
            "GET",
            url("/api/x"),
            vec![bearer(&token(
                Alg::Rs256,
                &claims(ISSUER_A, "alice", "aud-x", 3600),
            ))],
        ),
        (
            "bad signature",
            "GET",
            url("/api/x"),
            vec![bearer(&tampered)],
        ),
        ("not a JWT", "GET", url("/api/x"), vec![bearer("abc")]),
        (
            "payload header from the client",
            "GET",
            url("/api/x"),
            vec![bearer(&alice_rs), "x-jwt-payload: forged".into()],
        ),
        (
            "bob is not the principal",
            "GET",
            url("/api/x"),
            vec![bearer(&token(
                Alg::Rs256,
                &claims(ISSUER_A, "bob", "aud-a", 3600),
            ))],
        ),
        (
            "groups claim",
            "GET",
            url("/api/claims"),
            vec![bearer(&token(Alg::Rs256, &admin_bob))],
        ),
        (
            "scope claim normalised",
            "GET",
            url("/api/scope"),
            vec![bearer(&token(
                Alg::Es256,
                &claims(ISSUER_A, "carol", "aud-a", 3600),
            ))],
        ),
        (
            "remote JWKS",
            "GET",
            url("/api/claims"),
            vec![bearer(&token(Alg::Rs256B, &dave))],
        ),
        (
            "remote JWKS cached",
            "GET",
            url("/api/claims"),
            vec![bearer(&token(Alg::Rs256B, &dave))],
        ),
        (
            "route disables jwt",
            "GET",
            url("/open/x"),
            vec![bearer("abc")],
        ),
        (
            "route requirement",
            "GET",
            url("/strict/x"),
            vec![bearer(&alice_rs)],
        ),
        ("no requirement", "GET", url("/health"), vec![bearer("abc")]),
        (
            "CORS preflight",
            "OPTIONS",
            url("/api/x"),
            vec![
                "Origin: http://web.example".into(),
                "Access-Control-Request-Method: GET".into(),
                bearer("abc"),
            ],
        ),
    ];
    let mut requests = Vec::new();
    for (what, method, url, headers) in &cases {
        let before = app.requests().len();
        let args: Vec<&str> = headers.iter().flat_map(|h| ["-H", h.as_str()]).collect();
        let r = tests::curl::request(method, url, &args)
            .unwrap_or_else(|f| panic!("{}: {what}: {f:?}", kind.name()));
        std::thread::sleep(Duration::from_millis(30));
        let received = app.requests();
        let upstream = match received.get(before) {
            None => "not forwarded".to_string(),
            Some(req) => {
                let h = |n: &str| req.header(n).map(|v| v.len().min(12)).unwrap_or(0);
                format!(
                    "forwarded path={} authorization={} x-custom-token={} x-jwt-payload={:?} x-jwt-sub={:?}",
                    req.path.split('?').next().unwrap_or(""),
                    h("authorization") > 0,
                    h("x-custom-token") > 0,
                    req.header("x-jwt-payload").map(|p| p == B64.encode(
                        serde_json::to_string(&alice).unwrap_or_default()).as_str()
                        || p == "forged"),
                    req.header("x-jwt-sub"),
                )
            }
        };
        // The realm names the listener's port, which differs between the two runs.
        let challenge = r
            .header("www-authenticate")
            .map(|v| v.replace(&ports.http.to_string(), "PORT"));
        requests.push(format!(
            "{what}: {} {:?} www-authenticate={challenge:?} {upstream}",
            r.status,
            r.body.trim(),
        ));
    }
    let mut stats: Vec<String> = proxy
        .get("/stats?filter=(jwt_authn|rbac)")
        .body
        .lines()
        .filter(|l| !l.contains("shadow"))
        .map(str::to_string)
        .collect();
    stats.sort();
    drop(proxy);
    Observed { requests, stats }
}

#[test]
fn jwt_authn_verifies_like_envoy() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let keys = keys(dir.path());
    let ours = run(Kind::Outrigger, &keys);
    let line = |what: &str| {
        ours.requests
            .iter()
            .find(|l| l.starts_with(&format!("{what}:")))
            .cloned()
            .unwrap_or_default()
    };
    // Independent of Envoy: what the RequestAuthentication and policies mean.
    for ok in [
        "RS256 alice",
        "PS256 alice",
        "ES256 alice",
        "EdDSA alice",
        "custom header",
        "query param",
        "groups claim",
        "scope claim normalised",
        "remote JWKS",
    ] {
        assert!(line(ok).contains(": 200 "), "{ok}: {ours:#?}");
    }
    assert!(
        line("expired").contains("401 \"Jwt is expired\""),
        "{ours:#?}"
    );
    assert!(
        line("missing").contains("403 \"RBAC: access denied\""),
        "{ours:#?}"
    );
    assert!(
        line("wrong audience").contains("403 \"Audiences in Jwt are not allowed\""),
        "{ours:#?}"
    );
    assert!(
        line("RS256 alice").contains("authorization=false"),
        "{ours:#?}"
    );
    assert!(
        line("remote JWKS").contains("authorization=true"),
        "{ours:#?}"
    );
    if envoy_or_skip("jwt_authn_verifies_like_envoy").is_none() {
        return;
    }
    let envoy = run(Kind::Envoy, &keys);
    assert_eq!(ours.requests, envoy.requests);
    // Known difference: while one `requires_any` branch waits for the remote JWKS, Envoy
    // already starts the next ones, whose provider lookups count in `jwt_cache_miss`;
    // Outrigger evaluates branches in order. Every other counter must agree.
    let comparable = |stats: &[String]| -> Vec<String> {
        stats
            .iter()
            .filter(|l| !l.contains("jwt_cache_miss"))
            .cloned()
            .collect()
    };
    assert_eq!(comparable(&ours.stats), comparable(&envoy.stats));
}
