//! Priority levels: how a cluster's traffic is split between the priorities of its endpoints
//! (EDS `LocalityLbEndpoints.priority`). A pure function of each level's host counts, run when a
//! host set is built, never on a request; the pick then draws once against the result.
//!
//! Envoy's rules, which this follows to the integer:
//! https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/load_balancing/priority
//! https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/load_balancing/overprovisioning
//! https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/load_balancing/panic_threshold
//! - a level's health is `min(100, factor * healthy / total)` in integer percent, `factor` the
//!   assignment's `overprovisioning_factor` (140 by default); degraded hosts are rated alike;
//! - the normalized total availability is the sum of every level's health and degraded
//!   ratings, capped at 100; loads go to levels in order, each taking
//!   `health * 100 / normalized` while load remains, first to healthy hosts, then to degraded
//!   ones; rounding leftovers go to the first level with healthy (else degraded) hosts;
//! - a level is in panic when its healthy plus degraded share of hosts (no overprovisioning:
//!   plain percent) is below the panic threshold, except that no level panics while the
//!   normalized total availability is 100; when every level panics (total panic) the load
//!   follows the levels' host counts regardless of health.

/// What one priority level holds, for rating it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LevelCounts {
    /// Every host of the level, excluded ones too (total panic counts them, as Envoy does).
    pub hosts: u64,
    /// Hosts left out entirely (`excluded_via_immediate_hc_fail`).
    pub excluded: u64,
    pub healthy: u64,
    pub degraded: u64,
    /// What health is rated by: the host counts above, or with `weighted_priority_health`
    /// the sums of the hosts' weights (healthy, degraded, and all but the excluded).
    pub healthy_weight: u64,
    pub degraded_weight: u64,
    pub total_weight: u64,
}

impl LevelCounts {
    /// A level rated by host counts (the default).
    pub fn by_count(hosts: u64, excluded: u64, healthy: u64, degraded: u64) -> Self {
        Self {
            hosts,
            excluded,
            healthy,
            degraded,
            healthy_weight: healthy,
            degraded_weight: degraded,
            total_weight: hosts - excluded,
        }
    }
}

/// Percent of traffic per level to its healthy and to its degraded hosts (together 100, or
/// all 0 when no host anywhere can take traffic and panic is off), and which levels panic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loads {
    pub healthy: Vec<u32>,
    pub degraded: Vec<u32>,
    pub panic: Vec<bool>,
}

/// The loads of `levels` (index = priority) under `overprovisioning` (percent, 140 = 1.4) and
/// `panic_threshold` (percent).
pub fn loads(levels: &[LevelCounts], overprovisioning: u32, panic_threshold: f64) -> Loads {
    let n = levels.len();
    // An empty level (or one of excluded hosts only) rates 0.
    let rate = |part: u64, total: u64| -> u32 {
        (u64::from(overprovisioning) * part)
            .checked_div(total)
            .map_or(0, |v| v.min(100) as u32)
    };
    let health: Vec<u32> = levels
        .iter()
        .map(|l| rate(l.healthy_weight, l.total_weight))
        .collect();
    let degraded: Vec<u32> = levels
        .iter()
        .map(|l| rate(l.degraded_weight, l.total_weight))
        .collect();
    let normalized = health
        .iter()
        .chain(&degraded)
        .map(|v| u64::from(*v))
        .sum::<u64>()
        .min(100) as u32;
    let mut out = Loads {
        healthy: vec![0; n],
        degraded: vec![0; n],
        panic: vec![false; n],
    };
    if normalized > 0 {
        let first_healthy = distribute(&mut out.healthy, &health, 100, normalized);
        let left = 100 - out.healthy.iter().sum::<u32>();
        let first_degraded = distribute(&mut out.degraded, &degraded, left, normalized);
        let left = left - out.degraded.iter().sum::<u32>();
        if left > 0 {
            match (first_healthy, first_degraded) {
                (Some(i), _) => out.healthy[i] += left,
                (None, Some(i)) => out.degraded[i] += left,
                (None, None) => {}
            }
        }
    }
    // Envoy rounds the configured percentage to an integer.
    let threshold = panic_threshold.round().clamp(0.0, 100.0);
    if threshold == 0.0 && normalized == 0 {
        if let Some(first) = out.healthy.first_mut() {
            *first = 100;
        }
        return out;
    }
    if normalized < 100 {
        for (panic, l) in out.panic.iter_mut().zip(levels) {
            let counted = l.hosts - l.excluded;
            let available = if counted == 0 {
                0.0
            } else {
                100.0 * (l.healthy + l.degraded) as f64 / counted as f64
            };
            *panic = available < threshold;
        }
    }
    if n > 0 && out.panic.iter().all(|p| *p) {
        total_panic(&mut out, levels);
    }
    out
}

