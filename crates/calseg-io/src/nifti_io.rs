//! NIfTI-1 (`.nii`, `.nii.gz`) reading and writing.
//!
//! Reading goes through the [`nifti`] crate (header parsing, byte order, element
//! decoding) after this module has checked everything a damaged file can get wrong,
//! so a bad file gives an [`IoError`] naming it, never a panic:
//! gzip integrity (checksum and length, via flate2), `sizeof_hdr`, magic, `dim`,
//! datatype, `vox_offset` and that the file holds as many bytes as the dimensions need.
//!
//! Conventions, chosen to match nibabel so that a Python colleague sees the same numbers:
//! * index order `(x, y, z[, t/c, …])`: `image.data[[x, y, z]]` is nibabel's
//!   `img.dataobj[x, y, z]` (the arrays are returned in standard C memory layout);
//! * `scl_slope`/`scl_inter` are kept in [`Image::scaling`] and applied by
//!   [`Image::to_f64`]; a slope of 0 or NaN means "no scaling" (as in nibabel);
//! * the affine is the sform if `sform_code > 0`, else the qform (quaternion) if
//!   `qform_code > 0`, else `diag(pixdim[1..=3])` — the NIfTI standard's "method 1".
//!   (nibabel's last fallback centres the grid instead; files with both codes 0 are rare.)
//! * trailing bytes after the voxel data are ignored, as nibabel does; missing bytes are
//!   an error.
//!
//! Writing encodes the 348-byte header itself (little-endian, `vox_offset` 352, no
//! extensions), compresses with flate2 when the name ends in `.gz`, and replaces the
//! target atomically ([`crate::atomic`]).

use crate::array::{DataType, Element, TypedArray, checked_product};
use crate::atomic::write_atomic;
use crate::error::{IoError, Result};
use crate::image::{Affine, Format, Geometry, Image};
use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use ndarray::{ArrayBase, Axis, Data, Dimension};
use nifti::{Endianness, NiftiHeader};
use std::borrow::Cow;
use std::io::{Read, Write};
use std::path::Path;

const HEADER_SIZE: usize = 348;
const DATA_OFFSET: usize = 352;

/// Reads a `.nii` or `.nii.gz` file (gzip is recognised by its magic bytes, not the name).
///
/// ```no_run
/// let img = calseg_io::read_nifti("t1.nii.gz")?;
/// println!("{:?} {} spacing {:?}", img.shape(), img.datatype(), img.geometry.spacing);
/// # Ok::<(), calseg_io::IoError>(())
/// ```
pub fn read_nifti(path: impl AsRef<Path>) -> Result<Image> {
    let path = path.as_ref();
    let bytes = crate::mapped::file_bytes(path)?;
    nifti_from_bytes(&bytes, path)
}

/// True if `bytes` start with the gzip magic number.
pub(crate) fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b])
}

