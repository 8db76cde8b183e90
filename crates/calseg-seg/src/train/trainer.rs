//! The training loop: AdamW on any [`Trainable`], learning-rate schedules, validation
//! with calseg-metrics, a JSON-lines log, and exactly resumable checkpoints.
//!
//! ## Determinism and resuming
//! Everything random in epoch `e` comes from two generators seeded with
//! `mix(seed, e, stream)` at the start of the epoch: the [`BatchSampler`] (shuffling,
//! patches, flips) and the generator handed to [`Trainable::loss`] (e.g. dropout seeds,
//! the smoother's samples). Checkpoints are written at the end of an epoch and hold the
//! parameters, the AdamW moments and step count, and the run state (epoch, step,
//! configuration). A resumed run therefore replays exactly what the uninterrupted run
//! would have done from that epoch on, and ends with bit-identical weights (same
//! machine and thread count; the fast ops reduce in a fixed order). Accumulators kept
//! inside a model between epochs are not checkpointed.
//!
//! ## Files in the output directory
//! - `checkpoint.safetensors`: parameters (their own names), AdamW moments
//!   (`adamw.m.NAME`, `adamw.v.NAME`, f64), and the run state as JSON in the metadata
//!   key `calseg.checkpoint`; written to a temporary file and renamed, so a failed
//!   write leaves the previous checkpoint intact.
//! - `checkpoint.json`: a human-readable copy of that run state (not read back).
//! - `train_log.jsonl`: one JSON object per epoch: `epoch`, `loss`, `lr`, `steps`,
//!   `seconds`, `logs` (model values: per-step means, then `end_epoch` values) and
//!   `val` (validation metrics, when computed).

use super::checkpoint::{load_into_vars, load_tensors, named_vars, save_tensors};
use super::data::{BatchSampler, TrainSet};
use super::{StepInfo, Trainable};
use crate::optim::AdamW;
use crate::{Result, SegError};
use calseg_metrics::{Evaluator, MetricConfig, Region, TopLabelCalibration};
use candle_core::{DType, Device, Var};
use candle_nn::{Optimizer, ParamsAdamW};
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::{ArrayD, Axis, Slice};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Learning-rate schedule over optimiser steps (`t` = steps done, `T` = total steps).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// `lr` throughout.
    #[default]
    Constant,
    /// `lr · gamma^⌊epoch / every⌋`.
    Step {
        /// Epochs between decays.
        every: usize,
        /// Decay factor.
        gamma: f64,
    },
    /// Linear warm-up over `warmup` steps (`lr·(t+1)/warmup`), then cosine decay to 0:
    /// `lr · ½(1 + cos(π (t − warmup)/(T − warmup)))`.
    Cosine {
        /// Warm-up steps.
        warmup: usize,
    },
}

impl Schedule {
    /// Learning rate of step `step` (0-based) in `epoch`, of `total` steps.
    pub fn lr(&self, base: f64, step: usize, epoch: usize, total: usize) -> f64 {
        match *self {
            Schedule::Constant => base,
            Schedule::Step { every, gamma } => base * gamma.powi((epoch / every.max(1)) as i32),
            Schedule::Cosine { warmup } => {
                if step < warmup {
                    base * (step + 1) as f64 / warmup as f64
                } else {
                    let span = total.saturating_sub(warmup).max(1) as f64;
                    let x = ((step - warmup) as f64 / span).min(1.0);
                    base * 0.5 * (1.0 + (std::f64::consts::PI * x).cos())
                }
            }
        }
    }
}

