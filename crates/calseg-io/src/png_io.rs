//! PNG 2D slices through the `png` crate: quick looks at volumes, and 2D datasets.
//!
//! Arrays are `(rows, columns)` = `(height, width)`, row 0 at the top of the picture.
//! Written: 8-bit (`u8`) or 16-bit (`u16`) greyscale. Read: greyscale of any bit depth
//! (1–16; values are the stored integers, not rescaled), palette images as their
//! palette indices (the usual way to store label maps), and RGB/RGBA images whose
//! three colour channels are equal (grey saved as colour). Other colour images are an
//! error naming the file.

use crate::array::TypedArray;
use crate::atomic::write_atomic;
use crate::error::{IoError, Result};
use ndarray::{Array2, ArrayBase, ArrayView2, Data, Ix2};
use png::{BitDepth, ColorType};
use std::io::Cursor;
use std::path::Path;

/// Reads a PNG as a `(height, width)` array: `U8` for bit depths up to 8, `U16` for 16.
pub fn read_png(path: impl AsRef<Path>) -> Result<TypedArray> {
    let path = path.as_ref();
    let bytes = crate::mapped::file_bytes(path)?;
    png_from_bytes(&bytes, path)
}

/// Parses PNG bytes held in memory; `path` names them in errors.
pub fn png_from_bytes(bytes: &[u8], path: &Path) -> Result<TypedArray> {
    let err = |reason: String| IoError::Png {
        path: path.to_path_buf(),
        reason,
    };
    let decoder = png::Decoder::new(Cursor::new(bytes));
    let mut reader = decoder.read_info().map_err(|e| err(e.to_string()))?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| err("image too large".into()))?;
    // Deflate expands at most ~1032×: a header claiming more pixels than the compressed
    // data could ever hold is corrupt, and must not make us allocate gigabytes.
    let possible = bytes.len().saturating_mul(1100).saturating_add(1 << 16);
    if size > possible {
        let info = reader.info();
        return Err(err(format!(
            "the header claims {}×{} pixels ({size} bytes), more than the {} bytes of the file can hold",
            info.width,
            info.height,
            bytes.len()
        )));
    }
    let mut buf = vec![0u8; size];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| err(e.to_string()))?;
    let (w, h) = (info.width as usize, info.height as usize);
    let line = info.line_size;
    let depth = info.bit_depth as u8;
    let channels = match info.color_type {
        ColorType::Grayscale | ColorType::Indexed => 1,
        ColorType::GrayscaleAlpha => 2,
        ColorType::Rgb => 3,
        ColorType::Rgba => 4,
    };
    if matches!(info.color_type, ColorType::GrayscaleAlpha) {
        return Err(err(
            "grey+alpha images are not supported (save without the alpha channel)".into(),
        ));
    }
    // Sample `c` of pixel `x` of row `y`, for any bit depth.
    let sample = |y: usize, x: usize, c: usize| -> u16 {
        let row = y * line;
        match depth {
            16 => {
                let i = row + (x * channels + c) * 2;
                u16::from_be_bytes([
                    buf.get(i).copied().unwrap_or(0),
                    buf.get(i + 1).copied().unwrap_or(0),
                ])
            }
            8 => u16::from(buf.get(row + x * channels + c).copied().unwrap_or(0)),
            d => {
                let d = usize::from(d);
                let bit = (x * channels + c) * d;
                let byte = buf.get(row + bit / 8).copied().unwrap_or(0);
                let shift = 8 - d - bit % 8;
                u16::from((byte >> shift) & ((1u8 << d) - 1))
            }
        }
    };
    let mut values = Vec::with_capacity(w * h);
    for y in 0..h {
        for x in 0..w {
            let v = sample(y, x, 0);
            if channels >= 3 && (sample(y, x, 1) != v || sample(y, x, 2) != v) {
                return Err(err(format!(
                    "colour image (pixel row {y}, column {x} is not grey); only greyscale, \
                     palette (label) and grey-as-RGB images are supported"
                )));
            }
            values.push(v);
        }
    }
    let shape = ndarray::IxDyn(&[h, w]);
    Ok(if depth == 16 {
        TypedArray::U16(
            ndarray::ArrayD::from_shape_vec(shape, values).map_err(|e| err(e.to_string()))?,
        )
    } else {
        let v8: Vec<u8> = values.into_iter().map(|v| v as u8).collect();
        TypedArray::U8(ndarray::ArrayD::from_shape_vec(shape, v8).map_err(|e| err(e.to_string()))?)
    })
}

