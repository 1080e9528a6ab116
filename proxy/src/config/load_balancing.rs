//! A cluster's load balancer: the `lb_policy` enum with its `*_lb_config`, or the
//! `load_balancing_policy` list of typed extensions (the first one Outrigger implements wins, as
//! Envoy takes the first it supports).
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/load_balancing/load_balancers
//! and https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/cluster/v3/cluster.proto
#![allow(deprecated)] // `enable_full_scan`, `use_hostname_for_hashing`: Envoy still reads them.

use super::error::{FieldPath, Result};
use super::fields::{check, Acknowledged};
use xds_proto::pb::envoy::config::cluster::v3::{cluster, Cluster as ProtoCluster};
use xds_proto::pb::envoy::config::core::v3::RuntimeDouble;
use xds_proto::Extension;

/// Envoy's defaults and bounds (cluster.proto, ring_hash.proto, maglev.proto).
pub const DEFAULT_CHOICE_COUNT: u32 = 2;
pub const DEFAULT_MIN_RING_SIZE: u64 = 1024;
pub const DEFAULT_MAX_RING_SIZE: u64 = 8 * 1024 * 1024;
const MAX_RING_SIZE_LIMIT: u64 = 8 * 1024 * 1024;
pub const DEFAULT_MAGLEV_TABLE_SIZE: u64 = 65537;
const MAX_MAGLEV_TABLE_SIZE: u64 = 5_000_011;

/// The policy a cluster balances its hosts with.
#[derive(Debug, Clone, PartialEq)]
pub enum LbPolicy {
    /// Smooth weighted round robin.
    RoundRobin,
    /// Power of `choice_count` choices; with unequal weights, the effective weight of a host
    /// is `weight / (active_requests + 1) ^ active_request_bias`.
    LeastRequest {
        choice_count: u32,
        active_request_bias: f64,
    },
    Random,
    /// Ketama-style ring of xxHash64 values, sized between the two bounds.
    RingHash {
        min_ring_size: u64,
        max_ring_size: u64,
        use_hostname: bool,
    },
    /// A Maglev lookup table of `table_size` (prime) entries.
    Maglev {
        table_size: u64,
        use_hostname: bool,
    },
    /// ORIGINAL_DST: the host is the connection's original destination.
    ClusterProvided,
}

impl LbPolicy {
    /// Whether picks consume the request hash from the route's `hash_policy`.
    pub fn uses_hash(&self) -> bool {
        matches!(self, LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. })
    }
}

/// The cluster's policy, and whether it balances by locality weights (a typed round robin,
/// least request or random policy's `locality_lb_config.locality_weighted_lb_config`).
/// `original_dst` clusters must use CLUSTER_PROVIDED.
pub fn lb_policy(
    c: &ProtoCluster,
    original_dst: bool,
    path: &FieldPath,
    acks: &mut Vec<Acknowledged>,
) -> Result<(LbPolicy, bool)> {
    let mut locality_weighted = false;
    let policy = match &c.load_balancing_policy {
        Some(list) => typed_policy(
            list,
            &path.field("load_balancing_policy"),
            acks,
            &mut locality_weighted,
        )?,
        None => enum_policy(c, path)?,
    };
    let p = if c.load_balancing_policy.is_some() {
        path.field("load_balancing_policy")
    } else {
        path.field("lb_policy")
    };
    match (&policy, original_dst) {
        (LbPolicy::ClusterProvided, true) => Ok((policy, locality_weighted)),
        (_, true) => {
            Err(p.error("cluster: LB policy must be CLUSTER_PROVIDED for an ORIGINAL_DST cluster"))
        }
        (LbPolicy::ClusterProvided, false) => Err(p.error(
            "cluster: LB policy CLUSTER_PROVIDED is only valid with an ORIGINAL_DST cluster",
        )),
        (_, false) => Ok((policy, locality_weighted)),
    }
}

fn enum_policy(c: &ProtoCluster, path: &FieldPath) -> Result<LbPolicy> {
    use cluster::LbConfig;
    let lb = cluster::LbPolicy::try_from(c.lb_policy)
        .map_err(|_| path.field("lb_policy").error("unknown policy"))?;
    Ok(match lb {
        cluster::LbPolicy::RoundRobin => LbPolicy::RoundRobin,
        cluster::LbPolicy::Random => LbPolicy::Random,
        cluster::LbPolicy::ClusterProvided => LbPolicy::ClusterProvided,
        cluster::LbPolicy::LeastRequest => {
            let (choice_count, bias) = match &c.lb_config {
                Some(LbConfig::LeastRequestLbConfig(l)) => (
                    l.choice_count.map(|v| v.value),
                    l.active_request_bias.as_ref(),
                ),
                _ => (None, None),
            };
            least_request(choice_count, bias, &path.field("least_request_lb_config"))?
        }
        cluster::LbPolicy::RingHash => {
            let (min, max, function) = match &c.lb_config {
                Some(LbConfig::RingHashLbConfig(r)) => (
                    r.minimum_ring_size.map(|v| v.value),
                    r.maximum_ring_size.map(|v| v.value),
                    r.hash_function,
                ),
                _ => (None, None, 0),
            };
            ring_hash(
                min,
                max,
                function,
                false,
                &path.field("ring_hash_lb_config"),
            )?
        }
        cluster::LbPolicy::Maglev => {
            let size = match &c.lb_config {
                Some(LbConfig::MaglevLbConfig(m)) => m.table_size.map(|v| v.value),
                _ => None,
            };
            maglev(size, false, &path.field("maglev_lb_config"))?
        }
        cluster::LbPolicy::LoadBalancingPolicyConfig => {
            return Err(path
                .field("load_balancing_policy")
                .error("is required when lb_policy is LOAD_BALANCING_POLICY_CONFIG"))
        }
    })
}