/// Configuration of a training run (every field has a default, so a partial JSON/TOML
/// object works).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainerConfig {
    /// Epochs.
    pub epochs: usize,
    /// Optimiser steps per epoch (`None`: one pass, `⌈samples / batch_size⌉`).
    pub iters_per_epoch: Option<usize>,
    /// Samples per batch.
    pub batch_size: usize,
    /// Base learning rate of AdamW.
    pub lr: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// Seed of every random choice of the run.
    pub seed: u64,
    /// Random mirroring along every spatial axis.
    pub flips: bool,
    /// Validate every this many epochs (and after the last); 0 = never.
    pub validate_every: usize,
    /// No progress bar.
    pub quiet: bool,
    /// Write a checkpoint every this many epochs (and after the last); 0 = never.
    /// Needs an output directory.
    pub checkpoint_every: usize,
    /// Continue from `checkpoint.safetensors` in the output directory if there is one.
    pub resume: bool,
    /// Stop this invocation once this many epochs are done in total (leaving a
    /// checkpoint to resume from), as if the run had been killed; `None`: run to
    /// `epochs`. Lets long runs be split into pieces.
    pub stop_after: Option<usize>,
    /// End the run with the weights of the validation that had the highest mean
    /// foreground Dice, not the last ones: early stopping on validation data without
    /// cutting the learning-rate schedule short. Needs validation (`validate_every > 0`
    /// and a validation set; otherwise the last weights stay). With an output directory
    /// the best weights also go to [`BEST_FILE`] (their epoch and Dice in its metadata),
    /// so a resumed run keeps them. The report's [`TrainReport::best`] says which epoch.
    pub keep_best: bool,
}

impl Default for TrainerConfig {
    fn default() -> Self {
        Self {
            epochs: 10,
            iters_per_epoch: None,
            batch_size: 8,
            lr: 1e-3,
            weight_decay: 1e-4,
            schedule: Schedule::Constant,
            seed: 0,
            flips: true,
            validate_every: 1,
            quiet: false,
            checkpoint_every: 1,
            resume: false,
            stop_after: None,
            keep_best: false,
        }
    }
}

/// Validation metrics (pooled over the validation set, padding cropped away).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValMetrics {
    /// Dice per class (`NaN`: class absent from truth and prediction… see calseg-metrics).
    pub dice: Vec<f64>,
    /// Mean Dice over the foreground classes.
    pub dice_mean_fg: f64,
    /// Top-label ECE over all voxels (15 bins).
    pub ece: f64,
    /// Top-label ECE over foreground voxels (label ≠ 0; the MbLS/NACL protocol).
    pub ece_fg: f64,
    /// Class-wise ECE over all voxels.
    pub cece: f64,
    /// Mean negative log-likelihood.
    pub nll: f64,
    /// Mean Brier score.
    pub brier: f64,
    /// Voxel accuracy.
    pub accuracy: f64,
}

/// One epoch of the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochLog {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Mean training loss.
    pub loss: f64,
    /// Learning rate of the epoch's last step.
    pub lr: f64,
    /// Optimiser steps done after this epoch.
    pub steps: usize,
    /// Wall-clock seconds of the epoch (training and validation).
    pub seconds: f64,
    /// Model values: means of the per-step logs, then the `end_epoch` values.
    pub logs: BTreeMap<String, f64>,
    /// Validation metrics, if computed this epoch.
    pub val: Option<ValMetrics>,
}

/// What [`Trainer::fit`] returns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    /// Logs of the epochs run by this invocation (a resumed run starts later).
    pub epochs: Vec<EpochLog>,
    /// Epochs done in total (including those before a resume).
    pub epochs_done: usize,
    /// Optimiser steps done in total.
    pub steps: usize,
    /// The epoch this invocation started at (0, or where it resumed).
    pub resumed_from: usize,
    /// The last checkpoint written, if any.
    pub checkpoint: Option<PathBuf>,
    /// With [`TrainerConfig::keep_best`]: the validation whose weights the model ended
    /// with (`None` without `keep_best`, without validation, or for a run stopped early
    /// by `stop_after`, which keeps its last weights to resume from).
    #[serde(default)]
    pub best: Option<BestEpoch>,
}

/// The epoch whose weights [`TrainerConfig::keep_best`] kept.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BestEpoch {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Its validation mean foreground Dice.
    pub dice_mean_fg: f64,
}

/// Run state stored with a checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct CheckpointState {
    epoch: usize,
    step: usize,
    adam_t: usize,
    config: TrainerConfig,
}

/// Metadata key of the run state in `checkpoint.safetensors`.
const STATE_KEY: &str = "calseg.checkpoint";

/// File names in the output directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// Human-readable copy of the run state.
pub const CHECKPOINT_JSON: &str = "checkpoint.json";
/// Per-epoch log.
pub const LOG_FILE: &str = "train_log.jsonl";
/// The best validation's weights of a [`TrainerConfig::keep_best`] run.
pub const BEST_FILE: &str = "best.safetensors";
/// Metadata key of the [`BestEpoch`] (JSON) in [`BEST_FILE`].
const BEST_KEY: &str = "calseg.best";