/// Decompresses a (possibly multi-member) gzip stream, or borrows `bytes` unchanged
/// if they are not gzip.
pub(crate) fn maybe_gunzip<'a>(bytes: &'a [u8], path: &Path) -> Result<Cow<'a, [u8]>> {
    if !is_gzip(bytes) {
        return Ok(Cow::Borrowed(bytes));
    }
    let mut out = Vec::with_capacity(bytes.len().saturating_mul(3));
    MultiGzDecoder::new(bytes)
        .read_to_end(&mut out)
        .map_err(|source| IoError::Gzip {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(Cow::Owned(out))
}

/// Parses a NIfTI-1 file held in memory (`.nii` bytes or their gzip). `path` is only
/// used to name the file in errors and to record the format.
///
/// This is the reader behind [`read_nifti`], the dataset loader and the fuzz target.
pub fn nifti_from_bytes(bytes: &[u8], path: &Path) -> Result<Image> {
    let gz = is_gzip(bytes);
    let raw = maybe_gunzip(bytes, path)?;
    let layout = nifti_layout(&raw, path)?;
    let voxels = &raw[layout.offset..layout.offset + layout.nbytes];
    // NIfTI stores the first index fastest (Fortran order).
    let data = TypedArray::decode(
        layout.dtype,
        &layout.shape,
        voxels,
        true,
        layout.little_endian,
    )
    .ok_or_else(|| IoError::BadHeader {
        path: path.to_path_buf(),
        reason: "voxel count does not match dimensions".into(),
    })?;
    Ok(Image {
        name: None,
        data,
        scaling: layout.scaling,
        geometry: layout.geometry,
        format: if gz { Format::NiftiGz } else { Format::Nifti },
    })
}

/// Where and how the voxels of an (uncompressed) NIfTI-1 image are stored: its checked
/// header, without touching the voxels.
#[derive(Debug, Clone)]
pub(crate) struct NiftiLayout {
    /// Element type.
    pub(crate) dtype: DataType,
    /// `dim[1..=dim[0]]`, first index fastest in the file.
    pub(crate) shape: Vec<usize>,
    /// Byte order of the voxels.
    pub(crate) little_endian: bool,
    /// First voxel byte (`vox_offset`).
    pub(crate) offset: usize,
    /// Bytes of voxel data (checked to be present after `offset`).
    pub(crate) nbytes: usize,
    /// `(scl_slope, scl_inter)` when they change the values.
    pub(crate) scaling: Option<(f64, f64)>,
    /// Spacing, affine and header.
    pub(crate) geometry: Geometry,
}

/// Parses and checks the header of uncompressed NIfTI-1 bytes (see [`nifti_from_bytes`]
/// for the rules).
pub(crate) fn nifti_layout(raw: &[u8], path: &Path) -> Result<NiftiLayout> {
    let not_nifti = |reason: String| IoError::NotNifti {
        path: path.to_path_buf(),
        reason,
    };
    let bad = |reason: String| IoError::BadHeader {
        path: path.to_path_buf(),
        reason,
    };

    let Some(first4) = raw.get(..4) else {
        return Err(not_nifti(format!(
            "the file has {} bytes, fewer than the 348-byte header",
            raw.len()
        )));
    };
    let word = [first4[0], first4[1], first4[2], first4[3]];
    let little = match (i32::from_le_bytes(word), i32::from_be_bytes(word)) {
        (348, _) => true,
        (_, 348) => false,
        (540, _) | (_, 540) => {
            return Err(not_nifti(
                "this is a NIfTI-2 file (sizeof_hdr = 540); only NIfTI-1 is supported".into(),
            ));
        }
        (v, _) => return Err(not_nifti(format!("sizeof_hdr is {v}, expected 348"))),
    };
    if raw.len() < HEADER_SIZE {
        return Err(not_nifti(format!(
            "the file has {} bytes, fewer than the 348-byte header",
            raw.len()
        )));
    }
    let magic = &raw[344..348];
    if magic == b"ni1\0" {
        return Err(not_nifti(
            "this is the header of a .hdr/.img pair, which is not supported: convert it to .nii"
                .into(),
        ));
    }
    if magic != b"n+1\0" {
        return Err(not_nifti(format!(
            "magic is {:?}, expected \"n+1\\0\"",
            String::from_utf8_lossy(magic)
        )));
    }
    let dim0 = if little {
        i16::from_le_bytes([raw[40], raw[41]])
    } else {
        i16::from_be_bytes([raw[40], raw[41]])
    };
    if !(1..=7).contains(&dim0) {
        return Err(bad(format!("dim[0] = {dim0}, must be between 1 and 7")));
    }

    let header = NiftiHeader::from_reader(raw).map_err(|e| bad(e.to_string()))?;
    let expected_endian = if little {
        Endianness::Little
    } else {
        Endianness::Big
    };
    if header.endianness != expected_endian {
        return Err(bad(
            "inconsistent byte order between sizeof_hdr and dim[0]".into()
        ));
    }

    // Shape.
    let ndim = usize::from(header.dim[0]);
    let mut shape = Vec::with_capacity(ndim);
    for i in 1..=ndim {
        let d = header.dim[i] as i16;
        if d <= 0 {
            return Err(bad(format!("dim[{i}] = {d}, must be at least 1")));
        }
        shape.push(d as usize);
    }

    // Element type.
    let dtype =
        datatype_from_code(header.datatype).ok_or_else(|| IoError::UnsupportedDatatype {
            path: path.to_path_buf(),
            code: i32::from(header.datatype),
            name: datatype_code_name(header.datatype).to_string(),
        })?;

    // Where the voxels start.
    let vox = header.vox_offset;
    if !vox.is_finite() || vox < 0.0 {
        return Err(bad(format!(
            "vox_offset = {vox} is not a valid byte offset"
        )));
    }
    let offset = if vox == 0.0 {
        // Some writers leave 0 in single-file images; nibabel reads from 352 then.
        DATA_OFFSET
    } else if vox < DATA_OFFSET as f32 {
        return Err(bad(format!(
            "vox_offset = {vox} points inside the header (must be at least 352)"
        )));
    } else {
        vox as usize
    };

    let nvox =
        checked_product(&shape).ok_or_else(|| bad(format!("dimensions {shape:?} overflow")))?;
    let nbytes = nvox
        .checked_mul(dtype.size())
        .ok_or_else(|| bad(format!("dimensions {shape:?} overflow")))?;
    let available = raw.len().saturating_sub(offset);
    if available < nbytes {
        return Err(IoError::DataSize {
            path: path.to_path_buf(),
            shape,
            dtype: dtype.name().to_string(),
            expected: nbytes as u64,
            found: available as u64,
        });
    }
    // Scaling, as nibabel: slope 0 or non-finite = none; a valid slope needs a finite intercept.
    let slope = f64::from(header.scl_slope);
    let inter = f64::from(header.scl_inter);
    let scaling = if slope == 0.0 || !slope.is_finite() {
        None
    } else if !inter.is_finite() {
        return Err(bad(format!(
            "scl_slope = {slope} with a non-finite scl_inter = {inter}"
        )));
    } else if slope == 1.0 && inter == 0.0 {
        None
    } else {
        Some((slope, inter))
    };

    let spacing = (1..=ndim.min(3))
        .map(|i| sanitize_spacing(header.pixdim[i]))
        .collect();
    let affine = header_affine(&header);
    Ok(NiftiLayout {
        dtype,
        shape,
        little_endian: little,
        offset,
        nbytes,
        scaling,
        geometry: Geometry::from_nifti(spacing, affine, header),
    })
}

/// The crate's type for a NIfTI `datatype` code, if supported.
fn datatype_from_code(code: i16) -> Option<DataType> {
    Some(match code {
        2 => DataType::U8,
        4 => DataType::I16,
        8 => DataType::I32,
        16 => DataType::F32,
        64 => DataType::F64,
        256 => DataType::I8,
        512 => DataType::U16,
        768 => DataType::U32,
        1024 => DataType::I64,
        1280 => DataType::U64,
        _ => return None,
    })
}

/// The NIfTI `datatype` code written for an element type (`bool` is written as uint8).
fn code_for(dtype: DataType) -> i16 {
    match dtype {
        DataType::Bool | DataType::U8 => 2,
        DataType::I16 => 4,
        DataType::I32 => 8,
        DataType::F32 => 16,
        DataType::F64 => 64,
        DataType::I8 => 256,
        DataType::U16 => 512,
        DataType::U32 => 768,
        DataType::I64 => 1024,
        DataType::U64 => 1280,
    }
}

/// Name of a NIfTI datatype code, for error messages.
fn datatype_code_name(code: i16) -> &'static str {
    match code {
        0 => "unknown (0)",
        1 => "binary (1 bit)",
        32 => "complex64",
        128 => "rgb24",
        1536 => "float128",
        1792 => "complex128",
        2048 => "complex256",
        2304 => "rgba32",
        _ => "not a NIfTI-1 datatype",
    }
}

