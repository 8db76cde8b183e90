//! `calseg vls train` and `calseg vls smooth`: the variational label smoother of CALSeg.
//!
//! A VLS model folder holds `model.safetensors` (the parameters) and `vls.json` (the
//! [`VlsConfig`] it was built with), plus the trainer's checkpoint and log.

use super::train::{
    MIN_CASES_FOR_CASE_SPLIT, TrainFlags, bad, failed, layouts, open_dataset, seg_err,
    train_val_cases,
};
use super::{CliError, CliResult};
use calseg_io::Case;
use calseg_seg::train::{SetOptions, TargetSource, TrainSet};
use calseg_vls::smooth::{
    CALIBRATION_FILE, Calibration, LatentSource, SmoothConfig, SmoothStats,
    calibrate_held_out_slabs, calibrate_temperature, noise_target, smooth_case, write_soft_labels,
};
use calseg_vls::{MixKind, VlsConfig, VlsError, VlsModel};
use candle_core::Device;
use clap::{Args, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};

/// Arguments of `calseg vls`.
#[derive(Args, Debug)]
pub struct VlsArgs {
    #[command(subcommand)]
    command: VlsCommand,
}

#[derive(Subcommand, Debug)]
enum VlsCommand {
    /// Train the smoother on a dataset's training cases (validation: the hold-out
    /// part of `calseg train`).
    Train(VlsTrainArgs),
    /// Write soft labels Y_s (CASE.safetensors + CASE.nii.gz) for training cases.
    Smooth(VlsSmoothArgs),
}

/// Arguments of `calseg vls train`.
#[derive(Args, Debug)]
pub struct VlsTrainArgs {
    /// Decathlon/nnU-Net dataset folder (dataset.json, imagesTr, labelsTr).
    #[arg(long)]
    data: PathBuf,
    /// 2 (slices along the last spatial axis of volumes, or 2D images) or 3 (volumes).
    #[arg(long)]
    dims: usize,
    /// Model folder to write (model.safetensors, vls.json, checkpoint, train_log.jsonl).
    #[arg(long)]
    out: PathBuf,
    /// Latent dimensions L.
    #[arg(long, default_value_t = 3)]
    latent: usize,
    /// Training budget, seed and resume.
    #[command(flatten)]
    run: VlsTrainFlags,
    #[command(flatten)]
    device: super::DeviceArg,
    /// Width of the trunk U-Net's first level.
    #[arg(long, default_value_t = 8)]
    base: usize,
    /// Poolings of the trunk U-Net.
    #[arg(long, default_value_t = 4)]
    depth: usize,
    /// Levels of the posterior encoder (sizes are padded to multiples of
    /// 2^max(depth, enc-levels − 1)).
    #[arg(long, default_value_t = 5)]
    enc_levels: usize,
    /// Width of the posterior encoder's first level (doubling per level).
    #[arg(long, default_value_t = 24)]
    enc_base: usize,
    /// Free bits: floor of each latent dimension's batch-mean KL, in nats.
    #[arg(long, default_value_t = 0.5)]
    free_bits: f64,
    /// Weight of the soft-Dice term added to the segmentation CE (0 = plain CE, the
    /// paper's loss; 1 keeps thin, rare classes such as CSF).
    #[arg(long, default_value_t = 1.0)]
    dice_weight: f64,
    /// Weight of the image-reconstruction MSE.
    #[arg(long, default_value_t = 1.0)]
    lambda_rec: f64,
    /// Axis of the slice-wise validation split (fewer than 5 training cases).
    #[arg(long, default_value_t = 2)]
    axis: usize,
    /// Label-noise likelihood: σ of the SVLS kernel (3×3 in-plane for --dims 2,
    /// 3×3×3 for --dims 3) applied to the one-hot target of the segmentation head
    /// (0 = the paper's hard target).
    #[arg(long, default_value_t = VlsConfig::default().target_sigma)]
    target_sigma: f64,
    /// With --dims 2 on volumes: take the label-noise target over the volume (3×3×3)
    /// rather than in-plane (`true`/`false`).
    #[arg(long, default_value_t = VlsConfig::default().volume_target, action = clap::ArgAction::Set)]
    volume_target: bool,
    /// Latent samples m of the validation soft labels used to calibrate τ.
    #[arg(long, default_value_t = 16)]
    calib_samples: usize,
    /// 3D smoother (`--dims 3` on volumes): the training patch, e.g. 48,48,48 (each a
    /// multiple of 2^max(depth, enc-levels − 1)); `calseg vls smooth` then runs windows
    /// of this size. Default 48,48,48 with --dims 3; an epoch is then `--iters-per-epoch`
    /// steps (default 10) of random, foreground-oversampled patches.
    #[arg(long, value_delimiter = ',')]
    patch: Option<Vec<usize>>,
}

