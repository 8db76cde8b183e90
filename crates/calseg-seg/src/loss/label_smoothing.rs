//! Label smoothing (Szegedy et al., 2016; Müller et al., 2019).

use super::{SegLoss, check_pair, soft_ce};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// Label smoothing: soft cross-entropy against the smoothed target
///
/// ```text
/// y_ls = (1 − ε)·y + ε/K,       L = mean_voxels −Σ_k y_ls,k · log softmax(l)_k
/// ```
///
/// for logits and targets `(n, K, *spatial)`; ε = 0.1 by default, ε ∈ [0, 1]
/// (ε = 0 is plain CE).
///
/// ```
/// use calseg_seg::loss::{LabelSmoothing, SegLoss};
/// use candle_core::{Device, Tensor};
/// # fn main() -> candle_core::Result<()> {
/// // K = 2, equal logits: every target gives ln 2.
/// let l = Tensor::zeros((1, 2, 3), candle_core::DType::F32, &Device::Cpu)?;
/// let t = Tensor::new(&[1f32, 0., 1., 0., 1., 0.], &Device::Cpu)?.reshape((1, 2, 3))?;
/// let loss = LabelSmoothing::default().forward(&l, &t)?.to_scalar::<f32>()?;
/// assert!((loss - 2f32.ln()).abs() < 1e-6);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LabelSmoothing {
    /// Smoothing ε ∈ [0, 1].
    pub eps: f64,
}

impl Default for LabelSmoothing {
    fn default() -> Self {
        LabelSmoothing { eps: 0.1 }
    }
}

impl LabelSmoothing {
    /// The smoothed target `(1 − ε)·y + ε/K` (same shape, dtype and device as `target`).
    pub fn smooth(&self, target: &Tensor) -> candle_core::Result<Tensor> {
        let k = target.dim(1)?;
        target.affine(1.0 - self.eps, self.eps / k.max(1) as f64)
    }
}

impl SegLoss for LabelSmoothing {
    fn forward(&self, logits: &Tensor, target: &Tensor) -> candle_core::Result<Tensor> {
        check_pair("label smoothing", logits, target)?;
        soft_ce(logits, &self.smooth(target)?)
    }
}
