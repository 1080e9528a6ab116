//! Role-based access control policies (`envoy.config.rbac.v3.RBAC`), compiled for the HTTP and
//! network RBAC filters: matchers built once, policies in Envoy's evaluation order (by name).
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/rbac/v3/rbac.proto
//! HTTP filter: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/rbac_filter
//! Network filter: https://www.envoyproxy.io/docs/envoy/latest/configuration/listeners/network_filters/rbac_filter
// `source_ip` and `metadata` are deprecated in the API but still honoured by Envoy (and sent
// by Istio).
#![allow(deprecated)]

use super::error::{FieldPath, Result};
use super::fields::{check, Acknowledged};
use super::listener::{cidrs, Cidr};
use super::matcher::{header_matcher, string_matcher, HeaderMatcher, StringMatcher};
use std::sync::Arc;
use xds_proto::pb::envoy::config::rbac::v3::{
    permission::Rule as ProtoPermission, principal::Identifier, rbac::Action as ProtoAction,
    Permission, Policy as ProtoPolicy, Principal, Rbac as ProtoRules,
};
use xds_proto::pb::envoy::extensions::filters::http::rbac::v3::{Rbac as HttpRbac, RbacPerRoute};
use xds_proto::pb::envoy::extensions::filters::network::rbac::v3::{
    rbac::EnforcementType, Rbac as NetworkRbac,
};
use xds_proto::pb::envoy::r#type::matcher::v3::{
    list_matcher, metadata_matcher::path_segment::Segment, value_matcher::MatchPattern,
    MetadataMatcher, ValueMatcher,
};

/// One RBAC filter's policies: the enforced rules and the shadow rules, each optional (an
/// absent set enforces nothing and counts nothing), and the stat name parts.
#[derive(Debug)]
pub struct Rbac {
    pub enforced: Option<Engine>,
    pub shadow: Option<Engine>,
    /// `rules_stat_prefix`: allowed/denied are `…rbac.<prefix>.allowed` when set.
    pub rules_stat_prefix: String,
    /// `shadow_rules_stat_prefix`: `…rbac.<prefix>.shadow_allowed` when set.
    pub shadow_rules_stat_prefix: String,
    /// The dynamic metadata keys the HTTP filter writes its results under (in the
    /// `envoy.filters.http.rbac` namespace), each after its stat prefix.
    pub metadata_keys: MetadataKeys,
}

#[derive(Debug)]
pub struct MetadataKeys {
    pub shadow_policy: Arc<str>,
    pub shadow_result: Arc<str>,
    pub enforced_policy: Arc<str>,
    pub enforced_result: Arc<str>,
}

impl MetadataKeys {
    fn new(rules_stat_prefix: &str, shadow_rules_stat_prefix: &str) -> Self {
        let key = |prefix: &str, name: &str| Arc::from(format!("{prefix}{name}"));
        Self {
            shadow_policy: key(shadow_rules_stat_prefix, "shadow_effective_policy_id"),
            shadow_result: key(shadow_rules_stat_prefix, "shadow_engine_result"),
            enforced_policy: key(rules_stat_prefix, "enforced_effective_policy_id"),
            enforced_result: key(rules_stat_prefix, "enforced_engine_result"),
        }
    }
}

impl Rbac {
    fn new(
        enforced: Option<Engine>,
        shadow: Option<Engine>,
        rules_stat_prefix: &str,
        shadow_rules_stat_prefix: &str,
    ) -> Self {
        Self {
            enforced,
            shadow,
            rules_stat_prefix: rules_stat_prefix.to_string(),
            shadow_rules_stat_prefix: shadow_rules_stat_prefix.to_string(),
            metadata_keys: MetadataKeys::new(rules_stat_prefix, shadow_rules_stat_prefix),
        }
    }
}

/// An action and its policies, sorted by name: Envoy reports the first matching policy in
/// name order.
#[derive(Debug)]
pub struct Engine {
    pub action: Action,
    pub policies: Vec<Policy>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Only what a policy matches is allowed.
    Allow,
    /// What a policy matches is denied.
    Deny,
    /// Everything is allowed; a match only marks the request for logging.
    Log,
}

/// Matches when one of its permissions and one of its principals match.
#[derive(Debug)]
pub struct Policy {
    pub name: Arc<str>,
    pub permissions: Vec<Rule>,
    pub principals: Vec<Rule>,
}