/// SplitMix64 of `seed` mixed with `epoch` and `stream`: independent seeds per epoch.
pub fn derive_seed(seed: u64, epoch: u64, stream: u64) -> u64 {
    let mut z = seed
        ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
    for _ in 0..2 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut x = z;
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z = x ^ (x >> 31);
    }
    z
}

/// Trains a [`Trainable`] (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct Trainer {
    cfg: TrainerConfig,
}

impl Trainer {
    /// A trainer with this configuration.
    pub fn new(cfg: TrainerConfig) -> Self {
        Self { cfg }
    }

    /// The configuration.
    pub fn config(&self) -> &TrainerConfig {
        &self.cfg
    }

    /// Trains `model` on `train`, validating on `val`, writing the log and checkpoints
    /// to `out_dir` (created if missing).
    ///
    /// # Errors
    /// [`SegError::NanLoss`] when a loss is NaN/∞ (the last checkpoint is left as it
    /// was), [`SegError::Checkpoint`] for an unreadable or mismatching checkpoint on
    /// resume, [`SegError::Config`] for a zero batch size or a set whose shape does not
    /// fit the model, I/O errors naming the file.
    pub fn fit(
        &self,
        model: &dyn Trainable,
        train: &TrainSet,
        val: Option<&TrainSet>,
        out_dir: Option<&Path>,
    ) -> Result<TrainReport> {
        let cfg = &self.cfg;
        if cfg.batch_size == 0 || cfg.epochs == 0 {
            return Err(SegError::Config(
                "batch_size and epochs must be positive".into(),
            ));
        }
        let named = named_vars(model.varmap())?;
        let device = named
            .first()
            .map(|(_, v)| v.device().clone())
            .unwrap_or(Device::Cpu);
        let mut opt = AdamW::new(
            named.iter().map(|(_, v)| v.clone()).collect(),
            ParamsAdamW {
                lr: cfg.lr,
                weight_decay: cfg.weight_decay,
                ..Default::default()
            },
        )?;
        if let Some(d) = out_dir {
            std::fs::create_dir_all(d).map_err(|e| SegError::checkpoint(d, e))?;
        }
        let ckpt_path = out_dir.map(|d| d.join(CHECKPOINT_FILE));
        let (mut epoch0, mut step) = (0, 0);
        let mut last_ckpt = None;
        if let (true, Some(p)) = (cfg.resume, &ckpt_path) {
            if p.exists() {
                let st = self.restore(p, &named, &mut opt, &device)?;
                epoch0 = st.epoch;
                step = st.step;
                last_ckpt = Some(p.clone());
                tracing::info!(epoch = epoch0, step, "resumed from {}", p.display());
            } else {
                tracing::info!("no checkpoint at {}: starting afresh", p.display());
            }
        }
        let log_path = out_dir.map(|d| d.join(LOG_FILE));
        if let Some(lp) = &log_path {
            truncate_log(lp, epoch0)?;
        }
        let best_path = out_dir.filter(|_| cfg.keep_best).map(|d| d.join(BEST_FILE));
        let mut best: Option<(BestEpoch, Vec<candle_core::Tensor>)> = match &best_path {
            Some(p) if epoch0 > 0 && p.exists() => Some(read_best(p, &named, &device)?),
            Some(p) if p.exists() => {
                // A fresh run: a best file left by an earlier run is not this run's.
                std::fs::remove_file(p).map_err(|e| SegError::checkpoint(p, e))?;
                None
            }
            _ => None,
        }
        .filter(|(b, _)| b.epoch < epoch0);
        let iters = cfg
            .iters_per_epoch
            .unwrap_or_else(|| train.len().div_ceil(cfg.batch_size))
            .max(1);
        let total_steps = iters * cfg.epochs;
        let end = cfg.stop_after.unwrap_or(cfg.epochs).min(cfg.epochs);
        let mut logs_out = Vec::new();
        for epoch in epoch0..end {
            let t0 = Instant::now();
            let mut sampler = BatchSampler::new(
                train,
                cfg.batch_size,
                cfg.flips,
                derive_seed(cfg.seed, epoch as u64, 1),
            );
            let mut rng = StdRng::seed_from_u64(derive_seed(cfg.seed, epoch as u64, 2));
            let pb = progress(cfg.quiet, iters, epoch, cfg.epochs);
            model.set_training(true);
            let (mut loss_sum, mut lr) = (0.0, cfg.lr);
            let mut sums: BTreeMap<String, f64> = BTreeMap::new();
            for _ in 0..iters {
                lr = cfg.schedule.lr(cfg.lr, step, epoch, total_steps);
                opt.set_learning_rate(lr);
                let batch = sampler.next_batch(&device)?;
                let info = StepInfo {
                    step,
                    epoch,
                    total_steps,
                    epochs: cfg.epochs,
                };
                let (loss, logs) = model.loss(&batch, &info, &mut rng)?;
                let lv = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                if !lv.is_finite() {
                    pb.abandon();
                    tracing::error!(step, "loss is {lv}");
                    return Err(SegError::NanLoss {
                        step,
                        checkpoint: last_ckpt,
                    });
                }
                let grads = loss.backward()?;
                opt.step(&grads)?;
                loss_sum += lv;
                for (k, v) in logs {
                    *sums.entry(k).or_default() += v;
                }
                tracing::debug!(step, loss = lv, lr, "step");
                pb.set_message(format!("loss {lv:.4}"));
                pb.inc(1);
                step += 1;
            }
            pb.finish_and_clear();
            let mut logs: BTreeMap<String, f64> = sums
                .into_iter()
                .map(|(k, v)| (k, v / iters as f64))
                .collect();
            logs.extend(model.end_epoch(epoch));
            let last = epoch + 1 == end;
            let val_metrics = match val {
                Some(v)
                    if cfg.validate_every > 0
                        && ((epoch + 1) % cfg.validate_every == 0 || last) =>
                {
                    Some(validate(model, v, cfg.batch_size)?)
                }
                _ => None,
            };
            let entry = EpochLog {
                epoch,
                loss: loss_sum / iters as f64,
                lr,
                steps: step,
                seconds: t0.elapsed().as_secs_f64(),
                logs,
                val: val_metrics,
            };
            tracing::info!(
                epoch,
                loss = entry.loss,
                dice = entry.val.as_ref().map(|v| v.dice_mean_fg),
                ece = entry.val.as_ref().map(|v| v.ece),
                seconds = entry.seconds,
                "epoch done"
            );
            if let Some(lp) = &log_path {
                append_log(lp, &entry)?;
            }
            if cfg.keep_best
                && let Some(v) = &entry.val
                && v.dice_mean_fg.is_finite()
                && best
                    .as_ref()
                    .is_none_or(|(b, _)| v.dice_mean_fg > b.dice_mean_fg)
            {
                let b = BestEpoch {
                    epoch,
                    dice_mean_fg: v.dice_mean_fg,
                };
                let snap = named
                    .iter()
                    .map(|(_, var)| var.as_tensor().copy())
                    .collect::<candle_core::Result<Vec<_>>>()?;
                if let Some(p) = &best_path {
                    write_best(p, &named, &snap, &b)?;
                }
                best = Some((b, snap));
            }
            if let Some(p) = &ckpt_path
                && cfg.checkpoint_every > 0
                && ((epoch + 1) % cfg.checkpoint_every == 0 || last)
            {
                let st = CheckpointState {
                    epoch: epoch + 1,
                    step,
                    adam_t: opt.step_count(),
                    config: cfg.clone(),
                };
                write_checkpoint(p, &named, &opt, &st)?;
                last_ckpt = Some(p.clone());
            }
            logs_out.push(entry);
        }
        model.set_training(false);
        // A finished run ends with the best validation's weights; one stopped by
        // `stop_after` keeps its last ones (its checkpoint continues from them).
        let best = match best {
            Some((b, snap)) if cfg.keep_best && end == cfg.epochs => {
                for ((_, var), t) in named.iter().zip(&snap) {
                    var.set(t)?;
                }
                tracing::info!(
                    epoch = b.epoch,
                    dice = b.dice_mean_fg,
                    "kept the best validation's weights"
                );
                Some(b)
            }
            _ => None,
        };
        Ok(TrainReport {
            epochs: logs_out,
            epochs_done: end.max(epoch0),
            steps: step,
            resumed_from: epoch0,
            checkpoint: last_ckpt,
            best,
        })
    }

