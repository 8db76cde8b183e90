//! Average pooling with kernel = stride (2D and 3D, f32/f64) as a candle custom op with
//! its backward, parallel over (image, channel) planes.
//!
//! `y[z, y, x] = (1/k³) Σ_{a,b,e < k} x[z·k + a, y·k + b, x·k + e]` (`k²` and no depth in
//! 2D); output sizes are `⌊i / k⌋` (trailing voxels that do not fill a window are
//! dropped, as in PyTorch/candle). Backward spreads `dy / k³` over each window, zero on
//! the dropped voxels.

use super::conv::{out_dims, slice, spatial, with_float};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, WithDType, bail};
use rayon::prelude::*;

/// Kernel per axis for an input of `rank` (depth 1 in 2D).
fn kernel(rank: usize, k: usize) -> [usize; 3] {
    if rank == 4 { [1, k, k] } else { [k; 3] }
}

/// Forward op: `x (n, c, i…) → y (n, c, ⌊i/k⌋…)`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AvgPoolOp {
    pub k: usize,
}

fn pool_plane<T: WithDType>(xi: [usize; 3], k: [usize; 3], x: &[T], y: &mut [T]) {
    let o = [xi[0] / k[0], xi[1] / k[1], xi[2] / k[2]];
    let scale = 1.0 / (k[0] * k[1] * k[2]) as f64;
    for z in 0..o[0] {
        for yy in 0..o[1] {
            let row = &mut y[(z * o[1] + yy) * o[2]..(z * o[1] + yy + 1) * o[2]];
            for (xx, out) in row.iter_mut().enumerate() {
                let mut s = T::from_f64(0.0);
                for a in 0..k[0] {
                    for b in 0..k[1] {
                        let line = ((z * k[0] + a) * xi[1] + yy * k[1] + b) * xi[2] + xx * k[2];
                        for v in &x[line..line + k[2]] {
                            s += *v;
                        }
                    }
                }
                *out = T::from_f64(s.to_f64() * scale);
            }
        }
    }
}

fn unpool_plane<T: WithDType>(xi: [usize; 3], k: [usize; 3], dy: &[T], dx: &mut [T]) {
    let o = [xi[0] / k[0], xi[1] / k[1], xi[2] / k[2]];
    let scale = T::from_f64(1.0 / (k[0] * k[1] * k[2]) as f64);
    dx.fill(T::from_f64(0.0));
    for z in 0..o[0] * k[0] {
        for yy in 0..o[1] * k[1] {
            let src = &dy[((z / k[0]) * o[1] + yy / k[1]) * o[2]..][..o[2]];
            let line = &mut dx[(z * xi[1] + yy) * xi[2]..][..o[2] * k[2]];
            for (xx, d) in line.iter_mut().enumerate() {
                *d = src[xx / k[2]] * scale;
            }
        }
    }
}

impl CustomOp1 for AvgPoolOp {
    fn name(&self) -> &'static str {
        "calseg-avg-pool"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = l.dims();
        let xi = spatial(d)?;
        let k = kernel(d.len(), self.k);
        if self.k == 0 || xi.iter().zip(&k).any(|(i, k)| i < k) {
            bail!("avg pool: kernel {} larger than input {d:?}", self.k);
        }
        let o = [xi[0] / k[0], xi[1] / k[1], xi[2] / k[2]];
        let (ivol, ovol) = (xi.iter().product::<usize>(), o.iter().product::<usize>());
        with_float!(s.dtype(), "avg pool", |T| {
            let x = slice::<T>(s, l)?;
            let mut y = vec![0.0 as T; d[0] * d[1] * ovol];
            y.par_chunks_mut(ovol)
                .zip(x.par_chunks(ivol))
                .for_each(|(yp, xp)| pool_plane(xi, k, xp, yp));
            Ok((
                T::to_cpu_storage_owned(y),
                Shape::from(out_dims(d.len(), d[0], d[1], o)),
            ))
        })
    }
    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let op = AvgPoolGradOp {
            k: self.k,
            in_dims: x.dims().to_vec(),
        };
        Ok(Some(dy.contiguous()?.apply_op1_no_bwd(&op)?))
    }
}

/// Backward op: `dy (n, c, o…) → dx (n, c, i…)`.
#[derive(Clone, Debug)]
struct AvgPoolGradOp {
    k: usize,
    in_dims: Vec<usize>,
}

impl CustomOp1 for AvgPoolGradOp {
    fn name(&self) -> &'static str {
        "calseg-avg-pool-grad"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let xi = spatial(&self.in_dims)?;
        let k = kernel(self.in_dims.len(), self.k);
        let o = [xi[0] / k[0], xi[1] / k[1], xi[2] / k[2]];
        let (ivol, ovol) = (xi.iter().product::<usize>(), o.iter().product::<usize>());
        let planes = self.in_dims[0] * self.in_dims[1];
        if l.dims().iter().product::<usize>() != planes * ovol {
            bail!(
                "avg pool backward: gradient {:?} does not match input {:?}",
                l.dims(),
                self.in_dims
            );
        }
        with_float!(s.dtype(), "avg pool backward", |T| {
            let dy = slice::<T>(s, l)?;
            let mut dx = vec![0.0 as T; planes * ivol];
            dx.par_chunks_mut(ivol)
                .zip(dy.par_chunks(ovol))
                .for_each(|(xp, yp)| unpool_plane(xi, k, yp, xp));
            Ok((
                T::to_cpu_storage_owned(dx),
                Shape::from(self.in_dims.clone()),
            ))
        })
    }
}