/// Assigns `total` in level order by `availability`; the first level with any availability.
fn distribute(
    load: &mut [u32],
    availability: &[u32],
    total: u32,
    normalized: u32,
) -> Option<usize> {
    let mut left = total;
    let mut first = None;
    for (i, (slot, a)) in load.iter_mut().zip(availability).enumerate() {
        if first.is_none() && *a > 0 {
            first = Some(i);
        }
        *slot = left.min(a * 100 / normalized);
        left -= *slot;
    }
    first
}

/// Every level panics: loads follow the host counts, health aside.
fn total_panic(out: &mut Loads, levels: &[LevelCounts]) {
    let all: u64 = levels.iter().map(|l| l.hosts).sum();
    out.degraded.iter_mut().for_each(|d| *d = 0);
    if all == 0 {
        out.healthy.iter_mut().for_each(|h| *h = 0);
        out.healthy[0] = 100;
        return;
    }
    let mut left = 100;
    for (slot, l) in out.healthy.iter_mut().zip(levels) {
        *slot = (100 * l.hosts / all) as u32;
        left -= *slot;
    }
    if let Some(first) = levels.iter().position(|l| l.hosts > 0) {
        out.healthy[first] += left;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two levels of 100 hosts each, P=0 with `healthy0` healthy, P=1 with `healthy1`. The
    /// page's tables leave panic aside, so the threshold is 0 here.
    fn two(healthy0: u64, healthy1: u64) -> Loads {
        loads(
            &[
                LevelCounts::by_count(100, 0, healthy0, 0),
                LevelCounts::by_count(100, 0, healthy1, 0),
            ],
            140,
            0.0,
        )
    }

    #[test]
    fn priority_doc_table_two_levels() {
        // The priority levels page: P=0 healthy percent -> traffic to P=0 / P=1, P=1 healthy.
        for (p0, to0, to1) in [
            (100, 100, 0),
            (72, 100, 0),
            (71, 99, 1),
            (50, 70, 30),
            (25, 35, 65),
            (0, 0, 100),
        ] {
            let l = two(p0, 100);
            assert_eq!(l.healthy, vec![to0, to1], "P=0 {p0}% healthy");
            assert_eq!(l.panic, vec![false, false]);
        }
    }

    #[test]
    fn priority_doc_table_both_levels_degrading() {
        // The page's second table: P=0 and P=1 healthy percent -> traffic.
        for (p0, p1, to0, to1) in [
            (100, 100, 100, 0),
            (72, 72, 100, 0),
            (71, 71, 99, 1),
            (50, 50, 70, 30),
            (25, 100, 35, 65),
            (25, 25, 50, 50),
        ] {
            assert_eq!(two(p0, p1).healthy, vec![to0, to1], "{p0}% / {p1}%");
        }
    }

    #[test]
    fn priority_doc_table_three_levels() {
        // The page's third table: P=0/P=1/P=2 healthy percent -> traffic.
        for (h, want) in [
            ([100, 100, 100], [100, 0, 0]),
            ([72, 72, 100], [100, 0, 0]),
            ([71, 71, 100], [99, 1, 0]),
            ([50, 50, 100], [70, 30, 0]),
            ([25, 100, 100], [35, 65, 0]),
            ([25, 25, 100], [35, 35, 30]),
            // The page prints 36 / 36 / 28 here (35, 35, 28 scaled to the normalized 98,
            // rounded for display). Envoy's distribution truncates each share (35, 35, 28)
            // and gives the 2 left over to the first healthy level, which is what it routes.
            ([25, 25, 20], [37, 35, 28]),
        ] {
            let levels: Vec<LevelCounts> = h
                .iter()
                .map(|v| LevelCounts::by_count(100, 0, *v, 0))
                .collect();
            assert_eq!(loads(&levels, 140, 0.0).healthy, want, "health {h:?}");
        }
        // With the default threshold of 50 that last row is total panic instead (every level
        // under half healthy, normalized 98): loads follow host counts, 100 each.
        let levels: Vec<LevelCounts> = [25, 25, 20]
            .iter()
            .map(|v| LevelCounts::by_count(100, 0, *v, 0))
            .collect();
        let l = loads(&levels, 140, 50.0);
        assert_eq!((l.healthy, l.panic), (vec![34, 33, 33], vec![true; 3]));
    }

    #[test]
    fn normalized_total_health_scales_up_when_short() {
        // The page: health {20, 30} (normalized total 50) gives loads {40, 60}.
        // 1 of 7 healthy is 140 / 7 = 20; 3 of 14 is 420 / 14 = 30.
        let levels = [
            LevelCounts::by_count(7, 0, 1, 0),
            LevelCounts::by_count(14, 0, 3, 0),
        ];
        let l = loads(&levels, 140, 0.0);
        assert_eq!(l.healthy, vec![40, 60]);
        assert_eq!(l.panic, vec![false, false]);
    }

    #[test]
    fn panic_uses_plain_percent_and_total_panic_follows_host_counts() {
        // One level, 2 of 5 healthy: 56% health but 40% healthy hosts, below 50: panic.
        let one = loads(&[LevelCounts::by_count(5, 0, 2, 0)], 140, 50.0);
        assert_eq!(one.panic, vec![true]);
        assert_eq!(one.healthy, vec![100]);
        // 1 of 2 is 50%, not below 50.
        assert_eq!(
            loads(&[LevelCounts::by_count(2, 0, 1, 0)], 140, 50.0).panic,
            vec![false]
        );
        // Two levels: P=0 1/4 (35), P=1 1/4 (35): both panic, loads by hosts 4 : 2 of 6.
        let l = loads(
            &[
                LevelCounts::by_count(4, 0, 1, 0),
                LevelCounts::by_count(2, 0, 0, 0),
            ],
            140,
            50.0,
        );
        assert_eq!(l.panic, vec![true, true]);
        assert_eq!(l.healthy, vec![67, 33]);
        // P=0 none healthy (panic), P=1 half (70, not enough for 100, but not in panic): all
        // load goes to P=1's healthy hosts; P=0's panic takes no traffic.
        let l = loads(
            &[
                LevelCounts::by_count(4, 0, 0, 0),
                LevelCounts::by_count(2, 0, 1, 0),
            ],
            140,
            50.0,
        );
        assert_eq!(l.panic, vec![true, false]);
        assert_eq!(l.healthy, vec![0, 100]);
        // P=0 1 of 4 (25%, panic, health 35), P=1 3 of 5 (60%, health 84): normalized 100, so
        // no panic anywhere and P=0 keeps its 35.
        let l = loads(
            &[
                LevelCounts::by_count(4, 0, 1, 0),
                LevelCounts::by_count(5, 0, 3, 0),
            ],
            140,
            50.0,
        );
        assert_eq!((l.healthy, l.panic), (vec![35, 65], vec![false, false]));
        // Normalized 100 suppresses panic even for a level with no healthy host.
        let l = two(0, 100);
        assert_eq!(l.panic, vec![false, false]);
        // No healthy host and panic off: P=0 nominally takes it all.
        let l = loads(&[LevelCounts::by_count(3, 0, 0, 0)], 140, 0.0);
        assert_eq!((l.healthy, l.panic), (vec![100], vec![false]));
    }

    #[test]
    fn overprovisioning_factor_and_degraded_hosts() {
        // Factor 100: health is the plain share; 1 of 2 -> 50 / 50.
        let l = loads(
            &[
                LevelCounts::by_count(2, 0, 1, 0),
                LevelCounts::by_count(2, 0, 2, 0),
            ],
            100,
            50.0,
        );
        assert_eq!(l.healthy, vec![50, 50]);
        // Degraded hosts take what healthy ones leave, before panic.
        let l = loads(
            &[
                LevelCounts::by_count(2, 0, 1, 1),
                LevelCounts::by_count(2, 0, 0, 0),
            ],
            140,
            50.0,
        );
        assert_eq!(
            (l.healthy.clone(), l.degraded.clone()),
            (vec![70, 0], vec![30, 0])
        );
        // Healthy and degraded together make 100: no level panics, P=1 (none healthy) idles.
        assert_eq!(l.panic, vec![false, false]);
        // Excluded hosts count for nothing but total panic's host count.
        let l = loads(&[LevelCounts::by_count(3, 1, 2, 0)], 140, 50.0);
        assert_eq!((l.healthy, l.panic), (vec![100], vec![false]));
    }
}