    /// Loads a checkpoint into the parameters and the optimiser; returns its state.
    fn restore(
        &self,
        path: &Path,
        named: &[(String, Var)],
        opt: &mut AdamW,
        device: &Device,
    ) -> Result<CheckpointState> {
        let (tensors, meta) = load_tensors(path, device)?;
        let st: CheckpointState = meta_record(
            &meta,
            STATE_KEY,
            path,
            "run state (not a calseg checkpoint)",
        )?;
        let (a, b) = (&st.config, &self.cfg);
        if a.seed != b.seed
            || a.batch_size != b.batch_size
            || a.iters_per_epoch != b.iters_per_epoch
        {
            return Err(SegError::checkpoint(
                path,
                format!(
                    "written by a run with seed {}, batch size {}, iterations {:?}; this run has {}, {}, {:?}",
                    a.seed,
                    a.batch_size,
                    a.iters_per_epoch,
                    b.seed,
                    b.batch_size,
                    b.iters_per_epoch
                ),
            ));
        }
        load_into_vars(named, &tensors, path)?;
        let moments = named
            .iter()
            .map(|(n, _)| {
                let get = |k: String| {
                    tensors
                        .get(&k)
                        .ok_or_else(|| SegError::checkpoint(path, format!("missing {k}")))
                        .and_then(|t| {
                            Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
                        })
                };
                Ok((get(format!("adamw.m.{n}"))?, get(format!("adamw.v.{n}"))?))
            })
            .collect::<Result<Vec<_>>>()?;
        opt.set_state(st.adam_t, moments)
            .map_err(|e| SegError::checkpoint(path, e))?;
        Ok(st)
    }
}