/// A permission or a principal: both kinds read the same facts of a request or connection.
#[derive(Debug)]
pub enum Rule {
    Any,
    All(Vec<Rule>),
    AnyOf(Vec<Rule>),
    Not(Box<Rule>),
    Header(HeaderMatcher),
    /// The path without its query or fragment.
    UrlPath(StringMatcher),
    /// The connection's local address (where the client connected).
    DestinationIp(Cidr),
    DestinationPort(u32),
    /// `start <= port < end`.
    DestinationPortRange {
        start: u32,
        end: u32,
    },
    /// The SNI the client asked for.
    RequestedServerName(StringMatcher),
    /// A TLS connection; with a name, the peer certificate's URI SANs, then DNS SANs, then
    /// its subject.
    Authenticated(Option<StringMatcher>),
    /// The peer address of the connection (`source_ip`, `direct_remote_ip`).
    DirectRemoteIp(Cidr),
    /// The client address after `x-forwarded-for` processing.
    RemoteIp(Cidr),
    /// A condition whose outcome is known at config time.
    Constant(bool),
    /// A dynamic metadata matcher (Envoy's `MetadataMatcher`).
    Metadata(Box<MetadataRule>),
}

/// The value at `path` in the `filter` namespace of the stream's dynamic metadata, matched
/// by `value`; the result flipped when `invert`.
#[derive(Debug)]
pub struct MetadataRule {
    pub filter: String,
    pub path: Vec<String>,
    pub value: ValueRule,
    pub invert: bool,
}

/// Envoy's `ValueMatcher`: each kind matches only values of its own type; a missing value
/// matches nothing.
#[derive(Debug)]
pub enum ValueRule {
    Null,
    DoubleExact(f64),
    /// `start <= v < end`.
    DoubleRange(f64, f64),
    String(StringMatcher),
    Bool(bool),
    /// `present_match`: true matches any value; false matches nothing (as in Envoy).
    Present(bool),
    /// `list_match.one_of`: a list with an element that matches.
    ListOneOf(Box<ValueRule>),
    Or(Vec<ValueRule>),
}

/// The HTTP filter's configuration.
pub fn translate_http_rbac(
    rbac: &HttpRbac,
    path: &FieldPath,
    acks: &mut Vec<Acknowledged>,
) -> Result<Rbac> {
    check(rbac, path, acks)?;
    if rbac.track_per_rule_stats {
        return Err(path
            .field("track_per_rule_stats")
            .error("per-policy RBAC stats are not implemented"));
    }
    Ok(Rbac::new(
        engine(rbac.rules.as_ref(), &path.field("rules"), true)?,
        engine(
            rbac.shadow_rules.as_ref(),
            &path.field("shadow_rules"),
            true,
        )?,
        &rbac.rules_stat_prefix,
        &rbac.shadow_rules_stat_prefix,
    ))
}

/// `RBACPerRoute`: the route's own policies replace the filter's; without `rbac`, the filter
/// enforces nothing on the route.
pub fn translate_per_route(
    per_route: &RbacPerRoute,
    path: &FieldPath,
    acks: &mut Vec<Acknowledged>,
) -> Result<Rbac> {
    check(per_route, path, acks)?;
    match &per_route.rbac {
        Some(rbac) => translate_http_rbac(rbac, &path.field("rbac"), acks),
        None => Ok(Rbac::new(None, None, "", "")),
    }
}

/// The network filter's configuration: its policies and `stat_prefix` (used as given, so
/// Istio's `tcp.` makes `tcp.rbac.allowed`).
pub fn translate_network_rbac(
    rbac: &NetworkRbac,
    path: &FieldPath,
    acks: &mut Vec<Acknowledged>,
) -> Result<(Rbac, String)> {
    check(rbac, path, acks)?;
    if rbac.stat_prefix.is_empty() {
        return Err(path.field("stat_prefix").error("must not be empty"));
    }
    if rbac.enforcement_type() != EnforcementType::OneTimeOnFirstByte {
        // Outrigger's connection facts never change after the first byte, but Envoy counts
        // every check in this mode; refusing is more honest than counting differently.
        return Err(path
            .field("enforcement_type")
            .error("only ONE_TIME_ON_FIRST_BYTE is supported"));
    }
    if rbac.delay_deny.is_some() {
        return Err(path
            .field("delay_deny")
            .error("delaying the close of a denied connection is not supported"));
    }
    let rules = Rbac::new(
        engine(rbac.rules.as_ref(), &path.field("rules"), false)?,
        engine(
            rbac.shadow_rules.as_ref(),
            &path.field("shadow_rules"),
            false,
        )?,
        "",
        &rbac.shadow_rules_stat_prefix,
    );
    Ok((rules, rbac.stat_prefix.clone()))
}

