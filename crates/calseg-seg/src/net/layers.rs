//! Layers with candle-nn-compatible parameter names and shapes, computing either with the
//! fast ops of [`crate::ops`] or with candle's stock ops ([`Backend`]).

use crate::init::ParamInit;
use crate::ops::{self, stock};
use crate::{Result, SegError};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

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
}

/// A normalisation followed by ReLU (fused into one op on the fast backend).
#[derive(Clone, Debug)]
pub struct NormRelu {
    affine: Option<(Tensor, Tensor, usize)>,
    backend: Backend,
}

/// GroupNorm/InstanceNorm epsilon (PyTorch's default).
pub const NORM_EPS: f64 = 1e-5;

impl NormRelu {
    /// Norm over `c` channels: parameters `{prefix}.weight` (ones) and `{prefix}.bias`
    /// (zeros), as in candle-nn/PyTorch.
    pub fn new(
        init: &mut ParamInit,
        prefix: &str,
        kind: NormKind,
        c: usize,
        backend: Backend,
    ) -> Result<Self> {
        let groups = match kind {
            NormKind::None => {
                return Ok(Self {
                    affine: None,
                    backend,
                });
            }
            NormKind::Instance => c,
            NormKind::Group(0) => return Err(SegError::Config("group norm with 0 groups".into())),
            NormKind::Group(g) => (1..=g.min(c)).rev().find(|d| c % d == 0).unwrap_or(1),
        };
        let w = init.constant(&format!("{prefix}.weight"), &[c], 1.0)?;
        let b = init.constant(&format!("{prefix}.bias"), &[c], 0.0)?;
        Ok(Self {
            affine: Some((w, b, groups)),
            backend,
        })
    }

    /// `relu(norm(x))`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match (&self.affine, self.backend) {
            (None, _) => x.relu(),
            (Some((w, b, g)), Backend::Fast) => ops::group_norm(x, w, b, *g, NORM_EPS, true),
            (Some((w, b, g)), Backend::Stock) => stock::group_norm(x, w, b, *g, NORM_EPS, true),
        }
    }
}
