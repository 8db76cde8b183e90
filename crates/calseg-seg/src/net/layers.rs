//! Layers with candle-nn-compatible parameter names and shapes, computing either with the
//! fast ops of [`crate::ops`] or with candle's stock ops ([`Backend`]).

use crate::init::ParamInit;
use crate::ops::{self, stock};
use crate::{Result, SegError};
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Training/evaluation switch shared by the layers of one network (BatchNorm uses
/// batch statistics and updates its running statistics only in training mode; dropout
/// is active only in training mode), plus the seed of the next dropout mask.
///
/// A new network starts in **training** mode (as in PyTorch); inference code switches
/// it to evaluation with [`NetMode::set_training`]`(false)`.
#[derive(Debug)]
pub struct NetMode {
    training: AtomicBool,
    dropout_seed: AtomicU64,
}

impl Default for NetMode {
    fn default() -> Self {
        Self {
            training: AtomicBool::new(true),
            dropout_seed: AtomicU64::new(0),
        }
    }
}

impl NetMode {
    /// Whether the network is in training mode.
    pub fn training(&self) -> bool {
        self.training.load(Ordering::Relaxed)
    }
    /// Switches between training (`true`) and evaluation (`false`).
    pub fn set_training(&self, training: bool) {
        self.training.store(training, Ordering::Relaxed)
    }
    /// Sets the seed of the next forward pass's dropout masks.
    pub fn set_dropout_seed(&self, seed: u64) {
        self.dropout_seed.store(seed, Ordering::Relaxed)
    }
    /// The seed for one forward pass (then advances it by one, so that two passes
    /// without reseeding draw different masks).
    pub fn next_dropout_seed(&self) -> u64 {
        self.dropout_seed.fetch_add(1, Ordering::Relaxed)
    }
}

/// Which implementation of the operators a network uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// [`crate::ops`]: im2col + GEMM convolutions and fused norms (CPU; candle's ops elsewhere).
    #[default]
    Fast,
    /// candle's own operators (the `--stock` baseline and the test reference).
    Stock,
}

/// Convolution layer: `weight (out, in, k…)`, `bias (out)`, same stride/padding on all axes.
#[derive(Clone, Debug)]
pub struct Conv {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    padding: usize,
    backend: Backend,
}

/// `norm(conv(x))`, or of `conv(cat([x, x2], 1))` with `x2`: one fused autograd node
/// ([`ops::conv_norm`]) when both layers run on the fast backend with GroupNorm /
/// InstanceNorm, otherwise the two layers one after the other (same values).
pub fn conv_norm_relu(
    conv: &Conv,
    norm: &NormRelu,
    x: &Tensor,
    x2: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    if let (Backend::Fast, Backend::Fast, None, Some((gamma, beta, groups)), Some(bias)) = (
        conv.backend,
        norm.backend,
        &norm.batch,
        &norm.affine,
        &conv.bias,
    ) {
        return ops::conv_norm(
            x,
            x2,
            &conv.weight,
            bias,
            gamma,
            beta,
            *groups,
            NORM_EPS,
            true,
            conv.stride,
            conv.padding,
        );
    }
    let z = match x2 {
        Some(x2) => conv.forward_cat(x, x2)?,
        None => conv.forward(x)?,
    };
    norm.forward(&z)
}

/// Shape of a kernel `(a, b, k…)` with `dims` spatial axes.
fn kshape(a: usize, b: usize, k: usize, dims: usize) -> Vec<usize> {
    let mut s = vec![a, b];
    s.extend(std::iter::repeat_n(k, dims));
    s
}

impl Conv {
    /// A `dims`-D convolution `cin → cout` with kernel `k`, PyTorch's default init
    /// (weight and bias uniform in `±1/√(cin·k^dims)`), parameters `{prefix}.weight`
    /// and `{prefix}.bias`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        init: &mut ParamInit,
        prefix: &str,
        dims: usize,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: usize,
        backend: Backend,
    ) -> Result<Self> {
        let fan_in = (cin * k.pow(dims as u32)) as f64;
        let bound = 1.0 / fan_in.sqrt();
        let weight = init.uniform(
            &format!("{prefix}.weight"),
            &kshape(cout, cin, k, dims),
            bound,
        )?;
        let bias = init.uniform(&format!("{prefix}.bias"), &[cout], bound)?;
        Ok(Self {
            weight,
            bias: Some(bias),
            stride,
            padding,
            backend,
        })
    }

    /// `y = x ⊛ weight + bias`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self.backend {
            Backend::Fast => ops::conv(
                x,
                &self.weight,
                self.bias.as_ref(),
                self.stride,
                self.padding,
            ),
            Backend::Stock => stock::conv(
                x,
                &self.weight,
                self.bias.as_ref(),
                self.stride,
                self.padding,
            ),
        }
    }

    /// `y = cat([a, b], 1) ⊛ weight + bias`, the concatenation fused into the convolution
    /// with the fast backend ([`ops::conv_cat`]).
    pub fn forward_cat(&self, a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
        let (w, bias) = (&self.weight, self.bias.as_ref());
        match self.backend {
            Backend::Fast => ops::conv_cat(a, b, w, bias, self.stride, self.padding),
            Backend::Stock => stock::conv(
                &Tensor::cat(&[a, b], 1)?,
                w,
                bias,
                self.stride,
                self.padding,
            ),
        }
    }
}

