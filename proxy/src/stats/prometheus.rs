//! Prometheus text exposition (format 0.0.4) of the store, as Envoy's `/stats/prometheus`:
//! the metric name is `envoy_` and the tag-extracted name with every character outside
//! `[a-zA-Z0-9_]` turned into `_`; tags are labels (names sanitised the same way, values
//! escaped); one `# TYPE` line per family with all its label sets under it; counters first,
//! then gauges, then text readouts (only with `?text_readouts`: a gauge of 0 whose value is the
//! `text_value` label), then histograms (cumulative buckets, Envoy's default bounds).
//! https://www.envoyproxy.io/docs/envoy/latest/operations/admin#get--stats-prometheus

use super::{Entry, HistogramSnapshot, Metric, Store, Tag, DEFAULT_BUCKETS};
use std::collections::BTreeMap;
use std::fmt::Write;

/// Which stats to print.
#[derive(Default)]
pub struct Options<'a> {
    /// `?usedonly`: only stats written since start.
    pub used_only: bool,
    /// `?filter=`: matched against the full Envoy stat name.
    pub filter: Option<&'a regex::Regex>,
    /// `?text_readouts`: include text readouts.
    pub text_readouts: bool,
}

/// One series of a family: its stat name (the order), its label text and its metric.
type Series = (String, String, Metric);

pub fn render(store: &Store, options: &Options<'_>) -> String {
    // (kind, metric name) → (labels, metric) for each series of the family.
    let mut families: BTreeMap<(u8, String, String), Vec<Series>> = BTreeMap::new();
    for (name, Entry { metric, info }) in store.entries() {
        if options.filter.is_some_and(|re| !re.is_match(&name)) {
            continue;
        }
        let kind = match &metric {
            Metric::Counter(c) => {
                if options.used_only && c.value() == 0 {
                    continue;
                }
                0
            }
            Metric::Gauge(g) => {
                if options.used_only && !g.used() {
                    continue;
                }
                1
            }
            Metric::Text(t) => {
                if !options.text_readouts || (options.used_only && !t.used()) {
                    continue;
                }
                2
            }
            Metric::Histogram(h) => {
                if options.used_only && h.snapshot().count == 0 {
                    continue;
                }
                3
            }
        };
        let family = format!("envoy_{}", sanitize(&info.tag_extracted_name));
        // Envoy 1.40 orders text readout families by their tag-extracted names
        // (`cluster.version_text` before `cluster_manager.cds.version_text`).
        let order = if kind == 2 {
            info.tag_extracted_name.to_string()
        } else {
            family.clone()
        };
        families
            .entry((kind, order, family))
            .or_default()
            .push((name, labels(&info.tags), metric));
    }
    let mut out = String::new();
    for ((_, _, family), mut series) in families {
        // Envoy orders a family's series by their stat names, compared name segment by
        // segment (its symbol table's order), not by their label text.
        series.sort_by(|a, b| a.0.split('.').cmp(b.0.split('.')));
        let kind = match series.first() {
            Some((_, _, Metric::Counter(_))) => "counter",
            Some((_, _, Metric::Gauge(_) | Metric::Text(_))) => "gauge",
            _ => "histogram",
        };
        let _ = writeln!(out, "# TYPE {family} {kind}");
        for (_, labels, metric) in series {
            match metric {
                Metric::Counter(c) => {
                    let _ = writeln!(out, "{family}{{{labels}}} {}", c.value());
                }
                Metric::Gauge(g) => {
                    let _ = writeln!(out, "{family}{{{labels}}} {}", g.value());
                }
                Metric::Histogram(h) => write_histogram(&mut out, &family, &labels, &h.snapshot()),
                Metric::Text(t) => {
                    let comma = if labels.is_empty() { "" } else { "," };
                    let value = escape_value(&t.value());
                    let _ = writeln!(out, "{family}{{{labels}{comma}text_value=\"{value}\"}} 0");
                }
            }
        }
    }
    if options.filter.is_none() {
        store.istio.render(&mut out);
    }
    out
}

/// One histogram series: cumulative buckets with `le` after the labels, then sum and count.
pub fn write_histogram(out: &mut String, family: &str, labels: &str, s: &HistogramSnapshot) {
    let sep = if labels.is_empty() { "" } else { "," };
    for (bound, count) in DEFAULT_BUCKETS.iter().zip(&s.cumulative) {
        let le = if bound.is_infinite() {
            "+Inf".to_string()
        } else {
            format_bound(*bound)
        };
        let _ = writeln!(out, "{family}_bucket{{{labels}{sep}le=\"{le}\"}} {count}");
    }
    let _ = write!(
        out,
        "{family}_sum{{{labels}}} {}\n{family}_count{{{labels}}} {}\n",
        s.sum, s.count
    );
}

/// `name="value",...` in the stat's tag order.
fn labels(tags: &[Tag]) -> String {
    let mut out = String::new();
    for (i, tag) in tags.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            "{}=\"{}\"",
            sanitize(&tag.name),
            escape_value(&tag.value)
        );
    }
    out
}

fn format_bound(b: f64) -> String {
    if b.fract() == 0.0 {
        format!("{b:.0}")
    } else {
        format!("{b}")
    }
}

/// Envoy's rule: anything outside `[a-zA-Z0-9_]` becomes `_`.
pub fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Label values as the text format requires: `\` → `\\`, `"` → `\"`, newline → `\n`.
pub fn escape_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_group_label_sets_under_one_type_line() {
        let store = Store::new();
        store.counter("cluster.a.upstream_rq_200").add(2);
        store.counter("cluster.b.upstream_rq_200").inc();
        store.counter("cluster.b.upstream_rq_503").inc();
        store.gauge("server.live").set(1);
        store.counter("cluster.b.upstream_cx_total");
        let all = render(&store, &Options::default());
        assert_eq!(
            all,
            "# TYPE envoy_cluster_upstream_cx_total counter\n\
             envoy_cluster_upstream_cx_total{envoy_cluster_name=\"b\"} 0\n\
             # TYPE envoy_cluster_upstream_rq counter\n\
             envoy_cluster_upstream_rq{envoy_response_code=\"200\",envoy_cluster_name=\"a\"} 2\n\
             envoy_cluster_upstream_rq{envoy_response_code=\"200\",envoy_cluster_name=\"b\"} 1\n\
             envoy_cluster_upstream_rq{envoy_response_code=\"503\",envoy_cluster_name=\"b\"} 1\n\
             # TYPE envoy_server_live gauge\n\
             envoy_server_live{} 1\n"
        );
        let used = render(
            &store,
            &Options {
                used_only: true,
                filter: None,
                text_readouts: false,
            },
        );
        assert!(!used.contains("upstream_cx_total"), "{used}");
    }

    #[test]
    fn histograms_put_le_after_the_tags() {
        let store = Store::new();
        store.histogram("cluster.a.upstream_rq_time").record(3.0);
        let out = render(&store, &Options::default());
        assert!(out.starts_with("# TYPE envoy_cluster_upstream_rq_time histogram\n"));
        assert!(out.contains(
            "envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=\"a\",le=\"0.5\"} 0\n"
        ));
        assert!(out.contains(
            "envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=\"a\",le=\"+Inf\"} 1\n"
        ));
        assert!(out.ends_with(
            "envoy_cluster_upstream_rq_time_sum{envoy_cluster_name=\"a\"} 3\n\
             envoy_cluster_upstream_rq_time_count{envoy_cluster_name=\"a\"} 1\n"
        ));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(sanitize("envoy.cluster-name"), "envoy_cluster_name");
    }
}
