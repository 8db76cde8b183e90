//! The preprocessing training needs, following nnU-Net where it has a convention:
//! per-channel z-score within the nonzero region, crop to the nonzero bounding box,
//! 2D slices along an axis, and seeded random patch sampling with foreground
//! oversampling.
//!
//! Images are channel-first `(C, *spatial)` as in [`Case`]; labels `(*spatial)`;
//! soft labels `(K, *spatial)`.

use crate::dataset::Case;
use crate::error::{IoError, Result};
use ndarray::{ArrayD, ArrayViewD, Axis, Dimension, IxDyn, Slice};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::ops::Range;
use std::path::Path;

/// Voxels where any channel is nonzero: `(C, *spatial)` → `(*spatial)`.
/// (nnU-Net also fills holes in this mask; a brain or body mask has none that matter
/// for z-scoring, so this is not done here.)
pub fn nonzero_mask(image: &ArrayD<f32>) -> ArrayD<bool> {
    let spatial: Vec<usize> = image.shape().iter().skip(1).copied().collect();
    let mut mask = ArrayD::from_elem(IxDyn(&spatial), false);
    for ch in image.axis_iter(Axis(0)) {
        ndarray::Zip::from(&mut mask)
            .and(&ch)
            .for_each(|m, &v| *m |= v != 0.0);
    }
    mask
}

/// Mean and standard deviation used to normalise one channel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChannelStats {
    /// Mean over the region.
    pub mean: f64,
    /// Standard deviation (population) over the region.
    pub std: f64,
}

/// Z-scores each channel using only the voxels of the nonzero mask, sets the voxels
/// outside it to 0 (nnU-Net's `ZScoreNormalization` with `use_mask_for_norm`, the
/// choice for skull-stripped MRI). Returns the per-channel statistics. A standard
/// deviation below 1e-8 is replaced by 1e-8.
pub fn zscore_nonzero(image: &mut ArrayD<f32>) -> Vec<ChannelStats> {
    let mask = nonzero_mask(image);
    zscore_masked(image, Some(&mask))
}

/// Z-scores each channel over all its voxels (nnU-Net without mask).
pub fn zscore(image: &mut ArrayD<f32>) -> Vec<ChannelStats> {
    zscore_masked(image, None)
}

fn zscore_masked(image: &mut ArrayD<f32>, mask: Option<&ArrayD<bool>>) -> Vec<ChannelStats> {
    let mut stats = Vec::new();
    for mut ch in image.axis_iter_mut(Axis(0)) {
        let (mut n, mut sum, mut sum2) = (0usize, 0.0f64, 0.0f64);
        let mut add = |v: f32| {
            let v = f64::from(v);
            n += 1;
            sum += v;
            sum2 += v * v;
        };
        match mask {
            Some(m) => ndarray::Zip::from(&ch).and(m).for_each(|&v, &k| {
                if k {
                    add(v)
                }
            }),
            None => ch.iter().for_each(|&v| add(v)),
        }
        let mean = if n > 0 { sum / n as f64 } else { 0.0 };
        let var = if n > 0 {
            (sum2 / n as f64 - mean * mean).max(0.0)
        } else {
            0.0
        };
        let std = var.sqrt();
        let denom = std.max(1e-8);
        match mask {
            Some(m) => ndarray::Zip::from(&mut ch).and(m).for_each(|v, &k| {
                *v = if k {
                    ((f64::from(*v) - mean) / denom) as f32
                } else {
                    0.0
                };
            }),
            None => ch.mapv_inplace(|v| ((f64::from(v) - mean) / denom) as f32),
        }
        stats.push(ChannelStats { mean, std });
    }
    stats
}

