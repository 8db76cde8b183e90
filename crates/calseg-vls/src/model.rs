//! The VLS network: a conditional VAE whose decoder is a segmentation U-Net.
//!
//! ```text
//! posterior q(z|x,y):  cat[x (n,C,*sp), onehot(y) (n,K,*sp)]
//!                      → level i = 0..E−1: [avg-pool 2 if i > 0] conv3 → norm+ReLU → conv3 → norm+ReLU
//!                        (width enc_base·2^i; InstanceNorm in levels 0 and 1, none after)
//!                      → conv 1×1 → 2L channels → global mean  → (μ, logσ²) (n, L)
//!                        (spatial mode: no global mean → (n, L, *sp/2^(E−1)))
//! prior p(z):          N(0, I)
//! task net:            f = UNet::features(x) (n, base, *sp)   (the trunk, no z)
//!                      seg = W_seg · cat[f, z↑] + b  → (n, K, *sp)   logits
//!                      rec = σ(W_rec · cat[f, z↑] + b) → (n, C, *sp) reconstruction of x
//! ```
//!
//! `z↑` is `z` broadcast over space (global mode) or nearest-upsampled from the coarse
//! grid (spatial mode). Because the heads are 1×1 convolutions, `W·cat[f, z↑] =
//! W_f·f + W_z·z↑`: the feature part is computed once per image and every sample of `z`
//! only adds a per-class offset — that is what makes m samples nearly as cheap as one
//! ([`crate::smooth`]). The head weights are stored as ordinary 1×1 conv weights
//! `(out, base + L, 1, 1[, 1])` (candle-nn / PyTorch layout).
//!
//! The public code of the paper uses LeakyReLU in the encoder; calseg-seg's fused
//! [`NormRelu`] (ReLU) is used here instead. The trunk is a calseg-seg [`UNet`] whose own
//! 1×1 head is built but never used (its parameters get no gradient).

use crate::error::{Result, VlsError};
use crate::loss::{LossParts, beta_at, free_bits_kl, kl_per_dim, minmax01};
use calseg_seg::init::{ParamInit, randn};
use calseg_seg::loss::{SegLoss, SoftDice};
use calseg_seg::net::{Backend, Conv, NormKind, NormRelu, PoolKind, UNet, UNetConfig};
use calseg_seg::ops::{self, stock};
use calseg_seg::train::{Batch, StepInfo, Trainable};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Mutex;

/// Where the latent variable lives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LatentMode {
    /// One vector `z (n, L)` per image, broadcast over space (the paper's design).
    #[default]
    Global,
    /// One vector per location of the encoder's coarsest grid, `z (n, L, *sp/2^(E−1))`,
    /// nearest-upsampled to full resolution.
    Spatial,
}

