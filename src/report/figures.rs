//! Figures: the reliability curves of all methods in one plot, and slice panels; both
//! drawn by `calseg_metrics::plot`.

use super::ReportError;
use calseg_metrics::ReliabilityBin;
use calseg_metrics::plot::{Panel, PlotOptions, reliability_overlay};
use ndarray::ArrayView2;
use std::path::Path;

/// Draws the reliability curves of several methods in one figure, once per path (the
/// extension, `.png` or `.svg`, picks the format), with `title` on top.
///
/// # Errors
/// [`ReportError::Invalid`] for no path; [`ReportError::Plot`] for an unsupported
/// extension (checked for every path before anything is written), invalid bins, or a
/// failed write.
pub fn write_reliability_overlay(
    series: &[(&str, &[ReliabilityBin])],
    title: &str,
    paths: &[&Path],
) -> Result<(), ReportError> {
    if paths.is_empty() {
        return Err(ReportError::Invalid(
            "reliability overlay: no output path".into(),
        ));
    }
    for p in paths {
        calseg_metrics::plot::PlotFormat::from_path(p)?;
    }
    let opts = PlotOptions {
        title: title.to_owned(),
        width: 640,
        height: 640,
        show_histogram: false,
    };
    for p in paths {
        reliability_overlay(series, &opts, p)?;
    }
    Ok(())
}

/// Writes a PNG panel of one slice atomically, with
/// [`calseg_metrics::plot::Panel`] (tiles: image, label map, soft label if
/// given, then each `(title, map)` of `confidences`).
///
/// # Errors
/// [`ReportError::Plot`] when the arrays' shapes differ, the slice is empty or too large,
/// drawing fails, or writing fails (nothing is left at `path` then).
pub fn write_panel_png(
    path: &Path,
    image_slice: ArrayView2<'_, f32>,
    label: ArrayView2<'_, u32>,
    soft_label: Option<ArrayView2<'_, f32>>,
    confidences: &[(String, ArrayView2<'_, f32>)],
) -> Result<(), ReportError> {
    let panel = Panel {
        image: image_slice,
        label,
        soft_label,
        confidences,
    };
    Ok(panel.write_png(path)?)
}
