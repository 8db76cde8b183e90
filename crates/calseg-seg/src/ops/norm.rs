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
use super::simd::{avx2_dispatch, lane_sum};
pub(crate) use Dims as NormDims;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType, bail};
use rayon::prelude::*;

/// Mean and `1/√(var + eps)` of one group, in f64 (two passes for accuracy).
#[inline(always)]
fn stats<T: WithDType>(block: &[T], eps: f64) -> (f64, f64) {
    let m = block.len().max(1) as f64;
    let mean = lane_sum(block, |v| v) / m;
    let var = lane_sum(block, |v| (v - mean) * (v - mean)) / m;
    (mean, 1.0 / (var + eps).sqrt())
}

/// Shape facts of an `(n, c, …)` input split into `groups`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dims {
    c: usize,
    s: usize,
    groups: usize,
}

impl Dims {
    pub(crate) fn of(d: &[usize], groups: usize) -> Result<Self> {
        if d.len() < 3 {
            bail!("group norm: expected (n, c, …), got {d:?}");
        }
        let c = d[1];
        if groups == 0 || !c.is_multiple_of(groups) {
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
    pub(crate) fn run<T: WithDType>(&self, d: Dims, x: &[T], gamma: &[T], beta: &[T]) -> Vec<T> {
        let mut y = vec![T::from_f64(0.0); x.len()];
        let blk = d.cg() * d.s;
        y.par_chunks_mut(blk)
            .zip(x.par_chunks(blk))
            .enumerate()
            .for_each(|(ng, (yb, xb))| {
                fwd_block_d(self, d, ng, xb, yb, gamma, beta);
            });
        y
    }
}

/// One (image, group) block `ng` of the forward pass: `yb = relu?((xb − μ)·γr + β)`.
#[inline(always)]
fn fwd_block<T: WithDType>(
    op: &GroupNormOp,
    d: Dims,
    ng: usize,
    xb: &[T],
    yb: &mut [T],
    gamma: &[T],
    beta: &[T],
) {
    let (mean, r) = stats(xb, op.eps);
    let c0 = (ng % d.groups) * d.cg();
    for (j, (yc, xc)) in yb.chunks_mut(d.s).zip(xb.chunks(d.s)).enumerate() {
        // y = (x − μ)·a + β with a = γ·r (subtracting first keeps groups
        // of near-constant values exact).
        let a = T::from_f64(gamma[c0 + j].to_f64() * r);
        let (m, b) = (T::from_f64(mean), beta[c0 + j]);
        let zero = T::from_f64(0.0);
        if op.relu {
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
}

avx2_dispatch! {
    /// [`fwd_block`], with AVX2 + FMA when available.
    fn fwd_block_d<T: WithDType>(
        op: &GroupNormOp,
        d: Dims,
        ng: usize,
        xb: &[T],
        yb: &mut [T],
        gamma: &[T],
        beta: &[T],
    ) => fwd_block
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
pub(crate) struct GroupNormBwdOp {
    pub fwd: GroupNormOp,
    pub gamma: Vec<f64>,
}

/// `(Σ g, Σ g·x)` over one channel in f64 lanes, with `g = dy·[y > 0]` under ReLU.
#[inline(always)]
fn channel_sums<T: WithDType>(x: &[T], y: &[T], dy: &[T], relu: bool) -> (f64, f64) {
    let (mut sg, mut sgx) = ([0.0f64; 8], [0.0f64; 8]);
    let zero = T::from_f64(0.0);
    let n8 = x.len().min(y.len()).min(dy.len()) / 8 * 8;
    let (xb, xt) = x.split_at(n8);
    let (yb, yt) = y.split_at(n8);
    let (gb, gt) = dy.split_at(n8);
    let chunks = xb
        .chunks_exact(8)
        .zip(yb.chunks_exact(8))
        .zip(gb.chunks_exact(8));
    for ((xc, yc), gc) in chunks {
        let lanes = sg.iter_mut().zip(sgx.iter_mut()).zip(xc).zip(yc).zip(gc);
        for ((((s, sx), xv), yv), gv) in lanes {
            let (yv, gv) = (*yv, *gv);
            let g = if relu && yv <= zero { zero } else { gv };
            let g = g.to_f64();
            *s += g;
            *sx += g * xv.to_f64();
        }
    }
    let (mut a, mut b) = (sg.iter().sum::<f64>(), sgx.iter().sum::<f64>());
    for ((xv, yv), gv) in xt.iter().zip(yt).zip(gt) {
        let g = if relu && *yv <= zero {
            0.0
        } else {
            gv.to_f64()
        };
        a += g;
        b += g * xv.to_f64();
    }
    (a, b)
}

/// One (image, group) block `ng`: writes its `dx` into `dxb` and returns
/// `(Σ g·x̂, Σ g)` of each of its channels (their dγ, dβ contributions).
#[inline(always)]
fn block_bwd<T: WithDType>(
    op: &GroupNormBwdOp,
    d: Dims,
    ng: usize,
    x: &[T],
    y: &[T],
    dy: &[T],
    dxb: &mut [T],
) -> Vec<(f64, f64)> {
    let zero = T::from_f64(0.0);
    let relu = op.fwd.relu;
    let blk = d.cg() * d.s;
    let r0 = ng * blk;
    let (xb, yb, gb) = (&x[r0..r0 + blk], &y[r0..r0 + blk], &dy[r0..r0 + blk]);
    let (mean, r) = stats(xb, op.fwd.eps);
    let c0 = (ng % d.groups) * d.cg();
    let mut sums = Vec::with_capacity(d.cg());
    let (mut sh, mut shx) = (0.0, 0.0);
    for j in 0..d.cg() {
        let rg = j * d.s..(j + 1) * d.s;
        let (sg, sgx) = channel_sums(&xb[rg.clone()], &yb[rg.clone()], &gb[rg], relu);
        let sgxh = r * (sgx - mean * sg);
        let gm = op.gamma[c0 + j];
        sh += gm * sg;
        shx += gm * sgxh;
        sums.push((sgxh, sg));
    }
    let m = blk as f64;
    let (mh, mhx) = (sh / m, shx / m);
    let bb = -r * r * mhx;
    let cc = -r * mh - bb * mean;
    let (bt, ct) = (T::from_f64(bb), T::from_f64(cc));
    for j in 0..d.cg() {
        let at = T::from_f64(r * op.gamma[c0 + j]);
        let rg = j * d.s..(j + 1) * d.s;
        let (xc, yc, gc) = (&xb[rg.clone()], &yb[rg.clone()], &gb[rg.clone()]);
        let out = dxb[rg].iter_mut().zip(xc).zip(yc).zip(gc);
        if relu {
            for (((o, xv), yv), gv) in out {
                // Load first: a select of two loaded values vectorises, a load
                // inside a branch does not.
                let (xv, yv, gv) = (*xv, *yv, *gv);
                let g = if yv > zero { gv } else { zero };
                *o = at * g + bt * xv + ct;
            }
        } else {
            for (((o, xv), _), gv) in out {
                *o = at * *gv + bt * *xv + ct;
            }
        }
    }
    sums
}

avx2_dispatch! {
    /// [`block_bwd`], with AVX2 + FMA when available.
    fn bwd_block_d<T: WithDType>(
        op: &GroupNormBwdOp,
        d: Dims,
        ng: usize,
        x: &[T],
        y: &[T],
        dy: &[T],
        dxb: &mut [T],
    ) -> Vec<(f64, f64)> => block_bwd
}

impl GroupNormBwdOp {
    /// Per (image, group) block: with `Sg_c = Σ g`, `Sgx_c = Σ g·x` per channel,
    /// `Σ g·x̂ = r·(Sgx_c − μ·Sg_c)`, and `dx = A_c·g + B·x + C` with
    /// `A_c = r·γ_c`, `B = −r²·mean(h·x̂)`, `C = −r·mean(h) − B·μ` (one FMA pass).
    fn run<T: WithDType>(&self, d: Dims, x: &[T], y: &[T], dy: &[T]) -> Vec<T> {
        let mut out = vec![T::from_f64(0.0); x.len() + 2 * d.c];
        let blk = d.cg() * d.s;
        let (dx, params) = out.split_at_mut(x.len());
        // Per (image, group): (dγ, dβ) of each of its channels.
        let partials: Vec<Vec<(f64, f64)>> = dx
            .par_chunks_mut(blk)
            .enumerate()
            .map(|(ng, dxb)| bwd_block_d(self, d, ng, x, y, dy, dxb))
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
