//! Medians of per-round ratios and their spread. Each round measures every target back to
//! back, so a ratio taken inside a round cancels most of what drifts on a noisy machine
//! (frequency scaling, a neighbour's build); the median across rounds drops the outliers.

use crate::runner::ScenarioResult;
use crate::scenario::Metric;
use crate::targets::Target;

/// Median with the min–max range over `n` values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Spread {
    pub fn of(values: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len().is_multiple_of(2) {
            (v[mid - 1] + v[mid]) / 2.0
        } else {
            v[mid]
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[v.len() - 1],
            n: v.len(),
        })
    }
}

/// The median and spread of `target`'s headline value over the rounds.
pub fn values(result: &ScenarioResult, target: Target) -> Option<Spread> {
    let v: Vec<f64> = result
        .rounds
        .iter()
        .filter_map(|r| r.get(&target))
        .map(|run| run.measurement.value)
        .collect();
    Spread::of(&v)
}

/// Any per-run number of `target` (CPU per 10k requests, peak RSS, a percentile).
pub fn per_run(
    result: &ScenarioResult,
    target: Target,
    f: impl Fn(&crate::runner::Run) -> Option<f64>,
) -> Option<Spread> {
    let v: Vec<f64> = result
        .rounds
        .iter()
        .filter_map(|r| r.get(&target))
        .filter_map(f)
        .collect();
    Spread::of(&v)
}

/// Per-round ratio of `target` to `reference`, for rounds that measured both.
/// Throughput: value / reference value. Latency: against direct, p99 / direct p99; against
/// another proxy, the p99 each *adds* to the direct p99 of the same round.
pub fn ratio(result: &ScenarioResult, target: Target, reference: Target) -> Option<Spread> {
    let mut v = Vec::new();
    for round in &result.rounds {
        let (Some(t), Some(r)) = (round.get(&target), round.get(&reference)) else {
            continue;
        };
        let (t, r) = (t.measurement.value, r.measurement.value);
        let (num, den) = match (result.scenario.metric(), reference) {
            (Metric::Throughput, _) | (Metric::Latency, Target::Direct) => (t, r),
            (Metric::Latency, _) => {
                let Some(d) = round.get(&Target::Direct) else {
                    continue;
                };
                let base = d.measurement.value;
                (t - base, r - base)
            }
        };
        if den > 0.0 {
            v.push(num / den);
        }
    }
    Spread::of(&v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).expect("values");
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        let s = Spread::of(&[4.0, 1.0, 2.0, 3.0]).expect("values");
        assert_eq!(s.median, 2.5);
        assert_eq!(Spread::of(&[f64::NAN]), None);
    }
}
