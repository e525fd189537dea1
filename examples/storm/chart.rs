//! The timeline as an SVG chart: goodput per second (top) and calls sent to the
//! server per second (bottom) for every mode, phase boundaries marked.

use std::path::Path;

use plotters::prelude::*;

use crate::sim::{Mode, Run, Scenario};

fn color(mode: Mode) -> RGBColor {
    match mode {
        Mode::Unprotected => RGBColor(214, 96, 77),
        Mode::Naive => RGBColor(230, 160, 40),
        Mode::TowerResilience => RGBColor(120, 120, 120),
        Mode::Seawall | Mode::SeawallWithoutBreaker => RGBColor(33, 102, 172),
    }
}

type DrawResult = Result<(), seawall::BoxError>;

/// Writes the chart to `path`, creating its directory if needed.
pub fn draw(path: &Path, scenario: &Scenario, runs: &[Run]) -> DrawResult {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let root = SVGBackend::new(path, (1100, 760)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(380);
    let total = scenario.total().as_secs_f64();

    let offered: Vec<(f64, f64)> = runs
        .first()
        .map(|r| {
            r.seconds
                .iter()
                .enumerate()
                .map(|(i, s)| (i as f64 + 0.5, s.offered as f64))
                .collect()
        })
        .unwrap_or_default();

    panel(
        &top,
        "goodput: answers within the deadline, per second",
        "answers/s",
        total,
        scenario,
        runs,
        Some(&offered),
        |s| s.good as f64,
    )?;
    panel(
        &bottom,
        "calls sent to the server per second (every attempt, retries included)",
        "calls/s",
        total,
        scenario,
        runs,
        None,
        |s| s.attempts as f64,
    )?;
    root.present()?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    y_desc: &str,
    total: f64,
    scenario: &Scenario,
    runs: &[Run],
    offered: Option<&[(f64, f64)]>,
    value: impl Fn(&crate::sim::Second) -> f64,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let series: Vec<(Mode, Vec<(f64, f64)>)> = runs
        .iter()
        .map(|r| {
            (
                r.mode,
                r.seconds
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (i as f64 + 0.5, value(s)))
                    .collect(),
            )
        })
        .collect();
    let y_max = series
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|p| p.1))
        .chain(offered.into_iter().flatten().map(|p| p.1))
        .fold(1.0_f64, f64::max)
        * 1.15;

    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..total, 0.0..y_max)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(WHITE)
        .bold_line_style(BLACK.mix(0.08))
        .x_labels(11)
        .y_labels(6)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .x_desc("time (s)")
        .y_desc(y_desc)
        .draw()?;

    // phase boundaries and names
    for i in 0..scenario.phases.len() {
        let (from, _) = scenario.bounds(i);
        if i > 0 {
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(from, 0.0), (from, y_max)],
                BLACK.mix(0.35),
            )))?;
        }
        chart.draw_series(std::iter::once(Text::new(
            scenario.phases[i].name.to_string(),
            (from + 0.5, y_max * 0.97),
            ("sans-serif", 13).into_font().color(&BLACK.mix(0.6)),
        )))?;
    }

    if let Some(offered) = offered {
        chart
            .draw_series(LineSeries::new(
                offered.iter().copied(),
                BLACK.mix(0.4).stroke_width(1),
            ))?
            .label("offered")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.4)));
    }
    for (mode, pts) in series {
        let c = color(mode);
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))?
            .label(mode.label())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    Ok(())
}
