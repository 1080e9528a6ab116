//! Deciding RBAC policies (compiled in `config::rbac`) against what is known of a request or a
//! connection, and counting the decisions as Envoy's RBAC filters do. Shadow rules are decided
//! first and only counted; the enforced rules decide.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/rbac_filter

use crate::config::matcher::RequestHead;
use crate::config::rbac::{Action, Engine, Policy, Rbac, Rule, ValueRule};
use crate::stats::{Counter, Store};
use crate::tls::TlsInfo;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// What policies are decided on. `request` is None for the network filter.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub request: Option<&'a RequestHead<'a>>,
    /// Where the client connected (after `original_dst`).
    pub local: Option<SocketAddr>,
    /// The connection's peer.
    pub direct_remote: Option<SocketAddr>,
    /// The client's address as the connection manager determined it (`x-forwarded-for`);
    /// the peer's on a connection.
    pub remote: Option<IpAddr>,
    /// Present on a TLS connection.
    pub tls: Option<&'a TlsInfo>,
    /// The SNI the client sent, as the TLS inspector read it.
    pub server_name: Option<&'a str>,
    /// The stream's dynamic metadata (what the JWT filter wrote); None on a connection.
    pub metadata: Option<&'a crate::metadata::DynamicMetadata>,
}

impl Rule {
    pub fn matches(&self, f: &Facts<'_>) -> bool {
        match self {
            Rule::Any => true,
            Rule::All(rules) => rules.iter().all(|r| r.matches(f)),
            Rule::AnyOf(rules) => rules.iter().any(|r| r.matches(f)),
            Rule::Not(rule) => !rule.matches(f),
            Rule::Header(m) => f.request.is_some_and(|head| m.matches_request(head)),
            Rule::UrlPath(m) => f
                .request
                .and_then(|head| head.path)
                .is_some_and(|path| m.matches(without_query(path))),
            Rule::DestinationIp(cidr) => f.local.is_some_and(|a| cidr.contains(a.ip())),
            Rule::DestinationPort(port) => f.local.is_some_and(|a| u32::from(a.port()) == *port),
            Rule::DestinationPortRange { start, end } => f
                .local
                .is_some_and(|a| (*start..*end).contains(&u32::from(a.port()))),
            Rule::RequestedServerName(m) => m.matches(f.server_name.unwrap_or("")),
            Rule::Authenticated(name) => match (f.tls, name) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(tls), Some(m)) => match &tls.peer {
                    Some(peer) => {
                        peer.uri_sans.iter().any(|s| m.matches(s))
                            || peer.dns_sans.iter().any(|s| m.matches(s))
                            || m.matches(&peer.subject)
                    }
                    // No client certificate: Envoy matches its (empty) subject.
                    None => m.matches(""),
                },
            },
            Rule::DirectRemoteIp(cidr) => f.direct_remote.is_some_and(|a| cidr.contains(a.ip())),
            Rule::RemoteIp(cidr) => f.remote.is_some_and(|ip| cidr.contains(ip)),
            Rule::Constant(outcome) => *outcome,
            Rule::Metadata(m) => {
                let value = f.metadata.and_then(|md| md.value(&m.filter, &m.path));
                m.value.matches(value) != m.invert
            }
        }
    }
}

impl ValueRule {
    /// Envoy's `ValueMatcher` on a metadata value (None when the path leads nowhere).
    pub fn matches(&self, v: Option<&serde_json::Value>) -> bool {
        use serde_json::Value;
        match (self, v) {
            (ValueRule::Present(p), v) => *p && v.is_some(),
            (_, None) => false,
            (ValueRule::Or(rules), v) => rules.iter().any(|r| r.matches(v)),
            (ValueRule::Null, Some(v)) => v.is_null(),
            (ValueRule::DoubleExact(x), Some(Value::Number(n))) => n.as_f64() == Some(*x),
            (ValueRule::DoubleRange(start, end), Some(Value::Number(n))) => {
                n.as_f64().is_some_and(|f| *start <= f && f < *end)
            }
            (ValueRule::String(m), Some(Value::String(s))) => m.matches(s),
            (ValueRule::Bool(b), Some(Value::Bool(v))) => b == v,
            (ValueRule::ListOneOf(inner), Some(Value::Array(items))) => {
                items.iter().any(|i| inner.matches(Some(i)))
            }
            _ => false,
        }
    }
}

/// `url_path` matches the path without its query string or fragment.
fn without_query(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or(path)
}

impl Policy {
    fn matches(&self, f: &Facts<'_>) -> bool {
        self.permissions.iter().any(|r| r.matches(f))
            && self.principals.iter().any(|r| r.matches(f))
    }
}

/// An engine's decision, and the policy that made it (the first matching one by name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision<'a> {
    pub allowed: bool,
    pub policy: Option<&'a Arc<str>>,
}

