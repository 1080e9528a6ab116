//! SVG charts (plotters, SVG backend only): per scenario, each proxy's ratio to direct and
//! to Envoy as bars at the median with min–max whiskers; and memory against Envoy.

use crate::runner::ScenarioResult;
use crate::scenario::Metric;
use crate::stats::{self, Spread};
use crate::targets::Target;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

const PROXIES: [Target; 4] = [
    Target::Outrigger,
    Target::Envoy,
    Target::Nginx,
    Target::Haproxy,
];
const BLUE: RGBColor = RGBColor(66, 110, 180);
const ORANGE: RGBColor = RGBColor(230, 140, 50);

/// One bar group: a label and up to two (median, min, max) bars.
type Group = (String, [Option<Spread>; 2]);

pub fn scenario(s: &ScenarioResult, path: &Path) -> anyhow::Result<()> {
    let groups: Vec<Group> = PROXIES
        .iter()
        .filter(|t| stats::values(s, **t).is_some())
        .map(|t| {
            let envoy = (*t != Target::Envoy)
                .then(|| stats::ratio(s, *t, Target::Envoy))
                .flatten();
            (
                t.name().to_string(),
                [stats::ratio(s, *t, Target::Direct), envoy],
            )
        })
        .collect();
    let (first, second) = match s.scenario.metric() {
        Metric::Throughput => ("× direct (higher is better)", "× Envoy (higher is better)"),
        Metric::Latency => (
            "p99 × direct (lower is better)",
            "added p99 × Envoy's (lower is better)",
        ),
    };
    let title = format!("{} ({})", s.scenario.title(), s.scenario.unit());
    bars(path, &title, &groups, [first, second])
}

/// Returns false when there is nothing to draw (no proxy with an idle RSS).
pub fn memory(rows: &[(Target, f64, Option<f64>)], path: &Path) -> anyhow::Result<bool> {
    let Some(&(_, envoy_idle, envoy_load)) = rows.iter().find(|(t, ..)| *t == Target::Envoy) else {
        return Ok(false);
    };
    let groups: Vec<Group> = rows
        .iter()
        .map(|(t, idle, load)| {
            let one = |a: f64, b: f64| (b > 0.0).then(|| Spread::of(&[a / b])).flatten();
            let load = match (load, envoy_load) {
                (Some(a), Some(b)) => one(*a, b),
                _ => None,
            };
            (t.name().to_string(), [one(*idle, envoy_idle), load])
        })
        .collect();
    let title = "Resident memory, ratio to Envoy (lower is better)";
    bars(
        path,
        title,
        &groups,
        ["idle RSS × Envoy", "RSS under HTTP/1.1 load × Envoy"],
    )?;
    Ok(true)
}

fn bars(path: &Path, title: &str, groups: &[Group], legend: [&str; 2]) -> anyhow::Result<()> {
    let top = groups
        .iter()
        .flat_map(|(_, s)| s.iter().flatten().map(|s| s.max))
        .fold(1.0f64, f64::max)
        * 1.2;
    let n = groups.len().max(1) as f64;
    let root = SVGBackend::new(path, (820, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..n, 0f64..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("ratio")
        .draw()
        .map_err(err)?;
    // Group names under the axis, centred on each group (a category axis by hand).
    for (i, (name, _)) in groups.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
        let style = TextStyle::from(("sans-serif", 14)).pos(Pos::new(HPos::Center, VPos::Top));
        root.draw(&Text::new(name.clone(), (x, y + 6), style))
            .map_err(err)?;
    }
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(0.0, 1.0), (n, 1.0)],
            BLACK.mix(0.5),
        )))
        .map_err(err)?;
    for (k, color) in [BLUE, ORANGE].into_iter().enumerate() {
        let offset = 0.12 + 0.4 * k as f64;
        let bars = groups.iter().enumerate().filter_map(|(i, (_, s))| {
            let s = s[k]?;
            let x0 = i as f64 + offset;
            Some(Rectangle::new(
                [(x0, 0.0), (x0 + 0.36, s.median)],
                color.filled(),
            ))
        });
        chart
            .draw_series(bars)
            .map_err(err)?
            .label(legend[k])
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        let whiskers = groups.iter().enumerate().filter_map(|(i, (_, s))| {
            let s = s[k].filter(|s| s.n > 1)?;
            let x = i as f64 + offset + 0.18;
            Some(ErrorBar::new_vertical(
                x,
                s.min,
                s.median,
                s.max,
                BLACK.stroke_width(1),
                8,
            ))
        });
        chart.draw_series(whiskers).map_err(err)?;
        let values = groups.iter().enumerate().filter_map(|(i, (_, s))| {
            let s = s[k]?;
            let x = i as f64 + offset + 0.04;
            Some(Text::new(
                format!("{:.2}", s.median),
                (x, s.median + top * 0.06),
                ("sans-serif", 12),
            ))
        });
        chart.draw_series(values).map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("chart: {e}")
}