/// A pixel type that PNG stores as greyscale: `u8` (8-bit) or `u16` (16-bit).
pub trait PngPixel: Copy + sealed::Sealed {
    /// The PNG bit depth.
    const DEPTH: BitDepth;
    /// Appends the big-endian bytes of `self` (PNG byte order).
    fn put_be(self, out: &mut Vec<u8>);
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for u8 {}
    impl Sealed for u16 {}
}

impl PngPixel for u8 {
    const DEPTH: BitDepth = BitDepth::Eight;
    fn put_be(self, out: &mut Vec<u8>) {
        out.push(self);
    }
}

impl PngPixel for u16 {
    const DEPTH: BitDepth = BitDepth::Sixteen;
    fn put_be(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_be_bytes());
    }
}

/// Encodes a `(height, width)` array as greyscale PNG bytes.
pub fn encode_png<T: PngPixel, S: Data<Elem = T>>(
    image: &ArrayBase<S, Ix2>,
    path: &Path,
) -> Result<Vec<u8>> {
    let (h, w) = image.dim();
    let (Ok(w32), Ok(h32)) = (u32::try_from(w), u32::try_from(h)) else {
        return Err(IoError::invalid(path, "image too large for PNG"));
    };
    if w == 0 || h == 0 {
        return Err(IoError::invalid(
            path,
            format!("PNG needs at least one pixel, the array is {h}×{w}"),
        ));
    }
    let mut data = Vec::with_capacity(image.len() * 2);
    for &v in image.iter() {
        v.put_be(&mut data);
    }
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w32, h32);
    enc.set_color(ColorType::Grayscale);
    enc.set_depth(T::DEPTH);
    let to_err = |e: png::EncodingError| IoError::Png {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut writer = enc.write_header().map_err(to_err)?;
    writer.write_image_data(&data).map_err(to_err)?;
    writer.finish().map_err(to_err)?;
    Ok(out)
}

/// Writes a `(height, width)` array of `u8` or `u16` as a greyscale PNG, atomically.
///
/// ```
/// use ndarray::Array2;
/// let dir = std::env::temp_dir().join(format!("calseg-doc-png-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let path = dir.join("labels.png");
/// let labels = Array2::from_shape_fn((3, 5), |(r, c)| (r * 5 + c) as u8);
/// calseg_io::write_png(&path, &labels)?;
/// assert_eq!(calseg_io::read_png(&path)?, calseg_io::TypedArray::U8(labels.into_dyn()));
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn write_png<T: PngPixel, S: Data<Elem = T>>(
    path: impl AsRef<Path>,
    image: &ArrayBase<S, Ix2>,
) -> Result<()> {
    let path = path.as_ref();
    let bytes = encode_png(image, path)?;
    write_atomic(path, &bytes)
}

/// Maps floats to 8-bit grey for a quick look: `lo` → 0, `hi` → 255, clamped; NaN → 0.
/// With `range = None` the slice's own finite min and max are used.
pub fn to_grey8(slice: ArrayView2<'_, f32>, range: Option<(f32, f32)>) -> Array2<u8> {
    let (lo, hi) = range.unwrap_or_else(|| {
        let mut r = (f32::INFINITY, f32::NEG_INFINITY);
        for &v in slice.iter().filter(|v| v.is_finite()) {
            r = (r.0.min(v), r.1.max(v));
        }
        if r.0 > r.1 { (0.0, 1.0) } else { r }
    });
    let span = if hi > lo { hi - lo } else { 1.0 };
    slice.mapv(|v| {
        if v.is_nan() {
            0
        } else {
            (((v - lo) / span).clamp(0.0, 1.0) * 255.0).round() as u8
        }
    })
}
