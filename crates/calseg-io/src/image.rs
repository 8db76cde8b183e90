//! Format-independent reading: [`read_image`] for any supported file, and the two
//! readers `calseg eval` needs, [`read_probs`] and [`read_labels`].

use crate::array::{DataType, FloatArray, TypedArray, with_array};
use crate::error::{IoError, LabelProblem, Result};
use crate::nifti_io::{classes_first, nifti_from_bytes, squeeze_axis};
use crate::{npy, png_io, safetensors_io};
use ndarray::{ArrayD, IxDyn};
use nifti::NiftiHeader;
use std::path::Path;

/// A 4×4 voxel-to-world matrix (row-major, millimetres): `world = A · [i, j, k, 1]ᵀ`.
pub type Affine = [[f64; 4]; 4];

/// Where an array sits in space: voxel size, voxel-to-world affine, and (for arrays
/// read from NIfTI) the full source header, so that outputs written with this geometry
/// overlay the input in any viewer.
///
/// * `spacing`: voxel size along each spatial axis, in the array's index order. From
///   NIfTI `pixdim[1..=3]`; formats without spacing (npy, safetensors, PNG) give 1.0
///   per spatial axis.
/// * `affine`: `None` for formats without one.
#[derive(Debug, Clone, PartialEq)]
pub struct Geometry {
    /// Voxel size per spatial axis (mm for NIfTI).
    pub spacing: Vec<f64>,
    /// Voxel-to-world transform, if the format has one.
    pub affine: Option<Affine>,
    header: Option<Box<NiftiHeader>>,
}

impl Geometry {
    /// Unit spacing on `ndim` spatial axes, no affine.
    pub fn unit(ndim: usize) -> Self {
        Self::with_spacing(vec![1.0; ndim])
    }

    /// The given spacing, no affine (a NIfTI written with it gets `diag(spacing)`).
    pub fn with_spacing(spacing: Vec<f64>) -> Self {
        Geometry {
            spacing,
            affine: None,
            header: None,
        }
    }

    /// The given spacing and affine, no source header.
    pub fn with_affine(spacing: Vec<f64>, affine: Affine) -> Self {
        Geometry {
            spacing,
            affine: Some(affine),
            header: None,
        }
    }

    pub(crate) fn from_nifti(spacing: Vec<f64>, affine: Affine, header: NiftiHeader) -> Self {
        Geometry {
            spacing,
            affine: Some(affine),
            header: Some(Box::new(header)),
        }
    }

    /// The NIfTI header of the file this geometry was read from, if any.
    pub fn nifti_header(&self) -> Option<&NiftiHeader> {
        self.header.as_deref()
    }

    /// The geometry of the sub-array starting at voxel `origin` (one entry per spatial
    /// axis, as produced by cropping): same spacing and header, affine translated so that
    /// the sub-array's voxel `0` lands where `origin` was.
    pub fn cropped(&self, origin: &[usize]) -> Geometry {
        let mut g = self.clone();
        if let Some(a) = &mut g.affine {
            let mut v = [0.0f64; 3];
            for (i, &o) in origin.iter().take(3).enumerate() {
                v[i] = o as f64;
            }
            for row in a.iter_mut().take(3) {
                row[3] += row[0] * v[0] + row[1] * v[1] + row[2] * v[2];
            }
        }
        g
    }

    /// The geometry of the array with spatial axis `axis` removed (a 2D slice of a
    /// volume): spacing without that axis, no affine, no header.
    pub fn without_axis(&self, axis: usize) -> Geometry {
        let spacing = self
            .spacing
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != axis)
            .map(|(_, &s)| s)
            .collect();
        Geometry::with_spacing(spacing)
    }
}

/// The file formats this crate reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `.nii`
    Nifti,
    /// `.nii.gz`
    NiftiGz,
    /// `.npy`
    Npy,
    /// `.safetensors`
    Safetensors,
    /// `.png`
    Png,
}