/// Writes parameters + AdamW state + run state atomically, then the JSON copy.
fn write_checkpoint(
    path: &Path,
    named: &[(String, Var)],
    opt: &AdamW,
    st: &CheckpointState,
) -> Result<()> {
    let (_, moments) = opt.state()?;
    let mut tensors = Vec::with_capacity(3 * named.len());
    for ((n, v), (m, s)) in named.iter().zip(moments) {
        tensors.push((n.clone(), v.as_tensor().clone()));
        let dev = Device::Cpu;
        tensors.push((
            format!("adamw.m.{n}"),
            candle_core::Tensor::from_vec(m, v.dims(), &dev)?,
        ));
        tensors.push((
            format!("adamw.v.{n}"),
            candle_core::Tensor::from_vec(s, v.dims(), &dev)?,
        ));
    }
    let json = serde_json::to_string_pretty(st)
        .map_err(|e| SegError::Config(format!("run state to JSON: {e}")))?;
    let meta = HashMap::from([(STATE_KEY.to_string(), json.clone())]);
    save_tensors(path, &tensors, Some(meta))?;
    calseg_io::atomic::write_atomic(&path.with_file_name(CHECKPOINT_JSON), json.as_bytes())?;
    tracing::debug!(epoch = st.epoch, "checkpoint written to {}", path.display());
    Ok(())
}

/// The JSON record under `key` in a safetensors file's metadata: a
/// [`SegError::Checkpoint`] naming `path` and `what` when it is missing or malformed.
fn meta_record<T: serde::de::DeserializeOwned>(
    meta: &HashMap<String, String>,
    key: &str,
    path: &Path,
    what: &str,
) -> Result<T> {
    let text = meta
        .get(key)
        .ok_or_else(|| SegError::checkpoint(path, format!("no {what}")))?;
    serde_json::from_str(text).map_err(|e| SegError::checkpoint(path, format!("bad {what}: {e}")))
}

/// Writes the best validation's weights and their [`BestEpoch`] (atomically).
fn write_best(
    path: &Path,
    named: &[(String, Var)],
    snap: &[candle_core::Tensor],
    best: &BestEpoch,
) -> Result<()> {
    let tensors: Vec<(String, candle_core::Tensor)> = named
        .iter()
        .zip(snap)
        .map(|((n, _), t)| (n.clone(), t.clone()))
        .collect();
    let json = serde_json::to_string(best)
        .map_err(|e| SegError::Config(format!("best epoch to JSON: {e}")))?;
    save_tensors(
        path,
        &tensors,
        Some(HashMap::from([(BEST_KEY.to_string(), json)])),
    )
}

