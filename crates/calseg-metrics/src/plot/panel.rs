//! Image panels of one slice: titled tiles side by side — the image in grey, the label
//! map in a categorical palette, soft labels and confidence maps in a viridis-like
//! perceptual map with a 0–1 colour bar — for experiment reports.
//!
//! The tiles are coloured pixel by pixel into an RGB buffer; plotters only draws the
//! titles and colour-bar ticks over it (same fonts, PNG encoder and atomic write as the
//! reliability diagrams, see [`super::render`]).

use std::path::Path;

use ndarray::ArrayView2;

use super::TABLEAU10;
use super::render::{encode_png, ensure_fonts, write_atomic};
use crate::MetricsError;

/// A drawing or encoding failure of a panel.
fn render_err(reason: String) -> MetricsError {
    MetricsError::Render(format!("panel: {reason}"))
}

/// Margin around and between tiles, pixels.
const MARGIN: u32 = 8;
/// Height of the title band above the tiles.
const TITLE_H: u32 = 24;
/// Height of the band below the tiles (colour bar and its 0/1 ticks).
const BAR_H: u32 = 24;
/// Height of the colour bar itself.
const BAR_STRIPE: u32 = 8;
/// Tiles are enlarged by an integer factor until their longer side reaches this.
const TILE_TARGET: usize = 256;
/// Narrowest column, so that titles fit above thin slices.
const MIN_COLUMN: u32 = 128;
/// Largest panel accepted, pixels (an RGB buffer of this size is allocated).
const MAX_PIXELS: u64 = 64 << 20;

/// Integer up-scaling of a slice of shape `(rows, cols)` and the panel size `(width,
/// height)` in pixels for `n_tiles` tiles of that slice: each tile is enlarged by the
/// largest integer factor (at least 1) that keeps its longer side within 256 pixels,
/// sits in a column at least 128 pixels wide, under a 24-pixel title band and above a
/// 24-pixel colour-bar band, with 8-pixel margins.
///
/// # Errors
/// [`MetricsError::Invalid`] for an empty slice, no tile, or a panel over 64 Mi pixels.
pub fn panel_layout(shape: (usize, usize), n_tiles: usize) -> Result<PanelLayout, MetricsError> {
    let (rows, cols) = shape;
    if rows == 0 || cols == 0 || n_tiles == 0 {
        return Err(MetricsError::Invalid(format!(
            "panel: {n_tiles} tiles of a {rows}×{cols} slice; need at least one pixel and one tile"
        )));
    }
    let scale = (TILE_TARGET / rows.max(cols)).max(1);
    let too_big = || MetricsError::Invalid(format!("panel: a {rows}×{cols} slice is too large"));
    let tile_w = u32::try_from(cols * scale).map_err(|_| too_big())?;
    let tile_h = u32::try_from(rows * scale).map_err(|_| too_big())?;
    let column = tile_w.max(MIN_COLUMN);
    let n = u32::try_from(n_tiles).map_err(|_| too_big())?;
    let width = u64::from(MARGIN) + u64::from(n) * u64::from(column + MARGIN);
    let height = u64::from(MARGIN + TITLE_H + BAR_H + MARGIN) + u64::from(tile_h);
    if width * height > MAX_PIXELS {
        return Err(too_big());
    }
    Ok(PanelLayout {
        scale,
        tile_w,
        tile_h,
        column,
        width: width as u32,
        height: height as u32,
    })
}

/// Geometry of a panel, from [`panel_layout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PanelLayout {
    /// Integer enlargement of the slice.
    pub scale: usize,
    /// Tile width in pixels (`cols × scale`).
    pub tile_w: u32,
    /// Tile height in pixels (`rows × scale`).
    pub tile_h: u32,
    /// Column width (tile width, at least 128).
    pub column: u32,
    /// Panel width.
    pub width: u32,
    /// Panel height.
    pub height: u32,
}

/// Viridis anchor colours at 0, 1/8, …, 1 (matplotlib's viridis sampled at nine points);
/// [`viridis`] interpolates linearly between them.
const VIRIDIS: [u32; 9] = [
    0x440154, 0x482878, 0x3E4989, 0x31688E, 0x26828E, 0x1F9E89, 0x35B779, 0x6ECE58, 0xFDE725,
];

/// `0xRRGGBB` as `[r, g, b]`.
const fn rgb(hex: u32) -> [u8; 3] {
    let [_, r, g, b] = hex.to_be_bytes();
    [r, g, b]
}

