//! Reliability diagrams rendered to PNG or SVG (crate feature `plot`).
//!
//! A reliability diagram shows, for each confidence bin `[lower, upper]` of a
//! [`ReliabilityBin`] list, the accuracy of the samples in the bin as a bar; a perfectly
//! calibrated model has bars on the diagonal `accuracy = confidence`. The difference between
//! the bin's mean confidence and its accuracy (the bin's contribution to the ECE,
//! `ECE = Σ_b (n_b / N) · |acc_b − conf_b|`) is drawn as a translucent red "gap" bar between
//! the two values. **Empty bins (`count == 0`) are not drawn at all** — their accuracy and
//! confidence are `NaN`, and drawing them as zero would show a miscalibration that does not
//! exist. Below the diagram an optional histogram shows the fraction of samples per bin
//! (`n_b / N`), so a large gap in a nearly empty bin can be read for what it is.
//!
//! [`reliability_overlay`] compares several methods in one figure: one line with markers
//! per method through the points `(mean confidence, accuracy)` of its non-empty bins, with a
//! legend.
//!
//! The format follows the file extension, `.png` or `.svg` (case-insensitive); any other
//! extension is an [`MetricsError::Invalid`] error and nothing is written. The figure is
//! rendered in memory first, then written to a temporary file in the same folder and
//! renamed over `path`, so `path` never holds a half-written figure; the temporary file is
//! removed when anything fails.
//!
//! # Dependencies and fonts
//! Rendering uses [`plotters`] (the Rust plotting library; its pure-Rust bitmap and SVG
//! backends, default features off) and the [`png`] crate to encode the bitmap. Text is laid
//! out with plotters' `ab_glyph` feature, which never looks for system fonts: the
//! **DejaVu Sans** regular and bold faces are embedded from the [`dejavu`] crate (font
//! license: Bitstream Vera Fonts license with DejaVu's changes in the public domain — free
//! to use, embed and redistribute; the crate's own code is MIT/Apache-2.0). So rendering a
//! PNG needs neither fontconfig nor freetype, and works on headless machines and in CI.
//! SVG output names the `sans-serif` font family and leaves glyph drawing to the viewer.
//!
//! ```
//! use calseg_metrics::plot::{PlotOptions, reliability_diagram};
//! use calseg_metrics::ReliabilityBin;
//!
//! let bins: Vec<ReliabilityBin> = (0..10)
//!     .map(|b| {
//!         let (lower, upper) = (b as f64 / 10.0, (b + 1) as f64 / 10.0);
//!         let count = if b < 3 { 0 } else { 100 }; // the three lowest bins are empty
//!         let (confidence, accuracy) = if count == 0 {
//!             (f64::NAN, f64::NAN)
//!         } else {
//!             let c = (lower + upper) / 2.0;
//!             (c, c * 0.8) // over-confident
//!         };
//!         ReliabilityBin { lower, upper, count, confidence, accuracy }
//!     })
//!     .collect();
//! let path = std::env::temp_dir().join(format!("calseg-doc-{}.svg", std::process::id()));
//! let opts = PlotOptions { title: "ECE = 0.110".into(), ..PlotOptions::default() };
//! reliability_diagram(&bins, &opts, &path)?;
//! assert!(std::fs::read_to_string(&path).unwrap().starts_with("<svg"));
//! # std::fs::remove_file(&path).unwrap();
//! # Ok::<(), calseg_metrics::MetricsError>(())
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::{MetricsError, ReliabilityBin};

/// Fill of the accuracy bars.
const ACC_FILL: RGBColor = RGBColor(66, 114, 196);
/// Outline of the accuracy bars.
const ACC_EDGE: RGBColor = RGBColor(31, 58, 112);
/// Fill (translucent) and outline of the gap bars.
const GAP_RED: RGBColor = RGBColor(214, 39, 40);
/// Fill of the count histogram.
const HIST_FILL: RGBColor = RGBColor(128, 128, 128);
/// The diagonal `y = x`.
const DIAGONAL: RGBColor = RGBColor(60, 60, 60);
/// Opacity of the gap bars' fill.
const GAP_ALPHA: f64 = 0.35;
/// Line colours of the overlay series (Tableau 10), reused cyclically.
const SERIES_COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];
/// Smallest figure side accepted, in pixels (below it the axes and labels do not fit).
const MIN_SIDE: u32 = 200;
/// Largest figure side accepted, in pixels (a 3-byte-per-pixel buffer is allocated).
const MAX_SIDE: u32 = 8192;