/// Transposed convolution layer: `weight (in, out, k…)`, `bias (out)`.
#[derive(Clone, Debug)]
pub struct ConvTranspose {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    padding: usize,
    backend: Backend,
}

impl ConvTranspose {
    /// A `dims`-D transposed convolution `cin → cout`, kernel `k`, with PyTorch's default
    /// init (its fan-in is computed from the weight's dim 1: `bound = 1/√(cout·k^dims)`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        init: &mut ParamInit,
        prefix: &str,
        dims: usize,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        backend: Backend,
    ) -> Result<Self> {
        let bound = 1.0 / ((cout * k.pow(dims as u32)) as f64).sqrt();
        let weight = init.uniform(
            &format!("{prefix}.weight"),
            &kshape(cin, cout, k, dims),
            bound,
        )?;
        let bias = init.uniform(&format!("{prefix}.bias"), &[cout], bound)?;
        Ok(Self {
            weight,
            bias: Some(bias),
            stride,
            padding: 0,
            backend,
        })
    }

    /// `y = conv_transpose(x, weight) + bias`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (w, b) = (&self.weight, self.bias.as_ref());
        match self.backend {
            Backend::Fast => ops::conv_transpose(x, w, b, self.stride, self.padding),
            Backend::Stock => stock::conv_transpose(x, w, b, self.stride, self.padding),
        }
    }
}

/// Normalisation layer kinds of the nets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormKind {
    /// GroupNorm with at most this many groups (the largest divisor of the channel count
    /// not above it, e.g. `min(8, c)` for power-of-two widths).
    Group(usize),
    /// InstanceNorm with affine parameters (= GroupNorm with one channel per group).
    Instance,
    /// No normalisation.
    None,
    /// BatchNorm (PyTorch semantics): in training mode each channel is normalised with
    /// the mean and (biased) variance over the batch and spatial axes, and the running
    /// statistics are updated, `r ← 0.9·r + 0.1·batch` (unbiased variance, momentum
    /// 0.1); in evaluation mode the running statistics are used. They are stored in the
    /// `VarMap` as `{prefix}.running_mean` / `{prefix}.running_var` (so checkpoints carry
    /// them); they never receive a gradient, so the optimiser leaves them alone.
    Batch,
}

/// BatchNorm momentum of the running statistics (PyTorch's default).
pub const BN_MOMENTUM: f64 = 0.1;

/// A normalisation followed by ReLU (fused into one op on the fast backend for group
/// and instance norm).
#[derive(Clone, Debug)]
pub struct NormRelu {
    affine: Option<(Tensor, Tensor, usize)>,
    batch: Option<BatchStats>,
    backend: Backend,
}

/// Running statistics and mode of a BatchNorm.
#[derive(Clone, Debug)]
struct BatchStats {
    mean: Var,
    var: Var,
    mode: Arc<NetMode>,
}

/// GroupNorm/InstanceNorm epsilon (PyTorch's default).
pub const NORM_EPS: f64 = 1e-5;

impl NormRelu {
    /// Norm over `c` channels: parameters `{prefix}.weight` (ones) and `{prefix}.bias`
    /// (zeros), as in candle-nn/PyTorch.
    /// A BatchNorm made with `new` has a mode of its own (training); use
    /// [`NormRelu::with_mode`] to share one switch across a network.
    pub fn new(
        init: &mut ParamInit,
        prefix: &str,
        kind: NormKind,
        c: usize,
        backend: Backend,
    ) -> Result<Self> {
        Self::with_mode(init, prefix, kind, c, backend, &Arc::default())
    }

