//! The experiment runner: stages, each skipped when its output already exists.
//!
//! ```text
//! OUT/split.json                         the split (train / validation / test parts)
//! OUT/seed{i}/vls/                       smoother (a `calseg vls smooth --model` folder): vls.json, model.safetensors,
//!                                        train_info.json, checkpoints, train_log.jsonl
//! OUT/seed{i}/softlabels/a{α}_t{τ}/      Y_s per training part (CASE.safetensors, tensor soft_labels)
//! OUT/seed{i}/models/{method}/           one segmentation net per method (model.json written last)
//! OUT/seed{i}/results.json               the seed's numbers
//! OUT/results.json, results.md, reliability_*.png|svg, panel.png
//! ```

use super::config::ExperimentConfig;
use super::split::{Part, SplitError, SplitPlan, load_part};
use crate::report::{self, MachineInfo, MethodResult, ReportError};
use calseg_io::{Case, Dataset, IoError, NamedTensor, read_labels, write_safetensors};
use calseg_metrics::{
    Evaluator, MetricConfig, MetricsError, Region, ReliabilityBin, hd95_per_class,
};
use calseg_seg::SegError;
use calseg_seg::calibrate::{FitConfig, TemperatureFit};
use calseg_seg::infer::{InferOptions, InferSpec, predict_logits, softmax_classes};
use calseg_seg::loss::LossConfig;
use calseg_seg::model::{InputSpec, SegModel};
use calseg_seg::net::UNetConfig;
use calseg_seg::train::{Layout, SetOptions, TargetSource, TrainSet, Trainer, TrainerConfig};
use calseg_vls::smooth::{SmoothConfig, smooth_case};
use calseg_vls::{VlsError, VlsModel, mix};
use candle_core::Device;
use ndarray::{ArrayD, Axis, Ix2};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// What can stop an experiment.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    /// The data or the configuration is wrong (exit status 2 in the CLI).
    #[error("{0}")]
    Input(String),
    /// A stage failed.
    #[error("{0}")]
    Run(String),
}

impl From<SplitError> for ExperimentError {
    fn from(e: SplitError) -> Self {
        ExperimentError::Input(e.to_string())
    }
}
impl From<IoError> for ExperimentError {
    fn from(e: IoError) -> Self {
        ExperimentError::Input(e.to_string())
    }
}
impl From<SegError> for ExperimentError {
    fn from(e: SegError) -> Self {
        match e {
            SegError::Config(_) | SegError::Shape(_) => ExperimentError::Input(e.to_string()),
            _ => ExperimentError::Run(e.to_string()),
        }
    }
}
impl From<VlsError> for ExperimentError {
    fn from(e: VlsError) -> Self {
        match e {
            VlsError::Config(_) => ExperimentError::Input(e.to_string()),
            _ => ExperimentError::Run(e.to_string()),
        }
    }
}
impl From<MetricsError> for ExperimentError {
    /// Output and rendering failures are run errors; everything else (a mask or label
    /// map of the wrong shape, a label out of range, …) is wrong input (exit status 2).
    fn from(e: MetricsError) -> Self {
        match e {
            MetricsError::Output { .. } | MetricsError::Render(_) => {
                ExperimentError::Run(format!("metrics: {e}"))
            }
            _ => ExperimentError::Input(format!("metrics: {e}")),
        }
    }
}
impl From<ReportError> for ExperimentError {
    fn from(e: ReportError) -> Self {
        ExperimentError::Run(format!("report: {e}"))
    }
}
impl From<candle_core::Error> for ExperimentError {
    fn from(e: candle_core::Error) -> Self {
        ExperimentError::Run(format!("candle: {e}"))
    }
}

fn run_err(what: &str, e: impl std::fmt::Display) -> ExperimentError {
    ExperimentError::Run(format!("{what}: {e}"))
}

/// How far below the best validation Dice a CALSeg setting may fall and still be chosen.
const DICE_TOLERANCE: f64 = 0.02;

/// Result alias of the runner.
pub type Result<T> = std::result::Result<T, ExperimentError>;

/// Where the evaluation region masks come from.
#[derive(Clone, Debug, Default)]
pub enum Masks {
    /// No mask: `ece` etc. over all voxels.
    #[default]
    None,
    /// One mask for every case (same grid), e.g. a template's brain mask.
    Shared(ArrayD<bool>),
    /// A folder of `CASE.nii.gz` masks.
    Dir(PathBuf),
}