/// Output format of a figure, chosen from the file extension by [`PlotFormat::from_path`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlotFormat {
    /// 8-bit RGB PNG.
    Png,
    /// SVG 1.1 text.
    Svg,
}

impl PlotFormat {
    /// `.png` → [`PlotFormat::Png`], `.svg` → [`PlotFormat::Svg`] (case-insensitive).
    ///
    /// # Errors
    /// [`MetricsError::Invalid`] for a missing or any other extension.
    pub fn from_path(path: &Path) -> Result<Self, MetricsError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("png") => Ok(Self::Png),
            Some("svg") => Ok(Self::Svg),
            _ => Err(MetricsError::Invalid(format!(
                "{}: unsupported plot format; use a .png or .svg file name",
                path.display()
            ))),
        }
    }
}

/// How a figure looks. `Default`: 640×720 pixels, histogram on, title "Reliability diagram".
#[derive(Debug, Clone, PartialEq)]
pub struct PlotOptions {
    /// Title above the diagram (e.g. `"CALSeg — ECE = 0.031"`; pass the ECE in yourself).
    pub title: String,
    /// Figure width in pixels (`200..=8192`). For SVG, the nominal size of the picture.
    pub width: u32,
    /// Figure height in pixels (`200..=8192`), histogram included.
    pub height: u32,
    /// Draw the fraction of samples per bin as a small histogram under the diagram
    /// (single diagram only; the overlay ignores it).
    pub show_histogram: bool,
}

impl Default for PlotOptions {
    fn default() -> Self {
        Self {
            title: "Reliability diagram".to_owned(),
            width: 640,
            height: 720,
            show_histogram: true,
        }
    }
}

/// Draw the reliability diagram of `bins` to `path` (`.png` or `.svg`).
///
/// Per non-empty bin (`count > 0`): a bar over `[lower, upper]` from 0 up to `accuracy`,
/// and a translucent red gap bar between `accuracy` and `confidence`; the diagonal
/// `y = x`; axes 0..1 labelled "Confidence" and "Accuracy"; `opts.title` on top; with
/// `opts.show_histogram`, the fraction `count / Σ count` per bin below. Empty bins are not
/// drawn. See the [module docs](self) for an example.
///
/// # Errors
/// [`MetricsError::Invalid`] for an unsupported extension, a figure size outside
/// `200..=8192`, or a non-empty bin whose edges, confidence or accuracy are not finite
/// numbers in `[0, 1]` (or `lower > upper`); [`MetricsError::Render`] when the plotting
/// library fails; [`MetricsError::Output`] when writing fails. On error nothing is left at
/// `path` (an existing file there is kept).
pub fn reliability_diagram(
    bins: &[ReliabilityBin],
    opts: &PlotOptions,
    path: &Path,
) -> Result<(), MetricsError> {
    let format = PlotFormat::from_path(path)?;
    let bytes = render_reliability_diagram(bins, opts, format)?;
    write_atomic(path, &bytes)
}

/// Draw several reliability curves in one figure to `path` (`.png` or `.svg`): for each
/// `(name, bins)` a line with markers through `(confidence, accuracy)` of the non-empty
/// bins, in bin order, plus the diagonal and a legend with the names. Meant for comparing
/// methods on the same data. `opts.show_histogram` is ignored.
///
/// # Errors
/// As [`reliability_diagram`], plus [`MetricsError::Invalid`] when `series` is empty.
pub fn reliability_overlay(
    series: &[(&str, &[ReliabilityBin])],
    opts: &PlotOptions,
    path: &Path,
) -> Result<(), MetricsError> {
    let format = PlotFormat::from_path(path)?;
    let bytes = render_reliability_overlay(series, opts, format)?;
    write_atomic(path, &bytes)
}

