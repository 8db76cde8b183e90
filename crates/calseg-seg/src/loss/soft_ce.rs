//! Soft-target cross-entropy, the loss of label-smoothing methods:
//!
//! ```text
//! L = (1/V) Σ_voxels −Σ_k t_k · log softmax(l)_k,     V = n · (number of voxels per image)
//! ∂L/∂l_k = (softmax(l)_k · Σ_j t_j − t_k) / V
//! ```
//!
//! [`soft_ce`] is one fused candle custom op on the CPU (log-sum-exp per voxel over the
//! class axis, which is strided in `(n, k, …)` layout, accumulated in f64, parallel over
//! images); [`soft_ce_stock`] is the same loss from candle's ops (used on other devices
//! and as the reference in tests).

use crate::ops::{slice_of, with_float_dtype};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, WithDType, bail};
use rayon::prelude::*;

/// Soft-target cross-entropy of `logits (n, k, …)` against `targets` of the same shape
/// (per-voxel class distributions, e.g. one-hot or smoothed labels); a scalar tensor.
///
/// ```
/// use candle_core::{Device, Tensor};
/// # fn main() -> candle_core::Result<()> {
/// let dev = Device::Cpu;
/// // One voxel, two classes with equal logits: L = log 2 whatever the target.
/// let l = Tensor::new(&[[[0.0f32]], [[0.0f32]]], &dev)?.reshape((1, 2, 1))?;
/// let t = Tensor::new(&[1.0f32, 0.0], &dev)?.reshape((1, 2, 1))?;
/// let loss = calseg_seg::loss::soft_ce(&l, &t)?.to_scalar::<f32>()?;
/// assert!((loss - 2f32.ln()).abs() < 1e-6);
/// # Ok(()) }
/// ```
pub fn soft_ce(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if !logits.device().is_cpu() {
        return soft_ce_stock(logits, targets);
    }
    logits
        .contiguous()?
        .apply_op2(&targets.contiguous()?, SoftCe)
}

/// [`soft_ce`] composed from candle ops: `−mean_voxels(Σ_k t · log_softmax(l, 1))`.
pub fn soft_ce_stock(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let ls = candle_nn::ops::log_softmax(logits, 1)?;
    (targets * ls)?.sum(1)?.mean_all()?.neg()
}

/// Shape facts `(n, k, voxels per image)`.
fn dims(l: &Layout, t: &Layout) -> Result<(usize, usize, usize)> {
    let d = l.dims();
    if d.len() < 2 || d != t.dims() {
        bail!(
            "soft CE: logits {d:?} and targets {:?} must have the same (n, k, …) shape",
            t.dims()
        );
    }
    Ok((d[0], d[1], d[2..].iter().product()))
}

/// Forward op `(logits, targets) → L` (scalar).
#[derive(Clone, Copy, Debug)]
struct SoftCe;

/// Visits every voxel of image `img`: `f(s, max logit, log Σ exp(l − max))`.
fn per_voxel<T: WithDType>(l: &[T], k: usize, s_all: usize, mut f: impl FnMut(usize, f64, f64)) {
    let mut mx = vec![f64::NEG_INFINITY; s_all];
    for c in 0..k {
        for (m, v) in mx.iter_mut().zip(&l[c * s_all..(c + 1) * s_all]) {
            *m = m.max(v.to_f64());
        }
    }
    let mut se = vec![0.0f64; s_all];
    for c in 0..k {
        for ((e, v), m) in se.iter_mut().zip(&l[c * s_all..(c + 1) * s_all]).zip(&mx) {
            *e += (v.to_f64() - m).exp();
        }
    }
    for (s, (m, e)) in mx.iter().zip(&se).enumerate() {
        f(s, *m, e.ln());
    }
}

impl CustomOp2 for SoftCe {
    fn name(&self) -> &'static str {
        "calseg-soft-ce"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, k, s_all) = dims(l1, l2)?;
        if s1.dtype() != s2.dtype() {
            bail!("soft CE: dtype mismatch");
        }
        with_float_dtype!(s1.dtype(), "soft CE", |T| {
            let (l, t) = (slice_of::<T>(s1, l1)?, slice_of::<T>(s2, l2)?);
            let img = k * s_all;
            let total: f64 = (0..n)
                .into_par_iter()
                .map(|i| {
                    let (li, ti) = (&l[i * img..(i + 1) * img], &t[i * img..(i + 1) * img]);
                    let mut acc = 0.0;
                    per_voxel(li, k, s_all, |s, m, lse| {
                        for c in 0..k {
                            let idx = c * s_all + s;
                            acc += ti[idx].to_f64() * (m + lse - li[idx].to_f64());
                        }
                    });
                    acc
                })
                .sum();
            let loss = total / (n * s_all).max(1) as f64;
            Ok((
                T::to_cpu_storage_owned(vec![T::from_f64(loss)]),
                Shape::from(()),
            ))
        })
    }
    fn bwd(
        &self,
        l: &Tensor,
        t: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let scale = grad.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        let dl = l.apply_op2_no_bwd(t, &SoftCeGrad { scale })?;
        // Gradient w.r.t. the targets, only if they need one: −log softmax(l) · scale / V.
        let dt = if t.track_op() {
            let v = (l.elem_count() / l.dim(1)?.max(1)).max(1) as f64;
            Some((candle_nn::ops::log_softmax(l, 1)? * (-scale / v))?)
        } else {
            None
        };
        Ok((Some(dl), dt))
    }
}

/// Backward op `(logits, targets) → scale · (softmax(l)·Σt − t) / V`.
#[derive(Clone, Copy, Debug)]
struct SoftCeGrad {
    scale: f64,
}

impl CustomOp2 for SoftCeGrad {
    fn name(&self) -> &'static str {
        "calseg-soft-ce-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, k, s_all) = dims(l1, l2)?;
        with_float_dtype!(s1.dtype(), "soft CE backward", |T| {
            let (l, t) = (slice_of::<T>(s1, l1)?, slice_of::<T>(s2, l2)?);
            let img = k * s_all;
            let f = self.scale / (n * s_all).max(1) as f64;
            let mut out = vec![T::from_f64(0.0); l.len()];
            if img > 0 {
                out.par_chunks_mut(img).enumerate().for_each(|(i, oi)| {
                    let (li, ti) = (&l[i * img..(i + 1) * img], &t[i * img..(i + 1) * img]);
                    per_voxel(li, k, s_all, |s, m, lse| {
                        let tsum: f64 = (0..k).map(|c| ti[c * s_all + s].to_f64()).sum();
                        for c in 0..k {
                            let idx = c * s_all + s;
                            let p = (li[idx].to_f64() - m - lse).exp();
                            oi[idx] = T::from_f64(f * (p * tsum - ti[idx].to_f64()));
                        }
                    });
                });
            }
            Ok((T::to_cpu_storage_owned(out), l1.shape().clone()))
        })
    }
}
