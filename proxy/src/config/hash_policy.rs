//! A route's `hash_policy`: how a request's hash is computed for RING_HASH and MAGLEV clusters.
//! Each policy that yields a value is folded into the hash (the previous value rotated left
//! by one, XOR the new one); a `terminal` policy that has produced a hash ends the list.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#config-route-v3-routeaction-hashpolicy
//! and https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/load_balancing/load_balancers#ring-hash

use super::error::{FieldPath, Result};
use super::values::optional_duration;
use http::{HeaderMap, HeaderName, HeaderValue};
use regex::Regex;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;
use xds_proto::pb::envoy::config::route::v3::route_action::{hash_policy, HashPolicy as Proto};
use xxhash_rust::xxh64::{xxh64, Xxh64};

#[derive(Debug, Default)]
pub struct HashPolicy {
    methods: Vec<HashMethod>,
}

#[derive(Debug)]
struct HashMethod {
    kind: HashKind,
    terminal: bool,
}

#[derive(Debug)]
enum HashKind {
    /// The header's values (sorted, so their order does not matter), rewritten when a regex is
    /// given.
    Header {
        name: HeaderName,
        rewrite: Option<(Regex, String)>,
    },
    /// The cookie's value; when absent and a TTL is set, a cookie is generated and set on the
    /// response, and its value is hashed.
    Cookie {
        name: String,
        ttl: Option<Duration>,
        path: String,
        attributes: Vec<(String, String)>,
    },
    SourceIp,
    QueryParameter(String),
    /// Outrigger keeps no hashable filter state objects, so this never yields a hash (as in
    /// Envoy when the key is absent).
    FilterState,
}

/// What a hash policy reads from a request.
#[derive(Debug, Clone, Copy)]
pub struct HashInput<'a> {
    pub headers: &'a HeaderMap,
    /// The query string (after `?`), or empty.
    pub query: &'a str,
    pub remote: Option<SocketAddr>,
}

/// The request's hash, and the cookie to set on the response when one was generated.
#[derive(Debug, Default)]
pub struct RequestHash {
    pub hash: Option<u64>,
    pub set_cookie: Option<HeaderValue>,
}

pub fn translate_hash_policy(policies: &[Proto], path: &FieldPath) -> Result<HashPolicy> {
    use hash_policy::PolicySpecifier as P;
    let mut methods = Vec::with_capacity(policies.len());
    for (i, policy) in policies.iter().enumerate() {
        let p = path.index(i);
        let kind = match &policy.policy_specifier {
            Some(P::Header(h)) => {
                let p = p.field("header");
                let name = HeaderName::from_bytes(h.header_name.to_ascii_lowercase().as_bytes())
                    .map_err(|_| p.field("header_name").error("invalid header name"))?;
                let rewrite = match &h.regex_rewrite {
                    Some(r) => {
                        let rp = p.field("regex_rewrite");
                        let pattern = r
                            .pattern
                            .as_ref()
                            .ok_or_else(|| rp.field("pattern").error("is required"))?;
                        let regex = Regex::new(&pattern.regex).map_err(|e| {
                            rp.field("pattern")
                                .field("regex")
                                .error(format!("invalid regex: {e}"))
                        })?;
                        Some((
                            regex,
                            super::route_action::re2_substitution(&r.substitution),
                        ))
                    }
                    None => None,
                };
                HashKind::Header { name, rewrite }
            }
            Some(P::Cookie(c)) => {
                let p = p.field("cookie");
                if c.name.is_empty() {
                    return Err(p.field("name").error("must not be empty"));
                }
                HashKind::Cookie {
                    name: c.name.clone(),
                    ttl: optional_duration(c.ttl.as_ref(), &p.field("ttl"))?,
                    path: c.path.clone(),
                    attributes: c
                        .attributes
                        .iter()
                        .map(|a| (a.name.clone(), a.value.clone()))
                        .collect(),
                }
            }
            Some(P::ConnectionProperties(c)) if c.source_ip => HashKind::SourceIp,
            // `source_ip: false` asks for nothing, so it never yields a hash.
            Some(P::ConnectionProperties(_)) => HashKind::FilterState,
            Some(P::QueryParameter(q)) => {
                if q.name.is_empty() {
                    return Err(p
                        .field("query_parameter")
                        .field("name")
                        .error("must not be empty"));
                }
                HashKind::QueryParameter(q.name.clone())
            }
            Some(P::FilterState(f)) => {
                if f.key.is_empty() {
                    return Err(p
                        .field("filter_state")
                        .field("key")
                        .error("must not be empty"));
                }
                HashKind::FilterState
            }
            None => return Err(p.error("a policy specifier is required")),
        };
        methods.push(HashMethod {
            kind,
            terminal: policy.terminal,
        });
    }
    Ok(HashPolicy { methods })
}

