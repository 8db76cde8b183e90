//! Focal loss (Lin et al., 2017; for calibration: Mukhoti et al., 2020).

use super::{SegLoss, check_pair};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// Focal loss with focusing parameter γ (default 3, γ ≥ 0):
///
/// ```text
/// hard label y:   FL = −(1 − p_y)^γ · log p_y
/// soft target t:  FL = Σ_k t_k · (1 − p_k)^γ · (−log p_k)
/// L = mean over voxels (and batch),     p = softmax(l) over the class axis
/// ```
///
/// The soft form equals the hard one for a one-hot `t` and is linear in `t`; γ = 0 gives
/// the (soft) cross-entropy. Logits and targets are `(n, K, *spatial)`. For integer γ the
/// modulating factor is a product (exact gradient everywhere); otherwise
/// `max(1 − p, 1e-30)^γ` (the floor keeps the gradient of `x^γ` finite at `p = 1`).
///
/// ```
/// use calseg_seg::loss::{Focal, SegLoss};
/// use candle_core::{Device, Tensor};
/// # fn main() -> candle_core::Result<()> {
/// // p = (3/4, 1/4), label 0: FL = −(1/4)^3 · ln(3/4).
/// let l = Tensor::new(&[3f64.ln(), 0.0], &Device::Cpu)?.reshape((1, 2, 1))?;
/// let t = Tensor::new(&[1.0f64, 0.0], &Device::Cpu)?.reshape((1, 2, 1))?;
/// let fl = Focal::default().forward(&l, &t)?.to_scalar::<f64>()?;
/// assert!((fl + 0.25f64.powi(3) * 0.75f64.ln()).abs() < 1e-12);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Focal {
    /// Focusing parameter γ ≥ 0.
    pub gamma: f64,
}

impl Default for Focal {
    fn default() -> Self {
        Focal { gamma: 3.0 }
    }
}

impl Focal {
    /// `(1 − p)^γ` elementwise.
    fn modulating(&self, p: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let g = self.gamma;
        if g == 0.0 {
            return Ok(None);
        }
        let q = p.affine(-1.0, 1.0)?;
        if g.fract() == 0.0 && g <= 16.0 {
            let mut acc = q.clone();
            for _ in 1..(g as usize) {
                acc = (&acc * &q)?;
            }
            Ok(Some(acc))
        } else {
            Ok(Some(q.maximum(1e-30)?.powf(g)?))
        }
    }
}

impl SegLoss for Focal {
    fn forward(&self, logits: &Tensor, target: &Tensor) -> candle_core::Result<Tensor> {
        check_pair("focal loss", logits, target)?;
        let logp = candle_nn::ops::log_softmax(logits, 1)?;
        let mut w = target.clone();
        if let Some(m) = self.modulating(&logp.exp()?)? {
            w = (w * m)?;
        }
        (w * logp)?.sum(1)?.mean_all()?.neg()
    }
}
