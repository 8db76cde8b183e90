//! Memory-mapped reading: probability maps scored where they lie in the page cache.
//!
//! Why: the metrics score a BraTS-sized probability map (4×240×240×155 f32, 143 MB) in
//! about 25 ms, but reading it the ordinary way — `read` into a buffer, decode into an
//! array, reorder NIfTI's classes-last layout — copied it two to four times and made the
//! whole `calseg eval` process ten times slower than its metrics. [`ProbFile::open`] maps
//! the file (`memmap2`) and, where the stored layout is one an ndarray view can describe,
//! hands out a view of the mapped bytes ([`ProbFile::view`]): no copy at all.
//!
//! | format | viewed in place when | otherwise |
//! |---|---|---|
//! | `.npy` | `<f4`/`<f8` (C or Fortran order) | decoded as [`read_probs`](crate::read_probs) does |
//! | `.safetensors` | the chosen tensor (`probs`, else the only one) is F32/F64 | decoded (F16/BF16 are widened) |
//! | `.nii`, `.nii.gz` | never | decoded (mapped, not read, when uncompressed) |
//!
//! NIfTI stores `(x, y, z, K)` first-index-fastest: a view `(K, x, y, z)` of that is
//! possible, but the metrics walk voxels in C order, so on such a view nearly every read
//! misses the cache (measured: 10× slower than decoding). NIfTI maps are therefore
//! decoded, by one cache-tiled transpose per class, into standard layout.
//!
//! plus, in every case, native byte order and element alignment (true of files written by
//! numpy, nibabel and the safetensors library). The values and errors are those of
//! [`read_probs`](crate::read_probs) in every case: the in-place path only accepts what `read_probs` would
//! accept unchanged, and everything else goes through `read_probs`' own decoder.
//!
//! # The mapping and concurrent writers
//! A view of a mapped file sees the file: if another process rewrites the file in place
//! while it is mapped, the values change under the view, and truncating it makes reads
//! fault (`SIGBUS`). This is the contract of every memory-mapped reader (numpy's
//! `mmap_mode`, safetensors, candle). Writers that replace a file by renaming a new one
//! over it — calseg's own, see [`atomic`](crate::atomic) — leave the mapped file intact.

use crate::array::{DataType, FloatArray};
use crate::error::{IoError, Result};
use crate::image::{Format, Geometry, ProbMap, probs_from_bytes};
use crate::npy::npy_layout;
use memmap2::{Mmap, MmapOptions};
use ndarray::{ArrayViewD, IxDyn, ShapeBuilder};
use safetensors::{Dtype, SafeTensors};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Files smaller than this are read, not mapped (a mapping costs more than it saves).
const MAP_THRESHOLD: u64 = 1 << 20;

/// The bytes of a file: mapped read-only when it is large, read into memory otherwise.
pub(crate) enum FileBytes {
    /// A read-only, pre-faulted mapping of the whole file.
    Mapped(Mmap),
    /// The file read into memory.
    Read(Vec<u8>),
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(m) => m,
            FileBytes::Read(v) => v,
        }
    }
}

/// Opens `path` and maps it (files of 1 MiB and more) or reads it.
pub(crate) fn file_bytes(path: &Path) -> Result<FileBytes> {
    let mut file = File::open(path).map_err(|e| IoError::io(path, "read", e))?;
    let len = file
        .metadata()
        .map_err(|e| IoError::io(path, "read the size of", e))?
        .len();
    if len >= MAP_THRESHOLD && file_is_regular(&file) {
        // SAFETY: the mapping is read-only and private to this process; the bytes behind it
        // are only read through `&[u8]`. A concurrent writer truncating or rewriting the file
        // in place is outside what any mapped reader can guard against; the module docs
        // state this contract (the same as numpy's `mmap_mode` and safetensors').
        let mapped = unsafe { MmapOptions::new().populate().map(&file) };
        if let Ok(m) = mapped {
            return Ok(FileBytes::Mapped(m));
        }
        // A file system that cannot map falls through to an ordinary read.
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.read_to_end(&mut bytes)
        .map_err(|e| IoError::io(path, "read", e))?;
    Ok(FileBytes::Read(bytes))
}

/// True for regular files (not pipes, devices or folders), which alone can be mapped.
fn file_is_regular(file: &File) -> bool {
    file.metadata().map(|m| m.is_file()).unwrap_or(false)
}

/// The float type of a mapped probability map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Float {
    F32,
    F64,
}

impl Float {
    fn of(dtype: DataType) -> Option<Float> {
        match dtype {
            DataType::F32 => Some(Float::F32),
            DataType::F64 => Some(Float::F64),
            _ => None,
        }
    }

