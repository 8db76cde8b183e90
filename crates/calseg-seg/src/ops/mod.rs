//! Fast CPU operators for candle: convolution and transposed convolution (2D/3D),
//! fused group normalisation + ReLU, and average pooling — forward **and** backward as
//! candle custom ops, so `loss.backward()` uses them transparently.
//!
//! Why: candle 0.11's CPU `conv2d` runs at 3–4 GFLOP/s, its input gradient goes through a
//! naive `conv_transpose2d` loop, and composed normalisation layers are ~10
//! single-threaded element-wise ops each. Here convolutions are im2col/vol2col tiles
//! (kept in L2) times the `gemm` crate's micro-kernels, parallel over (image, tile) with
//! rayon; see [`kernels`](self) for the formulas. Stride-1 convolutions on wide planes
//! (3D planes of at least 64², 2D rows of at least 128) skip the column matrix: one GEMM
//! per kernel tap over a shifted view of the padded input (`ops/shifted.rs`; the rule is
//! a fixed function of the shape, `CALSEG_CONV=im2col|shifted` overrides it for A/B
//! measurements). [`conv_norm`] runs a U-Net block's convolution → GroupNorm → ReLU as
//! one autograd node, so candle's backward never zero-fills and adds the gradient of the
//! convolution's output.
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
mod fused;
pub(crate) mod geom;
pub(crate) mod kernels;
mod norm;
mod pool;
mod shifted;
mod simd;
pub mod stock;

pub use simd::{SimdLevel, detected_simd_level, set_simd_level, simd_level};

use candle_core::{Result, Tensor};
use conv::{Conf, ConvCatOp, ConvOp, ConvTransposeOp};
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

/// `conv(cat([a, b], 1), w, bias)` without materialising the concatenation (the U-Net
/// decoder's skip connection): same result and gradients, but no `cat` copy forward and
/// no split copies backward.
///
/// Shapes: `a (n, ca, [d,] h, w)`, `b (n, cb, [d,] h, w)`, `w (co, ca + cb, [kd,] kh, kw)`,
/// `bias (co)` → `y (n, co, …)` as [`conv`].
pub fn conv_cat(
    a: &Tensor,
    b: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    if !a.device().is_cpu() {
        return stock::conv(&Tensor::cat(&[a, b], 1)?, w, bias, stride, padding);
    }
    let zero;
    let bias = match bias {
        Some(t) => t,
        None => {
            zero = Tensor::zeros(w.dim(0)?, w.dtype(), w.device())?;
            &zero
        }
    };
    let wb = Tensor::cat(&[&w.flatten_all()?, bias], 0)?;
    let op = ConvCatOp {
        conf: Conf { stride, padding },
        wdims: w.dims().to_vec(),
    };
    a.contiguous()?.apply_op3(&b.contiguous()?, &wb, op)
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

/// `relu?(group_norm(conv(x, w, b), γ, β))` — a 3×3 convolution followed by GroupNorm
/// (and ReLU) as one autograd node: the same values and gradients as the composition of
/// [`conv`] and [`group_norm`], without candle's zero-fill + add for the gradient of the
/// convolution's output (the block of a U-Net; see `ops/fused.rs`).
///
/// With `b2 = Some(b2)`, the input is the channel concatenation `cat([x, b2], 1)` (as
/// [`conv_cat`]). Shapes as [`conv`] and [`group_norm`]; `bias`, `gamma`, `beta` `(co)`.
#[allow(clippy::too_many_arguments)]
pub fn conv_norm(
    x: &Tensor,
    b2: Option<&Tensor>,
    w: &Tensor,
    bias: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
    eps: f64,
    relu: bool,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    if !x.device().is_cpu() {
        let z = match b2 {
            Some(b2) => stock::conv(&Tensor::cat(&[x, b2], 1)?, w, Some(bias), stride, padding)?,
            None => stock::conv(x, w, Some(bias), stride, padding)?,
        };
        return stock::group_norm(&z, gamma, beta, groups, eps, relu);
    }
    if !(4..=5).contains(&w.rank()) || w.rank() != x.rank() {
        candle_core::bail!(
            "conv_norm: weight {:?} and input {:?} must both be 2D (rank 4) or 3D (rank 5)",
            w.dims(),
            x.dims()
        );
    }
    let co = w.dim(0)?;
    for (name, t) in [("bias", bias), ("gamma", gamma), ("beta", beta)] {
        if t.dims() != [co] {
            candle_core::bail!(
                "conv_norm: {name} has shape {:?}, expected [{co}]",
                t.dims()
            );
        }
    }
    let p = Tensor::cat(&[&w.flatten_all()?, bias, gamma, beta], 0)?;
    let op = fused::ConvNormOp::new(
        Conf { stride, padding },
        w.dims().to_vec(),
        norm::GroupNormOp { groups, eps, relu },
    );
    match b2 {
        Some(b2) => x.contiguous()?.apply_op3(&b2.contiguous()?, &p, op),
        None => x.contiguous()?.apply_op2(&p, op),
    }
}

/// Average pooling with kernel = stride = `k` on every spatial axis (2D or 3D):
/// `(n, c, i…) → (n, c, ⌊i/k⌋…)`.
pub fn avg_pool(x: &Tensor, k: usize) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return stock::avg_pool(x, k);
    }
    x.contiguous()?.apply_op1(pool::AvgPoolOp { k })
}

/// Makes glibc's allocator keep freed memory for reuse instead of returning it to the
/// OS (Linux/glibc only; a no-op returning `false` elsewhere). Returns whether both
/// settings were applied.
///
/// Every candle op allocates a fresh output, and backward accumulates each gradient as
/// `zeros_like + add`; with glibc's defaults many of these multi-MiB buffers are
/// `mmap`ed and unmapped again (or trimmed from the heap top), so every step pays tens
/// of thousands of page faults (kernel page clearing). This sets `M_MMAP_THRESHOLD` to
/// 32 MiB (glibc's maximum) and `M_TRIM_THRESHOLD` to 1 GiB: buffers up to 32 MiB come
/// from the heap and freed heap memory is kept (up to 1 GiB above the working set).
///
/// It changes process-wide allocator settings, so it is left to the application (the
/// `calseg bench` command calls it); call it once at start-up, before allocating much.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::ffi::c_int;
        unsafe extern "C" {
            fn mallopt(param: c_int, value: c_int) -> c_int;
        }
        const M_TRIM_THRESHOLD: c_int = -1;
        const M_MMAP_THRESHOLD: c_int = -3;
        // SAFETY: glibc's `mallopt` only updates allocator parameters; both are valid
        // parameter numbers with in-range values (it returns 0 on a rejected value).
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
