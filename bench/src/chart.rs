//! `--chart FILE.svg`: the results as an SVG chart (plotters' SVG backend, which writes
//! text as `<text>` elements: no font files or system libraries are involved).
//!
//! * after a single run or `--compare`: bars of ops/s and of p99 per system, each bar
//!   labelled with its value, each panel with the engram/etcd ratio;
//! * after `--scale`: lines of ops/s and of p99 against the number of stored keys.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::report::SystemReport;

const WIDTH: u32 = 1100;
const HEIGHT: u32 = 480;
const FONT: &str = "sans-serif";

/// One system's result of one run: what the bar chart shows.
#[derive(Debug, Clone)]
pub struct Bar {
    /// "etcd", "engram", ...: picks the colour and the ratio.
    pub system: String,
    /// Axis label, e.g. "etcd 3.5.17".
    pub label: String,
    pub ops_per_sec: f64,
    pub p99_ms: f64,
}

/// One system's curve in a `--scale` chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub system: String,
    /// (stored keys, ops/s, p99 ms), by increasing keys.
    pub points: Vec<(u64, f64, f64)>,
}

impl Bar {
    pub fn from_report(r: &SystemReport) -> Bar {
        let label = if r.version.is_empty() {
            r.system.clone()
        } else {
            format!("{} {}", r.system, r.version)
        };
        Bar {
            system: r.system.clone(),
            label,
            ops_per_sec: r.run.ops_per_sec(),
            p99_ms: r.run.stats.quantile_ms(0.99),
        }
    }
}

fn color(system: &str) -> RGBColor {
    match system {
        "etcd" => RGBColor(66, 133, 244),
        "engram" => RGBColor(234, 112, 46),
        _ => RGBColor(120, 120, 120),
    }
}

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing chart: {e}")
}

/// `1234567.0` -> `"1.23M"`, `50000.0` -> `"50k"`, `812.4` -> `"812"`, `7.125` -> `"7.12"`.
pub fn human(v: f64) -> String {
    let a = v.abs();
    let (x, unit) = if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e4 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let digits = if x.abs() >= 100.0 {
        0
    } else if x.abs() >= 10.0 {
        1
    } else {
        2
    };
    let s = format!("{x:.digits$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    format!("{s}{unit}")
}

/// The engram/etcd ratio of `f`, when both systems are present.
fn ratio_text(bars: &[Bar], f: fn(&Bar) -> f64) -> Option<String> {
    let etcd = bars.iter().find(|b| b.system == "etcd")?;
    let engram = bars.iter().find(|b| b.system == "engram")?;
    let (e, g) = (f(etcd), f(engram));
    (e > 0.0).then(|| format!("engram/etcd = {:.2}x", g / e))
}

/// SVG of ops/s and p99 bars for each system of one run.
pub fn bars_svg(title: &str, bars: &[Bar]) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let root = root.titled(title, (FONT, 18).into_font()).map_err(err)?;
        let (left, right) = root.split_horizontally(WIDTH / 2);
        bar_panel(&left, "throughput, ops/s (higher is better)", bars, |b| {
            b.ops_per_sec
        })?;
        bar_panel(&right, "p99 latency, ms (lower is better)", bars, |b| {
            b.p99_ms
        })?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

fn bar_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    caption: &str,
    bars: &[Bar],
    f: fn(&Bar) -> f64,
) -> Result<()> {
    let n = bars.len().max(1) as u32;
    let top = bars.iter().map(f).fold(0.0f64, f64::max);
    let top = if top > 0.0 { top * 1.2 } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 16).into_font())
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d((0..n - 1).into_segmented(), 0.0..top)
        .map_err(err)?;
    let labels: Vec<String> = bars.iter().map(|b| b.label.clone()).collect();
    let x_label = move |v: &SegmentValue<u32>| match v {
        SegmentValue::CenterOf(i) => labels.get(*i as usize).cloned().unwrap_or_default(),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(bars.len().max(1))
        .x_label_formatter(&x_label)
        .y_label_formatter(&|v| human(*v))
        .x_label_style((FONT, 14).into_font())
        .y_label_style((FONT, 12).into_font())
        .draw()
        .map_err(err)?;
    let gap = (WIDTH / 2 / n / 5).max(4);
    chart
        .draw_series(bars.iter().enumerate().map(|(i, b)| {
            let i = i as u32;
            let mut r = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), f(b)),
                ],
                color(&b.system).filled(),
            );
            r.set_margin(0, 0, gap, gap);
            r
        }))
        .map_err(err)?;
    let value_style =
        TextStyle::from((FONT, 14).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
    chart
        .draw_series(bars.iter().enumerate().map(|(i, b)| {
            Text::new(
                human(f(b)),
                (SegmentValue::CenterOf(i as u32), f(b)),
                value_style.clone(),
            )
        }))
        .map_err(err)?;
    if let Some(ratio) = ratio_text(bars, f) {
        let style = TextStyle::from((FONT, 15).into_font().style(FontStyle::Bold))
            .pos(Pos::new(HPos::Center, VPos::Top));
        chart
            .draw_series(std::iter::once(Text::new(
                ratio,
                (SegmentValue::CenterOf(n / 2), top * 0.98),
                style,
            )))
            .map_err(err)?;
    }
    Ok(())
}