/// The configuration file of a VLS model folder ([`VlsModel::save_dir`]).
pub const CONFIG_FILE: &str = "vls.json";
/// The weights file of a VLS model folder ([`VlsModel::save_dir`]).
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// Hyper-parameters of a [`VlsModel`]. Every field has a default (serde fills missing
/// fields from [`VlsConfig::default`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VlsConfig {
    /// Spatial dimensions of the networks: 2 or 3. Default 2 (a 2D model smooths 3D
    /// cases slice by slice).
    pub dims: usize,
    /// Image channels C. Default 1.
    pub in_channels: usize,
    /// Classes K (background included). Default 4 (the embedded ICBM152 labels).
    pub classes: usize,
    /// Latent dimensions L. Default 3 (the paper).
    pub latent: usize,
    /// Encoder levels E (E − 1 poolings). Default 5.
    pub enc_levels: usize,
    /// Width of the first encoder level (doubling per level). Default 24.
    pub enc_base: usize,
    /// Width of the trunk U-Net's first level. Default 24 (the paper); 16 is cheaper.
    pub base: usize,
    /// Poolings of the trunk U-Net. Default 4.
    pub depth: usize,
    /// Normalisation of the trunk. Default InstanceNorm.
    pub norm: NormKind,
    /// Fast (calseg-seg custom ops) or candle's stock operators. Default fast.
    pub backend: Backend,
    /// Free bits λ_fb: floor of the batch-mean KL of each latent dimension, in nats
    /// (0 = plain KL, which collapses). Default 0.5. Measured on ICBM152 (README): with
    /// 0 the KL falls below 1e-4 nats, 0 active dimensions; with 0.5 all 3 stay active
    /// at 0.1–0.3 nats each.
    pub free_bits: f64,
    /// Final KL weight β. Default 1.
    pub beta: f64,
    /// Cyclical β schedule with this many cycles (0 = linear warm-up). Default 0.
    pub beta_cycles: usize,
    /// Weight of the reconstruction MSE. Default 1.
    pub lambda_rec: f64,
    /// Weight `w` of a soft-Dice term added to the segmentation CE (`CE + w·Dice`,
    /// nnU-Net's Dice + CE; background excluded). Default 1. Measured on ICBM152
    /// (benches/RESULTS.md): with CE alone (`0`) a short-budget smoother never predicts
    /// the thin CSF class (2.5 % of the training voxels), so every net trained on its
    /// soft labels loses CSF; the Dice term weighs each class equally and keeps it.
    pub dice_weight: f64,
    /// Epochs over which β ramps from 0 (0 = full β from the start). Default 5.
    pub kl_warmup_epochs: usize,
    /// `[lo, hi]` clamp of logσ² (numerical safety). Default `[-10, 10]`.
    pub logvar_clamp: [f64; 2],
    /// Global or spatial latent. Default global.
    pub latent_mode: LatentMode,
    /// Label-noise likelihood of the segmentation head: σ of the SVLS kernel (3^d
    /// neighbourhood) applied to the one-hot target of the CE term (the Dice term keeps
    /// the observed labels, so thin classes survive),
    /// `target = ½·y(c) + ½·Σ_{n≠c} w_n·y(n)`, `w_n ∝ exp(−|n−c|²/2σ²)`
    /// ([`calseg_seg::loss::svls_smooth`]; in-plane for a 2D model). It models the
    /// observed hard label at a boundary voxel as a noisy draw of the tissue around it,
    /// so the head learns `E[smoothed label | image]` instead of the step function of
    /// the hard labels. 0 = the paper's hard one-hot target. Default 1 (the SVLS
    /// literature's σ): measured on ICBM152 (crate README) it is what brings `y_s`
    /// below SVLS.
    pub target_sigma: f64,
    /// For a 2D model trained on slices of volumes: take the label-noise target over the
    /// volume (3×3×3, the slice's neighbours above and below count) instead of in-plane.
    /// The data pipeline must then supply it as the soft target
    /// ([`crate::smooth::noise_target`]; `calseg vls train` does), since a batch of
    /// slices cannot see its neighbours; a one-hot batch is still smoothed in-plane.
    /// Default false.
    pub volume_target: bool,
    /// A 3D model trained on patches of this size (`calseg vls train --dims 3 --patch`):
    /// it then smooths volumes window by window — windows of this
    /// size overlapping by ½, each with its own posterior, `y_s` blended with a Gaussian
    /// importance map (nnU-Net's sliding window) — so that every forward pass sees what
    /// training saw (normalisation statistics, the posterior encoder's global mean).
    /// Each size a multiple of [`multiple`](Self::multiple). Default `None`: whole
    /// volumes (and 2D models).
    pub patch: Option<Vec<usize>>,
}

impl Default for VlsConfig {
    fn default() -> Self {
        Self {
            dims: 2,
            in_channels: 1,
            classes: 4,
            latent: 3,
            enc_levels: 5,
            enc_base: 24,
            base: 24,
            depth: 4,
            norm: NormKind::Instance,
            backend: Backend::Fast,
            free_bits: 0.5,
            beta: 1.0,
            beta_cycles: 0,
            lambda_rec: 1.0,
            dice_weight: 1.0,
            kl_warmup_epochs: 5,
            logvar_clamp: [-10.0, 10.0],
            latent_mode: LatentMode::Global,
            target_sigma: 1.0,
            volume_target: false,
            patch: None,
        }
    }
}

