//! Drawing the reliability diagram (bars, gaps, diagonal, histogram) and the overlay of
//! several curves, on any plotters backend.

use plotters::chart::MeshStyle;
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::render::DrawResult;
use super::{ACC_EDGE, ACC_FILL, DIAGONAL, GAP_ALPHA, GAP_RED, HIST_FILL, PlotOptions, TABLEAU10};
use crate::ReliabilityBin;

fn non_empty(bins: &[ReliabilityBin]) -> impl Iterator<Item = &ReliabilityBin> + Clone {
    bins.iter().filter(|b| b.count > 0)
}

/// A backend error as text.
pub(crate) fn text_err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Title and label font sizes, in pixels, for a figure of `opts`' size.
fn font_sizes(opts: &PlotOptions) -> (u32, u32) {
    let side = opts.width.min(opts.height);
    ((side / 26).max(12), (side / 40).max(10))
}

/// A chart over `[0, 1]²` on `area`, titled `opts.title`, with `x_labels` pixels below it
/// for the x-axis labels.
fn unit_chart<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    opts: &PlotOptions,
    x_labels: u32,
) -> Result<ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>, String> {
    let (title_size, label_size) = font_sizes(opts);
    let title = ("sans-serif", title_size)
        .into_font()
        .style(FontStyle::Bold);
    ChartBuilder::on(area)
        .caption(&opts.title, title)
        .margin(12)
        .margin_right(24)
        .x_label_area_size(x_labels)
        .y_label_area_size(label_size * 4)
        .build_cartesian_2d(0f64..1f64, 0f64..1f64)
        .map_err(text_err)
}

/// The faint grid and label fonts every chart shares: six x labels, `y_labels` y labels.
fn grid<'m, 'a, 'b, X: Ranged, Y: Ranged, DB: DrawingBackend>(
    mesh: &'m mut MeshStyle<'a, 'b, X, Y, DB>,
    label_size: u32,
    y_labels: usize,
) -> &'m mut MeshStyle<'a, 'b, X, Y, DB> {
    mesh.x_labels(6)
        .y_labels(y_labels)
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.08))
        .label_style(("sans-serif", label_size))
        .axis_desc_style(("sans-serif", label_size + 2))
}

/// A tick label with one decimal.
fn one_decimal(v: &f64) -> String {
    format!("{v:.1}")
}

/// A tick label with two decimals.
fn two_decimals(v: &f64) -> String {
    format!("{v:.2}")
}

/// Draws the mesh with "Confidence" on the x axis (one-decimal ticks) and `y_desc` on the
/// y axis (ticks formatted by `y_ticks`).
fn draw_axes<DB: DrawingBackend>(
    mesh: &mut MeshStyle<'_, '_, RangedCoordf64, RangedCoordf64, DB>,
    y_desc: &str,
    y_ticks: &'static dyn Fn(&f64) -> String,
) -> DrawResult {
    mesh.x_desc("Confidence")
        .y_desc(y_desc)
        .x_label_formatter(&one_decimal)
        .y_label_formatter(y_ticks)
        .draw()
        .map_err(text_err)
}

/// The legend of `chart`'s series, in its upper-left corner.
fn draw_legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    label_size: u32,
) -> DrawResult {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", label_size))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(text_err)
}