/// A voxel size from `pixdim`: its absolute value, or 1.0 if it is 0 or not finite.
fn sanitize_spacing(p: f32) -> f64 {
    let p = f64::from(p);
    if p.is_finite() && p != 0.0 {
        p.abs()
    } else {
        1.0
    }
}

/// The voxel-to-world affine of a header: sform, else qform, else pixdim diagonal.
pub(crate) fn header_affine(h: &NiftiHeader) -> Affine {
    let finite = |r: &[f32; 4]| r.iter().all(|v| v.is_finite());
    if h.sform_code > 0 && finite(&h.srow_x) && finite(&h.srow_y) && finite(&h.srow_z) {
        let row = |r: &[f32; 4]| r.map(f64::from);
        return [
            row(&h.srow_x),
            row(&h.srow_y),
            row(&h.srow_z),
            [0.0, 0.0, 0.0, 1.0],
        ];
    }
    let zooms = [1, 2, 3].map(|i| sanitize_spacing(h.pixdim[i]));
    let quat = [h.quatern_b, h.quatern_c, h.quatern_d];
    let shift = [h.quatern_x, h.quatern_y, h.quatern_z];
    if h.qform_code > 0 && quat.iter().chain(&shift).all(|v| v.is_finite()) {
        let qfac = if h.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
        return quaternion_affine(quat.map(f64::from), shift.map(f64::from), zooms, qfac);
    }
    [
        [zooms[0], 0.0, 0.0, 0.0],
        [0.0, zooms[1], 0.0, 0.0],
        [0.0, 0.0, zooms[2], 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
}

/// The qform affine from the quaternion (b, c, d), offsets, voxel sizes and qfac, as the
/// NIfTI-1 standard defines it.
fn quaternion_affine(q: [f64; 3], shift: [f64; 3], zooms: [f64; 3], qfac: f64) -> Affine {
    let [mut b, mut c, mut d] = q;
    let norm2 = b * b + c * c + d * d;
    let a = if 1.0 - norm2 < 1e-7 {
        // (b, c, d) is (nearly) unit: a 180° rotation; renormalise.
        let n = norm2.sqrt();
        if n > 0.0 {
            b /= n;
            c /= n;
            d /= n;
        }
        0.0
    } else {
        (1.0 - norm2).sqrt()
    };
    let r = [
        [
            a * a + b * b - c * c - d * d,
            2.0 * (b * c - a * d),
            2.0 * (b * d + a * c),
        ],
        [
            2.0 * (b * c + a * d),
            a * a + c * c - b * b - d * d,
            2.0 * (c * d - a * b),
        ],
        [
            2.0 * (b * d - a * c),
            2.0 * (c * d + a * b),
            a * a + d * d - c * c - b * b,
        ],
    ];
    let z = [zooms[0], zooms[1], zooms[2] * qfac];
    let mut m = [[0.0; 4]; 4];
    for i in 0..3 {
        for j in 0..3 {
            m[i][j] = r[i][j] * z[j];
        }
        m[i][3] = shift[i];
    }
    m[3][3] = 1.0;
    m
}

/// Decomposes an affine into the NIfTI quaternion `(b, c, d)`, offsets and qfac, if its
/// 3×3 part is a rotation (possibly with a flip) times positive voxel sizes.
fn affine_to_quaternion(m: &Affine) -> Option<([f64; 3], [f64; 3], f64)> {
    let mut cols = [[0.0; 3]; 3];
    for (j, col) in cols.iter_mut().enumerate() {
        let n = (0..3).map(|i| m[i][j] * m[i][j]).sum::<f64>().sqrt();
        if !(n > 0.0 && n.is_finite()) {
            return None;
        }
        for i in 0..3 {
            col[i] = m[i][j] / n;
        }
    }
    // Orthogonality check.
    for p in 0..3 {
        for q in (p + 1)..3 {
            let dot: f64 = (0..3).map(|i| cols[p][i] * cols[q][i]).sum();
            if dot.abs() > 1e-4 {
                return None;
            }
        }
    }
    // r[i][j] = cols[j][i]
    let mut r = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            r[i][j] = cols[j][i];
        }
    }
    let det = r[0][0] * (r[1][1] * r[2][2] - r[1][2] * r[2][1])
        - r[0][1] * (r[1][0] * r[2][2] - r[1][2] * r[2][0])
        + r[0][2] * (r[1][0] * r[2][1] - r[1][1] * r[2][0]);
    let qfac = if det < 0.0 {
        for row in &mut r {
            row[2] = -row[2];
        }
        -1.0
    } else {
        1.0
    };
    // Rotation matrix → unit quaternion (a, b, c, d), choosing the numerically
    // largest component first.
    let trace = r[0][0] + r[1][1] + r[2][2];
    let (mut a, mut b, mut c, mut d);
    if trace > 0.0 {
        let s = 2.0 * (1.0 + trace).sqrt();
        a = 0.25 * s;
        b = (r[2][1] - r[1][2]) / s;
        c = (r[0][2] - r[2][0]) / s;
        d = (r[1][0] - r[0][1]) / s;
    } else if r[0][0] > r[1][1] && r[0][0] > r[2][2] {
        let s = 2.0 * (1.0 + r[0][0] - r[1][1] - r[2][2]).sqrt();
        a = (r[2][1] - r[1][2]) / s;
        b = 0.25 * s;
        c = (r[0][1] + r[1][0]) / s;
        d = (r[0][2] + r[2][0]) / s;
    } else if r[1][1] > r[2][2] {
        let s = 2.0 * (1.0 + r[1][1] - r[0][0] - r[2][2]).sqrt();
        a = (r[0][2] - r[2][0]) / s;
        b = (r[0][1] + r[1][0]) / s;
        c = 0.25 * s;
        d = (r[1][2] + r[2][1]) / s;
    } else {
        let s = 2.0 * (1.0 + r[2][2] - r[0][0] - r[1][1]).sqrt();
        a = (r[1][0] - r[0][1]) / s;
        b = (r[0][2] + r[2][0]) / s;
        c = (r[1][2] + r[2][1]) / s;
        d = 0.25 * s;
    }
    if a < 0.0 {
        a = -a;
        b = -b;
        c = -c;
        d = -d;
    }
    let _ = a;
    let q = [b, c, d];
    if q.iter().any(|v| !v.is_finite()) {
        return None;
    }
    Some((q, [m[0][3], m[1][3], m[2][3]], qfac))
}

