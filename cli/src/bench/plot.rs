//! The SVG plot: one horizontal bar per system and workload, split into
//! its phases (medians), with its total written beside it.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::phases::{BOOT_TO_AGENT, PHASES, TOTAL, WARM_PHASES};
use super::report::FC_RESTORE;
use super::restore;
use super::results::{median_of, Row, System};
use super::workload::WORKLOADS;

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("nothing to plot")]
    Empty,
    #[error("cannot draw the plot: {0}")]
    Draw(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// One bar: a label and its consecutive segments (name, ms).
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub label: String,
    pub segments: Vec<(String, f64)>,
}

impl Bar {
    fn total(&self) -> f64 {
        self.segments.iter().map(|(_, v)| v).sum()
    }
}

/// The bars the report's rows make: bulkhead split into its phases, the
/// container runtimes as one run each, Firecracker as its boot.
pub fn bars(rows: &[Row]) -> Vec<Bar> {
    let mut bars = Vec::new();
    for (system, phases) in [
        (System::BulkheadWarm, &WARM_PHASES),
        (System::BulkheadCold, &PHASES),
    ] {
        for w in WORKLOADS {
            let segments: Option<Vec<(String, f64)>> = phases
                .iter()
                .map(|p| median_of(rows, system, &w.metric(p)).map(|v| (p.to_string(), v)))
                .collect();
            if let Some(segments) = segments {
                bars.push(Bar {
                    label: format!("{}: {}", system.name(), w.name),
                    segments,
                });
            }
        }
    }
    for system in [System::Crun, System::Runc, System::BulkheadOci] {
        for w in WORKLOADS {
            if let Some(v) = median_of(rows, system, &w.metric(TOTAL)) {
                bars.push(Bar {
                    label: format!("{}: {}", system.name(), w.name),
                    segments: vec![("container run (runtime)".into(), v)],
                });
            }
        }
    }
    if let Some(v) = median_of(rows, System::Firecracker, BOOT_TO_AGENT) {
        bars.push(Bar {
            label: "firecracker: boot".into(),
            segments: vec![("boot to agent ready (firecracker)".into(), v)],
        });
    }
    // Restores: milliseconds next to boots of seconds, but the pair is
    // what the anchor is for.
    for (system, metric, label) in [
        (
            System::BulkheadWarm,
            restore::TOTAL,
            "bulkhead-warm: restore alone",
        ),
        (
            System::Firecracker,
            FC_RESTORE,
            "firecracker: snapshot restore",
        ),
    ] {
        if let Some(v) = median_of(rows, system, metric) {
            bars.push(Bar {
                label: label.into(),
                segments: vec![("restore".into(), v)],
            });
        }
    }
    bars
}

const COLORS: [RGBColor; 10] = [
    RGBColor(0x4e, 0x79, 0xa7),
    RGBColor(0xf2, 0x8e, 0x2b),
    RGBColor(0xe1, 0x57, 0x59),
    RGBColor(0x76, 0xb7, 0xb2),
    RGBColor(0x59, 0xa1, 0x4f),
    RGBColor(0xed, 0xc9, 0x48),
    RGBColor(0xb0, 0x7a, 0xa1),
    RGBColor(0xff, 0x9d, 0xa7),
    RGBColor(0x9c, 0x75, 0x5f),
    RGBColor(0xba, 0xb0, 0xac),
];

const WIDTH: u32 = 1000;
const LEGEND_COLUMNS: usize = 3;

fn draw_err<E: std::fmt::Debug>(e: E) -> PlotError {
    PlotError::Draw(format!("{e:?}"))
}

fn label_ms(v: f64) -> String {
    if v < 100.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.0} ms")
    }
}

