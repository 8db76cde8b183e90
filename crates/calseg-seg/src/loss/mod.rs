//! Segmentation losses, one file each, and the [`LossConfig`] that builds them.
//!
//! Every loss takes logits `(n, k, *spatial)` (k classes, any number of spatial axes:
//! `(n, k, h, w)` in 2D, `(n, k, d, h, w)` in 3D) and target distributions of the same
//! shape, and returns a scalar tensor that candle can differentiate. Losses are averaged
//! over voxels (and batch). Training targets need no gradients, so the target transforms
//! (SVLS smoothing, NACL class proportions) run in plain Rust on the CPU (f64, parallel
//! over channels with rayon) and come back as a constant tensor of the logits' dtype and
//! device. The other losses are candle expressions in the target too: if a target tracks
//! gradients (e.g. a learned soft target for `soft`), CE, soft, LS, focal, MbLS's and
//! NACL's CE term and Dice pass gradients to it; the SVLS and NACL transforms do not.
//!
//! | method | struct | loss |
//! |---|---|---|
//! | `ce` | [`CrossEntropy`] | soft CE against one-hot targets |
//! | `soft` | [`SoftTargetCe`] | soft CE against given soft targets (CALSeg's `Y_s`) |
//! | `ls` | [`LabelSmoothing`] | soft CE against `(1−ε)·y + ε/K` |
//! | `focal` | [`Focal`] | `Σ_k t_k·(1−p_k)^γ·(−log p_k)` |
//! | `svls` | [`Svls`] | soft CE against the spatially smoothed target |
//! | `mbls` | [`Mbls`] | CE + λ·mean ReLU(max_j l_j − l_k − m) |
//! | `nacl` | [`Nacl`] | CE + α·mean ‖τ(y) − l‖ |
//! | (add-on) | [`SoftDice`], [`WithDice`] | soft Dice, `loss + w·Dice` |

mod ce;
mod dice;
mod focal;
mod label_smoothing;
mod mbls;
mod method;
mod nacl;
mod soft_ce;
mod svls;

pub use ce::{CrossEntropy, SoftTargetCe};
pub use dice::{SoftDice, WithDice};
pub use focal::Focal;
pub use label_smoothing::LabelSmoothing;
pub use mbls::Mbls;
pub use method::{LossConfig, Method};
pub use nacl::{Nacl, NaclNorm, NaclWindow, nacl_proportions};
pub use soft_ce::{soft_ce, soft_ce_stock};
pub use svls::{Svls, svls_smooth, svls_weights};

use candle_core::{DType, Device, Tensor, bail};
use rayon::prelude::*;

/// A training loss of logits `(n, k, *spatial)` against target distributions of the same
/// shape (one-hot for hard labels, soft labels otherwise). Implemented by every method of
/// this module; the trainer only sees this trait.
pub trait SegLoss: Send + Sync + std::fmt::Debug {
    /// Scalar loss (a 0-d tensor candle can differentiate).
    fn forward(&self, logits: &Tensor, target: &Tensor) -> candle_core::Result<Tensor>;
}

/// Checks that logits and targets are `(n, k, …)` of the same shape; returns
/// `(n, k, spatial dims)`.
pub(crate) fn check_pair<'a>(
    what: &str,
    logits: &'a Tensor,
    target: &Tensor,
) -> candle_core::Result<(usize, usize, &'a [usize])> {
    let d = logits.dims();
    if d.len() < 2 || d != target.dims() {
        bail!(
            "{what}: logits {d:?} and targets {:?} must have the same (n, k, …) shape",
            target.dims()
        );
    }
    Ok((d[0], d[1], &d[2..]))
}

/// A tensor's values as a contiguous f64 vector (row-major), on the CPU.
pub(crate) fn to_f64_vec(t: &Tensor) -> candle_core::Result<Vec<f64>> {
    t.to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()
}

/// An f64 buffer of `shape` as a tensor of `like`'s dtype and device.
pub(crate) fn from_f64_like(
    v: Vec<f64>,
    shape: &[usize],
    like: &Tensor,
) -> candle_core::Result<Tensor> {
    Tensor::from_vec(v, shape, &Device::Cpu)?
        .to_dtype(like.dtype())?
        .to_device(like.device())
}

/// Un-normalised 1D Gaussian taps `h_i = exp(−(i − r)² / (2σ²))`, `i = 0..kernel`,
/// `r = kernel / 2` (centre tap 1).
pub(crate) fn gaussian_taps(kernel: usize, sigma: f64) -> Vec<f64> {
    let r = (kernel / 2) as f64;
    (0..kernel)
        .map(|i| {
            let d = i as f64 - r;
            (-d * d / (2.0 * sigma * sigma)).exp()
        })
        .collect()
}

/// How a separable filter treats the voxels outside the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Border {
    /// Replicate padding: the index is clamped to the image on every axis.
    Replicate,
    /// Only in-image voxels count: `Σ_in h_j x_j / Σ_in h_j` (zero padding renormalised
    /// by the in-image weight; the N-D weight is the product of the per-axis ones).
    InImage,
}

/// Filters every channel plane of `data` (planes of `Π spatial` voxels, row-major) with the
/// separable kernel `taps ⊗ taps ⊗ …` (one factor per spatial axis), in place, parallel
/// over planes. `taps` has odd length `2r + 1`, centred.
pub(crate) fn filter_separable(data: &mut [f64], spatial: &[usize], taps: &[f64], border: Border) {
    let plane: usize = spatial.iter().product();
    if plane == 0 || spatial.is_empty() || taps.len() <= 1 {
        return;
    }
    let r = taps.len() / 2;
    data.par_chunks_mut(plane).for_each(|p| {
        let mut line = Vec::new();
        for (a, &len) in spatial.iter().enumerate() {
            let stride: usize = spatial[a + 1..].iter().product();
            let outer = plane / (len * stride);
            line.resize(len, 0.0);
            for o in 0..outer {
                for s in 0..stride {
                    let base = o * len * stride + s;
                    for (i, v) in line.iter_mut().enumerate() {
                        *v = p[base + i * stride];
                    }
                    for i in 0..len {
                        let (mut acc, mut wsum) = (0.0, 0.0);
                        for (j, &h) in taps.iter().enumerate() {
                            let pos = i as isize + j as isize - r as isize;
                            match border {
                                Border::Replicate => {
                                    let q = pos.clamp(0, len as isize - 1) as usize;
                                    acc += h * line[q];
                                }
                                Border::InImage => {
                                    if pos >= 0 && (pos as usize) < len {
                                        acc += h * line[pos as usize];
                                        wsum += h;
                                    }
                                }
                            }
                        }
                        p[base + i * stride] = match border {
                            Border::Replicate => acc,
                            Border::InImage => acc / wsum,
                        };
                    }
                }
            }
        }
    });
}

/// Validates a spatial kernel size (odd, ≥ 1) for error messages of the configuration.
pub(crate) fn check_kernel(what: &str, kernel: usize) -> crate::Result<()> {
    if kernel == 0 || kernel.is_multiple_of(2) {
        return Err(crate::SegError::Config(format!(
            "{what}: kernel size must be odd and ≥ 1, got {kernel}"
        )));
    }
    Ok(())
}

/// Validates a finite value in `[lo, hi]`.
pub(crate) fn check_range(what: &str, v: f64, lo: f64, hi: f64) -> crate::Result<()> {
    if !v.is_finite() || v < lo || v > hi {
        return Err(crate::SegError::Config(format!(
            "{what} must be finite and in [{lo}, {hi}], got {v}"
        )));
    }
    Ok(())
}