/// Default 3D patch of `calseg vls train --dims 3`.
const DEFAULT_PATCH_3D: [usize; 3] = [48, 48, 48];
/// Default optimiser steps per epoch of patch training.
const DEFAULT_PATCH_ITERS: usize = 10;
/// Default batch of `calseg vls train`: 8 slices (2D) …
const DEFAULT_BATCH_2D: usize = 8;
/// … or 4 patches (3D).
const DEFAULT_BATCH_PATCHES: usize = 4;

/// The training flags of `calseg vls train`: those of `calseg train`, with the
/// smoother's own defaults. 30 epochs at lr 3e-3 (≈ 270 AdamW steps of 8 slices on the
/// embedded brain, ≈ 4–5 min on 2 cores): at the shared defaults (10 epochs, 1e-3, ≈ 90
/// steps) the smoother is far from converged and its `y_s` is worse than SVLS
/// (crate README, "Soft-label fidelity").
#[derive(Args, Debug)]
pub struct VlsTrainFlags {
    /// Epochs.
    #[arg(long, default_value_t = 30)]
    epochs: usize,
    /// Seed of the initial weights and of every random choice of the run.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Continue from the checkpoint in `--out` (same seed, batch size and iterations).
    #[arg(long)]
    resume: bool,
    /// Samples per batch (default: 8 slices for --dims 2, 4 patches for --dims 3).
    #[arg(long)]
    batch_size: Option<usize>,
    /// AdamW learning rate.
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    /// Optimiser steps per epoch (default: one pass over the samples).
    #[arg(long)]
    iters_per_epoch: Option<usize>,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
    /// End with the weights of the best validation Dice(z=0) instead of the last ones.
    #[arg(long)]
    keep_best: bool,
}

impl VlsTrainFlags {
    fn shared(&self) -> TrainFlags {
        TrainFlags {
            epochs: self.epochs,
            seed: self.seed,
            resume: self.resume,
            batch_size: self.batch_size.unwrap_or(DEFAULT_BATCH_2D),
            lr: self.lr,
            iters_per_epoch: self.iters_per_epoch,
            quiet: self.quiet,
            keep_best: self.keep_best,
        }
    }
}

/// Latent samples from the posterior q(z|x,y) or the prior N(0, I).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FromArg {
    /// The approximate posterior of the case's image and labels (the paper).
    Posterior,
    /// The prior N(0, I) (label-free).
    Prior,
}

/// Arguments of `calseg vls smooth`.
#[derive(Args, Debug)]
pub struct VlsSmoothArgs {
    /// VLS model folder written by `calseg vls train`.
    #[arg(long)]
    model: PathBuf,
    /// Dataset folder: its training cases (with labels) are smoothed.
    #[arg(long)]
    data: PathBuf,
    /// Output folder for CASE.safetensors (tensor `soft_labels`), CASE.nii.gz and
    /// smooth_stats_{i}of{n}.json.
    #[arg(long)]
    out: PathBuf,
    /// Latent samples m averaged into y_s (≥ 1).
    #[arg(long, default_value_t = 16)]
    samples: usize,
    /// Temperature τ > 0 of y_s (τ < 1 sharpens). Default: the τ calibrated on
    /// validation data by `calseg vls train` (calibration.json of the model folder), or
    /// the library default for a folder without one.
    #[arg(long)]
    tau: Option<f64>,
    /// Mixing weight α ∈ [0, 1]: Y_s = (1 − α)·t(y) + α·y_s^τ, t(y) the smoother's
    /// label-noise target (the one-hot labels for a smoother trained with
    /// target_sigma = 0). Default 0.5 (SmoothConfig).
    #[arg(long)]
    alpha: Option<f64>,
    /// Where the latent samples come from.
    #[arg(long, value_enum, default_value_t = FromArg::Posterior)]
    from: FromArg,
    /// How `y_s^τ` enters the mix: `classes`, (1−α)·t(y) + α·y_s^τ (the paper), or
    /// `confidence`, (1−α)·t(y) + α·(c·t(y) + (1−c)·(1−t(y))/(K−1)) with c the smoother's
    /// probability of the label (per-voxel label smoothing set by the smoother).
    #[arg(long, default_value = "classes")]
    mix: MixKind,
    /// Shard `i/n` (0-based i < n): only training cases whose index in the dataset's
    /// (sorted) training list is ≡ i mod n. Shards of one n together cover every case
    /// once and write non-colliding files, so they can run in parallel.
    #[arg(long, default_value = "0/1")]
    shard: String,
    /// Seed of the latent noise (mixed with each case id, so a case's labels do not
    /// depend on the shard).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// 2D model on volumes: slices per forward pass.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[command(flatten)]
    device: super::DeviceArg,
}