    fn size(self) -> usize {
        match self {
            Float::F32 => 4,
            Float::F64 => 8,
        }
    }
}

/// Where the elements of an in-place view lie in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct InPlace {
    offset: usize,
    float: Float,
    shape: Vec<usize>,
    /// In elements, non-negative.
    strides: Vec<usize>,
}

enum ProbData {
    Mapped { bytes: FileBytes, at: InPlace },
    Owned(FloatArray),
}

/// A probability map `(K, *spatial)` opened from a file, viewed in place when its layout
/// allows (see the [module docs](self)), decoded otherwise.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use calseg_io::{ProbFile, ProbView};
/// let dir = std::env::temp_dir().join(format!("calseg-probfile-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let path = dir.join("p.npy");
/// let p = ndarray::Array3::<f32>::from_shape_fn((2, 3, 4), |(c, i, j)| {
///     if c == 0 { 0.25 } else { 0.75 }
/// });
/// calseg_io::write_npy(&path, &p)?;
/// let file = ProbFile::open(&path)?;
/// assert_eq!(file.shape(), &[2, 3, 4]);
/// match file.view() {
///     ProbView::F32(v) => assert_eq!(v[[1, 2, 3]], 0.75),
///     ProbView::F64(_) => unreachable!("written as f32"),
/// }
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(())
/// # }
/// ```
pub struct ProbFile {
    data: ProbData,
    geometry: Geometry,
    path: PathBuf,
}

impl std::fmt::Debug for ProbFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProbFile")
            .field("path", &self.path)
            .field("shape", &self.shape())
            .field("mapped", &self.is_in_place())
            .finish()
    }
}

/// A borrowed view of a probability map in the precision of its file.
#[derive(Debug, Clone)]
pub enum ProbView<'a> {
    /// `float32`
    F32(ArrayViewD<'a, f32>),
    /// `float64`
    F64(ArrayViewD<'a, f64>),
}

impl ProbView<'_> {
    /// The shape `(K, *spatial)`.
    pub fn shape(&self) -> &[usize] {
        match self {
            ProbView::F32(v) => v.shape(),
            ProbView::F64(v) => v.shape(),
        }
    }

    /// An owned, standard-layout copy.
    pub fn to_owned(&self) -> FloatArray {
        match self {
            ProbView::F32(v) => FloatArray::F32(v.as_standard_layout().into_owned()),
            ProbView::F64(v) => FloatArray::F64(v.as_standard_layout().into_owned()),
        }
    }
}

impl ProbFile {
    /// Opens a probability map: the same files, values, geometry and errors as
    /// [`read_probs`](crate::read_probs), without copying the data where the layout allows.
    ///
    /// # Errors
    /// Those of [`read_probs`](crate::read_probs), each naming the file.
    pub fn open(path: impl AsRef<Path>) -> Result<ProbFile> {
        let path = path.as_ref();
        let format = Format::from_path(path)?;
        let bytes = file_bytes(path)?;
        if let Some((at, geometry)) = in_place(&bytes, path, format) {
            return Ok(ProbFile {
                data: ProbData::Mapped { bytes, at },
                geometry,
                path: path.to_path_buf(),
            });
        }
        let map = probs_from_bytes(&bytes, path, format)?;
        Ok(ProbFile {
            data: ProbData::Owned(map.probs),
            geometry: map.geometry,
            path: path.to_path_buf(),
        })
    }

