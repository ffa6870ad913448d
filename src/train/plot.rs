//! Loss curves as a PNG (plotters, bitmap backend). Text uses the vendored DejaVu Sans
//! (assets/fonts, Bitstream Vera license) so no system font library is needed.

use crate::{Error, Result};
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

static FONT: Once = Once::new();

fn register_font() {
    FONT.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
        if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_err() {
            panic!("the vendored assets/fonts/DejaVuSans.ttf does not parse");
        }
    });
}

/// A named series of (step, value) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Line plot of `series` (step on x, loss on y) into `path`.
pub fn losses(path: &Path, title: &str, series: &[Series]) -> Result<()> {
    register_font();
    let err = |e: &dyn std::fmt::Display| Error::msg(format!("plotting {}: {e}", path.display()));
    let all: Vec<(f64, f64)> =
        series.iter().flat_map(|s| s.points.iter().copied()).filter(|p| p.1.is_finite()).collect();
    if all.is_empty() {
        return Ok(());
    }
    let (x0, x1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y0, y1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    let root = BitMapBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1.max(x0 + 1.0), (y0 - pad)..(y1 + pad))
        .map_err(|e| err(&e))?;
    chart.configure_mesh().x_desc("step").y_desc("loss").draw().map_err(|e| err(&e))?;
    let colors = [RED, BLUE, GREEN, MAGENTA, CYAN, BLACK];
    for (i, s) in series.iter().enumerate() {
        let color = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(s.points.iter().copied().filter(|p| p.1.is_finite()), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Train and valid loss series of a run's metrics.jsonl, prefixed with `label`.
pub fn metrics_series(metrics: &Path, label: &str) -> Result<Vec<Series>> {
    let text = std::fs::read_to_string(metrics).map_err(|e| Error::msg(format!("{}: {e}", metrics.display())))?;
    let (mut train, mut valid) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let step = v["step"].as_f64().unwrap_or(0.0);
        if let Some(l) = v["loss"].as_f64() {
            train.push((step, l));
        }
        if let Some(l) = v["valid_loss"].as_f64() {
            valid.push((step, l));
        }
    }
    Ok(vec![
        Series { name: format!("{label} train"), points: train },
        Series { name: format!("{label} valid"), points: valid },
    ])
}
