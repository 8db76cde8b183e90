//! Convolution → GroupNorm (→ ReLU) as **one** autograd node.
//!
//! With separate nodes, candle's backward accumulates the gradient of the convolution's
//! output `z` like every other edge: a zero-filled buffer of `z`'s size plus an
//! element-wise add, i.e. a full extra write + read + write of the largest activations of
//! a U-Net block. As one node the gradient `dz` is produced and consumed inside the op's
//! backward and never enters candle's gradient store.
//!
//! Forward (`srcs` one input, or the two halves of the decoder's channel concatenation):
//!
//! ```text
//! z = cat(srcs) ⊛ w + b                      (kept for the backward, like PyTorch's ctx)
//! y = relu?(GroupNorm_γ,β(z))
//! ```
//!
//! Backward: `dz` from the GroupNorm(+ReLU) backward (see [`super::norm`]), then the
//! convolution's input / weight / bias gradients from `dz` (see [`super::kernels`]).
//! Parameters travel packed as one tensor `[w (flattened) | b | γ | β]`, since a custom
//! op has at most three inputs.

use super::conv::{
    BiasGradOp, Conf, GradInputOp, GradInputPartOp, GradWeightCatOp, GradWeightOp, slice, spatial,
    with_float,
};
use super::kernels::conv_fwd_srcs;
use super::norm::{GroupNormBwdOp, GroupNormOp, NormDims};
use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Result, Shape, Tensor, WithDType, bail,
};
use std::sync::Mutex;

/// The fused node. `saved` holds `z` from the forward pass for the backward pass.
#[derive(Debug)]
pub(crate) struct ConvNormOp {
    pub conf: Conf,
    /// Weight dims `(co, ci, k…)` (`ci` = channels of all sources together).
    pub wdims: Vec<usize>,
    pub norm: GroupNormOp,
    saved: Mutex<Option<Tensor>>,
}

impl ConvNormOp {
    pub(crate) fn new(conf: Conf, wdims: Vec<usize>, norm: GroupNormOp) -> Self {
        Self {
            conf,
            wdims,
            norm,
            saved: Mutex::new(None),
        }
    }

    fn co(&self) -> usize {
        self.wdims[0]
    }

    fn wlen(&self) -> usize {
        self.wdims.iter().product()
    }

    /// Length of the packed parameters `[w | b | γ | β]`.
    pub(crate) fn plen(&self) -> usize {
        self.wlen() + 3 * self.co()
    }

    /// `z` and `y` of the sources `(storage, layout)` with the packed parameters.
    fn fwd(
        &self,
        srcs: &[(&CpuStorage, &Layout)],
        p: (&CpuStorage, &Layout),
    ) -> Result<(CpuStorage, Shape)> {
        let first = srcs[0].1.dims();
        let mut xd = first.to_vec();
        xd[1] = 0;
        for (s, l) in srcs {
            let d = l.dims();
            if d.len() != first.len() || d[0] != first[0] || d[2..] != first[2..] {
                bail!("conv-norm: inputs {first:?} and {d:?} differ in batch or spatial size");
            }
            if s.dtype() != p.0.dtype() {
                bail!(
                    "conv-norm: dtype mismatch {:?} vs {:?}",
                    s.dtype(),
                    p.0.dtype()
                );
            }
            xd[1] += d[1];
        }
        if p.1.dims() != [self.plen()] {
            bail!(
                "conv-norm: packed parameters {:?}, expected [{}]",
                p.1.dims(),
                self.plen()
            );
        }
        let g = self.conf.geom(&xd, &self.wdims)?;
        let co = g.co;
        let mut zd = xd.clone();
        zd[1] = co;
        let rank = zd.len();
        zd[2..].copy_from_slice(&g.o[3 - (rank - 2)..]);
        let nd = NormDims::of(&zd, self.norm.groups)?;
        with_float!(p.0.dtype(), "conv-norm", |T| {
            let params = slice::<T>(p.0, p.1)?;
            let (w, rest) = params.split_at(self.wlen());
            let (bias, rest) = rest.split_at(co);
            let (gamma, beta) = rest.split_at(co);
            let mut data = Vec::with_capacity(srcs.len());
            for (s, l) in srcs {
                data.push((slice::<T>(s, l)?, l.dims()[1]));
            }
            let mut z = vec![0.0 as T; g.n * co * g.ovol()];
            conv_fwd_srcs(&g, &data, w, Some(bias), &mut z);
            let y = self.norm.run(nd, &z, gamma, beta);
            let zt = Tensor::from_vec(z, zd.clone(), &Device::Cpu)?;
            *self.saved.lock().map_err(|_| poisoned())? = Some(zt);
            Ok((T::to_cpu_storage_owned(y), Shape::from(zd)))
        })
    }

