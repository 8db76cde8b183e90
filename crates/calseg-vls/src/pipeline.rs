//! CALSeg end to end, as one library call — and each stage on its own.
//!
//! ```text
//! train cases ──► train_smoother ──► soft_labels (y_s, m samples) ──► sweep over (α, τ):
//!                 (VlsModel)          per training case                 Y_s = (1−α)·y + α·y_s^τ
//!                                                                       one net per setting,
//!                                                                       scored on validation
//!                                                 ◄── the chosen (α, τ) and its net ──┘
//! ```
//!
//! With [`CalsegConfig::crossfit`] = k ≥ 2 (an option; the default is 0, one smoother),
//! `train_smoother` runs once per fold and `soft_labels` takes each training case's (or slab's) `y_s` from the smoother
//! that did not see it ([`crate::crossfit`], [`Calseg::run_crossfit`]); τ is then
//! calibrated on those out-of-sample maps.
//!
//! [`Calseg::run`] does everything; a user who already has a smoother starts at
//! [`Calseg::run_from_smoother`], one who has `y_s` at [`Calseg::sweep`], and
//! [`Calseg::train_smoother`], [`Calseg::soft_labels`] and [`Calseg::targets`] are the
//! other stages.
//!
//! **The choice of (α, τ)** uses validation data only: among the settings whose mean
//! foreground validation Dice is within [`CalsegConfig::dice_tolerance`] of the best,
//! the lowest validation ECE wins (ties: lower NLL). The Dice guard is what keeps a thin
//! class: a large α trains on `y_s` alone, which can drop CSF. With a single setting no
//! validation net is scored and that setting is taken as given.
//!
//! With a folder (`dir`), every stage stores its output there and is skipped on a re-run
//! once that output exists (interrupted trainings resume from their checkpoints):
//!
//! ```text
//! dir/vls/                      the smoother (a `calseg vls smooth --model` folder) + train_info.json
//! dir/vls/fold{f}/              with cross-fitting: the smoother of fold f; dir/vls/calibration.json
//! dir/softlabels/a{α}_t{τ}/     Y_s per training case (CASE.safetensors, tensor soft_labels)
//! dir/models/calseg[_a{α}_t{τ}] the segmentation net of each setting (model.json, timing.json)
//! ```
//!
//! ```no_run
//! use calseg_vls::pipeline::{Calseg, CalsegConfig};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let case = calseg_io::icbm152::open()?.load("icbm152")?;
//! let run = Calseg::new(CalsegConfig::for_classes(4, 1))?.run(&[case], &[], 0, None)?;
//! println!("α = {}, τ = {}", run.choice.alpha, run.choice.tau);
//! # Ok(()) }
//! ```

use crate::crossfit;
use crate::error::{Result, VlsError};
use crate::mix::{self, MixKind};
use crate::model::{CONFIG_FILE, VlsConfig, VlsModel};
use crate::smooth::{
    Calibration, CalibrationItem, LatentSource, SmoothConfig, SoftLabels, calibrate_maps,
    calibrate_temperature, noise_target, smooth_case,
};
use calseg_io::{Case, NamedTensor, write_safetensors};
use calseg_metrics::{MetricConfig, Region, ScoreSpec};
use calseg_seg::SegError;
use calseg_seg::loss::{LossConfig, Method};
use calseg_seg::net::{NormKind, UNetConfig};
use calseg_seg::recipe::{FittedNet, NetRecipe};
use calseg_seg::score::{EvalCase, score_model};
use calseg_seg::train::{Schedule, TargetSource, TrainReport, TrainSet, Trainer, TrainerConfig};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The file beside the smoother's weights that records its training time and last logs.
pub const SMOOTHER_INFO_FILE: &str = "train_info.json";

/// Everything CALSeg needs. [`Default`] is the design chosen on validation data alone
/// (a development split that never reads a test part; the calseg-vls README, "The
/// default design, chosen on validation data alone"): 2D smoothers and nets of base 16,
/// depth 3, 40 epochs each; **one** smoother with the label-noise likelihood
/// (`target_sigma = 1`, so `Y_s` is anchored on `t(y)`, the SVLS smoothing of the labels)
/// that ends with the weights of its best validation Dice (`keep_best`);
/// m = 16 posterior samples; τ calibrated on the validation cases; α = 0.25 (the
/// validation choice in every seed of `calseg demo`; give several to choose on
/// validation). Cross-fitting ([`crossfit`](Self::crossfit) = 2) and the confidence mix
/// are options with their evidence in that README.
#[derive(Clone, Debug, PartialEq)]
pub struct CalsegConfig {
    /// The variational label smoother. `dims`, `in_channels`, `classes` and `patch` are
    /// taken from [`net`](Self::net) when the pipeline runs.
    pub smoother: VlsConfig,
    /// Training of the smoother (its seed is the run's).
    pub smoother_train: TrainerConfig,
    /// Latent samples m averaged into `y_s`.
    pub samples: usize,
    /// Posterior (the paper) or prior samples.
    pub from: LatentSource,
    /// Mixing weights α of `Y_s = (1−α)·y + α·y_s^τ` to try.
    pub alpha: Vec<f64>,
    /// Temperatures τ of `y_s^τ = softmax(log(y_s)/τ)` to try (ignored when
    /// [`calibrate`](Self::calibrate) has validation cases to calibrate on).
    pub tau: Vec<f64>,
    /// Choose τ by calibrating the smoother on the validation cases
    /// ([`calibrate_temperature`]: the τ that minimises the cross-entropy of `y_s^τ` to
    /// the label-noise target there) instead of trying every τ of [`tau`](Self::tau).
    pub calibrate: bool,
    /// The segmentation net, its training and its layout (slices / patches); its loss
    /// method is replaced by soft-target CE on `Y_s` (the Dice weight is kept).
    pub net: NetRecipe,
    /// How far below the best validation Dice a setting may fall and still be chosen.
    pub dice_tolerance: f64,
    /// Equal-width bins of the validation ECE.
    pub bins: usize,
    /// Folds of cross-fitting (`0`: off, one smoother smooths the data it trained on;
    /// `k ≥ 2`: [`crate::crossfit`] — `k` smoothers, each training case smoothed by one
    /// that did not see it, and τ calibrated on those out-of-sample maps).
    pub crossfit: usize,
    /// How `y_s^τ` enters `Y_s` ([`MixKind`]: the paper's class mix, or the confidence
    /// mix — a per-voxel label smoothing whose amount the smoother sets). Default
    /// [`MixKind::Classes`], the paper's: on the development split (validation data only)
    /// the confidence mix was not better (calseg-vls README, "Confidence mix").
    pub mix: MixKind,
    /// Focusing parameter γ of the net's loss on `Y_s`: 0 (the default, the paper's) is
    /// soft-target cross-entropy; γ > 0 is focal loss on the soft targets,
    /// `Σ_k Y_k·(1 − p_k)^γ·(−log p_k)` ([`calseg_seg::loss::Focal`]) — CALSeg's soft labels
    /// with focal loss's down-weighting of the voxels the net already fits. Measured in the
    /// calseg-vls README ("CALSeg with focal loss").
    pub focal_gamma: f64,
}