    /// As [`NormRelu::new`], with the training/evaluation switch `mode` (used by
    /// [`NormKind::Batch`] only).
    pub fn with_mode(
        init: &mut ParamInit,
        prefix: &str,
        kind: NormKind,
        c: usize,
        backend: Backend,
        mode: &Arc<NetMode>,
    ) -> Result<Self> {
        let groups = match kind {
            NormKind::None => {
                return Ok(Self {
                    affine: None,
                    batch: None,
                    backend,
                });
            }
            NormKind::Batch => {
                let w = init.constant(&format!("{prefix}.weight"), &[c], 1.0)?;
                let b = init.constant(&format!("{prefix}.bias"), &[c], 0.0)?;
                let rm = init.constant(&format!("{prefix}.running_mean"), &[c], 0.0)?;
                let rv = init.constant(&format!("{prefix}.running_var"), &[c], 1.0)?;
                return Ok(Self {
                    affine: Some((w, b, 1)),
                    batch: Some(BatchStats {
                        mean: Var::from_tensor(&rm)?,
                        var: Var::from_tensor(&rv)?,
                        mode: mode.clone(),
                    }),
                    backend,
                });
            }
            NormKind::Instance => c,
            NormKind::Group(0) => return Err(SegError::Config("group norm with 0 groups".into())),
            NormKind::Group(g) => (1..=g.min(c))
                .rev()
                .find(|d| c.is_multiple_of(*d))
                .unwrap_or(1),
        };
        let w = init.constant(&format!("{prefix}.weight"), &[c], 1.0)?;
        let b = init.constant(&format!("{prefix}.bias"), &[c], 0.0)?;
        Ok(Self {
            affine: Some((w, b, groups)),
            batch: None,
            backend,
        })
    }

    /// `relu(norm(x))`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if let (Some(bs), Some((w, b, _))) = (&self.batch, &self.affine) {
            return batch_norm_relu(x, w, b, bs);
        }
        match (&self.affine, self.backend) {
            (None, _) => x.relu(),
            (Some((w, b, g)), Backend::Fast) => ops::group_norm(x, w, b, *g, NORM_EPS, true),
            (Some((w, b, g)), Backend::Stock) => stock::group_norm(x, w, b, *g, NORM_EPS, true),
        }
    }
}

/// BatchNorm + ReLU of `x (n, c, …)` from candle ops (autograd through the batch
/// statistics in training mode):
///
/// ```text
/// training:  μ_c = mean_{n,s} x,  σ²_c = mean_{n,s} (x − μ_c)²,  y = relu(γ (x − μ)/√(σ² + ε) + β)
///            r_μ ← (1 − m) r_μ + m μ,  r_σ² ← (1 − m) r_σ² + m σ² · N/(N − 1)   (N = n·|s|)
/// eval:      y = relu(γ (x − r_μ)/√(r_σ² + ε) + β)
/// ```
fn batch_norm_relu(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    bs: &BatchStats,
) -> candle_core::Result<Tensor> {
    let dims = x.dims();
    if dims.len() < 3 {
        candle_core::bail!("batch norm: expected (n, c, …), got {dims:?}");
    }
    let c = dims[1];
    let mut bshape = vec![1usize; dims.len()];
    bshape[1] = c;
    let g = gamma.reshape(bshape.as_slice())?;
    let b = beta.reshape(bshape.as_slice())?;
    if bs.mode.training() {
        let reduce: Vec<usize> = std::iter::once(0).chain(2..dims.len()).collect();
        let count = x.elem_count() / c;
        let mean = x.mean_keepdim(reduce.as_slice())?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(reduce.as_slice())?;
        let y = xc
            .broadcast_div(&(&var + NORM_EPS)?.sqrt()?)?
            .broadcast_mul(&g)?
            .broadcast_add(&b)?
            .relu()?;
        let unbias = if count > 1 {
            count as f64 / (count - 1) as f64
        } else {
            1.0
        };
        let m = BN_MOMENTUM;
        let dtype = bs.mean.dtype();
        let bm = mean.detach().flatten_all()?.to_dtype(dtype)?;
        let bv = (var.detach().flatten_all()? * unbias)?.to_dtype(dtype)?;
        let nm = ((bs.mean.as_tensor() * (1.0 - m))? + (bm * m)?)?;
        let nv = ((bs.var.as_tensor() * (1.0 - m))? + (bv * m)?)?;
        bs.mean.set(&nm)?;
        bs.var.set(&nv)?;
        Ok(y)
    } else {
        let rm = bs.mean.as_tensor().detach().reshape(bshape.as_slice())?;
        let rv = bs.var.as_tensor().detach().reshape(bshape.as_slice())?;
        let scale = g.broadcast_div(&(rv + NORM_EPS)?.sqrt()?)?;
        let shift = (b - rm.broadcast_mul(&scale)?)?;
        x.broadcast_mul(&scale)?.broadcast_add(&shift)?.relu()
    }
}
