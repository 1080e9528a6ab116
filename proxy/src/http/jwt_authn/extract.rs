//! Finding tokens in a request: the locations of a set of providers, each location with the
//! issuers whose tokens it may carry (a token from another issuer there is refused as
//! `Jwt issuer is not configured`).
//! Envoy: source/extensions/filters/http/jwt_authn/extractor.cc.

use crate::config::jwt_authn::{Location, Provider};
use http::HeaderMap;

/// A token and where it was found.
#[derive(Debug)]
pub struct Token<'p> {
    pub value: String,
    pub location: &'p Location,
    /// The issuers allowed at this location; empty if a provider without issuer uses it.
    issuers: Vec<&'p str>,
    any_issuer: bool,
}

impl Token<'_> {
    pub fn issuer_allowed(&self, iss: &str) -> bool {
        self.any_issuer || self.issuers.contains(&iss)
    }
}

/// The characters a JWT is made of (base64url and its dots, with padding and the standard
/// alphabet tolerated): the token ends at the first other character.
fn jwt_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'=' | b'+' | b'/')
}

fn token_after(value: &str, start: usize) -> &str {
    let rest = &value[start..];
    let end = rest
        .bytes()
        .position(|c| !jwt_char(c))
        .unwrap_or(rest.len());
    &rest[..end]
}

/// The tokens of `providers` in the request, in location order: headers, then query
/// parameters, then cookies.
pub fn extract<'p>(providers: &[&'p Provider], headers: &HeaderMap, query: &str) -> Vec<Token<'p>> {
    // Locations in first-seen order, each with the issuers of the providers using it.
    let mut locations: Vec<(&'p Location, Vec<&'p str>, bool)> = Vec::new();
    for p in providers {
        for l in &p.locations {
            let entry = match locations.iter_mut().find(|(k, _, _)| *k == l) {
                Some(e) => e,
                None => {
                    locations.push((l, Vec::new(), false));
                    let last = locations.len() - 1;
                    &mut locations[last]
                }
            };
            if p.issuer.is_empty() {
                entry.2 = true;
            } else {
                entry.1.push(&p.issuer);
            }
        }
    }
    let order = |l: &Location| match l {
        Location::Header { .. } => 0,
        Location::Param(_) => 1,
        Location::Cookie(_) => 2,
    };
    locations.sort_by_key(|(l, _, _)| order(l));
    let mut tokens = Vec::new();
    for (location, issuers, any_issuer) in locations {
        let value = match location {
            Location::Header { name, prefix } => headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    if prefix.is_empty() {
                        Some(token_after(v, 0))
                    } else {
                        v.find(prefix.as_str())
                            .map(|at| token_after(v, at + prefix.len()))
                    }
                }),
            Location::Param(name) => query.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (k == name).then_some(v)
            }),
            Location::Cookie(name) => headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|c| {
                    let (k, v) = c.trim().split_once('=')?;
                    (k == name).then_some(v.trim_matches('"'))
                }),
        };
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            tokens.push(Token {
                value: v.to_string(),
                location,
                issuers,
                any_issuer,
            });
        }
    }
    tokens
}

/// Removes a verified token from its header (`forward: false`); tokens in query parameters
/// and cookies stay, as in Envoy.
pub fn remove(location: &Location, headers: &mut HeaderMap) {
    if let Location::Header { name, .. } = location {
        headers.remove(name);
    }
}