impl VlsConfig {
    /// Checks every field; [`VlsError::Config`] names the first bad one.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(VlsError::Config(m));
        if !(2..=3).contains(&self.dims) {
            return bad(format!("dims must be 2 or 3, got {}", self.dims));
        }
        if self.in_channels == 0 || self.classes < 2 || self.latent == 0 {
            return bad(format!(
                "need in_channels ≥ 1, classes ≥ 2, latent ≥ 1 (got {}, {}, {})",
                self.in_channels, self.classes, self.latent
            ));
        }
        if !(1..=8).contains(&self.enc_levels) || !(1..=8).contains(&self.depth) {
            return bad(format!(
                "enc_levels and depth must be in 1..=8 (got {}, {})",
                self.enc_levels, self.depth
            ));
        }
        if self.enc_base == 0 || self.base == 0 {
            return bad("enc_base and base must be positive".into());
        }
        for (name, v) in [
            ("free_bits", self.free_bits),
            ("beta", self.beta),
            ("lambda_rec", self.lambda_rec),
            ("dice_weight", self.dice_weight),
            ("target_sigma", self.target_sigma),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(format!("{name} must be finite and ≥ 0, got {v}"));
            }
        }
        let [lo, hi] = self.logvar_clamp;
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return bad(format!(
                "logvar_clamp must be finite with lo < hi, got {lo}, {hi}"
            ));
        }
        if let Some(p) = &self.patch {
            let m = self.multiple();
            if self.dims != 3 || p.len() != 3 || p.iter().any(|&s| s == 0 || s % m != 0) {
                return bad(format!(
                    "patch {p:?}: a patch is for a 3D model (dims = 3, here {}) and needs 3 \
                     sizes, each a positive multiple of {m}",
                    self.dims
                ));
            }
        }
        Ok(())
    }

    /// Spatial sizes of the model's input must be multiples of this:
    /// `2^max(depth, enc_levels − 1)` (the trunk's and the encoder's poolings).
    pub fn multiple(&self) -> usize {
        1 << self.depth.max(self.enc_levels - 1)
    }

    /// Downsampling factor of the encoder's coarsest grid, `2^(enc_levels − 1)`.
    pub fn coarse_factor(&self) -> usize {
        1 << (self.enc_levels - 1)
    }

    // `..default()`: calseg-seg's U-Net is gaining fields (dropout, …) whose defaults
    // are what the trunk wants.
    #[allow(clippy::needless_update)]
    fn trunk(&self) -> UNetConfig {
        UNetConfig {
            dims: self.dims,
            in_channels: self.in_channels,
            classes: self.classes,
            base: self.base,
            depth: self.depth,
            norm: self.norm,
            pool: PoolKind::Avg,
            backend: self.backend,
            ..UNetConfig::default()
        }
    }
}

/// One encoder level: two 3×3 convolutions, each followed by norm + ReLU.
#[derive(Clone, Debug)]
struct EncLevel {
    c1: Conv,
    n1: NormRelu,
    c2: Conv,
    n2: NormRelu,
}

/// A 1×1 head on `cat[f, z↑]`, stored as one conv weight `(out, base + L, 1…)`.
#[derive(Clone, Debug)]
struct Head {
    weight: Tensor,
    bias: Tensor,
    feat: usize,
    latent: usize,
    backend: Backend,
}

impl Head {
    fn new(
        init: &mut ParamInit,
        prefix: &str,
        dims: usize,
        feat: usize,
        latent: usize,
        out: usize,
        backend: Backend,
    ) -> Result<Self> {
        let bound = 1.0 / ((feat + latent) as f64).sqrt();
        let mut shape = vec![out, feat + latent];
        shape.extend(std::iter::repeat_n(1, dims));
        Ok(Self {
            weight: init.uniform(&format!("{prefix}.weight"), &shape, bound)?,
            bias: init.uniform(&format!("{prefix}.bias"), &[out], bound)?,
            feat,
            latent,
            backend,
        })
    }

    /// `W_f · f` (no bias): `(n, feat, *sp)` → `(n, out, *sp)`.
    fn feat_term(&self, f: &Tensor) -> Result<Tensor> {
        let w = self.weight.narrow(1, 0, self.feat)?;
        Ok(match self.backend {
            Backend::Fast => ops::conv(f, &w, None, 1, 0)?,
            Backend::Stock => stock::conv(f, &w, None, 1, 0)?,
        })
    }

    /// `W_z · z + b`: global `z (n, L)` → `(n, out)`; spatial `z (n, L, *coarse)` →
    /// `(n, out, *coarse)`.
    fn z_term(&self, z: &Tensor) -> Result<Tensor> {
        let out = self.weight.dim(0)?;
        let wz = self
            .weight
            .narrow(1, self.feat, self.latent)?
            .reshape((out, self.latent))?;
        if z.rank() == 2 {
            return Ok(z.matmul(&wz.t()?)?.broadcast_add(&self.bias)?);
        }
        let mut shape = vec![out, self.latent];
        shape.extend(std::iter::repeat_n(1, z.rank() - 2));
        let wz = wz.reshape(shape)?;
        Ok(match self.backend {
            Backend::Fast => ops::conv(z, &wz, Some(&self.bias), 1, 0)?,
            Backend::Stock => stock::conv(z, &wz, Some(&self.bias), 1, 0)?,
        })
    }

    /// `W · cat[f, z↑] + b` from the two terms (`feat (n, out, *sp)`).
    fn combine(feat: &Tensor, zt: &Tensor) -> Result<Tensor> {
        Ok(feat.broadcast_add(&expand_z(zt, feat.dims())?)?)
    }
}