impl Masks {
    /// From the configuration's `eval.mask` (a file or a folder).
    pub fn from_path(path: Option<&Path>) -> Result<Self> {
        match path {
            None => Ok(Masks::None),
            Some(p) if p.is_dir() => Ok(Masks::Dir(p.to_path_buf())),
            Some(p) => Ok(Masks::Shared(read_labels(p)?.labels.mapv(|v| v != 0))),
        }
    }

    fn for_part(&self, part: &Part) -> Result<Option<ArrayD<bool>>> {
        let full = match self {
            Masks::None => return Ok(None),
            Masks::Shared(m) => m.clone(),
            Masks::Dir(d) => {
                let p = d.join(format!("{}.nii.gz", part.case));
                read_labels(&p)?.labels.mapv(|v| v != 0)
            }
        };
        Ok(Some(match &part.slab {
            None => full,
            Some(s) => {
                if s.axis >= full.ndim() || s.range.end > full.shape()[s.axis] {
                    return Err(ExperimentError::Input(format!(
                        "evaluation mask of shape {:?} does not cover slab {:?} of case {}",
                        full.shape(),
                        s,
                        part.case
                    )));
                }
                full.slice_axis(Axis(s.axis), ndarray::Slice::from(s.range.clone()))
                    .to_owned()
            }
        }))
    }
}

/// Progress of the stages (the CLI prints it; tests keep it quiet).
pub trait Progress {
    /// A stage starts or is skipped.
    fn stage(&self, msg: &str);
}

/// Prints stages to stderr.
#[derive(Debug, Default)]
pub struct StderrProgress;
impl Progress for StderrProgress {
    fn stage(&self, msg: &str) {
        eprintln!("[calseg] {msg}");
    }
}

/// Silent progress.
#[derive(Debug, Default)]
pub struct NoProgress;
impl Progress for NoProgress {
    fn stage(&self, _msg: &str) {}
}

/// What a finished experiment returns.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// `results.md` contents.
    pub markdown: String,
    /// `results.json` contents.
    pub json: Value,
    /// Folder of the report.
    pub out: PathBuf,
}

/// One experiment on one dataset.
pub struct Experiment<'a> {
    ds: &'a Dataset,
    cfg: ExperimentConfig,
    out: PathBuf,
    masks: Masks,
    progress: &'a dyn Progress,
    quiet: bool,
    note: Option<String>,
}

/// Reliability bins per method.
type Reliabilities = Vec<(String, Vec<ReliabilityBin>)>;
/// Confidence map of the panel slice per method.
type Panels = Vec<(String, ArrayD<f32>)>;
/// One seed: scored methods, soft-label quality, tuned values.
type SeedOutcome = (Vec<(String, Scored)>, Value, Value);

/// Data of one part, loaded once.
struct Parts {
    plan: SplitPlan,
    train: Vec<Case>,
    val: Vec<Case>,
    test: Vec<Case>,
    classes: usize,
    in_channels: usize,
}

/// Per-seed evaluation of one method, plus what the figures need.
struct Scored {
    result: MethodResult,
    reliability: Vec<ReliabilityBin>,
    /// Confidence (max probability) of the panel slice.
    panel: Option<ArrayD<f32>>,
}

impl<'a> Experiment<'a> {
    /// An experiment on `ds` writing into `out`.
    pub fn new(
        ds: &'a Dataset,
        cfg: ExperimentConfig,
        out: impl Into<PathBuf>,
        masks: Masks,
        progress: &'a dyn Progress,
    ) -> Result<Self> {
        cfg.validate().map_err(ExperimentError::Input)?;
        Ok(Self {
            ds,
            cfg,
            out: out.into(),
            masks,
            progress,
            quiet: false,
            note: None,
        })
    }

    /// Hides the trainers' progress bars.
    pub fn quiet(mut self, quiet: bool) -> Self {
        self.quiet = quiet;
        self
    }