/// The reliability diagram of `bins`, with the histogram below when asked for.
pub(crate) fn draw_diagram<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    bins: &[ReliabilityBin],
    opts: &PlotOptions,
) -> DrawResult {
    root.fill(&WHITE).map_err(text_err)?;
    let (main, hist) = if opts.show_histogram {
        let split = (f64::from(opts.height) * 0.74) as u32;
        let (a, b) = root.split_vertically(split);
        (a, Some(b))
    } else {
        (root.clone(), None)
    };
    let (_, label_size) = font_sizes(opts);
    let x_labels = if hist.is_some() { 0 } else { label_size * 3 };
    let mut chart = unit_chart(&main, opts, x_labels)?;
    let mut mesh = chart.configure_mesh();
    grid(&mut mesh, label_size, 6)
        .y_desc("Accuracy")
        .x_label_formatter(&|v| format!("{v:.1}"))
        .y_label_formatter(&|v| format!("{v:.1}"));
    if hist.is_some() {
        // The histogram below carries the x labels.
        mesh.x_label_formatter(&|_| String::new());
    } else {
        mesh.x_desc("Confidence");
    }
    mesh.draw().map_err(text_err)?;

    let acc_bars = non_empty(bins)
        .map(|b| Rectangle::new([(b.lower, b.accuracy), (b.upper, 0.0)], ACC_FILL.filled()));
    chart
        .draw_series(acc_bars)
        .map_err(text_err)?
        .label("Accuracy")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], ACC_FILL.filled()));
    let acc_edges = non_empty(bins).map(|b| {
        Rectangle::new(
            [(b.lower, b.accuracy), (b.upper, 0.0)],
            ACC_EDGE.stroke_width(1),
        )
    });
    chart.draw_series(acc_edges).map_err(text_err)?;
    let gaps = non_empty(bins).map(|b| {
        let (top, bottom) = (b.accuracy.max(b.confidence), b.accuracy.min(b.confidence));
        Rectangle::new(
            [(b.lower, top), (b.upper, bottom)],
            GAP_RED.mix(GAP_ALPHA).filled(),
        )
    });
    chart
        .draw_series(gaps)
        .map_err(text_err)?
        .label("Gap (confidence − accuracy)")
        .legend(|(x, y)| {
            Rectangle::new(
                [(x, y - 5), (x + 14, y + 5)],
                GAP_RED.mix(GAP_ALPHA).filled(),
            )
        });
    let gap_edges = non_empty(bins).map(|b| {
        let (top, bottom) = (b.accuracy.max(b.confidence), b.accuracy.min(b.confidence));
        Rectangle::new(
            [(b.lower, top), (b.upper, bottom)],
            GAP_RED.mix(0.8).stroke_width(1),
        )
    });
    chart.draw_series(gap_edges).map_err(text_err)?;
    draw_diagonal(&mut chart)?;
    draw_legend(&mut chart, label_size)?;

    if let Some(hist) = hist {
        draw_histogram(&hist, bins, label_size)?;
    }
    Ok(())
}

fn draw_diagonal<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<
        'a,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
) -> DrawResult {
    chart
        .draw_series(DashedLineSeries::new(
            [(0.0, 0.0), (1.0, 1.0)],
            6,
            4,
            DIAGONAL.stroke_width(1),
        ))
        .map_err(text_err)?
        .label("Perfect calibration")
        .legend(|(x, y)| {
            // Dashed like the diagonal: two short strokes.
            EmptyElement::at((x, y))
                + PathElement::new([(0, 0), (5, 0)], DIAGONAL.stroke_width(1))
                + PathElement::new([(9, 0), (14, 0)], DIAGONAL.stroke_width(1))
        });
    Ok(())
}

fn draw_histogram<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    bins: &[ReliabilityBin],
    label_size: u32,
) -> DrawResult {
    let total: u64 = bins.iter().map(|b| b.count).sum();
    let frac = |b: &ReliabilityBin| {
        if total == 0 {
            0.0
        } else {
            b.count as f64 / total as f64
        }
    };
    let y_max = non_empty(bins).map(frac).fold(0.0f64, f64::max);
    // Round the axis up to a tidy value so the tallest bar does not touch the top.
    let y_top = ((y_max * 1.1 * 10.0).ceil() / 10.0).clamp(0.1, 1.0);
    let mut chart = ChartBuilder::on(area)
        .margin_left(12)
        .margin_right(24)
        .margin_bottom(8)
        .x_label_area_size(label_size * 3)
        .y_label_area_size(label_size * 4)
        .build_cartesian_2d(0f64..1f64, 0f64..y_top)
        .map_err(text_err)?;
    let mut mesh = chart.configure_mesh();
    draw_axes(grid(&mut mesh, label_size, 3), "Fraction", &two_decimals)?;
    chart
        .draw_series(
            non_empty(bins)
                .map(|b| Rectangle::new([(b.lower, frac(b)), (b.upper, 0.0)], HIST_FILL.filled())),
        )
        .map_err(text_err)?;
    Ok(())
}

/// Several reliability curves in one chart, with a legend.
pub(crate) fn draw_overlay<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    series: &[(&str, &[ReliabilityBin])],
    opts: &PlotOptions,
) -> DrawResult {
    root.fill(&WHITE).map_err(text_err)?;
    let (_, label_size) = font_sizes(opts);
    let mut chart = unit_chart(root, opts, label_size * 3)?;
    let mut mesh = chart.configure_mesh();
    draw_axes(grid(&mut mesh, label_size, 6), "Accuracy", &one_decimal)?;
    draw_diagonal(&mut chart)?;
    for (i, (name, bins)) in series.iter().enumerate() {
        let [r, g, b] = TABLEAU10[i % TABLEAU10.len()];
        let color = RGBColor(r, g, b);
        let points: Vec<(f64, f64)> = non_empty(bins)
            .map(|b| (b.confidence, b.accuracy))
            .collect();
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(text_err)?
            .label(*name)
            .legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new([(0, 0), (14, 0)], color.stroke_width(2))
                    + Circle::new((7, 0), 3, color.filled())
            });
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(text_err)?;
    }
    draw_legend(&mut chart, label_size)?;
    Ok(())
}