/// A viridis-like perceptual colour of `v`, clamped to `[0, 1]`; `NaN` is mid grey.
pub fn viridis(v: f32) -> [u8; 3] {
    if v.is_nan() {
        return [128, 128, 128];
    }
    let x = v.clamp(0.0, 1.0) * (VIRIDIS.len() - 1) as f32;
    let i = (x.floor() as usize).min(VIRIDIS.len() - 2);
    let t = x - i as f32;
    let (a, b) = (rgb(VIRIDIS[i]), rgb(VIRIDIS[i + 1]));
    [0, 1, 2].map(|c| (f32::from(a[c]) + t * (f32::from(b[c]) - f32::from(a[c]))).round() as u8)
}

/// Colours of the label tile: label 0 (background) black, labels 1, 2, … the Tableau 10
/// palette, cyclically.
pub const LABEL_COLORS: [[u8; 3]; 10] = TABLEAU10;

/// The colour of label `v` in the label tile.
pub fn label_color(v: u32) -> [u8; 3] {
    if v == 0 {
        [0, 0, 0]
    } else {
        LABEL_COLORS[(v as usize - 1) % LABEL_COLORS.len()]
    }
}

/// Grey levels of an image slice: the 1st–99th percentile of the finite values mapped
/// to 0–255 (robust to a few bright voxels), clamped; `NaN` black.
fn grey_levels(image: ArrayView2<'_, f32>) -> impl Fn(f32) -> [u8; 3] {
    let mut finite: Vec<f32> = image.iter().copied().filter(|v| v.is_finite()).collect();
    finite.sort_by(f32::total_cmp);
    let pick = |q: f64| -> f32 {
        if finite.is_empty() {
            0.0
        } else {
            finite[((finite.len() - 1) as f64 * q).round() as usize]
        }
    };
    let (lo, hi) = (pick(0.01), pick(0.99));
    move |v: f32| {
        if !v.is_finite() {
            return [0, 0, 0];
        }
        let g = if hi > lo {
            ((v - lo) / (hi - lo)).clamp(0.0, 1.0) * 255.0
        } else {
            0.0
        };
        let g = g.round() as u8;
        [g, g, g]
    }
}

/// How one tile is coloured.
enum Tile<'a> {
    Grey(ArrayView2<'a, f32>),
    Labels(ArrayView2<'a, u32>),
    Continuous(ArrayView2<'a, f32>),
}

/// One slice's panel: titled tiles side by side, left to right — the image in grey
/// (1st–99th percentile window), the label map (background black, classes in the Tableau 10
/// palette), the soft label if given, then each `(title, map)` of `confidences` — the last
/// two in a viridis-like colour map over `[0, 1]` with a colour bar. Row 0 of the arrays
/// is the top row of the tiles (transpose or flip a slice beforehand for radiological
/// display). Size: [`panel_layout`].
#[derive(Debug, Clone, Copy)]
pub struct Panel<'a> {
    /// The image slice.
    pub image: ArrayView2<'a, f32>,
    /// The label map of the slice.
    pub label: ArrayView2<'a, u32>,
    /// A soft label of the slice (values in `[0, 1]`), if any.
    pub soft_label: Option<ArrayView2<'a, f32>>,
    /// Further maps in `[0, 1]` (e.g. each method's confidence), with their titles.
    pub confidences: &'a [(String, ArrayView2<'a, f32>)],
}

impl Panel<'_> {
    /// Writes the panel to `path` as a PNG, atomically.
    ///
    /// # Errors
    /// As [`Panel::render_png`], plus [`MetricsError::Output`] when writing fails
    /// (nothing is left at `path` then).
    pub fn write_png(&self, path: &Path) -> Result<(), MetricsError> {
        write_atomic(path, &self.render_png()?)
    }

    /// The panel as PNG file bytes.
    ///
    /// # Errors
    /// [`MetricsError::Invalid`] when the arrays' shapes differ or the slice is empty or
    /// too large; [`MetricsError::Render`] when drawing fails.
    pub fn render_png(&self) -> Result<Vec<u8>, MetricsError> {
        let Panel {
            image: image_slice,
            label,
            soft_label,
            confidences,
        } = *self;
        render_tiles(image_slice, label, soft_label, confidences)
    }
}

