//! Candle custom ops for convolution and transposed convolution (2D and 3D, f32/f64),
//! forward and backward, on the CPU kernels of [`super::kernels`].
//!
//! A transposed convolution is the adjoint of a convolution, so both share the three
//! kernels: with `G` the convolution that maps the transposed conv's *output* space to its
//! *input* space (weight `(in_T, out_T, k…)` read as a conv weight `(co, ci, k…)`),
//!
//! | | convolution | transposed convolution |
//! |---|---|---|
//! | forward | `conv_fwd` | `conv_grad_input` (+ bias) |
//! | grad of the input | `conv_grad_input` | `conv_fwd` |
//! | grad of the weight | `conv_grad_weight(x, dy)` | `conv_grad_weight(dy, x)` |
//! | grad of the bias | `bias_grad(dy)` | `bias_grad(dy)` |

use super::geom::Geom;
use super::kernels::{
    bias_grad, conv_fwd, conv_fwd_srcs, conv_grad_input, conv_grad_weight, conv_grad_weight_srcs,
};
use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType,
    bail,
};

/// Contiguous slice of a CPU storage as `T`, honouring the layout's start offset.
pub(crate) fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    let data = s.as_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("calseg-seg op: input must be contiguous"),
    }
}

/// Spatial size `[d, h, w]` of an `(n, c, h, w)` or `(n, c, d, h, w)` tensor (depth 1 in 2D).
pub(crate) fn spatial(dims: &[usize]) -> Result<[usize; 3]> {
    match *dims {
        [_, _, h, w] => Ok([1, h, w]),
        [_, _, d, h, w] => Ok([d, h, w]),
        _ => bail!("expected a (n, c, h, w) or (n, c, d, h, w) tensor, got {dims:?}"),
    }
}

/// Output dims `(n, c, spatial…)` keeping the rank of the input (2D drops the depth).
pub(crate) fn out_dims(rank: usize, n: usize, c: usize, sp: [usize; 3]) -> Vec<usize> {
    if rank == 4 {
        vec![n, c, sp[1], sp[2]]
    } else {
        vec![n, c, sp[0], sp[1], sp[2]]
    }
}

/// Stride / padding of an op along (depth, height, width) for an input of `rank`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Conf {
    pub stride: usize,
    pub padding: usize,
}

impl Conf {
    fn arrays(&self, rank: usize) -> ([usize; 3], [usize; 3]) {
        let (s, p) = (self.stride, self.padding);
        if rank == 4 {
            ([1, s, s], [0, p, p])
        } else {
            ([s; 3], [p; 3])
        }
    }

    /// Geometry of `x ⊛ w` from their dims; checks ranks and channel counts.
    pub(crate) fn geom(&self, xd: &[usize], wd: &[usize]) -> Result<Geom> {
        if xd.len() != wd.len() {
            bail!("conv: input rank {} but weight rank {}", xd.len(), wd.len());
        }
        if xd[1] != wd[1] {
            bail!(
                "conv: input has {} channels, weight expects {}",
                xd[1],
                wd[1]
            );
        }
        let (s, p) = self.arrays(xd.len());
        Geom::new(xd[0], xd[1], wd[0], spatial(xd)?, spatial(wd)?, s, p).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "conv: kernel {wd:?} does not fit input {xd:?} with {self:?}"
            ))
        })
    }
}

fn storage<T: WithDType>(v: Vec<T>) -> CpuStorage {
    T::to_cpu_storage_owned(v)
}

/// Runs `$body` with `$t` bound to `f32` or `f64` according to `$dtype`.
macro_rules! with_float {
    ($dtype:expr, $name:expr, |$t:ident| $body:block) => {
        match $dtype {
            candle_core::DType::F32 => {
                type $t = f32;
                $body
            }
            candle_core::DType::F64 => {
                type $t = f64;
                $body
            }
            d => bail!("{}: only f32 and f64 are supported, got {d:?}", $name),
        }
    };
}
pub(crate) use with_float;

