//! Spatially varying label smoothing (SVLS; Islam & Glocker, IPMI 2021).

use super::{
    Border, SegLoss, check_pair, filter_separable, from_f64_like, gaussian_taps, soft_ce,
    to_f64_vec,
};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// SVLS: soft cross-entropy against the target smoothed over its spatial neighbourhood.
///
/// With Gaussian weights `g_n = exp(−‖n − c‖² / (2σ²))` over the `kernel^D` neighbourhood
/// of voxel `c` (`D` = number of spatial axes: 3×3 in 2D, 3×3×3 in 3D by default):
///
/// ```text
/// y_svls(c) = ½·y(c) + ½·Σ_{n≠c} w_n·y(n),      w_n = g_n / Σ_{n≠c} g_n
/// L = mean_voxels −Σ_k y_svls,k · log softmax(l)_k
/// ```
///
/// i.e. the Gaussian kernel with its centre replaced by the sum of the other weights,
/// normalised. Borders use replicate padding (a voxel outside the image takes the value of
/// the nearest border voxel). `y_svls` stays a distribution when `y` is one. Shapes:
/// logits and targets `(n, K, *spatial)`. Defaults: kernel 3, σ = 1.
///
/// ```
/// use calseg_seg::loss::svls_weights;
/// // 2D, k = 3, σ = 1: edge neighbours e^{-1/2}, corners e^{-1}, normalised to ½.
/// let w = svls_weights(3, 1.0, 2);
/// let s = 4.0 * (-0.5f64).exp() + 4.0 * (-1.0f64).exp();
/// assert!((w[4] - 0.5).abs() < 1e-15);
/// assert!((w[1] - 0.5 * (-0.5f64).exp() / s).abs() < 1e-15);
/// assert!((w[0] - 0.5 * (-1.0f64).exp() / s).abs() < 1e-15);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Svls {
    /// Neighbourhood size per axis (odd).
    pub kernel: usize,
    /// Gaussian σ (> 0), in voxels.
    pub sigma: f64,
}

impl Default for Svls {
    fn default() -> Self {
        Svls {
            kernel: 3,
            sigma: 1.0,
        }
    }
}

/// The full SVLS kernel (`kernel^dims` weights, row-major, summing to 1: ½ at the centre,
/// `½·g_n / Σ_{n≠c} g_n` elsewhere). For inspection and tests; the loss filters
/// separably. A kernel of size 1 (or `dims = 0`) is `[1]`.
pub fn svls_weights(kernel: usize, sigma: f64, dims: usize) -> Vec<f64> {
    let h = gaussian_taps(kernel, sigma);
    let total = kernel.pow(dims as u32);
    let mut g: Vec<f64> = (0..total)
        .map(|mut idx| {
            let mut w = 1.0;
            for _ in 0..dims {
                w *= h[idx % kernel];
                idx /= kernel;
            }
            w
        })
        .collect();
    let c = total / 2;
    let others: f64 = g.iter().sum::<f64>() - g[c];
    if others <= 0.0 {
        return vec![1.0];
    }
    for (i, w) in g.iter_mut().enumerate() {
        *w = if i == c { 0.5 } else { 0.5 * *w / others };
    }
    g
}

/// The SVLS target `y_svls` of `target (n, K, *spatial)` (same shape, dtype and device),
/// computed on the CPU in f64: the Gaussian is separable, so
/// `Σ_{n≠c} g_n y(n) = (G ⊛ y)(c) − y(c)` with `G ⊛ y` three 1D passes (replicate
/// padding is per axis too), and `Σ_{n≠c} g_n = (Σ_i h_i)^D − 1`.
pub fn svls_smooth(target: &Tensor, kernel: usize, sigma: f64) -> candle_core::Result<Tensor> {
    let dims = target.dims().to_vec();
    if dims.len() < 3 || kernel <= 1 {
        return Ok(target.detach());
    }
    let spatial = &dims[2..];
    let h = gaussian_taps(kernel, sigma);
    let others = h.iter().sum::<f64>().powi(spatial.len() as i32) - 1.0;
    let y = to_f64_vec(target)?;
    let mut f = y.clone();
    filter_separable(&mut f, spatial, &h, Border::Replicate);
    for (fv, yv) in f.iter_mut().zip(&y) {
        *fv = 0.5 * yv + 0.5 * (*fv - yv) / others;
    }
    from_f64_like(f, &dims, target)
}

impl SegLoss for Svls {
    fn forward(&self, logits: &Tensor, target: &Tensor) -> candle_core::Result<Tensor> {
        check_pair("SVLS", logits, target)?;
        let t = svls_smooth(target, self.kernel, self.sigma)?;
        soft_ce(logits, &t.to_dtype(logits.dtype())?)
    }
}
