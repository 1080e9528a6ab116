//! A cluster's `circuit_breakers`: one set of thresholds per routing priority, with Envoy's
//! defaults for every limit left unset (and for a priority with no thresholds at all).
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/cluster/v3/circuit_breaker.proto
//! and https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/circuit_breaking

use super::error::{FieldPath, Result};
use xds_proto::pb::envoy::config::cluster::v3::{circuit_breakers, CircuitBreakers as Proto};
use xds_proto::pb::envoy::config::core::v3::RoutingPriority;

/// Envoy's two routing priorities; each has its own thresholds and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Priority {
    #[default]
    Default,
    High,
}

impl Priority {
    /// A `RoutingPriority` enum value from a proto, refused at `path` when unknown.
    pub fn from_proto(value: i32, path: &FieldPath) -> Result<Priority> {
        match RoutingPriority::try_from(value) {
            Ok(RoutingPriority::Default) => Ok(Priority::Default),
            Ok(RoutingPriority::High) => Ok(Priority::High),
            Err(_) => Err(path.error(format!("unknown routing priority {value}"))),
        }
    }

    /// The word Envoy's stats use (`circuit_breakers.<word>.cx_open`).
    pub fn stat_word(self) -> &'static str {
        match self {
            Priority::Default => "default",
            Priority::High => "high",
        }
    }
}

/// The limits for one priority.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
    /// When set, retries are limited by the budget and `max_retries` is not used for admission.
    pub retry_budget: Option<RetryBudget>,
    /// Publish the `remaining_*` gauges.
    pub track_remaining: bool,
}

/// Envoy's defaults: 1024 connections, pending and active requests, 3 retries.
impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
            retry_budget: None,
            track_remaining: false,
        }
    }
}

/// Retries allowed as a share of the requests active and pending, never fewer than
/// `min_retry_concurrency`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    /// 0 to 100; Envoy's default when the budget is present without it is 20.
    pub budget_percent: f64,
    /// Envoy's default is 3.
    pub min_retry_concurrency: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CircuitBreakers {
    pub default: Thresholds,
    pub high: Thresholds,
}

impl CircuitBreakers {
    pub fn thresholds(&self, priority: Priority) -> &Thresholds {
        match priority {
            Priority::Default => &self.default,
            Priority::High => &self.high,
        }
    }
}

/// Translates `circuit_breakers` (found at `path`); fields outside the policy table were
/// already refused. The first thresholds entry for a priority is the one Envoy uses.
pub fn translate(cb: Option<&Proto>, path: &FieldPath) -> Result<CircuitBreakers> {
    let mut out = CircuitBreakers::default();
    let Some(cb) = cb else {
        return Ok(out);
    };
    let mut seen = [false; 2];
    for (i, t) in cb.thresholds.iter().enumerate() {
        let p = path.field("thresholds").index(i);
        let priority = Priority::from_proto(t.priority, &p.field("priority"))?;
        let slot = priority as usize;
        if std::mem::replace(&mut seen[slot], true) {
            continue;
        }
        let thresholds = thresholds(t, &p)?;
        match priority {
            Priority::Default => out.default = thresholds,
            Priority::High => out.high = thresholds,
        }
    }
    Ok(out)
}

fn thresholds(t: &circuit_breakers::Thresholds, path: &FieldPath) -> Result<Thresholds> {
    let d = Thresholds::default();
    let get = |v: Option<&xds_proto::pb::google::protobuf::UInt32Value>, default: u32| {
        v.map_or(default, |v| v.value)
    };
    let retry_budget = match &t.retry_budget {
        None => None,
        Some(b) => {
            let budget_percent = b.budget_percent.as_ref().map_or(20.0, |p| p.value);
            if !(0.0..=100.0).contains(&budget_percent) {
                return Err(path
                    .field("retry_budget")
                    .field("budget_percent")
                    .field("value")
                    .error("value must be inside range [0, 100]"));
            }
            Some(RetryBudget {
                budget_percent,
                min_retry_concurrency: get(b.min_retry_concurrency.as_ref(), 3),
            })
        }
    };
    Ok(Thresholds {
        max_connections: get(t.max_connections.as_ref(), d.max_connections),
        max_pending_requests: get(t.max_pending_requests.as_ref(), d.max_pending_requests),
        max_requests: get(t.max_requests.as_ref(), d.max_requests),
        max_retries: get(t.max_retries.as_ref(), d.max_retries),
        retry_budget,
        track_remaining: t.track_remaining,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<CircuitBreakers> {
        use xds_proto::pb::envoy::config::cluster::v3::Cluster;
        let cluster = xds_proto::parse_document::<Cluster>(
            &format!("{{ name: c, circuit_breakers: {yaml} }}"),
            xds_proto::DocumentFormat::Yaml,
            xds_proto::ParseOptions::default(),
        )
        .expect("a cluster with circuit breakers")
        .value;
        translate(
            cluster.circuit_breakers.as_ref(),
            &FieldPath::root("circuit_breakers"),
        )
    }

    #[test]
    fn unset_limits_take_envoys_defaults() {
        let none = translate(None, &FieldPath::root("circuit_breakers")).expect("ok");
        assert_eq!(none.default, Thresholds::default());
        assert_eq!(none.high, Thresholds::default());
        let d = Thresholds::default();
        assert_eq!(
            (
                d.max_connections,
                d.max_pending_requests,
                d.max_requests,
                d.max_retries
            ),
            (1024, 1024, 1024, 3)
        );
        let cb = parse("{ thresholds: [ { max_requests: 1 }, { priority: HIGH, max_connections: 7, track_remaining: true } ] }")
            .expect("ok");
        assert_eq!(cb.default.max_requests, 1);
        assert_eq!(cb.default.max_connections, 1024);
        assert!(!cb.default.track_remaining);
        assert_eq!(cb.high.max_connections, 7);
        assert_eq!(cb.high.max_requests, 1024);
        assert!(cb.high.track_remaining);
    }

    #[test]
    fn a_retry_budget_defaults_to_twenty_percent_and_three() {
        let cb = parse("{ thresholds: [ { retry_budget: {} } ] }").expect("ok");
        assert_eq!(
            cb.default.retry_budget,
            Some(RetryBudget {
                budget_percent: 20.0,
                min_retry_concurrency: 3
            })
        );
        let cb = parse("{ thresholds: [ { retry_budget: { budget_percent: { value: 50 }, min_retry_concurrency: 0 } } ] }")
            .expect("ok");
        assert_eq!(
            cb.default.retry_budget,
            Some(RetryBudget {
                budget_percent: 50.0,
                min_retry_concurrency: 0
            })
        );
        let err = parse("{ thresholds: [ { retry_budget: { budget_percent: { value: 150 } } } ] }")
            .expect_err("out of range");
        assert!(err.to_string().contains("budget_percent.value"), "{err}");
    }

    #[test]
    fn the_first_entry_for_a_priority_wins() {
        let cb = parse("{ thresholds: [ { max_requests: 1 }, { max_requests: 2 } ] }").expect("ok");
        assert_eq!(cb.default.max_requests, 1);
    }
}
