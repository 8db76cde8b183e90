//! Cross-fitted soft labels: every training voxel's `y_s` comes from a smoother that
//! did not train on it.
//!
//! A smoother applied to its own training data is as sharp there as it was fitted to be:
//! its `y_s` is uncertain only along label boundaries. A segmentation net trained on such
//! targets learns the confidence the smoother has *in sample*, which a net then carries
//! to unseen images, where it errs more often. With `k` folds, the training data are cut
//! into `k` parts, one smoother is trained per fold on the other `k − 1` parts, and each
//! part is smoothed by the smoother that did not see it: `y_s` then shows the uncertainty
//! of a model on data it has not seen — where, and how much, it errs out of sample — which
//! is what the segmentation net's confidence should mean on a new scan.
//!
//! **Folds.** With at least `k` training cases, case `i` belongs to fold `i mod k`. With
//! fewer (one volume cut into a training slab, as `calseg demo` does), every case is cut
//! into `k` contiguous slabs along `axis` (the 2D slicing axis): slab `f` covers slices
//! `[f·n/k, (f+1)·n/k)`, so the held-out part of a fold is a block of anatomy the fold's
//! smoother has not seen, not a neighbour of slices it has.
//!
//! The cost: `k` smoothers, each trained with the full step budget on `(k−1)/k` of the data.

use crate::error::{Result, VlsError};
use calseg_io::Case;
use calseg_io::preprocess::crop;
use ndarray::{ArrayD, Axis, Slice};
use std::ops::Range;

/// A region of one training case that a fold holds out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// Index of the case in the training list.
    pub case: usize,
    /// Slice range along the fold axis (`None`: the whole case).
    pub range: Option<Range<usize>>,
}

/// One fold: what its smoother trains on and what it smooths.
#[derive(Clone, Debug)]
pub struct Fold {
    /// The training cases (or slabs of them) the fold's smoother sees.
    pub train: Vec<Case>,
    /// The regions it smooths (held out from its training).
    pub held: Vec<Held>,
}

/// The `k` folds of `train` (module docs).
///
/// # Errors
/// [`VlsError::Config`] for `k < 2`, no cases, an `axis` beyond a case's spatial axes, or
/// a case with fewer than `k` slices along it when it has to be cut.
pub fn plan(train: &[Case], k: usize, axis: usize) -> Result<Vec<Fold>> {
    if k < 2 {
        return Err(VlsError::Config(format!(
            "cross-fitting needs at least 2 folds, got {k}"
        )));
    }
    if train.is_empty() {
        return Err(VlsError::Config("cross-fitting: no training cases".into()));
    }
    if train.len() >= k {
        return Ok((0..k)
            .map(|f| Fold {
                train: train
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| i % k != f)
                    .map(|(_, c)| c.clone())
                    .collect(),
                held: (0..train.len())
                    .filter(|i| i % k == f)
                    .map(|case| Held { case, range: None })
                    .collect(),
            })
            .collect());
    }
    let mut folds: Vec<Fold> = (0..k)
        .map(|_| Fold {
            train: Vec::new(),
            held: Vec::new(),
        })
        .collect();
    for (i, case) in train.iter().enumerate() {
        let spatial = &case.image.shape()[1.min(case.image.ndim())..];
        let n = *spatial.get(axis).ok_or_else(|| {
            VlsError::Config(format!(
                "cross-fitting: case {:?} has {} spatial axes, no axis {axis}",
                case.id,
                spatial.len()
            ))
        })?;
        if n < k {
            return Err(VlsError::Config(format!(
                "cross-fitting: case {:?} has {n} slices along axis {axis}, fewer than the {k} folds",
                case.id
            )));
        }
        let slab = |f: usize| f * n / k..(f + 1) * n / k;
        for (f, fold) in folds.iter_mut().enumerate() {
            fold.held.push(Held {
                case: i,
                range: Some(slab(f)),
            });
            // The rest of the case: the slices before and after slab f (contiguous
            // pieces, each its own training case).
            let held = slab(f);
            for (tag, r) in [("a", 0..held.start), ("b", held.end..n)] {
                if r.is_empty() {
                    continue;
                }
                let bbox: Vec<Range<usize>> = spatial
                    .iter()
                    .enumerate()
                    .map(|(a, &d)| if a == axis { r.clone() } else { 0..d })
                    .collect();
                let mut piece = crop(case, &bbox)?;
                piece.id = format!("{}_fold{f}{tag}", case.id);
                fold.train.push(piece);
            }
        }
    }
    Ok(folds)
}