/// [`reliability_diagram`] rendered in memory: the PNG file bytes or the SVG text (UTF-8).
///
/// # Errors
/// As [`reliability_diagram`], except the I/O ones.
pub fn render_reliability_diagram(
    bins: &[ReliabilityBin],
    opts: &PlotOptions,
    format: PlotFormat,
) -> Result<Vec<u8>, MetricsError> {
    validate_bins(bins, "bins")?;
    render(Figure::Diagram(bins), opts, format)
}

/// [`reliability_overlay`] rendered in memory: the PNG file bytes or the SVG text (UTF-8).
///
/// # Errors
/// As [`reliability_overlay`], except the I/O ones.
pub fn render_reliability_overlay(
    series: &[(&str, &[ReliabilityBin])],
    opts: &PlotOptions,
    format: PlotFormat,
) -> Result<Vec<u8>, MetricsError> {
    if series.is_empty() {
        return Err(MetricsError::Invalid(
            "reliability overlay needs at least one series".into(),
        ));
    }
    for (name, bins) in series {
        validate_bins(bins, name)?;
    }
    render(Figure::Overlay(series), opts, format)
}

// ---------------------------------------------------------------------------------------
// Validation, fonts, backends, files
// ---------------------------------------------------------------------------------------

fn validate_bins(bins: &[ReliabilityBin], what: &str) -> Result<(), MetricsError> {
    let unit = |v: f64| v.is_finite() && (0.0..=1.0).contains(&v);
    for (i, b) in bins.iter().enumerate().filter(|(_, b)| b.count > 0) {
        if !(unit(b.lower) && unit(b.upper) && b.lower <= b.upper) {
            return Err(MetricsError::Invalid(format!(
                "{what}: bin {i} has edges [{}, {}]; edges must satisfy 0 <= lower <= upper <= 1",
                b.lower, b.upper
            )));
        }
        if !(unit(b.confidence) && unit(b.accuracy)) {
            return Err(MetricsError::Invalid(format!(
                "{what}: bin {i} holds {} samples but its confidence {} / accuracy {} are not in [0, 1]",
                b.count, b.confidence, b.accuracy
            )));
        }
    }
    Ok(())
}

/// Register the embedded DejaVu Sans faces as plotters' `sans-serif` family (once).
fn ensure_fonts() -> Result<(), MetricsError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        let regular = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
        let bold =
            plotters::style::register_font("sans-serif", FontStyle::Bold, dejavu::sans::bold());
        regular.is_ok() && bold.is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(MetricsError::Render(
            "the embedded DejaVu Sans font could not be parsed".into(),
        ))
    }
}

type DrawResult = Result<(), String>;

/// What to draw.
#[derive(Clone, Copy)]
enum Figure<'a> {
    Diagram(&'a [ReliabilityBin]),
    Overlay(&'a [(&'a str, &'a [ReliabilityBin])]),
}

fn draw_figure<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    figure: Figure<'_>,
    opts: &PlotOptions,
) -> DrawResult {
    match figure {
        Figure::Diagram(bins) => draw_diagram(root, bins, opts)?,
        Figure::Overlay(series) => draw_overlay(root, series, opts)?,
    }
    root.present().map_err(text_err)
}