/// The smallest box holding every voxel that is nonzero in any channel, as one
/// half-open range per spatial axis; `None` if the image is all zero.
pub fn nonzero_bbox(image: &ArrayD<f32>) -> Option<Vec<Range<usize>>> {
    let mask = nonzero_mask(image);
    let nd = mask.ndim();
    let mut lo = vec![usize::MAX; nd];
    let mut hi = vec![0usize; nd];
    let mut any = false;
    for (idx, &m) in mask.indexed_iter() {
        if m {
            any = true;
            for d in 0..nd {
                lo[d] = lo[d].min(idx[d]);
                hi[d] = hi[d].max(idx[d] + 1);
            }
        }
    }
    any.then(|| lo.into_iter().zip(hi).map(|(a, b)| a..b).collect())
}

fn bbox_slice<T: Clone>(a: &ArrayD<T>, bbox: &[Range<usize>], skip_first: bool) -> ArrayD<T> {
    let offset = usize::from(skip_first);
    a.slice_each_axis(|ax| {
        let i = ax.axis.index();
        if i < offset {
            Slice::from(..)
        } else {
            match bbox.get(i - offset) {
                Some(r) => Slice::from(r.start as isize..r.end as isize),
                None => Slice::from(..),
            }
        }
    })
    .to_owned()
}

/// Crops a case (image, label, soft labels, raters) to `bbox` (one range per spatial axis)
/// and moves the affine's origin accordingly, so that the crop still overlays the
/// original in world coordinates.
pub fn crop(case: &Case, bbox: &[Range<usize>]) -> Result<Case> {
    let spatial = &case.image.shape()[1.min(case.image.ndim())..];
    if bbox.len() != spatial.len()
        || bbox
            .iter()
            .zip(spatial)
            .any(|(r, &d)| r.start >= r.end || r.end > d)
    {
        return Err(IoError::invalid(
            Path::new(&case.id),
            format!("crop box {bbox:?} does not fit the image of spatial shape {spatial:?}"),
        ));
    }
    let origin: Vec<usize> = bbox.iter().map(|r| r.start).collect();
    Ok(Case {
        id: case.id.clone(),
        image: bbox_slice(&case.image, bbox, true),
        label: case.label.as_ref().map(|l| bbox_slice(l, bbox, false)),
        soft_label: case.soft_label.as_ref().map(|s| bbox_slice(s, bbox, true)),
        raters: case
            .raters
            .as_ref()
            .map(|rs| rs.iter().map(|r| bbox_slice(r, bbox, false)).collect()),
        geometry: case.geometry.cropped(&origin),
    })
}

/// Crops a case to the bounding box of its nonzero voxels (nnU-Net's first
/// preprocessing step), returning the crop and the box. An all-zero image is returned
/// unchanged with the full box.
pub fn crop_to_nonzero(case: &Case) -> (Case, Vec<Range<usize>>) {
    let full: Vec<Range<usize>> = case.image.shape().iter().skip(1).map(|&d| 0..d).collect();
    match nonzero_bbox(&case.image) {
        Some(bbox) => match crop(case, &bbox) {
            Ok(c) => (c, bbox),
            Err(_) => (case.clone(), full),
        },
        None => (case.clone(), full),
    }
}

/// The 2D case at `index` along spatial axis `axis` (0 = x for NIfTI): image
/// `(C, a, b)`, label `(a, b)`, soft labels `(K, a, b)`, spacing without that axis.
pub fn slice_case(case: &Case, axis: usize, index: usize) -> Result<Case> {
    let spatial = &case.image.shape()[1.min(case.image.ndim())..];
    if axis >= spatial.len() || index >= spatial[axis] {
        return Err(IoError::invalid(
            Path::new(&case.id),
            format!("slice {index} along axis {axis} is outside spatial shape {spatial:?}"),
        ));
    }
    Ok(Case {
        id: format!("{}_axis{axis}_{index:04}", case.id),
        image: case.image.index_axis(Axis(axis + 1), index).to_owned(),
        label: case
            .label
            .as_ref()
            .map(|l| l.index_axis(Axis(axis), index).to_owned()),
        soft_label: case
            .soft_label
            .as_ref()
            .map(|s| s.index_axis(Axis(axis + 1), index).to_owned()),
        raters: case.raters.as_ref().map(|rs| {
            rs.iter()
                .map(|r| r.index_axis(Axis(axis), index).to_owned())
                .collect()
        }),
        geometry: case.geometry.without_axis(axis),
    })
}