/// The training budget every CALSeg stage uses by default: 40 epochs of 8 samples,
/// AdamW 2·10⁻³ with weight decay 10⁻⁴, cosine schedule after 20 warm-up steps, flips,
/// validation every 5 epochs (its Dice shows whether the run reached a plateau), a
/// checkpoint every 10 epochs.
pub fn default_budget() -> TrainerConfig {
    TrainerConfig {
        epochs: 40,
        batch_size: 8,
        lr: 2e-3,
        weight_decay: 1e-4,
        schedule: Schedule::Cosine { warmup: 20 },
        flips: true,
        validate_every: 5,
        checkpoint_every: 10,
        ..TrainerConfig::default()
    }
}

impl Default for CalsegConfig {
    fn default() -> Self {
        let smooth = SmoothConfig::default();
        CalsegConfig {
            smoother: VlsConfig {
                base: 16,
                depth: 3,
                enc_base: 16,
                enc_levels: 4,
                target_sigma: 1.0,
                ..VlsConfig::default()
            },
            // Early stopping on validation: the smoother ends with the weights of its
            // best validation Dice (chosen on a development split, calseg-vls README,
            // "The smoother's budget").
            smoother_train: TrainerConfig {
                keep_best: true,
                ..default_budget()
            },
            samples: smooth.samples,
            from: smooth.from,
            alpha: vec![0.25],
            tau: vec![smooth.tau],
            calibrate: true,
            net: NetRecipe {
                net: UNetConfig {
                    base: 16,
                    depth: 3,
                    norm: NormKind::Group(8),
                    ..UNetConfig::default()
                },
                train: default_budget(),
                loss: LossConfig {
                    method: Method::Soft,
                    dice_weight: 0.0,
                },
                ..NetRecipe::default()
            },
            dice_tolerance: 0.02,
            bins: calseg_metrics::edges::DEFAULT_BINS,
            crossfit: 0,
            mix: MixKind::Classes,
            focal_gamma: 0.0,
        }
    }
}

impl CalsegConfig {
    /// The default configuration for data with `classes` classes (background included)
    /// and `in_channels` image channels.
    pub fn for_classes(classes: usize, in_channels: usize) -> Self {
        let mut c = CalsegConfig::default();
        c.net.net.classes = classes;
        c.net.net.in_channels = in_channels;
        c
    }

    /// The same configuration on `device` (smoother and nets).
    pub fn on(mut self, device: &candle_core::Device) -> Self {
        self.net = self.net.on(device);
        self
    }

    /// Every (α, τ) of the sweep, α-major.
    pub fn settings(&self) -> Vec<(f64, f64)> {
        self.alpha
            .iter()
            .flat_map(|&a| self.tau.iter().map(move |&t| (a, t)))
            .collect()
    }

    /// The name of one (α, τ) setting: the folder of its `Y_s` under `softlabels/`. The
    /// mix is part of it: the targets of a folder that exists are kept (a resumed run),
    /// so different mixes must not share one.
    pub fn setting_tag(&self, alpha: f64, tau: f64) -> String {
        match self.mix {
            MixKind::Classes => format!("a{alpha}_t{tau}"),
            kind => format!("a{alpha}_t{tau}_{}", kind.name()),
        }
    }

    /// The name of the net of one (α, τ) setting, its folder under `models/`: `calseg`
    /// when it is the only setting, `calseg_{tag}` in a sweep of `several`; with focal
    /// loss (`focal_gamma` γ > 0) `calseg_focal{γ}…`, so a stored CE net is not taken
    /// for a focal one.
    pub fn net_name(&self, alpha: f64, tau: f64, several: bool) -> String {
        let base = if self.focal_gamma > 0.0 {
            format!("calseg_focal{}", self.focal_gamma)
        } else {
            "calseg".to_string()
        };
        if several {
            format!("{base}_{}", self.setting_tag(alpha, tau))
        } else {
            base
        }
    }