fn same_dtype(a: &CpuStorage, b: &CpuStorage, name: &str) -> Result<DType> {
    if a.dtype() != b.dtype() {
        bail!("{name}: dtype mismatch {:?} vs {:?}", a.dtype(), b.dtype());
    }
    Ok(a.dtype())
}

/// Forward convolution `y = x ⊛ w (+ b)`: inputs `x (n, ci, [d,] h, w)`, `w (co, ci, [kd,] kh, kw)`,
/// optional `b (co)`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConvOp(pub Conf);

impl ConvOp {
    fn fwd(
        &self,
        x: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        b: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.0.geom(x.1.dims(), w.1.dims())?;
        let dt = same_dtype(x.0, w.0, "conv")?;
        if let Some(b) = b {
            same_dtype(x.0, b.0, "conv")?;
            if b.1.dims() != [g.co] {
                bail!("conv: bias shape {:?}, expected [{}]", b.1.dims(), g.co);
            }
        }
        let dims = out_dims(x.1.dims().len(), g.n, g.co, g.o);
        with_float!(dt, "conv", |T| {
            let xs = slice::<T>(x.0, x.1)?;
            let ws = slice::<T>(w.0, w.1)?;
            let bs = match b {
                Some(b) => Some(slice::<T>(b.0, b.1)?),
                None => None,
            };
            let mut y = vec![0.0 as T; g.n * g.co * g.ovol()];
            conv_fwd(&g, xs, ws, bs, &mut y);
            Ok((storage(y), Shape::from(dims)))
        })
    }

    /// `(dx, dw)`; `dx` is skipped (None) when `x` needs no gradient (e.g. the input image).
    fn backward(&self, x: &Tensor, w: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Tensor)> {
        let dy = dy.contiguous()?;
        let op = GradInputOp {
            conf: self.0,
            in_dims: x.dims().to_vec(),
        };
        let dx = if x.track_op() {
            Some(dy.apply_op2_no_bwd(w, &op)?)
        } else {
            None
        };
        let k = spatial(w.dims())?;
        let dw = x.apply_op2_no_bwd(&dy, &GradWeightOp { conf: self.0, k })?;
        Ok((dx, dw))
    }
}

/// The candle custom-op plumbing shared by [`ConvOp`] and [`ConvTransposeOp`]: both have
/// `fwd(x, w, bias)` and `backward(x, w, dy) -> (dx, dw)`; the bias variant (`CustomOp3`)
/// adds the bias gradient `Σ dy` over batch and space.
macro_rules! impl_conv_custom_ops {
    ($op:ty, $name:literal, $name_bias:literal) => {
        impl CustomOp2 for $op {
            fn name(&self) -> &'static str {
                $name
            }
            fn cpu_fwd(
                &self,
                s1: &CpuStorage,
                l1: &Layout,
                s2: &CpuStorage,
                l2: &Layout,
            ) -> Result<(CpuStorage, Shape)> {
                self.fwd((s1, l1), (s2, l2), None)
            }
            fn bwd(
                &self,
                x: &Tensor,
                w: &Tensor,
                _res: &Tensor,
                dy: &Tensor,
            ) -> Result<(Option<Tensor>, Option<Tensor>)> {
                let (dx, dw) = self.backward(x, w, dy)?;
                Ok((dx, Some(dw)))
            }
        }

        impl CustomOp3 for $op {
            fn name(&self) -> &'static str {
                $name_bias
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
                self.fwd((s1, l1), (s2, l2), Some((s3, l3)))
            }
            fn bwd(
                &self,
                x: &Tensor,
                w: &Tensor,
                _b: &Tensor,
                _res: &Tensor,
                dy: &Tensor,
            ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
                let (dx, dw) = self.backward(x, w, dy)?;
                let db = dy.contiguous()?.apply_op1_no_bwd(&BiasGradOp)?;
                Ok((dx, Some(dw), Some(db)))
            }
        }
    };
}