/// Brings a z-term to a shape that broadcasts against `(n, out, *sp)`: `(n, out)` gets
/// unit spatial axes; `(n, out, *coarse)` is nearest-upsampled to `*sp`.
fn expand_z(zt: &Tensor, full: &[usize]) -> Result<Tensor> {
    let (n, c) = (full[0], full[1]);
    if zt.rank() == 2 {
        let mut s = vec![n, c];
        s.extend(std::iter::repeat_n(1, full.len() - 2));
        return Ok(zt.reshape(s)?);
    }
    let coarse = &zt.dims()[2..];
    if coarse.len() != full.len() - 2 {
        return Err(VlsError::Shape(format!(
            "latent map {:?} does not fit features {full:?}",
            zt.dims()
        )));
    }
    let (mut unit, mut wide) = (vec![n, c], vec![n, c]);
    for (&s, &f) in coarse.iter().zip(&full[2..]) {
        if s == 0 || f % s != 0 {
            return Err(VlsError::Shape(format!(
                "latent map {:?} does not divide features {full:?}",
                zt.dims()
            )));
        }
        unit.extend([s, 1]);
        wide.extend([s, f / s]);
    }
    Ok(zt
        .reshape(unit)?
        .broadcast_as(wide)?
        .contiguous()?
        .reshape(full)?)
}

/// The approximate posterior `q(z|x,y) = N(μ, diag exp(logvar))`.
#[derive(Clone, Debug)]
pub struct Posterior {
    /// Means `(n, L)` (spatial mode: `(n, L, *coarse)`).
    pub mu: Tensor,
    /// Log-variances, clamped to [`VlsConfig::logvar_clamp`]; same shape as `mu`.
    pub logvar: Tensor,
}

/// Everything one training forward pass produces.
#[derive(Clone, Debug)]
pub struct VlsOutput {
    /// Segmentation logits `(n, K, *sp)`.
    pub seg_logits: Tensor,
    /// Reconstruction `σ(·)` in `(0, 1)`, `(n, C, *sp)`.
    pub recon: Tensor,
    /// The posterior the latent was drawn from.
    pub posterior: Posterior,
    /// The reparameterised sample `z = μ + σ·ε`.
    pub z: Tensor,
}

/// Per-epoch running sums of KL per latent dimension (for [`Trainable::end_epoch`]).
#[derive(Debug, Default)]
struct KlAccum {
    sum: Vec<f64>,
    count: usize,
}

impl std::fmt::Debug for VlsModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VlsModel")
            .field("cfg", &self.cfg)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// KL (nats) above which a latent dimension counts as active.
pub const ACTIVE_KL: f64 = 0.01;

/// The variational label smoother (see the module docs). Parameters live in its own
/// [`VarMap`]: save with [`VlsModel::save`], train with any [`Trainable`]-driven trainer.
pub struct VlsModel {
    cfg: VlsConfig,
    varmap: VarMap,
    device: Device,
    trunk: UNet,
    enc: Vec<EncLevel>,
    enc_out: Conv,
    seg_head: Head,
    rec_head: Head,
    kl_acc: Mutex<KlAccum>,
}