/// Every 2D slice along spatial `axis`, in order (empty if `axis` is out of range).
pub fn slices(case: &Case, axis: usize) -> impl Iterator<Item = Case> + '_ {
    let n = case.image.shape().get(axis + 1).copied().unwrap_or(0);
    (0..n).filter_map(move |i| slice_case(case, axis, i).ok())
}

/// A patch cut from a case.
#[derive(Debug, Clone, PartialEq)]
pub struct Patch {
    /// Position of the patch's first voxel in the case (negative where the patch sticks
    /// out of an image smaller than it; that part is zero-padded).
    pub origin: Vec<isize>,
    /// `(C, *patch)`.
    pub image: ArrayD<f32>,
    /// `(*patch)`; padding is label 0.
    pub label: Option<ArrayD<u32>>,
    /// `(K, *patch)`; padding is 0.
    pub soft_label: Option<ArrayD<f32>>,
    /// True if this patch was centred on a foreground voxel on purpose.
    pub forced_foreground: bool,
}

/// Random patches with foreground oversampling, as nnU-Net trains: with probability
/// `foreground_fraction` (nnU-Net: 1/3) a patch is centred on a random voxel of a random
/// foreground class present in the label (class first, then voxel, so small structures
/// are seen as often as large ones); otherwise its position is uniform. Seeded: the same
/// seed and calls give the same patches.
#[derive(Debug, Clone)]
pub struct PatchSampler {
    patch: Vec<usize>,
    foreground_fraction: f64,
    rng: StdRng,
}