fn engine(rules: Option<&ProtoRules>, path: &FieldPath, http: bool) -> Result<Option<Engine>> {
    let Some(rules) = rules else {
        return Ok(None);
    };
    let action = match rules.action() {
        ProtoAction::Allow => Action::Allow,
        ProtoAction::Deny => Action::Deny,
        ProtoAction::Log => Action::Log,
    };
    let mut names: Vec<&String> = rules.policies.keys().collect();
    names.sort();
    let policies = names
        .into_iter()
        .map(|name| {
            policy(
                name,
                &rules.policies[name],
                &path.field("policies").key(name),
                http,
            )
        })
        .collect::<Result<_>>()?;
    Ok(Some(Engine { action, policies }))
}

fn policy(name: &str, p: &ProtoPolicy, path: &FieldPath, http: bool) -> Result<Policy> {
    if p.permissions.is_empty() {
        return Err(path
            .field("permissions")
            .error("must contain at least 1 item"));
    }
    if p.principals.is_empty() {
        return Err(path
            .field("principals")
            .error("must contain at least 1 item"));
    }
    let permissions = p
        .permissions
        .iter()
        .enumerate()
        .map(|(i, r)| permission(r, &path.field("permissions").index(i), http))
        .collect::<Result<_>>()?;
    let principals = p
        .principals
        .iter()
        .enumerate()
        .map(|(i, r)| principal(r, &path.field("principals").index(i), http))
        .collect::<Result<_>>()?;
    Ok(Policy {
        name: Arc::from(name),
        permissions,
        principals,
    })
}

fn permission(p: &Permission, path: &FieldPath, http: bool) -> Result<Rule> {
    let list = |rules: &[Permission], field: &str| -> Result<Vec<Rule>> {
        let p = path.field(field).field("rules");
        if rules.is_empty() {
            return Err(p.error("must contain at least 1 item"));
        }
        rules
            .iter()
            .enumerate()
            .map(|(i, r)| permission(r, &p.index(i), http))
            .collect()
    };
    Ok(match &p.rule {
        None => return Err(path.error("a rule is required")),
        Some(ProtoPermission::AndRules(set)) => Rule::All(list(&set.rules, "and_rules")?),
        Some(ProtoPermission::OrRules(set)) => Rule::AnyOf(list(&set.rules, "or_rules")?),
        Some(ProtoPermission::Any(any)) => always(*any, &path.field("any"))?,
        Some(ProtoPermission::NotRule(inner)) => {
            Rule::Not(Box::new(permission(inner, &path.field("not_rule"), http)?))
        }
        Some(ProtoPermission::Header(h)) => Rule::Header(http_only(
            header_matcher(h, &path.field("header"))?,
            http,
            path,
            "header",
        )?),
        Some(ProtoPermission::UrlPath(m)) => Rule::UrlPath(http_only(
            path_matcher(m, &path.field("url_path"))?,
            http,
            path,
            "url_path",
        )?),
        Some(ProtoPermission::DestinationIp(range)) => {
            Rule::DestinationIp(cidr(range, &path.field("destination_ip"))?)
        }
        Some(ProtoPermission::DestinationPort(port)) => {
            if *port > 65535 {
                return Err(path
                    .field("destination_port")
                    .error("value must be less than or equal to 65535"));
            }
            Rule::DestinationPort(*port)
        }
        Some(ProtoPermission::DestinationPortRange(range)) => {
            let p = path.field("destination_port_range");
            let bounds = 0..=65536;
            if !bounds.contains(&range.start) {
                return Err(p.error(format!("range start {} is out of bounds", range.start)));
            }
            if !bounds.contains(&range.end) {
                return Err(p.error(format!("range end {} is out of bounds", range.end)));
            }
            if range.start >= range.end {
                return Err(p.error(format!(
                    "range start {} cannot be greater or equal than range end {}",
                    range.start, range.end
                )));
            }
            Rule::DestinationPortRange {
                start: range.start as u32,
                end: range.end as u32,
            }
        }
        Some(ProtoPermission::RequestedServerName(m)) => {
            Rule::RequestedServerName(string_matcher(m, &path.field("requested_server_name"))?)
        }
        Some(ProtoPermission::Metadata(m)) => metadata(m, &path.field("metadata"))?,
        Some(
            ProtoPermission::Matcher(_)
            | ProtoPermission::UriTemplate(_)
            | ProtoPermission::SourcedMetadata(_),
        ) => {
            // `check` refuses these fields by path before translation reaches them.
            return Err(path.error("this permission is not supported by Outrigger"));
        }
    })
}

