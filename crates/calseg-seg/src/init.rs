//! Seeded parameter creation and random tensors.
//!
//! candle's CPU random generator cannot be seeded, so every random tensor of this crate
//! is drawn from a [`rand::rngs::StdRng`] and copied into a tensor.

use crate::{Result, SegError};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand::Rng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal, Uniform};

/// A tensor of i.i.d. standard normal values, drawn from `rng`.
pub fn randn(rng: &mut StdRng, shape: &[usize], dtype: DType, dev: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| StandardNormal.sample(rng)).collect();
    Ok(Tensor::from_vec(v, shape, dev)?.to_dtype(dtype)?)
}

/// A tensor of i.i.d. values uniform in `[−bound, bound)`, drawn from `rng`.
pub fn uniform(
    rng: &mut StdRng,
    shape: &[usize],
    bound: f64,
    dtype: DType,
    dev: &Device,
) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = if bound > 0.0 {
        let d = Uniform::new(-bound, bound)
            .map_err(|e| SegError::Config(format!("uniform({bound}): {e}")))?;
        (0..n).map(|_| rng.sample(d)).collect()
    } else {
        vec![0.0; n]
    };
    Ok(Tensor::from_vec(v, shape, dev)?.to_dtype(dtype)?)
}

/// Creates the trainable parameters of a network: each is drawn from the seeded `rng`,
/// registered under its name in the [`VarMap`] (for the optimiser and safetensors
/// checkpoints) and returned as the tensor the layer computes with.
pub struct ParamInit<'a> {
    map: &'a VarMap,
    rng: &'a mut StdRng,
    dtype: DType,
    device: Device,
}

impl<'a> ParamInit<'a> {
    /// Parameters of `dtype` on `device`, registered in `map`, drawn from `rng`.
    pub fn new(map: &'a VarMap, rng: &'a mut StdRng, dtype: DType, device: &Device) -> Self {
        Self {
            map,
            rng,
            dtype,
            device: device.clone(),
        }
    }

    fn register(&mut self, name: &str, t: Tensor) -> Result<Tensor> {
        let var = Var::from_tensor(&t)?;
        let mut data = self
            .map
            .data()
            .lock()
            .map_err(|_| SegError::Config("parameter map lock poisoned".into()))?;
        if data.contains_key(name) {
            return Err(SegError::Config(format!("parameter {name} defined twice")));
        }
        let out = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(out)
    }

    /// A parameter uniform in `[−bound, bound)` (PyTorch's default conv init uses
    /// `bound = 1/√fan_in` for both weight — Kaiming-uniform with a = √5 — and bias).
    pub fn uniform(&mut self, name: &str, shape: &[usize], bound: f64) -> Result<Tensor> {
        let t = uniform(self.rng, shape, bound, self.dtype, &self.device)?;
        self.register(name, t)
    }

    /// A parameter filled with `value` (e.g. norm scale 1, shift 0).
    pub fn constant(&mut self, name: &str, shape: &[usize], value: f64) -> Result<Tensor> {
        let t = (Tensor::ones(shape, self.dtype, &self.device)? * value)?;
        self.register(name, t)
    }
}