    /// The probabilities `(K, *spatial)`, borrowed from the mapping or the decoded array.
    pub fn view(&self) -> ProbView<'_> {
        match &self.data {
            ProbData::Owned(FloatArray::F32(a)) => ProbView::F32(a.view()),
            ProbData::Owned(FloatArray::F64(a)) => ProbView::F64(a.view()),
            ProbData::Mapped { bytes, at } => {
                let shape = IxDyn(&at.shape).strides(IxDyn(&at.strides));
                let ptr = bytes[at.offset..].as_ptr();
                // The layout `in_place` accepted: it checked that the pointer is aligned for
                // the element type, that every strided element lies inside `bytes`, that the
                // strides permute a contiguous block (no element reached twice) and that the
                // bytes hold native-order floats of this type. The view borrows `self`,
                // which owns the bytes, and the bytes never move.
                match at.float {
                    Float::F32 => {
                        // SAFETY: see the layout conditions above, for f32.
                        let v = unsafe { ArrayViewD::from_shape_ptr(shape, ptr.cast::<f32>()) };
                        ProbView::F32(v)
                    }
                    Float::F64 => {
                        // SAFETY: see the layout conditions above, for f64.
                        let v = unsafe { ArrayViewD::from_shape_ptr(shape, ptr.cast::<f64>()) };
                        ProbView::F64(v)
                    }
                }
            }
        }
    }

    /// The shape `(K, *spatial)`.
    pub fn shape(&self) -> &[usize] {
        match &self.data {
            ProbData::Owned(a) => a.shape(),
            ProbData::Mapped { at, .. } => &at.shape,
        }
    }

    /// Spacing and affine of the spatial axes (as [`ProbMap::geometry`]).
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// The file it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when the data are viewed in place in the file's bytes — the mapping itself for
    /// files of 1 MiB and more, so no copy at all — rather than decoded into an array.
    pub fn is_in_place(&self) -> bool {
        matches!(self.data, ProbData::Mapped { .. })
    }

    /// An owned [`ProbMap`] (copies the data out of the mapping, in standard layout).
    pub fn into_prob_map(self) -> ProbMap {
        let probs = match self.data {
            ProbData::Owned(a) => a,
            ProbData::Mapped { .. } => self.view().to_owned(),
        };
        ProbMap {
            probs,
            geometry: self.geometry,
        }
    }
}

/// C-order strides of `shape`, in elements.
fn c_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

/// The in-place layout of a probability file, when it has one that [`read_probs`](crate::read_probs) would
/// return unchanged; `None` sends the file through the decoder (which also reports every
/// error).
fn in_place(bytes: &[u8], path: &Path, format: Format) -> Option<(InPlace, Geometry)> {
    let native = |little: bool| little == cfg!(target_endian = "little");
    let (at, geometry) = match format {
        Format::Npy => {
            let l = npy_layout(bytes, path).ok()?;
            if !native(l.little_endian) || l.shape.len() < 2 {
                return None;
            }
            let mut strides = c_strides(&l.shape);
            if l.fortran {
                let mut rev: Vec<usize> = l.shape.iter().rev().copied().collect();
                rev = c_strides(&rev);
                rev.reverse();
                strides = rev;
            }
            let geometry = Geometry::unit(l.shape.len() - 1);
            let at = InPlace {
                offset: l.data_start,
                float: Float::of(l.dtype)?,
                shape: l.shape,
                strides,
            };
            (at, geometry)
        }
        Format::Safetensors => {
            let st = SafeTensors::deserialize(bytes).ok()?;
            let view = match st.tensor("probs") {
                Ok(v) => v,
                Err(_) if st.len() == 1 => st.tensors().pop()?.1,
                Err(_) => return None,
            };
            let float = match view.dtype() {
                Dtype::F32 => Float::F32,
                Dtype::F64 => Float::F64,
                _ => return None,
            };
            let shape = view.shape().to_vec();
            if shape.len() < 2 || !native(true) {
                return None;
            }
            let offset = (view.data().as_ptr() as usize).checked_sub(bytes.as_ptr() as usize)?;
            let geometry = Geometry::unit(shape.len() - 1);
            let strides = c_strides(&shape);
            (
                InPlace {
                    offset,
                    float,
                    shape,
                    strides,
                },
                geometry,
            )
        }
        Format::Nifti | Format::NiftiGz | Format::Png => return None,
    };
    checked(bytes, at).map(|at| (at, geometry))
}