impl_conv_custom_ops!(ConvOp, "calseg-conv", "calseg-conv-bias");

/// Input gradient of [`ConvOp`]: `(dy, w) → dx` with `dx` of dims `in_dims`.
#[derive(Clone, Debug)]
pub(crate) struct GradInputOp {
    pub conf: Conf,
    pub in_dims: Vec<usize>,
}

impl CustomOp2 for GradInputOp {
    fn name(&self) -> &'static str {
        "calseg-conv-grad-input"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.conf.geom(&self.in_dims, l2.dims())?;
        let dyd = l1.dims();
        if dyd.len() != self.in_dims.len()
            || dyd[0] != g.n
            || dyd[1] != g.co
            || spatial(dyd)? != g.o
        {
            bail!(
                "conv grad-input: gradient dims {dyd:?} do not match the conv output of {:?}",
                self.in_dims
            );
        }
        let dt = same_dtype(s1, s2, "conv grad-input")?;
        with_float!(dt, "conv grad-input", |T| {
            let dy = slice::<T>(s1, l1)?;
            let w = slice::<T>(s2, l2)?;
            let mut dx = vec![0.0 as T; g.n * g.ci * g.ivol()];
            conv_grad_input(&g, dy, w, &mut dx);
            Ok((storage(dx), Shape::from(self.in_dims.clone())))
        })
    }
}

/// Weight gradient of [`ConvOp`]: `(x, dy) → dw (co, ci, k…)`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GradWeightOp {
    pub conf: Conf,
    pub k: [usize; 3],
}

impl CustomOp2 for GradWeightOp {
    fn name(&self) -> &'static str {
        "calseg-conv-grad-weight"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (xd, dyd) = (l1.dims(), l2.dims());
        let rank = xd.len();
        if dyd.len() != rank {
            bail!("conv grad-weight: rank mismatch {xd:?} vs {dyd:?}");
        }
        let mut wd = vec![dyd[1], xd[1]];
        wd.extend_from_slice(&self.k[3 - (rank - 2)..]);
        let g = self.conf.geom(xd, &wd)?;
        if dyd[0] != g.n || spatial(dyd)? != g.o {
            bail!("conv grad-weight: gradient dims {dyd:?} do not match the conv output of {xd:?}");
        }
        let dt = same_dtype(s1, s2, "conv grad-weight")?;
        with_float!(dt, "conv grad-weight", |T| {
            let x = slice::<T>(s1, l1)?;
            let dy = slice::<T>(s2, l2)?;
            let mut dw = vec![0.0 as T; g.co * g.kdim()];
            conv_grad_weight(&g, x, dy, &mut dw);
            Ok((storage(dw), Shape::from(wd)))
        })
    }
}

/// Bias gradient: `dy (n, c, …) → (c)`, the sum over batch and space.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BiasGradOp;

impl CustomOp1 for BiasGradOp {
    fn name(&self) -> &'static str {
        "calseg-bias-grad"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = l.dims();
        if d.len() < 2 {
            bail!("bias grad: expected (n, c, …), got {d:?}");
        }
        let (n, c) = (d[0], d[1]);
        let p: usize = d[2..].iter().product();
        with_float!(s.dtype(), "bias grad", |T| {
            let dy = slice::<T>(s, l)?;
            let mut db = vec![0.0 as T; c];
            bias_grad(n, c, p, dy, &mut db);
            Ok((storage(db), Shape::from(c)))
        })
    }
}

/// Transposed convolution: `x (n, ci, i…)`, `w (ci, co, k…)`, optional `b (co)` →
/// `y (n, co, (i − 1)·s − 2p + k …)`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConvTransposeOp(pub Conf);