impl Format {
    /// The format a file name announces (case-insensitive extension).
    pub fn from_path(path: &Path) -> Result<Format> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        Ok(if name.ends_with(".nii.gz") {
            Format::NiftiGz
        } else if name.ends_with(".nii") {
            Format::Nifti
        } else if name.ends_with(".npy") {
            Format::Npy
        } else if name.ends_with(".safetensors") {
            Format::Safetensors
        } else if name.ends_with(".png") {
            Format::Png
        } else {
            return Err(IoError::UnknownFormat {
                path: path.to_path_buf(),
            });
        })
    }

    /// A short human-readable name ("NIfTI-1 (gzip)", "npy", …).
    pub fn description(self) -> &'static str {
        match self {
            Format::Nifti => "NIfTI-1",
            Format::NiftiGz => "NIfTI-1 (gzip)",
            Format::Npy => "npy",
            Format::Safetensors => "safetensors",
            Format::Png => "PNG",
        }
    }
}

/// An array read from a file, with the element type it was stored with, its value
/// scaling and its geometry.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// The tensor name (safetensors); `None` for single-array formats.
    pub name: Option<String>,
    /// The stored values, before scaling, in the file's logical index order.
    pub data: TypedArray,
    /// NIfTI `(scl_slope, scl_inter)` when they change the values; real value =
    /// `stored · slope + inter`.
    pub scaling: Option<(f64, f64)>,
    /// Spacing, affine, source header.
    pub geometry: Geometry,
    /// The format it was read from.
    pub format: Format,
}

impl Image {
    /// Shape of the array.
    pub fn shape(&self) -> &[usize] {
        self.data.shape()
    }

    /// Element type stored in the file.
    pub fn datatype(&self) -> DataType {
        self.data.dtype()
    }

    /// The values after `scl_slope`/`scl_inter`, as `f64`.
    pub fn to_f64(&self) -> ArrayD<f64> {
        let mut a = self.data.to_f64();
        if let Some((s, i)) = self.scaling {
            a.mapv_inplace(|v| v * s + i);
        }
        a
    }

    /// The values after scaling, as `f32`.
    pub fn to_f32(&self) -> ArrayD<f32> {
        match (&self.data, self.scaling) {
            (TypedArray::F32(a), None) => a.clone(),
            _ => self.to_f64().mapv(|v| v as f32),
        }
    }

    /// Smallest and largest value after scaling, ignoring NaN; `None` if empty or all NaN.
    pub fn value_range(&self) -> Option<(f64, f64)> {
        let (lo, hi) = self.data.min_max()?;
        Some(match self.scaling {
            None => (lo, hi),
            Some((s, i)) => {
                let (a, b) = (lo * s + i, hi * s + i);
                (a.min(b), a.max(b))
            }
        })
    }
}

/// Reads a single-array file of any supported format: `.nii`, `.nii.gz`, `.npy`,
/// `.png`, or a `.safetensors` file holding one tensor (see [`read_images`] for several).
///
/// ```
/// # #[cfg(feature = "embedded-data")] {
/// // The embedded template, unpacked in memory, is read the same way as a file.
/// let t1 = calseg_io::icbm152::t1()?;
/// assert_eq!(t1.shape(), &[80, 100, 82]);
/// assert_eq!(t1.datatype().name(), "float32");
/// # }
/// # Ok::<(), calseg_io::IoError>(())
/// ```
pub fn read_image(path: impl AsRef<Path>) -> Result<Image> {
    let path = path.as_ref();
    let mut images = read_images(path)?;
    if images.len() == 1
        && let Some(img) = images.pop()
    {
        return Ok(img);
    }
    Err(IoError::TensorChoice {
        path: path.to_path_buf(),
        reason: format!("the file holds {} tensors, expected one", images.len()),
        names: images.into_iter().filter_map(|i| i.name).collect(),
    })
}

/// Reads every array of a file: one for NIfTI, npy and PNG, one per tensor (in file
/// order) for safetensors.
pub fn read_images(path: impl AsRef<Path>) -> Result<Vec<Image>> {
    let path = path.as_ref();
    let format = Format::from_path(path)?;
    let bytes = crate::mapped::file_bytes(path)?;
    images_from_bytes(&bytes, path, format)
}