impl VlsModel {
    /// Builds the model with parameters drawn from `seed` (the trunk from `seed`, the
    /// encoder and heads from a generator derived from it), f32 on `device`.
    ///
    /// Parameter names: trunk `enc.*`, `bott.*`, `ups.*`, `dec.*`, `head.*` (unused);
    /// encoder `posterior.{i}.{c1,n1,c2,n2}.*`, `posterior.out.*`; heads `seg_head.*`,
    /// `rec_head.*`.
    pub fn new(cfg: &VlsConfig, seed: u64, device: &Device) -> Result<Self> {
        cfg.validate()?;
        let varmap = VarMap::new();
        let trunk = UNet::new(&cfg.trunk(), &varmap, seed, DType::F32, device)?;
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5641_4c53_5f56_4c53);
        let mut init = ParamInit::new(&varmap, &mut rng, DType::F32, device);
        let (d, be) = (cfg.dims, cfg.backend);
        let mut enc = Vec::with_capacity(cfg.enc_levels);
        let mut cin = cfg.in_channels + cfg.classes;
        for i in 0..cfg.enc_levels {
            let w = cfg.enc_base << i;
            let norm = if i < 2 {
                NormKind::Instance
            } else {
                NormKind::None
            };
            let p = format!("posterior.{i}");
            enc.push(EncLevel {
                c1: Conv::new(&mut init, &format!("{p}.c1"), d, cin, w, 3, 1, 1, be)?,
                n1: NormRelu::new(&mut init, &format!("{p}.n1"), norm, w, be)?,
                c2: Conv::new(&mut init, &format!("{p}.c2"), d, w, w, 3, 1, 1, be)?,
                n2: NormRelu::new(&mut init, &format!("{p}.n2"), norm, w, be)?,
            });
            cin = w;
        }
        let enc_out = Conv::new(
            &mut init,
            "posterior.out",
            d,
            cin,
            2 * cfg.latent,
            1,
            1,
            0,
            be,
        )?;
        let seg_head = Head::new(
            &mut init,
            "seg_head",
            d,
            cfg.base,
            cfg.latent,
            cfg.classes,
            be,
        )?;
        let rec_head = Head::new(
            &mut init,
            "rec_head",
            d,
            cfg.base,
            cfg.latent,
            cfg.in_channels,
            be,
        )?;
        Ok(Self {
            cfg: cfg.clone(),
            varmap,
            device: device.clone(),
            trunk,
            enc,
            enc_out,
            seg_head,
            rec_head,
            kl_acc: Mutex::new(KlAccum::default()),
        })
    }

    /// Builds the model for `cfg` and loads its parameters from a safetensors file
    /// written by [`VlsModel::save`] (or a trainer checkpoint of the same varmap).
    pub fn load(cfg: &VlsConfig, weights: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let mut m = Self::new(cfg, 0, device)?;
        m.varmap.load(weights.as_ref())?;
        Ok(m)
    }

    /// Writes every parameter to a safetensors file.
    pub fn save(&self, weights: impl AsRef<Path>) -> Result<()> {
        Ok(self.varmap.save(weights.as_ref())?)
    }

    /// Writes the model folder `dir` (created if needed): [`WEIGHTS_FILE`] and then
    /// [`CONFIG_FILE`] (the [`VlsConfig`] as JSON), each atomically — a folder with a
    /// config always has its weights. `calseg vls train` and `calseg experiment` both
    /// write this layout, and [`VlsModel::load_dir`] (`calseg vls smooth --model`) reads it.
    pub fn save_dir(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        let io = |path: &Path, op: &'static str, source: std::io::Error| {
            VlsError::Io(calseg_io::IoError::Io {
                path: path.to_path_buf(),
                op,
                source,
            })
        };
        std::fs::create_dir_all(dir).map_err(|e| io(dir, "create", e))?;
        let weights = dir.join(WEIGHTS_FILE);
        let tmp = dir.join(format!(".{WEIGHTS_FILE}.tmp-{}", std::process::id()));
        self.save(&tmp)?;
        std::fs::rename(&tmp, &weights).map_err(|e| io(&weights, "rename to target", e))?;
        let json = serde_json::to_string_pretty(&self.cfg)
            .map_err(|e| VlsError::Config(format!("cannot serialise the config: {e}")))?;
        calseg_io::atomic::write_atomic(&dir.join(CONFIG_FILE), json.as_bytes())?;
        Ok(())
    }

    /// Reads a model folder written by [`VlsModel::save_dir`]. A missing or unreadable
    /// file, or a config that is not a valid [`VlsConfig`], is a [`VlsError::Config`]
    /// naming the file.
    pub fn load_dir(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let dir = dir.as_ref();
        let cp = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&cp)
            .map_err(|e| VlsError::Config(format!("{}: cannot read: {e}", cp.display())))?;
        let cfg: VlsConfig = serde_json::from_str(&text).map_err(|e| {
            VlsError::Config(format!("{}: not a VLS configuration: {e}", cp.display()))
        })?;
        cfg.validate()
            .map_err(|e| VlsError::Config(format!("{}: {e}", cp.display())))?;
        let wp = dir.join(WEIGHTS_FILE);
        if !wp.is_file() {
            return Err(VlsError::Config(format!("{}: missing", wp.display())));
        }
        Self::load(&cfg, &wp, device)
            .map_err(|e| VlsError::Config(format!("{}: {e}", wp.display())))
    }

    /// The configuration the model was built with.
    pub fn config(&self) -> &VlsConfig {
        &self.cfg
    }

    /// The device the parameters live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    fn check_image(&self, image: &Tensor) -> Result<()> {
        let d = image.dims();
        if d.len() != self.cfg.dims + 2 || d[1] != self.cfg.in_channels {
            return Err(VlsError::Shape(format!(
                "expected images (n, {}, {}) , got {d:?}",
                self.cfg.in_channels,
                if self.cfg.dims == 2 {
                    "h, w"
                } else {
                    "d, h, w"
                }
            )));
        }
        let m = self.cfg.multiple();
        if d[2..].iter().any(|s| s % m != 0 || *s == 0) {
            return Err(VlsError::Shape(format!(
                "spatial sizes must be positive multiples of {m}, got {d:?}"
            )));
        }
        Ok(())
    }

    /// One-hot encoding `(n, K, *sp)` f32 of labels `(n, *sp)` u32; labels ≥ K are a
    /// [`VlsError::Shape`] error.
    pub fn one_hot(&self, labels: &Tensor) -> Result<Tensor> {
        let labels = labels.to_dtype(DType::U32)?;
        let max = labels.flatten_all()?.max(0)?.to_scalar::<u32>()?;
        if max as usize >= self.cfg.classes {
            return Err(VlsError::Shape(format!(
                "label {max} ≥ number of classes {}",
                self.cfg.classes
            )));
        }
        let chans = (0..self.cfg.classes as u32)
            .map(|k| labels.eq(k)?.to_dtype(DType::F32))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::stack(&chans, 1)?)
    }

    /// The posterior `q(z|x,y)` of images `(n, C, *sp)` and labels `(n, *sp)` (u32).
    pub fn posterior(&self, image: &Tensor, labels: &Tensor) -> Result<Posterior> {
        self.check_image(image)?;
        let oh = self.one_hot(labels)?;
        if oh.dims()[2..] != image.dims()[2..] || oh.dim(0)? != image.dim(0)? {
            return Err(VlsError::Shape(format!(
                "labels {:?} do not match images {:?}",
                labels.dims(),
                image.dims()
            )));
        }
        let mut h = Tensor::cat(&[image, &oh], 1)?;
        for (i, lv) in self.enc.iter().enumerate() {
            if i > 0 {
                h = match self.cfg.backend {
                    Backend::Fast => ops::avg_pool(&h, 2)?,
                    Backend::Stock => stock::avg_pool(&h, 2)?,
                };
            }
            h = lv.n1.forward(&lv.c1.forward(&h)?)?;
            h = lv.n2.forward(&lv.c2.forward(&h)?)?;
        }
        let mut out = self.enc_out.forward(&h)?;
        if self.cfg.latent_mode == LatentMode::Global {
            out = out.flatten_from(2)?.mean(2)?;
        }
        let l = self.cfg.latent;
        let [lo, hi] = self.cfg.logvar_clamp;
        Ok(Posterior {
            mu: out.narrow(1, 0, l)?,
            logvar: out.narrow(1, l, l)?.clamp(lo, hi)?,
        })
    }

    /// Shape of the latent for `n` images of spatial shape `spatial`: `(n, L)` or, in
    /// spatial mode, `(n, L, *spatial/2^(E−1))`.
    pub fn latent_shape(&self, n: usize, spatial: &[usize]) -> Vec<usize> {
        let mut s = vec![n, self.cfg.latent];
        if self.cfg.latent_mode == LatentMode::Spatial {
            let f = self.cfg.coarse_factor();
            s.extend(spatial.iter().map(|v| v / f));
        }
        s
    }

    /// `run` (a forward pass on `(b, C, *patch)`) applied to each image of `image
    /// (n, C, *sp)` by sliding windows of `patch` ([`calseg_seg::infer::sliding_window_logits`]).
    fn predict_windows(
        &self,
        image: &Tensor,
        patch: &[usize],
        run: &dyn Fn(&Tensor) -> calseg_seg::Result<Tensor>,
    ) -> calseg_seg::Result<Tensor> {
        use calseg_seg::convert::{array_to_tensor, tensor_to_array};
        use calseg_seg::infer::{InferSpec, sliding_window_logits};
        let spec = InferSpec {
            dims: 3,
            in_channels: self.cfg.in_channels,
            classes: self.cfg.classes,
            multiple: self.cfg.multiple(),
            axis: None,
            patch: Some(patch.to_vec()),
        };
        let x: ndarray::ArrayD<f32> = tensor_to_array(&image.to_dtype(DType::F32)?)?;
        let on_array = |w: &ndarray::ArrayD<f32>| -> calseg_seg::Result<ndarray::ArrayD<f32>> {
            let out = run(&array_to_tensor(w.view(), &self.device)?)?;
            tensor_to_array(&out.to_dtype(DType::F32)?)
        };
        let mut outs = Vec::with_capacity(x.shape()[0]);
        for one in x.outer_iter() {
            let one = one.insert_axis(ndarray::Axis(0)).to_owned();
            let l = sliding_window_logits(&on_array, one, &spec, patch, 0.5, 1)?;
            outs.push(array_to_tensor(l.view(), &self.device)?);
        }
        Ok(Tensor::cat(&outs, 0)?)
    }

    /// A reparameterised posterior sample `z = μ + exp(½ logvar) · ε`, `ε ~ N(0, I)` from
    /// the seeded `rng`.
    pub fn sample_posterior(&self, post: &Posterior, rng: &mut StdRng) -> Result<Tensor> {
        let eps = randn(rng, post.mu.dims(), DType::F32, &self.device)?;
        Ok((&post.mu + (post.logvar.clone() * 0.5)?.exp()?.mul(&eps)?)?)
    }

    /// A prior sample `z ~ N(0, I)` of the given shape (see [`VlsModel::latent_shape`]).
    pub fn sample_prior(&self, shape: &[usize], rng: &mut StdRng) -> Result<Tensor> {
        Ok(randn(rng, shape, DType::F32, &self.device)?)
    }

    /// The trunk's last feature map `(n, base, *sp)` of images `(n, C, *sp)` (computed
    /// once and shared by every sample of z).
    pub fn features(&self, image: &Tensor) -> Result<Tensor> {
        self.check_image(image)?;
        Ok(self.trunk.features(image)?)
    }

    /// Segmentation logits `(n, K, *sp)` from trunk features and a latent `z`.
    pub fn seg_logits(&self, features: &Tensor, z: &Tensor) -> Result<Tensor> {
        Head::combine(
            &self.seg_head.feat_term(features)?,
            &self.seg_head.z_term(z)?,
        )
    }

    /// Reconstruction `σ(W_rec · cat[f, z↑] + b)` `(n, C, *sp)` from features and `z`.
    pub fn reconstruction(&self, features: &Tensor, z: &Tensor) -> Result<Tensor> {
        let r = Head::combine(
            &self.rec_head.feat_term(features)?,
            &self.rec_head.z_term(z)?,
        )?;
        Ok(candle_nn::ops::sigmoid(&r)?)
    }

    /// The z-independent part `W_f · f` `(n, K, *sp)` of the segmentation logits.
    pub(crate) fn seg_feature_term(&self, features: &Tensor) -> Result<Tensor> {
        self.seg_head.feat_term(features)
    }

    /// The z part `W_z · z + b` of the segmentation logits: `(n, K)` (global) or
    /// `(n, K, *sp)` upsampled to `full = (n, K, *sp)` (spatial).
    pub(crate) fn seg_latent_term(&self, z: &Tensor, full: &[usize]) -> Result<Tensor> {
        let zt = self.seg_head.z_term(z)?;
        if zt.rank() == 2 {
            Ok(zt)
        } else {
            expand_z(&zt, full)
        }
    }

    /// A full training forward pass: posterior of `(image, labels)`, one reparameterised
    /// sample, both heads.
    pub fn forward(&self, image: &Tensor, labels: &Tensor, rng: &mut StdRng) -> Result<VlsOutput> {
        let posterior = self.posterior(image, labels)?;
        let z = self.sample_posterior(&posterior, rng)?;
        let f = self.features(image)?;
        Ok(VlsOutput {
            seg_logits: self.seg_logits(&f, &z)?,
            recon: self.reconstruction(&f, &z)?,
            posterior,
            z,
        })
    }

    /// The loss of [`crate::loss`] on one batch, with its parts.
    pub fn loss_parts(
        &self,
        batch: &Batch,
        info: &StepInfo,
        rng: &mut StdRng,
    ) -> Result<LossParts> {
        let out = self.forward(&batch.image, &batch.labels, rng)?;
        let target = self.noisy_target(&batch.target)?;
        let ce = calseg_seg::loss::soft_ce(&out.seg_logits, &target)?;
        // Dice against the observed labels, not their label-noise smoothing: a thin class
        // (CSF) never has more than ½ in the smoothed target, and a smoother whose Dice
        // saw only that target stopped predicting it (measured on the embedded brain: CSF
        // Dice 0, and every net trained on its soft labels lost CSF).
        let dice = SoftDice::default().forward(&out.seg_logits, &batch.target)?;
        let seg = (&ce + (&dice * self.cfg.dice_weight)?)?;
        let x01 = minmax01(&batch.image)?;
        let mse = (&out.recon - &x01)?.sqr()?.mean_all()?;
        let kl_d = kl_per_dim(&out.posterior.mu, &out.posterior.logvar)?;
        let kl_term = free_bits_kl(&kl_d, self.cfg.free_bits)?;
        let beta = beta_at(&self.cfg, info);
        let total = ((&seg + (&mse * self.cfg.lambda_rec)?)? + (kl_term * beta)?)?;
        let kl_per_dim: Vec<f64> = kl_d.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        Ok(LossParts {
            total,
            ce: ce.to_dtype(DType::F64)?.to_scalar::<f64>()?,
            dice: dice.to_dtype(DType::F64)?.to_scalar::<f64>()?,
            mse: mse.to_dtype(DType::F64)?.to_scalar::<f64>()?,
            kl: kl_per_dim.iter().sum(),
            kl_per_dim,
            beta,
        })
    }

    /// The segmentation head's training target for a one-hot (or soft) target
    /// `(n, K, *sp)`: the SVLS smoothing of [`VlsConfig::target_sigma`] (3^d kernel,
    /// replicate padding) of a one-hot target; the target itself when σ = 0 or when it
    /// is already soft (some value strictly between 0 and 1: a data pipeline smoothed it
    /// already, e.g. in 3D over the volume with [`crate::smooth::noise_target`]).
    pub fn noisy_target(&self, target: &Tensor) -> Result<Tensor> {
        let soft = || -> Result<bool> {
            let inside = target.gt(0.0)?.mul(&target.lt(1.0)?)?;
            Ok(inside.flatten_all()?.max(0)?.to_scalar::<u8>()? > 0)
        };
        if self.cfg.target_sigma > 0.0 && !soft()? {
            Ok(calseg_seg::loss::svls_smooth(
                target,
                3,
                self.cfg.target_sigma,
            )?)
        } else {
            Ok(target.clone())
        }
    }

    /// Mean KL per latent dimension accumulated since the last [`Trainable::end_epoch`]
    /// (without resetting), and the number of active dimensions (`KL_d > ACTIVE_KL`).
    pub fn epoch_kl(&self) -> (Vec<f64>, usize) {
        let Ok(acc) = self.kl_acc.lock() else {
            return (Vec::new(), 0);
        };
        let n = acc.count.max(1) as f64;
        let mean: Vec<f64> = acc.sum.iter().map(|s| s / n).collect();
        let active = mean.iter().filter(|&&k| k > ACTIVE_KL).count();
        (mean, active)
    }
}