    /// Every (α, τ) with τ fixed to a calibrated value.
    pub fn settings_at(&self, tau: f64) -> Vec<(f64, f64)> {
        self.alpha.iter().map(|&a| (a, tau)).collect()
    }

    /// The smoother's configuration for this data: `dims`, `in_channels` and `classes`
    /// of the segmentation net, and its training patch when the net trains on 3D patches
    /// (the smoother trains on the same layout, so it must smooth in windows of that
    /// patch: [`VlsConfig::patch`]).
    pub fn smoother_config(&self) -> VlsConfig {
        let patch = match &self.net.layout {
            calseg_seg::train::Layout::Patches { patch, .. } => Some(patch.clone()),
            _ => None,
        };
        VlsConfig {
            dims: self.net.net.dims,
            in_channels: self.net.net.in_channels,
            classes: self.net.net.classes,
            patch,
            ..self.smoother.clone()
        }
    }

    /// The smoothing of `y_s` itself (τ = 1, α = 1), seeded.
    pub fn smooth_config(&self, seed: u64) -> SmoothConfig {
        SmoothConfig {
            samples: self.samples,
            tau: 1.0,
            alpha: 1.0,
            from: self.from,
            seed,
            ..SmoothConfig::default()
        }
    }

    /// Checks every value before any work.
    ///
    /// # Errors
    /// [`VlsError::Config`] naming the first bad value.
    pub fn validate(&self) -> Result<()> {
        self.smoother_config().validate()?;
        self.smooth_config(0).validate()?;
        self.net.validate()?;
        if self.alpha.is_empty() || self.alpha.iter().any(|a| !(0.0..=1.0).contains(a)) {
            return Err(VlsError::Config(format!(
                "alpha must be a non-empty list in [0, 1], got {:?}",
                self.alpha
            )));
        }
        if self.tau.is_empty() || self.tau.iter().any(|t| !(t.is_finite() && *t > 0.0)) {
            return Err(VlsError::Config(format!(
                "tau must be a non-empty list of numbers > 0, got {:?}",
                self.tau
            )));
        }
        if !(self.dice_tolerance.is_finite() && self.dice_tolerance >= 0.0) {
            return Err(VlsError::Config(format!(
                "dice_tolerance must be finite and ≥ 0, got {}",
                self.dice_tolerance
            )));
        }
        if self.crossfit == 1 {
            return Err(VlsError::Config(
                "crossfit must be 0 (off) or a number of folds ≥ 2, got 1".into(),
            ));
        }
        if !(self.focal_gamma.is_finite() && self.focal_gamma >= 0.0) {
            return Err(VlsError::Config(format!(
                "focal_gamma must be finite and ≥ 0, got {}",
                self.focal_gamma
            )));
        }
        if self.bins == 0 || self.smoother_train.batch_size == 0 {
            return Err(VlsError::Config(
                "bins and smoother_train.batch_size must be ≥ 1".into(),
            ));
        }
        Ok(())
    }
}

/// A trained smoother.
#[derive(Debug)]
pub struct TrainedSmoother {
    /// The model.
    pub model: VlsModel,
    /// Wall-clock seconds of its training (as recorded, when loaded from a folder).
    pub seconds: f64,
    /// The trainer's report (`None` when loaded).
    pub report: Option<TrainReport>,
}

/// Validation scores of one net of the sweep.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValScores {
    /// Top-label ECE over the validation region.
    pub ece: f64,
    /// NLL over the validation region.
    pub nll: f64,
    /// Mean foreground Dice over the validation cases.
    pub dice_mean_fg: f64,
}

/// One (α, τ) of the sweep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepPoint {
    /// Mixing weight α.
    pub alpha: f64,
    /// Temperature τ.
    pub tau: f64,
    /// Its validation scores (`None` for a sweep of one setting: nothing to choose).
    pub val: Option<ValScores>,
    /// Training seconds of its net.
    pub train_seconds: f64,
}

/// The chosen setting and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MixChoice {
    /// Mixing weight α.
    pub alpha: f64,
    /// Temperature τ.
    pub tau: f64,
    /// The rule that chose it, in words.
    pub chosen_by: String,
}

/// What [`Calseg::sweep`] returns.
#[derive(Debug, Clone)]
pub struct Sweep {
    /// Every setting tried, in the order of [`CalsegConfig::settings`].
    pub points: Vec<SweepPoint>,
    /// The chosen setting.
    pub choice: MixChoice,
    /// The net trained on the chosen `Y_s`.
    pub net: FittedNet,
}

/// What [`Calseg::run`] returns.
#[derive(Debug)]
pub struct CalsegRun {
    /// The variational label smoother.
    pub smoother: TrainedSmoother,
    /// `y_s` (and statistics) of every training case, in order.
    pub soft_labels: Vec<SoftLabels>,
    /// The smoother's calibration on the validation cases (when it ran).
    pub calibration: Option<Calibration>,
    /// Every (α, τ) tried.
    pub sweep: Vec<SweepPoint>,
    /// The chosen (α, τ).
    pub choice: MixChoice,
    /// `Y_s` of every training case at the chosen (α, τ), in order.
    pub targets: Vec<ndarray::ArrayD<f32>>,
    /// The calibrated segmentation net (trained on the chosen `Y_s`).
    pub net: FittedNet,
    /// Cross-fitting folds (`0`: one smoother on all training data).
    pub folds: usize,
}