/// Reads [`BEST_FILE`] back for a resumed run: the epoch and the weights, in the order
/// of `named`.
fn read_best(
    path: &Path,
    named: &[(String, Var)],
    device: &Device,
) -> Result<(BestEpoch, Vec<candle_core::Tensor>)> {
    let (tensors, meta) = load_tensors(path, device)?;
    let best: BestEpoch = meta_record(&meta, BEST_KEY, path, "best-epoch record")?;
    let snap = named
        .iter()
        .map(|(n, v)| match tensors.get(n) {
            Some(t) if t.dims() == v.dims() => Ok(t.clone()),
            _ => Err(SegError::checkpoint(
                path,
                format!("parameter {n} missing or of another shape"),
            )),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((best, snap))
}

/// Keeps only the log lines of epochs before `epoch0` (all gone for a fresh run).
fn truncate_log(path: &Path, epoch0: usize) -> Result<()> {
    let kept: String = match std::fs::read_to_string(path) {
        Ok(s) if epoch0 > 0 => s
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v.get("epoch").and_then(|e| e.as_u64()))
                    .is_some_and(|e| (e as usize) < epoch0)
            })
            .map(|l| format!("{l}\n"))
            .collect(),
        _ => String::new(),
    };
    calseg_io::atomic::write_atomic(path, kept.as_bytes())?;
    Ok(())
}

fn append_log(path: &Path, entry: &EpochLog) -> Result<()> {
    use std::io::Write;
    let line = serde_json::to_string(entry)
        .map_err(|e| SegError::Config(format!("log entry to JSON: {e}")))?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| SegError::checkpoint(path, e))?;
    writeln!(f, "{line}").map_err(|e| SegError::checkpoint(path, e))
}

fn progress(quiet: bool, iters: usize, epoch: usize, epochs: usize) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(iters as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({per_sec}, eta {eta})")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_prefix(format!("epoch {}/{epochs}", epoch + 1));
    pb
}

/// Validation metrics of `model` on `set`: softmax of [`Trainable::predict`] (the model
/// in evaluation mode), cropped to each sample's unpadded size, pooled over the set.
pub fn validate(model: &dyn Trainable, set: &TrainSet, batch_size: usize) -> Result<ValMetrics> {
    model.set_training(false);
    let device = named_vars(model.varmap())?
        .first()
        .map(|(_, v)| v.device().clone())
        .unwrap_or(Device::Cpu);
    let mut ev = Evaluator::new(MetricConfig::default())?;
    let mut fg = TopLabelCalibration::new(MetricConfig::default().region(Region::Foreground))?;
    let idx: Vec<usize> = (0..set.len()).collect();
    for chunk in idx.chunks(batch_size.max(1)) {
        let batch = set.batch(chunk, &device)?;
        let logits = model.predict(&batch.image)?;
        let probs = candle_nn::ops::softmax(&logits.to_dtype(DType::F32)?, 1)?;
        let probs: ArrayD<f32> = crate::convert::tensor_to_array(&probs)?;
        for (j, &i) in chunk.iter().enumerate() {
            let s = &set.samples()[i];
            let mut p = probs.index_axis(Axis(0), j);
            let mut l = s.labels.view();
            for (ax, &n) in s.size.iter().enumerate() {
                p.slice_axis_inplace(Axis(ax + 1), Slice::from(0..n));
                l.slice_axis_inplace(Axis(ax), Slice::from(0..n));
            }
            ev.update(p.view(), l.view())?;
            fg.update(p, l)?;
        }
    }
    let r = ev.finish()?;
    // No foreground voxel at all: NaN rather than an error.
    let ece_fg = fg.finish().map(|c| c.ece).unwrap_or(f64::NAN);
    Ok(ValMetrics {
        dice: r.dice.clone(),
        dice_mean_fg: r.dice_mean_fg,
        ece: r.ece,
        ece_fg,
        cece: r.cece,
        nll: r.nll,
        brier: r.brier,
        accuracy: r.accuracy,
    })
}