impl HashPolicy {
    pub fn is_empty(&self) -> bool {
        self.methods.is_empty()
    }

    /// The request's hash (None when no policy yields one: the balancer then picks at random).
    /// Allocates only to generate a cookie, or for a header sent more than 8 times.
    pub fn compute(&self, input: &HashInput<'_>) -> RequestHash {
        let mut out = RequestHash::default();
        for method in &self.methods {
            let value = match &method.kind {
                HashKind::Header { name, rewrite } => header_hash(input.headers, name, rewrite),
                HashKind::Cookie {
                    name,
                    ttl,
                    path,
                    attributes,
                } => match cookie_value(input.headers, name) {
                    Some(v) => Some(xxh64(v.as_bytes(), 0)),
                    None => ttl.and_then(|ttl| {
                        let (value, header) =
                            generate_cookie(input.remote, name, ttl, path, attributes)?;
                        out.set_cookie = Some(header);
                        Some(xxh64(value.as_bytes(), 0))
                    }),
                },
                HashKind::SourceIp => input.remote.map(|a| ip_hash(a.ip())),
                HashKind::QueryParameter(name) => {
                    query_value(input.query, name).map(|v| xxh64(v.as_bytes(), 0))
                }
                HashKind::FilterState => None,
            };
            if let Some(v) = value {
                out.hash = Some(out.hash.map_or(0, |h| h.rotate_left(1)) ^ v);
            }
            if method.terminal && out.hash.is_some() {
                break;
            }
        }
        out
    }
}

fn header_hash(
    headers: &HeaderMap,
    name: &HeaderName,
    rewrite: &Option<(Regex, String)>,
) -> Option<u64> {
    let mut values = headers.get_all(name).iter().map(|v| v.as_bytes());
    let first = values.next()?;
    let Some(second) = values.next() else {
        return Some(match rewrite {
            None => xxh64(first, 0),
            Some((re, sub)) => xxh64(rewritten(first, re, sub).as_bytes(), 0),
        });
    };
    // Several values: sorted, then hashed as one stream.
    let mut all: Vec<std::borrow::Cow<'_, [u8]>> = [first, second]
        .into_iter()
        .chain(values)
        .map(|v| match rewrite {
            None => std::borrow::Cow::Borrowed(v),
            Some((re, sub)) => std::borrow::Cow::Owned(rewritten(v, re, sub).into_bytes()),
        })
        .collect();
    all.sort();
    let mut hasher = Xxh64::new(0);
    for v in &all {
        hasher.update(v);
    }
    Some(hasher.digest())
}

fn rewritten(value: &[u8], re: &Regex, sub: &str) -> String {
    let text = String::from_utf8_lossy(value);
    re.replace_all(&text, sub).into_owned()
}

/// xxHash64 of the address as text (`10.0.0.1`, `::1`), formatted on the stack.
fn ip_hash(ip: std::net::IpAddr) -> u64 {
    let mut buf = [0u8; 64];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let _ = write!(cursor, "{ip}");
    let len = cursor.position() as usize;
    xxh64(&buf[..len], 0)
}

/// The first `name=value` among the `cookie` headers, quotes around the value removed.
fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim_start().split_once('=')?;
            (k == name).then(|| {
                v.strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v)
            })
        })
}

/// The value of the first `name` parameter of the query string, as sent (not decoded).
fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|pair| match pair.split_once('=') {
            Some((k, v)) if k == name => Some(v),
            None if pair == name => Some(""),
            _ => None,
        })
}