/// Copies the held-out region `range` (along spatial `axis`) of `from` into `into`, both
/// `(K, *spatial)`; the whole map when `range` is `None`.
///
/// # Errors
/// [`VlsError::Shape`] when the maps differ in shape.
pub fn paste(
    into: &mut ArrayD<f32>,
    from: &ArrayD<f32>,
    range: Option<&Range<usize>>,
    axis: usize,
) -> Result<()> {
    if into.shape() != from.shape() {
        return Err(VlsError::Shape(format!(
            "cross-fitting: y_s maps of shapes {:?} and {:?}",
            into.shape(),
            from.shape()
        )));
    }
    match range {
        None => into.assign(from),
        Some(r) => {
            let s = Slice::from(r.clone());
            into.slice_axis_mut(Axis(axis + 1), s)
                .assign(&from.slice_axis(Axis(axis + 1), s));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use calseg_io::Geometry;
    use ndarray::IxDyn;

    fn case(id: &str, nz: usize) -> Case {
        Case {
            id: id.into(),
            image: ArrayD::from_shape_fn(IxDyn(&[1, 2, 3, nz]), |i| i[3] as f32),
            label: Some(ArrayD::from_shape_fn(IxDyn(&[2, 3, nz]), |i| i[2] as u32)),
            soft_label: None,
            raters: None,
            geometry: Geometry::unit(3),
        }
    }

    /// One case is cut into contiguous slabs; each fold trains on the rest, and the
    /// held-out slabs cover every slice exactly once.
    #[test]
    fn one_case_is_cut_into_slabs() {
        let folds = plan(&[case("c", 7)], 3, 2).unwrap();
        let mut covered = [0; 7];
        for (f, fold) in folds.iter().enumerate() {
            assert_eq!(fold.held.len(), 1);
            let r = fold.held[0].range.clone().unwrap();
            for z in r.clone() {
                covered[z] += 1;
            }
            // The fold's training slices are exactly the others.
            let seen: Vec<u32> = fold
                .train
                .iter()
                .flat_map(|c| {
                    let l = c.label.as_ref().unwrap();
                    (0..l.shape()[2]).map(move |z| l[[0, 0, z]])
                })
                .collect();
            let expect: Vec<u32> = (0..7u32).filter(|z| !r.contains(&(*z as usize))).collect();
            assert_eq!(seen, expect, "fold {f}");
            assert!(fold.train.iter().all(|c| c.id.starts_with("c_fold")));
        }
        assert_eq!(covered, [1; 7]);
        assert_eq!(folds[0].held[0].range, Some(0..2));
        assert_eq!(folds[2].held[0].range, Some(4..7));
    }

    /// With enough cases, whole cases are held out, round-robin.
    #[test]
    fn cases_are_held_out_whole() {
        let cases: Vec<Case> = (0..5).map(|i| case(&format!("c{i}"), 4)).collect();
        let folds = plan(&cases, 2, 2).unwrap();
        let held: Vec<usize> = folds[0].held.iter().map(|h| h.case).collect();
        assert_eq!(held, vec![0, 2, 4]);
        let ids: Vec<&str> = folds[0].train.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, vec!["c1", "c3"]);
        assert!(folds[1].held.iter().all(|h| h.range.is_none()));
    }

    #[test]
    fn bad_plans_are_errors() {
        assert!(plan(&[case("c", 7)], 1, 2).is_err());
        assert!(plan(&[], 2, 2).is_err());
        assert!(plan(&[case("c", 2)], 3, 2).is_err());
        assert!(plan(&[case("c", 7)], 2, 5).is_err());
    }

    #[test]
    fn paste_copies_only_the_range() {
        let mut into = ArrayD::<f32>::zeros(IxDyn(&[2, 2, 3, 5]));
        let from = ArrayD::<f32>::ones(IxDyn(&[2, 2, 3, 5]));
        paste(&mut into, &from, Some(&(1..3)), 2).unwrap();
        for z in 0..5 {
            let v = into[[1, 1, 2, z]];
            assert_eq!(v, if (1..3).contains(&z) { 1.0 } else { 0.0 });
        }
        assert!(paste(&mut into, &ArrayD::zeros(IxDyn(&[2, 2, 3, 4])), None, 2).is_err());
    }
}