fn least_request(
    choice_count: Option<u32>,
    bias: Option<&RuntimeDouble>,
    path: &FieldPath,
) -> Result<LbPolicy> {
    let choice_count = choice_count.unwrap_or(DEFAULT_CHOICE_COUNT);
    if choice_count < 2 {
        return Err(path
            .field("choice_count")
            .error("value must be greater than or equal to 2"));
    }
    // Envoy falls back to 1.0 for a negative or non-finite bias.
    let active_request_bias = bias
        .map(|b| b.default_value)
        .filter(|b| b.is_finite() && *b >= 0.0)
        .unwrap_or(1.0);
    Ok(LbPolicy::LeastRequest {
        choice_count,
        active_request_bias,
    })
}

fn ring_hash(
    min: Option<u64>,
    max: Option<u64>,
    hash_function: i32,
    use_hostname: bool,
    path: &FieldPath,
) -> Result<LbPolicy> {
    // XX_HASH is 0 in both the cluster enum and the extension's.
    if hash_function != 0 {
        return Err(path
            .field("hash_function")
            .error("only XX_HASH is supported (MURMUR_HASH_2 is not implemented)"));
    }
    let min_ring_size = min.unwrap_or(DEFAULT_MIN_RING_SIZE);
    let max_ring_size = max.unwrap_or(DEFAULT_MAX_RING_SIZE);
    for (field, v) in [
        ("minimum_ring_size", min_ring_size),
        ("maximum_ring_size", max_ring_size),
    ] {
        if v > MAX_RING_SIZE_LIMIT {
            return Err(path.field(field).error(format!(
                "value must be less than or equal to {MAX_RING_SIZE_LIMIT}"
            )));
        }
    }
    if min_ring_size == 0 {
        return Err(path
            .field("minimum_ring_size")
            .error("value must be greater than 0"));
    }
    if min_ring_size > max_ring_size {
        return Err(path.error(format!(
            "ring hash: minimum_ring_size ({min_ring_size}) > maximum_ring_size ({max_ring_size})"
        )));
    }
    Ok(LbPolicy::RingHash {
        min_ring_size,
        max_ring_size,
        use_hostname,
    })
}

fn maglev(size: Option<u64>, use_hostname: bool, path: &FieldPath) -> Result<LbPolicy> {
    let table_size = size.unwrap_or(DEFAULT_MAGLEV_TABLE_SIZE);
    if table_size > MAX_MAGLEV_TABLE_SIZE {
        return Err(path.field("table_size").error(format!(
            "value must be less than or equal to {MAX_MAGLEV_TABLE_SIZE}"
        )));
    }
    if !is_prime(table_size) {
        return Err(path
            .field("table_size")
            .error("The table size of maglev must be prime number"));
    }
    Ok(LbPolicy::Maglev {
        table_size,
        use_hostname,
    })
}

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// The typed extension policies Envoy ships; one Outrigger does not implement is refused
/// rather than skipped, since Envoy would use it. Other (unknown) types are skipped.
const ENVOY_POLICY_PREFIX: &str = "envoy.extensions.load_balancing_policies.";

