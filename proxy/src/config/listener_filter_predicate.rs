//! A listener filter's `filter_disabled`: a predicate on the connection that, when it
//! matches, skips the filter for that connection. Istio puts port predicates on the inbound
//! listener's TLS and HTTP inspectors, so ports it already knows are not sniffed.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/listener/v3/listener_components.proto#config-listener-v3-listenerfilterchainmatchpredicate

use super::error::{FieldPath, Result};
use xds_proto::pb::envoy::config::listener::v3::listener_filter_chain_match_predicate::Rule;
use xds_proto::pb::envoy::config::listener::v3::ListenerFilterChainMatchPredicate;

/// A translated predicate, evaluated on the connection's destination port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Predicate {
    Any,
    /// `destination_port_range`: start inclusive, end exclusive.
    Ports {
        start: i64,
        end: i64,
    },
    Not(Box<Predicate>),
    All(Vec<Predicate>),
    AnyOf(Vec<Predicate>),
}

impl Predicate {
    /// Whether the predicate holds for a connection to `port` (its local address after
    /// `original_dst`). Without a port (a Unix socket) a port range does not match.
    pub fn matches(&self, port: Option<u16>) -> bool {
        match self {
            Predicate::Any => true,
            Predicate::Ports { start, end } => {
                port.is_some_and(|p| (*start..*end).contains(&i64::from(p)))
            }
            Predicate::Not(p) => !p.matches(port),
            Predicate::All(all) => all.iter().all(|p| p.matches(port)),
            Predicate::AnyOf(any) => any.iter().any(|p| p.matches(port)),
        }
    }
}

pub fn translate(p: &ListenerFilterChainMatchPredicate, path: &FieldPath) -> Result<Predicate> {
    let set = |rules: &[ListenerFilterChainMatchPredicate], at: FieldPath| {
        let rules_path = at.field("rules");
        if rules.len() < 2 {
            // Envoy's validation: a set has at least two rules.
            return Err(rules_path.error("must have at least 2 items"));
        }
        rules
            .iter()
            .enumerate()
            .map(|(i, r)| translate(r, &rules_path.index(i)))
            .collect::<Result<Vec<_>>>()
    };
    Ok(match &p.rule {
        Some(Rule::OrMatch(s)) => Predicate::AnyOf(set(&s.rules, path.field("or_match"))?),
        Some(Rule::AndMatch(s)) => Predicate::All(set(&s.rules, path.field("and_match"))?),
        Some(Rule::NotMatch(inner)) => {
            Predicate::Not(Box::new(translate(inner, &path.field("not_match"))?))
        }
        Some(Rule::AnyMatch(true)) => Predicate::Any,
        Some(Rule::AnyMatch(false)) => {
            return Err(path.field("any_match").error("must be true"));
        }
        Some(Rule::DestinationPortRange(r)) => Predicate::Ports {
            start: r.start.into(),
            end: r.end.into(),
        },
        None => return Err(path.error("a rule is required")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_inbound_port_predicates() {
        // Istio skips its inspectors on the ports it knows: (15006..15007) or (8080..8081).
        let p = Predicate::AnyOf(vec![
            Predicate::Ports {
                start: 15006,
                end: 15007,
            },
            Predicate::Ports {
                start: 8080,
                end: 8081,
            },
        ]);
        assert!(p.matches(Some(15006)));
        assert!(p.matches(Some(8080)));
        assert!(!p.matches(Some(8081)), "the end is exclusive");
        assert!(!p.matches(None));
        assert!(Predicate::Not(Box::new(p.clone())).matches(Some(9000)));
        let both = Predicate::All(vec![p, Predicate::Any]);
        assert!(both.matches(Some(8080)));
    }
}