fn affines_close(a: &Affine, b: &Affine) -> bool {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .all(|(x, y)| (x - y).abs() <= 1e-5 * (1.0 + x.abs().max(y.abs())))
}

/// The header written for an array of `shape` and `dtype` placed on `geometry`.
///
/// Every field of the source header (if the geometry came from a NIfTI file) is kept
/// — orientation codes, units, description, slice timing — except those that describe
/// the data: `dim`, `datatype`, `bitpix`, `vox_offset`, scaling (slope 1, intercept 0),
/// `cal_min/max`, `intent_*`. `pixdim[1..=3]` come from `geometry.spacing`; if
/// `geometry.affine` differs from the source header's, it is written as the sform and
/// (when it is a rotation times voxel sizes) as the qform.
fn output_header(
    geometry: &Geometry,
    shape: &[usize],
    dtype: DataType,
    path: &Path,
) -> Result<NiftiHeader> {
    if shape.is_empty() || shape.len() > 7 {
        return Err(IoError::invalid(
            path,
            format!(
                "NIfTI holds 1 to 7 dimensions, the array has {}",
                shape.len()
            ),
        ));
    }
    if let Some(&d) = shape.iter().find(|&&d| d == 0 || d > i16::MAX as usize) {
        return Err(IoError::invalid(
            path,
            format!("NIfTI dimensions must be between 1 and 32767, the array has {d} ({shape:?})"),
        ));
    }
    let source = geometry.nifti_header();
    let mut h = match source {
        Some(src) => src.clone(),
        None => NiftiHeader {
            qform_code: 0,
            sform_code: 0,
            xyzt_units: 2, // millimetres
            ..NiftiHeader::default()
        },
    };
    h.sizeof_hdr = HEADER_SIZE as i32;
    h.magic = *b"n+1\0";
    h.endianness = Endianness::Little;
    h.dim = [1; 8];
    h.dim[0] = shape.len() as u16;
    for (i, &d) in shape.iter().enumerate() {
        h.dim[i + 1] = d as u16;
    }
    h.datatype = code_for(dtype);
    h.bitpix = (dtype.size() * 8) as i16;
    h.vox_offset = DATA_OFFSET as f32;
    h.scl_slope = 1.0;
    h.scl_inter = 0.0;
    h.cal_min = 0.0;
    h.cal_max = 0.0;
    h.glmax = 0;
    h.glmin = 0;
    h.intent_code = 0;
    h.intent_p1 = 0.0;
    h.intent_p2 = 0.0;
    h.intent_p3 = 0.0;
    h.intent_name = [0; 16];
    if h.descrip.len() != 80 {
        h.descrip.resize(80, 0);
    }
    if h.pixdim[0] != 1.0 && h.pixdim[0] != -1.0 {
        h.pixdim[0] = 1.0;
    }
    for i in 1..=3 {
        if let Some(&s) = geometry.spacing.get(i - 1) {
            h.pixdim[i] = s as f32;
        } else if source.is_none() {
            h.pixdim[i] = 1.0;
        }
    }
    for p in &mut h.pixdim[4..] {
        *p = 1.0;
    }
    if let Some(affine) = &geometry.affine {
        let unchanged = source.is_some_and(|src| affines_close(&header_affine(src), affine));
        if !unchanged {
            let code = if h.sform_code > 0 { h.sform_code } else { 2 };
            h.sform_code = code;
            for (row, src) in [&mut h.srow_x, &mut h.srow_y, &mut h.srow_z]
                .into_iter()
                .zip(affine.iter())
            {
                *row = src.map(|v| v as f32);
            }
            match affine_to_quaternion(affine) {
                Some((q, shift, qfac)) => {
                    h.qform_code = if h.qform_code > 0 { h.qform_code } else { code };
                    [h.quatern_b, h.quatern_c, h.quatern_d] = q.map(|v| v as f32);
                    [h.quatern_x, h.quatern_y, h.quatern_z] = shift.map(|v| v as f32);
                    h.pixdim[0] = qfac as f32;
                    // The qform takes its voxel sizes from pixdim: keep them consistent.
                    for (j, p) in h.pixdim[1..4].iter_mut().enumerate() {
                        let n: f64 = affine.iter().take(3).map(|row| row[j] * row[j]).sum();
                        *p = n.sqrt() as f32;
                    }
                }
                None => h.qform_code = 0,
            }
        }
    }
    Ok(h)
}

