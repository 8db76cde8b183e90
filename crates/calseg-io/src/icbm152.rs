//! The embedded real data set: the MNI ICBM152 2009a brain template on a 2 mm grid
//! (80 × 100 × 82), with its ground-truth tissue probability maps.
//!
//! The files of `data/icbm152-2mm/` (a Decathlon-style folder, ≈2.8 MB of `.nii.gz`)
//! are compiled into the library with `include_bytes!` (cargo feature `embedded-data`,
//! on by default) and **parsed from memory**: nothing is unpacked to disk, no cache
//! folder is created, and it works for a user who installed only the `calseg` binary.
//!
//! Classes: 0 background, 1 CSF, 2 GM (grey matter), 3 WM (white matter). The template
//! is symmetric (left and right hemispheres mirror each other): split train/test by
//! axial slabs, not by hemisphere. The license notice ([`NOTICE`]) must travel with
//! every copy of the data.
//!
//! ```
//! let ds = calseg_io::icbm152::open()?;
//! let case = ds.load("icbm152")?;
//! assert_eq!(case.image.shape(), &[1, 80, 100, 82]);          // (C, x, y, z)
//! assert_eq!(case.soft_label.as_ref().unwrap().shape(), &[4, 80, 100, 82]);
//! assert_eq!(case.geometry.spacing, vec![2.0, 2.0, 2.0]);
//! # Ok::<(), calseg_io::IoError>(())
//! ```

use crate::dataset::Dataset;
use crate::error::Result;
use crate::image::{
    Format, Image, LabelMap, ProbMap, image_to_labels, images_from_bytes, probs_from_bytes,
};
use std::path::PathBuf;

/// Name of the dataset (as used in error messages: `<embedded>/icbm152-2mm/…`).
pub const NAME: &str = "icbm152-2mm";

macro_rules! embed {
    ($($rel:literal),* $(,)?) => {
        &[$(($rel, include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/data/icbm152-2mm/", $rel)) as &[u8])),*]
    };
}

/// Every file of the embedded folder, by path relative to its root.
pub static FILES: &[(&str, &[u8])] = embed![
    "dataset.json",
    "imagesTr/icbm152_0000.nii.gz",
    "labelsTr/icbm152.nii.gz",
    "softlabelsTr/icbm152.nii.gz",
    "extra/brainmask.nii.gz",
    "README.md",
    "NOTICE",
    "manifest.json",
];

/// The license notice of the template (must accompany copies of the data).
pub const NOTICE: &str = include_str!("../data/icbm152-2mm/NOTICE");

/// Provenance and description of the data (README of the data folder).
pub const README: &str = include_str!("../data/icbm152-2mm/README.md");

/// Machine-readable provenance: source files and their sha256, grid, affine.
pub const MANIFEST_JSON: &str = include_str!("../data/icbm152-2mm/manifest.json");

/// Class names in label order.
pub const CLASSES: [&str; 4] = ["background", "CSF", "GM", "WM"];

fn file(rel: &str) -> (&'static [u8], PathBuf) {
    let bytes = FILES
        .iter()
        .find(|(n, _)| *n == rel)
        .map(|(_, b)| *b)
        .unwrap_or(&[]);
    (bytes, PathBuf::from(format!("<embedded>/{NAME}/{rel}")))
}

/// The template as a [`Dataset`] with one training case, `"icbm152"` (T1 image,
/// hard labels, soft labels from `softlabelsTr/`).
pub fn open() -> Result<Dataset> {
    Dataset::from_static(NAME, FILES)
}

fn single(rel: &str) -> Result<Image> {
    let (bytes, path) = file(rel);
    let mut v = images_from_bytes(bytes, &path, Format::NiftiGz)?;
    v.pop()
        .ok_or_else(|| crate::IoError::unexpected(&path, "empty"))
}

/// The T1-weighted image, float32 in [0, 1], 80 × 100 × 82.
pub fn t1() -> Result<Image> {
    single("imagesTr/icbm152_0000.nii.gz")
}

/// The hard labels (argmax of the probabilities, ties → lower class).
pub fn labels() -> Result<LabelMap> {
    let (bytes, path) = file("labelsTr/icbm152.nii.gz");
    let mut v = images_from_bytes(bytes, &path, Format::NiftiGz)?;
    let image = v
        .pop()
        .ok_or_else(|| crate::IoError::unexpected(&path, "empty"))?;
    image_to_labels(image, &path)
}

/// The ground-truth tissue probabilities, `(4, 80, 100, 82)` float32, summing to 1.
pub fn true_probs() -> Result<ProbMap> {
    let (bytes, path) = file("softlabelsTr/icbm152.nii.gz");
    probs_from_bytes(bytes, &path, Format::NiftiGz)
}

/// The brain mask (1 where the partial-volume brain fraction is ≥ 0.5), 80 × 100 × 82.
pub fn brain_mask() -> Result<LabelMap> {
    let (bytes, path) = file("extra/brainmask.nii.gz");
    let mut v = images_from_bytes(bytes, &path, Format::NiftiGz)?;
    let image = v
        .pop()
        .ok_or_else(|| crate::IoError::unexpected(&path, "empty"))?;
    image_to_labels(image, &path)
}
