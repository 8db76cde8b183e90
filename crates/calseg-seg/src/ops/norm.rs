//! Fused group normalisation (+ optional ReLU) as one candle custom op with an analytic
//! backward, replacing the ~10 element-wise candle ops (each single-threaded, each with
//! its own backward) of a composed GroupNorm.
//!
//! For a group `G` of `m = (C/groups)·S` values of image `n` (channels of a group are
//! contiguous in `NC…` layout):
//!
//! ```text
//! μ = mean_G(x),  σ² = mean_G((x − μ)²),  r = 1/√(σ² + ε),  x̂ = (x − μ)·r
//! y = relu?(γ_c·x̂ + β_c)
//! ```
//!
//! Backward, with `g = dy·[y > 0]` (the ReLU mask, or 1) and `h = γ_c·g`:
//!
//! ```text
//! dβ_c = Σ_{n,s} g,   dγ_c = Σ_{n,s} g·x̂,   dx = r·(h − mean_G(h) − x̂·mean_G(h·x̂))
//! ```
//!
//! Instance norm is the special case `groups = C`.

use super::conv::{slice, with_float};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType, bail};
use rayon::prelude::*;

/// Mean and `1/√(var + eps)` of one group, in f64 (two passes for accuracy).
fn stats<T: WithDType>(block: &[T], eps: f64) -> (f64, f64) {
    let m = block.len().max(1) as f64;
    let mean = sum_f64(block.iter().map(|v| v.to_f64())) / m;
    let var = sum_f64(block.iter().map(|v| {
        let d = v.to_f64() - mean;
        d * d
    })) / m;
    (mean, 1.0 / (var + eps).sqrt())
}

/// Sum with four independent accumulators (lets the compiler vectorise the f64 adds).
#[inline]
fn sum_f64(it: impl Iterator<Item = f64>) -> f64 {
    let mut acc = [0.0f64; 4];
    for (i, v) in it.enumerate() {
        acc[i & 3] += v;
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3])
}

/// Shape facts of an `(n, c, …)` input split into `groups`.
#[derive(Clone, Copy, Debug)]
struct Dims {
    c: usize,
    s: usize,
    groups: usize,
}

impl Dims {
    fn of(d: &[usize], groups: usize) -> Result<Self> {
        if d.len() < 3 {
            bail!("group norm: expected (n, c, …), got {d:?}");
        }
        let c = d[1];
        if groups == 0 || c % groups != 0 {
            bail!("group norm: {c} channels cannot be split into {groups} groups");
        }
        Ok(Self {
            c,
            s: d[2..].iter().product(),
            groups,
        })
    }
    fn cg(&self) -> usize {
        self.c / self.groups
    }
}

/// Forward op: `(x, γ, β) → y`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GroupNormOp {
    pub groups: usize,
    pub eps: f64,
    pub relu: bool,
}

impl GroupNormOp {
    fn run<T: WithDType>(&self, d: Dims, x: &[T], gamma: &[T], beta: &[T]) -> Vec<T> {
        let mut y = vec![T::from_f64(0.0); x.len()];
        let blk = d.cg() * d.s;
        y.par_chunks_mut(blk)
            .zip(x.par_chunks(blk))
            .enumerate()
            .for_each(|(ng, (yb, xb))| {
                let (mean, r) = stats(xb, self.eps);
                let c0 = (ng % d.groups) * d.cg();
                for (j, (yc, xc)) in yb.chunks_mut(d.s).zip(xb.chunks(d.s)).enumerate() {
                    // y = (x − μ)·a + β with a = γ·r (subtracting first keeps groups
                    // of near-constant values exact).
                    let a = T::from_f64(gamma[c0 + j].to_f64() * r);
                    let (m, b) = (T::from_f64(mean), beta[c0 + j]);
                    let zero = T::from_f64(0.0);
                    if self.relu {
                        for (o, v) in yc.iter_mut().zip(xc) {
                            let t = (*v - m) * a + b;
                            *o = if t > zero { t } else { zero };
                        }
                    } else {
                        for (o, v) in yc.iter_mut().zip(xc) {
                            *o = (*v - m) * a + b;
                        }
                    }
                }
            });
        y
    }
}