impl ConvTransposeOp {
    /// The adjoint convolution's geometry and the output dims.
    fn geom(&self, xd: &[usize], wd: &[usize]) -> Result<(Geom, Vec<usize>)> {
        if xd.len() != wd.len() || !(4..=5).contains(&xd.len()) {
            bail!("conv-transpose: input {xd:?} and weight {wd:?} ranks differ or are not 4/5");
        }
        if xd[1] != wd[0] {
            bail!(
                "conv-transpose: input has {} channels, weight expects {}",
                xd[1],
                wd[0]
            );
        }
        let (i, k) = (spatial(xd)?, spatial(wd)?);
        let (s, p) = self.0.arrays(xd.len());
        let mut o = [0; 3];
        for a in 0..3 {
            let full = (i[a].max(1) - 1) * s[a] + k[a];
            if full < 2 * p[a] + 1 {
                bail!(
                    "conv-transpose: padding {} too large for input {xd:?}",
                    p[a]
                );
            }
            o[a] = full - 2 * p[a];
        }
        let dims = out_dims(xd.len(), xd[0], wd[1], o);
        // The conv mapping y-space (channels co_T) to x-space (channels ci_T).
        let g = Geom::new(xd[0], wd[1], wd[0], o, k, s, p)
            .filter(|g| g.o == i)
            .ok_or_else(|| {
                candle_core::Error::Msg(format!("conv-transpose: bad geometry {xd:?} {wd:?}"))
            })?;
        Ok((g, dims))
    }

    fn fwd(
        &self,
        x: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        b: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, dims) = self.geom(x.1.dims(), w.1.dims())?;
        let dt = same_dtype(x.0, w.0, "conv-transpose")?;
        if let Some(b) = b {
            same_dtype(x.0, b.0, "conv-transpose")?;
            if b.1.dims() != [g.ci] {
                bail!(
                    "conv-transpose: bias shape {:?}, expected [{}]",
                    b.1.dims(),
                    g.ci
                );
            }
        }
        with_float!(dt, "conv-transpose", |T| {
            let xs = slice::<T>(x.0, x.1)?;
            let ws = slice::<T>(w.0, w.1)?;
            let mut y = vec![0.0 as T; g.n * g.ci * g.ivol()];
            conv_grad_input(&g, xs, ws, &mut y);
            if let Some(b) = b {
                let bs = slice::<T>(b.0, b.1)?;
                let vol = g.ivol();
                use rayon::prelude::*;
                y.par_chunks_mut(vol).enumerate().for_each(|(nc, plane)| {
                    let bv = bs[nc % g.ci];
                    plane.iter_mut().for_each(|v| *v += bv);
                });
            }
            Ok((storage(y), Shape::from(dims)))
        })
    }

    /// `(dx, dw)`; `dx` is skipped (None) when `x` needs no gradient.
    fn backward(&self, x: &Tensor, w: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Tensor)> {
        let dy = dy.contiguous()?;
        let dx = if x.track_op() {
            Some(dy.apply_op2_no_bwd(w, &ConvOp(self.0))?)
        } else {
            None
        };
        let k = spatial(w.dims())?;
        let dw = dy.apply_op2_no_bwd(x, &GradWeightOp { conf: self.0, k })?;
        Ok((dx, dw))
    }
}

impl_conv_custom_ops!(
    ConvTransposeOp,
    "calseg-conv-transpose",
    "calseg-conv-transpose-bias"
);

/// Convolution of a channel concatenation, `y = cat([a, b], 1) ⊛ w + bias`, without
/// materialising `cat([a, b])` (the U-Net decoder's skip + upsampled input).
///
/// Inputs `a (n, ca, i…)`, `b (n, cb, i…)` and `wb`, the packed parameters
/// `[w (co, ca + cb, k…) flattened | bias (co)]` (one tensor, since a custom op has at most
/// three inputs). Backward gives `da`, `db` (the input gradient split by channel range)
/// and the packed `[dw | dbias]`.
#[derive(Clone, Debug)]
pub(crate) struct ConvCatOp {
    pub conf: Conf,
    /// Weight dims `(co, ca + cb, k…)`.
    pub wdims: Vec<usize>,
}

