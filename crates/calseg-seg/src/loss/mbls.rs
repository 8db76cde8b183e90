//! Margin-based label smoothing (MbLS; Liu et al., CVPR 2022).

use super::{SegLoss, check_pair, soft_ce};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// MbLS: cross-entropy plus a hinge on the logit distances beyond a margin,
///
/// ```text
/// L = CE(l, t) + λ · mean_{i,k} ReLU(max_j l_ij − l_ik − m)
/// ```
///
/// where `i` runs over all voxels of the batch and `k` over the K classes (the mean is
/// over all `N·K` entries of logits `(n, K, *spatial)`, `N = n · voxels`), and CE is the
/// soft CE against the given target (one-hot for hard labels). Defaults: m = 5, λ = 0.1,
/// the authors' segmentation setting (m = 10 is their classification setting).
///
/// ```
/// use calseg_seg::loss::{Mbls, SegLoss, soft_ce};
/// use candle_core::{Device, Tensor};
/// # fn main() -> candle_core::Result<()> {
/// // Logit gap 7 > m = 5: penalty 2 on one of 2 entries → λ · 1 = 0.1 above CE.
/// let l = Tensor::new(&[7.0f64, 0.0], &Device::Cpu)?.reshape((1, 2, 1))?;
/// let t = Tensor::new(&[1.0f64, 0.0], &Device::Cpu)?.reshape((1, 2, 1))?;
/// let ce = soft_ce(&l, &t)?.to_scalar::<f64>()?;
/// let mbls = Mbls::default().forward(&l, &t)?.to_scalar::<f64>()?;
/// assert!((mbls - ce - 0.1).abs() < 1e-12);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Mbls {
    /// Margin m ≥ 0 on the logit distances.
    pub margin: f64,
    /// Weight λ ≥ 0 of the penalty.
    pub lambda: f64,
}

impl Default for Mbls {
    fn default() -> Self {
        Mbls {
            margin: 5.0,
            lambda: 0.1,
        }
    }
}

impl Mbls {
    /// The penalty `mean_{i,k} ReLU(max_j l_ij − l_ik − m)` alone (scalar tensor).
    pub fn penalty(&self, logits: &Tensor) -> candle_core::Result<Tensor> {
        let mx = logits.max_keepdim(1)?;
        mx.broadcast_sub(logits)?
            .affine(1.0, -self.margin)?
            .relu()?
            .mean_all()
    }
}

impl SegLoss for Mbls {
    fn forward(&self, logits: &Tensor, target: &Tensor) -> candle_core::Result<Tensor> {
        check_pair("MbLS", logits, target)?;
        let ce = soft_ce(logits, target)?;
        ce + (self.penalty(logits)? * self.lambda)?
    }
}