/// The plot as an SVG document.
pub fn render(bars: &[Bar], title: &str) -> Result<String, PlotError> {
    if bars.is_empty() {
        return Err(PlotError::Empty);
    }
    let n = bars.len();
    // Room beside the longest bar for its total.
    let x_max = bars.iter().map(Bar::total).fold(0.0, f64::max).max(1.0) * 1.18;
    // Segment names in order of first appearance: one legend entry each.
    let mut names: Vec<&str> = Vec::new();
    for (name, _) in bars.iter().flat_map(|b| &b.segments) {
        if !names.contains(&name.as_str()) {
            names.push(name);
        }
    }
    let legend_rows = names.len().div_ceil(LEGEND_COLUMNS) as u32;
    let chart_height = 120 + 56 * n as u32;
    let height = chart_height + 16 + 22 * legend_rows;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        // The legend goes below the chart, where no bar can hide it.
        let (chart_area, legend_area) = root.split_vertically(chart_height);
        // The first bar at the top; each bar's label sits above it.
        let row_y = |i: usize| (n - 1 - i) as f64;
        let mut chart = ChartBuilder::on(&chart_area)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(0)
            .build_cartesian_2d(0f64..x_max, 0f64..n as f64)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .disable_y_axis()
            .light_line_style(WHITE)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .x_desc("ms: median of each phase, stacked")
            .draw()
            .map_err(draw_err)?;
        let label_style =
            TextStyle::from(("sans-serif", 14).into_font()).pos(Pos::new(HPos::Left, VPos::Bottom));
        chart
            .draw_series(bars.iter().enumerate().map(|(i, b)| {
                Text::new(b.label.clone(), (0.0, row_y(i) + 0.68), label_style.clone())
            }))
            .map_err(draw_err)?;

        let legend_style =
            TextStyle::from(("sans-serif", 13).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        for (k, name) in names.iter().enumerate() {
            let color = COLORS[k % COLORS.len()];
            let mut rects = Vec::new();
            for (i, bar) in bars.iter().enumerate() {
                let mut x = 0.0;
                for (seg, v) in &bar.segments {
                    if seg == name {
                        let (y0, y1) = (row_y(i) + 0.1, row_y(i) + 0.62);
                        rects.push(Rectangle::new([(x, y0), (x + v, y1)], color.filled()));
                    }
                    x += v;
                }
            }
            chart.draw_series(rects).map_err(draw_err)?;
            let column = (k % LEGEND_COLUMNS) as i32;
            let (x, y) = (60 + column * 300, 8 + (k / LEGEND_COLUMNS) as i32 * 22);
            legend_area
                .draw(&Rectangle::new([(x, y), (x + 14, y + 14)], color.filled()))
                .map_err(draw_err)?;
            legend_area
                .draw(&Text::new(
                    name.to_string(),
                    (x + 20, y + 7),
                    legend_style.clone(),
                ))
                .map_err(draw_err)?;
        }
        let style =
            TextStyle::from(("sans-serif", 13).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        chart
            .draw_series(bars.iter().enumerate().map(|(i, b)| {
                Text::new(
                    label_ms(b.total()),
                    (b.total() + x_max * 0.01, row_y(i) + 0.36),
                    style.clone(),
                )
            }))
            .map_err(draw_err)?;
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

/// Renders the report's rows to `path`.
pub fn write(path: &Path, rows: &[Row], title: &str) -> Result<(), PlotError> {
    let svg = render(&bars(rows), title)?;
    std::fs::write(path, svg).map_err(|source| PlotError::Write {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::results::{Results, Unit};

    fn rows() -> Vec<Row> {
        let mut r = Results::default();
        for w in WORKLOADS {
            for (i, p) in PHASES.iter().enumerate() {
                r.record(
                    System::BulkheadCold,
                    &w.metric(p),
                    Unit::Ms,
                    100.0 * (i + 1) as f64,
                );
            }
            for p in WARM_PHASES {
                r.record(System::BulkheadWarm, &w.metric(p), Unit::Ms, 10.0);
            }
            r.record(System::Runc, &w.metric(TOTAL), Unit::Ms, 25.0);
        }
        r.record(System::Firecracker, BOOT_TO_AGENT, Unit::Ms, 900.0);
        r.record(System::BulkheadWarm, restore::TOTAL, Unit::Ms, 9.0);
        r.record(System::Firecracker, FC_RESTORE, Unit::Ms, 7.0);
        r.record(System::Firecracker, "vmm overhead (PSS)", Unit::MiB, 5.0);
        r.rows()
    }

    #[test]
    fn bars_split_bulkhead_by_phase() {
        let bars = bars(&rows());
        let labels: Vec<&str> = bars.iter().map(|b| b.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "bulkhead-warm: true",
                "bulkhead-warm: echo",
                "bulkhead-cold: true",
                "bulkhead-cold: echo",
                "runc: true",
                "runc: echo",
                "firecracker: boot",
                "bulkhead-warm: restore alone",
                "firecracker: snapshot restore",
            ]
        );
        assert_eq!(bars[0].segments.len(), WARM_PHASES.len());
        assert_eq!(bars[0].total(), 60.0);
        assert_eq!(bars[2].segments.len(), PHASES.len());
        assert_eq!(bars[2].total(), 2100.0);
        assert_eq!(bars[8].segments, vec![("restore".into(), 7.0)]);
        assert_eq!(
            bars[4].segments,
            vec![("container run (runtime)".into(), 25.0)]
        );
    }

    #[test]
    fn svg_is_a_well_formed_document_with_every_label() {
        let svg = render(&bars(&rows()), "start-up").unwrap();
        assert!(!svg.is_empty());
        let doc = roxmltree::Document::parse(&svg).unwrap();
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        let text: String = doc
            .descendants()
            .filter_map(|n| n.text())
            .collect::<Vec<_>>()
            .join("|");
        for needle in [
            "start-up",
            "bulkhead-cold: true",
            "firecracker: boot",
            "kernel boot",
            "25.0 ms",
        ] {
            assert!(text.contains(needle), "{needle} missing from the plot");
        }
        // One filled rectangle per segment, at least.
        let rects = doc.descendants().filter(|n| n.has_tag_name("rect")).count();
        assert!(rects >= 2 * PHASES.len() + 2 * WARM_PHASES.len() + 5);
    }

    #[test]
    fn nothing_to_plot_is_an_error() {
        assert!(matches!(render(&[], "t"), Err(PlotError::Empty)));
        assert!(bars(&[]).is_empty());
    }

    #[test]
    fn writes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.svg");
        write(&path, &rows(), "t").unwrap();
        assert!(std::fs::read_to_string(&path).unwrap().starts_with("<svg"));
        let missing = dir.path().join("no/such/dir/p.svg");
        assert!(matches!(
            write(&missing, &rows(), "t"),
            Err(PlotError::Write { .. })
        ));
    }
}