    /// Gradients of the sources and of the packed parameters.
    fn backward(
        &self,
        srcs: &[&Tensor],
        p: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Vec<Option<Tensor>>, Tensor)> {
        let z = self
            .saved
            .lock()
            .map_err(|_| poisoned())?
            .clone()
            .ok_or_else(|| candle_core::Error::Msg("conv-norm: backward before forward".into()))?;
        let (co, wlen) = (self.co(), self.wlen());
        let gamma = p.narrow(0, wlen + co, co)?;
        let op = GroupNormBwdOp {
            fwd: self.norm,
            gamma: gamma.to_dtype(DType::F64)?.to_vec1::<f64>()?,
        };
        let flat = z.apply_op3_no_bwd(y, &dy.contiguous()?, &op)?;
        let numel = z.elem_count();
        let dz = flat.narrow(0, 0, numel)?.reshape(z.shape())?;
        let dgb = flat.narrow(0, numel, 2 * co)?;
        let mut dxs = Vec::with_capacity(srcs.len());
        let dp = if let [x] = srcs {
            let dx = if x.track_op() {
                let w = p.narrow(0, 0, wlen)?.reshape(self.wdims.clone())?;
                let op = GradInputOp {
                    conf: self.conf,
                    in_dims: x.dims().to_vec(),
                };
                Some(dz.apply_op2_no_bwd(&w, &op)?)
            } else {
                None
            };
            let k = spatial(&self.wdims)?;
            let dw = x.apply_op2_no_bwd(&dz, &GradWeightOp { conf: self.conf, k })?;
            let db = dz.apply_op1_no_bwd(&BiasGradOp)?;
            return Ok((vec![dx], Tensor::cat(&[&dw.flatten_all()?, &db, &dgb], 0)?));
        } else {
            // The ops of `conv_cat`, which read the packed `[w | b]` prefix of `p`.
            let wb = p.narrow(0, 0, wlen + co)?;
            let mut c0 = 0;
            for x in srcs {
                dxs.push(if x.track_op() {
                    let op = GradInputPartOp {
                        conf: self.conf,
                        in_dims: x.dims().to_vec(),
                        c0,
                        wdims: self.wdims.clone(),
                    };
                    Some(dz.apply_op2_no_bwd(&wb, &op)?)
                } else {
                    None
                });
                c0 += x.dim(1)?;
            }
            let op = GradWeightCatOp {
                conf: self.conf,
                wdims: self.wdims.clone(),
            };
            let dwb = srcs[0].apply_op3_no_bwd(srcs[1], &dz, &op)?;
            Tensor::cat(&[&dwb, &dgb], 0)?
        };
        Ok((dxs, dp))
    }
}

fn poisoned() -> candle_core::Error {
    candle_core::Error::Msg("conv-norm: saved tensor lock poisoned".into())
}

impl CustomOp2 for ConvNormOp {
    fn name(&self) -> &'static str {
        "calseg-conv-norm"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.fwd(&[(s1, l1)], (s2, l2))
    }
    fn bwd(
        &self,
        x: &Tensor,
        p: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (mut dxs, dp) = self.backward(&[x], p, y, dy)?;
        Ok((dxs.pop().flatten(), Some(dp)))
    }
}

impl CustomOp3 for ConvNormOp {
    fn name(&self) -> &'static str {
        "calseg-conv-cat-norm"
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
        self.fwd(&[(s1, l1), (s2, l2)], (s3, l3))
    }
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        p: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dxs, dp) = self.backward(&[a, b], p, y, dy)?;
        let mut it = dxs.into_iter();
        Ok((it.next().flatten(), it.next().flatten(), Some(dp)))
    }
}

