//! # calseg-io — medical image I/O for calseg
//!
//! Reads what medical-imaging people have on disk and writes what they (and their
//! Python colleagues) can open, without surprises:
//!
//! | format | read | write | notes |
//! |---|---|---|---|
//! | NIfTI-1 `.nii`, `.nii.gz` | [`read_nifti`] | [`write_nifti`], [`write_nifti_labels`], [`write_nifti_probs`] | all integer and float types; `scl_slope`/`scl_inter`; sform/qform affine; nibabel index order |
//! | numpy `.npy` | [`read_npy`] | [`write_npy`] | v1/v2/v3 headers, C and Fortran order, little/big endian |
//! | `.safetensors` | [`read_safetensors`] | [`write_safetensors`] | named tensors; `probs`, `soft_labels`, `labels` |
//! | PNG | [`read_png`] | [`write_png`] | 8/16-bit grey, palette label maps |
//!
//! plus the readers `calseg eval` and `calseg info` use — [`read_probs`] (channel-first
//! probabilities from any of these; [`ProbFile`] views them in place without a copy), [`read_labels`] (checked integer label maps) and
//! [`read_image`]/[`read_images`] (any array with its type, spacing and affine) — the
//! Decathlon / nnU-Net v2 [`dataset`] folder layout, training [`preprocess`]ing, a
//! seeded synthetic [`phantom`] with exact soft labels, and an embedded real brain MRI
//! with ground-truth tissue probabilities, [`icbm152`].
//!
//! Every failure is an [`IoError`] that names the file (or dataset case) and the problem;
//! damaged input never panics (the NIfTI reader is fuzzed, see `fuzz/`). Every writer
//! encodes in memory, writes a temporary file next to the target and renames it, so a
//! failed write leaves neither a partial target nor a temporary file.
//!
//! ## Conventions
//! * **Index order** is the file's: NIfTI arrays are `(x, y, z[, …])` exactly as nibabel
//!   returns them (`a[[x, y, z]]` = nibabel's `img.dataobj[x, y, z]`); npy and
//!   safetensors arrays have numpy's order; PNG is `(row, column)`. Memory layout is
//!   always standard (C order).
//! * **Probabilities and soft labels** are channel-first `(K, *spatial)` in memory, npy
//!   and safetensors; in NIfTI the classes are on the last axis (`(x, y, z, K)`), the
//!   convention of nibabel users and nnU-Net, and the readers move them first.
//! * **Spacing** comes from NIfTI `pixdim`; npy, safetensors and PNG have none and get
//!   1.0 per axis.
//!
//! ## Example
//! ```
//! use calseg_io::{Geometry, read_labels, read_probs, write_nifti_labels, write_nifti_probs};
//! # #[cfg(feature = "embedded-data")] {
//! // The embedded template: T1, labels and true tissue probabilities.
//! let truth = calseg_io::icbm152::true_probs()?;
//! assert_eq!(truth.probs.shape(), &[4, 80, 100, 82]);
//! let labels = calseg_io::icbm152::labels()?;
//!
//! // Write them as a viewer-ready overlay of the template, then read them back.
//! let dir = std::env::temp_dir().join(format!("calseg-io-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! write_nifti_probs(dir.join("probs.nii.gz"), &truth.probs.clone().into_f32(), &truth.geometry)?;
//! write_nifti_labels(dir.join("labels.nii.gz"), &labels.labels, &labels.geometry)?;
//! let back = read_probs(dir.join("probs.nii.gz"))?;
//! assert_eq!(back.probs, truth.probs);
//! assert_eq!(back.geometry.affine, truth.geometry.affine);
//! assert_eq!(read_labels(dir.join("labels.nii.gz"))?.labels, labels.labels);
//! std::fs::remove_dir_all(&dir)?;
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Dependencies, and why
//! * `ndarray` — the n-dimensional arrays of the whole workspace.
//! * `nifti` — the established Rust NIfTI-1 reader: header parsing, byte order, element
//!   decoding. (Its writer is not used: it writes straight to the target path, which
//!   rules out the write-then-rename guarantee, so the 348-byte header is encoded here.)
//! * `flate2` — gzip for `.nii.gz`, with the `zlib-rs` backend: pure Rust (no C
//!   toolchain), and its inflate is about twice as fast as the default `miniz_oxide`;
//!   the decoder verifies the CRC and length, which is how truncated files are caught.
//! * `memmap2` — maps large files instead of reading them: [`ProbFile`] scores a
//!   probability map in place in the page cache (see [`mapped`] for when, and for the
//!   contract every mapped reader has with concurrent writers).
//! * `safetensors` — the reference implementation of the format, with its validation of
//!   offsets and shapes.
//! * `png` — the pure-Rust PNG codec of the `image-rs` project, without the rest of
//!   `image`'s formats.
//! * `serde`, `serde_json` — `dataset.json`.
//! * `rand`, `rand_distr` — seeded phantoms and patch sampling (`StdRng::seed_from_u64`).
//! * `thiserror` — the typed [`IoError`].
//!
//! The npy codec is this crate's own: the format is small, and owning it keeps
//! Fortran order, big-endian and `bool` handling under this crate's tests.

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod array;
pub mod atomic;
pub mod dataset;
mod error;
#[cfg(feature = "embedded-data")]
#[cfg_attr(docsrs, doc(cfg(feature = "embedded-data")))]
pub mod icbm152;
mod image;
pub mod mapped;
mod nifti_io;
mod npy;
pub mod phantom;
mod png_io;
pub mod preprocess;
mod safetensors_io;
pub mod shift;

pub use array::{DataType, Element, FloatArray, TypedArray};
pub use dataset::{Case, CaseRef, Dataset, DatasetInfo, LabelDef, Split};
pub use error::{IoError, LabelProblem, Result};
pub use image::{
    Affine, Format, Geometry, Image, LabelMap, ProbMap, images_from_bytes, labels_from_bytes,
    probs_from_bytes, read_image, read_images, read_labels, read_probs,
};
pub use mapped::{ProbFile, ProbView};
pub use nifti_io::{
    encode_nifti, nifti_from_bytes, read_nifti, write_nifti, write_nifti_labels, write_nifti_probs,
};
pub use npy::{encode_npy, npy_from_bytes, read_npy, write_npy};
pub use png_io::{PngPixel, encode_png, png_from_bytes, read_png, to_grey8, write_png};
pub use safetensors_io::{
    NamedTensor, encode_safetensors, read_safetensors, safetensors_from_bytes, write_safetensors,
};

/// The `nifti` crate, re-exported for [`Geometry::nifti_header`]'s type.
pub use nifti;
