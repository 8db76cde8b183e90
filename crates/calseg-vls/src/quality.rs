//! How close soft labels are to the true class probabilities, and the soft labels of the
//! methods VLS is compared with.
//!
//! ```text
//! TV(Y, P) = mean_{voxels in mask} ½ Σ_k |Y_k − P_k|             (0 = identical, 1 = disjoint)
//! hard     = onehot(y)
//! LS(ε)    = (1 − ε) · onehot(y) + ε / K
//! SVLS(σ)  = ½ · onehot(y)(c) + ½ · Σ_{n ≠ c} w_n · onehot(y)(n),   w_n ∝ exp(−|n − c|² / 2σ²)
//! ```
//!
//! SVLS (Islam & Glocker, 2021; computed by calseg-seg's [`calseg_seg::loss::svls_smooth`],
//! the SVLS loss's own targets) uses the 3^d neighbourhood (8 neighbours in 2D, 26 in
//! 3D) with replicate padding at the borders; its weights are normalised over the
//! neighbours, so the centre keeps ½ and the neighbours share ½.
//!
//! On the embedded ICBM152 template, against `icbm152::true_probs()` inside
//! `icbm152::brain_mask()`, the table "hard / LS / SVLS / VLS y_s / VLS Y_s" is built
//! with [`baselines`] plus [`tv_distance`] of the VLS maps (see the crate README).

use crate::error::{Result, VlsError};
use crate::mix::one_hot;
use calseg_seg::convert::{array_to_tensor, tensor_to_array};
use candle_core::Device;
use ndarray::{ArrayD, ArrayViewD, Axis};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// A text table of [`tv_distance`] to `truth`: one row per soft-label map, one column per
/// named mask (the examples' soft-label fidelity tables).
///
/// # Errors
/// As [`tv_distance`].
pub fn tv_table(
    rows: &[(String, ArrayD<f32>)],
    masks: &[(&str, ArrayD<bool>)],
    truth: &ArrayD<f32>,
) -> Result<String> {
    let mut out = format!("{:28}", "TV in brain mask");
    for (n, _) in masks {
        out.push_str(&format!(" {n:>11}"));
    }
    out.push('\n');
    for (name, map) in rows {
        out.push_str(&format!("{name:28}"));
        for (_, m) in masks {
            out.push_str(&format!(" {:11.4}", tv_distance(map, truth, Some(m))?));
        }
        out.push('\n');
    }
    Ok(out)
}

/// Mean total-variation distance `½ Σ_k |a_k − b_k|` per voxel between two maps
/// `(K, *spatial)`, over the voxels where `mask` is true (all voxels without a mask).
/// An empty mask gives 0.
///
/// ```
/// use ndarray::ArrayD;
/// let a = ArrayD::from_shape_vec(vec![2, 2], vec![1.0f32, 0.0, 0.0, 1.0])?;
/// let b = ArrayD::from_shape_vec(vec![2, 2], vec![0.5f32, 0.0, 0.5, 1.0])?;
/// assert_eq!(calseg_vls::quality::tv_distance(&a, &a, None)?, 0.0);
/// assert_eq!(calseg_vls::quality::tv_distance(&a, &b, None)?, 0.25); // voxel 0: ½, voxel 1: 0
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn tv_distance(a: &ArrayD<f32>, b: &ArrayD<f32>, mask: Option<&ArrayD<bool>>) -> Result<f64> {
    if a.shape() != b.shape() || a.ndim() < 2 {
        return Err(VlsError::Shape(format!(
            "TV distance needs two (K, *spatial) maps of one shape, got {:?} and {:?}",
            a.shape(),
            b.shape()
        )));
    }
    if let Some(m) = mask
        && m.shape() != &a.shape()[1..]
    {
        return Err(VlsError::Shape(format!(
            "mask {:?} does not match maps {:?}",
            m.shape(),
            a.shape()
        )));
    }
    let k = a.shape()[0];
    let v = a.len() / k.max(1);
    let a = a.as_standard_layout();
    let b = b.as_standard_layout();
    let (Some(sa), Some(sb)) = (a.as_slice(), b.as_slice()) else {
        return Err(VlsError::Shape("maps not contiguous".into()));
    };
    let mask: Option<Vec<bool>> = mask.map(|m| m.iter().copied().collect());
    let (sum, n) = (0..v)
        .into_par_iter()
        .filter(|&i| mask.as_ref().is_none_or(|m| m[i]))
        .map(|i| {
            let d: f64 = (0..k)
                .map(|c| (f64::from(sa[c * v + i]) - f64::from(sb[c * v + i])).abs())
                .sum();
            (0.5 * d, 1usize)
        })
        .reduce(|| (0.0, 0), |x, y| (x.0 + y.0, x.1 + y.1));
    Ok(if n == 0 { 0.0 } else { sum / n as f64 })
}