impl Trainable for VlsModel {
    fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// Logs `ce`, `dice` (the soft-Dice loss, logged whatever its weight), `mse`, `kl`
    /// (Σ_d KL_d), `beta` and `kl_0 … kl_{L−1}`.
    fn loss(
        &self,
        batch: &Batch,
        info: &StepInfo,
        rng: &mut StdRng,
    ) -> calseg_seg::Result<(Tensor, Vec<(String, f64)>)> {
        let p = self.loss_parts(batch, info, rng)?;
        if let Ok(mut acc) = self.kl_acc.lock() {
            if acc.sum.len() != p.kl_per_dim.len() {
                acc.sum = vec![0.0; p.kl_per_dim.len()];
            }
            for (s, k) in acc.sum.iter_mut().zip(&p.kl_per_dim) {
                *s += k;
            }
            acc.count += 1;
        }
        let mut logs = vec![
            ("ce".to_string(), p.ce),
            ("dice".to_string(), p.dice),
            ("mse".to_string(), p.mse),
            ("kl".to_string(), p.kl),
            ("beta".to_string(), p.beta),
        ];
        logs.extend(
            p.kl_per_dim
                .iter()
                .enumerate()
                .map(|(d, k)| (format!("kl_{d}"), *k)),
        );
        Ok((p.total, logs))
    }

