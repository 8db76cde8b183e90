//! The machinery shared by every figure of this module: input validation, the embedded
//! fonts (registered once), the PNG and SVG backends, PNG encoding, and the atomic write.
//!
//! The atomic write is a copy of `calseg_io::atomic::write_atomic`'s logic, on purpose:
//! calseg-metrics depends on no other workspace crate (a metrics library must not pull in
//! NIfTI, safetensors and compression for one helper), so every figure this crate writes
//! — reliability diagrams, overlays, slice panels — goes through this one function.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::draw::{draw_diagram, draw_overlay, text_err};
use super::{MAX_SIDE, MIN_SIDE, PlotFormat, PlotOptions};
use crate::{MetricsError, ReliabilityBin};

/// Checks the non-empty bins: edges and values finite numbers in `[0, 1]`.
pub(crate) fn validate_bins(bins: &[ReliabilityBin], what: &str) -> Result<(), MetricsError> {
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

/// Register the embedded DejaVu Sans faces (regular and bold) as plotters' `sans-serif`
/// family (once, for every figure of this module).
pub(crate) fn ensure_fonts() -> Result<(), MetricsError> {
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

/// What drawing code returns: the backend error as text.
pub(crate) type DrawResult = Result<(), String>;

/// What to draw.
#[derive(Clone, Copy)]
pub(crate) enum Figure<'a> {
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
pub(crate) fn render(
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

/// An 8-bit RGB buffer of `w × h` pixels as PNG file bytes.
pub(crate) fn encode_png(rgb: &[u8], w: u32, h: u32) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(rgb).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    Ok(out)
}

/// Renders a figure in the format `path`'s extension names and writes it atomically.
pub(crate) fn write_figure(
    path: &Path,
    render: impl FnOnce(PlotFormat) -> Result<Vec<u8>, MetricsError>,
) -> Result<(), MetricsError> {
    let format = PlotFormat::from_path(path)?;
    write_atomic(path, &render(format)?)
}

/// Write `bytes` to a fresh temporary file next to `path`, flush it to disk, and rename it
/// over `path`. On any error the temporary file is removed and `path` is untouched.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), MetricsError> {
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