impl ConvCatOp {
    /// Geometry of the whole convolution (input channels `ca + cb`) and `(ca, cb)`.
    fn geom(&self, ad: &[usize], bd: &[usize]) -> Result<(Geom, usize, usize)> {
        if ad.len() != bd.len() || ad[0] != bd[0] || ad[2..] != bd[2..] {
            bail!("conv-cat: inputs {ad:?} and {bd:?} differ in batch or spatial size");
        }
        let (ca, cb) = (ad[1], bd[1]);
        if ca == 0 || cb == 0 {
            bail!("conv-cat: empty input ({ca} and {cb} channels)");
        }
        let mut xd = ad.to_vec();
        xd[1] = ca + cb;
        Ok((self.conf.geom(&xd, &self.wdims)?, ca, cb))
    }

    fn wlen(&self) -> usize {
        self.wdims.iter().product()
    }
}

impl CustomOp3 for ConvCatOp {
    fn name(&self) -> &'static str {
        "calseg-conv-cat"
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
        let (g, ca, cb) = self.geom(l1.dims(), l2.dims())?;
        if l3.dims() != [self.wlen() + g.co] {
            bail!(
                "conv-cat: packed parameters {:?}, expected [{}]",
                l3.dims(),
                self.wlen() + g.co
            );
        }
        let dt = same_dtype(s1, s2, "conv-cat")?;
        same_dtype(s1, s3, "conv-cat")?;
        let dims = out_dims(l1.dims().len(), g.n, g.co, g.o);
        with_float!(dt, "conv-cat", |T| {
            let (a, b) = (slice::<T>(s1, l1)?, slice::<T>(s2, l2)?);
            let (w, bias) = slice::<T>(s3, l3)?.split_at(self.wlen());
            let mut y = vec![0.0 as T; g.n * g.co * g.ovol()];
            conv_fwd_srcs(&g, &[(a, ca), (b, cb)], w, Some(bias), &mut y);
            Ok((storage(y), Shape::from(dims)))
        })
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        wb: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let ca = a.dim(1)?;
        let part = |x: &Tensor, c0: usize| -> Result<Option<Tensor>> {
            if !x.track_op() {
                return Ok(None);
            }
            let op = GradInputPartOp {
                conf: self.conf,
                in_dims: x.dims().to_vec(),
                c0,
                wdims: self.wdims.clone(),
            };
            Ok(Some(dy.apply_op2_no_bwd(wb, &op)?))
        };
        let (da, db) = (part(a, 0)?, part(b, ca)?);
        let op = GradWeightCatOp {
            conf: self.conf,
            wdims: self.wdims.clone(),
        };
        let dwb = a.apply_op3_no_bwd(b, &dy, &op)?;
        Ok((da, db, Some(dwb)))
    }
}

/// Input gradient of one part of [`ConvCatOp`]: `(dy, wb) → dx_part` for the input
/// channels `c0 .. c0 + in_dims[1]` of the concatenation.
#[derive(Clone, Debug)]
pub(crate) struct GradInputPartOp {
    pub conf: Conf,
    pub in_dims: Vec<usize>,
    pub c0: usize,
    pub wdims: Vec<usize>,
}

impl CustomOp2 for GradInputPartOp {
    fn name(&self) -> &'static str {
        "calseg-conv-cat-grad-input"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (co, ci) = (self.wdims[0], self.wdims[1]);
        let cnt = self.in_dims[1];
        if self.c0 + cnt > ci {
            bail!("conv-cat grad-input: channels {}+{cnt} of {ci}", self.c0);
        }
        let mut wd = self.wdims.clone();
        wd[1] = cnt;
        let g = self.conf.geom(&self.in_dims, &wd)?;
        let dyd = l1.dims();
        if dyd.len() != self.in_dims.len() || dyd[0] != g.n || dyd[1] != co || spatial(dyd)? != g.o
        {
            bail!(
                "conv-cat grad-input: gradient dims {dyd:?} do not match the conv output of {:?}",
                self.in_dims
            );
        }
        let kvol = g.kvol();
        if l2.dims() != [co * ci * kvol + co] {
            bail!("conv-cat grad-input: packed parameters {:?}", l2.dims());
        }
        let dt = same_dtype(s1, s2, "conv-cat grad-input")?;
        with_float!(dt, "conv-cat grad-input", |T| {
            let dy = slice::<T>(s1, l1)?;
            let w = slice::<T>(s2, l2)?;
            // The part's weight (co, cnt, k…): a column block of w (co, ci·kvol).
            let ws: Vec<T> = (0..co)
                .flat_map(|o| {
                    let r = o * ci * kvol + self.c0 * kvol;
                    w[r..r + cnt * kvol].iter().copied()
                })
                .collect();
            let mut dx = vec![0.0 as T; g.n * cnt * g.ivol()];
            conv_grad_input(&g, dy, &ws, &mut dx);
            Ok((storage(dx), Shape::from(self.in_dims.clone())))
        })
    }
}

