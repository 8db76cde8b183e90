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

use super::config::{ExperimentConfig, MethodId, Reported};
use super::split::{Part, Split, SplitPlan};
use crate::error::Error;
use crate::report::{self, MachineInfo, MethodResult};
use calseg_io::{Case, Dataset, read_labels};
use calseg_metrics::raters::RaterScorer;
use calseg_metrics::{MetricConfig, Region, ReliabilityBin, ScoreSpec, Scorer};
use calseg_seg::calibrate::{FitConfig, TemperatureFit};
use calseg_seg::infer::{InferOptions, InferSpec, predict_logits};
use calseg_seg::model::SegModel;
use calseg_seg::net::UNetConfig;
use calseg_seg::recipe::{FittedNet, NetRecipe};
use calseg_seg::score::{EvalCase, score_case};
use calseg_seg::train::{Layout, TargetSource, TrainerConfig};
use calseg_vls::mix;
use calseg_vls::pipeline::{Calseg, CalsegConfig, CalsegRun};
use candle_core::Device;
use ndarray::{ArrayD, Axis, Ix2};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What can stop an experiment: the facade's [`Error`], whose
/// [`is_bad_input`](Error::is_bad_input) decides the CLI's exit status.
pub type ExperimentError = Error;

/// Seed of the synthetic scanner shift of the test part (mixed with each case id).
pub const SHIFT_SEED: u64 = 2026;

/// Result alias of the runner.
pub type Result<T> = std::result::Result<T, Error>;

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
                    return Err(Error::Input(format!(
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
    device: Device,
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
    /// Evaluation masks of the validation and test parts (checked against their grids).
    val_masks: Vec<Option<ArrayD<bool>>>,
    test_masks: Vec<Option<ArrayD<bool>>>,
    /// The test part under the synthetic scanner shift (empty when off).
    shifted: Vec<Case>,
    classes: usize,
    in_channels: usize,
}

impl Parts {
    fn eval_cases<'a>(cases: &'a [Case], masks: &'a [Option<ArrayD<bool>>]) -> Vec<EvalCase<'a>> {
        cases
            .iter()
            .zip(masks)
            .map(|(c, m)| EvalCase {
                case: c,
                mask: m.as_ref().map(|m| m.view()),
            })
            .collect()
    }
    fn val_cases(&self) -> Vec<EvalCase<'_>> {
        Self::eval_cases(&self.val, &self.val_masks)
    }
    fn test_cases(&self) -> Vec<EvalCase<'_>> {
        Self::eval_cases(&self.test, &self.test_masks)
    }
    fn shifted_cases(&self) -> Vec<EvalCase<'_>> {
        Self::eval_cases(&self.shifted, &self.test_masks)
    }
    fn masked(&self) -> bool {
        self.val_masks
            .iter()
            .chain(&self.test_masks)
            .any(Option::is_some)
    }
}

