//! U-Net (2D or 3D) — encoder of double-conv blocks with pooling, a bottleneck block,
//! a decoder of transposed-conv upsampling + skip concatenation + double-conv blocks,
//! and a 1×1 head producing class logits.
//!
//! Architecture (`depth = D`, `base = B`, widths `B·2^i`), identical in layer order and
//! parameter names to the PyTorch twin `unet_step_torch.py`:
//!
//! ```text
//! enc.i   : Block(c_in → B·2^i), then pool 2              (i = 0 .. D−1, skip saved)
//! down.i  : Conv(B·2^i → B·2^i, k 2, s 2)                 (only with `pool = conv`)
//! bott    : Block(B·2^(D−1) → B·2^D)
//! ups.j   : ConvTranspose(B·2^(i+1) → B·2^i, k 2, s 2)    (j = 0 .. D−1, i = D−1−j)
//! dec.j   : Block(cat[skip_i, up] = 2·B·2^i → B·2^i)
//! head    : Conv 1×1 (B → classes)
//! Block   : c1 conv3 pad1 → n1 norm → relu → c2 conv3 pad1 → n2 norm → relu
//!           (→ dropout p, training mode only, when `dropout > 0`)
//! ```
//!
//! Training vs evaluation mode ([`UNet::set_training`]) matters for BatchNorm and
//! dropout only. Dropout zeroes each activation of every block output with probability
//! `p` and scales the rest by `1/(1 − p)` (inverted dropout, as `torch.nn.Dropout`); its
//! masks are drawn from `StdRng::seed_from_u64(s)` where `s` is set with
//! [`UNet::set_dropout_seed`] (the trainer draws it from its seeded generator before
//! every step) and advances by one per forward pass, so runs are reproducible.
//!
//! Input `(n, in_channels, [d,] h, w)` with every spatial size divisible by `2^D`;
//! output logits `(n, classes, [d,] h, w)`.

use super::layers::{Backend, Conv, ConvTranspose, NetMode, NormKind, NormRelu, conv_norm_relu};
use crate::init::ParamInit;
use crate::ops::{self, stock};
use crate::{Result, SegError};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Downsampling between encoder levels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolKind {
    /// Average pooling, kernel = stride = 2. (Max pooling is not offered: candle 0.11's
    /// max-pool gradient is wrong.)
    #[default]
    Avg,
    /// A learned strided convolution, kernel = stride = 2, same width in and out
    /// (parameters `down.{i}.weight`, `down.{i}.bias`).
    Conv,
}

/// Hyper-parameters of a [`UNet`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UNetConfig {
    /// Spatial dimensions: 2 or 3.
    pub dims: usize,
    /// Input channels (modalities).
    pub in_channels: usize,
    /// Output classes (logit channels).
    pub classes: usize,
    /// Width of the first level; level `i` has `base · 2^i` channels.
    pub base: usize,
    /// Number of poolings (the bottleneck runs at `1/2^depth` resolution).
    pub depth: usize,
    /// Normalisation after each convolution of a block.
    pub norm: NormKind,
    /// Downsampling.
    #[serde(default)]
    pub pool: PoolKind,
    /// Fast ops or candle's stock ops.
    #[serde(default)]
    pub backend: Backend,
    /// Dropout probability after every block, in `[0, 1)`; 0 = none (default).
    #[serde(default)]
    pub dropout: f64,
}

impl Default for UNetConfig {
    /// The benchmark U-Net: 2D, 2 → 2 channels, base 16, depth 4, GroupNorm(8), fast ops.
    fn default() -> Self {
        Self {
            dims: 2,
            in_channels: 2,
            classes: 2,
            base: 16,
            depth: 4,
            norm: NormKind::Group(8),
            pool: PoolKind::Avg,
            backend: Backend::Fast,
            dropout: 0.0,
        }
    }
}

impl UNetConfig {
    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(SegError::Config(m));
        if !(2..=3).contains(&self.dims) {
            return bad(format!("dims must be 2 or 3, got {}", self.dims));
        }
        if self.in_channels == 0 || self.classes == 0 || self.base == 0 {
            return bad("in_channels, classes and base must be positive".into());
        }
        if self.depth == 0 || self.depth > 8 {
            return bad(format!("depth must be in 1..=8, got {}", self.depth));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        Ok(())
    }

    /// Spatial sizes must be multiples of this (`2^depth`).
    pub fn size_multiple(&self) -> usize {
        1 << self.depth
    }
}