/// The 348 bytes of a NIfTI-1 header, little-endian.
fn encode_header(h: &NiftiHeader) -> Vec<u8> {
    struct W(Vec<u8>);
    impl W {
        fn i32(&mut self, v: i32) {
            self.0.extend_from_slice(&v.to_le_bytes());
        }
        fn i16(&mut self, v: i16) {
            self.0.extend_from_slice(&v.to_le_bytes());
        }
        fn u16(&mut self, v: u16) {
            self.0.extend_from_slice(&v.to_le_bytes());
        }
        fn f32(&mut self, v: f32) {
            self.0.extend_from_slice(&v.to_le_bytes());
        }
        fn bytes(&mut self, v: &[u8], len: usize) {
            let mut b = v.to_vec();
            b.resize(len, 0);
            self.0.extend_from_slice(&b);
        }
    }
    let mut w = W(Vec::with_capacity(HEADER_SIZE));
    w.i32(h.sizeof_hdr);
    w.bytes(&h.data_type, 10);
    w.bytes(&h.db_name, 18);
    w.i32(h.extents);
    w.i16(h.session_error);
    w.0.push(h.regular);
    w.0.push(h.dim_info);
    for &d in &h.dim {
        w.u16(d);
    }
    w.f32(h.intent_p1);
    w.f32(h.intent_p2);
    w.f32(h.intent_p3);
    w.i16(h.intent_code);
    w.i16(h.datatype);
    w.i16(h.bitpix);
    w.i16(h.slice_start);
    for &p in &h.pixdim {
        w.f32(p);
    }
    w.f32(h.vox_offset);
    w.f32(h.scl_slope);
    w.f32(h.scl_inter);
    w.i16(h.slice_end);
    w.0.push(h.slice_code);
    w.0.push(h.xyzt_units);
    w.f32(h.cal_max);
    w.f32(h.cal_min);
    w.f32(h.slice_duration);
    w.f32(h.toffset);
    w.i32(h.glmax);
    w.i32(h.glmin);
    w.bytes(&h.descrip, 80);
    w.bytes(&h.aux_file, 24);
    w.i16(h.qform_code);
    w.i16(h.sform_code);
    for v in [
        h.quatern_b,
        h.quatern_c,
        h.quatern_d,
        h.quatern_x,
        h.quatern_y,
        h.quatern_z,
    ] {
        w.f32(v);
    }
    for v in h.srow_x.iter().chain(&h.srow_y).chain(&h.srow_z) {
        w.f32(*v);
    }
    w.bytes(&h.intent_name, 16);
    w.bytes(&h.magic, 4);
    w.0
}