/// [`read_images`] on bytes already in memory; `path` names them in errors.
pub fn images_from_bytes(bytes: &[u8], path: &Path, format: Format) -> Result<Vec<Image>> {
    Ok(match format {
        Format::Nifti | Format::NiftiGz => vec![nifti_from_bytes(bytes, path)?],
        Format::Npy => {
            let data = npy::npy_from_bytes(bytes, path)?;
            vec![plain_image(None, data, Format::Npy)]
        }
        Format::Png => {
            let data = png_io::png_from_bytes(bytes, path)?;
            vec![plain_image(None, data, Format::Png)]
        }
        Format::Safetensors => safetensors_io::safetensors_from_bytes(bytes, path)?
            .into_iter()
            .map(|(name, data)| plain_image(Some(name), data, Format::Safetensors))
            .collect(),
    })
}

fn plain_image(name: Option<String>, data: TypedArray, format: Format) -> Image {
    let nd = data.shape().len();
    Image {
        name,
        data,
        scaling: None,
        geometry: Geometry::unit(nd),
        format,
    }
}

/// A probability map (or soft labels), channel-first.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbMap {
    /// `(K, *spatial)`, in the precision of the file.
    pub probs: FloatArray,
    /// Geometry of the spatial axes (spacing has `ndim - 1` entries).
    pub geometry: Geometry,
}

/// Reads a probability map as `(K, *spatial)`:
/// * `.npy`: the array as stored, `(K, *spatial)`;
/// * `.safetensors`: the tensor named `probs`, else the only tensor (an error naming the
///   file and listing the tensors if that is ambiguous), `(K, *spatial)`;
/// * `.nii`/`.nii.gz`: 4D `(x, y, z, K)` with the classes last (as nibabel users and
///   nnU-Net write them) — or 5D `(x, y, z, 1, K)`, the NIfTI vector convention — moved
///   to `(K, x, y, z)`. `scl_slope`/`scl_inter` are applied.
///
/// Values are not checked here (the caller decides what to do with sums ≠ 1); integer
/// arrays are rejected, since they are almost always a label map given by mistake.
/// Spacing: from NIfTI `pixdim`, else 1.0 per spatial axis.
pub fn read_probs(path: impl AsRef<Path>) -> Result<ProbMap> {
    let path = path.as_ref();
    let format = Format::from_path(path)?;
    let bytes = crate::mapped::file_bytes(path)?;
    probs_from_bytes(&bytes, path, format)
}

/// [`read_probs`] on bytes already in memory.
pub fn probs_from_bytes(bytes: &[u8], path: &Path, format: Format) -> Result<ProbMap> {
    let image = match format {
        Format::Safetensors => {
            let mut images = images_from_bytes(bytes, path, format)?;
            pick_tensor(&mut images, "probs", path)?
        }
        Format::Png => {
            return Err(IoError::unexpected(
                path,
                "PNG cannot hold a probability map; use .npy, .safetensors or .nii.gz",
            ));
        }
        _ => {
            let mut images = images_from_bytes(bytes, path, format)?;
            images
                .pop()
                .ok_or_else(|| IoError::unexpected(path, "no array in the file"))?
        }
    };
    if !image.datatype().is_float() && image.scaling.is_none() {
        return Err(IoError::unexpected(
            path,
            format!(
                "holds {} values; probabilities must be float32 or float64 (is this a label map?)",
                image.datatype()
            ),
        ));
    }
    let shape = image.shape().to_vec();
    let is_nifti = matches!(image.format, Format::Nifti | Format::NiftiGz);
    let mut probs = match image.scaling {
        None => match image.data {
            TypedArray::F32(a) => FloatArray::F32(a),
            TypedArray::F64(a) => FloatArray::F64(a),
            _ => FloatArray::F64(image.to_f64()),
        },
        Some(_) if matches!(image.data, TypedArray::F32(_)) => FloatArray::F32(image.to_f32()),
        Some(_) => FloatArray::F64(image.to_f64()),
    };
    let mut geometry = image.geometry;
    if is_nifti {
        let spatial = match shape.len() {
            4 => 3,
            5 if shape[3] == 1 => 3,
            _ => {
                return Err(IoError::unexpected(
                    path,
                    format!(
                        "a NIfTI probability map must be 4D (x, y, z, classes), this one has shape {shape:?}"
                    ),
                ));
            }
        };
        probs = match probs {
            FloatArray::F32(a) => FloatArray::F32(classes_first(squeeze_axis(a, 3))),
            FloatArray::F64(a) => FloatArray::F64(classes_first(squeeze_axis(a, 3))),
        };
        geometry.spacing.truncate(spatial);
    } else {
        if shape.len() < 2 {
            return Err(IoError::unexpected(
                path,
                format!("probabilities must be (K, *spatial), this array has shape {shape:?}"),
            ));
        }
        geometry = Geometry::unit(shape.len() - 1);
    }
    Ok(ProbMap { probs, geometry })
}