/// Parameter gradient of [`ConvCatOp`]: `(a, b, dy) → [dw | dbias]` (packed as `wb`).
#[derive(Clone, Debug)]
pub(crate) struct GradWeightCatOp {
    pub conf: Conf,
    pub wdims: Vec<usize>,
}

impl CustomOp3 for GradWeightCatOp {
    fn name(&self) -> &'static str {
        "calseg-conv-cat-grad-weight"
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
        let op = ConvCatOp {
            conf: self.conf,
            wdims: self.wdims.clone(),
        };
        let (g, ca, cb) = op.geom(l1.dims(), l2.dims())?;
        let dyd = l3.dims();
        if dyd.len() != l1.dims().len() || dyd[0] != g.n || dyd[1] != g.co || spatial(dyd)? != g.o {
            bail!("conv-cat grad-weight: gradient dims {dyd:?} do not match the conv output");
        }
        let dt = same_dtype(s1, s2, "conv-cat grad-weight")?;
        same_dtype(s1, s3, "conv-cat grad-weight")?;
        let wlen = op.wlen();
        with_float!(dt, "conv-cat grad-weight", |T| {
            let (a, b) = (slice::<T>(s1, l1)?, slice::<T>(s2, l2)?);
            let dy = slice::<T>(s3, l3)?;
            let mut out = vec![0.0 as T; wlen + g.co];
            let (dw, db) = out.split_at_mut(wlen);
            conv_grad_weight_srcs(&g, &[(a, ca), (b, cb)], dy, dw);
            bias_grad(g.n, g.co, g.ovol(), dy, db);
            Ok((storage(out), Shape::from(wlen + g.co)))
        })
    }
}

#[cfg(test)]
mod cat_tests {
    use crate::init::randn;
    use crate::ops::{conv_cat, stock};
    use candle_core::{DType, Device, Tensor, Var};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// (n, ca, cb, co, spatial, k, stride, padding)
    type Case = (usize, usize, usize, usize, Vec<usize>, usize, usize, usize);

    fn cases() -> Vec<Case> {
        vec![
            (2, 3, 2, 4, vec![6, 5], 3, 1, 1),
            (1, 2, 3, 3, vec![7, 6], 3, 2, 1),
            (2, 2, 1, 3, vec![4, 5], 1, 1, 0),
            (1, 2, 2, 2, vec![3, 4, 4], 3, 1, 1),
        ]
    }

    fn inputs(rng: &mut StdRng, c: &Case, dt: DType) -> [Tensor; 4] {
        let (n, ca, cb, co, ref sp, k, _, _) = *c;
        let dev = Device::Cpu;
        let shape = |ch: usize| {
            let mut s = vec![n, ch];
            s.extend_from_slice(sp);
            s
        };
        let mut wd = vec![co, ca + cb];
        wd.extend(std::iter::repeat_n(k, sp.len()));
        [
            randn(rng, &shape(ca), dt, &dev).expect("a"),
            randn(rng, &shape(cb), dt, &dev).expect("b"),
            randn(rng, &wd, dt, &dev).expect("w"),
            randn(rng, &[co], dt, &dev).expect("bias"),
        ]
    }