fn typed_policy(
    list: &xds_proto::pb::envoy::config::cluster::v3::LoadBalancingPolicy,
    path: &FieldPath,
    acks: &mut Vec<Acknowledged>,
    locality_weighted: &mut bool,
) -> Result<LbPolicy> {
    use xds_proto::pb::envoy::extensions::load_balancing_policies::common::v3::{
        locality_lb_config::LocalityConfigSpecifier, LocalityLbConfig,
    };
    let weighted = |l: &Option<LocalityLbConfig>| {
        matches!(
            l.as_ref()
                .and_then(|l| l.locality_config_specifier.as_ref()),
            Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(_))
        )
    };
    for (i, policy) in list.policies.iter().enumerate() {
        let p = path
            .field("policies")
            .index(i)
            .field("typed_extension_config");
        let Some(any) = policy
            .typed_extension_config
            .as_ref()
            .and_then(|t| t.typed_config.as_ref())
        else {
            return Err(p.field("typed_config").error("is required"));
        };
        let p = p.field("typed_config");
        let Some(extension) = super::extension::decode(any, &p)? else {
            let name = xds_proto::type_name_of_url(&any.type_url);
            if name.starts_with(ENVOY_POLICY_PREFIX) {
                return Err(p.error(format!(
                    "load balancing policy {name} is not supported by Outrigger"
                )));
            }
            continue;
        };
        return Ok(match extension {
            Extension::RoundRobinLb(r) => {
                check(&r, &p, acks)?;
                *locality_weighted = weighted(&r.locality_lb_config);
                LbPolicy::RoundRobin
            }
            Extension::RandomLb(r) => {
                check(&r, &p, acks)?;
                *locality_weighted = weighted(&r.locality_lb_config);
                LbPolicy::Random
            }
            Extension::ClusterProvidedLb(c) => {
                check(&c, &p, acks)?;
                LbPolicy::ClusterProvided
            }
            Extension::LeastRequestLb(l) => {
                check(l.as_ref(), &p, acks)?;
                *locality_weighted = weighted(&l.locality_lb_config);
                if l.enable_full_scan.as_ref().is_some_and(|b| b.value) || l.selection_method != 0 {
                    return Err(p
                        .field("selection_method")
                        .error("FULL_SCAN is not supported: picks stay O(1) with N_CHOICES"));
                }
                least_request(
                    l.choice_count.map(|v| v.value),
                    l.active_request_bias.as_ref(),
                    &p,
                )?
            }
            Extension::RingHashLb(r) => {
                check(r.as_ref(), &p, acks)?;
                let use_hostname = r.use_hostname_for_hashing
                    || consistent_hashing(r.consistent_hashing_lb_config.as_ref(), &p)?;
                if r.hash_balance_factor.is_some() {
                    return Err(p
                        .field("hash_balance_factor")
                        .error("bounded loads are not implemented"));
                }
                ring_hash(
                    r.minimum_ring_size.map(|v| v.value),
                    r.maximum_ring_size.map(|v| v.value),
                    r.hash_function,
                    use_hostname,
                    &p,
                )?
            }
            Extension::MaglevLb(m) => {
                check(m.as_ref(), &p, acks)?;
                let use_hostname = consistent_hashing(m.consistent_hashing_lb_config.as_ref(), &p)?;
                maglev(m.table_size.map(|v| v.value), use_hostname, &p)?
            }
            _ => {
                return Err(p.error(format!(
                    "{} is not a load balancing policy",
                    xds_proto::type_name_of_url(&any.type_url)
                )))
            }
        });
    }
    Err(path.error("no load balancing policy in the list is supported by Outrigger"))
}

/// `consistent_hashing_lb_config`: whether hosts hash by hostname.
fn consistent_hashing(
    c: Option<&xds_proto::pb::envoy::extensions::load_balancing_policies::common::v3::ConsistentHashingLbConfig>,
    path: &FieldPath,
) -> Result<bool> {
    let Some(c) = c else { return Ok(false) };
    let p = path.field("consistent_hashing_lb_config");
    if c.hash_balance_factor.is_some() {
        return Err(p
            .field("hash_balance_factor")
            .error("bounded loads are not implemented"));
    }
    if !c.hash_policy.is_empty() {
        return Err(p
            .field("hash_policy")
            .error("cluster-level hash policies are not supported; set hash_policy on the route"));
    }
    Ok(c.use_hostname_for_hashing)
}

/// `ClusterLoadAssignment.policy` settings that shape how load spills between priorities.
/// https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/load_balancing/overprovisioning
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PriorityPolicy {
    /// Percent (140 = Envoy's default 1.4).
    pub overprovisioning_factor: u32,
    /// Rate a level's health by host weights rather than host counts.
    pub weighted_priority_health: bool,
}

impl Default for PriorityPolicy {
    fn default() -> Self {
        Self {
            overprovisioning_factor: 140,
            weighted_priority_health: false,
        }
    }
}

/// `policy` of a load assignment at `path`: the overprovisioning factor and weighted health.
pub(super) fn priority_policy(
    la: Option<&xds_proto::pb::envoy::config::endpoint::v3::ClusterLoadAssignment>,
    path: &FieldPath,
) -> Result<PriorityPolicy> {
    let Some(policy) = la.and_then(|la| la.policy.as_ref()) else {
        return Ok(PriorityPolicy::default());
    };
    let overprovisioning_factor = match &policy.overprovisioning_factor {
        None => 140,
        Some(f) if f.value == 0 => {
            return Err(path
                .field("policy")
                .field("overprovisioning_factor")
                .field("value")
                .error("value must be greater than 0"))
        }
        Some(f) => f.value,
    };
    Ok(PriorityPolicy {
        overprovisioning_factor,
        weighted_priority_health: policy.weighted_priority_health,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primes() {
        assert!(is_prime(65537));
        assert!(is_prime(5_000_011));
        assert!(!is_prime(65536));
        assert!(!is_prime(1));
        assert!(is_prime(2));
    }
}
