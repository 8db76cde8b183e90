//! `calseg train`: one segmentation net with one calibration method on a dataset's
//! training cases, validated on a hold-out part of them.
//!
//! **Train/validation split** (the same rule `calseg calibrate` and `calseg vls train`
//! use; the dataset's test cases are never touched): with at least
//! [`MIN_CASES_FOR_CASE_SPLIT`] training cases, the last 20 % of them (at least one) are
//! the validation cases; with fewer, every case is cut along `--axis` and its top 20 %
//! of slices (at least one, leaving at least one) are validation data.

use super::{CliError, CliResult};
use calseg_io::preprocess::crop;
use calseg_io::{Case, Dataset, TypedArray};
use calseg_seg::SegError;
use calseg_seg::loss::{LossConfig, Method};
use calseg_seg::model::{InputSpec, SegModel};
use calseg_seg::net::UNetConfig;
use calseg_seg::train::{
    Layout, SetOptions, TargetSource, TrainReport, TrainSet, Trainable, Trainer, TrainerConfig,
};
use clap::Args;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Fewest training cases for a split by cases rather than by slices.
pub const MIN_CASES_FOR_CASE_SPLIT: usize = 5;
/// Share of the cases (or slices) held out for validation.
pub const VAL_FRACTION: f64 = 0.2;

/// Arguments of `calseg train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Decathlon/nnU-Net dataset folder (dataset.json, imagesTr, labelsTr).
    #[arg(long)]
    data: PathBuf,
    /// Training method: ce, ls, focal, svls, mbls, nacl (default hyper-parameters) or
    /// soft (soft-target CE on `--soft-labels`).
    #[arg(long)]
    method: String,
    /// Soft labels for `--method soft`: a folder with CASE.safetensors (tensor
    /// `soft_labels`, (K, *spatial) float32) per training case, e.g. from `calseg vls smooth`.
    #[arg(long)]
    soft_labels: Option<PathBuf>,
    /// 2 (a 2D net on slices along `--axis`, or on 2D images) or 3 (a 3D net on whole
    /// volumes, or on patches with `--patch`).
    #[arg(long)]
    dims: usize,
    /// Model folder to write (model.safetensors, model.json, checkpoint, train_log.jsonl).
    #[arg(long)]
    out: PathBuf,
    /// Training budget, seed and resume.
    #[command(flatten)]
    run: TrainFlags,
    #[command(flatten)]
    device: super::DeviceArg,
    /// Width of the U-Net's first level.
    #[arg(long, default_value_t = 16)]
    base: usize,
    /// Poolings of the U-Net (spatial sizes are padded to multiples of 2^depth).
    #[arg(long, default_value_t = 3)]
    depth: usize,
    /// 3D patch size, e.g. 64,64,64 (each a multiple of 2^depth); only with `--dims 3`.
    #[arg(long, value_delimiter = ',')]
    patch: Option<Vec<usize>>,
    /// Spatial axis of 2D slices and of the slice-wise validation split.
    #[arg(long, default_value_t = 2)]
    axis: usize,
    /// Weight of an added soft-Dice term (0 = none).
    #[arg(long, default_value_t = 0.0)]
    dice_weight: f64,
}

/// `"; kept epoch N's weights (validation Dice D)"` for a `--keep-best` run that kept
/// them, else nothing.
pub(crate) fn kept_text(report: &TrainReport) -> String {
    report.best.map_or(String::new(), |b| {
        format!(
            "; kept epoch {}'s weights (validation Dice {:.4})",
            b.epoch + 1,
            b.dice_mean_fg
        )
    })
}

/// The training flags `calseg train` and `calseg vls train` share.
#[derive(Args, Debug)]
pub(crate) struct TrainFlags {
    /// Epochs.
    #[arg(long, default_value_t = 10)]
    pub(crate) epochs: usize,
    /// Seed of the initial weights and of every random choice of the run.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Continue from the checkpoint in `--out` (same seed, batch size and iterations).
    #[arg(long)]
    pub(crate) resume: bool,
    /// Samples per batch.
    #[arg(long, default_value_t = 8)]
    pub(crate) batch_size: usize,
    /// AdamW learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub(crate) lr: f64,
    /// Optimiser steps per epoch (default: one pass over the samples).
    #[arg(long)]
    pub(crate) iters_per_epoch: Option<usize>,
    /// No progress bars.
    #[arg(long)]
    pub(crate) quiet: bool,
    /// End with the weights of the best validation Dice instead of the last ones (early
    /// stopping on validation; `best.safetensors` in `--out` keeps them across resumes).
    #[arg(long)]
    pub(crate) keep_best: bool,
}

