//! Fast CPU operators for candle: convolution and transposed convolution (2D/3D),
//! fused group normalisation + ReLU, and average pooling — forward **and** backward as
//! candle custom ops, so `loss.backward()` uses them transparently.
//!
//! Why: candle 0.11's CPU `conv2d` runs at 3–4 GFLOP/s, its input gradient goes through a
//! naive `conv_transpose2d` loop, and composed normalisation layers are ~10
//! single-threaded element-wise ops each. Here convolutions are im2col/vol2col tiles
//! (kept in L2) times the `gemm` crate's micro-kernels, parallel over (image, tile) with
//! rayon; see [`kernels`](self) for the formulas.
//!
//! All functions take `f32` or `f64` tensors in `(n, c, h, w)` (2D) or `(n, c, d, h, w)`
//! (3D) layout, with candle-nn/PyTorch weight layouts: conv `(out, in, k…)`, transposed
//! conv `(in, out, k…)`. On a non-CPU device they fall back to [`stock`] (candle's ops).
//!
//! ```
//! use candle_core::{Device, Tensor};
//! # fn main() -> candle_core::Result<()> {
//! let dev = Device::Cpu;
//! let x = Tensor::ones((1, 2, 5, 5), candle_core::DType::F32, &dev)?;
//! let w = Tensor::ones((4, 2, 3, 3), candle_core::DType::F32, &dev)?;
//! let b = Tensor::zeros(4, candle_core::DType::F32, &dev)?;
//! let y = calseg_seg::ops::conv(&x, &w, Some(&b), 1, 1)?; // "same" 3×3 convolution
//! assert_eq!(y.dims(), &[1, 4, 5, 5]);
//! // centre pixel: 2 channels × 9 taps of 1·1
//! assert_eq!(y.get(0)?.get(0)?.get(2)?.get(2)?.to_scalar::<f32>()?, 18.0);
//! # Ok(()) }
//! ```

mod conv;
pub(crate) mod geom;
pub(crate) mod kernels;
mod norm;
mod pool;
pub mod stock;

use candle_core::{Result, Tensor};
use conv::{Conf, ConvOp, ConvTransposeOp};
pub(crate) use conv::{slice as slice_of, with_float as with_float_dtype};

/// Convolution `y = x ⊛ w + b` with the same `stride` and zero `padding` on every
/// spatial axis (no dilation, no groups).
///
/// Shapes: `x (n, ci, [d,] h, w)`, `w (co, ci, [kd,] kh, kw)`, `b (co)` →
/// `y (n, co, [od,] oh, ow)` with `o = (i + 2·padding − k) / stride + 1`.
pub fn conv(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return stock::conv(x, w, b, stride, padding);
    }
    apply_with_bias(x, w, b, ConvOp(Conf { stride, padding }))
}

/// Transposed convolution (the adjoint of [`conv`] with respect to its input) plus bias.
///
/// Shapes: `x (n, ci, [d,] h, w)`, `w (ci, co, [kd,] kh, kw)`, `b (co)` →
/// `y (n, co, …)` with `o = (i − 1)·stride − 2·padding + k` (no output padding).
pub fn conv_transpose(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return stock::conv_transpose(x, w, b, stride, padding);
    }
    apply_with_bias(x, w, b, ConvTransposeOp(Conf { stride, padding }))
}

/// Applies a convolution-like op as `CustomOp3` (with bias) or `CustomOp2` (without).
fn apply_with_bias<Op>(x: &Tensor, w: &Tensor, b: Option<&Tensor>, op: Op) -> Result<Tensor>
where
    Op: candle_core::CustomOp2 + candle_core::CustomOp3 + Send + Sync + 'static,
{
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match b {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, op),
        None => x.apply_op2(&w, op),
    }
}

/// Group normalisation over `groups` groups of channels, per image, with per-channel
/// scale `gamma (c)` and shift `beta (c)`, optionally fused with a ReLU:
/// `y = relu?((x − μ_g)/√(σ²_g + eps) · γ + β)`. Any rank ≥ 3; `groups = c` is
/// instance normalisation.
pub fn group_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
    eps: f64,
    relu: bool,
) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return stock::group_norm(x, gamma, beta, groups, eps, relu);
    }
    let op = norm::GroupNormOp { groups, eps, relu };
    x.contiguous()?
        .apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)
}

/// Average pooling with kernel = stride = `k` on every spatial axis (2D or 3D):
/// `(n, c, i…) → (n, c, ⌊i/k⌋…)`.
pub fn avg_pool(x: &Tensor, k: usize) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return stock::avg_pool(x, k);
    }
    x.contiguous()?.apply_op1(pool::AvgPoolOp { k })
}