    /// Segmentation logits with `z = 0` (the prior mean): a label-free prediction for
    /// validation. The soft labels come from [`crate::smooth`], not from here. A 3D model
    /// trained on patches ([`VlsConfig::patch`]) predicts an input of another size window
    /// by window (calseg-seg's sliding window, as its smoothing does), so validation sees
    /// what training saw.
    fn predict(&self, image: &Tensor) -> calseg_seg::Result<Tensor> {
        let whole = |x: &Tensor| -> Result<Tensor> {
            let f = self.features(x)?;
            let z = Tensor::zeros(
                self.latent_shape(x.dim(0)?, &x.dims()[2..]),
                DType::F32,
                &self.device,
            )?;
            self.seg_logits(&f, &z)
        };
        match &self.cfg.patch {
            Some(p) if image.rank() == 5 && image.dims()[2..] != p[..] => {
                self.predict_windows(image, p, &|x| Ok(whole(x)?))
            }
            _ => Ok(whole(image)?),
        }
    }

    /// Reports `kl_dim{d}` (mean KL of dimension d over the epoch's steps) and
    /// `active_dims` (how many exceed [`ACTIVE_KL`] nats), then resets the accumulator.
    fn end_epoch(&self, _epoch: usize) -> Vec<(String, f64)> {
        let (mean, active) = self.epoch_kl();
        if let Ok(mut acc) = self.kl_acc.lock() {
            *acc = KlAccum::default();
        }
        let mut out: Vec<(String, f64)> = mean
            .iter()
            .enumerate()
            .map(|(d, k)| (format!("kl_dim{d}"), *k))
            .collect();
        out.push(("active_dims".into(), active as f64));
        out
    }
}