/// [`Panel::render_png`] on the panel's parts.
fn render_tiles(
    image_slice: ArrayView2<'_, f32>,
    label: ArrayView2<'_, u32>,
    soft_label: Option<ArrayView2<'_, f32>>,
    confidences: &[(String, ArrayView2<'_, f32>)],
) -> Result<Vec<u8>, MetricsError> {
    let shape = image_slice.dim();
    let mut tiles: Vec<(String, Tile<'_>)> = vec![
        ("image".to_owned(), Tile::Grey(image_slice)),
        ("label".to_owned(), Tile::Labels(label)),
    ];
    if let Some(s) = soft_label {
        tiles.push(("soft label".to_owned(), Tile::Continuous(s)));
    }
    for (name, c) in confidences {
        tiles.push((name.clone(), Tile::Continuous(*c)));
    }
    for (name, t) in &tiles {
        let dim = match t {
            Tile::Grey(a) | Tile::Continuous(a) => a.dim(),
            Tile::Labels(a) => a.dim(),
        };
        if dim != shape {
            return Err(MetricsError::Invalid(format!(
                "panel: tile {name:?} has shape {dim:?}, the image slice {shape:?}"
            )));
        }
    }
    let layout = panel_layout(shape, tiles.len())?;
    let (w, h) = (layout.width as usize, layout.height as usize);
    let mut rgb = vec![255u8; w * h * 3];
    let put = |rgb: &mut [u8], x: usize, y: usize, c: [u8; 3]| {
        let i = (y * w + x) * 3;
        rgb[i..i + 3].copy_from_slice(&c);
    };
    let grey = grey_levels(image_slice);
    let tile_top = (MARGIN + TITLE_H) as usize;
    let scale = layout.scale;
    for (t, (_, tile)) in tiles.iter().enumerate() {
        let col_x = (MARGIN + t as u32 * (layout.column + MARGIN)) as usize;
        let x0 = col_x + ((layout.column - layout.tile_w) / 2) as usize;
        for r in 0..shape.0 {
            for c in 0..shape.1 {
                let colour = match tile {
                    Tile::Grey(a) => grey(a[[r, c]]),
                    Tile::Labels(a) => label_color(a[[r, c]]),
                    Tile::Continuous(a) => viridis(a[[r, c]]),
                };
                for dy in 0..scale {
                    for dx in 0..scale {
                        put(
                            &mut rgb,
                            x0 + c * scale + dx,
                            tile_top + r * scale + dy,
                            colour,
                        );
                    }
                }
            }
        }
        if matches!(tile, Tile::Continuous(_)) {
            let bar_top = tile_top + layout.tile_h as usize + 3;
            let bw = layout.tile_w as usize;
            for x in 0..bw {
                let colour = viridis(x as f32 / (bw.max(2) - 1) as f32);
                for y in 0..BAR_STRIPE as usize {
                    put(&mut rgb, x0 + x, bar_top + y, colour);
                }
            }
        }
    }
    draw_panel_text(&mut rgb, &layout, &tiles)?;
    encode_png(&rgb, layout.width, layout.height).map_err(render_err)
}

/// Titles above the tiles and the 0/1 ticks of the colour bars, drawn over `rgb`.
fn draw_panel_text(
    rgb: &mut [u8],
    layout: &PanelLayout,
    tiles: &[(String, Tile<'_>)],
) -> Result<(), MetricsError> {
    use plotters::prelude::*;
    ensure_fonts()?;
    let err = render_err;
    let root = BitMapBackend::with_buffer(rgb, (layout.width, layout.height)).into_drawing_area();
    let title_font = ("sans-serif", 15).into_font().color(&BLACK);
    let tick_font = ("sans-serif", 11).into_font().color(&BLACK);
    for (t, (name, tile)) in tiles.iter().enumerate() {
        let col_x = (MARGIN + t as u32 * (layout.column + MARGIN)) as i32;
        let area = root.clone().shrink(
            (col_x, MARGIN as i32),
            (layout.column, layout.height - MARGIN),
        );
        let title = fit_title(&area, name, &title_font, layout.column.saturating_sub(4));
        area.draw(&Text::new(title, (2, 4), title_font.clone()))
            .map_err(|e| err(e.to_string()))?;
        if matches!(tile, Tile::Continuous(_)) {
            let x0 = ((layout.column - layout.tile_w) / 2) as i32;
            let y = (TITLE_H + layout.tile_h + 3 + BAR_STRIPE + 1) as i32;
            area.draw(&Text::new("0", (x0, y), tick_font.clone()))
                .map_err(|e| err(e.to_string()))?;
            area.draw(&Text::new(
                "1",
                (x0 + layout.tile_w as i32 - 7, y),
                tick_font.clone(),
            ))
            .map_err(|e| err(e.to_string()))?;
        }
    }
    root.present().map_err(|e| err(e.to_string()))
}

/// `title`, shortened with a trailing "…" until it is at most `width` pixels wide in
/// `font` (unchanged when it fits, or when its width cannot be measured).
fn fit_title<DB: plotters::prelude::DrawingBackend>(
    area: &plotters::prelude::DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    font: &plotters::style::TextStyle<'_>,
    width: u32,
) -> String {
    let fits = |t: &str| {
        area.estimate_text_size(t, font)
            .map_or(true, |(w, _)| w <= width)
    };
    if fits(title) {
        return title.to_owned();
    }
    let mut chars: Vec<char> = title.chars().collect();
    while !chars.is_empty() {
        chars.pop();
        let candidate: String = chars.iter().chain(['…'].iter()).collect();
        if fits(&candidate) {
            return candidate;
        }
    }
    "…".to_owned()
}