/// Encodes a complete `.nii` file (gzipped if `gzip`) in memory. `data` is indexed
/// `(x, y, z[, …])` like the arrays [`read_nifti`] returns; `path` names the file in errors.
pub fn encode_nifti<T: Element, S: Data<Elem = T>, D: Dimension>(
    data: &ArrayBase<S, D>,
    geometry: &Geometry,
    gzip: bool,
    path: &Path,
) -> Result<Vec<u8>> {
    let header = output_header(geometry, data.shape(), T::DTYPE, path)?;
    let mut out = encode_header(&header);
    out.extend_from_slice(&[0, 0, 0, 0]); // no extensions
    out.reserve(data.len() * T::DTYPE.size());
    // NIfTI stores the first index fastest: walk the transposed view in C order.
    for &v in data.t().iter() {
        v.put_le(&mut out);
    }
    if !gzip {
        return Ok(out);
    }
    let mut enc = GzEncoder::new(Vec::with_capacity(out.len() / 2), Compression::new(6));
    enc.write_all(&out)
        .and_then(|()| enc.finish())
        .map_err(|e| IoError::io(path, "compress", e))
}

/// True if the file name ends in `.gz` (any case).
fn wants_gzip(path: &Path) -> bool {
    path.file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase().ends_with(".gz"))
        .unwrap_or(false)
}

