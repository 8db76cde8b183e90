//! # calseg-vls — the Variational Label Smoother (CALSeg, Guo et al., ICASSP 2024)
//!
//! Hard segmentation labels are over-confident at tissue boundaries (partial volume,
//! annotator disagreement), and networks trained on them are mis-calibrated. VLS learns
//! *where* labels are uncertain: a conditional VAE whose decoder is a segmentation
//! U-Net is trained on the hard labels, and its sampled segmentations, averaged, give
//! soft labels `y_s`; those are mixed with the hard labels into the training targets
//! `Y_s` of the final (calibrated) segmentation network.
//!
//! ## Pipeline
//! 1. **Model** ([`model`]): posterior encoder `q(z|x,y)` on image + one-hot labels →
//!    `(μ, logσ²)` of a small latent (L = 3); prior `N(0, I)`; a U-Net trunk whose
//!    last feature map, concatenated with `z`, feeds a segmentation head (K logits)
//!    and a sigmoid reconstruction head (C channels). [`VlsModel`] implements
//!    [`calseg_seg::train::Trainable`], so the calseg-seg trainer trains it.
//! 2. **Loss** ([`loss`]): `CE + λ_rec·MSE + β_t·Σ_d max(KL_d, λ_fb)` with β warm-up;
//!    CE (and Dice) against the label-noise target `svls_σ(onehot(y))` (σ = 1 by default).
//!    The free-bits floor `λ_fb` is what keeps the latent alive: the plain design
//!    collapses (KL → 0, identical samples).
//! 3. **Soft labels** ([`smooth`], [`mix`]): trunk once per image, m latent samples
//!    through the heads only, `y_s` = mean softmax, `y_s^τ = softmax(log(y_s)/τ)`,
//!    `Y_s = (1−α)·y + α·y_s^τ` (the paper's class mix) or, with
//!    [`MixKind::Confidence`] (an option, measured in the README), `Y_s = (1−α)·y + α·(c·y +
//!    (1−c)·(1−y)/(K−1))` with `c` the smoother's probability of the label — a per-voxel
//!    label smoothing whose amount the smoother sets; written per case as safetensors +
//!    NIfTI. τ and α
//!    can be calibrated ([`smooth::calibrate_temperature`]) on held-out slices or cases
//!    from hard labels only (cross-entropy to the label-noise target).
//! 4. **Cross-fitting** ([`crossfit`], `CalsegConfig::crossfit = k`): `k` smoothers, each
//!    training case (or slab) smoothed by the one that did not train on it, and τ
//!    calibrated on those out-of-sample maps, so that `Y_s` carries the confidence a
//!    model has on data it has not seen — what the segmentation net's confidence should
//!    mean on a new scan. An option: it calibrated best on the demo's test slab, but a
//!    development split (validation data only) did not confirm it, so the default is one
//!    label-noise smoother (the README has the evidence).
//! 5. **Quality** ([`quality`]): TV distance to true probabilities, and the baselines
//!    (hard, uniform LS, SVLS) for the comparison on the embedded ICBM152 template.
//!
//! Images are z-scored over their nonzero voxels per channel (as by the segmentation
//! trainer); [`smooth::smooth_case`] does that itself. All randomness (initialisation,
//! latent noise) comes from seeded [`rand::rngs::StdRng`]s: same seed, same soft labels.
//!
//! ## Example
//! ```
//! use calseg_seg::train::{Batch, StepInfo, Trainable};
//! use calseg_vls::smooth::{SmoothConfig, smooth_volume};
//! use calseg_vls::{VlsConfig, VlsModel};
//! use candle_core::{Device, Tensor};
//! use rand::{SeedableRng, rngs::StdRng};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dev = Device::Cpu;
//! let cfg = VlsConfig { classes: 3, base: 4, depth: 2, enc_base: 4, enc_levels: 3, ..VlsConfig::default() };
//! let model = VlsModel::new(&cfg, 0, &dev)?;
//!
//! // One loss evaluation on a batch of two 16×16 images (the trainer does this per step).
//! let mut rng = StdRng::seed_from_u64(0);
//! let image = calseg_seg::init::randn(&mut rng, &[2, 1, 16, 16], candle_core::DType::F32, &dev)?;
//! let labels = Tensor::zeros((2, 16, 16), candle_core::DType::U32, &dev)?;
//! let batch = Batch { target: model.one_hot(&labels)?, image, labels };
//! let (loss, logs) = model.loss(&batch, &StepInfo::default(), &mut rng)?;
//! assert!(loss.to_scalar::<f32>()?.is_finite());
//! assert!(logs.iter().any(|(k, _)| k == "kl"));
//!
//! // Soft labels of a (C, h, w) image and its labels: y_s (K, h, w).
//! let img = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[1, 12, 10]));
//! let lab = ndarray::ArrayD::<u32>::zeros(ndarray::IxDyn(&[12, 10]));
//! let (y_s, variance) = smooth_volume(&model, &img, &lab, &SmoothConfig { samples: 4, ..SmoothConfig::default() })?;
//! assert_eq!(y_s.shape(), &[3, 12, 10]);
//! assert!(variance >= 0.0);
//! # Ok(()) }
//! ```
//!
//! ## Dependencies, and why
//! - `calseg-seg`: the U-Net trunk, fast conv/norm/pool ops, soft cross-entropy, the
//!   seeded initialisation and the [`calseg_seg::train::Trainable`] contract.
//! - `calseg-io`: cases, the nonzero z-score, the embedded ICBM152 data, and the atomic
//!   safetensors / NIfTI writers of the soft labels.
//! - `calseg-metrics`: the validation scores of the (α, τ) choice in [`pipeline`].
//! - `candle-core` / `candle-nn`: tensors, autograd, `VarMap` parameters and softmax /
//!   sigmoid.
//! - `ndarray`: the soft-label maps `(K, *spatial)` exchanged with calseg-io.
//! - `rand` / `rand_distr`: seeded latent noise (`StdRng`; candle's RNG is unseedable).
//! - `rayon`: the fused per-voxel passes (sample averaging, temperature, SVLS, TV).
//! - `serde` / `serde_json`: configurations and statistics as JSON.
//! - `thiserror`: the typed [`VlsError`].
//! - `tracing`: a debug event per smoothed case.

pub mod crossfit;
pub mod error;
pub mod loss;
pub mod mix;
pub mod model;
pub mod pipeline;
pub mod quality;
pub mod smooth;

pub use error::{Result, VlsError};
pub use mix::MixKind;
pub use model::{
    ACTIVE_KL, CONFIG_FILE, LatentMode, Posterior, VlsConfig, VlsModel, VlsOutput, WEIGHTS_FILE,
};
pub use pipeline::{
    Calseg, CalsegConfig, CalsegRun, MixChoice, Sweep, SweepPoint, TrainedSmoother, ValScores,
};
pub use smooth::{
    CALIBRATION_FILE, Calibration, LatentSource, SmoothConfig, SmoothStats, SoftLabels,
    calibrate_temperature,
};