impl TrainFlags {
    /// Checks the flags (bad input before any work).
    pub(crate) fn check(&self) -> Result<(), CliError> {
        if self.epochs == 0 || self.batch_size == 0 || self.iters_per_epoch == Some(0) {
            return Err(bad(
                "--epochs, --batch-size and --iters-per-epoch must be positive",
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(bad(format!(
                "--lr must be finite and positive, got {}",
                self.lr
            )));
        }
        Ok(())
    }

    /// Trains `model` on `train` (validating on `val`, checkpoints in `out`); returns the
    /// report and the wall-clock seconds.
    pub(crate) fn fit<M: Trainable>(
        &self,
        model: &M,
        train: &TrainSet,
        val: &TrainSet,
        out: &Path,
    ) -> Result<(TrainReport, f64), CliError> {
        let trainer = Trainer::new(TrainerConfig {
            epochs: self.epochs,
            iters_per_epoch: self.iters_per_epoch,
            batch_size: self.batch_size,
            lr: self.lr,
            seed: self.seed,
            resume: self.resume,
            quiet: self.quiet,
            keep_best: self.keep_best,
            ..TrainerConfig::default()
        });
        let t0 = Instant::now();
        let report = trainer
            .fit(model, train, Some(val), Some(out))
            .map_err(seg_err)?;
        Ok((report, t0.elapsed().as_secs_f64()))
    }
}

/// A bad-input error from anything displayable.
pub(crate) fn bad(e: impl std::fmt::Display) -> CliError {
    CliError::BadInput(e.to_string())
}

/// A run failure from anything displayable.
pub(crate) fn failed(e: impl std::fmt::Display) -> CliError {
    CliError::Failed(e.to_string())
}

/// Errors of calseg-seg, through the one bad-input rule ([`calseg::Error::is_bad_input`]):
/// about the input (shapes, configuration, files) → exit 2; numerical or internal
/// failures → exit 1.
pub(crate) fn seg_err(e: SegError) -> CliError {
    CliError::Lib(e.into())
}

/// Opens a dataset folder (exit 2 naming it when that fails).
pub(crate) fn open_dataset(path: &Path) -> Result<Dataset, CliError> {
    Dataset::open(path).map_err(|e| bad(format!("{}: {e}", path.display())))
}

/// Items out of `n` a fraction selects: at least one, leaving at least one.
fn held_out(n: usize, fraction: f64) -> usize {
    ((n as f64 * fraction).round() as usize).clamp(1, n.saturating_sub(1).max(1))
}

/// Training cases of `ds` loaded and divided into (train, validation) parts by the rule
/// of the module docs. Slice-split parts keep their case id (so per-case files such as
/// soft labels can still be found) and are cropped to their slab. With `soft_labels =
/// (DIR, K)`, every training case first gets `DIR/CASE.safetensors` as its soft labels
/// (see [`attach_soft_labels`]).
pub(crate) fn train_val_cases(
    ds: &Dataset,
    axis: usize,
    soft_labels: Option<(&Path, usize)>,
) -> Result<(Vec<Case>, Vec<Case>), CliError> {
    let refs = ds.training_cases();
    if refs.is_empty() {
        return Err(bad("the dataset has no training cases"));
    }
    let mut cases: Vec<Case> = refs
        .iter()
        .map(|r| ds.load_case(r).map_err(bad))
        .collect::<Result<_, _>>()?;
    for c in &cases {
        if c.label.is_none() {
            return Err(bad(format!("training case {} has no label map", c.id)));
        }
    }
    if let Some((dir, classes)) = soft_labels {
        // Attached before the split, so slice-split parts get their crop of them.
        attach_soft_labels(dir, &mut cases, classes)?;
    }
    if cases.len() >= MIN_CASES_FOR_CASE_SPLIT {
        let k = held_out(cases.len(), VAL_FRACTION);
        let mut train = cases;
        let val = train.split_off(train.len() - k);
        return Ok((train, val));
    }
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for c in &cases {
        let spatial = &c.image.shape()[1..];
        let n = *spatial.get(axis).ok_or_else(|| {
            bad(format!(
                "case {}: --axis {axis} is outside its spatial shape {spatial:?}",
                c.id
            ))
        })?;
        if n < 2 {
            return Err(bad(format!(
                "case {}: {n} slice(s) along axis {axis}: too few to hold out validation \
                 slices (fewer than {MIN_CASES_FOR_CASE_SPLIT} training cases split by slices)",
                c.id
            )));
        }
        let cut = n - held_out(n, VAL_FRACTION);
        let bbox = |r: Range<usize>| -> Vec<Range<usize>> {
            spatial
                .iter()
                .enumerate()
                .map(|(a, &d)| if a == axis { r.clone() } else { 0..d })
                .collect()
        };
        train.push(crop(c, &bbox(0..cut)).map_err(bad)?);
        val.push(crop(c, &bbox(cut..n)).map_err(bad)?);
    }
    Ok((train, val))
}

/// Reads `dir/CASE.safetensors` (tensor `soft_labels`, float32, `(K, *spatial)` of the
/// case) for every case and attaches it as the case's soft labels; any problem is bad
/// input naming the file.
fn attach_soft_labels(dir: &Path, cases: &mut [Case], classes: usize) -> Result<(), CliError> {
    if !dir.is_dir() {
        return Err(bad(format!(
            "{}: soft-label folder not found",
            dir.display()
        )));
    }
    for c in cases.iter_mut() {
        let path = dir.join(format!("{}.safetensors", c.id));
        if !path.is_file() {
            return Err(bad(format!(
                "{}: missing soft labels of training case {}",
                path.display(),
                c.id
            )));
        }
        let tensors = calseg_io::read_safetensors(&path).map_err(bad)?;
        let Some((_, t)) = tensors.into_iter().find(|(n, _)| n == "soft_labels") else {
            return Err(bad(format!(
                "{}: no tensor named soft_labels",
                path.display()
            )));
        };
        let TypedArray::F32(a) = t else {
            return Err(bad(format!(
                "{}: soft_labels must be float32, got {}",
                path.display(),
                t.dtype().name()
            )));
        };
        let mut want = vec![classes];
        want.extend_from_slice(&c.image.shape()[1..]);
        if a.shape() != want.as_slice() {
            return Err(bad(format!(
                "{}: soft_labels of shape {:?}, expected (K = {classes}, spatial of case {}) = {want:?}",
                path.display(),
                a.shape(),
                c.id
            )));
        }
        if a.iter().any(|v| !v.is_finite()) {
            return Err(bad(format!(
                "{}: soft_labels has non-finite values",
                path.display()
            )));
        }
        c.soft_label = Some(a);
    }
    Ok(())
}

/// The sample layouts of the training and validation sets for a `dims`-D net on cases
/// with `nsp` spatial axes; also the slicing axis a 2D net on volumes uses.
pub(crate) fn layouts(
    dims: usize,
    nsp: usize,
    axis: usize,
    patch: Option<&Vec<usize>>,
) -> Result<(Layout, Layout, Option<usize>), CliError> {
    match (dims, nsp) {
        (2, 3) => {
            let l = Layout::Slices {
                axis: Some(axis),
                range: None,
                skip_empty: false,
            };
            Ok((l.clone(), l, Some(axis)))
        }
        (2, 2) => Ok((Layout::Whole, Layout::Whole, None)),
        (3, 3) => {
            let train = match patch {
                Some(p) => Layout::Patches {
                    patch: p.clone(),
                    foreground_fraction: 1.0 / 3.0,
                },
                None => Layout::Whole,
            };
            Ok((train, Layout::Whole, None))
        }
        _ => Err(bad(format!(
            "--dims {dims}: a {dims}D net cannot be trained on images with {nsp} spatial axes \
             (use --dims 2 for 2D images; --dims must be 2 or 3)"
        ))),
    }
}

/// Runs `calseg train`.
pub fn run(args: TrainArgs) -> CliResult {
    // Checks of the options, before anything is read.
    if !(2..=3).contains(&args.dims) {
        return Err(bad(format!("--dims must be 2 or 3, got {}", args.dims)));
    }
    let method: Method = args.method.parse().map_err(bad)?;
    match (&method, &args.soft_labels) {
        (Method::Soft, None) => {
            return Err(bad(
                "--method soft needs --soft-labels DIR (CASE.safetensors with a tensor \
                 soft_labels per training case, e.g. from `calseg vls smooth`)",
            ));
        }
        (m, Some(_)) if *m != Method::Soft => {
            return Err(bad(format!(
                "--soft-labels is only used by --method soft, not --method {m}"
            )));
        }
        _ => {}
    }
    let loss_cfg = LossConfig {
        method,
        dice_weight: args.dice_weight,
    };
    let loss = loss_cfg.build_arc().map_err(seg_err)?;
    args.run.check()?;
    let device = args.device.open()?;
    if args.base == 0 || !(1..=8).contains(&args.depth) {
        return Err(bad("--base must be positive and --depth in 1..=8"));
    }
    if args.patch.is_some() && args.dims != 3 {
        return Err(bad("--patch is for 3D nets (--dims 3)"));
    }
    let ds = open_dataset(&args.data)?;
    let classes = ds.info().num_classes();
    let in_channels = ds.info().channel_names.len();
    if classes < 2 || in_channels == 0 {
        return Err(bad(format!(
            "{}: dataset.json declares {classes} label(s) and {in_channels} channel(s); \
             need at least 2 labels and 1 channel",
            args.data.join("dataset.json").display()
        )));
    }
    let ucfg = UNetConfig {
        dims: args.dims,
        in_channels,
        classes,
        base: args.base,
        depth: args.depth,
        ..UNetConfig::default()
    };
    let multiple = ucfg.size_multiple();
    let soft = args.soft_labels.as_deref().map(|d| (d, classes));
    let (train_cases, val_cases) = train_val_cases(&ds, args.axis, soft)?;
    let nsp = train_cases
        .first()
        .map(|c| c.image.ndim().saturating_sub(1))
        .unwrap_or(0);
    let (train_layout, val_layout, slice_axis) =
        layouts(args.dims, nsp, args.axis, args.patch.as_ref())?;
    // Soft labels were read (and cropped with their case) by `train_val_cases`.
    let targets = match &args.soft_labels {
        Some(_) => TargetSource::CaseSoft,
        None => TargetSource::OneHot,
    };
    let train = TrainSet::build(
        &train_cases,
        &SetOptions {
            classes,
            targets,
            layout: train_layout,
            multiple,
        },
    )
    .map_err(seg_err)?;
    let val = TrainSet::build(
        &val_cases,
        &SetOptions {
            classes,
            targets: TargetSource::OneHot,
            layout: val_layout,
            multiple,
        },
    )
    .map_err(seg_err)?;
    let mut method_json = serde_json::to_value(method).map_err(failed)?;
    if let Some(o) = method_json.as_object_mut() {
        o.insert("dice_weight".into(), serde_json::json!(args.dice_weight));
        // The axis of the slice-wise validation split, for `calseg calibrate`.
        o.insert("val_split_axis".into(), serde_json::json!(args.axis));
    }
    let model = SegModel::new(&ucfg, args.run.seed, &device)
        .map_err(seg_err)?
        .with_loss(loss)
        .with_method(method_json)
        .with_input(InputSpec {
            axis: slice_axis,
            patch: args.patch.clone(),
            train_size: train.batch_shape(),
        });
    let (report, secs) = args.run.fit(&model, &train, &val, &args.out)?;
    model.save(&args.out).map_err(seg_err)?;
    let last_val = report.epochs.iter().rev().find_map(|e| e.val.as_ref());
    let val_text = match last_val {
        Some(v) => format!(
            "last validation Dice {:.4}, ECE {:.4}",
            v.dice_mean_fg, v.ece
        ),
        None => "no validation this run".to_string(),
    };
    let val_text = format!("{val_text}{}", kept_text(&report));
    println!(
        "trained {} ({}D, {} train / {} validation samples): {} epochs done ({} this run) in {secs:.1} s; {val_text}; model in {}",
        method,
        args.dims,
        train.len(),
        val.len(),
        report.epochs_done,
        report.epochs.len(),
        args.out.display()
    );
    Ok(())
}