fn principal(p: &Principal, path: &FieldPath, http: bool) -> Result<Rule> {
    let list = |ids: &[Principal], field: &str| -> Result<Vec<Rule>> {
        let p = path.field(field).field("ids");
        if ids.is_empty() {
            return Err(p.error("must contain at least 1 item"));
        }
        ids.iter()
            .enumerate()
            .map(|(i, r)| principal(r, &p.index(i), http))
            .collect()
    };
    Ok(match &p.identifier {
        None => return Err(path.error("an identifier is required")),
        Some(Identifier::AndIds(set)) => Rule::All(list(&set.ids, "and_ids")?),
        Some(Identifier::OrIds(set)) => Rule::AnyOf(list(&set.ids, "or_ids")?),
        Some(Identifier::Any(any)) => always(*any, &path.field("any"))?,
        Some(Identifier::NotId(inner)) => {
            Rule::Not(Box::new(principal(inner, &path.field("not_id"), http)?))
        }
        Some(Identifier::Authenticated(a)) => Rule::Authenticated(
            a.principal_name
                .as_ref()
                .map(|m| string_matcher(m, &path.field("authenticated").field("principal_name")))
                .transpose()?,
        ),
        // `source_ip` is the connection's peer, which is the direct peer without the PROXY
        // protocol (not supported).
        Some(Identifier::SourceIp(range)) => {
            Rule::DirectRemoteIp(cidr(range, &path.field("source_ip"))?)
        }
        Some(Identifier::DirectRemoteIp(range)) => {
            Rule::DirectRemoteIp(cidr(range, &path.field("direct_remote_ip"))?)
        }
        Some(Identifier::RemoteIp(range)) => Rule::RemoteIp(cidr(range, &path.field("remote_ip"))?),
        Some(Identifier::Header(h)) => Rule::Header(http_only(
            header_matcher(h, &path.field("header"))?,
            http,
            path,
            "header",
        )?),
        Some(Identifier::UrlPath(m)) => Rule::UrlPath(http_only(
            path_matcher(m, &path.field("url_path"))?,
            http,
            path,
            "url_path",
        )?),
        Some(Identifier::Metadata(m)) => metadata(m, &path.field("metadata"))?,
        Some(
            Identifier::FilterState(_) | Identifier::SourcedMetadata(_) | Identifier::Custom(_),
        ) => {
            return Err(path.error("this principal is not supported by Outrigger"));
        }
    })
}

/// `any` must be true (Envoy's validation rule).
fn always(any: bool, path: &FieldPath) -> Result<Rule> {
    if !any {
        return Err(path.error("value must equal true"));
    }
    Ok(Rule::Any)
}

/// Headers and paths exist only for HTTP. Envoy's network filter accepts them and never
/// matches; Outrigger refuses them there, as such a policy cannot mean what it says.
fn http_only<T>(value: T, http: bool, path: &FieldPath, field: &str) -> Result<T> {
    if !http {
        return Err(path
            .field(field)
            .error("matches HTTP requests only; the network RBAC filter sees no request"));
    }
    Ok(value)
}

fn path_matcher(
    m: &xds_proto::pb::envoy::r#type::matcher::v3::PathMatcher,
    path: &FieldPath,
) -> Result<StringMatcher> {
    use xds_proto::pb::envoy::r#type::matcher::v3::path_matcher::Rule as PathRule;
    match &m.rule {
        Some(PathRule::Path(s)) => {
            if s.match_pattern.is_none() {
                return Err(path.field("path").error("a match pattern is required"));
            }
            string_matcher(s, &path.field("path"))
        }
        None => Err(path.error("a path rule is required")),
    }
}

