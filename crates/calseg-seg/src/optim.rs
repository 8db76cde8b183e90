//! AdamW with a fused, in-place, multi-threaded CPU update.
//!
//! Same update as `candle_nn::AdamW` (and PyTorch's AdamW), for step `t`:
//!
//! ```text
//! m ← β₁·m + (1 − β₁)·g            v ← β₂·v + (1 − β₂)·g²
//! θ ← θ·(1 − lr·λ) − lr · (m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + ε)
//! ```
//!
//! Why: candle-nn's AdamW runs ~12 separate element-wise tensor ops per parameter
//! (allocating a tensor each and copying the result back with `Var::set`); here one
//! candle in-place op per parameter reads θ, g, m, v once and writes θ, m, v, in
//! parallel chunks. The moments are kept in f64 on the CPU. On other devices it falls
//! back to the tensor-op formulation.

use crate::ops::slice_of;
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, InplaceOp2, Layout, Result, Tensor, Var, WithDType, bail};
pub use candle_nn::ParamsAdamW;
use rayon::prelude::*;
use std::sync::Mutex;

/// Moments of one parameter: CPU vectors, or tensors on other devices.
#[derive(Debug)]
enum Moments {
    Cpu(Mutex<(Vec<f64>, Vec<f64>)>),
    Device(Var, Var),
}

/// AdamW over a list of variables (e.g. `varmap.all_vars()`).
///
/// ```
/// use calseg_seg::optim::{AdamW, ParamsAdamW};
/// use candle_core::{Device, Var};
/// use candle_nn::Optimizer;
/// # fn main() -> candle_core::Result<()> {
/// let w = Var::new(&[1.0f32, -2.0], &Device::Cpu)?;
/// let mut opt = AdamW::new(vec![w.clone()], ParamsAdamW { lr: 0.1, weight_decay: 0.0, ..Default::default() })?;
/// let loss = w.as_tensor().sqr()?.sum_all()?; // gradient 2w
/// opt.step(&loss.backward()?)?;
/// // The first Adam step moves every coordinate by lr against its gradient's sign.
/// let v = w.as_tensor().to_vec1::<f32>()?;
/// assert!((v[0] - 0.9).abs() < 1e-5 && (v[1] + 1.9).abs() < 1e-5);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct AdamW {
    vars: Vec<(Var, Moments)>,
    step_t: usize,
    params: ParamsAdamW,
}

/// Scalars of one update.
#[derive(Clone, Copy, Debug)]
struct Coeffs {
    lr: f64,
    decay: f64,
    b1: f64,
    b2: f64,
    scale_m: f64,
    scale_v: f64,
    eps: f64,
}

/// In-place update of θ given g; the moments are borrowed for the call.
struct Update<'a> {
    c: Coeffs,
    moments: &'a Mutex<(Vec<f64>, Vec<f64>)>,
}

fn update<T: WithDType>(c: Coeffs, theta: &mut [T], g: &[T], m: &mut [f64], v: &mut [f64]) {
    const CHUNK: usize = 4096;
    theta
        .par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .for_each(|((th, g), (m, v))| {
            for i in 0..th.len() {
                let gi = g[i].to_f64();
                m[i] = c.b1 * m[i] + (1.0 - c.b1) * gi;
                v[i] = c.b2 * v[i] + (1.0 - c.b2) * gi * gi;
                let step = (m[i] * c.scale_m) / ((v[i] * c.scale_v).sqrt() + c.eps);
                th[i] = T::from_f64(th[i].to_f64() * (1.0 - c.decay) - c.lr * step);
            }
        });
}

impl InplaceOp2 for Update<'_> {
    fn name(&self) -> &'static str {
        "calseg-adamw"
    }
    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let mut guard = self
            .moments
            .lock()
            .map_err(|_| candle_core::Error::Msg("AdamW state poisoned".into()))?;
        let (m, v) = &mut *guard;
        let (start, end) = l1
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("AdamW: parameter not contiguous".into()))?;
        match s1 {
            CpuStorage::F32(th) => {
                update(self.c, &mut th[start..end], slice_of::<f32>(s2, l2)?, m, v)
            }
            CpuStorage::F64(th) => {
                update(self.c, &mut th[start..end], slice_of::<f64>(s2, l2)?, m, v)
            }
            _ => bail!("AdamW: only f32/f64 parameters"),
        }
        Ok(())
    }
}

impl candle_nn::Optimizer for AdamW {
    type Config = ParamsAdamW;

    fn new(vars: Vec<Var>, params: ParamsAdamW) -> Result<Self> {
        let vars = vars
            .into_iter()
            .filter(|v| v.dtype().is_float())
            .map(|var| {
                let mom = if var.device().is_cpu() {
                    let n = var.elem_count();
                    Moments::Cpu(Mutex::new((vec![0.0; n], vec![0.0; n])))
                } else {
                    let z = || Var::zeros(var.shape(), var.dtype(), var.device());
                    Moments::Device(z()?, z()?)
                };
                Ok((var, mom))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            vars,
            step_t: 0,
            params,
        })
    }