/// Runs `calseg vls …`.
pub fn run(args: VlsArgs) -> CliResult {
    match args.command {
        VlsCommand::Train(a) => train(a),
        VlsCommand::Smooth(a) => smooth(a),
    }
}

/// Errors of calseg-vls: configuration and shapes are the input's fault (exit 2).
/// Errors of calseg-vls, through the one bad-input rule ([`calseg::Error::is_bad_input`]).
fn vls_err(e: VlsError) -> CliError {
    CliError::Lib(e.into())
}

fn train(args: VlsTrainArgs) -> CliResult {
    let mut run = args.run.shared();
    run.check()?;
    if args.patch.is_some() && args.dims != 3 {
        return Err(bad("--patch is for 3D smoothers (--dims 3)"));
    }
    let patch = (args.dims == 3).then(|| {
        args.patch
            .clone()
            .unwrap_or_else(|| DEFAULT_PATCH_3D.to_vec())
    });
    if patch.is_some() {
        run.iters_per_epoch = run.iters_per_epoch.or(Some(DEFAULT_PATCH_ITERS));
        run.batch_size = args.run.batch_size.unwrap_or(DEFAULT_BATCH_PATCHES);
    }
    let device = args.device.open()?;
    let ds = open_dataset(&args.data)?;
    let cfg = VlsConfig {
        dims: args.dims,
        in_channels: ds.info().channel_names.len(),
        classes: ds.info().num_classes(),
        latent: args.latent,
        base: args.base,
        depth: args.depth,
        enc_levels: args.enc_levels,
        enc_base: args.enc_base,
        free_bits: args.free_bits,
        dice_weight: args.dice_weight,
        lambda_rec: args.lambda_rec,
        target_sigma: args.target_sigma,
        volume_target: args.volume_target,
        patch: patch.clone(),
        ..VlsConfig::default()
    };
    cfg.validate().map_err(|e| {
        bad(format!(
            "{} / options: {e}",
            args.data.join("dataset.json").display()
        ))
    })?;
    let (mut train_cases, mut val_cases) = train_val_cases(&ds, args.axis, None)?;
    let nsp = train_cases
        .first()
        .map(|c| c.image.ndim().saturating_sub(1))
        .unwrap_or(0);
    // `smooth_case` runs a 2D model on volumes slice by slice along the last axis:
    // train it on those slices.
    let (train_layout, val_layout, _) =
        layouts(args.dims, nsp, nsp.saturating_sub(1), patch.as_ref())?;
    // A 2D smoother with a volume label-noise target gets it as the slices' soft
    // target (computed here from the hard labels; a batch of slices cannot see its
    // neighbours); otherwise the model smooths the one-hot targets itself.
    let volume_target = cfg.volume_target && cfg.dims == 2 && nsp == 3;
    let model = VlsModel::new(&cfg, run.seed, &device).map_err(vls_err)?;
    for c in train_cases.iter_mut().chain(val_cases.iter_mut()) {
        c.soft_label = match (&c.label, volume_target) {
            (Some(l), true) => Some(noise_target(&model, l).map_err(vls_err)?),
            _ => None,
        };
    }
    let targets = if volume_target {
        TargetSource::CaseSoft
    } else {
        TargetSource::OneHot
    };
    let build = |cases: &[Case], layout| {
        TrainSet::build(
            cases,
            &SetOptions {
                classes: cfg.classes,
                targets: targets.clone(),
                layout,
                multiple: cfg.multiple(),
            },
        )
        .map_err(seg_err)
    };
    let train = build(&train_cases, train_layout)?;
    let val = build(&val_cases, val_layout)?;
    let (report, secs) = run.fit(&model, &train, &val, &args.out)?;
    save_vls(&model, &args.out)?;
    // The temperature of y_s, calibrated on the held-out part (hard labels only).
    let t_cal = std::time::Instant::now();
    let calib_cfg = SmoothConfig {
        samples: args.calib_samples,
        seed: run.seed,
        ..SmoothConfig::default()
    };
    // A 3D smoother on a slab split sees each validation slab with its training slab
    // below it (its real neighbours); otherwise the held-out cases or slices alone.
    let slab_split = ds.training_cases().len() < MIN_CASES_FOR_CASE_SPLIT;
    let calib = if cfg.dims == 3 && slab_split {
        let pairs: Vec<(&Case, &Case)> = train_cases.iter().zip(&val_cases).collect();
        calibrate_held_out_slabs(&model, &pairs, args.axis, &calib_cfg)
    } else {
        calibrate_temperature(&model, &val_cases, &calib_cfg)
    }
    .map_err(vls_err)?;
    calib.save(&args.out).map_err(failed)?;
    for e in &report.epochs {
        let kl: Vec<String> = (0..cfg.latent)
            .filter_map(|d| e.logs.get(&format!("kl_dim{d}")))
            .map(|k| format!("{k:.3}"))
            .collect();
        let active = e.logs.get("active_dims").map_or(f64::NAN, |v| *v);
        let val = e
            .val
            .as_ref()
            .map(|v| format!(", val Dice(z=0) {:.4}", v.dice_mean_fg))
            .unwrap_or_default();
        println!(
            "epoch {}: loss {:.4}, KL per latent dim [{}], active dims {active}{val}",
            e.epoch + 1,
            e.loss,
            kl.join(", ")
        );
    }
    println!(
        "trained the VLS ({}D, L = {}, {} train / {} validation samples): {} epochs done in {:.1} s{}; model in {}",
        cfg.dims,
        cfg.latent,
        train.len(),
        val.len(),
        report.epochs_done,
        secs,
        super::train::kept_text(&report),
        args.out.display()
    );
    println!(
        "calibrated on {} validation voxels: τ = {:.3} (cross-entropy to the label-noise \
         target {:.4} → {:.4} nats; hard-anchored mix: α = {}, {:.4} nats; {:.1} s); written to {}",
        calib.voxels,
        calib.tau,
        calib.ce_at_one,
        calib.ce,
        calib.alpha,
        calib.ce_mix,
        t_cal.elapsed().as_secs_f64(),
        args.out.join(CALIBRATION_FILE).display()
    );
    Ok(())
}