/// Two 3×3(×3) convolutions, each followed by norm + ReLU.
#[derive(Clone, Debug)]
struct Block {
    c1: Conv,
    n1: NormRelu,
    c2: Conv,
    n2: NormRelu,
}

impl Block {
    fn new(
        init: &mut ParamInit,
        prefix: &str,
        cfg: &UNetConfig,
        cin: usize,
        cout: usize,
        mode: &Arc<NetMode>,
    ) -> Result<Self> {
        let (d, be) = (cfg.dims, cfg.backend);
        let nk = cfg.norm;
        Ok(Self {
            c1: Conv::new(init, &format!("{prefix}.c1"), d, cin, cout, 3, 1, 1, be)?,
            n1: NormRelu::with_mode(init, &format!("{prefix}.n1"), nk, cout, be, mode)?,
            c2: Conv::new(init, &format!("{prefix}.c2"), d, cout, cout, 3, 1, 1, be)?,
            n2: NormRelu::with_mode(init, &format!("{prefix}.n2"), nk, cout, be, mode)?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = conv_norm_relu(&self.c1, &self.n1, x, None)?;
        conv_norm_relu(&self.c2, &self.n2, &x, None)
    }

    /// [`Self::forward`] of `cat([a, b], 1)`, the concatenation fused into `c1`.
    fn forward_cat(&self, a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
        let x = conv_norm_relu(&self.c1, &self.n1, a, Some(b))?;
        conv_norm_relu(&self.c2, &self.n2, &x, None)
    }
}

/// A U-Net whose parameters live in a [`VarMap`] (train them with any candle optimiser
/// over `varmap.all_vars()`, save them with `varmap.save(path)` as safetensors).
///
/// ```
/// use calseg_seg::net::{UNet, UNetConfig};
/// use candle_core::{DType, Device, Module, Tensor};
/// use candle_nn::VarMap;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cfg = UNetConfig { base: 4, depth: 2, ..UNetConfig::default() };
/// let vm = VarMap::new();
/// let net = UNet::new(&cfg, &vm, 42, DType::F32, &Device::Cpu)?;
/// let x = Tensor::zeros((1, 2, 16, 16), DType::F32, &Device::Cpu)?;
/// assert_eq!(net.forward(&x)?.dims(), &[1, 2, 16, 16]);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct UNet {
    cfg: UNetConfig,
    enc: Vec<Block>,
    down: Vec<Conv>,
    bott: Block,
    ups: Vec<ConvTranspose>,
    dec: Vec<Block>,
    head: Conv,
    mode: Arc<NetMode>,
}

impl UNet {
    /// Builds the network, drawing every parameter from `StdRng::seed_from_u64(seed)`
    /// (PyTorch's default initialisation) into `varmap`.
    pub fn new(
        cfg: &UNetConfig,
        varmap: &VarMap,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        cfg.validate()?;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut init = ParamInit::new(varmap, &mut rng, dtype, device);
        let mode = Arc::new(NetMode::default());
        let width = |i: usize| cfg.base << i;
        let mut enc = Vec::with_capacity(cfg.depth);
        let mut down = Vec::new();
        let mut c = cfg.in_channels;
        for i in 0..cfg.depth {
            enc.push(Block::new(
                &mut init,
                &format!("enc.{i}"),
                cfg,
                c,
                width(i),
                &mode,
            )?);
            c = width(i);
            if cfg.pool == PoolKind::Conv {
                let name = format!("down.{i}");
                down.push(Conv::new(
                    &mut init,
                    &name,
                    cfg.dims,
                    c,
                    c,
                    2,
                    2,
                    0,
                    cfg.backend,
                )?);
            }
        }
        let bott = Block::new(&mut init, "bott", cfg, c, width(cfg.depth), &mode)?;
        let (mut ups, mut dec) = (Vec::new(), Vec::new());
        for (j, i) in (0..cfg.depth).rev().enumerate() {
            let be = cfg.backend;
            ups.push(ConvTranspose::new(
                &mut init,
                &format!("ups.{j}.op"),
                cfg.dims,
                width(i + 1),
                width(i),
                2,
                2,
                be,
            )?);
            dec.push(Block::new(
                &mut init,
                &format!("dec.{j}"),
                cfg,
                2 * width(i),
                width(i),
                &mode,
            )?);
        }
        let head = Conv::new(
            &mut init,
            "head",
            cfg.dims,
            cfg.base,
            cfg.classes,
            1,
            1,
            0,
            cfg.backend,
        )?;
        Ok(Self {
            cfg: cfg.clone(),
            enc,
            down,
            bott,
            ups,
            dec,
            head,
            mode,
        })
    }