/// Writes `data` (indexed `(x, y, z[, …])`) as NIfTI-1, gzipped if the name ends in
/// `.gz`, with the header of `geometry` (see [`Geometry`]), atomically.
///
/// ```
/// use calseg_io::{Geometry, read_nifti, write_nifti};
/// use ndarray::Array3;
/// let dir = std::env::temp_dir().join(format!("calseg-doc-nifti-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let path = dir.join("ramp.nii.gz");
/// let data = Array3::from_shape_fn((4, 3, 2), |(x, y, z)| (x + 10 * y + 100 * z) as i16);
/// write_nifti(&path, &data, &Geometry::with_spacing(vec![0.5, 0.5, 2.0]))?;
/// let back = read_nifti(&path)?;
/// assert_eq!(back.shape(), &[4, 3, 2]);
/// assert_eq!(back.to_f64()[[3, 2, 1]], 123.0);
/// assert_eq!(back.geometry.spacing, vec![0.5, 0.5, 2.0]);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn write_nifti<T: Element, S: Data<Elem = T>, D: Dimension>(
    path: impl AsRef<Path>,
    data: &ArrayBase<S, D>,
    geometry: &Geometry,
) -> Result<()> {
    let path = path.as_ref();
    let bytes = encode_nifti(data, geometry, wants_gzip(path), path)?;
    write_atomic(path, &bytes)
}

/// Writes a label map as NIfTI with the smallest unsigned type that holds it:
/// uint8 if every label is below 256, else uint16 below 65536, else uint32.
pub fn write_nifti_labels<S: Data<Elem = u32>, D: Dimension>(
    path: impl AsRef<Path>,
    labels: &ArrayBase<S, D>,
    geometry: &Geometry,
) -> Result<()> {
    let max = labels.iter().copied().max().unwrap_or(0);
    if max <= u32::from(u8::MAX) {
        write_nifti(path, &labels.mapv(|v| v as u8), geometry)
    } else if max <= u32::from(u16::MAX) {
        write_nifti(path, &labels.mapv(|v| v as u16), geometry)
    } else {
        write_nifti(path, labels, geometry)
    }
}