#[cfg(test)]
mod tests {
    use crate::init::randn;
    use crate::ops::{conv, conv_cat, conv_norm, group_norm};
    use candle_core::{DType, Device, Tensor, Var};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// Bad shapes are errors, not panics.
    #[test]
    fn fused_rejects_bad_shapes() {
        let dev = Device::Cpu;
        let t = |d: &[usize]| Tensor::zeros(d, DType::F32, &dev).expect("zeros");
        let (x, w, c4, c3) = (t(&[1, 2, 5, 5]), t(&[4, 2, 3, 3]), t(&[4]), t(&[3]));
        let run = |x: &Tensor, w: &Tensor, b: &Tensor, groups: usize| {
            conv_norm(x, None, w, b, &c4, &c4, groups, 1e-5, true, 1, 1)
        };
        assert!(run(&x, &w, &c4, 2).is_ok());
        assert!(run(&x, &t(&[4]), &c4, 2).is_err(), "weight rank");
        assert!(run(&x, &t(&[4, 3, 3, 3]), &c4, 2).is_err(), "channels");
        assert!(run(&x, &w, &c3, 2).is_err(), "bias length");
        assert!(run(&x, &w, &c4, 3).is_err(), "groups must divide channels");
        assert!(run(&t(&[1, 2, 5]), &w, &c4, 2).is_err(), "input rank");
    }

    /// The fused node equals `group_norm(conv(…))` in value and in the gradient of every
    /// input (f64, one and two sources, 2D and 3D, stride 1 and 2, with and without ReLU).
    #[test]
    fn fused_matches_composition_values_and_gradients() {
        // (n, ca, cb, co, groups, spatial, stride, relu); cb = 0: one source.
        type Case = (usize, usize, usize, usize, usize, Vec<usize>, usize, bool);
        let cases: [Case; 5] = [
            (2, 3, 0, 4, 2, vec![6, 5], 1, true),
            (2, 2, 3, 4, 4, vec![6, 7], 1, true),
            (1, 3, 0, 6, 3, vec![7, 6], 2, false),
            (1, 2, 2, 4, 2, vec![3, 4, 4], 1, true),
            (2, 2, 0, 2, 1, vec![4, 4, 4], 1, false),
        ];
        let dev = Device::Cpu;
        let mut rng = StdRng::seed_from_u64(11);
        for (n, ca, cb, co, groups, sp, stride, relu) in cases {
            let shape = |c: usize| [vec![n, c], sp.clone()].concat();
            let mut wd = vec![co, ca + cb];
            wd.extend(std::iter::repeat_n(3, sp.len()));
            let mk = |rng: &mut StdRng, d: &[usize]| {
                Var::from_tensor(&randn(rng, d, DType::F64, &dev).expect("randn")).expect("var")
            };
            let a = mk(&mut rng, &shape(ca));
            let b = (cb > 0).then(|| mk(&mut rng, &shape(cb)));
            let w = mk(&mut rng, &wd);
            let bias = mk(&mut rng, &[co]);
            let gamma = mk(&mut rng, &[co]);
            let beta = mk(&mut rng, &[co]);
            let fused = conv_norm(
                &a,
                b.as_deref(),
                &w,
                &bias,
                &gamma,
                &beta,
                groups,
                1e-5,
                relu,
                stride,
                1,
            )
            .expect("fused");
            let z = match &b {
                Some(b) => conv_cat(&a, b, &w, Some(&bias), stride, 1),
                None => conv(&a, &w, Some(&bias), stride, 1),
            }
            .expect("conv");
            let composed = group_norm(&z, &gamma, &beta, groups, 1e-5, relu).expect("norm");
            assert_eq!(fused.dims(), composed.dims());
            let r = randn(&mut rng, fused.dims(), DType::F64, &dev).expect("r");
            let grads = |y: &Tensor| (y * &r).and_then(|l| l.sum_all()?.backward()).expect("bwd");
            let (gf, gc) = (grads(&fused), grads(&composed));
            let diff = |x: &Tensor, y: &Tensor| -> f64 {
                let d: Vec<f64> = (x - y)
                    .and_then(|t| t.abs()?.flatten_all()?.to_vec1())
                    .expect("diff");
                d.into_iter().fold(0.0, f64::max)
            };
            assert!(diff(&fused, &composed) < 1e-10, "values {wd:?}");
            let mut vars = vec![&a, &w, &bias, &gamma, &beta];
            if let Some(b) = &b {
                vars.push(b);
            }
            for v in vars {
                let (x, y) = (gf.get(v).expect("fused grad"), gc.get(v).expect("grad"));
                assert_eq!(x.dims(), v.dims());
                assert!(
                    diff(x, y) < 1e-9,
                    "gradient of {:?} in case {wd:?}",
                    v.dims()
                );
            }
        }
    }
}