/// SVG of ops/s and p99 against stored keys, one line per system; `note` (e.g. which
/// etcd steps were skipped) is written under the title.
pub fn scale_svg(title: &str, note: &str, series: &[Series]) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let root = root.titled(title, (FONT, 18).into_font()).map_err(err)?;
        let root = if note.is_empty() {
            root
        } else {
            root.titled(note, (FONT, 13).into_font()).map_err(err)?
        };
        let (left, right) = root.split_horizontally(WIDTH / 2);
        line_panel(&left, "create throughput, ops/s", series, |p| p.1)?;
        line_panel(&right, "create p99 latency, ms", series, |p| p.2)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

fn line_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    caption: &str,
    series: &[Series],
    f: fn(&(u64, f64, f64)) -> f64,
) -> Result<()> {
    let points = || series.iter().flat_map(|s| s.points.iter());
    // Keys on a log axis: steps usually double (100k .. 4M).
    let max_x = points().map(|p| p.0 as f64).fold(0.0f64, f64::max).max(1.0);
    let min_x = points()
        .map(|p| p.0 as f64)
        .filter(|x| *x >= 1.0)
        .fold(max_x, f64::min);
    let max_y = points().map(f).fold(0.0f64, f64::max);
    // Headroom above the highest point for the legend.
    let max_y = if max_y > 0.0 { max_y * 1.35 } else { 1.0 };
    // A tick at each measured store size.
    let mut ticks: Vec<f64> = points().map(|p| p.0 as f64).filter(|x| *x >= 1.0).collect();
    ticks.sort_by(f64::total_cmp);
    ticks.dedup();
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 16).into_font())
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(
            (min_x / 1.25..max_x * 1.25)
                .log_scale()
                .with_key_points(ticks),
            0.0..max_y,
        )
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("keys in the store (log scale)")
        .max_light_lines(1)
        .x_label_formatter(&|v| human(*v))
        .y_label_formatter(&|v| human(*v))
        .label_style((FONT, 12).into_font())
        .draw()
        .map_err(err)?;
    for s in series {
        let c = color(&s.system);
        let pts: Vec<(f64, f64)> = s.points.iter().map(|p| (p.0 as f64, f(p))).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(err)?
            .label(s.system.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))
            .map_err(err)?;
        let style =
            TextStyle::from((FONT, 12).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
        chart
            .draw_series(
                pts.iter()
                    .map(|&(x, y)| Text::new(human(y), (x, y + max_y * 0.02), style.clone())),
            )
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font((FONT, 13).into_font())
        .position(SeriesLabelPosition::UpperMiddle)
        .draw()
        .map_err(err)?;
    Ok(())
}

pub fn write(path: &Path, svg: &str) -> Result<()> {
    std::fs::write(path, svg).with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses the SVG as XML and returns the text of its `<text>` elements.
    fn texts(svg: &str) -> Vec<String> {
        let doc = roxmltree::Document::parse(svg).expect("well-formed SVG");
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        doc.descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text().map(|t| t.trim().to_string()))
            .collect()
    }

    #[test]
    fn bar_chart_is_well_formed_and_labelled() {
        let bars = vec![
            Bar {
                system: "etcd".into(),
                label: "etcd 3.5.17".into(),
                ops_per_sec: 4000.0,
                p99_ms: 12.5,
            },
            Bar {
                system: "engram".into(),
                label: "engram 3.5.0".into(),
                ops_per_sec: 10000.0,
                p99_ms: 5.0,
            },
        ];
        let svg = bars_svg("workload=create <&> clients=16", &bars).expect("chart");
        let t = texts(&svg);
        let all = t.join("|");
        assert!(t.iter().any(|s| s == "etcd 3.5.17"), "{all}");
        assert!(t.iter().any(|s| s == "engram 3.5.0"), "{all}");
        assert!(t.iter().any(|s| s == "engram/etcd = 2.50x"), "{all}");
        assert!(t.iter().any(|s| s == "engram/etcd = 0.40x"), "{all}");
        assert!(t.iter().any(|s| s == "12.5"), "{all}");
        assert!(t.iter().any(|s| s.contains("<&>")), "title escaped: {all}");
        assert!(svg.matches("<rect").count() >= 4, "bars drawn");
    }

    #[test]
    fn scale_chart_is_well_formed_and_labelled() {
        let series = vec![
            Series {
                system: "etcd".into(),
                points: vec![(50_000, 3000.0, 20.0), (200_000, 2500.0, 30.0)],
            },
            Series {
                system: "engram".into(),
                points: vec![
                    (50_000, 9000.0, 6.0),
                    (200_000, 8500.0, 7.0),
                    (4_000_000, 8000.0, 8.0),
                ],
            },
        ];
        let svg = scale_svg("scale", "etcd: 4M skipped", &series).expect("chart");
        let t = texts(&svg);
        let all = t.join("|");
        assert!(t.iter().any(|s| s == "etcd"), "{all}");
        assert!(t.iter().any(|s| s == "engram"), "{all}");
        assert!(t.iter().any(|s| s == "etcd: 4M skipped"), "{all}");
        assert!(svg.contains("<polyline"), "lines drawn");
    }

    #[test]
    fn empty_inputs_still_draw() {
        texts(&bars_svg("nothing", &[]).expect("chart"));
        texts(&scale_svg("nothing", "", &[]).expect("chart"));
    }

    #[test]
    fn human_numbers() {
        assert_eq!(human(1_234_567.0), "1.23M");
        assert_eq!(human(50_000.0), "50k");
        assert_eq!(human(812.4), "812");
        assert_eq!(human(7.125), "7.12");
        assert_eq!(human(0.0), "0");
        assert_eq!(human(12.5), "12.5");
        assert_eq!(human(4_000_000.0), "4M");
    }
}