/// Per-seed evaluation of one method, plus what the figures need.
struct Scored {
    result: MethodResult,
    /// The same method scored on the shifted test part.
    shifted: Option<MethodResult>,
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
        cfg.validate().map_err(Error::Input)?;
        let mut cfg = cfg;
        // `raters` needs raters on every training case; the default list gains it then.
        let train = ds.training_cases();
        let with_raters = !train.is_empty() && train.iter().all(|c| c.rater_count() > 0);
        if cfg.methods.contains(&MethodId::Raters) && !with_raters {
            return Err(Error::Input(
                "method raters needs a dataset whose training cases all have raters \
                 (labelsTr/CASE_rater1.nii.gz, …); this one has none or not on every case"
                    .into(),
            ));
        }
        if with_raters && cfg.methods == MethodId::DEFAULT {
            cfg.methods.push(MethodId::Raters);
        }
        Ok(Self {
            ds,
            cfg,
            out: out.into(),
            masks,
            progress,
            quiet: false,
            note: None,
            device: Device::Cpu,
        })
    }

    /// The configuration in force (after `new` added `raters` to the default method list
    /// on a dataset with raters).
    pub fn config(&self) -> &ExperimentConfig {
        &self.cfg
    }

    /// Hides the trainers' progress bars.
    pub fn quiet(mut self, quiet: bool) -> Self {
        self.quiet = quiet;
        self
    }

    /// Runs every network (smoother and segmentation nets) on `device` (default: CPU).
    pub fn on(mut self, device: &Device) -> Self {
        self.device = device.clone();
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
        std::fs::create_dir_all(&self.out)
            .map_err(|e| Error::os(format!("creating {}", self.out.display()), e))?;
        self.write_json(
            &self.out.join("split.json"),
            &serde_json::to_value(&parts.plan).unwrap_or(Value::Null),
        )?;
        self.progress.stage(&parts.plan.description);
        let mut runs: Vec<MethodResult> = Vec::new();
        let mut shifted_runs: Vec<MethodResult> = Vec::new();
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
            for (_, s) in scored {
                runs.push(s.result);
                shifted_runs.extend(s.shifted);
            }
        }
        let summaries = report::group_by_method(&runs)?;
        let shifted = report::group_by_method(&shifted_runs)?;
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
        let mut json =
            report::results_json(&summaries, config.clone(), split.clone(), quality.clone())?;
        if let (Some(shift), Value::Object(doc)) = (&self.cfg.eval.shift, &mut json)
            && !shifted.is_empty()
        {
            let methods = report::results_json(&shifted, Value::Null, Value::Null, Value::Null)?;
            doc.insert(
                "shifted".into(),
                json!({"shift": shift, "seed": SHIFT_SEED, "methods": methods["methods"]}),
            );
        }
        self.write_json(&self.out.join("results.json"), &json)?;
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
        let mut body = report::results_markdown(
            &summaries,
            &config,
            &split,
            &quality,
            &budget,
            &MachineInfo::detect(),
        );
        if let (Some(shift), false) = (&self.cfg.eval.shift, shifted.is_empty()) {
            let section = format!(
                "\n## Under a synthetic scanner shift\n\nThe same nets on a seeded, shifted copy of the test part \
                 (bias field strength {}, gamma {}, contrast {}, Rician noise σ {} of the tissue range; \
                 seed {SHIFT_SEED} mixed with the case id): calibration where the data move.\n\n{}{}",
                shift.bias,
                shift.gamma,
                shift.contrast,
                shift.noise,
                report::methods_table(&shifted),
                report::seed_spread(&shifted),
            );
            let at = body.find("\n## Dice per class").unwrap_or(body.len());
            body.insert_str(at, &section);
        }
        let conv = convergence_section(&summaries);
        let at = body.find("\n## Configuration").unwrap_or(body.len());
        body.insert_str(at, &conv);
        let rater_section = report::raters_section(&summaries);
        let at = body
            .find("\n## Dice per class")
            .or_else(|| body.find("\n## Configuration"))
            .unwrap_or(body.len());
        body.insert_str(at, &rater_section);
        markdown.push_str(&body);
        calseg_io::atomic::write_atomic(&self.out.join("results.md"), markdown.as_bytes())?;
        if let Some((rel, pan)) = first_seed {
            self.figures(&parts, &rel, &pan)?;
        }
        Ok(Outcome {
            markdown,
            json,
            out: self.out.clone(),
        })
    }

    fn write_json(&self, path: &Path, v: &Value) -> Result<()> {
        let mut text =
            serde_json::to_string_pretty(v).map_err(|e| Error::Failed(format!("json: {e}")))?;
        text.push('\n');
        calseg_io::atomic::write_atomic(path, text.as_bytes())?;
        Ok(())
    }

    /// Loads the parts of the split and their evaluation masks; every mask must lie on
    /// its part's grid (checked before any training: a wrong mask is bad input, exit
    /// status 2, not a failure an hour later).
    fn load_parts(&self) -> Result<Parts> {
        let Split {
            plan,
            train,
            val,
            test,
        } = Split::load(self.ds, &self.cfg.split)?;
        for c in train.iter().chain(&val).chain(&test) {
            if c.label.is_none() {
                return Err(Error::Input(format!("case {}: no label map", c.id)));
            }
        }
        let masks = |cases: &[Case], parts: &[Part]| -> Result<Vec<Option<ArrayD<bool>>>> {
            cases
                .iter()
                .zip(parts)
                .map(|(c, part)| {
                    let m = self.masks.for_part(part)?;
                    if let (Some(m), Some(l)) = (&m, &c.label)
                        && m.shape() != l.shape()
                    {
                        return Err(Error::Input(format!(
                            "evaluation mask of shape {:?} does not match case {} of shape {:?}",
                            m.shape(),
                            c.id,
                            l.shape()
                        )));
                    }
                    Ok(m)
                })
                .collect()
        };
        let (val_masks, test_masks) = (masks(&val, &plan.val)?, masks(&test, &plan.test)?);
        let classes = self.ds.info().num_classes();
        let in_channels = train.first().map(|c| c.image.shape()[0]).unwrap_or(1);
        if classes < 2 {
            return Err(Error::Input(format!(
                "dataset.json declares {classes} classes; at least 2 are needed"
            )));
        }
        // The shifted copy of every test case, seeded by the case id only (the same shifted
        // data for every seed of the experiment).
        let shifted = match &self.cfg.eval.shift {
            None => Vec::new(),
            Some(shift) => test
                .iter()
                .map(|c| {
                    let mut s = c.clone();
                    s.image =
                        shift.apply(&c.image, calseg_vls::smooth::case_seed(SHIFT_SEED, &c.id))?;
                    Ok(s)
                })
                .collect::<Result<_>>()?,
        };
        Ok(Parts {
            plan,
            train,
            val,
            test,
            val_masks,
            test_masks,
            shifted,
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

    fn budget(&self, base: &TrainerConfig) -> TrainerConfig {
        TrainerConfig {
            quiet: self.quiet || base.quiet,
            ..base.clone()
        }
    }

    /// The recipe of every segmentation net: the same net, budget and layout for all
    /// methods, the method's own loss.
    fn recipe(&self, p: &Parts, method: MethodId) -> NetRecipe {
        NetRecipe {
            net: self.unet(p),
            train: self.budget(&self.cfg.train),
            loss: self.cfg.loss.loss(method),
            layout: self.layout(),
            device: self.device.clone(),
        }
    }

    /// CALSeg's configuration for this data.
    fn calseg_config(&self, p: &Parts) -> CalsegConfig {
        let c = &self.cfg.calseg;
        CalsegConfig {
            smoother: self.cfg.vls.clone(),
            smoother_train: self.budget(&self.cfg.vls_train),
            samples: c.samples,
            from: c.from,
            alpha: c.alpha.clone(),
            tau: c.tau.clone(),
            net: self.recipe(p, MethodId::Calseg),
            dice_tolerance: c.dice_tolerance,
            calibrate: c.calibrate,
            bins: self.cfg.eval.bins,
            crossfit: c.crossfit,
            mix: c.mix,
            focal_gamma: c.focal_gamma,
        }
    }

    /// Trains (or loads) the baseline net of `method`.
    fn seg_net(&self, p: &Parts, method: MethodId, seed: u64, dir: &Path) -> Result<FittedNet> {
        let name = method.name();
        let mdir = dir.join("models").join(name);
        if let Some(done) = NetRecipe::load_finished(&mdir)? {
            self.progress
                .stage(&format!("seed {seed}: {name}: trained already, loading"));
            return Ok(done);
        }
        self.progress
            .stage(&format!("seed {seed}: training {name}"));
        let targets = match method {
            MethodId::Raters => TargetSource::Raters,
            _ => TargetSource::OneHot,
        };
        Ok(self
            .recipe(p, method)
            .fit(name, &p.train, targets, &p.val, seed, Some(&mdir))?)
    }

    /// One seed: every method trained, tuned on validation, scored on the test parts.
    fn run_seed(&self, p: &Parts, seed: u64, dir: &Path) -> Result<SeedOutcome> {
        let mut scored = Vec::new();
        let mut quality = Value::Null;
        let mut tuned = serde_json::Map::new();
        for reported in self.cfg.reported_methods() {
            let name = reported.name();
            let s = match reported {
                Reported::CeTs => {
                    let net = self.seg_net(p, MethodId::Ce, seed, dir)?;
                    let t = self.fit_temperature(&net.model, p, dir)?;
                    tuned.insert("ce+ts.temperature".into(), json!(t));
                    let mut r = self.score(name, &net.model, Some(t), p, net.seconds)?;
                    r.result.extra.insert("temperature".into(), t);
                    convergence(&mut r, "", &dir.join("models").join("ce"));
                    r
                }
                Reported::Method(MethodId::Calseg) => {
                    let run = self.calseg(p, seed, dir)?;
                    quality = self.soft_label_quality(p, &run)?;
                    tuned.insert("calseg".into(), self.calseg_info(p, &run)?);
                    let mut r = self.score(name, &run.net.model, None, p, run.train_seconds())?;
                    let net = self.calseg_config(p).net_name(
                        run.choice.alpha,
                        run.choice.tau,
                        run.sweep.len() > 1,
                    );
                    convergence(&mut r, "", &dir.join("models").join(net));
                    convergence(&mut r, "smoother_", &dir.join("vls"));
                    r
                }
                Reported::Method(m) => {
                    let net = self.seg_net(p, m, seed, dir)?;
                    let mut r = self.score(name, &net.model, None, p, net.seconds)?;
                    convergence(&mut r, "", &dir.join("models").join(m.name()));
                    r
                }
            };
            scored.push((name.to_string(), s));
        }
        let results: Vec<&MethodResult> = scored.iter().map(|(_, s)| &s.result).collect();
        let shifted: Vec<&MethodResult> = scored
            .iter()
            .filter_map(|(_, s)| s.shifted.as_ref())
            .collect();
        self.write_json(
            &dir.join("results.json"),
            &json!({"seed": seed, "methods": results, "shifted": shifted, "tuned": tuned}),
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
                .ok_or_else(|| Error::Input(format!("case {}: no labels", c.id)))?;
            fit.update(logits.view(), labels.view())?;
        }
        let r = fit.fit()?;
        let t = r.temperature.0;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::os(format!("creating {}", parent.display()), e))?;
        }
        self.write_json(&path, &json!({"temperature": t, "objective": "validation NLL", "nll_at_one": r.nll_at_one, "nll": r.nll, "ece_at_one": r.ece_at_one, "ece": r.ece}))?;
        Ok(t)
    }

    /// CALSeg through its library pipeline, stage by stage (for the progress lines),
    /// stored in the seed's folder (`vls/`, `softlabels/`, `models/calseg*`).
    fn calseg(&self, p: &Parts, seed: u64, dir: &Path) -> Result<CalsegRun> {
        let mut method = Calseg::new(self.calseg_config(p))?;
        if let Some(axis) = p.plan.held_out_slab_axis() {
            method = method.with_held_out_slabs(axis);
        }
        let val = p.val_cases();
        if self.cfg.calseg.crossfit >= 2 {
            self.progress.stage(&format!(
                "seed {seed}: {} cross-fitted smoothers, soft labels (m = {}), one net per (alpha, tau)",
                self.cfg.calseg.crossfit, self.cfg.calseg.samples
            ));
            return Ok(method.run(&p.train, &val, seed, Some(dir))?);
        }
        let vdir = dir.join("vls");
        self.progress
            .stage(&if vdir.join(calseg_vls::CONFIG_FILE).exists() {
                format!("seed {seed}: smoother trained already, loading")
            } else {
                format!("seed {seed}: training the variational label smoother")
            });
        let smoother = method.train_smoother(&p.train, &val, seed, Some(&vdir))?;
        self.progress.stage(&format!(
            "seed {seed}: soft labels (m = {}); one net per (alpha, tau)",
            self.cfg.calseg.samples
        ));
        Ok(method.run_from_smoother(smoother, &p.train, &val, seed, Some(dir))?)
    }

    /// The `tuned_on_validation.calseg` record: the choice, the sweep, the smoothing
    /// statistics restated for the chosen mix.
    fn calseg_info(&self, p: &Parts, run: &CalsegRun) -> Result<Value> {
        let (alpha, tau) = (run.choice.alpha, run.choice.tau);
        let mut stats = Vec::new();
        // The smoothing ran with α = 1, τ = 1 (y_s itself): restate flips and entropy for
        // the chosen mix; the sample variance does not depend on α and τ.
        for ((s, case), soft) in run.soft_labels.iter().zip(&p.train).zip(&run.targets) {
            let mut st = serde_json::to_value(&s.stats).unwrap_or(Value::Null);
            if let (Some(labels), Value::Object(o)) = (&case.label, &mut st) {
                let y_tau = mix::temperature(&s.y_s, tau)?;
                o.insert(
                    "flipped_fraction".into(),
                    json!(mix::label_disagreement(soft, &labels.view())?),
                );
                o.insert("mean_entropy".into(), json!(mix::mean_entropy(soft)?));
                o.insert("mean_entropy_ys".into(), json!(mix::mean_entropy(&y_tau)?));
            }
            stats.push(st);
        }
        let sweep: Vec<Value> = run
            .sweep
            .iter()
            .map(|pt| {
                let v = |f: fn(&calseg_vls::ValScores) -> f64| pt.val.as_ref().map_or(f64::NAN, f);
                json!({"alpha": pt.alpha, "tau": pt.tau, "val_ece": v(|s| s.ece), "val_nll": v(|s| s.nll), "val_dice_mean_fg": v(|s| s.dice_mean_fg)})
            })
            .collect();
        Ok(
            json!({"alpha": alpha, "tau": tau, "calibration": run.calibration, "samples": self.cfg.calseg.samples, "from": serde_json::to_value(self.cfg.calseg.from).unwrap_or(Value::Null), "chosen_by": run.choice.chosen_by, "sweep": sweep, "smoother_seconds": run.smoother.seconds, "smoothing": stats}),
        )
    }

    /// Mean total-variation distance to the true probabilities (`softlabelsTr`), inside
    /// the evaluation mask, of hard labels, LS, SVLS (in-plane and 3×3×3 for a 2D
    /// experiment), VLS `y_s` and the chosen mix `Y_s`.
    fn soft_label_quality(&self, p: &Parts, run: &CalsegRun) -> Result<Value> {
        let (alpha, tau) = (run.choice.alpha, run.choice.tau);
        let mut rows: BTreeMap<String, (f64, usize)> = BTreeMap::new();
        for (((c, s), part), soft) in p
            .train
            .iter()
            .zip(&run.soft_labels)
            .zip(&p.plan.train)
            .zip(&run.targets)
        {
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
                // A 2D experiment's SVLS method trains on in-plane targets: report those
                // (and the 3×3×3 ones beside them).
                (self.cfg.dims == 2).then_some(self.cfg.split.axis),
            )? {
                add(&r.method, r.tv);
            }
            add(
                "VLS y_s",
                calseg_vls::quality::tv_distance(&s.y_s, truth, mask.as_ref())?,
            );
            add(
                &format!("VLS y_s^τ (τ={tau:.3})"),
                calseg_vls::quality::tv_distance(
                    &mix::temperature(&s.y_s, tau)?,
                    truth,
                    mask.as_ref(),
                )?,
            );
            add(
                &format!("VLS Y_s (α={alpha}, τ={tau:.3})"),
                calseg_vls::quality::tv_distance(soft, truth, mask.as_ref())?,
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

    /// The scoring spec of the test (and validation) parts: the configured bins, inside
    /// the evaluation masks when there are any, HD95 when asked.
    fn score_spec(&self, p: &Parts) -> ScoreSpec {
        let c = MetricConfig::default().bins(self.cfg.eval.bins);
        let c = if p.masked() {
            c.region(Region::Mask)
        } else {
            c
        };
        ScoreSpec::new(c).hd95(self.cfg.eval.hd95)
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
        let mut scorer = Scorer::new(self.score_spec(p))?;
        let mut raters = RaterScorer::new(self.score_spec(p).metrics, p.classes)?;
        let mut rated = false;
        let mut panel = None;
        for (i, c) in p.test_cases().iter().enumerate() {
            let (_, probs) = score_case(model, c, &mut scorer, temperature)?;
            if let Some(maps) = &c.case.raters {
                let views: Vec<_> = maps.iter().map(|m| m.view()).collect();
                raters
                    .update(probs.view(), &views, c.mask.clone())
                    .map_err(|e| Error::Input(format!("case {}: raters: {e}", c.case.id)))?;
                rated = true;
            }
            if i == 0 {
                panel = Some(panel_slice(
                    &probs.map_axis(Axis(0), |v| v.iter().cloned().fold(0.0f32, f32::max)),
                    self.cfg.split.axis,
                    self.cfg.dims,
                ));
            }
        }
        let s = scorer.finish()?;
        let shifted = if p.shifted.is_empty() {
            None
        } else {
            let mut shifted = Scorer::new(self.score_spec(p))?;
            for c in &p.shifted_cases() {
                score_case(model, c, &mut shifted, temperature)?;
            }
            let t = shifted.finish()?;
            Some(MethodResult::from_reports(
                name,
                &t.region,
                &t.foreground,
                t.hd95_mean_fg,
                secs,
            )?)
        };
        let mut result =
            MethodResult::from_reports(name, &s.region, &s.foreground, s.hd95_mean_fg, secs)?;
        if rated {
            for (key, v) in raters.finish()?.headline() {
                result
                    .extra
                    .insert(format!("{}{key}", report::RATERS_PREFIX), v);
            }
        }
        Ok(Scored {
            result,
            shifted,
            reliability: s.region.reliability.clone(),
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

/// Records the validation-Dice plateau of the run in `dir` (its `train_log.jsonl`) as
/// `{prefix}val_dice_final`, `{prefix}val_dice_gain_last_quarter` and
/// `{prefix}val_dice_best` of the result (nothing when the run did not validate at least
/// twice).
fn convergence(r: &mut Scored, prefix: &str, dir: &Path) {
    let p = calseg_seg::train::convergence::read_log(dir)
        .ok()
        .and_then(|logs| calseg_seg::train::convergence::plateau(&logs));
    if let Some(p) = p {
        let extra = &mut r.result.extra;
        extra.insert(format!("{prefix}val_dice_final"), p.final_dice);
        extra.insert(
            format!("{prefix}val_dice_gain_last_quarter"),
            p.gain_last_quarter,
        );
        extra.insert(format!("{prefix}val_dice_best"), p.best_dice);
    }
}

/// The Markdown section on convergence: each method's final validation Dice (mean over
/// seeds) and its gain over the last quarter of training (near 0: a plateau).
fn convergence_section(methods: &[report::MethodSummary]) -> String {
    let rows: Vec<String> = methods
        .iter()
        .filter_map(|m| {
            let e = &m.mean.extra;
            let (f, g) = (
                e.get("val_dice_final")?,
                e.get("val_dice_gain_last_quarter")?,
            );
            let smoother = match (
                e.get("smoother_val_dice_final"),
                e.get("smoother_val_dice_gain_last_quarter"),
            ) {
                (Some(sf), Some(sg)) => format!(" (smoother: {sf:.4}, {sg:+.4})"),
                _ => String::new(),
            };
            Some(format!("| {} | {f:.4} | {g:+.4}{smoother} |", m.name))
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    format!(
        "\n## Convergence\n\nMean foreground Dice on the validation part after the last epoch, and its gain over \
         the last quarter of training (near 0: the budget reached a plateau).\n\n\
         | Method | final validation Dice | gain, last quarter |\n|---|---:|---:|\n{}\n",
        rows.join("\n")
    )
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
