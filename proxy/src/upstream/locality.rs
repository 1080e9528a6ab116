//! Locality-weighted balancing (`common_lb_config.locality_weighted_lb_config`): within a
//! priority level a pick first chooses a locality, in smooth weighted order by its effective
//! weight, then a host of that locality with the cluster's balancer. A locality's effective
//! weight is its `load_balancing_weight` scaled by its availability: the share of its hosts
//! that can take this level's traffic, times the overprovisioning factor, at most 1. Localities
//! without a weight take no traffic; when none has an effective weight the level is balanced
//! as one set, and a level in panic always is.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/load_balancing/locality_weight

use super::balancer::{smooth_order, Balancer};
use super::host::Host;
use crate::config::load_balancing::LbPolicy;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The localities of one level, built with the host set.
#[derive(Debug)]
pub(super) struct Localities {
    /// Indexes into `members`, in smooth weighted order.
    order: Box<[u32]>,
    next: AtomicUsize,
    members: Box<[(Vec<Arc<Host>>, Balancer)]>,
}

impl Localities {
    /// The localities of `members` (the hosts a level sends to), rated against `all` (every
    /// host of the level's priority); None when no locality has an effective weight.
    pub(super) fn build(
        members: &[Arc<Host>],
        all: &[&Arc<Host>],
        overprovisioning_factor: u32,
        policy: &LbPolicy,
    ) -> Option<Self> {
        let mut indexes: Vec<u32> = members.iter().map(|h| h.locality.index).collect();
        indexes.sort_unstable();
        indexes.dedup();
        let mut weights = Vec::new();
        let mut groups = Vec::new();
        for index in indexes {
            let hosts: Vec<Arc<Host>> = members
                .iter()
                .filter(|h| h.locality.index == index)
                .cloned()
                .collect();
            let total = all.iter().filter(|h| h.locality.index == index).count();
            let weight = hosts.first().map_or(0, |h| h.locality.weight);
            let effective = effective_weight(weight, hosts.len(), total, overprovisioning_factor);
            if effective > 0 {
                weights.push(effective);
                groups.push(hosts);
            }
        }
        if groups.is_empty() {
            return None;
        }
        let members = groups
            .into_iter()
            .map(|hosts| {
                let balancer = Balancer::build(policy, &hosts);
                (hosts, balancer)
            })
            .collect();
        Some(Self {
            order: smooth_order(&weights).into(),
            next: AtomicUsize::new(0),
            members,
        })
    }

    /// The next locality's pick; `hash` steers hashing balancers within it.
    #[inline]
    pub(super) fn pick(&self, hash: Option<u64>) -> Option<&Arc<Host>> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.order.len().max(1);
        let (hosts, balancer) = self.members.get(*self.order.get(i)? as usize)?;
        if hosts.is_empty() {
            return None;
        }
        hosts.get(balancer.pick(hosts, hash))
    }
}

/// `weight × min(1, factor × available / total)`, in millionths so that the smooth order
/// keeps the ratios of fractional availabilities.
fn effective_weight(weight: u32, available: usize, total: usize, factor: u32) -> u64 {
    if weight == 0 || available == 0 || total == 0 {
        return 0;
    }
    let availability =
        ((u64::from(factor) * available as u64 * 10_000) / (total as u64)).min(1_000_000);
    u64::from(weight) * availability
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn availability_scales_weight_up_to_the_overprovisioning_cap() {
        // Fully healthy: the weight as is (in millionths).
        assert_eq!(effective_weight(3, 2, 2, 140), 3_000_000);
        // Half healthy with factor 1.4: 0.7 of the weight.
        assert_eq!(effective_weight(10, 1, 2, 140), 7_000_000);
        // 3 of 4 healthy: 1.05 is capped at 1.
        assert_eq!(effective_weight(10, 3, 4, 140), 10_000_000);
        assert_eq!(effective_weight(0, 2, 2, 140), 0, "no weight, no traffic");
        assert_eq!(effective_weight(5, 0, 2, 140), 0);
    }
}
