//! Soft Dice loss and its combination with another loss (Dice + CE, as in nnU-Net).

use super::{SegLoss, check_pair};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// Soft Dice loss over the batch ("batch Dice": sums over images and voxels):
///
/// ```text
/// p = softmax(l) over the class axis
/// D_c = (2·Σ_{i} p_ic·t_ic + ε) / (Σ_i p_ic + Σ_i t_ic + ε)
/// L = 1 − mean_{c ∈ C} D_c,     C = foreground classes 1..K (or 0..K with background)
/// ```
///
/// with `i` over all voxels of all images of logits/targets `(n, K, *spatial)`. Defaults:
/// background excluded, ε = 1e-5.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SoftDice {
    /// Include class 0 in the mean.
    pub include_background: bool,
    /// Smoothing ε ≥ 0 of numerator and denominator.
    pub smooth: f64,
}

impl Default for SoftDice {
    fn default() -> Self {
        SoftDice {
            include_background: false,
            smooth: 1e-5,
        }
    }
}

impl SegLoss for SoftDice {
    fn forward(&self, logits: &Tensor, target: &Tensor) -> candle_core::Result<Tensor> {
        let (n, k, _) = check_pair("soft Dice", logits, target)?;
        let first = usize::from(!self.include_background);
        if k <= first {
            candle_core::bail!("soft Dice: no class to average (K = {k}, background excluded)");
        }
        let p = candle_nn::ops::softmax(logits, 1)?;
        let t = target.clone();
        let flat = |x: &Tensor| -> candle_core::Result<Tensor> {
            x.reshape((n, k, ()))?.sum(2)?.sum(0) // (k)
        };
        let inter = flat(&(&p * &t)?)?;
        let den = (flat(&p)? + flat(&t)?)?;
        let dice = (inter.affine(2.0, self.smooth)? / den.affine(1.0, self.smooth)?)?;
        dice.narrow(0, first, k - first)?
            .mean_all()?
            .affine(-1.0, 1.0)
    }
}

/// A loss plus weighted soft Dice: `L = base(l, t) + w · Dice(l, t)` (w = 1 with CE is
/// nnU-Net's Dice + CE).
#[derive(Debug)]
pub struct WithDice {
    /// The main loss.
    pub base: Box<dyn SegLoss>,
    /// The Dice term.
    pub dice: SoftDice,
    /// Weight `w` of the Dice term.
    pub weight: f64,
}

impl SegLoss for WithDice {
    fn forward(&self, logits: &Tensor, target: &Tensor) -> candle_core::Result<Tensor> {
        let b = self.base.forward(logits, target)?;
        b + (self.dice.forward(logits, target)? * self.weight)?
    }
}