fn cidr(
    range: &xds_proto::pb::envoy::config::core::v3::CidrRange,
    path: &FieldPath,
) -> Result<Cidr> {
    Ok(cidrs(std::slice::from_ref(range), path)?[0])
}

/// A dynamic metadata matcher, read against the stream's dynamic metadata (which the JWT filter
/// writes under `envoy.filters.http.jwt_authn`; other namespaces are empty in Outrigger, as no
/// filter writes them). Metadata written by the RBAC filters themselves is refused: Outrigger
/// keeps it only for spans.
fn metadata(m: &MetadataMatcher, path: &FieldPath) -> Result<Rule> {
    if m.filter.is_empty() {
        return Err(path.field("filter").error("must not be empty"));
    }
    if matches!(
        m.filter.as_str(),
        "envoy.filters.http.rbac" | "envoy.filters.network.rbac"
    ) {
        return Err(path
            .field("filter")
            .error("the RBAC filters' own metadata is not kept by Outrigger"));
    }
    if m.path.is_empty() {
        return Err(path.field("path").error("must contain at least 1 item"));
    }
    for (i, segment) in m.path.iter().enumerate() {
        match &segment.segment {
            Some(Segment::Key(k)) if !k.is_empty() => {}
            _ => {
                return Err(path
                    .field("path")
                    .index(i)
                    .field("key")
                    .error("must not be empty"))
            }
        }
    }
    let Some(value) = &m.value else {
        return Err(path.field("value").error("is required"));
    };
    Ok(Rule::Metadata(Box::new(MetadataRule {
        filter: m.filter.clone(),
        path: m
            .path
            .iter()
            .filter_map(|s| s.segment.as_ref().map(|Segment::Key(k)| k.clone()))
            .collect(),
        value: value_rule(value, &path.field("value"))?,
        invert: m.invert,
    })))
}

/// Compiles a value matcher, refusing what Envoy refuses (a missing pattern, a bad regex).
fn value_rule(v: &ValueMatcher, path: &FieldPath) -> Result<ValueRule> {
    use xds_proto::pb::envoy::r#type::matcher::v3::double_matcher::MatchPattern as D;
    match &v.match_pattern {
        None => Err(path.error("a match pattern is required")),
        Some(MatchPattern::StringMatch(s)) => Ok(ValueRule::String(string_matcher(
            s,
            &path.field("string_match"),
        )?)),
        Some(MatchPattern::ListMatch(list)) => match &list.match_pattern {
            Some(list_matcher::MatchPattern::OneOf(inner)) => Ok(ValueRule::ListOneOf(Box::new(
                value_rule(inner, &path.field("list_match").field("one_of"))?,
            ))),
            None => Err(path
                .field("list_match")
                .error("a match pattern is required")),
        },
        Some(MatchPattern::OrMatch(or)) => {
            if or.value_matchers.len() < 2 {
                return Err(path
                    .field("or_match")
                    .field("value_matchers")
                    .error("must contain at least 2 items"));
            }
            Ok(ValueRule::Or(
                or.value_matchers
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        value_rule(m, &path.field("or_match").field("value_matchers").index(i))
                    })
                    .collect::<Result<_>>()?,
            ))
        }
        Some(MatchPattern::NullMatch(_)) => Ok(ValueRule::Null),
        Some(MatchPattern::DoubleMatch(d)) => match &d.match_pattern {
            Some(D::Exact(x)) => Ok(ValueRule::DoubleExact(*x)),
            Some(D::Range(r)) => {
                if r.start > r.end {
                    return Err(path
                        .field("double_match")
                        .field("range")
                        .error("range start must not be greater than range end"));
                }
                Ok(ValueRule::DoubleRange(r.start, r.end))
            }
            None => Err(path
                .field("double_match")
                .error("a match pattern is required")),
        },
        Some(MatchPattern::BoolMatch(b)) => Ok(ValueRule::Bool(*b)),
        Some(MatchPattern::PresentMatch(p)) => Ok(ValueRule::Present(*p)),
    }
}