/// Writes `dir/model.safetensors` (through a temporary file and a rename, so a failed
/// write leaves no half file) and `dir/vls.json` (atomically).
fn save_vls(model: &VlsModel, dir: &Path) -> Result<(), CliError> {
    model.save_dir(dir).map_err(failed)
}

/// Loads a VLS model folder (exit 2 naming the file on failure).
fn load_vls(dir: &Path, device: &Device) -> Result<VlsModel, CliError> {
    VlsModel::load_dir(dir, device).map_err(bad)
}

/// Parses `i/n` with `n ≥ 1` and `i < n`.
fn parse_shard(s: &str) -> Result<(usize, usize), CliError> {
    let err = || {
        bad(format!(
            "--shard {s:?}: expected i/n with 0 ≤ i < n (e.g. 0/4 … 3/4)"
        ))
    };
    let (i, n) = s.split_once('/').ok_or_else(err)?;
    let i: usize = i.trim().parse().map_err(|_| err())?;
    let n: usize = n.trim().parse().map_err(|_| err())?;
    if n == 0 || i >= n {
        return Err(err());
    }
    Ok((i, n))
}

fn smooth(args: VlsSmoothArgs) -> CliResult {
    let (shard, shards) = parse_shard(&args.shard)?;
    let model = load_vls(&args.model, &args.device.open()?)?;
    let calib = Calibration::load(&args.model).map_err(bad)?;
    let defaults = SmoothConfig::default();
    let tau = args
        .tau
        .unwrap_or_else(|| calib.as_ref().map_or(defaults.tau, |c| c.tau));
    // α of the anchored mix (SmoothConfig's default) unless given; the calibration's α is
    // the rule's choice for the paper's hard-label mix, recorded in calibration.json only.
    let alpha = args.alpha.unwrap_or(defaults.alpha);
    let sc = SmoothConfig {
        samples: args.samples,
        tau,
        alpha,
        from: match args.from {
            FromArg::Posterior => LatentSource::Posterior,
            FromArg::Prior => LatentSource::Prior,
        },
        seed: args.seed,
        batch: args.batch,
        mix: args.mix,
    };
    sc.validate().map_err(|e| bad(format!("options: {e}")))?;
    let mc = model.config().clone();
    let ds = open_dataset(&args.data)?;
    let (ds_channels, ds_classes) = (ds.info().channel_names.len(), ds.info().num_classes());
    if ds_channels != mc.in_channels || ds_classes != mc.classes {
        return Err(bad(format!(
            "{}: the dataset has {ds_channels} channel(s) and {ds_classes} classes, the VLS \
             model {} takes {} channel(s) and {} classes",
            args.data.join("dataset.json").display(),
            args.model.display(),
            mc.in_channels,
            mc.classes
        )));
    }
    // Load and check every selected case before any smoothing.
    let mut cases = Vec::new();
    for (idx, r) in ds.training_cases().iter().enumerate() {
        if idx % shards != shard {
            continue;
        }
        let c = ds.load_case(r).map_err(bad)?;
        let Some(label) = &c.label else {
            return Err(bad(format!(
                "training case {} has no label map (labelsTr/{}{}) to smooth",
                c.id,
                c.id,
                ds.info().file_ending
            )));
        };
        if let Some(&l) = label.iter().find(|&&l| l as usize >= mc.classes) {
            return Err(bad(format!(
                "training case {}: label value {l} is not below the model's {} classes",
                c.id, mc.classes
            )));
        }
        let nsp = c.image.ndim().saturating_sub(1);
        if !(nsp == mc.dims || (mc.dims == 2 && nsp == 3)) {
            return Err(bad(format!(
                "training case {}: a {}D smoother cannot process an image with {nsp} spatial axes",
                c.id, mc.dims
            )));
        }
        cases.push(c);
    }
    std::fs::create_dir_all(&args.out)
        .map_err(|e| failed(format!("{}: cannot create: {e}", args.out.display())))?;
    let mut stats: Vec<SmoothStats> = Vec::with_capacity(cases.len());
    for c in &cases {
        let soft = smooth_case(&model, c, &sc)
            .map_err(|e| super::predict::in_case(&format!("case {}", c.id), vls_err(e)))?;
        write_soft_labels(&args.out, &soft, &c.geometry).map_err(failed)?;
        let s = &soft.stats;
        println!(
            "{}: flipped {:.4}, mean entropy {:.4} nats, sample variance {:.3e} ({:.1} s)",
            s.case, s.flipped_fraction, s.mean_entropy, s.sample_variance, s.seconds
        );
        stats.push(soft.stats);
    }
    let stats_path = args
        .out
        .join(format!("smooth_stats_{shard}of{shards}.json"));
    let json = serde_json::json!({
        "shard": shard,
        "shards": shards,
        "model": args.model,
        "data": args.data,
        "config": sc,
        "cases": stats,
    });
    let text = serde_json::to_string_pretty(&json).map_err(failed)?;
    calseg_io::atomic::write_atomic(&stats_path, text.as_bytes()).map_err(failed)?;
    println!(
        "smoothed {} case(s) (shard {shard}/{shards}) into {}; statistics in {}",
        stats.len(),
        args.out.display(),
        stats_path.display()
    );
    Ok(())
}
