//! JSON Web Key Sets (RFC 7517) as Envoy's JWT library reads them, and signature checks with
//! `ring`: RSA (RS*/PS*), EC (ES256/ES384), Ed25519 (EdDSA) and HMAC (HS*) keys.
//! Keys that do not parse are skipped; a set with no usable key is refused.

use super::jwt::Jwt;
use super::status::Status;
use base64::Engine;
use ring::signature;
use serde_json::Value;

/// One key of a set. `kid` and `alg`, when the key has them, restrict which tokens it checks.
#[derive(Debug)]
pub struct Jwk {
    pub kid: Option<String>,
    pub alg: Option<String>,
    key: Key,
}

#[derive(Debug)]
enum Key {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// An uncompressed point (0x04 || x || y) and its curve.
    Ec {
        point: Vec<u8>,
        curve: Curve,
    },
    Ed25519(Vec<u8>),
    Hmac(Vec<u8>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
    /// Parsed but not usable: `ring` does not verify P-521 (ES512).
    P521,
}

#[derive(Debug)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

fn b64url(s: &str) -> Option<Vec<u8>> {
    // Envoy's decoder accepts padded and unpadded base64url.
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}

/// Parses a JWKS document.
pub fn parse(text: &[u8]) -> Result<Jwks, Status> {
    let doc: Value = serde_json::from_slice(text).map_err(|_| Status::JwksParseError)?;
    let Some(obj) = doc.as_object() else {
        return Err(Status::JwksParseError);
    };
    let Some(keys) = obj.get("keys") else {
        return Err(Status::JwksNoKeys);
    };
    let Some(keys) = keys.as_array() else {
        return Err(Status::JwksBadKeys);
    };
    let keys: Vec<Jwk> = keys.iter().filter_map(jwk).collect();
    if keys.is_empty() {
        return Err(Status::JwksNoValidKeys);
    }
    Ok(Jwks { keys })
}

fn jwk(v: &Value) -> Option<Jwk> {
    let o = v.as_object()?;
    let text = |name: &str| o.get(name).and_then(Value::as_str);
    let alg = match o.get("alg") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return None,
    };
    let kid = match o.get("kid") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return None,
    };
    let a = alg.as_deref().unwrap_or("");
    let key = match text("kty")? {
        "RSA" => {
            if !a.is_empty() && !a.starts_with("RS") && !a.starts_with("PS") {
                return None;
            }
            Key::Rsa {
                n: b64url(text("n")?)?,
                e: b64url(text("e")?)?,
            }
        }
        "EC" => {
            if !a.is_empty() && !a.starts_with("ES") {
                return None;
            }
            let curve = match (text("crv"), a) {
                (Some("P-256"), "" | "ES256") | (None, "ES256") => Curve::P256,
                (Some("P-384"), "" | "ES384") | (None, "ES384") => Curve::P384,
                (Some("P-521"), "" | "ES512") | (None, "ES512") => Curve::P521,
                // Without crv or alg Envoy assumes P-256.
                (None, "") => Curve::P256,
                _ => return None,
            };
            let (x, y) = (b64url(text("x")?)?, b64url(text("y")?)?);
            let mut point = Vec::with_capacity(1 + x.len() + y.len());
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            Key::Ec { point, curve }
        }
        "OKP" => {
            if !a.is_empty() && a != "EdDSA" {
                return None;
            }
            if text("crv")? != "Ed25519" {
                return None;
            }
            let x = b64url(text("x")?)?;
            if x.len() != 32 {
                return None;
            }
            Key::Ed25519(x)
        }
        "oct" => {
            if !a.is_empty() && !a.starts_with("HS") {
                return None;
            }
            Key::Hmac(b64url(text("k")?)?)
        }
        _ => return None,
    };
    Some(Jwk { kid, alg, key })
}

impl Key {
    /// Whether this kind of key checks tokens signed with `alg`.
    fn fits(&self, alg: &str) -> bool {
        match self {
            Key::Rsa { .. } => alg.starts_with("RS") || alg.starts_with("PS"),
            Key::Ec { curve, .. } => matches!(
                (curve, alg),
                (Curve::P256, "ES256") | (Curve::P384, "ES384") | (Curve::P521, "ES512")
            ),
            Key::Ed25519(_) => alg == "EdDSA",
            Key::Hmac(_) => alg.starts_with("HS"),
        }
    }

    fn verify(&self, alg: &str, signed: &[u8], sig: &[u8]) -> bool {
        match self {
            Key::Rsa { n, e } => {
                let params: &signature::RsaParameters = match alg {
                    "RS256" => &signature::RSA_PKCS1_2048_8192_SHA256,
                    "RS384" => &signature::RSA_PKCS1_2048_8192_SHA384,
                    "RS512" => &signature::RSA_PKCS1_2048_8192_SHA512,
                    "PS256" => &signature::RSA_PSS_2048_8192_SHA256,
                    "PS384" => &signature::RSA_PSS_2048_8192_SHA384,
                    "PS512" => &signature::RSA_PSS_2048_8192_SHA512,
                    _ => return false,
                };
                signature::RsaPublicKeyComponents { n, e }
                    .verify(params, signed, sig)
                    .is_ok()
            }
            Key::Ec { point, curve } => {
                let algorithm: &dyn signature::VerificationAlgorithm = match curve {
                    Curve::P256 => &signature::ECDSA_P256_SHA256_FIXED,
                    Curve::P384 => &signature::ECDSA_P384_SHA384_FIXED,
                    Curve::P521 => return false,
                };
                signature::UnparsedPublicKey::new(algorithm, point)
                    .verify(signed, sig)
                    .is_ok()
            }
            Key::Ed25519(x) => signature::UnparsedPublicKey::new(&signature::ED25519, x)
                .verify(signed, sig)
                .is_ok(),
            Key::Hmac(k) => {
                let algorithm = match alg {
                    "HS256" => ring::hmac::HMAC_SHA256,
                    "HS384" => ring::hmac::HMAC_SHA384,
                    "HS512" => ring::hmac::HMAC_SHA512,
                    _ => return false,
                };
                ring::hmac::verify(&ring::hmac::Key::new(algorithm, k), signed, sig).is_ok()
            }
        }
    }
}

/// Checks the token's signature with the set: the keys whose `kid` and `alg` fit the token
/// are tried in order. Without any such key, `JwksKidAlgMismatch`.
pub fn verify(jwt: &Jwt, jwks: &Jwks) -> Status {
    if jwt.alg == "EdDSA" && jwt.signature.len() != 64 {
        return Status::JwtEd25519SignatureWrongLength;
    }
    let mut candidate = false;
    for k in &jwks.keys {
        if let (Some(want), Some(have)) = (jwt.kid.as_deref(), k.kid.as_deref()) {
            if want != have {
                continue;
            }
        }
        if k.alg.as_deref().is_some_and(|a| a != jwt.alg) || !k.key.fits(&jwt.alg) {
            continue;
        }
        candidate = true;
        if k.key
            .verify(&jwt.alg, jwt.signed.as_bytes(), &jwt.signature)
        {
            return Status::Ok;
        }
    }
    if candidate {
        Status::JwtVerificationFail
    } else {
        Status::JwksKidAlgMismatch
    }
}