/// Render `figure` with the backend of `format` into memory.
fn render(
    figure: Figure<'_>,
    opts: &PlotOptions,
    format: PlotFormat,
) -> Result<Vec<u8>, MetricsError> {
    for (side, v) in [("width", opts.width), ("height", opts.height)] {
        if !(MIN_SIDE..=MAX_SIDE).contains(&v) {
            return Err(MetricsError::Invalid(format!(
                "figure {side} = {v} px: must lie in {MIN_SIDE}..={MAX_SIDE}"
            )));
        }
    }
    ensure_fonts()?;
    let (w, h) = (opts.width, opts.height);
    match format {
        PlotFormat::Png => {
            let mut rgb = vec![0u8; w as usize * h as usize * 3];
            {
                let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
                draw_figure(&root, figure, opts).map_err(MetricsError::Render)?;
            }
            encode_png(&rgb, w, h).map_err(MetricsError::Render)
        }
        PlotFormat::Svg => {
            let mut svg = String::new();
            {
                let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
                draw_figure(&root, figure, opts).map_err(MetricsError::Render)?;
            }
            Ok(svg.into_bytes())
        }
    }
}

fn encode_png(rgb: &[u8], w: u32, h: u32) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(rgb).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    Ok(out)
}

/// Write `bytes` to a fresh temporary file next to `path`, flush it to disk, and rename it
/// over `path`. On any error the temporary file is removed and `path` is untouched.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), MetricsError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let out_err = |reason: String| MetricsError::Output {
        path: path.to_path_buf(),
        reason,
    };
    let name = path
        .file_name()
        .ok_or_else(|| out_err("the path has no file name".into()))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(
        ".{}.{}-{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| -> std::io::Result<()> {
        let mut file = fs::File::create_new(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        // Best effort: the temporary file may not exist if creating it failed.
        let _ = fs::remove_file(&tmp);
        out_err(e.to_string())
    })
}

// ---------------------------------------------------------------------------------------
// Drawing
// ---------------------------------------------------------------------------------------

fn non_empty(bins: &[ReliabilityBin]) -> impl Iterator<Item = &ReliabilityBin> + Clone {
    bins.iter().filter(|b| b.count > 0)
}

fn text_err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

fn draw_diagram<DB: DrawingBackend>(
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
    let side = opts.width.min(opts.height);
    let title_size = (side / 26).max(12);
    let label_size = (side / 40).max(10);

    let mut chart = ChartBuilder::on(&main)
        .caption(
            &opts.title,
            ("sans-serif", title_size)
                .into_font()
                .style(FontStyle::Bold),
        )
        .margin(12)
        .margin_right(24)
        .x_label_area_size(if hist.is_some() { 0 } else { label_size * 3 })
        .y_label_area_size(label_size * 4)
        .build_cartesian_2d(0f64..1f64, 0f64..1f64)
        .map_err(text_err)?;
    let mut mesh = chart.configure_mesh();
    mesh.x_labels(6)
        .y_labels(6)
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.08))
        .label_style(("sans-serif", label_size))
        .axis_desc_style(("sans-serif", label_size + 2))
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
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", label_size))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(text_err)?;

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
    chart
        .configure_mesh()
        .x_labels(6)
        .y_labels(3)
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.08))
        .label_style(("sans-serif", label_size))
        .axis_desc_style(("sans-serif", label_size + 2))
        .x_desc("Confidence")
        .y_desc("Fraction")
        .x_label_formatter(&|v| format!("{v:.1}"))
        .y_label_formatter(&|v| format!("{v:.2}"))
        .draw()
        .map_err(text_err)?;
    chart
        .draw_series(
            non_empty(bins)
                .map(|b| Rectangle::new([(b.lower, frac(b)), (b.upper, 0.0)], HIST_FILL.filled())),
        )
        .map_err(text_err)?;
    Ok(())
}

