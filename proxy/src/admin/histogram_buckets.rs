//! `/stats?histogram_buckets=`: histograms as bucket counts instead of quantiles —
//! cumulative, disjoint (per bucket), or detailed (non-empty buckets as lower bound, width and
//! count, then the quantiles), in text and JSON, as Envoy writes them.
//! https://www.envoyproxy.io/docs/envoy/latest/operations/admin#get--stats
//!
//! Outrigger's histograms have fixed buckets (Envoy's default bounds) and no flush interval:
//! every interval count is 0 (the interval quantile `nan`/`null`), and detailed buckets are
//! the fixed ones rather than Envoy's finer log-linear ones.

use crate::stats::{HistogramSnapshot, DEFAULT_BUCKETS};
use serde_json::{json, Value};

/// How histograms are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Buckets {
    /// Quantiles (the default; also `summary` and `none`).
    Summary,
    Cumulative,
    Disjoint,
    Detailed,
}

impl Buckets {
    /// The query value; the error is the 400 body.
    pub fn parse(value: Option<&str>) -> Result<Self, &'static str> {
        match value.unwrap_or("") {
            "" | "none" | "summary" => Ok(Buckets::Summary),
            "cumulative" => Ok(Buckets::Cumulative),
            "disjoint" => Ok(Buckets::Disjoint),
            "detailed" => Ok(Buckets::Detailed),
            "prometheusnative" => Err("Invalid histogram_buckets type for non prometheus stats type"),
            _ => Err("usage: /stats?histogram_buckets=(cumulative|disjoint|detailed|summary|prometheusnative)\n\n"),
        }
    }
}

/// The finite bounds with the count of each bucket: cumulative or each bucket's own.
fn counts(h: &HistogramSnapshot, cumulative: bool) -> impl Iterator<Item = (f64, u64)> + '_ {
    let mut below = 0;
    DEFAULT_BUCKETS
        .iter()
        .zip(&h.cumulative)
        .filter(|(bound, _)| bound.is_finite())
        .map(move |(bound, c)| {
            let own = c - below;
            below = *c;
            (*bound, if cumulative { *c } else { own })
        })
}

/// A bound as Envoy's text output writes it (C++'s default: six significant digits,
/// exponent form for large values).
fn bound_text(bound: f64) -> String {
    if bound >= 1e6 {
        let exponent = bound.log10().floor() as i32;
        let mantissa = bound / 10f64.powi(exponent);
        let mantissa = format!("{mantissa:.5}");
        let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
        format!("{mantissa}e+{exponent:02}")
    } else {
        format!("{bound}")
    }
}

/// One histogram's text line(s), for the bucket modes (`summary` is the caller's).
pub fn text(name: &str, h: &HistogramSnapshot, mode: Buckets, quantiles: &str) -> String {
    match mode {
        Buckets::Summary => String::new(),
        Buckets::Cumulative | Buckets::Disjoint => {
            let buckets: Vec<String> = counts(h, mode == Buckets::Cumulative)
                .map(|(bound, c)| format!("B{}(0,{c})", bound_text(bound)))
                .collect();
            format!("{name}: {}\n", buckets.join(" "))
        }
        Buckets::Detailed => {
            let totals: Vec<String> = detailed(h)
                .map(|(lower, width, count)| {
                    format!("{},{}:{count}", bound_text(lower), bound_text(width))
                })
                .collect();
            format!(
                "{name}:\n  totals={}\n  intervals=\n  summary={quantiles}\n",
                totals.join(", ")
            )
        }
    }
}

/// The non-empty buckets as (lower bound, width, count).
fn detailed(h: &HistogramSnapshot) -> impl Iterator<Item = (f64, f64, u64)> + '_ {
    let mut lower = 0.0;
    counts(h, false)
        .map(move |(bound, c)| {
            let bucket = (lower, bound - lower, c);
            lower = bound;
            bucket
        })
        .filter(|(_, _, c)| *c > 0)
}

/// The JSON `histograms` entry for the bucket modes; `percentiles` are the quantile values
/// (cumulative) in `supported` order.
pub fn json(
    histograms: &[(String, HistogramSnapshot)],
    mode: Buckets,
    supported: &[f64],
    percentiles: impl Fn(&HistogramSnapshot) -> Vec<Option<f64>>,
) -> Value {
    match mode {
        Buckets::Summary => Value::Null,
        Buckets::Cumulative | Buckets::Disjoint => {
            let entries: Vec<Value> = histograms
                .iter()
                .map(|(name, h)| {
                    let buckets: Vec<Value> = counts(h, mode == Buckets::Cumulative)
                        .map(|(bound, c)| json!({"upper_bound": bound, "interval": 0, "cumulative": c}))
                        .collect();
                    json!({"name": name, "buckets": buckets})
                })
                .collect();
            Value::Array(entries)
        }
        Buckets::Detailed => {
            let details: Vec<Value> = histograms
                .iter()
                .map(|(name, h)| {
                    let totals: Vec<Value> = detailed(h)
                        .map(|(lower, width, count)| {
                            json!({"lower_bound": lower, "width": width, "count": count})
                        })
                        .collect();
                    let percentiles: Vec<Value> = percentiles(h)
                        .into_iter()
                        .map(|v| json!({"cumulative": v, "interval": null}))
                        .collect();
                    json!({"name": name, "totals": totals, "intervals": [], "percentiles": percentiles})
                })
                .collect();
            json!({"supported_percentiles": supported, "details": details})
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_print_as_envoy_prints_them() {
        let printed: Vec<String> = DEFAULT_BUCKETS
            .iter()
            .filter(|b| b.is_finite())
            .map(|b| bound_text(*b))
            .collect();
        assert_eq!(
            printed.join(" "),
            "0.5 1 5 10 25 50 100 250 500 1000 2500 5000 10000 30000 60000 300000 600000 1.8e+06 3.6e+06"
        );
    }

    #[test]
    fn modes_parse_like_envoy() {
        assert_eq!(Buckets::parse(None), Ok(Buckets::Summary));
        assert_eq!(Buckets::parse(Some("none")), Ok(Buckets::Summary));
        assert_eq!(Buckets::parse(Some("disjoint")), Ok(Buckets::Disjoint));
        assert!(Buckets::parse(Some("prometheusnative")).is_err());
        assert!(Buckets::parse(Some("bogus"))
            .is_err_and(|usage| usage.starts_with("usage: /stats?histogram_buckets=")));
    }
}