/// A cookie for a client that had none: its value is the hex xxHash64 of the downstream
/// address (`ip:port`), so streams on one connection get the same value. The header is
/// `name="value"; Max-Age=<ttl s>; Path=<path>; <attributes>; HttpOnly` (Max-Age omitted for a
/// zero TTL, which makes a session cookie), as Envoy writes it.
fn generate_cookie(
    remote: Option<SocketAddr>,
    name: &str,
    ttl: Duration,
    path: &str,
    attributes: &[(String, String)],
) -> Option<(String, HeaderValue)> {
    let remote = remote?;
    let value = format!("{:016x}", xxh64(remote.to_string().as_bytes(), 0));
    let mut header = format!("{name}=\"{value}\"");
    if ttl.as_secs() != 0 {
        header.push_str(&format!("; Max-Age={}", ttl.as_secs()));
    }
    if !path.is_empty() {
        header.push_str(&format!("; Path={path}"));
    }
    for (n, v) in attributes {
        if v.is_empty() {
            header.push_str(&format!("; {n}"));
        } else {
            header.push_str(&format!("; {n}={v}"));
        }
    }
    header.push_str("; HttpOnly");
    Some((value, HeaderValue::from_str(&header).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use xds_proto::pb::envoy::config::route::v3::route_action::hash_policy::{
        ConnectionProperties, Cookie, Header, PolicySpecifier, QueryParameter,
    };

    fn policy(spec: PolicySpecifier, terminal: bool) -> Proto {
        Proto {
            terminal,
            policy_specifier: Some(spec),
        }
    }

    fn header(name: &str) -> PolicySpecifier {
        PolicySpecifier::Header(Header {
            header_name: name.into(),
            regex_rewrite: None,
        })
    }

    fn input<'a>(headers: &'a HeaderMap, query: &'a str) -> HashInput<'a> {
        HashInput {
            headers,
            query,
            remote: Some(([10, 0, 0, 1], 4000).into()),
        }
    }

    fn compile(p: &[Proto]) -> HashPolicy {
        translate_hash_policy(p, &FieldPath::root("hash_policy")).expect("valid policy")
    }

    #[test]
    fn header_hash_is_xxhash64_of_the_value_and_order_free() {
        let p = compile(&[policy(header("x-key"), false)]);
        let mut h = HeaderMap::new();
        assert_eq!(p.compute(&input(&h, "")).hash, None);
        h.insert("x-key", HeaderValue::from_static("abc"));
        assert_eq!(p.compute(&input(&h, "")).hash, Some(xxh64(b"abc", 0)));
        let mut two = HeaderMap::new();
        two.append("x-key", HeaderValue::from_static("b"));
        two.append("x-key", HeaderValue::from_static("a"));
        let mut swapped = HeaderMap::new();
        swapped.append("x-key", HeaderValue::from_static("a"));
        swapped.append("x-key", HeaderValue::from_static("b"));
        assert_eq!(
            p.compute(&input(&two, "")).hash,
            p.compute(&input(&swapped, "")).hash
        );
        assert_eq!(p.compute(&input(&two, "")).hash, Some(xxh64(b"ab", 0)));
    }

    #[test]
    fn policies_combine_by_rotate_xor_and_terminal_stops() {
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("x-b", HeaderValue::from_static("2"));
        let (a, b) = (xxh64(b"1", 0), xxh64(b"2", 0));
        let both = compile(&[policy(header("x-a"), false), policy(header("x-b"), false)]);
        assert_eq!(
            both.compute(&input(&h, "")).hash,
            Some(a.rotate_left(1) ^ b)
        );
        let terminal = compile(&[policy(header("x-a"), true), policy(header("x-b"), false)]);
        assert_eq!(terminal.compute(&input(&h, "")).hash, Some(a));
        // A terminal policy with no value does not stop the list.
        let missing = compile(&[policy(header("x-none"), true), policy(header("x-b"), false)]);
        assert_eq!(missing.compute(&input(&h, "")).hash, Some(b));
    }

    #[test]
    fn query_source_ip_and_cookie() {
        let h = HeaderMap::new();
        let q = compile(&[policy(
            PolicySpecifier::QueryParameter(QueryParameter { name: "u".into() }),
            false,
        )]);
        assert_eq!(
            q.compute(&input(&h, "a=1&u=joe&u=x")).hash,
            Some(xxh64(b"joe", 0))
        );
        assert_eq!(q.compute(&input(&h, "a=1")).hash, None);
        let ip = compile(&[policy(
            PolicySpecifier::ConnectionProperties(ConnectionProperties { source_ip: true }),
            false,
        )]);
        assert_eq!(ip.compute(&input(&h, "")).hash, Some(xxh64(b"10.0.0.1", 0)));

        let cookie = |ttl: Option<u64>| {
            compile(&[policy(
                PolicySpecifier::Cookie(Cookie {
                    name: "sticky".into(),
                    ttl: ttl.map(|s| xds_proto::pb::google::protobuf::Duration {
                        seconds: s as i64,
                        nanos: 0,
                    }),
                    path: "/".into(),
                    attributes: Vec::new(),
                }),
                false,
            )])
        };
        let mut with = HeaderMap::new();
        with.insert("cookie", HeaderValue::from_static("a=b; sticky=\"v1\""));
        let r = cookie(None).compute(&input(&with, ""));
        assert_eq!((r.hash, r.set_cookie), (Some(xxh64(b"v1", 0)), None));
        assert_eq!(cookie(None).compute(&input(&h, "")).hash, None);
        let generated = cookie(Some(60)).compute(&input(&h, ""));
        let value = format!("{:016x}", xxh64(b"10.0.0.1:4000", 0));
        assert_eq!(generated.hash, Some(xxh64(value.as_bytes(), 0)));
        assert_eq!(
            generated.set_cookie.expect("a cookie"),
            format!("sticky=\"{value}\"; Max-Age=60; Path=/; HttpOnly").as_str()
        );
    }
}