/// Accepts an in-place layout only if its strides permute a contiguous block (every
/// element reached exactly once), every element lies inside `bytes` and the first is
/// aligned for its type.
fn checked(bytes: &[u8], at: InPlace) -> Option<InPlace> {
    if at.shape.contains(&0) || at.shape.len() != at.strides.len() {
        return None;
    }
    // Sorted by stride, each stride must be the product of the lengths of the faster axes.
    let mut axes: Vec<(usize, usize)> = at
        .strides
        .iter()
        .copied()
        .zip(at.shape.iter().copied())
        .collect();
    axes.sort_unstable();
    let mut expected = 1usize;
    for (stride, len) in axes {
        if stride != expected && len > 1 {
            return None;
        }
        expected = expected.checked_mul(len)?;
    }
    let n = expected;
    let end = at.offset.checked_add(n.checked_mul(at.float.size())?)?;
    let start = (bytes.as_ptr() as usize).checked_add(at.offset)?;
    if end > bytes.len() || start % at.float.size() != 0 {
        return None;
    }
    Some(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{read_probs, write_nifti_probs, write_npy, write_safetensors};
    use ndarray::{Array4, ArrayD};

    fn probs() -> ArrayD<f32> {
        Array4::from_shape_fn((3, 5, 4, 2), |(c, i, j, k)| {
            (c * 40 + i * 8 + j * 2 + k) as f32 / 200.0
        })
        .into_dyn()
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("calseg-mapped-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Large enough to be mapped, so the in-place path is what is tested.
    fn big() -> ArrayD<f32> {
        Array4::from_shape_fn((2, 64, 64, 40), |(c, i, j, k)| {
            ((c * 7 + i * 3 + j * 5 + k) % 97) as f32 / 97.0
        })
        .into_dyn()
    }

    #[test]
    fn every_format_matches_read_probs() {
        let d = tmp("formats");
        let geo = Geometry::with_spacing(vec![1.5, 2.0, 2.5]);
        for p in [probs(), big()] {
            let npy = d.join("p.npy");
            write_npy(&npy, &p).unwrap();
            let st = d.join("p.safetensors");
            write_safetensors(&st, &[crate::NamedTensor::new("probs", &p)]).unwrap();
            let nii = d.join("p.nii");
            write_nifti_probs(&nii, &p, &geo).unwrap();
            let gz = d.join("p.nii.gz");
            write_nifti_probs(&gz, &p, &geo).unwrap();
            let large = p.len() * 4 >= MAP_THRESHOLD as usize;
            for path in [&npy, &st, &nii, &gz] {
                let f = ProbFile::open(path).unwrap();
                let decoded = path == &gz || path == &nii;
                if large || decoded {
                    assert_eq!(f.is_in_place(), !decoded, "{}", path.display());
                }
                let want = read_probs(path).unwrap();
                assert_eq!(f.view().to_owned(), want.probs, "{}", path.display());
                assert_eq!(f.geometry().spacing, want.geometry.spacing);
                assert_eq!(f.into_prob_map(), want);
            }
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn fortran_order_npy_is_viewed_in_place() {
        let d = tmp("fortran");
        let p = big();
        // A Fortran-order file: the header says so and the data are first-index fastest.
        let f = p.t().as_standard_layout().into_owned();
        let mut bytes = crate::encode_npy(&f);
        let header_end = 10 + usize::from(u16::from_le_bytes([bytes[8], bytes[9]]));
        let text = String::from_utf8(bytes[10..header_end].to_vec()).unwrap();
        let shape: Vec<String> = p.shape().iter().map(|d| d.to_string()).collect();
        let rev: Vec<String> = shape.iter().rev().cloned().collect();
        let fixed = text
            .replacen("'fortran_order': False", "'fortran_order': True ", 1)
            .replacen(&rev.join(", "), &shape.join(", "), 1);
        assert_eq!(fixed.len(), text.len());
        bytes[10..header_end].copy_from_slice(fixed.as_bytes());
        let path = d.join("f.npy");
        std::fs::write(&path, &bytes).unwrap();
        let file = ProbFile::open(&path).unwrap();
        assert!(file.is_in_place());
        assert_eq!(file.view().to_owned(), FloatArray::F32(p));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn errors_are_those_of_read_probs() {
        let d = tmp("errors");
        let labels = ndarray::Array3::<u8>::zeros((64, 64, 300)).into_dyn();
        let path = d.join("labels.npy");
        write_npy(&path, &labels).unwrap();
        let a = ProbFile::open(&path).unwrap_err().to_string();
        let b = read_probs(&path).unwrap_err().to_string();
        assert_eq!(a, b);
        assert!(a.contains("labels.npy"), "{a}");
        let missing = d.join("missing.npy");
        assert!(
            ProbFile::open(&missing)
                .unwrap_err()
                .to_string()
                .contains("missing.npy")
        );
        // A truncated file is reported, not viewed past its end.
        let full = crate::encode_npy(&big());
        let cut = d.join("cut.npy");
        std::fs::write(&cut, &full[..full.len() - 4]).unwrap();
        assert!(matches!(
            ProbFile::open(&cut).unwrap_err(),
            IoError::DataSize { .. }
        ));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn strides_of_both_orders() {
        assert_eq!(c_strides(&[3, 4, 5]), vec![20, 5, 1]);
        let at = InPlace {
            offset: 0,
            float: Float::F32,
            shape: vec![3, 4, 5],
            strides: vec![20, 5, 1],
        };
        let bytes = vec![0u8; 3 * 4 * 5 * 4];
        assert!(
            checked(&bytes, at.clone()).is_some() || !(bytes.as_ptr() as usize).is_multiple_of(4)
        );
        assert!(checked(&bytes[..bytes.len() - 1], at.clone()).is_none());
        let overlapping = InPlace {
            strides: vec![1, 1, 1],
            ..at
        };
        assert!(checked(&bytes, overlapping).is_none());
    }
}