    /// A sentence printed at the top of the report (e.g. "smoke test: not a comparison").
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }

    /// Runs every stage not yet done and writes the report.
    pub fn run(&self) -> Result<Outcome> {
        let parts = self.load_parts()?;
        self.check_masks(&parts)?;
        std::fs::create_dir_all(&self.out)
            .map_err(|e| run_err(&format!("creating {}", self.out.display()), e))?;
        self.write_json(
            &self.out.join("split.json"),
            &serde_json::to_value(&parts.plan).unwrap_or(Value::Null),
        )?;
        self.progress.stage(&parts.plan.description);
        let mut runs: Vec<MethodResult> = Vec::new();
        let mut first_seed: Option<(Reliabilities, Panels)> = None;
        let mut quality = Value::Null;
        let mut chosen = BTreeMap::new();
        for i in 0..self.cfg.seeds {
            let seed = self.cfg.seed + i as u64;
            let dir = self.out.join(format!("seed{i}"));
            let (scored, q, extra) = self.run_seed(&parts, seed, &dir)?;
            if i == 0 {
                quality = q;
                let rel = scored
                    .iter()
                    .map(|(n, s)| (n.clone(), s.reliability.clone()))
                    .collect();
                let pan = scored
                    .iter()
                    .filter_map(|(n, s)| s.panel.clone().map(|p| (n.clone(), p)))
                    .collect();
                first_seed = Some((rel, pan));
            }
            chosen.insert(format!("seed{i}"), extra);
            runs.extend(scored.into_iter().map(|(_, s)| s.result));
        }
        let summaries = report::group_by_method(&runs)?;
        let mut recorded = self.cfg.clone();
        recorded.net = self.unet(&parts);
        recorded.vls.dims = recorded.dims;
        recorded.vls.in_channels = parts.in_channels;
        recorded.vls.classes = parts.classes;
        let config = json!({
            "experiment": serde_json::to_value(&recorded).unwrap_or(Value::Null),
            "tuned_on_validation": chosen,
        });
        let split = serde_json::to_value(&parts.plan).unwrap_or(Value::Null);
        report::write_results_json(
            &self.out.join("results.json"),
            &summaries,
            config.clone(),
            split.clone(),
            quality.clone(),
        )?;
        let budget = json!({
            "segmentation_nets": serde_json::to_value(&self.cfg.train).unwrap_or(Value::Null),
            "smoother": serde_json::to_value(&self.cfg.vls_train).unwrap_or(Value::Null),
            "seeds": self.cfg.seeds,
            "first_seed": self.cfg.seed,
        });
        let mut markdown = String::new();
        if let Some(n) = &self.note {
            markdown.push_str(&format!("> **{n}**\n\n"));
        }
        markdown.push_str(&report::results_markdown(
            &summaries,
            &config,
            &split,
            &quality,
            &budget,
            &MachineInfo::detect(),
        ));
        calseg_io::atomic::write_atomic(&self.out.join("results.md"), markdown.as_bytes())?;
        if let Some((rel, pan)) = first_seed {
            self.figures(&parts, &rel, &pan)?;
        }
        let json = report::results_json(&summaries, config, split, quality)?;
        Ok(Outcome {
            markdown,
            json,
            out: self.out.clone(),
        })
    }

    fn write_json(&self, path: &Path, v: &Value) -> Result<()> {
        let mut text = serde_json::to_string_pretty(v).map_err(|e| run_err("json", e))?;
        text.push('\n');
        calseg_io::atomic::write_atomic(path, text.as_bytes())?;
        Ok(())
    }

    fn load_parts(&self) -> Result<Parts> {
        let plan = SplitPlan::plan(self.ds, &self.cfg.split)?;
        let load = |ps: &[Part]| -> Result<Vec<Case>> {
            ps.iter().map(|p| Ok(load_part(self.ds, p)?)).collect()
        };
        let (train, val, test) = (load(&plan.train)?, load(&plan.val)?, load(&plan.test)?);
        for c in train.iter().chain(&val).chain(&test) {
            if c.label.is_none() {
                return Err(ExperimentError::Input(format!(
                    "case {}: no label map",
                    c.id
                )));
            }
        }
        let classes = self.ds.info().num_classes();
        let in_channels = train.first().map(|c| c.image.shape()[0]).unwrap_or(1);
        if classes < 2 {
            return Err(ExperimentError::Input(format!(
                "dataset.json declares {classes} classes; at least 2 are needed"
            )));
        }
        Ok(Parts {
            plan,
            train,
            val,
            test,
            classes,
            in_channels,
        })
    }

    fn unet(&self, p: &Parts) -> UNetConfig {
        UNetConfig {
            dims: self.cfg.dims,
            in_channels: p.in_channels,
            classes: p.classes,
            ..self.cfg.net.clone()
        }
    }

    fn layout(&self) -> Layout {
        match (self.cfg.dims, &self.cfg.patch) {
            (2, _) => Layout::Slices {
                axis: Some(self.cfg.split.axis),
                range: None,
                skip_empty: false,
            },
            (_, Some(p)) => Layout::Patches {
                patch: p.clone(),
                foreground_fraction: 1.0 / 3.0,
            },
            _ => Layout::Whole,
        }
    }

    fn set(
        &self,
        cases: &[Case],
        p: &Parts,
        targets: TargetSource,
        multiple: usize,
    ) -> Result<TrainSet> {
        Ok(TrainSet::build(
            cases,
            &SetOptions {
                classes: p.classes,
                targets,
                layout: self.layout(),
                multiple,
            },
        )?)
    }

    fn trainer(&self, base: &TrainerConfig, seed: u64) -> Trainer {
        Trainer::new(TrainerConfig {
            seed,
            resume: true,
            quiet: self.quiet || base.quiet,
            ..base.clone()
        })
    }

    /// Trains (or loads) the segmentation net `name` with `method`'s loss on `targets`.
    fn seg_net(
        &self,
        p: &Parts,
        name: &str,
        method_name: &str,
        targets: TargetSource,
        seed: u64,
        dir: &Path,
    ) -> Result<(SegModel, f64)> {
        let mdir = dir.join("models").join(name);
        let timing = mdir.join("timing.json");
        if mdir.join(calseg_seg::model::MODEL_JSON).exists() && timing.exists() {
            self.progress
                .stage(&format!("seed {seed}: {name}: trained already, loading"));
            let secs = std::fs::read_to_string(&timing)
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .and_then(|v| v["train_seconds"].as_f64())
                .unwrap_or(f64::NAN);
            return Ok((SegModel::load(&mdir)?, secs));
        }
        self.progress
            .stage(&format!("seed {seed}: training {name}"));
        let method = self
            .cfg
            .loss
            .method(method_name)
            .ok_or_else(|| ExperimentError::Input(format!("unknown method {method_name}")))?;
        let loss = LossConfig {
            method,
            dice_weight: self.cfg.loss.dice_weight,
        }
        .build()?;
        let ucfg = self.unet(p);
        let multiple = ucfg.size_multiple();
        let train = self.set(&p.train, p, targets, multiple)?;
        let val = self.set(&p.val, p, TargetSource::OneHot, multiple)?;
        let model = SegModel::new(&ucfg, seed, &Device::Cpu)?
            .with_loss(Arc::from(loss))
            .with_method(json!({"name": name, "loss": serde_json::to_value(method).unwrap_or(Value::Null), "dice_weight": self.cfg.loss.dice_weight}))
            .with_input(InputSpec { axis: (self.cfg.dims == 2).then_some(self.cfg.split.axis), patch: self.cfg.patch.clone(), train_size: train.batch_shape() });
        let t0 = Instant::now();
        self.trainer(&self.cfg.train, seed)
            .fit(&model, &train, Some(&val), Some(&mdir))?;
        let secs = t0.elapsed().as_secs_f64();
        model.save(&mdir)?;
        self.write_json(&timing, &json!({"train_seconds": secs}))?;
        Ok((model, secs))
    }

    /// One seed: every method trained, tuned on validation, scored on the test parts.
    fn run_seed(&self, p: &Parts, seed: u64, dir: &Path) -> Result<SeedOutcome> {
        let mut scored = Vec::new();
        let mut quality = Value::Null;
        let mut tuned = serde_json::Map::new();
        for name in self.cfg.reported_methods() {
            let s = match name.as_str() {
                "ce+ts" => {
                    let (model, secs) =
                        self.seg_net(p, "ce", "ce", TargetSource::OneHot, seed, dir)?;
                    let t = self.fit_temperature(&model, p, dir)?;
                    tuned.insert("ce+ts.temperature".into(), json!(t));
                    let mut r = self.score(&name, &model, Some(t), p, secs)?;
                    r.result.extra.insert("temperature".into(), t);
                    r
                }
                "calseg" => {
                    let (model, secs, q, info) = self.calseg(p, seed, dir)?;
                    quality = q;
                    tuned.insert("calseg".into(), info);
                    self.score(&name, &model, None, p, secs)?
                }
                m => {
                    let (model, secs) = self.seg_net(p, m, m, TargetSource::OneHot, seed, dir)?;
                    self.score(&name, &model, None, p, secs)?
                }
            };
            scored.push((name, s));
        }
        let results: Vec<&MethodResult> = scored.iter().map(|(_, s)| &s.result).collect();
        self.write_json(
            &dir.join("results.json"),
            &json!({"seed": seed, "methods": results, "tuned": tuned}),
        )?;
        Ok((scored, quality, Value::Object(tuned)))
    }

    /// Fits T of `ce+ts` on the validation parts (NLL, grid 0.1..10 then refined).
    fn fit_temperature(&self, model: &SegModel, p: &Parts, dir: &Path) -> Result<f64> {
        let path = dir.join("models").join("ce+ts").join("temperature.json");
        if let Some(t) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
            .and_then(|v| v["temperature"].as_f64())
        {
            return Ok(t);
        }
        self.progress
            .stage("fitting the temperature of ce+ts on the validation part");
        let mut fit = TemperatureFit::new(FitConfig::default())?;
        let spec = InferSpec::of(model);
        for c in &p.val {
            let logits = predict_logits(model, &spec, c.image.clone(), &InferOptions::default())?;
            let labels = c
                .label
                .as_ref()
                .ok_or_else(|| ExperimentError::Input(format!("case {}: no labels", c.id)))?;
            fit.update(logits.view(), labels.view())?;
        }
        let r = fit.fit()?;
        let t = r.temperature.0;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| run_err("creating the ce+ts folder", e))?;
        }
        self.write_json(&path, &json!({"temperature": t, "objective": "validation NLL", "nll_at_one": r.nll_at_one, "nll": r.nll, "ece_at_one": r.ece_at_one, "ece": r.ece}))?;
        Ok(t)
    }

    /// The VLS stage, the soft labels, the (α, τ) choice on validation, the CALSeg net.
    fn calseg(&self, p: &Parts, seed: u64, dir: &Path) -> Result<(SegModel, f64, Value, Value)> {
        let vdir = dir.join("vls");
        let vcfg = calseg_vls::VlsConfig {
            dims: self.cfg.dims,
            in_channels: p.in_channels,
            classes: p.classes,
            ..self.cfg.vls.clone()
        };
        // The folder is a `calseg vls smooth --model` folder (VlsModel::save_dir, whose
        // vls.json is written last and marks the stage done), plus train_info.json.
        let info_path = vdir.join("train_info.json");
        let t0 = Instant::now();
        let (vmodel, vls_secs) = if vdir.join(calseg_vls::CONFIG_FILE).exists() {
            self.progress
                .stage(&format!("seed {seed}: smoother trained already, loading"));
            let secs = std::fs::read_to_string(&info_path)
                .ok()
                .and_then(|s| serde_json::from_str::<Value>(&s).ok())
                .and_then(|v| v["train_seconds"].as_f64())
                .unwrap_or(f64::NAN);
            (VlsModel::load_dir(&vdir, &Device::Cpu)?, secs)
        } else {
            self.progress.stage(&format!(
                "seed {seed}: training the variational label smoother"
            ));
            let vm = VlsModel::new(&vcfg, seed, &Device::Cpu)?;
            let train = self.set(&p.train, p, TargetSource::OneHot, vcfg.multiple())?;
            let val = self.set(&p.val, p, TargetSource::OneHot, vcfg.multiple())?;
            let rep = self.trainer(&self.cfg.vls_train, seed).fit(
                &vm,
                &train,
                Some(&val),
                Some(&vdir),
            )?;
            let secs = t0.elapsed().as_secs_f64();
            let last = rep
                .epochs
                .last()
                .map(|e| serde_json::to_value(&e.logs).unwrap_or(Value::Null))
                .unwrap_or(Value::Null);
            self.write_json(
                &info_path,
                &json!({"train_seconds": secs, "last_epoch_logs": last}),
            )?;
            vm.save_dir(&vdir)?;
            (vm, secs)
        };
        // y_s once per training part (τ = 1, α = 1 leaves y_s itself).
        self.progress.stage(&format!(
            "seed {seed}: soft labels (m = {})",
            self.cfg.calseg.samples
        ));
        let sc = SmoothConfig {
            samples: self.cfg.calseg.samples,
            tau: 1.0,
            alpha: 1.0,
            from: self.cfg.calseg.from,
            seed,
            ..SmoothConfig::default()
        };
        let mut ys = Vec::new();
        let mut stats = Vec::new();
        for c in &p.train {
            let s = smooth_case(&vmodel, c, &sc)?;
            stats.push(serde_json::to_value(&s.stats).unwrap_or(Value::Null));
            ys.push(s.y_s);
        }
        // One net per (α, τ); the lowest validation ECE wins.
        let combos: Vec<(f64, f64)> = self
            .cfg
            .calseg
            .alpha
            .iter()
            .flat_map(|&a| self.cfg.calseg.tau.iter().map(move |&t| (a, t)))
            .collect();
        // (α, τ, model, seconds, validation ECE, NLL, mean foreground Dice)
        let mut tried: Vec<(f64, f64, SegModel, f64, f64, f64, f64)> = Vec::new();
        let mut sweep = Vec::new();
        for &(alpha, tau) in &combos {
            let tag = format!("a{alpha}_t{tau}");
            let sdir = dir.join("softlabels").join(&tag);
            std::fs::create_dir_all(&sdir)
                .map_err(|e| run_err(&format!("creating {}", sdir.display()), e))?;
            for (c, y) in p.train.iter().zip(&ys) {
                let path = sdir.join(format!("{}.safetensors", c.id));
                if !path.exists() {
                    let labels = c.label.as_ref().ok_or_else(|| {
                        ExperimentError::Input(format!("case {}: no labels", c.id))
                    })?;
                    let soft = mix::mix(&labels.view(), &mix::temperature(y, tau)?, alpha)?;
                    write_safetensors(&path, &[NamedTensor::new("soft_labels", &soft)])?;
                }
            }
            let name = if combos.len() == 1 {
                "calseg".to_string()
            } else {
                format!("calseg_{tag}")
            };
            let (model, secs) =
                self.seg_net(p, &name, "soft", TargetSource::Dir(sdir), seed, dir)?;
            let (ece, nll, dice) = if combos.len() > 1 {
                self.val_scores(&model, p)?
            } else {
                (f64::NAN, f64::NAN, f64::NAN)
            };
            sweep.push(json!({"alpha": alpha, "tau": tau, "val_ece": ece, "val_nll": nll, "val_dice_mean_fg": dice}));
            tried.push((alpha, tau, model, secs, ece, nll, dice));
        }
        // The lowest validation ECE (ties: NLL) among the settings whose validation Dice
        // is within DICE_TOLERANCE of the best one: calibration must not be bought with a
        // lost class (α = 1 trains on y_s alone, which can drop a thin class such as CSF).
        let best_dice = tried
            .iter()
            .map(|t| t.6)
            .filter(|d| d.is_finite())
            .fold(f64::NEG_INFINITY, f64::max);
        let mut best: Option<(f64, f64, SegModel, f64, f64, f64, f64)> = None;
        for t in tried {
            if best_dice.is_finite() && t.6.is_finite() && t.6 < best_dice - DICE_TOLERANCE {
                continue;
            }
            let better = match &best {
                None => true,
                Some(b) => t.4 < b.4 || (t.4 == b.4 && t.5 < b.5),
            };
            if better {
                best = Some(t);
            }
        }
        let Some((alpha, tau, model, secs, _, _, _)) = best else {
            return Err(ExperimentError::Input(
                "calseg: no (alpha, tau) to try".into(),
            ));
        };
        let quality = self.soft_label_quality(p, &ys, alpha, tau)?;
        // The smoothing ran with α = 1, τ = 1 (y_s itself): restate flips and entropy for
        // the chosen mix; the sample variance does not depend on α and τ.
        for ((st, c), y) in stats.iter_mut().zip(&p.train).zip(&ys) {
            if let (Some(labels), Value::Object(o)) = (&c.label, st) {
                let soft = mix::mix(&labels.view(), &mix::temperature(y, tau)?, alpha)?;
                o.insert(
                    "flipped_fraction".into(),
                    json!(mix::label_disagreement(&soft, &labels.view())?),
                );
                o.insert("mean_entropy".into(), json!(mix::mean_entropy(&soft)?));
                o.insert(
                    "mean_entropy_ys".into(),
                    json!(mix::mean_entropy(&mix::temperature(y, tau)?)?),
                );
            }
        }
        let info = json!({"alpha": alpha, "tau": tau, "samples": self.cfg.calseg.samples, "from": serde_json::to_value(self.cfg.calseg.from).unwrap_or(Value::Null), "chosen_by": if combos.len() > 1 { "lowest validation ECE among settings within 0.02 of the best validation Dice" } else { "configuration (single value)" }, "sweep": sweep, "smoother_seconds": vls_secs, "smoothing": stats});
        Ok((model, secs + vls_secs, quality, info))
    }

    /// Mean total-variation distance to the true probabilities (`softlabelsTr`), inside
    /// the evaluation mask, of hard labels, LS, SVLS, VLS `y_s` and the mix `Y_s`.
    fn soft_label_quality(
        &self,
        p: &Parts,
        ys: &[ArrayD<f32>],
        alpha: f64,
        tau: f64,
    ) -> Result<Value> {
        let mut rows: BTreeMap<String, (f64, usize)> = BTreeMap::new();
        for ((c, y), part) in p.train.iter().zip(ys).zip(&p.plan.train) {
            let (Some(truth), Some(labels)) = (&c.soft_label, &c.label) else {
                continue;
            };
            let mask = self.masks.for_part(part)?;
            let mut add = |name: &str, v: f64| {
                let e = rows.entry(name.to_string()).or_insert((0.0, 0));
                e.0 += v;
                e.1 += 1;
            };
            for r in calseg_vls::quality::baselines(
                &labels.view(),
                truth,
                mask.as_ref(),
                self.cfg.loss.ls_eps,
                self.cfg.loss.svls_sigma,
            )? {
                add(&r.method, r.tv);
            }
            add(
                "VLS y_s",
                calseg_vls::quality::tv_distance(y, truth, mask.as_ref())?,
            );
            let soft = mix::mix(&labels.view(), &mix::temperature(y, tau)?, alpha)?;
            add(
                &format!("VLS Y_s (α={alpha}, τ={tau})"),
                calseg_vls::quality::tv_distance(&soft, truth, mask.as_ref())?,
            );
        }
        if rows.is_empty() {
            return Ok(Value::Null);
        }
        Ok(json!({
            "metric": "mean total variation distance ½Σ_k|Y_k − P_true,k| to softlabelsTr, inside the evaluation mask, training parts",
            "tv": rows.into_iter().map(|(k, (s, n))| (k, json!(s / n as f64))).collect::<serde_json::Map<_, _>>(),
        }))
    }

    /// Every evaluation mask must lie on its part's grid; checked before any training
    /// (a wrong mask is bad input, exit status 2, not a failure an hour later).
    fn check_masks(&self, p: &Parts) -> Result<()> {
        for (cases, plan) in [(&p.val, &p.plan.val), (&p.test, &p.plan.test)] {
            for (c, part) in cases.iter().zip(plan) {
                if let (Some(m), Some(l)) = (self.masks.for_part(part)?, c.label.as_ref()) {
                    if m.shape() != l.shape() {
                        return Err(ExperimentError::Input(format!(
                            "evaluation mask of shape {:?} does not match case {} of shape {:?}",
                            m.shape(),
                            c.id,
                            l.shape()
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Validation ECE, NLL and mean foreground Dice of `model`, scored like the test
    /// part (whole cases or slabs, inside the evaluation mask when there is one), so the
    /// CALSeg sweep selects on the same region the report scores.
    fn val_scores(&self, model: &SegModel, p: &Parts) -> Result<(f64, f64, f64)> {
        let spec = InferSpec::of(model);
        let opts = InferOptions::default();
        let mut ev: Option<Evaluator> = None;
        for (c, part) in p.val.iter().zip(&p.plan.val) {
            let labels = c
                .label
                .as_ref()
                .ok_or_else(|| ExperimentError::Input(format!("case {}: no labels", c.id)))?;
            let logits = predict_logits(model, &spec, c.image.clone(), &opts)?;
            let probs = softmax_classes(logits, model.temperature())?;
            let mask = self.masks.for_part(part)?;
            let e = ev.get_or_insert(Evaluator::new(self.metric_config(mask.is_some()))?);
            let input = calseg_metrics::Input::new(probs.view(), labels.view())?;
            match &mask {
                Some(m) => e.update_input(&input.with_mask(m.view())?)?,
                None => e.update_input(&input)?,
            }
        }
        let r = ev
            .ok_or_else(|| ExperimentError::Input("no validation data".into()))?
            .finish()?;
        Ok((r.ece, r.nll, r.dice_mean_fg))
    }

    fn metric_config(&self, masked: bool) -> MetricConfig {
        let c = MetricConfig::default().bins(self.cfg.eval.bins);
        if masked { c.region(Region::Mask) } else { c }
    }

    /// Predicts every test part and scores it.
    fn score(
        &self,
        name: &str,
        model: &SegModel,
        temperature: Option<f64>,
        p: &Parts,
        secs: f64,
    ) -> Result<Scored> {
        self.progress
            .stage(&format!("scoring {name} on the test part"));
        let mut all: Option<Evaluator> = None;
        let mut fg = Evaluator::new(report::foreground_config(&self.metric_config(false)))?;
        let mut hd = Vec::new();
        let mut panel = None;
        let opts = InferOptions {
            temperature,
            ..InferOptions::default()
        };
        let spec = InferSpec::of(model);
        for (i, (c, part)) in p.test.iter().zip(&p.plan.test).enumerate() {
            let labels = c
                .label
                .as_ref()
                .ok_or_else(|| ExperimentError::Input(format!("case {}: no labels", c.id)))?;
            let logits = predict_logits(model, &spec, c.image.clone(), &opts)?;
            let probs = softmax_classes(logits, temperature.unwrap_or(model.temperature()))?;
            let mask = self.masks.for_part(part)?;
            let ev = all.get_or_insert(Evaluator::new(self.metric_config(mask.is_some()))?);
            let input = calseg_metrics::Input::new(probs.view(), labels.view())?;
            match &mask {
                Some(m) => ev.update_input(&input.with_mask(m.view())?)?,
                None => ev.update_input(&input)?,
            }
            fg.update(probs.view(), labels.view())?;
            if self.cfg.eval.hd95 {
                let pred = calseg_vls::mix::argmax(&probs)?;
                let h = hd95_per_class(pred.view(), labels.view(), p.classes, &c.geometry.spacing)?;
                let fgv: Vec<f64> = h
                    .iter()
                    .skip(1)
                    .copied()
                    .filter(|v| v.is_finite())
                    .collect();
                if !fgv.is_empty() {
                    hd.push(fgv.iter().sum::<f64>() / fgv.len() as f64);
                }
            }
            if i == 0 {
                panel = Some(panel_slice(
                    &probs.map_axis(Axis(0), |v| v.iter().cloned().fold(0.0f32, f32::max)),
                    self.cfg.split.axis,
                    self.cfg.dims,
                ));
            }
        }
        let all = all.ok_or_else(|| ExperimentError::Input("no test data".into()))?;
        let ra = all.finish()?;
        let rf = fg.finish()?;
        let hd95 = (!hd.is_empty()).then(|| hd.iter().sum::<f64>() / hd.len() as f64);
        Ok(Scored {
            result: MethodResult::from_reports(name, &ra, &rf, hd95, secs)?,
            reliability: ra.reliability.clone(),
            panel,
        })
    }

    /// Reliability diagrams (one per method and the overlay) and the slice panel.
    fn figures(
        &self,
        p: &Parts,
        rel: &[(String, Vec<ReliabilityBin>)],
        pan: &[(String, ArrayD<f32>)],
    ) -> Result<()> {
        for (name, bins) in rel {
            let stem = self
                .out
                .join(format!("reliability_{}", name.replace('+', "_")));
            report::write_reliability_overlay(
                &[(name.as_str(), bins.as_slice())],
                &format!("{name}: reliability (test)"),
                &[&stem.with_extension("png"), &stem.with_extension("svg")],
            )?;
        }
        let series: Vec<(&str, &[ReliabilityBin])> = rel
            .iter()
            .map(|(n, b)| (n.as_str(), b.as_slice()))
            .collect();
        report::write_reliability_overlay(
            &series,
            "reliability of every method (test)",
            &[
                &self.out.join("reliability_all.png"),
                &self.out.join("reliability_all.svg"),
            ],
        )?;
        if let Some(c) = p.test.first() {
            let img = panel_slice(
                &c.image.index_axis(Axis(0), 0).to_owned(),
                self.cfg.split.axis,
                self.cfg.dims,
            );
            let lab = panel_slice(
                &c.label
                    .as_ref()
                    .map(|l| l.mapv(|v| v as f32))
                    .unwrap_or_default(),
                self.cfg.split.axis,
                self.cfg.dims,
            )
            .mapv(|v| v as u32);
            let soft = c.soft_label.as_ref().map(|s| {
                panel_slice(
                    &s.map_axis(Axis(0), |v| v.iter().cloned().fold(0.0f32, f32::max)),
                    self.cfg.split.axis,
                    self.cfg.dims,
                )
            });
            let (Ok(img2), Ok(lab2)) = (
                img.into_dimensionality::<Ix2>(),
                lab.into_dimensionality::<Ix2>(),
            ) else {
                return Ok(());
            };
            let soft2 = soft.and_then(|s| s.into_dimensionality::<Ix2>().ok());
            let confs: Vec<(String, ndarray::Array2<f32>)> = pan
                .iter()
                .filter_map(|(n, a)| {
                    a.clone()
                        .into_dimensionality::<Ix2>()
                        .ok()
                        .map(|a| (format!("{n} confidence"), a))
                })
                .collect();
            let views: Vec<(String, ndarray::ArrayView2<f32>)> =
                confs.iter().map(|(n, a)| (n.clone(), a.view())).collect();
            report::write_panel_png(
                &self.out.join("panel.png"),
                img2.view(),
                lab2.view(),
                soft2.as_ref().map(|s| s.view()),
                &views,
            )?;
        }
        Ok(())
    }
}

/// The middle slice along `axis` of a 3D array (2D arrays are returned as they are).
///
/// Displayed in radiological convention for RAS volumes sliced axially: the slice
/// `(x, y)` is transposed to rows = y, flipped so that anterior is at the top.
fn panel_slice(a: &ArrayD<f32>, axis: usize, _dims: usize) -> ArrayD<f32> {
    if a.ndim() == 3 && axis < 3 {
        let mid = a.shape()[axis] / 2;
        let s = a.index_axis(Axis(axis), mid);
        let mut t = s.t().to_owned();
        t.invert_axis(Axis(0));
        t.as_standard_layout().to_owned()
    } else {
        a.clone()
    }
}