/// Writes probabilities or soft labels given channel-first `(K, *spatial)` as a float32
/// NIfTI with the classes on the last axis (`(*spatial, K)`, the layout viewers and
/// nibabel users expect, and what [`crate::read_probs`] reads back).
pub fn write_nifti_probs<S: Data<Elem = f32>, D: Dimension>(
    path: impl AsRef<Path>,
    probs: &ArrayBase<S, D>,
    geometry: &Geometry,
) -> Result<()> {
    let path = path.as_ref();
    let view = probs.view().into_dyn();
    if view.ndim() < 2 {
        return Err(IoError::invalid(
            path,
            format!(
                "probabilities must be (K, *spatial), the array has shape {:?}",
                view.shape()
            ),
        ));
    }
    let n = view.ndim();
    let mut order: Vec<usize> = (1..n).collect();
    order.push(0);
    let classes_last = view.permuted_axes(order);
    write_nifti(path, &classes_last, geometry)
}

/// Moves the last axis of `a` to the front (`(*spatial, K)` → `(K, *spatial)`), in
/// standard layout.
pub(crate) fn classes_first<T: Copy>(a: ndarray::ArrayD<T>) -> ndarray::ArrayD<T> {
    let n = a.ndim();
    if n < 2 {
        return a;
    }
    let shape = a.shape().to_vec();
    let k = shape[n - 1];
    let voxels = shape[..n - 1].iter().product();
    let mut out_shape = vec![k];
    out_shape.extend_from_slice(&shape[..n - 1]);
    // A standard-layout (V, K) block is a Fortran-order (K, V) one: one tiled transpose.
    let a = if a.is_standard_layout() {
        a
    } else {
        a.as_standard_layout().into_owned()
    };
    let moved = a
        .as_slice()
        .and_then(|s| crate::array::fortran_to_c(s, &[k, voxels]))
        .and_then(|v| ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&out_shape), v).ok());
    match moved {
        Some(m) => m,
        None => {
            let mut order = vec![n - 1];
            order.extend(0..n - 1);
            a.permuted_axes(order).as_standard_layout().into_owned()
        }
    }
}

/// Removes axis `axis` if it has length 1 (used for NIfTI vector images, whose
/// components sit on the 5th axis after a singleton time axis).
pub(crate) fn squeeze_axis<T>(a: ndarray::ArrayD<T>, axis: usize) -> ndarray::ArrayD<T> {
    if a.ndim() > axis && a.shape()[axis] == 1 {
        a.index_axis_move(Axis(axis), 0)
    } else {
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quaternion_round_trip_of_oblique_affine() {
        // A rotation about z by 30°, a flip, anisotropic voxels and a shift.
        let (s, c) = (30f64.to_radians().sin(), 30f64.to_radians().cos());
        let a: Affine = [
            [c * 0.8, -s * 1.2, 0.0, 10.0],
            [s * 0.8, c * 1.2, 0.0, -20.0],
            [0.0, 0.0, -3.0, 5.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let (q, shift, qfac) = affine_to_quaternion(&a).unwrap();
        assert_eq!(qfac, -1.0);
        let back = quaternion_affine(q, shift, [0.8, 1.2, 3.0], qfac);
        assert!(affines_close(&a, &back), "{a:?} vs {back:?}");
    }

    #[test]
    fn shear_has_no_quaternion() {
        let a: Affine = [
            [1.0, 0.5, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        assert!(affine_to_quaternion(&a).is_none());
    }

    #[test]
    fn header_is_348_bytes() {
        let h = output_header(
            &Geometry::with_spacing(vec![1.0, 2.0, 3.0]),
            &[2, 3, 4],
            DataType::F32,
            Path::new("x.nii"),
        )
        .unwrap();
        let b = encode_header(&h);
        assert_eq!(b.len(), 348);
        assert_eq!(&b[344..348], b"n+1\0");
        assert_eq!(i32::from_le_bytes([b[0], b[1], b[2], b[3]]), 348);
        // Parses back through the nifti crate with the same fields.
        let back = NiftiHeader::from_reader(&b[..]).unwrap();
        assert_eq!(back.dim, [3, 2, 3, 4, 1, 1, 1, 1]);
        assert_eq!(back.datatype, 16);
        assert_eq!(back.bitpix, 32);
        assert_eq!(&back.pixdim[1..4], &[1.0, 2.0, 3.0]);
        assert_eq!(back.vox_offset, 352.0);
    }
}
