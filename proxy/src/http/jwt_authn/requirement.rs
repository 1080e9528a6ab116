//! Deciding a requirement: Envoy's verifiers (provider, any, all, allow missing, allow missing
//! or failed) over its authenticator, which checks each token found in turn.
//! Envoy: source/extensions/filters/http/jwt_authn/{verifier,authenticator}.cc.

use super::extract::{self, Token};
use super::jwt::{self, Jwt};
use super::status::Status;
use super::JwtFilterRuntime;
use crate::config::jwt_authn::{KeySource, Provider, Requirement};
use base64::Engine;
use serde_json::{Map, Value};
use std::future::Future;
use std::pin::Pin;

/// One request's verification: the headers it may change and the payloads it extracted.
pub struct Verification<'a> {
    filter: &'a JwtFilterRuntime,
    headers: &'a mut http::HeaderMap,
    query: &'a str,
    now: u64,
    extracted: Map<String, Value>,
}

/// How an authenticator treats failures (Envoy's `allow_failed`, `allow_missing`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tolerance {
    None,
    Missing,
    Failed,
}

type BoxStatus<'f> = Pin<Box<dyn Future<Output = Status> + Send + 'f>>;

impl<'a> Verification<'a> {
    pub fn new(
        filter: &'a JwtFilterRuntime,
        headers: &'a mut http::HeaderMap,
        query: &'a str,
    ) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self {
            filter,
            headers,
            query,
            now,
            extracted: Map::new(),
        }
    }

    pub fn into_extracted(self) -> Map<String, Value> {
        self.extracted
    }

    pub fn verify<'f>(&'f mut self, r: &'f Requirement) -> BoxStatus<'f> {
        Box::pin(async move {
            match r {
                Requirement::Provider {
                    provider,
                    audiences,
                } => {
                    let p = &self.filter.config.providers[*provider];
                    self.authenticate(&[p], Some(*provider), audiences.as_deref(), Tolerance::None)
                        .await
                }
                Requirement::AllowMissing => self.all_providers(Tolerance::Missing).await,
                Requirement::AllowMissingOrFailed => self.all_providers(Tolerance::Failed).await,
                // Children run in order; the first success decides. Without one, the last
                // failure that is not a missing token is the answer, else "missing" (checked
                // against Envoy 1.40: a token of an unknown issuer is refused as such).
                // Envoy starts the later children while one waits for remote keys; Outrigger
                // waits, which changes nothing but `jwt_cache_miss` on such a request.
                Requirement::Any(children) => {
                    let mut outcome = Status::JwtMissed;
                    for child in children {
                        match self.verify(child).await {
                            Status::Ok => return Status::Ok,
                            Status::JwtMissed => {}
                            other => outcome = other,
                        }
                    }
                    outcome
                }
                Requirement::All(children) => {
                    for child in children {
                        let status = self.verify(child).await;
                        if status != Status::Ok {
                            return status;
                        }
                    }
                    Status::Ok
                }
            }
        })
    }

    async fn all_providers(&mut self, tolerance: Tolerance) -> Status {
        let all: Vec<&Provider> = self.filter.config.providers.iter().collect();
        self.authenticate(&all, None, None, tolerance).await
    }

    /// Envoy's authenticator: with a provider, tokens from its locations; without, from all
    /// providers' and checked by the provider of their issuer. Every token must pass unless
    /// failures are tolerated; the last token's outcome is the answer.
    async fn authenticate(
        &mut self,
        providers: &[&'a Provider],
        provider: Option<usize>,
        audiences: Option<&[String]>,
        tolerance: Tolerance,
    ) -> Status {
        // Payload headers come only from this filter, never from the client.
        for p in providers {
            if let Some(h) = &p.forward_payload_header {
                self.headers.remove(h);
            }
        }
        let mut tokens = extract::extract(providers, self.headers, self.query);
        let mut status = Status::JwtMissed;
        while let Some(token) = tokens.pop() {
            status = self.check_token(&token, provider, audiences).await;
            if status != Status::Ok && tolerance == Tolerance::None {
                break;
            }
        }
        match tolerance {
            Tolerance::Failed => Status::Ok,
            Tolerance::Missing if status == Status::JwtMissed => Status::Ok,
            _ => status,
        }
    }

    async fn check_token(
        &mut self,
        token: &Token<'a>,
        provider: Option<usize>,
        audiences: Option<&[String]>,
    ) -> Status {
        // Envoy looks a provider's tokens up in its JWT cache first; the cache is off
        // (`jwt_cache_config` is refused), so every lookup misses.
        if provider.is_some() {
            self.filter.stats.jwt_cache_miss.inc();
        }
        let jwt = match jwt::parse(&token.value) {
            Ok(jwt) => jwt,
            Err(status) => return status,
        };
        if !token.issuer_allowed(&jwt.iss) {
            return Status::JwtUnknownIssuer;
        }
        let providers = &self.filter.config.providers;
        let index = match provider {
            Some(i) => i,
            // The first provider of the issuer, else the first without one.
            None => match providers
                .iter()
                .position(|p| p.issuer == jwt.iss)
                .or_else(|| providers.iter().position(|p| p.issuer.is_empty()))
            {
                Some(i) => i,
                None => return Status::JwtUnknownIssuer,
            },
        };
        let p = &providers[index];
        let status = jwt.check_time(self.now, p.clock_skew_seconds);
        if status != Status::Ok {
            return status;
        }
        if let Some(max) = p.max_lifetime {
            let allowed =
                jwt.exp != 0 && max.is_none_or(|d| jwt.exp.saturating_sub(self.now) < d.as_secs());
            if !allowed {
                return Status::JwtExpired;
            }
        }
        if !jwt.audience_allowed(audiences.unwrap_or(&p.audiences)) {
            return Status::JwtAudienceNotAllowed;
        }
        let status = match &p.keys {
            KeySource::Local(Some(keys)) => super::jwks::verify(&jwt, keys),
            KeySource::Local(None) => Status::JwksNoValidKeys,
            KeySource::Remote(_) => {
                let Some(cache) = self.filter.remote[index].as_ref() else {
                    return Status::JwksFetchFail;
                };
                let keys = match cache.get() {
                    Some(keys) => Some(keys),
                    None => cache.fetch(&self.filter.stats).await,
                };
                match keys {
                    Some(keys) => super::jwks::verify(&jwt, &keys),
                    None => Status::JwksFetchFail,
                }
            }
        };
        if status == Status::Ok {
            self.accept(p, token, &jwt);
        }
        status
    }

    /// A good token: its payload forwarded, claims copied to headers, the token removed
    /// unless forwarded, the payload kept for the metadata.
    fn accept(&mut self, p: &Provider, token: &Token<'_>, jwt: &Jwt) {
        if let Some(h) = &p.forward_payload_header {
            let mut payload = jwt.payload_b64.clone();
            if p.pad_forward_payload_header {
                while !payload.len().is_multiple_of(4) {
                    payload.push('=');
                }
            }
            if let Ok(v) = http::HeaderValue::from_str(&payload) {
                self.headers.append(h.clone(), v);
            }
        }
        for (header, claim) in &p.claim_to_headers {
            if let Some(v) =
                claim_value(&jwt.payload, claim).and_then(|v| http::HeaderValue::from_str(&v).ok())
            {
                self.headers.append(header.clone(), v);
            }
        }
        if !p.forward {
            extract::remove(token.location, self.headers);
        }
        if let Some(key) = &p.payload_in_metadata {
            let mut payload = jwt.payload.clone();
            for claim in &p.space_delimited_claims {
                if let Some(Value::String(s)) = payload.get(claim) {
                    let items: Vec<Value> = s
                        .split(' ')
                        .filter(|e| !e.is_empty())
                        .map(|e| Value::String(e.to_string()))
                        .collect();
                    if !items.is_empty() {
                        payload.insert(claim.clone(), Value::Array(items));
                    }
                }
            }
            self.extracted.insert(key.clone(), Value::Object(payload));
        }
    }
}

/// A claim (a dot-separated path into the payload) as a header value: strings as they are,
/// numbers and booleans printed, objects and lists as base64 of their JSON.
fn claim_value(payload: &Map<String, Value>, claim: &str) -> Option<String> {
    let mut parts = claim.split('.');
    let mut v = payload.get(parts.next()?)?;
    for part in parts {
        v = v.as_object()?.get(part)?;
    }
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_i64() {
            Some(i) => i.to_string(),
            None => {
                let f = n.as_f64()?;
                if f.fract() == 0.0 && f.abs() < 1e15 {
                    format!("{}", f as i64)
                } else {
                    format!("{f}")
                }
            }
        },
        Value::Bool(b) => b.to_string(),
        Value::Object(_) | Value::Array(_) => {
            base64::engine::general_purpose::STANDARD.encode(serde_json::to_string(v).ok()?)
        }
        Value::Null => return None,
    };
    (!s.is_empty()).then_some(s)
}
