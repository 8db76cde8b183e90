//! Cross-entropy on hard labels (`ce`) and on given soft targets (`soft`, CALSeg's `Y_s`).
//!
//! Both are the soft-target cross-entropy of [`soft_ce`](super::soft_ce):
//!
//! ```text
//! L = (1/V) Σ_voxels −Σ_k t_k · log softmax(l)_k,     V = n · voxels per image
//! ```
//!
//! with `t` one-hot for [`CrossEntropy`] (the usual CE, `−log p_y`) and a per-voxel class
//! distribution for [`SoftTargetCe`]. They differ only in what the caller passes as target.

use super::{SegLoss, soft_ce};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// Cross-entropy `L = mean_voxels −log softmax(l)_y` with the target given one-hot
/// `(n, k, *spatial)`.
///
/// ```
/// use calseg_seg::loss::{CrossEntropy, SegLoss};
/// use candle_core::{Device, Tensor};
/// # fn main() -> candle_core::Result<()> {
/// // One voxel, logits (ln 3, 0): p = (3/4, 1/4); label 0 → −ln(3/4).
/// let l = Tensor::new(&[3f64.ln(), 0.0], &Device::Cpu)?.reshape((1, 2, 1))?;
/// let t = Tensor::new(&[1.0f64, 0.0], &Device::Cpu)?.reshape((1, 2, 1))?;
/// let loss = CrossEntropy.forward(&l, &t)?.to_scalar::<f64>()?;
/// assert!((loss + 0.75f64.ln()).abs() < 1e-12);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CrossEntropy;

impl SegLoss for CrossEntropy {
    fn forward(&self, logits: &Tensor, target: &Tensor) -> candle_core::Result<Tensor> {
        soft_ce(logits, target)
    }
}

/// Soft-target cross-entropy `L = mean_voxels −Σ_k t_k log softmax(l)_k` against given
/// per-voxel class distributions `t (n, k, *spatial)` (e.g. CALSeg's smoothed `Y_s`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SoftTargetCe;

impl SegLoss for SoftTargetCe {
    fn forward(&self, logits: &Tensor, target: &Tensor) -> candle_core::Result<Tensor> {
        soft_ce(logits, target)
    }
}
