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
//! [`panel`] draws image panels of one slice (image, labels, soft labels, confidence maps).
//!
//! # Files
//! This module holds the public API of the reliability figures; [`render`] the shared
//! machinery (fonts, backends, PNG encoding, atomic writes), `draw` the diagram and
//! overlay drawing, [`panel`] the slice panels.
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

mod draw;
pub mod panel;
pub mod render;
#[cfg(test)]
mod tests;

pub use panel::{LABEL_COLORS, Panel, PanelLayout, label_color, panel_layout, viridis};

use std::path::Path;

use plotters::style::RGBColor;

use crate::{MetricsError, ReliabilityBin};
use render::{Figure, render, validate_bins, write_figure};

/// Fill of the accuracy bars.
pub(crate) const ACC_FILL: RGBColor = RGBColor(66, 114, 196);
/// Outline of the accuracy bars.
pub(crate) const ACC_EDGE: RGBColor = RGBColor(31, 58, 112);
/// Fill (translucent) and outline of the gap bars.
pub(crate) const GAP_RED: RGBColor = RGBColor(214, 39, 40);
/// Fill of the count histogram.
pub(crate) const HIST_FILL: RGBColor = RGBColor(128, 128, 128);
/// The diagonal `y = x`.
pub(crate) const DIAGONAL: RGBColor = RGBColor(60, 60, 60);
/// Opacity of the gap bars' fill.
pub(crate) const GAP_ALPHA: f64 = 0.35;
/// The Tableau 10 palette: line colours of the overlay series and label colours of the
/// panels, reused cyclically.
const TABLEAU10: [[u8; 3]; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];
/// Smallest figure side accepted, in pixels (below it the axes and labels do not fit).
pub(crate) const MIN_SIDE: u32 = 200;
/// Largest figure side accepted, in pixels (a 3-byte-per-pixel buffer is allocated).
pub(crate) const MAX_SIDE: u32 = 8192;

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
    write_figure(path, |format| {
        render_reliability_diagram(bins, opts, format)
    })
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
    write_figure(path, |format| {
        render_reliability_overlay(series, opts, format)
    })
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