impl CustomOp3 for GroupNormOp {
    fn name(&self) -> &'static str {
        "calseg-group-norm"
    }
    #[allow(clippy::too_many_arguments)]
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = Dims::of(l1.dims(), self.groups)?;
        if l2.dims() != [d.c] || l3.dims() != [d.c] {
            bail!(
                "group norm: γ {:?} / β {:?} must be [{}]",
                l2.dims(),
                l3.dims(),
                d.c
            );
        }
        if s1.dtype() != s2.dtype() || s1.dtype() != s3.dtype() {
            bail!("group norm: dtype mismatch");
        }
        with_float!(s1.dtype(), "group norm", |T| {
            let y = self.run(
                d,
                slice::<T>(s1, l1)?,
                slice::<T>(s2, l2)?,
                slice::<T>(s3, l3)?,
            );
            Ok((T::to_cpu_storage_owned(y), l1.shape().clone()))
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let gam = gamma.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let op = GroupNormBwdOp {
            fwd: *self,
            gamma: gam,
        };
        let flat = x.apply_op3_no_bwd(y, &dy.contiguous()?, &op)?;
        let (numel, c) = (x.elem_count(), gamma.elem_count());
        let dx = flat.narrow(0, 0, numel)?.reshape(x.shape())?;
        let dgamma = flat.narrow(0, numel, c)?;
        let dbeta = flat.narrow(0, numel + c, c)?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// Backward op: `(x, y, dy) → [dx (flattened) | dγ | dβ]` in one buffer.
#[derive(Clone, Debug)]
struct GroupNormBwdOp {
    fwd: GroupNormOp,
    gamma: Vec<f64>,
}

impl GroupNormBwdOp {
    fn run<T: WithDType>(&self, d: Dims, x: &[T], y: &[T], dy: &[T]) -> Vec<T> {
        let zero = T::from_f64(0.0);
        let mut out = vec![zero; x.len() + 2 * d.c];
        let blk = d.cg() * d.s;
        let (dx, params) = out.split_at_mut(x.len());
        // Per (image, group): the group's (dγ, dβ) partial sums, one pair per channel.
        let partials: Vec<Vec<(f64, f64)>> = dx
            .par_chunks_mut(blk)
            .enumerate()
            .map(|(ng, dxb)| {
                let xb = &x[ng * blk..(ng + 1) * blk];
                let yb = &y[ng * blk..(ng + 1) * blk];
                let gb = &dy[ng * blk..(ng + 1) * blk];
                let (mean, r) = stats(xb, self.fwd.eps);
                let c0 = (ng % d.groups) * d.cg();
                let masked = |k: usize| -> f64 {
                    if self.fwd.relu && yb[k] <= zero {
                        0.0
                    } else {
                        gb[k].to_f64()
                    }
                };
                let mut sums = Vec::with_capacity(d.cg());
                let (mut sh, mut shx) = (0.0, 0.0);
                for j in 0..d.cg() {
                    let (mut sg, mut sgx) = (0.0, 0.0);
                    for k in j * d.s..(j + 1) * d.s {
                        let g = masked(k);
                        sg += g;
                        sgx += g * (xb[k].to_f64() - mean) * r;
                    }
                    let gm = self.gamma[c0 + j];
                    sh += gm * sg;
                    shx += gm * sgx;
                    sums.push((sgx, sg));
                }
                let m = blk as f64;
                let (mh, mhx) = (sh / m, shx / m);
                for j in 0..d.cg() {
                    let gm = self.gamma[c0 + j];
                    for k in j * d.s..(j + 1) * d.s {
                        let xh = (xb[k].to_f64() - mean) * r;
                        dxb[k] = T::from_f64(r * (gm * masked(k) - mh - xh * mhx));
                    }
                }
                sums
            })
            .collect();
        let (dgamma, dbeta) = params.split_at_mut(d.c);
        let mut acc = vec![(0.0f64, 0.0f64); d.c];
        for (ng, sums) in partials.iter().enumerate() {
            let c0 = (ng % d.groups) * d.cg();
            for (j, (sgx, sg)) in sums.iter().enumerate() {
                acc[c0 + j].0 += sgx;
                acc[c0 + j].1 += sg;
            }
        }
        for (cidx, (a, b)) in acc.iter().enumerate() {
            dgamma[cidx] = T::from_f64(*a);
            dbeta[cidx] = T::from_f64(*b);
        }
        out
    }
}

impl CustomOp3 for GroupNormBwdOp {
    fn name(&self) -> &'static str {
        "calseg-group-norm-bwd"
    }
    #[allow(clippy::too_many_arguments)]
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = Dims::of(l1.dims(), self.fwd.groups)?;
        if l2.dims() != l1.dims() || l3.dims() != l1.dims() || self.gamma.len() != d.c {
            bail!("group norm backward: shapes differ");
        }
        with_float!(s1.dtype(), "group norm backward", |T| {
            let out = self.run(
                d,
                slice::<T>(s1, l1)?,
                slice::<T>(s2, l2)?,
                slice::<T>(s3, l3)?,
            );
            let len = out.len();
            Ok((T::to_cpu_storage_owned(out), Shape::from(len)))
        })
    }
}