    /// The configuration this network was built with.
    pub fn config(&self) -> &UNetConfig {
        &self.cfg
    }

    /// Switches between training (`true`: batch statistics, dropout) and evaluation
    /// (`false`: running statistics, no dropout). A new network is in training mode.
    pub fn set_training(&self, training: bool) {
        self.mode.set_training(training)
    }

    /// Whether the network is in training mode.
    pub fn training(&self) -> bool {
        self.mode.training()
    }

    /// Seeds the dropout masks of the next forward pass (see the module docs).
    pub fn set_dropout_seed(&self, seed: u64) {
        self.mode.set_dropout_seed(seed)
    }

    fn pool(&self, i: usize, x: &Tensor) -> candle_core::Result<Tensor> {
        match (self.cfg.pool, self.cfg.backend) {
            (PoolKind::Avg, Backend::Fast) => ops::avg_pool(x, 2),
            (PoolKind::Avg, Backend::Stock) => stock::avg_pool(x, 2),
            (PoolKind::Conv, _) => match self.down.get(i) {
                Some(c) => c.forward(x),
                None => candle_core::bail!("U-Net: missing downsampling conv {i}"),
            },
        }
    }
}

/// Inverted dropout: each value kept with probability `1 − p` and scaled by `1/(1 − p)`.
fn dropout(x: &Tensor, p: f64, rng: &mut StdRng) -> candle_core::Result<Tensor> {
    let keep = 1.0 / (1.0 - p);
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| {
            if rng.random::<f64>() < p {
                0.0
            } else {
                keep as f32
            }
        })
        .collect();
    let mask = Tensor::from_vec(mask, x.dims(), x.device())?.to_dtype(x.dtype())?;
    x.mul(&mask)
}

impl UNet {
    /// The last decoder feature map `(n, base, …)` of an input `(n, in_channels, …)`:
    /// everything but the 1×1 head. Models that inject extra channels before their own
    /// heads (the variational label smoother) build on this.
    pub fn features(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let expected = self.cfg.dims + 2;
        if x.rank() != expected || x.dim(1)? != self.cfg.in_channels {
            candle_core::bail!(
                "U-Net expects ({}) input with {} channels, got {:?}",
                if self.cfg.dims == 2 {
                    "n, c, h, w"
                } else {
                    "n, c, d, h, w"
                },
                self.cfg.in_channels,
                x.dims()
            );
        }
        let m = 1usize << self.cfg.depth;
        if x.dims()[2..].iter().any(|s| s % m != 0) {
            candle_core::bail!(
                "U-Net of depth {} needs spatial sizes divisible by {m}, got {:?}",
                self.cfg.depth,
                x.dims()
            );
        }
        let p = self.cfg.dropout;
        let mut rng = (p > 0.0 && self.mode.training())
            .then(|| StdRng::seed_from_u64(self.mode.next_dropout_seed()));
        // A block's output, on `x` or (decoder) on `cat([x, x2], 1)`, then dropout.
        let mut block =
            |b: &Block, x: &Tensor, x2: Option<&Tensor>| -> candle_core::Result<Tensor> {
                let y = match x2 {
                    Some(x2) => b.forward_cat(x, x2)?,
                    None => b.forward(x)?,
                };
                match rng.as_mut() {
                    Some(r) => dropout(&y, p, r),
                    None => Ok(y),
                }
            };
        let mut skips = Vec::with_capacity(self.cfg.depth);
        let mut h = x.clone();
        for (i, b) in self.enc.iter().enumerate() {
            h = block(b, &h, None)?;
            skips.push(h.clone());
            h = self.pool(i, &h)?;
        }
        h = block(&self.bott, &h, None)?;
        for (up, d) in self.ups.iter().zip(&self.dec) {
            let u = up.forward(&h)?;
            let Some(skip) = skips.pop() else {
                candle_core::bail!("U-Net: missing skip")
            };
            h = block(d, &skip, Some(&u))?;
        }
        Ok(h)
    }
}

impl candle_core::Module for UNet {
    /// Logits `(n, classes, …)` of an input `(n, in_channels, …)`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.head.forward(&self.features(x)?)
    }
}
