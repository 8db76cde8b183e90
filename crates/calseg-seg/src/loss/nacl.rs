//! Neighbour-aware calibration loss (NACL; Murugesan et al., "Trust your neighbours:
//! penalty-based constraints for model calibration", MICCAI 2023).

use super::{
    Border, SegLoss, check_pair, filter_separable, from_f64_like, gaussian_taps, soft_ce,
    to_f64_vec,
};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// Distance of the NACL penalty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NaclNorm {
    /// `|τ − l|` (default).
    #[default]
    L1,
    /// `(τ − l)²`.
    L2,
}

/// Window over which NACL counts the class proportions of the neighbourhood.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NaclWindow {
    /// Uniform weights over the `kernel^D` window (default).
    #[default]
    Mean,
    /// Gaussian weights `exp(−‖n − c‖² / (2σ²))` over the window.
    Gaussian {
        /// σ > 0, in voxels.
        sigma: f64,
    },
}

/// NACL: cross-entropy plus a penalty pulling the logits towards the class proportions of
/// the label's neighbourhood:
///
/// ```text
/// τ(y)_ik = Σ_{n ∈ W(i) ∩ image} w_n · [argmax_j y_nj = k] / Σ_{n ∈ W(i) ∩ image} w_n
/// L = CE(l, t) + α · mean_{i,k} |τ(y)_ik − l_ik|          (L1, default)
/// L = CE(l, t) + α · mean_{i,k} (τ(y)_ik − l_ik)²         (L2)
/// ```
///
/// on the raw logits `l (n, K, *spatial)`, with `W(i)` the `kernel^D` window around voxel
/// `i` (3×3 / 3×3×3 by default) and `w_n` = 1 (mean window) or Gaussian. The mean over
/// `i, k` runs over all `N·K` entries. Defaults: kernel 3, α = 0.1, L1, mean window.
///
/// **Borders**: only neighbours inside the image count (the sum and the normaliser run
/// over `W(i) ∩ image`). The public code zero-pads the one-hot map, which makes border
/// voxels look partly unlabelled (their proportions sum to less than 1), so the penalty
/// pulls all logits down at every image border; counting only in-image neighbours keeps
/// `τ` a distribution everywhere and leaves the interior unchanged.
///
/// ```
/// use calseg_seg::loss::nacl_proportions;
/// use candle_core::{Device, Tensor};
/// # fn main() -> candle_core::Result<()> {
/// // 1×3 image, labels (1, 0, 0), K = 2, kernel 3: the centre window holds 1 of 3 class-1
/// // voxels; the left border voxel sees 2 in-image voxels, one of them class 1.
/// let y = Tensor::new(&[0f32, 1., 1., 1., 0., 0.], &Device::Cpu)?.reshape((1, 2, 1, 3))?;
/// let tau = nacl_proportions(&y, 3, Default::default())?.flatten_all()?.to_vec1::<f32>()?;
/// assert!((tau[3] - 0.5).abs() < 1e-6 && (tau[4] - 1.0 / 3.0).abs() < 1e-6 && tau[5] == 0.0);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Nacl {
    /// Window size per axis (odd).
    pub kernel: usize,
    /// Weight α ≥ 0 of the penalty.
    pub alpha: f64,
    /// L1 or L2 penalty.
    pub norm: NaclNorm,
    /// Mean or Gaussian window.
    pub window: NaclWindow,
}

impl Default for Nacl {
    fn default() -> Self {
        Nacl {
            kernel: 3,
            alpha: 0.1,
            norm: NaclNorm::L1,
            window: NaclWindow::Mean,
        }
    }
}

/// `τ(y)`: the class proportions of `argmax_k target` (first maximum on ties) in the
/// `kernel^D` window of every voxel, counting only in-image neighbours (see [`Nacl`]).
/// Same shape, dtype and device as `target (n, K, *spatial)`; computed on the CPU in f64.
pub fn nacl_proportions(
    target: &Tensor,
    kernel: usize,
    window: NaclWindow,
) -> candle_core::Result<Tensor> {
    let dims = target.dims().to_vec();
    if dims.len() < 2 {
        candle_core::bail!("NACL: target {dims:?} must be (n, k, …)");
    }
    let (n, k) = (dims[0], dims[1]);
    let spatial = &dims[2..];
    let s: usize = spatial.iter().product();
    let y = to_f64_vec(target)?;
    let mut onehot = vec![0.0f64; y.len()];
    for i in 0..n {
        let img = &y[i * k * s..(i + 1) * k * s];
        let out = &mut onehot[i * k * s..(i + 1) * k * s];
        for v in 0..s {
            let mut best = 0;
            for c in 1..k {
                if img[c * s + v] > img[best * s + v] {
                    best = c;
                }
            }
            if k > 0 {
                out[best * s + v] = 1.0;
            }
        }
    }
    let taps = match window {
        NaclWindow::Mean => vec![1.0; kernel],
        NaclWindow::Gaussian { sigma } => gaussian_taps(kernel, sigma),
    };
    filter_separable(&mut onehot, spatial, &taps, Border::InImage);
    from_f64_like(onehot, &dims, target)
}

impl Nacl {
    /// The penalty `mean_{i,k} |τ − l|` (or squared) alone, for a given `τ`.
    pub fn penalty(&self, logits: &Tensor, tau: &Tensor) -> candle_core::Result<Tensor> {
        let d = (tau - logits)?;
        match self.norm {
            NaclNorm::L1 => d.abs()?.mean_all(),
            NaclNorm::L2 => d.sqr()?.mean_all(),
        }
    }
}

impl SegLoss for Nacl {
    fn forward(&self, logits: &Tensor, target: &Tensor) -> candle_core::Result<Tensor> {
        check_pair("NACL", logits, target)?;
        let tau = nacl_proportions(target, self.kernel, self.window)?.to_dtype(logits.dtype())?;
        let ce = soft_ce(logits, target)?;
        ce + (self.penalty(logits, &tau)? * self.alpha)?
    }
}