    fn learning_rate(&self) -> f64 {
        self.params.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.params.lr = lr;
    }

    fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step_t += 1;
        let p = &self.params;
        let t = self.step_t as i32;
        let c = Coeffs {
            lr: p.lr,
            decay: p.lr * p.weight_decay,
            b1: p.beta1,
            b2: p.beta2,
            scale_m: 1.0 / (1.0 - p.beta1.powi(t)),
            scale_v: 1.0 / (1.0 - p.beta2.powi(t)),
            eps: p.eps,
        };
        for (var, mom) in &self.vars {
            let Some(g) = grads.get(var) else { continue };
            match mom {
                Moments::Cpu(moments) => {
                    if g.dims() != var.dims() {
                        bail!(
                            "AdamW: gradient {:?} for parameter {:?}",
                            g.dims(),
                            var.dims()
                        );
                    }
                    var.as_tensor()
                        .inplace_op2(&g.contiguous()?, &Update { c, moments })?;
                }
                Moments::Device(m, v) => device_step(c, var, m, v, g)?,
            }
        }
        Ok(())
    }
}

/// First and second moments `(m, v)` of one variable, as f64 vectors.
pub type MomentPair = (Vec<f64>, Vec<f64>);

impl AdamW {
    /// Number of updates done so far (`t` of the bias corrections).
    pub fn step_count(&self) -> usize {
        self.step_t
    }

    /// The variables being optimised, in the order they were given to `new` (non-float
    /// variables left out).
    pub fn vars(&self) -> Vec<Var> {
        self.vars.iter().map(|(v, _)| v.clone()).collect()
    }

    /// The state to checkpoint: `t` and, per variable (order of [`vars`](Self::vars)),
    /// the first and second moments `(m, v)` as f64 vectors of the variable's length.
    /// Restoring it with [`set_state`](Self::set_state) continues bit-identically.
    pub fn state(&self) -> Result<(usize, Vec<MomentPair>)> {
        let moments = self
            .vars
            .iter()
            .map(|(_, mom)| match mom {
                Moments::Cpu(m) => {
                    let g = m
                        .lock()
                        .map_err(|_| candle_core::Error::Msg("AdamW state poisoned".into()))?;
                    Ok((g.0.clone(), g.1.clone()))
                }
                Moments::Device(m, v) => {
                    let f = |t: &Var| {
                        t.as_tensor()
                            .to_dtype(candle_core::DType::F64)?
                            .flatten_all()?
                            .to_vec1::<f64>()
                    };
                    Ok((f(m)?, f(v)?))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((self.step_t, moments))
    }

    /// Restores a state from [`state`](Self::state): `t` and one `(m, v)` pair per
    /// variable, in the same order, each of the variable's length.
    pub fn set_state(&mut self, step_t: usize, moments: Vec<MomentPair>) -> Result<()> {
        if moments.len() != self.vars.len() {
            bail!(
                "AdamW state has {} moment pairs for {} variables",
                moments.len(),
                self.vars.len()
            );
        }
        for ((var, mom), (m, v)) in self.vars.iter().zip(moments) {
            let n = var.elem_count();
            if m.len() != n || v.len() != n {
                bail!(
                    "AdamW state: moments of length {}/{} for a parameter of {n} values",
                    m.len(),
                    v.len()
                );
            }
            match mom {
                Moments::Cpu(cell) => {
                    let mut g = cell
                        .lock()
                        .map_err(|_| candle_core::Error::Msg("AdamW state poisoned".into()))?;
                    *g = (m, v);
                }
                Moments::Device(mt, vt) => {
                    let to = |x: Vec<f64>| {
                        Tensor::from_vec(x, var.shape(), var.device())?.to_dtype(var.dtype())
                    };
                    mt.set(&to(m)?)?;
                    vt.set(&to(v)?)?;
                }
            }
        }
        self.step_t = step_t;
        Ok(())
    }
}

/// The same update with tensor ops (non-CPU devices).
fn device_step(c: Coeffs, theta: &Var, m: &Var, v: &Var, g: &Tensor) -> Result<()> {
    let next_m = ((m.as_tensor() * c.b1)? + (g * (1.0 - c.b1))?)?;
    let next_v = ((v.as_tensor() * c.b2)? + (g.sqr()? * (1.0 - c.b2))?)?;
    let step = ((&next_m * c.scale_m)? / ((&next_v * c.scale_v)?.sqrt()? + c.eps)?)?;
    let next = ((theta.as_tensor() * (1.0 - c.decay))? - (step * c.lr)?)?;
    m.set(&next_m)?;
    v.set(&next_v)?;
    theta.set(&next)
}