/// Uniform label smoothing `(1 − ε)·onehot(y) + ε/K`, `(K, *spatial)`; ε ∈ [0, 1].
pub fn uniform_ls(labels: &ArrayViewD<'_, u32>, k: usize, eps: f64) -> Result<ArrayD<f32>> {
    if !(0.0..=1.0).contains(&eps) {
        return Err(VlsError::Config(format!(
            "LS epsilon must be in [0, 1], got {eps}"
        )));
    }
    let oh = one_hot(labels, k)?;
    Ok(oh * (1.0 - eps as f32) + (eps / k as f64) as f32)
}

/// Spatially varying label smoothing (SVLS) with a 3^d Gaussian kernel of width `sigma`
/// (see the module docs), `(K, *spatial)`; any number of spatial axes.
pub fn svls(labels: &ArrayViewD<'_, u32>, k: usize, sigma: f64) -> Result<ArrayD<f32>> {
    if !(sigma.is_finite() && sigma > 0.0) {
        return Err(VlsError::Config(format!(
            "SVLS sigma must be > 0, got {sigma}"
        )));
    }
    if labels.ndim() == 0 {
        return Err(VlsError::Shape(
            "SVLS needs at least one spatial axis".into(),
        ));
    }
    // The one formula lives in calseg-seg (the SVLS loss's targets): one-hot, then the
    // separable Gaussian with replicate borders, on a batch of one.
    let oh = one_hot(labels, k)?.insert_axis(Axis(0));
    let t = array_to_tensor(oh.view(), &Device::Cpu)?;
    let smooth = calseg_seg::loss::svls_smooth(&t, 3, sigma)?;
    Ok(tensor_to_array::<f32>(&smooth)?.index_axis_move(Axis(0), 0))
}

/// One row of a soft-label quality table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QualityRow {
    /// Method name (`hard`, `LS(0.1)`, `SVLS(σ=1)`, `VLS y_s`, …).
    pub method: String,
    /// Mean TV distance to the true probabilities inside the mask.
    pub tv: f64,
}

/// SVLS(σ) of a label volume `(X, Y, Z)` slice by slice along spatial `axis`: the targets
/// a 2D net trained on those slices gets from the SVLS loss (3×3 in-plane neighbourhood),
/// stacked back into `(K, X, Y, Z)`. A map with fewer than three axes is smoothed whole.
///
/// # Errors
/// [`VlsError::Shape`] when `axis` is not a spatial axis of `labels`; as [`svls`].
pub fn svls_in_plane(
    labels: &ArrayViewD<'_, u32>,
    k: usize,
    sigma: f64,
    axis: usize,
) -> Result<ArrayD<f32>> {
    if labels.ndim() < 3 {
        return svls(labels, k, sigma);
    }
    if axis >= labels.ndim() {
        return Err(VlsError::Shape(format!(
            "slice axis {axis} of a label map with {} axes",
            labels.ndim()
        )));
    }
    let mut shape = vec![k];
    shape.extend_from_slice(labels.shape());
    let mut out = ArrayD::<f32>::zeros(shape);
    for (z, slice) in labels.axis_iter(Axis(axis)).enumerate() {
        out.index_axis_mut(Axis(axis + 1), z)
            .assign(&svls(&slice, k, sigma)?);
    }
    Ok(out)
}

/// TV distance to `truth (K, *spatial)` inside `mask` of the baseline soft labels built
/// from `labels`: hard one-hot, uniform LS(`ls_eps`) and SVLS(σ = `svls_sigma`) over the
/// map's own neighbourhood (3×3×3 for a volume). With `in_plane = Some(axis)` and a
/// volume, also the SVLS a 2D net trained on its slices along `axis` gets
/// ([`svls_in_plane`]), and the two SVLS rows are named `SVLS(σ=…, 3×3×3)` and
/// `SVLS(σ=…, in-plane)`.
///
/// # Errors
/// As [`tv_distance`], [`svls`].
pub fn baselines(
    labels: &ArrayViewD<'_, u32>,
    truth: &ArrayD<f32>,
    mask: Option<&ArrayD<bool>>,
    ls_eps: f64,
    svls_sigma: f64,
    in_plane: Option<usize>,
) -> Result<Vec<QualityRow>> {
    let k = truth.shape().first().copied().unwrap_or(0);
    let row = |method: String, y: ArrayD<f32>| -> Result<QualityRow> {
        Ok(QualityRow {
            method,
            tv: tv_distance(&y, truth, mask)?,
        })
    };
    let plane = in_plane.filter(|_| labels.ndim() == 3);
    let both = plane.is_some();
    let mut rows = vec![
        row("hard".into(), one_hot(labels, k)?)?,
        row(format!("LS({ls_eps})"), uniform_ls(labels, k, ls_eps)?)?,
        row(
            if both {
                format!("SVLS(σ={svls_sigma}, 3×3×3)")
            } else {
                format!("SVLS(σ={svls_sigma})")
            },
            svls(labels, k, svls_sigma)?,
        )?,
    ];
    if let Some(axis) = plane {
        rows.push(row(
            format!("SVLS(σ={svls_sigma}, in-plane)"),
            svls_in_plane(labels, k, svls_sigma, axis)?,
        )?);
    }
    Ok(rows)
}