impl Engine {
    pub fn decide(&self, f: &Facts<'_>) -> Decision<'_> {
        let matched = self.policies.iter().find(|p| p.matches(f)).map(|p| &p.name);
        let allowed = match self.action {
            Action::Allow => matched.is_some(),
            Action::Deny => matched.is_none(),
            Action::Log => true,
        };
        Decision {
            allowed,
            policy: matched,
        }
    }
}

/// One RBAC filter's counters: `<prefix>rbac.[<rules prefix>.]allowed|denied` and
/// `<prefix>rbac.[<shadow prefix>.]shadow_allowed|shadow_denied`, where the HTTP filter's prefix
/// is `http.<connection manager prefix>.` and the network filter's its own `stat_prefix`.
#[derive(Debug)]
pub struct RbacStats {
    allowed: Arc<Counter>,
    denied: Arc<Counter>,
    shadow_allowed: Arc<Counter>,
    shadow_denied: Arc<Counter>,
}

impl RbacStats {
    pub fn new(store: &Store, prefix: &str, rbac: &Rbac) -> Self {
        let scope = |extra: &str| {
            if extra.is_empty() {
                format!("{prefix}rbac.")
            } else {
                format!("{prefix}rbac.{extra}.")
            }
        };
        let rules = scope(&rbac.rules_stat_prefix);
        let shadow = scope(&rbac.shadow_rules_stat_prefix);
        Self {
            allowed: store.counter(&format!("{rules}allowed")),
            denied: store.counter(&format!("{rules}denied")),
            shadow_allowed: store.counter(&format!("{shadow}shadow_allowed")),
            shadow_denied: store.counter(&format!("{shadow}shadow_denied")),
        }
    }
}

/// What the HTTP RBAC filters of a stream write in its dynamic metadata
/// (`envoy.filters.http.rbac`): engine results and matched policies, by key. Kept only when
/// something reads it (spans' metadata tags).
#[derive(Debug, Clone, Default)]
pub struct RbacMetadata(Vec<(Arc<str>, Arc<str>)>);

impl RbacMetadata {
    /// The fields as the stream's dynamic metadata holds them.
    pub fn into_fields(self) -> serde_json::Map<String, serde_json::Value> {
        self.0
            .into_iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
            .collect()
    }

    /// Later filters overwrite what earlier ones wrote under the same key, as Envoy merges.
    fn set(&mut self, key: &Arc<str>, value: Arc<str>) {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => self.0.push((key.clone(), value)),
        }
    }

    fn record(&mut self, policy_key: &Arc<str>, result_key: &Arc<str>, d: &Decision<'_>) {
        if let Some(policy) = d.policy {
            self.set(policy_key, policy.clone());
        }
        let result = if d.allowed { "allowed" } else { "denied" };
        self.set(result_key, Arc::from(result));
    }
}

/// Decides `rbac` (the filter's policies, or a route's replacing them), counts under the
/// filter's stats and, when given `metadata`, writes the results there. Err with the denying
/// policy (None when no policy matched) when the enforced rules deny.
pub fn check<'r>(
    rbac: &'r Rbac,
    stats: &RbacStats,
    f: &Facts<'_>,
    mut metadata: Option<&mut RbacMetadata>,
) -> Result<(), Option<&'r str>> {
    let keys = &rbac.metadata_keys;
    if let Some(shadow) = &rbac.shadow {
        let decision = shadow.decide(f);
        if decision.allowed {
            stats.shadow_allowed.inc();
        } else {
            stats.shadow_denied.inc();
        }
        if let Some(m) = metadata.as_deref_mut() {
            m.record(&keys.shadow_policy, &keys.shadow_result, &decision);
        }
    }
    let Some(enforced) = &rbac.enforced else {
        return Ok(());
    };
    let decision = enforced.decide(f);
    if let Some(m) = metadata {
        m.record(&keys.enforced_policy, &keys.enforced_result, &decision);
    }
    if decision.allowed {
        stats.allowed.inc();
        Ok(())
    } else {
        stats.denied.inc();
        Err(decision.policy.map(|p| &**p))
    }
}

/// A network RBAC filter as a listener runs it.
#[derive(Debug)]
pub struct ConnectionRbac {
    pub filter: Arc<crate::config::listener::NetworkRbac>,
    pub stats: RbacStats,
}

impl ConnectionRbac {
    pub fn new(store: &Store, filter: &Arc<crate::config::listener::NetworkRbac>) -> Self {
        Self {
            stats: RbacStats::new(store, &filter.stat_prefix, &filter.rbac),
            filter: filter.clone(),
        }
    }
}

/// Decides a connection by the chain's network RBAC filters in order. Err with the
/// termination details when one denies it.
pub fn check_connection(
    filters: &[ConnectionRbac],
    downstream: &crate::http::Downstream,
) -> Result<(), String> {
    let facts = Facts {
        request: None,
        local: downstream.local,
        direct_remote: downstream.remote,
        remote: downstream.remote.map(|a| a.ip()),
        tls: downstream.tls.as_deref(),
        server_name: downstream.requested_server_name.as_deref(),
        metadata: None,
    };
    for f in filters {
        if let Err(policy) = check(&f.filter.rbac, &f.stats, &facts, None) {
            tracing::debug!(target: "rbac", "connection denied, matched policy {}", policy.unwrap_or("none"));
            return Err(denial_details(policy));
        }
    }
    Ok(())
}

/// Envoy's response code (or connection termination) details for a denial.
pub fn denial_details(policy: Option<&str>) -> String {
    format!(
        "rbac_access_denied_matched_policy[{}]",
        policy.unwrap_or("none")
    )
}

#[cfg(test)]
mod tests;
