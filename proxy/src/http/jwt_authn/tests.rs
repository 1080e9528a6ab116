//! Token parsing and signature checks with keys generated here (Ed25519 and P-256; the RSA
//! paths are exercised against Envoy in `tests/tests/authz_jwt.rs`).

use super::jwks;
use super::jwt;
use super::status::Status;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{self, KeyPair};

fn token(alg: &str, kid: &str, payload: &str, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let signed = format!(
        "{}.{}",
        B64.encode(format!(r#"{{"alg":"{alg}","kid":"{kid}"}}"#)),
        B64.encode(payload)
    );
    format!("{signed}.{}", B64.encode(sign(signed.as_bytes())))
}

#[test]
fn ed25519_and_es256_tokens_verify_with_their_keys_only() {
    let rng = SystemRandom::new();
    let ed = signature::Ed25519KeyPair::from_pkcs8(
        signature::Ed25519KeyPair::generate_pkcs8(&rng)
            .expect("a key")
            .as_ref(),
    )
    .expect("the key");
    let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let ec = signature::EcdsaKeyPair::from_pkcs8(
        alg,
        signature::EcdsaKeyPair::generate_pkcs8(alg, &rng)
            .expect("a key")
            .as_ref(),
        &rng,
    )
    .expect("the key");
    let point = ec.public_key().as_ref();
    let set = format!(
        r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","kid":"ed","x":"{}"}},
            {{"kty":"EC","crv":"P-256","kid":"ec","x":"{}","y":"{}"}},
            {{"kty":"RSA","kid":"broken"}}]}}"#,
        B64.encode(ed.public_key().as_ref()),
        B64.encode(&point[1..33]),
        B64.encode(&point[33..65]),
    );
    let keys = jwks::parse(set.as_bytes()).expect("two usable keys");
    assert_eq!(keys.keys.len(), 2);
    let payload = r#"{"iss":"a","sub":"s","aud":["x","https://y/"],"exp":2000000000}"#;
    let ed_token = token("EdDSA", "ed", payload, |m| ed.sign(m).as_ref().to_vec());
    let parsed = jwt::parse(&ed_token).expect("a JWT");
    assert_eq!(jwks::verify(&parsed, &keys), Status::Ok);
    assert!(parsed.audience_allowed(&["y".into()]));
    assert!(!parsed.audience_allowed(&["z".into()]));
    assert_eq!(parsed.check_time(2_000_000_059, 60), Status::Ok);
    assert_eq!(parsed.check_time(2_000_000_061, 60), Status::JwtExpired);
    let ec_token = token("ES256", "ec", payload, |m| {
        ec.sign(&rng, m).expect("signs").as_ref().to_vec()
    });
    assert_eq!(
        jwks::verify(&jwt::parse(&ec_token).expect("a JWT"), &keys),
        Status::Ok
    );
    // Signed by the EC key but naming the Ed25519 key: no key fits.
    let wrong_kid = token("ES256", "ed", payload, |m| {
        ec.sign(&rng, m).expect("signs").as_ref().to_vec()
    });
    assert_eq!(
        jwks::verify(&jwt::parse(&wrong_kid).expect("a JWT"), &keys),
        Status::JwksKidAlgMismatch
    );
    let forged = token("EdDSA", "ed", payload, |_| vec![0; 64]);
    assert_eq!(
        jwks::verify(&jwt::parse(&forged).expect("a JWT"), &keys),
        Status::JwtVerificationFail
    );
}

#[test]
fn malformed_tokens_get_envoys_statuses() {
    let part = |s: &str| B64.encode(s);
    let cases = [
        ("a.b".to_string(), Status::JwtBadFormat),
        ("!.b.c".to_string(), Status::JwtHeaderParseErrorBadBase64),
        (
            format!("{}.b.c", part("nope")),
            Status::JwtHeaderParseErrorBadJson,
        ),
        (
            format!("{}.b.c", part(r#"{"alg":1}"#)),
            Status::JwtHeaderBadAlg,
        ),
        (
            format!("{}.b.c", part(r#"{"alg":"none"}"#)),
            Status::JwtHeaderNotImplementedAlg,
        ),
        (
            format!("{}.{}.c", part(r#"{"alg":"RS256"}"#), part(r#"{"iss":1}"#)),
            Status::JwtPayloadParseErrorIssNotString,
        ),
        (
            format!(
                "{}.{}.c",
                part(r#"{"alg":"RS256"}"#),
                part(r#"{"exp":"x"}"#)
            ),
            Status::JwtPayloadParseErrorExpNotInteger,
        ),
        (
            format!(
                "{}.{}.c",
                part(r#"{"alg":"RS256"}"#),
                part(r#"{"aud":[1]}"#)
            ),
            Status::JwtPayloadParseErrorAudNotString,
        ),
    ];
    for (t, want) in cases {
        assert_eq!(jwt::parse(&t).err(), Some(want), "{t}");
    }
    assert_eq!(
        Status::JwtMissed.details(),
        "jwt_authn_access_denied{Jwt_is_missing}"
    );
    assert_eq!(jwks::parse(b"{}").err(), Some(Status::JwksNoKeys));
    assert_eq!(jwks::parse(b"[").err(), Some(Status::JwksParseError));
}