fn draw_overlay<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    series: &[(&str, &[ReliabilityBin])],
    opts: &PlotOptions,
) -> DrawResult {
    root.fill(&WHITE).map_err(text_err)?;
    let side = opts.width.min(opts.height);
    let title_size = (side / 26).max(12);
    let label_size = (side / 40).max(10);
    let mut chart = ChartBuilder::on(root)
        .caption(
            &opts.title,
            ("sans-serif", title_size)
                .into_font()
                .style(FontStyle::Bold),
        )
        .margin(12)
        .margin_right(24)
        .x_label_area_size(label_size * 3)
        .y_label_area_size(label_size * 4)
        .build_cartesian_2d(0f64..1f64, 0f64..1f64)
        .map_err(text_err)?;
    chart
        .configure_mesh()
        .x_labels(6)
        .y_labels(6)
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.08))
        .label_style(("sans-serif", label_size))
        .axis_desc_style(("sans-serif", label_size + 2))
        .x_desc("Confidence")
        .y_desc("Accuracy")
        .x_label_formatter(&|v| format!("{v:.1}"))
        .y_label_formatter(&|v| format!("{v:.1}"))
        .draw()
        .map_err(text_err)?;
    draw_diagonal(&mut chart)?;
    for (i, (name, bins)) in series.iter().enumerate() {
        let color = SERIES_COLORS[i % SERIES_COLORS.len()];
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
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", label_size))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(text_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` equal-width bins; those in `empty` have no samples. Non-empty bin `b` is
    /// over-confident: confidence at the bin centre, accuracy 0.75 × confidence, and it holds
    /// `10 · (b + 1)` samples.
    fn bins(n: usize, empty: &[usize]) -> Vec<ReliabilityBin> {
        (0..n)
            .map(|b| {
                let lower = b as f64 / n as f64;
                let upper = (b + 1) as f64 / n as f64;
                if empty.contains(&b) {
                    ReliabilityBin {
                        lower,
                        upper,
                        count: 0,
                        confidence: f64::NAN,
                        accuracy: f64::NAN,
                    }
                } else {
                    let confidence = (lower + upper) / 2.0;
                    ReliabilityBin {
                        lower,
                        upper,
                        count: 10 * (b as u64 + 1),
                        confidence,
                        accuracy: 0.75 * confidence,
                    }
                }
            })
            .collect()
    }

    /// A fresh, empty folder under the system temp dir.
    fn temp_dir(name: &str) -> PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "calseg-plot-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn fill_count(svg: &str, color: RGBColor) -> usize {
        let needle = format!("fill=\"#{:02X}{:02X}{:02X}\"", color.0, color.1, color.2);
        svg.matches(&needle).count()
    }

    fn svg_of(bins: &[ReliabilityBin], opts: &PlotOptions) -> String {
        String::from_utf8(render_reliability_diagram(bins, opts, PlotFormat::Svg).unwrap()).unwrap()
    }

    #[test]
    fn svg_draws_one_bar_per_non_empty_bin() {
        let opts = PlotOptions {
            title: "ECE = 0.123".into(),
            ..PlotOptions::default()
        };
        for empty in [
            &[][..],
            &[0, 1, 2],
            &[3, 7, 9],
            &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        ] {
            let b = bins(10, empty);
            let non_empty = 10 - empty.len();
            let svg = svg_of(&b, &opts);
            // One accuracy bar and one gap bar per non-empty bin, plus one legend swatch each.
            assert_eq!(
                fill_count(&svg, ACC_FILL),
                non_empty + 1,
                "empty = {empty:?}"
            );
            assert_eq!(
                fill_count(&svg, GAP_RED),
                non_empty + 1,
                "empty = {empty:?}"
            );
            assert_eq!(fill_count(&svg, HIST_FILL), non_empty, "empty = {empty:?}");
            for text in [
                "ECE = 0.123",
                "Confidence",
                "Accuracy",
                "Perfect calibration",
            ] {
                assert!(svg.contains(text), "missing {text:?}");
            }
        }
        let no_hist = PlotOptions {
            show_histogram: false,
            ..PlotOptions::default()
        };
        let svg = svg_of(&bins(10, &[1]), &no_hist);
        assert_eq!(fill_count(&svg, HIST_FILL), 0);
        assert_eq!(fill_count(&svg, ACC_FILL), 10);
        assert!(svg.contains("Confidence"));
    }

    #[test]
    fn bar_heights_follow_accuracy() {
        // One non-empty bin [0.5, 0.6] with accuracy 0.25: its bar is a quarter of the
        // plot height and the gap bar spans 0.25..0.55.
        let mut b = bins(10, &[0, 1, 2, 3, 4, 6, 7, 8, 9]);
        b[5].accuracy = 0.25;
        let opts = PlotOptions {
            show_histogram: false,
            ..PlotOptions::default()
        };
        let svg = svg_of(&b, &opts);
        let rect_height = |color: RGBColor| -> Vec<f64> {
            let needle = format!("fill=\"#{:02X}{:02X}{:02X}\"", color.0, color.1, color.2);
            svg.lines()
                .filter(|l| l.contains("<rect") && l.contains(&needle))
                .map(|l| {
                    let h = l.split("height=\"").nth(1).unwrap();
                    h[..h.find('"').unwrap()].parse::<f64>().unwrap()
                })
                .collect()
        };
        // First entry: the bar; second: the legend swatch (10 px).
        let acc = rect_height(ACC_FILL);
        let gap = rect_height(GAP_RED);
        assert_eq!(acc.len(), 2);
        assert_eq!(gap.len(), 2);
        let ratio = gap[0] / acc[0];
        assert!(
            (ratio - 0.30 / 0.25).abs() < 0.03,
            "gap/bar height ratio {ratio}"
        );
    }

    #[test]
    fn png_file_has_magic_size_and_bars() {
        let dir = temp_dir("png");
        let path = dir.join("diagram.PNG");
        let opts = PlotOptions {
            width: 480,
            height: 520,
            ..PlotOptions::default()
        };
        reliability_diagram(&bins(10, &[0, 1]), &opts, &path).unwrap();
        let bytes = fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&bytes[12..16], b"IHDR");
        let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
        let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
        assert_eq!((w, h), (480, 520));
        assert_eq!(entries(&dir), vec!["diagram.PNG".to_owned()]);

        // Decode and count accuracy-bar pixels: many with 8 bars, only the legend swatch
        // when every bin is empty.
        let count_fill = |png_bytes: &[u8]| -> usize {
            let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes.to_vec()));
            let mut reader = decoder.read_info().unwrap();
            let mut buf = vec![0; reader.output_buffer_size().unwrap()];
            let info = reader.next_frame(&mut buf).unwrap();
            buf[..info.buffer_size()]
                .chunks(3)
                .filter(|p| p == &[ACC_FILL.0, ACC_FILL.1, ACC_FILL.2])
                .count()
        };
        let full = count_fill(&bytes);
        let all_empty: Vec<usize> = (0..10).collect();
        let none =
            render_reliability_diagram(&bins(10, &all_empty), &opts, PlotFormat::Png).unwrap();
        let legend_only = count_fill(&none);
        assert!(
            legend_only > 0 && legend_only < 300,
            "legend swatch: {legend_only}"
        );
        assert!(full > legend_only + 2000, "bars: {full} vs {legend_only}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unknown_extension_is_refused_and_writes_nothing() {
        let dir = temp_dir("ext");
        for name in ["diagram.jpg", "diagram", "diagram.svg.txt"] {
            let path = dir.join(name);
            let err =
                reliability_diagram(&bins(5, &[]), &PlotOptions::default(), &path).unwrap_err();
            assert!(
                matches!(err, MetricsError::Invalid(ref m) if m.contains(".png")),
                "{err}"
            );
            let err =
                reliability_overlay(&[("a", &bins(5, &[])[..])], &PlotOptions::default(), &path)
                    .unwrap_err();
            assert!(matches!(err, MetricsError::Invalid(_)), "{err}");
        }
        assert!(entries(&dir).is_empty(), "{:?}", entries(&dir));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn failed_write_leaves_nothing_and_existing_files_are_replaced_whole() {
        let dir = temp_dir("atomic");
        // Folder does not exist: an Output error naming the path.
        let missing = dir.join("no-such-folder").join("d.svg");
        let err =
            reliability_diagram(&bins(5, &[]), &PlotOptions::default(), &missing).unwrap_err();
        assert!(
            matches!(&err, MetricsError::Output { path, .. } if path == &missing),
            "{err}"
        );
        assert!(entries(&dir).is_empty());

        // The target is a folder: rename fails, the temporary file is cleaned up.
        let blocker = dir.join("taken.svg");
        fs::create_dir(&blocker).unwrap();
        let err =
            reliability_diagram(&bins(5, &[]), &PlotOptions::default(), &blocker).unwrap_err();
        assert!(matches!(err, MetricsError::Output { .. }), "{err}");
        assert_eq!(entries(&dir), vec!["taken.svg".to_owned()]);

        // Overwriting an existing file replaces it with a complete figure.
        let path = dir.join("d.svg");
        fs::write(&path, "old").unwrap();
        reliability_diagram(&bins(5, &[]), &PlotOptions::default(), &path).unwrap();
        let svg = fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(
            entries(&dir),
            vec!["d.svg".to_owned(), "taken.svg".to_owned()]
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn overlay_draws_each_series_with_a_legend() {
        let a = bins(10, &[0]);
        let mut b = bins(10, &[0, 1, 2]);
        for bin in b.iter_mut().filter(|x| x.count > 0) {
            bin.accuracy = bin.confidence; // calibrated
        }
        let series = [("Cross-entropy", &a[..]), ("CALSeg", &b[..])];
        let opts = PlotOptions {
            title: "Overlay".into(),
            ..PlotOptions::default()
        };
        let svg =
            String::from_utf8(render_reliability_overlay(&series, &opts, PlotFormat::Svg).unwrap())
                .unwrap();
        assert!(svg.contains("Cross-entropy") && svg.contains("CALSeg") && svg.contains("Overlay"));
        // Markers: one filled circle per non-empty bin, plus one in each legend entry.
        for (i, (_, bins)) in series.iter().enumerate() {
            let c = SERIES_COLORS[i];
            let needle = format!("fill=\"#{:02X}{:02X}{:02X}\"", c.0, c.1, c.2);
            let circles = svg
                .lines()
                .filter(|l| l.contains("<circle") && l.contains(&needle))
                .count();
            let non_empty = bins.iter().filter(|x| x.count > 0).count();
            assert_eq!(circles, non_empty + 1, "series {i}");
        }
        let dir = temp_dir("overlay");
        let path = dir.join("overlay.png");
        reliability_overlay(&series, &opts, &path).unwrap();
        assert_eq!(&fs::read(&path).unwrap()[..4], b"\x89PNG");
        fs::remove_dir_all(&dir).unwrap();

        assert!(matches!(
            render_reliability_overlay(&[], &opts, PlotFormat::Svg),
            Err(MetricsError::Invalid(_))
        ));
    }

    #[test]
    fn invalid_bins_and_sizes_are_refused() {
        let mut b = bins(4, &[]);
        b[2].accuracy = f64::NAN;
        let err =
            render_reliability_diagram(&b, &PlotOptions::default(), PlotFormat::Svg).unwrap_err();
        assert!(
            matches!(err, MetricsError::Invalid(ref m) if m.contains("bin 2")),
            "{err}"
        );
        let mut b = bins(4, &[]);
        b[1].confidence = 1.5;
        assert!(render_reliability_diagram(&b, &PlotOptions::default(), PlotFormat::Png).is_err());
        let mut b = bins(4, &[]);
        b[3].lower = 0.9;
        b[3].upper = 0.8;
        assert!(render_reliability_diagram(&b, &PlotOptions::default(), PlotFormat::Svg).is_err());
        // An empty bin's NaNs are fine.
        assert!(
            render_reliability_diagram(&bins(4, &[1]), &PlotOptions::default(), PlotFormat::Svg)
                .is_ok()
        );
        let tiny = PlotOptions {
            width: 50,
            ..PlotOptions::default()
        };
        assert!(matches!(
            render_reliability_diagram(&bins(4, &[]), &tiny, PlotFormat::Png),
            Err(MetricsError::Invalid(_))
        ));
        assert_eq!(
            PlotFormat::from_path(Path::new("a/b.SvG")).unwrap(),
            PlotFormat::Svg
        );
    }
}