impl CalsegRun {
    /// Seconds of the whole method: the smoother plus the chosen net.
    pub fn train_seconds(&self) -> f64 {
        self.smoother.seconds + self.net.seconds
    }
}

/// CALSeg, configured (see the module docs).
#[derive(Debug, Clone)]
pub struct Calseg {
    cfg: CalsegConfig,
    /// Axis along which each validation case continues its training case (a one-volume
    /// slab split), set by [`Calseg::with_held_out_slabs`].
    held_out_slabs: Option<usize>,
}

impl Calseg {
    /// The method with `cfg`, validated.
    ///
    /// # Errors
    /// As [`CalsegConfig::validate`].
    pub fn new(cfg: CalsegConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Calseg {
            cfg,
            held_out_slabs: None,
        })
    }

    /// Declares that `val[i]` is a slab cut from the same volume as `train[i]`, directly
    /// after it along spatial `axis` (how a one-volume dataset is split), so that a 3D
    /// smoother's temperature is calibrated on each validation slab smoothed *in
    /// context* — joined to its training slab, only its own voxels scored
    /// ([`calibrate_held_out_slabs`](crate::smooth::calibrate_held_out_slabs)). Smoothed
    /// alone, a thin slab is a truncated volume no training patch looked like (τ* 8.9
    /// instead of 1.5 on the embedded brain). 2D smoothers see slices one at a time and
    /// are calibrated as before.
    pub fn with_held_out_slabs(mut self, axis: usize) -> Self {
        self.held_out_slabs = Some(axis);
        self
    }

    /// The configuration.
    pub fn config(&self) -> &CalsegConfig {
        &self.cfg
    }

    /// Every stage: smoother, `y_s`, (α, τ) sweep on `val`, final net.
    ///
    /// # Errors
    /// Bad input ([`VlsError::Config`], [`VlsError::Shape`]) before the work it would
    /// spoil; training and I/O errors as they come.
    pub fn run(
        &self,
        train: &[Case],
        val: &[EvalCase<'_>],
        seed: u64,
        dir: Option<&Path>,
    ) -> Result<CalsegRun> {
        if self.cfg.crossfit >= 2 {
            return self.run_crossfit(train, val, seed, dir);
        }
        let smoother =
            self.train_smoother(train, val, seed, dir.map(|d| d.join("vls")).as_deref())?;
        self.run_from_smoother(smoother, train, val, seed, dir)
    }

    /// Every stage with cross-fitted soft labels ([`crate::crossfit`],
    /// [`CalsegConfig::crossfit`] folds): one smoother per fold (seed `seed + f`, stored in
    /// `dir/vls/fold{f}`), each training case (or slab) smoothed by the smoother that did
    /// not train on it, τ calibrated on those out-of-sample maps of the training cases
    /// against their hard labels ([`calibrate_maps`]; `dir/vls/calibration.json`), then
    /// the sweep and the final net as in [`run`](Self::run). The returned
    /// [`CalsegRun::smoother`] is fold 0's, with the seconds of all folds.
    ///
    /// # Errors
    /// As [`run`](Self::run); [`VlsError::Config`] when the folds cannot be cut
    /// ([`crate::crossfit::plan`]).
    pub fn run_crossfit(
        &self,
        train: &[Case],
        val: &[EvalCase<'_>],
        seed: u64,
        dir: Option<&Path>,
    ) -> Result<CalsegRun> {
        let k = self.cfg.crossfit.max(2);
        let axis = self.fold_axis(train);
        let folds = crossfit::plan(train, k, axis)?;
        let mut smoothers = Vec::with_capacity(k);
        for (f, fold) in folds.iter().enumerate() {
            let d = dir.map(|d| d.join("vls").join(format!("fold{f}")));
            smoothers.push(self.train_smoother(
                &fold.train,
                val,
                seed.wrapping_add(f as u64),
                d.as_deref(),
            )?);
        }
        let soft_labels = self.crossfit_soft_labels(&smoothers, &folds, train, seed, axis)?;
        let seconds: f64 = smoothers.iter().map(|s| s.seconds).sum();
        let mut first = smoothers.swap_remove(0);
        first.seconds = seconds;
        let calibration = if self.cfg.calibrate {
            let cdir = dir.map(|d| d.join("vls"));
            match cdir
                .as_deref()
                .map(Calibration::load)
                .transpose()?
                .flatten()
            {
                Some(c) => Some(c),
                None => {
                    let items = train
                        .iter()
                        .zip(&soft_labels)
                        .map(|(c, s)| {
                            Ok(CalibrationItem {
                                y_s: &s.y_s,
                                labels: c.label.as_ref().ok_or_else(|| {
                                    VlsError::Config(format!("case {:?} has no labels", c.id))
                                })?,
                                image: &c.image,
                            })
                        })
                        .collect::<Result<Vec<_>>>()?;
                    let c = calibrate_maps(&first.model, &items, self.cfg.samples)?;
                    if let Some(d) = cdir.as_deref() {
                        c.save(d)?;
                    }
                    Some(c)
                }
            }
        } else {
            None
        };
        let mut run = self.finish(first, soft_labels, calibration, train, val, seed, dir)?;
        run.folds = k;
        Ok(run)
    }

    /// The axis along which one case is cut into cross-fitting slabs: the slicing axis
    /// of a 2D layout, else the last spatial axis.
    fn fold_axis(&self, train: &[Case]) -> usize {
        match &self.cfg.net.layout {
            calseg_seg::train::Layout::Slices { axis: Some(a), .. } => *a,
            _ => train
                .first()
                .map_or(0, |c| c.image.ndim().saturating_sub(2)),
        }
    }

    /// `y_s` of every training case, each held-out region from its fold's smoother.
    fn crossfit_soft_labels(
        &self,
        smoothers: &[TrainedSmoother],
        folds: &[crossfit::Fold],
        train: &[Case],
        seed: u64,
        axis: usize,
    ) -> Result<Vec<SoftLabels>> {
        let sc = self.cfg.smooth_config(seed);
        let mut out = Vec::with_capacity(train.len());
        for (i, case) in train.iter().enumerate() {
            let start = Instant::now();
            let (mut y_s, mut variance, mut weight): (Option<ndarray::ArrayD<f32>>, f64, f64) =
                (None, 0.0, 0.0);
            for (smoother, fold) in smoothers.iter().zip(folds) {
                let held: Vec<&crossfit::Held> = fold.held.iter().filter(|h| h.case == i).collect();
                if held.is_empty() {
                    continue;
                }
                let s = smooth_case(&smoother.model, case, &sc)?;
                let y = y_s.get_or_insert_with(|| s.y_s.clone());
                for h in held {
                    crossfit::paste(y, &s.y_s, h.range.as_ref(), axis)?;
                    let share = h.range.as_ref().map_or(1.0, |r| r.len() as f64);
                    variance += share * s.stats.sample_variance;
                    weight += share;
                }
            }
            let y_s = y_s.ok_or_else(|| {
                VlsError::Config(format!("cross-fitting: case {:?} is in no fold", case.id))
            })?;
            let labels = case.label.as_ref().ok_or_else(|| {
                VlsError::Config(format!("case {:?} has no label map to smooth", case.id))
            })?;
            let soft = anchored_mix(&smoothers[0].model, case, &y_s, 1.0, 1.0, MixKind::Classes)?;
            let stats = crate::smooth::SmoothStats {
                case: case.id.clone(),
                voxels: labels.len(),
                samples: sc.samples,
                flipped_fraction: mix::label_disagreement(&soft, &labels.view())?,
                mean_entropy: mix::mean_entropy(&soft)?,
                mean_entropy_ys: mix::mean_entropy(&y_s)?,
                sample_variance: variance / weight.max(1.0),
                seconds: start.elapsed().as_secs_f64(),
            };
            out.push(SoftLabels { y_s, soft, stats });
        }
        Ok(out)
    }

    /// From a trained smoother on: `y_s`, sweep, final net.
    ///
    /// # Errors
    /// As [`run`](Self::run).
    pub fn run_from_smoother(
        &self,
        smoother: TrainedSmoother,
        train: &[Case],
        val: &[EvalCase<'_>],
        seed: u64,
        dir: Option<&Path>,
    ) -> Result<CalsegRun> {
        let soft_labels = self.soft_labels(&smoother.model, train, seed)?;
        let calibration = self.calibrate(
            &smoother.model,
            train,
            val,
            seed,
            dir.map(|d| d.join("vls")).as_deref(),
        )?;
        self.finish(smoother, soft_labels, calibration, train, val, seed, dir)
    }

    /// From `y_s` and the calibration on: the sweep, the chosen `Y_s` and its net.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        smoother: TrainedSmoother,
        soft_labels: Vec<SoftLabels>,
        calibration: Option<Calibration>,
        train: &[Case],
        val: &[EvalCase<'_>],
        seed: u64,
        dir: Option<&Path>,
    ) -> Result<CalsegRun> {
        let y_s: Vec<_> = soft_labels.iter().map(|s| s.y_s.clone()).collect();
        let settings = match &calibration {
            Some(c) => self.cfg.settings_at(c.tau),
            None => self.cfg.settings(),
        };
        let mut sweep = self.sweep_over(&smoother.model, &settings, train, &y_s, val, seed, dir)?;
        if let Some(c) = &calibration {
            sweep.choice.chosen_by = format!(
                "τ = {:.4}: the smoother calibrated on the validation cases (cross-entropy of y_s^τ to \
                 its label-noise target); α: {}",
                c.tau, sweep.choice.chosen_by
            );
        }
        let targets = self.targets(
            &smoother.model,
            train,
            &y_s,
            sweep.choice.alpha,
            sweep.choice.tau,
        )?;
        Ok(CalsegRun {
            smoother,
            soft_labels,
            calibration,
            sweep: sweep.points,
            choice: sweep.choice,
            targets: targets.into_iter().filter_map(|c| c.soft_label).collect(),
            net: sweep.net,
            folds: 0,
        })
    }

    /// The smoother's temperature calibrated on `val` ([`calibrate_temperature`], m =
    /// [`CalsegConfig::samples`]; for a 3D smoother after [`Calseg::with_held_out_slabs`],
    /// each validation slab in the context of its training slab), when
    /// [`CalsegConfig::calibrate`] is on and there are validation cases; stored in (and
    /// read back from) `dir/`[`crate::smooth::CALIBRATION_FILE`].
    ///
    /// # Errors
    /// As [`calibrate_temperature`].
    pub fn calibrate(
        &self,
        smoother: &VlsModel,
        train: &[Case],
        val: &[EvalCase<'_>],
        seed: u64,
        dir: Option<&Path>,
    ) -> Result<Option<Calibration>> {
        if !self.cfg.calibrate || val.is_empty() {
            return Ok(None);
        }
        if let Some(d) = dir
            && let Some(c) = Calibration::load(d)?
        {
            return Ok(Some(c));
        }
        let c = match self.held_out_slabs {
            Some(axis) if smoother.config().dims == 3 => {
                if train.len() != val.len() {
                    return Err(VlsError::Config(format!(
                        "held-out slabs: {} validation slabs for {} training slabs",
                        val.len(),
                        train.len()
                    )));
                }
                let pairs: Vec<(&Case, &Case)> =
                    train.iter().zip(val.iter().map(|v| v.case)).collect();
                crate::smooth::calibrate_held_out_slabs(
                    smoother,
                    &pairs,
                    axis,
                    &self.cfg.smooth_config(seed),
                )?
            }
            _ => {
                let cases: Vec<Case> = val.iter().map(|v| v.case.clone()).collect();
                calibrate_temperature(smoother, &cases, &self.cfg.smooth_config(seed))?
            }
        };
        if let Some(d) = dir {
            c.save(d)?;
        }
        Ok(Some(c))
    }

    /// Trains the smoother on `train` (validation loss on `val`), or loads it from `dir`
    /// when a finished one is there (its `vls.json` is written last).
    ///
    /// # Errors
    /// As [`run`](Self::run).
    pub fn train_smoother(
        &self,
        train: &[Case],
        val: &[EvalCase<'_>],
        seed: u64,
        dir: Option<&Path>,
    ) -> Result<TrainedSmoother> {
        let device = &self.cfg.net.device;
        if let Some(d) = dir.filter(|d| d.join(CONFIG_FILE).exists()) {
            let seconds = std::fs::read_to_string(d.join(SMOOTHER_INFO_FILE))
                .ok()
                .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                .and_then(|v| v["train_seconds"].as_f64())
                .unwrap_or(f64::NAN);
            return Ok(TrainedSmoother {
                model: VlsModel::load_dir(d, device)?,
                seconds,
                report: None,
            });
        }
        let vcfg = self.cfg.smoother_config();
        let model = VlsModel::new(&vcfg, seed, device)?;
        let opts = |targets| calseg_seg::train::SetOptions {
            multiple: vcfg.multiple(),
            ..self.cfg.net.set_options(targets)
        };
        let train_set = TrainSet::build(train, &opts(TargetSource::OneHot))?;
        let val_cases: Vec<Case> = val.iter().map(|v| v.case.clone()).collect();
        let val_set = if val_cases.is_empty() {
            None
        } else {
            Some(TrainSet::build(&val_cases, &opts(TargetSource::OneHot))?)
        };
        let t0 = Instant::now();
        let report = Trainer::new(TrainerConfig {
            seed,
            resume: dir.is_some() || self.cfg.smoother_train.resume,
            ..self.cfg.smoother_train.clone()
        })
        .fit(&model, &train_set, val_set.as_ref(), dir)?;
        let seconds = t0.elapsed().as_secs_f64();
        if let Some(d) = dir {
            let last = report
                .epochs
                .last()
                .map(|e| serde_json::to_value(&e.logs).unwrap_or(serde_json::Value::Null))
                .unwrap_or(serde_json::Value::Null);
            let info = serde_json::json!({"train_seconds": seconds, "last_epoch_logs": last});
            let mut text = serde_json::to_string_pretty(&info).map_err(|e| {
                VlsError::Config(format!("cannot serialise the smoother info: {e}"))
            })?;
            text.push('\n');
            calseg_io::atomic::write_atomic(&d.join(SMOOTHER_INFO_FILE), text.as_bytes())?;
            model.save_dir(d)?;
        }
        Ok(TrainedSmoother {
            model,
            seconds,
            report: Some(report),
        })
    }

    /// `y_s` of every training case (m samples, τ = 1, α = 1), seeded by `seed` and the
    /// case id.
    ///
    /// # Errors
    /// A case without labels, or one that does not fit the smoother.
    pub fn soft_labels(
        &self,
        smoother: &VlsModel,
        train: &[Case],
        seed: u64,
    ) -> Result<Vec<SoftLabels>> {
        let sc = self.cfg.smooth_config(seed);
        train
            .iter()
            .map(|c| smooth_case(smoother, c, &sc))
            .collect()
    }

    /// The training cases with their soft labels set to `Y_s = (1−α)·t(y) + α·y_s^τ`
    /// (the targets of [`TargetSource::CaseSoft`]; [`anchored_mix`]).
    ///
    /// # Errors
    /// A case without labels, or `y_s` of the wrong shape.
    pub fn targets(
        &self,
        smoother: &VlsModel,
        train: &[Case],
        y_s: &[ndarray::ArrayD<f32>],
        alpha: f64,
        tau: f64,
    ) -> Result<Vec<Case>> {
        check_pairs(train, y_s)?;
        train
            .iter()
            .zip(y_s)
            .map(|(c, y)| {
                let mut out = c.clone();
                out.soft_label = Some(anchored_mix(smoother, c, y, alpha, tau, self.cfg.mix)?);
                Ok(out)
            })
            .collect()
    }

    /// From `y_s` of every training case (`(K, *spatial)`, in order) on: one net per
    /// (α, τ) on `Y_s`, scored on `val`, the choice (module docs) and its net.
    ///
    /// # Errors
    /// As [`run`](Self::run); [`VlsError::Config`] for a sweep of several settings
    /// without validation cases.
    pub fn sweep(
        &self,
        smoother: &VlsModel,
        train: &[Case],
        y_s: &[ndarray::ArrayD<f32>],
        val: &[EvalCase<'_>],
        seed: u64,
        dir: Option<&Path>,
    ) -> Result<Sweep> {
        self.sweep_over(smoother, &self.cfg.settings(), train, y_s, val, seed, dir)
    }

    #[allow(clippy::too_many_arguments)]
    fn sweep_over(
        &self,
        smoother: &VlsModel,
        settings: &[(f64, f64)],
        train: &[Case],
        y_s: &[ndarray::ArrayD<f32>],
        val: &[EvalCase<'_>],
        seed: u64,
        dir: Option<&Path>,
    ) -> Result<Sweep> {
        check_pairs(train, y_s)?;
        let several = settings.len() > 1;
        if several && val.is_empty() {
            return Err(VlsError::Config(format!(
                "choosing among {} (alpha, tau) settings needs validation cases",
                settings.len()
            )));
        }
        let method = if self.cfg.focal_gamma > 0.0 {
            Method::Focal {
                gamma: self.cfg.focal_gamma,
            }
        } else {
            Method::Soft
        };
        let recipe = NetRecipe {
            loss: LossConfig {
                method,
                ..self.cfg.net.loss
            },
            ..self.cfg.net.clone()
        };
        let val_cases: Vec<Case> = val.iter().map(|v| v.case.clone()).collect();
        let mut tried: Vec<(SweepPoint, FittedNet)> = Vec::new();
        for &(alpha, tau) in settings {
            let tag = self.cfg.setting_tag(alpha, tau);
            let name = self.cfg.net_name(alpha, tau, several);
            let net = match dir {
                Some(d) => {
                    let sdir = d.join("softlabels").join(&tag);
                    write_targets(smoother, &sdir, train, y_s, alpha, tau, self.cfg.mix)?;
                    let mdir = d.join("models").join(&name);
                    recipe.fit(
                        &name,
                        train,
                        TargetSource::Dir(sdir),
                        &val_cases,
                        seed,
                        Some(&mdir),
                    )?
                }
                None => {
                    let soft = self.targets(smoother, train, y_s, alpha, tau)?;
                    recipe.fit(&name, &soft, TargetSource::CaseSoft, &val_cases, seed, None)?
                }
            };
            let val_scores = if several {
                Some(self.val_scores(&net, val)?)
            } else {
                None
            };
            let point = SweepPoint {
                alpha,
                tau,
                val: val_scores,
                train_seconds: net.seconds,
            };
            tried.push((point, net));
        }
        let points: Vec<SweepPoint> = tried.iter().map(|(p, _)| p.clone()).collect();
        let best = choose(&points, self.cfg.dice_tolerance)
            .ok_or_else(|| VlsError::Config("calseg: no (alpha, tau) to try".into()))?;
        let (point, net) = tried.swap_remove(best);
        let chosen_by = if several {
            format!(
                "lowest validation ECE among settings within {} of the best validation Dice",
                self.cfg.dice_tolerance
            )
        } else {
            "configuration (single value)".to_string()
        };
        Ok(Sweep {
            points,
            choice: MixChoice {
                alpha: point.alpha,
                tau: point.tau,
                chosen_by,
            },
            net,
        })
    }

    /// Validation ECE, NLL and mean foreground Dice of a net, scored like a test part
    /// (inside the cases' masks when they have them).
    fn val_scores(&self, net: &FittedNet, val: &[EvalCase<'_>]) -> Result<ValScores> {
        let masked = val.iter().any(|v| v.mask.is_some());
        let metrics = MetricConfig::default().bins(self.cfg.bins);
        let metrics = if masked {
            metrics.region(Region::Mask)
        } else {
            metrics
        };
        let s = score_model(&net.model, val, &ScoreSpec::new(metrics), None)?;
        Ok(ValScores {
            ece: s.region.ece,
            nll: s.region.nll,
            dice_mean_fg: s.region.dice_mean_fg,
        })
    }
}

/// The index of the chosen point: the lowest validation ECE (ties: NLL) among the
/// points whose validation Dice is within `tolerance` of the best finite one; points
/// without validation scores compete as NaN (the first one wins a sweep of one).
pub fn choose(points: &[SweepPoint], tolerance: f64) -> Option<usize> {
    let nan = ValScores {
        ece: f64::NAN,
        nll: f64::NAN,
        dice_mean_fg: f64::NAN,
    };
    let v = |p: &SweepPoint| p.val.unwrap_or(nan);
    let best_dice = points
        .iter()
        .map(|p| v(p).dice_mean_fg)
        .filter(|d| d.is_finite())
        .fold(f64::NEG_INFINITY, f64::max);
    let mut best: Option<usize> = None;
    for (i, p) in points.iter().enumerate() {
        let s = v(p);
        if best_dice.is_finite()
            && s.dice_mean_fg.is_finite()
            && s.dice_mean_fg < best_dice - tolerance
        {
            continue;
        }
        let better = match best {
            None => true,
            Some(b) => {
                let o = v(&points[b]);
                s.ece < o.ece || (s.ece == o.ece && s.nll < o.nll)
            }
        };
        if better {
            best = Some(i);
        }
    }
    best
}

fn check_pairs(train: &[Case], y_s: &[ndarray::ArrayD<f32>]) -> Result<()> {
    if train.len() != y_s.len() {
        return Err(VlsError::Shape(format!(
            "{} training cases but {} soft-label maps",
            train.len(),
            y_s.len()
        )));
    }
    Ok(())
}

/// `Y_s` of one case: `(1−α)·t(y) + α·y_s^τ`, where `t(y)` is the label-noise target the
/// smoother was trained on ([`noise_target`]: the SVLS smoothing of the one-hot labels
/// with σ = [`VlsConfig::target_sigma`]; the one-hot labels themselves when σ = 0, which
/// is the paper's `Y_s = (1−α)·y + α·y_s^τ`).
///
/// Why the anchor is `t(y)` and not `y`: under the likelihood the smoother is trained
/// with — the observed hard label of a boundary voxel is a noisy draw of its tissue —
/// the expectation of the label given the label map alone is `t(y)`; `y_s^τ` adds what
/// the image says. Measured on the embedded brain (calseg-vls README), the mix with `t(y)`
/// is closer to the true tissue probabilities than either part and than the mix with `y`.
///
/// # Errors
/// A case without labels, or `y_s` of the wrong shape.
pub fn anchored_mix(
    smoother: &VlsModel,
    case: &Case,
    y_s: &ndarray::ArrayD<f32>,
    alpha: f64,
    tau: f64,
    kind: MixKind,
) -> Result<ndarray::ArrayD<f32>> {
    let labels = case
        .label
        .as_ref()
        .ok_or_else(|| VlsError::Config(format!("case {}: no labels", case.id)))?;
    let anchor = noise_target(smoother, labels)?;
    let y_tau = mix::temperature(y_s, tau)?;
    if anchor.shape() != y_tau.shape() {
        return Err(VlsError::Shape(format!(
            "case {}: y_s of shape {:?}, labels give {:?}",
            case.id,
            y_tau.shape(),
            anchor.shape()
        )));
    }
    mix::blend(&anchor, &y_tau, alpha, kind)
}

/// Writes `Y_s` of every case to `dir/CASE.safetensors` (tensor `soft_labels`), keeping
/// the files already there.
fn write_targets(
    smoother: &VlsModel,
    dir: &Path,
    train: &[Case],
    y_s: &[ndarray::ArrayD<f32>],
    alpha: f64,
    tau: f64,
    kind: MixKind,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| {
        VlsError::Io(calseg_io::IoError::Io {
            path: dir.to_path_buf(),
            op: "create",
            source,
        })
    })?;
    for (c, y) in train.iter().zip(y_s) {
        let path: PathBuf = dir.join(format!("{}.safetensors", c.id));
        if !path.exists() {
            write_safetensors(
                &path,
                &[NamedTensor::new(
                    "soft_labels",
                    &anchored_mix(smoother, c, y, alpha, tau, kind)?,
                )],
            )?;
        }
    }
    Ok(())
}

impl From<calseg_metrics::MetricsError> for VlsError {
    fn from(e: calseg_metrics::MetricsError) -> Self {
        VlsError::Seg(SegError::Metrics(e))
    }
}

#[cfg(test)]
mod tests {
    use super::{SweepPoint, ValScores, choose};

    fn pt(ece: f64, nll: f64, dice: f64) -> SweepPoint {
        SweepPoint {
            alpha: 0.0,
            tau: 1.0,
            val: Some(ValScores {
                ece,
                nll,
                dice_mean_fg: dice,
            }),
            train_seconds: 0.0,
        }
    }

    /// The lowest ECE wins among the settings within the Dice tolerance; a setting that
    /// lost Dice beyond it is never chosen, however calibrated; ties go to NLL.
    #[test]
    fn choice_rule() {
        let pts = [
            pt(0.10, 0.5, 0.80),
            pt(0.02, 0.4, 0.70),
            pt(0.05, 0.6, 0.79),
        ];
        assert_eq!(choose(&pts, 0.02), Some(2));
        assert_eq!(choose(&pts, 0.2), Some(1));
        let tie = [pt(0.05, 0.6, 0.8), pt(0.05, 0.5, 0.8)];
        assert_eq!(choose(&tie, 0.02), Some(1));
        let single = [SweepPoint {
            val: None,
            ..pt(0.0, 0.0, 0.0)
        }];
        assert_eq!(choose(&single, 0.02), Some(0));
        assert_eq!(choose(&[], 0.02), None);
    }

    /// A smoother that trains on the net's 3D patches smooths in windows of them; on
    /// slices it has no patch, whatever its own config says.
    #[test]
    fn smoother_follows_the_nets_layout() {
        use calseg_seg::train::Layout;
        let mut c = super::CalsegConfig::for_classes(3, 1);
        c.net.net.dims = 3;
        c.net.layout = Layout::Patches {
            patch: vec![32, 32, 16],
            foreground_fraction: 0.33,
        };
        let v = c.smoother_config();
        assert_eq!((v.dims, v.patch), (3, Some(vec![32, 32, 16])));
        c.net.net.dims = 2;
        c.net.layout = Layout::Slices {
            axis: None,
            range: None,
            skip_empty: false,
        };
        c.smoother.patch = Some(vec![16, 16, 16]);
        assert_eq!(c.smoother_config().patch, None);
    }

    /// Focal loss on `Y_s` names its nets apart (a stored CE net is never reused for
    /// it) and takes γ ≥ 0 only.
    #[test]
    fn focal_nets_are_named_apart_and_gamma_checked() {
        let mut c = super::CalsegConfig::for_classes(3, 1);
        assert_eq!(c.net_name(0.25, 2.0, false), "calseg");
        c.focal_gamma = 3.0;
        assert_eq!(c.net_name(0.25, 2.0, false), "calseg_focal3");
        assert_eq!(c.net_name(0.25, 2.0, true), "calseg_focal3_a0.25_t2");
        assert!(c.validate().is_ok());
        c.focal_gamma = -1.0;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("focal_gamma"), "{e}");
    }
}