/// Picks the tensor called `wanted`, else the only one.
fn pick_tensor(images: &mut Vec<Image>, wanted: &str, path: &Path) -> Result<Image> {
    if let Some(i) = images
        .iter()
        .position(|im| im.name.as_deref() == Some(wanted))
    {
        return Ok(images.swap_remove(i));
    }
    if images.len() == 1
        && let Some(im) = images.pop()
    {
        return Ok(im);
    }
    Err(IoError::TensorChoice {
        path: path.to_path_buf(),
        reason: if images.is_empty() {
            "the file holds no tensor".to_string()
        } else {
            format!(
                "no tensor named {wanted:?} and more than one tensor, so the choice is ambiguous"
            )
        },
        names: images.iter().filter_map(|im| im.name.clone()).collect(),
    })
}

/// An integer label map.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelMap {
    /// Class index per voxel, in the file's index order.
    pub labels: ArrayD<u32>,
    /// Spacing (NIfTI `pixdim`, else 1.0 per axis), affine and source header.
    pub geometry: Geometry,
}

/// Reads an integer label map from `.nii`, `.nii.gz`, `.npy`, `.png` or a
/// `.safetensors` file (tensor `labels`, else the only tensor).
///
/// Any integer type is accepted, and floats whose values are integers (after
/// `scl_slope`/`scl_inter`). NaN/Inf, fractional, negative and > `u32::MAX` values are
/// errors ([`IoError::BadLabel`]) naming the file, the value and its index.
/// Spacing: from NIfTI `pixdim`, else 1.0 per axis. A NIfTI label map stored with
/// trailing singleton axes (`(x, y, z, 1)`) is returned as `(x, y, z)`.
pub fn read_labels(path: impl AsRef<Path>) -> Result<LabelMap> {
    let path = path.as_ref();
    let format = Format::from_path(path)?;
    let bytes = crate::mapped::file_bytes(path)?;
    labels_from_bytes(&bytes, path, format)
}

/// [`read_labels`] on bytes already in memory.
pub fn labels_from_bytes(bytes: &[u8], path: &Path, format: Format) -> Result<LabelMap> {
    let mut images = images_from_bytes(bytes, path, format)?;
    let image = pick_tensor(&mut images, "labels", path)?;
    let nifti = matches!(image.format, Format::Nifti | Format::NiftiGz);
    let mut map = image_to_labels(image, path)?;
    if nifti {
        // (x, y, z, 1[, 1…]) → (x, y, z): some tools write label maps with a singleton
        // time axis.
        while map.labels.ndim() > 3 && map.labels.shape().last() == Some(&1) {
            let last = map.labels.ndim() - 1;
            map.labels = map.labels.index_axis_move(ndarray::Axis(last), 0);
        }
    }
    Ok(map)
}

