//! U-Net (2D or 3D) — encoder of double-conv blocks with pooling, a bottleneck block,
//! a decoder of transposed-conv upsampling + skip concatenation + double-conv blocks,
//! and a 1×1 head producing class logits.
//!
//! Architecture (`depth = D`, `base = B`, widths `B·2^i`), identical in layer order and
//! parameter names to the PyTorch twin `unet_step_torch.py`:
//!
//! ```text
//! enc.i   : Block(c_in → B·2^i), then avg-pool 2          (i = 0 .. D−1, skip saved)
//! bott    : Block(B·2^(D−1) → B·2^D)
//! ups.j   : ConvTranspose(B·2^(i+1) → B·2^i, k 2, s 2)    (j = 0 .. D−1, i = D−1−j)
//! dec.j   : Block(cat[skip_i, up] = 2·B·2^i → B·2^i)
//! head    : Conv 1×1 (B → classes)
//! Block   : c1 conv3 pad1 → n1 norm → relu → c2 conv3 pad1 → n2 norm → relu
//! ```
//!
//! Input `(n, in_channels, [d,] h, w)` with every spatial size divisible by `2^D`;
//! output logits `(n, classes, [d,] h, w)`.

use super::layers::{Backend, Conv, ConvTranspose, NormKind, NormRelu};
use crate::init::ParamInit;
use crate::ops::{self, stock};
use crate::{Result, SegError};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

/// Downsampling between encoder levels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolKind {
    /// Average pooling, kernel = stride = 2. (Max pooling is not offered: candle 0.11's
    /// max-pool gradient is wrong.)
    #[default]
    Avg,
}

/// Hyper-parameters of a [`UNet`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    pub pool: PoolKind,
    /// Fast ops or candle's stock ops.
    pub backend: Backend,
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
        Ok(())
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
    ) -> Result<Self> {
        let (d, be) = (cfg.dims, cfg.backend);
        Ok(Self {
            c1: Conv::new(init, &format!("{prefix}.c1"), d, cin, cout, 3, 1, 1, be)?,
            n1: NormRelu::new(init, &format!("{prefix}.n1"), cfg.norm, cout, be)?,
            c2: Conv::new(init, &format!("{prefix}.c2"), d, cout, cout, 3, 1, 1, be)?,
            n2: NormRelu::new(init, &format!("{prefix}.n2"), cfg.norm, cout, be)?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.n1.forward(&self.c1.forward(x)?)?;
        self.n2.forward(&self.c2.forward(&x)?)
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
    bott: Block,
    ups: Vec<ConvTranspose>,
    dec: Vec<Block>,
    head: Conv,
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
        let width = |i: usize| cfg.base << i;
        let mut enc = Vec::with_capacity(cfg.depth);
        let mut c = cfg.in_channels;
        for i in 0..cfg.depth {
            enc.push(Block::new(
                &mut init,
                &format!("enc.{i}"),
                cfg,
                c,
                width(i),
            )?);
            c = width(i);
        }
        let bott = Block::new(&mut init, "bott", cfg, c, width(cfg.depth))?;
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
            bott,
            ups,
            dec,
            head,
        })
    }

    /// The configuration this network was built with.
    pub fn config(&self) -> &UNetConfig {
        &self.cfg
    }

    fn pool(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match (self.cfg.pool, self.cfg.backend) {
            (PoolKind::Avg, Backend::Fast) => ops::avg_pool(x, 2),
            (PoolKind::Avg, Backend::Stock) => stock::avg_pool(x, 2),
        }
    }
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
        let mut skips = Vec::with_capacity(self.cfg.depth);
        let mut h = x.clone();
        for b in &self.enc {
            h = b.forward(&h)?;
            skips.push(h.clone());
            h = self.pool(&h)?;
        }
        h = self.bott.forward(&h)?;
        for (up, d) in self.ups.iter().zip(&self.dec) {
            let u = up.forward(&h)?;
            let Some(skip) = skips.pop() else {
                candle_core::bail!("U-Net: missing skip")
            };
            h = d.forward(&Tensor::cat(&[&skip, &u], 1)?)?;
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