    fn max_abs(t: &Tensor) -> f64 {
        t.abs()
            .and_then(|t| {
                t.flatten_all()?
                    .max(0)?
                    .to_dtype(DType::F64)?
                    .to_scalar::<f64>()
            })
            .expect("max")
    }

    #[test]
    fn conv_cat_forward_matches_conv_of_cat() {
        let mut rng = StdRng::seed_from_u64(5);
        for c in cases() {
            let [a, b, w, bias] = inputs(&mut rng, &c, DType::F32);
            let (s, p) = (c.6, c.7);
            let y = conv_cat(&a, &b, &w, Some(&bias), s, p).expect("conv_cat");
            let x = Tensor::cat(&[&a, &b], 1).expect("cat");
            let r = stock::conv(&x, &w, Some(&bias), s, p).expect("reference");
            assert_eq!(y.dims(), r.dims(), "{c:?}");
            let err = max_abs(&(&y - &r).expect("diff")) / max_abs(&r).max(1e-6);
            assert!(err < 1e-5, "{c:?}: relative error {err:e}");
            // Without bias: the same as a zero bias.
            let y0 = conv_cat(&a, &b, &w, None, s, p).expect("no bias");
            let r0 = stock::conv(&x, &w, None, s, p).expect("reference");
            let err = max_abs(&(&y0 - &r0).expect("diff")) / max_abs(&r0).max(1e-6);
            assert!(err < 1e-5, "{c:?} (no bias): relative error {err:e}");
        }
    }

    /// Gradients of `L = Σ conv_cat(a, b, w, bias) ⊙ R` w.r.t. all four inputs equal
    /// central finite differences (f64), within 1e-6 relative to the largest entry.
    #[test]
    fn conv_cat_gradients_match_finite_differences() {
        const H: f64 = 1e-5;
        let mut rng = StdRng::seed_from_u64(6);
        for c in cases() {
            let base = inputs(&mut rng, &c, DType::F64);
            let (s, p) = (c.6, c.7);
            let f = |t: &[Tensor]| conv_cat(&t[0], &t[1], &t[2], Some(&t[3]), s, p);
            let y = f(&base).expect("forward");
            let r = randn(&mut rng, y.dims(), DType::F64, &Device::Cpu).expect("r");
            let loss = |t: &[Tensor]| -> f64 {
                (f(t).expect("forward") * &r)
                    .and_then(|l| l.sum_all()?.to_scalar::<f64>())
                    .expect("loss")
            };
            let vars: Vec<Var> = base
                .iter()
                .map(|t| Var::from_tensor(t).expect("var"))
                .collect();
            let vt: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
            let grads = (f(&vt).expect("forward") * &r)
                .and_then(|l| l.sum_all()?.backward())
                .expect("backward");
            for (k, v) in vars.iter().enumerate() {
                let g: Vec<f64> = grads
                    .get(v)
                    .expect("gradient")
                    .flatten_all()
                    .and_then(|t| t.to_vec1())
                    .expect("vec");
                let x0: Vec<f64> = base[k].flatten_all().and_then(|t| t.to_vec1()).expect("x0");
                let scale = g.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-3);
                let idx: Vec<usize> = if x0.len() <= 40 {
                    (0..x0.len()).collect()
                } else {
                    (0..40).map(|_| rng.random_range(0..x0.len())).collect()
                };
                for i in idx {
                    let eval = |d: f64| {
                        let mut xv = x0.clone();
                        xv[i] += d;
                        let mut ts = base.to_vec();
                        ts[k] = Tensor::from_vec(xv, base[k].dims(), &Device::Cpu).expect("t");
                        loss(&ts)
                    };
                    let fd = (eval(H) - eval(-H)) / (2.0 * H);
                    let err = (fd - g[i]).abs() / scale;
                    assert!(err < 1e-6, "{c:?} input {k} coord {i}: {} vs {fd}", g[i]);
                }
            }
        }
    }
}
