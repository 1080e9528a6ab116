//! A JWT (RFC 7519) split and parsed as Envoy's JWT library does, before any key is looked at:
//! header `alg`/`kid`, the registered claims with their type checks, the raw payload kept for
//! `forward_payload_header` and the metadata.

use super::status::Status;
use base64::Engine;
use serde_json::{Map, Value};

/// The algorithms Envoy's library accepts in a header.
const ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "HS256",
    "HS384", "HS512", "EdDSA",
];

#[derive(Debug)]
pub struct Jwt {
    pub alg: String,
    pub kid: Option<String>,
    pub iss: String,
    pub sub: String,
    pub audiences: Vec<String>,
    /// Seconds since the epoch; 0 when absent.
    pub exp: u64,
    pub nbf: u64,
    pub payload: Map<String, Value>,
    /// The payload as it came, base64url without padding.
    pub payload_b64: String,
    /// `header.payload`, what the signature covers.
    pub signed: String,
    pub signature: Vec<u8>,
}

fn decode(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}

/// A non-negative integer claim; absent is 0.
fn time_claim(
    p: &Map<String, Value>,
    name: &str,
    not_int: Status,
    range: Status,
) -> Result<u64, Status> {
    match p.get(name) {
        None => Ok(0),
        Some(Value::Number(n)) => {
            if let Some(u) = n.as_u64() {
                return Ok(u);
            }
            match n.as_f64() {
                Some(f) if f.fract() == 0.0 && f >= 0.0 && f < u64::MAX as f64 => Ok(f as u64),
                Some(f) if f.fract() == 0.0 => Err(range),
                _ => Err(not_int),
            }
        }
        Some(_) => Err(not_int),
    }
}

pub fn parse(token: &str) -> Result<Jwt, Status> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Status::JwtBadFormat);
    };
    let header = decode(h).ok_or(Status::JwtHeaderParseErrorBadBase64)?;
    let header: Value =
        serde_json::from_slice(&header).map_err(|_| Status::JwtHeaderParseErrorBadJson)?;
    let header = header
        .as_object()
        .ok_or(Status::JwtHeaderParseErrorBadJson)?;
    let alg = match header.get("alg") {
        Some(Value::String(a)) => a.clone(),
        _ => return Err(Status::JwtHeaderBadAlg),
    };
    if !ALGORITHMS.contains(&alg.as_str()) {
        return Err(Status::JwtHeaderNotImplementedAlg);
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(Status::JwtHeaderBadKid),
    };
    let payload = decode(p).ok_or(Status::JwtPayloadParseErrorBadBase64)?;
    let payload: Value =
        serde_json::from_slice(&payload).map_err(|_| Status::JwtPayloadParseErrorBadJson)?;
    let Value::Object(payload) = payload else {
        return Err(Status::JwtPayloadParseErrorBadJson);
    };
    let string = |name: &str, bad: Status| match payload.get(name) {
        None => Ok(String::new()),
        Some(Value::String(v)) => Ok(v.clone()),
        Some(_) => Err(bad),
    };
    let iss = string("iss", Status::JwtPayloadParseErrorIssNotString)?;
    let sub = string("sub", Status::JwtPayloadParseErrorSubNotString)?;
    time_claim(
        &payload,
        "iat",
        Status::JwtPayloadParseErrorIatNotInteger,
        Status::JwtPayloadParseErrorIatOutOfRange,
    )?;
    let nbf = time_claim(
        &payload,
        "nbf",
        Status::JwtPayloadParseErrorNbfNotInteger,
        Status::JwtPayloadParseErrorNbfOutOfRange,
    )?;
    let exp = time_claim(
        &payload,
        "exp",
        Status::JwtPayloadParseErrorExpNotInteger,
        Status::JwtPayloadParseErrorExpOutOfRange,
    )?;
    string("jti", Status::JwtPayloadParseErrorJtiNotString)?;
    let audiences = match payload.get("aud") {
        None => Vec::new(),
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or(Status::JwtPayloadParseErrorAudNotString)?,
        Some(_) => return Err(Status::JwtPayloadParseErrorAudNotString),
    };
    let signature = decode(s).ok_or(Status::JwtSignatureParseErrorBadBase64)?;
    Ok(Jwt {
        alg,
        kid,
        iss,
        sub,
        audiences,
        exp,
        nbf,
        payload,
        payload_b64: p.to_string(),
        signed: format!("{h}.{p}"),
        signature,
    })
}

impl Jwt {
    /// `nbf` and `exp` against now, each with the clock skew allowed.
    pub fn check_time(&self, now: u64, skew: u64) -> Status {
        if self.nbf != 0 && now.saturating_add(skew) < self.nbf {
            return Status::JwtNotYetValid;
        }
        if self.exp != 0 && now > self.exp.saturating_add(skew) {
            return Status::JwtExpired;
        }
        Status::Ok
    }

    /// Whether one of the token's audiences is allowed; an empty list allows any. Envoy
    /// compares audiences without a scheme or trailing slash (`http://a/` and `a` are equal).
    pub fn audience_allowed(&self, allowed: &[String]) -> bool {
        if allowed.is_empty() {
            return true;
        }
        self.audiences
            .iter()
            .any(|a| allowed.iter().any(|b| sanitize(a) == sanitize(b)))
    }
}

fn sanitize(aud: &str) -> &str {
    let a = aud
        .strip_prefix("http://")
        .or_else(|| aud.strip_prefix("https://"))
        .unwrap_or(aud);
    a.strip_suffix('/').unwrap_or(a)
}