impl PatchSampler {
    /// A sampler of patches of spatial size `patch`.
    pub fn new(patch: Vec<usize>, foreground_fraction: f64, seed: u64) -> Self {
        PatchSampler {
            patch,
            foreground_fraction: foreground_fraction.clamp(0.0, 1.0),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Cuts the next patch from `case` (padding with zeros where the case is smaller).
    pub fn sample(&mut self, case: &Case) -> Result<Patch> {
        let spatial: Vec<usize> = case.image.shape().iter().skip(1).copied().collect();
        if spatial.len() != self.patch.len() || self.patch.contains(&0) {
            return Err(IoError::invalid(
                Path::new(&case.id),
                format!(
                    "patch size {:?} does not match the spatial shape {spatial:?}",
                    self.patch
                ),
            ));
        }
        // Allowed origins per axis: [min(0, d - p), max(0, d - p)].
        let ranges: Vec<(isize, isize)> = spatial
            .iter()
            .zip(&self.patch)
            .map(|(&d, &p)| {
                let slack = d as isize - p as isize;
                (slack.min(0), slack.max(0))
            })
            .collect();
        let mut forced = false;
        let mut origin: Option<Vec<isize>> = None;
        if let Some(label) = &case.label
            && self.rng.random_bool(self.foreground_fraction)
            && let Some(center) = self.random_foreground_voxel(label)
        {
            forced = true;
            origin = Some(
                center
                    .iter()
                    .zip(&self.patch)
                    .zip(&ranges)
                    .map(|((&c, &p), &(lo, hi))| (c as isize - (p / 2) as isize).clamp(lo, hi))
                    .collect(),
            );
        }
        let origin = match origin {
            Some(o) => o,
            None => ranges
                .iter()
                .map(|&(lo, hi)| self.rng.random_range(lo as i64..=hi as i64) as isize)
                .collect(),
        };
        Ok(Patch {
            image: cut(&case.image.view(), &origin, &self.patch, 1),
            label: case
                .label
                .as_ref()
                .map(|l| cut(&l.view(), &origin, &self.patch, 0)),
            soft_label: case
                .soft_label
                .as_ref()
                .map(|s| cut(&s.view(), &origin, &self.patch, 1)),
            origin,
            forced_foreground: forced,
        })
    }

    fn random_foreground_voxel(&mut self, label: &ArrayD<u32>) -> Option<Vec<usize>> {
        let mut classes: Vec<u32> = label.iter().copied().filter(|&v| v > 0).collect();
        classes.sort_unstable();
        classes.dedup();
        if classes.is_empty() {
            return None;
        }
        let class = classes[self.rng.random_range(0..classes.len())];
        let count = label.iter().filter(|&&v| v == class).count();
        let pick = self.rng.random_range(0..count);
        label
            .indexed_iter()
            .filter(|(_, v)| **v == class)
            .nth(pick)
            .map(|(idx, _)| idx.as_array_view().to_vec())
    }
}

/// Copies the window at `origin` of spatial size `patch` out of `a` (whose first
/// `lead` axes are kept whole), zero-padding what lies outside.
fn cut<T: Clone + Default>(
    a: &ArrayViewD<'_, T>,
    origin: &[isize],
    patch: &[usize],
    lead: usize,
) -> ArrayD<T> {
    let mut shape: Vec<usize> = a.shape()[..lead.min(a.ndim())].to_vec();
    shape.extend_from_slice(patch);
    let mut out = ArrayD::from_elem(IxDyn(&shape), T::default());
    // Source and destination windows per spatial axis.
    let mut src = Vec::with_capacity(patch.len());
    let mut dst = Vec::with_capacity(patch.len());
    for (k, (&o, &p)) in origin.iter().zip(patch).enumerate() {
        let d = a.shape().get(lead + k).copied().unwrap_or(0) as isize;
        let s0 = o.max(0);
        let s1 = (o + p as isize).min(d);
        if s1 <= s0 {
            return out;
        }
        src.push((s0, s1));
        dst.push((s0 - o, s1 - o));
    }
    let pick = |w: &Vec<(isize, isize)>, i: usize| {
        if i < lead {
            Slice::from(..)
        } else {
            let (a, b) = w[i - lead];
            Slice::from(a..b)
        }
    };
    let from = a.slice_each_axis(|ax| pick(&src, ax.axis.index()));
    out.slice_each_axis_mut(|ax| pick(&dst, ax.axis.index()))
        .assign(&from);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::Geometry;

    fn case_2d() -> Case {
        // One channel 6×8, nonzero block rows 2..4, cols 3..7; label 1 inside, 2 at one pixel.
        let mut image = ArrayD::<f32>::zeros(IxDyn(&[1, 6, 8]));
        let mut label = ArrayD::<u32>::zeros(IxDyn(&[6, 8]));
        for r in 2..4 {
            for c in 3..7 {
                image[[0, r, c]] = (r * 10 + c) as f32;
                label[[r, c]] = 1;
            }
        }
        label[[3, 6]] = 2;
        Case {
            id: "toy".into(),
            image,
            label: Some(label),
            soft_label: None,
            raters: None,
            geometry: Geometry::with_affine(
                vec![1.0, 2.0],
                [
                    [1.0, 0.0, 0.0, 5.0],
                    [0.0, 2.0, 0.0, 7.0],
                    [0.0, 0.0, 1.0, 0.0],
                    [0.0, 0.0, 0.0, 1.0],
                ],
            ),
        }
    }

    #[test]
    fn zscore_inside_mask_only() {
        let mut c = case_2d();
        let stats = zscore_nonzero(&mut c.image);
        let vals: Vec<f64> = (2..4)
            .flat_map(|r| (3..7).map(move |col| (r * 10 + col) as f64))
            .collect();
        let mean = vals.iter().sum::<f64>() / 8.0;
        let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 8.0;
        assert!((stats[0].mean - mean).abs() < 1e-9);
        assert!((stats[0].std - var.sqrt()).abs() < 1e-9);
        let inside: Vec<f32> = c.image.iter().copied().filter(|&v| v != 0.0).collect();
        assert_eq!(inside.len(), 8);
        let m: f32 = inside.iter().sum::<f32>() / 8.0;
        assert!(m.abs() < 1e-5);
        assert_eq!(c.image[[0, 0, 0]], 0.0);
    }

    #[test]
    fn bbox_and_crop_move_origin() {
        let c = case_2d();
        let (cropped, bbox) = crop_to_nonzero(&c);
        assert_eq!(bbox, vec![2..4, 3..7]);
        assert_eq!(cropped.image.shape(), &[1, 2, 4]);
        assert_eq!(cropped.image[[0, 0, 0]], 23.0);
        assert_eq!(cropped.label.as_ref().unwrap()[[1, 3]], 2);
        let a = cropped.geometry.affine.unwrap();
        assert_eq!((a[0][3], a[1][3]), (5.0 + 2.0, 7.0 + 6.0));
        assert!(crop(&c, &[0..7, 0..8]).is_err());
    }

    #[test]
    fn slices_along_axes() {
        let c = case_2d();
        let s: Vec<Case> = slices(&c, 0).collect();
        assert_eq!(s.len(), 6);
        assert_eq!(s[2].image.shape(), &[1, 8]);
        assert_eq!(s[2].image[[0, 3]], 23.0);
        assert_eq!(s[2].geometry.spacing, vec![2.0]);
        assert!(slice_case(&c, 2, 0).is_err());
        assert!(slice_case(&c, 1, 8).is_err());
    }

    #[test]
    fn patches_are_seeded_padded_and_oversample_foreground() {
        let c = case_2d();
        let mut a = PatchSampler::new(vec![4, 4], 0.5, 7);
        let mut b = PatchSampler::new(vec![4, 4], 0.5, 7);
        let pa: Vec<Patch> = (0..20).map(|_| a.sample(&c).unwrap()).collect();
        let pb: Vec<Patch> = (0..20).map(|_| b.sample(&c).unwrap()).collect();
        assert_eq!(pa, pb);
        for p in &pa {
            // Patch content equals the case at the origin.
            for r in 0..4 {
                for col in 0..4 {
                    let (y, x) = (p.origin[0] + r as isize, p.origin[1] + col as isize);
                    assert_eq!(p.image[[0, r, col]], c.image[[0, y as usize, x as usize]]);
                }
            }
            if p.forced_foreground {
                assert!(p.label.as_ref().unwrap().iter().any(|&v| v > 0));
            }
        }
        // Always foreground: every patch contains a foreground voxel.
        let mut f = PatchSampler::new(vec![2, 2], 1.0, 1);
        let mut saw_class2 = false;
        for _ in 0..50 {
            let p = f.sample(&c).unwrap();
            assert!(p.forced_foreground);
            let l = p.label.unwrap();
            assert!(l.iter().any(|&v| v > 0));
            saw_class2 |= l.iter().any(|&v| v == 2);
        }
        // The single class-2 pixel is picked about half the time (class first, then voxel).
        assert!(saw_class2);
        // Larger than the image: zero padding, negative origin.
        let mut big = PatchSampler::new(vec![10, 8], 0.0, 3);
        let p = big.sample(&c).unwrap();
        assert!(p.origin[0] < 0 && p.origin[0] >= -4);
        assert_eq!(p.image.shape(), &[1, 10, 8]);
        assert_eq!(p.image.iter().filter(|&&v| v != 0.0).count(), 8);
        assert!(big.sample(&case_2d()).is_ok());
        assert!(PatchSampler::new(vec![4], 0.0, 0).sample(&c).is_err());
    }
}