/// Converts an image to class indices, checking every value.
pub(crate) fn image_to_labels(image: Image, path: &Path) -> Result<LabelMap> {
    let bad = |value: f64, flat: usize, shape: &[usize], problem| IoError::BadLabel {
        path: path.to_path_buf(),
        value,
        index: unravel(flat, shape),
        problem,
    };
    let shape = image.shape().to_vec();
    // Unsigned types up to 32 bits cannot hold a bad label: widen without checks.
    let unchecked = match (&image.data, image.scaling) {
        (TypedArray::U8(a), None) => Some(a.mapv(u32::from)),
        (TypedArray::U16(a), None) => Some(a.mapv(u32::from)),
        (TypedArray::U32(a), None) => Some(a.clone()),
        _ => None,
    };
    let labels: ArrayD<u32> = if let Some(l) = unchecked {
        l
    } else if image.scaling.is_none() && !image.datatype().is_float() {
        let mut out = Vec::with_capacity(image.data.len());
        with_array!(&image.data, a => {
            for (k, &v) in a.iter().enumerate() {
                let f = crate::array::Element::to_f64(v);
                if f < 0.0 {
                    return Err(bad(f, k, &shape, LabelProblem::Negative));
                }
                if f > f64::from(u32::MAX) {
                    return Err(bad(f, k, &shape, LabelProblem::TooLarge));
                }
                out.push(f as u32);
            }
        });
        ArrayD::from_shape_vec(IxDyn(&shape), out)
            .map_err(|e| IoError::unexpected(path, e.to_string()))?
    } else {
        let values = image.to_f64();
        let mut out = Vec::with_capacity(values.len());
        for (k, &f) in values.iter().enumerate() {
            let problem = if !f.is_finite() {
                Some(LabelProblem::NotFinite)
            } else if f.fract() != 0.0 {
                Some(LabelProblem::NotIntegral)
            } else if f < 0.0 {
                Some(LabelProblem::Negative)
            } else if f > f64::from(u32::MAX) {
                Some(LabelProblem::TooLarge)
            } else {
                None
            };
            if let Some(p) = problem {
                return Err(bad(f, k, &shape, p));
            }
            out.push(f as u32);
        }
        ArrayD::from_shape_vec(IxDyn(&shape), out)
            .map_err(|e| IoError::unexpected(path, e.to_string()))?
    };
    Ok(LabelMap {
        labels,
        geometry: image.geometry,
    })
}

/// The multi-index of flat C-order position `flat` in `shape`.
fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for (i, &d) in shape.iter().enumerate().rev() {
        if d > 0 {
            idx[i] = flat % d;
            flat /= d;
        }
    }
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unravel_c_order() {
        assert_eq!(unravel(0, &[2, 3, 4]), vec![0, 0, 0]);
        assert_eq!(unravel(23, &[2, 3, 4]), vec![1, 2, 3]);
        assert_eq!(unravel(5, &[2, 3, 4]), vec![0, 1, 1]);
    }

    #[test]
    fn formats_from_names() {
        assert_eq!(
            Format::from_path(Path::new("a/B.NII.GZ")).unwrap(),
            Format::NiftiGz
        );
        assert_eq!(
            Format::from_path(Path::new("x.nii")).unwrap(),
            Format::Nifti
        );
        assert_eq!(Format::from_path(Path::new("x.npy")).unwrap(), Format::Npy);
        assert_eq!(
            Format::from_path(Path::new("x.safetensors")).unwrap(),
            Format::Safetensors
        );
        assert_eq!(Format::from_path(Path::new("x.png")).unwrap(), Format::Png);
        let e = Format::from_path(Path::new("dir/x.mha")).unwrap_err();
        assert!(e.to_string().contains("x.mha"));
    }

    #[test]
    fn cropped_geometry_moves_origin() {
        let g = Geometry::with_affine(
            vec![2.0, 2.0, 2.0],
            [
                [2.0, 0.0, 0.0, -10.0],
                [0.0, 2.0, 0.0, -20.0],
                [0.0, 0.0, 2.0, -30.0],
                [0.0, 0.0, 0.0, 1.0],
            ],
        );
        let c = g.cropped(&[1, 2, 3]);
        let a = c.affine.unwrap();
        assert_eq!([a[0][3], a[1][3], a[2][3]], [-8.0, -16.0, -24.0]);
        assert_eq!(c.spacing, g.spacing);
    }
}
