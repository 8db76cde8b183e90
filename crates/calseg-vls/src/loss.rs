//! The training loss of the variational label smoother:
//!
//! ```text
//! L = CE(seg, t(y)) + w · Dice(seg, y) + λ_rec · MSE(sigmoid(rec), x01) + β_t · Σ_d max(KL_d, λ_fb)
//! KL_d = mean_batch ½ (μ_d² + σ_d² − 1 − log σ_d²)          (KL(q(z|x,y) ‖ N(0, I)) of dim d)
//! x01  = (x − min x) / (max x − min x)                       (per image and channel)
//! β_t  = β · min(1, t / kl_warmup_epochs)                    (t = fractional epoch)
//! ```
//!
//! * `CE` is [`calseg_seg::loss::soft_ce`] (mean over voxels); `t(y)` is the batch's
//!   one-hot target `y` smoothed by the label-noise kernel
//!   ([`VlsModel::noisy_target`](crate::VlsModel::noisy_target): SVLS with
//!   σ = `target_sigma`, default 1; a soft batch target is used as it is).
//! * `Dice` is calseg-seg's batch soft Dice over the foreground classes against the
//!   observed `y` (not `t(y)`), weight `w = dice_weight` (default 1; 0 gives the paper's
//!   plain CE). It keeps thin, rare classes in the smoother's predictions (measured:
//!   without it, or with it against `t(y)`, in which a thin class never exceeds ½, a
//!   demo-budget smoother on ICBM152 never predicts CSF).
//! * The reconstruction head ends in a sigmoid, so its target must be in `[0, 1]`: the
//!   z-scored input is min-max normalised per image and channel ([`minmax01`]).
//! * **Free bits** (Kingma et al., 2016): the KL of each latent dimension, averaged over
//!   the batch, is floored at `λ_fb` nats. Below the floor the KL term has no gradient,
//!   so the encoder may carry up to `λ_fb` nats per dimension for free and the optimiser
//!   gains nothing by collapsing the posterior onto the prior — the failure of the plain
//!   `CE + MSE + β·KL` design, whose KL weight is huge next to a per-voxel mean CE.
//!   With `λ_fb = 0` the loss is the plain design.
//! * In the spatial latent mode, `KL_d` is averaged over the batch **and** the coarse
//!   locations, so `λ_fb` keeps its meaning (nats per dimension per latent vector).
//! * `β_t` ramps linearly from 0 over `kl_warmup_epochs`; with `beta_cycles = c > 0` it
//!   is cyclical instead (Fu et al., 2019): the run is cut into `c` cycles, each ramping
//!   from 0 to β over its first half and staying at β for the second.

use crate::error::Result;
use crate::model::VlsConfig;
use calseg_seg::train::StepInfo;
use candle_core::Tensor;

/// KL divergence of `N(μ, σ²)` from `N(0, 1)` per latent dimension, averaged over the
/// batch (and over coarse locations when `mu` has spatial axes):
/// `KL_d = mean ½(μ_d² + exp(logvar_d) − 1 − logvar_d)`.
///
/// Shapes: `mu`, `logvar` `(n, L)` or `(n, L, *coarse)` → `(L)`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let mu = Tensor::new(&[[1.0f32, 0.0]], &Device::Cpu)?;
/// let logvar = Tensor::new(&[[0.0f32, 0.0]], &Device::Cpu)?;
/// let kl = calseg_vls::loss::kl_per_dim(&mu, &logvar)?.to_vec1::<f32>()?;
/// assert_eq!(kl, vec![0.5, 0.0]); // ½μ² for unit variance
/// # Ok::<(), calseg_vls::VlsError>(())
/// ```
pub fn kl_per_dim(mu: &Tensor, logvar: &Tensor) -> Result<Tensor> {
    let el = ((mu.sqr()? + logvar.exp()?)? - logvar)?;
    let el = ((el - 1.0)? * 0.5)?;
    let el = if el.rank() > 2 {
        el.flatten_from(2)?.mean(2)?
    } else {
        el
    };
    Ok(el.mean(0)?)
}

/// The KL term with free bits: `Σ_d max(KL_d, λ_fb)` of a per-dimension KL `(L)`; a
/// scalar. With `free_bits = 0` this is the plain summed KL.
pub fn free_bits_kl(kl_d: &Tensor, free_bits: f64) -> Result<Tensor> {
    if free_bits > 0.0 {
        Ok(kl_d.maximum(free_bits)?.sum_all()?)
    } else {
        Ok(kl_d.sum_all()?)
    }
}

/// Min-max normalisation to `[0, 1]` per image and channel of `x (n, c, *spatial)`
/// (the target of the sigmoid reconstruction head). A constant channel maps to 0.
pub fn minmax01(x: &Tensor) -> Result<Tensor> {
    let shape = x.dims().to_vec();
    let flat = x.flatten_from(2)?;
    let lo = flat.min_keepdim(2)?;
    let hi = flat.max_keepdim(2)?;
    let range = ((hi - &lo)? + 1e-8)?;
    Ok(flat
        .broadcast_sub(&lo)?
        .broadcast_div(&range)?
        .reshape(shape)?)
}

/// `β_t` for the step described by `info` (see the module docs): linear warm-up over
/// `kl_warmup_epochs` (0 = no warm-up), or cyclical when `beta_cycles > 0`.
pub fn beta_at(cfg: &VlsConfig, info: &StepInfo) -> f64 {
    // Fractional epoch: steps are spread evenly over the epochs.
    let t = if info.total_steps > 0 && info.epochs > 0 {
        info.step as f64 * info.epochs as f64 / info.total_steps as f64
    } else {
        info.epoch as f64
    };
    if cfg.beta_cycles > 0 && info.epochs > 0 {
        let period = info.epochs as f64 / cfg.beta_cycles as f64;
        let phase = (t % period) / period;
        return cfg.beta * (2.0 * phase).min(1.0);
    }
    if cfg.kl_warmup_epochs == 0 {
        return cfg.beta;
    }
    cfg.beta * (t / cfg.kl_warmup_epochs as f64).min(1.0)
}

/// The parts of one evaluation of the loss.
#[derive(Clone, Debug)]
pub struct LossParts {
    /// The scalar to differentiate.
    pub total: Tensor,
    /// Cross-entropy of the segmentation head.
    pub ce: f64,
    /// Soft-Dice loss `1 − mean_c D_c` of the segmentation head (foreground classes),
    /// whatever its weight.
    pub dice: f64,
    /// MSE of the reconstruction head.
    pub mse: f64,
    /// Σ_d KL_d (without the free-bits floor).
    pub kl: f64,
    /// KL_d per latent dimension (nats).
    pub kl_per_dim: Vec<f64>,
    /// β_t used.
    pub beta: f64,
}
