//! Result files of an experiment: `results.json`, a Markdown comparison table, image
//! panels of one slice, and a reliability overlay of all methods.
//!
//! * [`MethodResult`] holds the headline numbers of one method and one seed, built from
//!   two [`Report`]s with [`MethodResult::from_reports`]: one over every voxel, one over
//!   the voxels whose label is not background ([`foreground_config`]; `ece_fg`, the
//!   MbLS/NACL protocol).
//! * [`MethodSummary`] is a method over one or several seeds: the NaN-skipping mean of
//!   every number and, with two or more seeds, the sample standard deviation
//!   ([`summarize`], [`group_by_method`]).
//! * [`write_results_json`] writes
//!   `{"methods": {NAME: {"ece", "ece_fg", "mce", "cece", "ace", "brier", "nll", "dice",
//!   "dice_mean_fg", "hd95_mean_fg", "train_seconds", "n_seeds", "extra", …_sd}},
//!   "config", "split", "soft_label_quality"}` — the key names are a contract with the
//!   scripts that read it. `NaN` and absent values are `null`.
//! * [`results_markdown`] renders methods × metrics with the best value of each column in
//!   bold, `± sd` with several seeds, then the configuration, split, soft-label quality,
//!   budget and machine ([`MachineInfo`]).
//! * [`write_panel_png`] draws one slice as titled tiles side by side: the image in grey,
//!   the label map in a categorical palette, soft labels and confidence maps in a
//!   viridis-like perceptual map with a 0–1 colour bar.
//! * [`write_reliability_overlay`] draws the reliability curves of all methods in one
//!   figure (PNG and/or SVG) with `calseg_metrics::plot::reliability_overlay`.
//!
//! Every file is encoded in memory and written with a temporary file and a rename
//! (`calseg_io::atomic::write_atomic`), so a failure never leaves half a file.
//!
//! Dependencies used here only: `plotters` (text of the panel titles, with its pure-Rust
//! bitmap backend and `ab_glyph` renderer), `dejavu` (DejaVu Sans embedded, so no system
//! font library is needed) and `png` (RGB encoding) — the same versions and features as
//! calseg-metrics' `plot` feature, so nothing new is compiled.

use calseg_metrics::plot::{PlotOptions, reliability_overlay};
use calseg_metrics::{MetricConfig, MetricsError, Region, ReliabilityBin, Report};
use ndarray::ArrayView2;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::OnceLock;

/// What writing a result file can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The data given is inconsistent (e.g. seeds of different methods, shapes that differ).
    #[error("{0}")]
    Invalid(String),
    /// Writing a file failed (the error names the file).
    #[error(transparent)]
    Io(#[from] calseg_io::IoError),
    /// Rendering a reliability figure failed.
    #[error(transparent)]
    Plot(#[from] MetricsError),
    /// Rendering or encoding a panel failed.
    #[error("rendering {what}: {reason}")]
    Render {
        /// The figure.
        what: String,
        /// What went wrong.
        reason: String,
    },
}

/// Headline numbers of one method on the evaluation split (one seed). Field names are
/// the keys of `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodResult {
    /// Method name (the key under `"methods"`).
    pub name: String,
    /// Top-label ECE over every voxel.
    pub ece: f64,
    /// Top-label ECE over voxels whose label is not background (MbLS/NACL protocol).
    pub ece_fg: f64,
    /// Top-label MCE over every voxel.
    pub mce: f64,
    /// Class-wise ECE over every voxel.
    pub cece: f64,
    /// Adaptive (equal-mass) ECE over every voxel.
    pub ace: f64,
    /// Mean multi-class Brier score.
    pub brier: f64,
    /// Mean negative log-likelihood (nats).
    pub nll: f64,
    /// Dice per class (`NaN` for a class absent from the ground truth).
    pub dice: Vec<f64>,
    /// NaN-skipping mean Dice over the non-background classes.
    pub dice_mean_fg: f64,
    /// Mean HD95 over the foreground classes in mm, if computed.
    pub hd95_mean_fg: Option<f64>,
    /// Training wall time in seconds.
    pub train_seconds: f64,
    /// Further numbers (e.g. a soft-label KL), aggregated like the others.
    #[serde(default)]
    pub extra: BTreeMap<String, f64>,
}

/// `base` restricted to the voxels whose label is not background: the configuration of
/// the second evaluator whose report gives [`MethodResult::ece_fg`]. The background
/// class is `base`'s, or class 0 if `base` has none.
pub fn foreground_config(base: &MetricConfig) -> MetricConfig {
    let background = base.background.unwrap_or(0);
    base.clone()
        .region(Region::Foreground)
        .background(Some(background))
}

impl MethodResult {
    /// The numbers of a method from the report over every voxel (`all`) and the report
    /// of an evaluator configured with [`foreground_config`] on the same data (`fg`),
    /// whose top-label ECE becomes `ece_fg`. `extra` starts empty.
    ///
    /// # Errors
    /// [`ReportError::Invalid`] when the two reports have different numbers of classes
    /// (they cannot come from the same data).
    pub fn from_reports(
        name: impl Into<String>,
        all: &Report,
        fg: &Report,
        hd95_mean_fg: Option<f64>,
        train_seconds: f64,
    ) -> Result<Self, ReportError> {
        let name = name.into();
        if all.n_classes != fg.n_classes {
            return Err(ReportError::Invalid(format!(
                "method {name}: the report over all voxels has {} classes, the foreground one {}",
                all.n_classes, fg.n_classes
            )));
        }
        Ok(MethodResult {
            name,
            ece: all.ece,
            ece_fg: fg.ece,
            mce: all.mce,
            cece: all.cece,
            ace: all.ace,
            brier: all.brier,
            nll: all.nll,
            dice: all.dice.clone(),
            dice_mean_fg: all.dice_mean_fg,
            hd95_mean_fg,
            train_seconds,
            extra: BTreeMap::new(),
        })
    }
}

/// One method over one or several seeds.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodSummary {
    /// Method name.
    pub name: String,
    /// Number of seeds aggregated.
    pub n_seeds: usize,
    /// NaN-skipping mean over seeds of every number (`hd95_mean_fg`: mean of the seeds
    /// that have one, `None` if none has).
    pub mean: MethodResult,
    /// Sample standard deviation (divisor `n − 1`) of every number, over the seeds where
    /// it is not `NaN` (`NaN` with fewer than two); `None` for a single seed.
    pub sd: Option<MethodResult>,
}

impl From<MethodResult> for MethodSummary {
    fn from(r: MethodResult) -> Self {
        MethodSummary {
            name: r.name.clone(),
            n_seeds: 1,
            mean: r,
            sd: None,
        }
    }
}

/// NaN-skipping mean and sample standard deviation (`NaN` when undefined).
fn mean_sd(values: impl IntoIterator<Item = f64>) -> (f64, f64) {
    let v: Vec<f64> = values.into_iter().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let sd = if v.len() < 2 {
        f64::NAN
    } else {
        (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    };
    (mean, sd)
}

/// Aggregates the runs (seeds) of one method: mean and sample standard deviation of
/// every number. A single run gives `sd = None`.
///
/// # Errors
/// [`ReportError::Invalid`] for no run, runs of different methods (names), or Dice
/// vectors of different lengths.
pub fn summarize(runs: &[MethodResult]) -> Result<MethodSummary, ReportError> {
    let first = runs
        .first()
        .ok_or_else(|| ReportError::Invalid("no run to summarize".into()))?;
    if let Some(r) = runs.iter().find(|r| r.name != first.name) {
        return Err(ReportError::Invalid(format!(
            "runs of different methods in one summary: {} and {}",
            first.name, r.name
        )));
    }
    let k = first.dice.len();
    if let Some(r) = runs.iter().find(|r| r.dice.len() != k) {
        return Err(ReportError::Invalid(format!(
            "method {}: runs with {} and {} Dice classes",
            first.name,
            k,
            r.dice.len()
        )));
    }
    if runs.len() == 1 {
        return Ok(first.clone().into());
    }
    let field = |f: fn(&MethodResult) -> f64| mean_sd(runs.iter().map(f));
    let (ece, ece_sd) = field(|r| r.ece);
    let (ece_fg, ece_fg_sd) = field(|r| r.ece_fg);
    let (mce, mce_sd) = field(|r| r.mce);
    let (cece, cece_sd) = field(|r| r.cece);
    let (ace, ace_sd) = field(|r| r.ace);
    let (brier, brier_sd) = field(|r| r.brier);
    let (nll, nll_sd) = field(|r| r.nll);
    let (dice_mean_fg, dice_mean_fg_sd) = field(|r| r.dice_mean_fg);
    let (train, train_sd) = field(|r| r.train_seconds);
    let (dice, dice_sd): (Vec<f64>, Vec<f64>) = (0..k)
        .map(|c| mean_sd(runs.iter().map(|r| r.dice[c])))
        .unzip();
    let hd95 = runs.iter().filter_map(|r| r.hd95_mean_fg);
    let (hd95, hd95_sd) = if hd95.clone().next().is_some() {
        let (m, s) = mean_sd(hd95);
        (Some(m), Some(s))
    } else {
        (None, None)
    };
    let mut extra = BTreeMap::new();
    let mut extra_sd = BTreeMap::new();
    let keys: std::collections::BTreeSet<&String> =
        runs.iter().flat_map(|r| r.extra.keys()).collect();
    for key in keys {
        let (m, s) = mean_sd(runs.iter().filter_map(|r| r.extra.get(key).copied()));
        extra.insert(key.clone(), m);
        extra_sd.insert(key.clone(), s);
    }
    let name = first.name.clone();
    Ok(MethodSummary {
        name: name.clone(),
        n_seeds: runs.len(),
        mean: MethodResult {
            name: name.clone(),
            ece,
            ece_fg,
            mce,
            cece,
            ace,
            brier,
            nll,
            dice,
            dice_mean_fg,
            hd95_mean_fg: hd95,
            train_seconds: train,
            extra,
        },
        sd: Some(MethodResult {
            name,
            ece: ece_sd,
            ece_fg: ece_fg_sd,
            mce: mce_sd,
            cece: cece_sd,
            ace: ace_sd,
            brier: brier_sd,
            nll: nll_sd,
            dice: dice_sd,
            dice_mean_fg: dice_mean_fg_sd,
            hd95_mean_fg: hd95_sd,
            train_seconds: train_sd,
            extra: extra_sd,
        }),
    })
}

/// Groups runs by method name (in order of first appearance) and [`summarize`]s each.
///
/// # Errors
/// As [`summarize`].
pub fn group_by_method(runs: &[MethodResult]) -> Result<Vec<MethodSummary>, ReportError> {
    let mut names: Vec<&str> = Vec::new();
    for r in runs {
        if !names.contains(&r.name.as_str()) {
            names.push(&r.name);
        }
    }
    names
        .into_iter()
        .map(|n| {
            let group: Vec<MethodResult> = runs.iter().filter(|r| r.name == n).cloned().collect();
            summarize(&group)
        })
        .collect()
}

/// A JSON number, or `null` for `NaN`/∞.
fn num(x: f64) -> Value {
    if x.is_finite() { json!(x) } else { Value::Null }
}

fn nums(xs: &[f64]) -> Value {
    Value::Array(xs.iter().map(|&x| num(x)).collect())
}

impl MethodSummary {
    /// The method's object in `results.json`: the mean values under the field names,
    /// `n_seeds`, `extra` (an object), and with several seeds a sibling `NAME_sd` for
    /// every number (`dice_sd` per class; inside `extra`, `KEY_sd`).
    pub fn to_json(&self) -> Value {
        let m = &self.mean;
        let mut o = Map::new();
        let scalars = |r: &MethodResult| -> [(&'static str, f64); 9] {
            [
                ("ece", r.ece),
                ("ece_fg", r.ece_fg),
                ("mce", r.mce),
                ("cece", r.cece),
                ("ace", r.ace),
                ("brier", r.brier),
                ("nll", r.nll),
                ("dice_mean_fg", r.dice_mean_fg),
                ("train_seconds", r.train_seconds),
            ]
        };
        for (k, v) in scalars(m) {
            o.insert(k.to_owned(), num(v));
        }
        o.insert("dice".into(), nums(&m.dice));
        o.insert(
            "hd95_mean_fg".into(),
            m.hd95_mean_fg.map_or(Value::Null, num),
        );
        o.insert("n_seeds".into(), json!(self.n_seeds));
        let mut extra: Map<String, Value> =
            m.extra.iter().map(|(k, &v)| (k.clone(), num(v))).collect();
        if let Some(sd) = &self.sd {
            for (k, v) in scalars(sd) {
                o.insert(format!("{k}_sd"), num(v));
            }
            o.insert("dice_sd".into(), nums(&sd.dice));
            o.insert(
                "hd95_mean_fg_sd".into(),
                sd.hd95_mean_fg.map_or(Value::Null, num),
            );
            for (k, &v) in &sd.extra {
                extra.insert(format!("{k}_sd"), num(v));
            }
        }
        o.insert("extra".into(), Value::Object(extra));
        Value::Object(o)
    }
}

/// The whole `results.json` document (see the [module docs](self)).
///
/// # Errors
/// [`ReportError::Invalid`] when two summaries have the same name.
pub fn results_json(
    methods: &[MethodSummary],
    config: Value,
    split: Value,
    soft_label_quality: Value,
) -> Result<Value, ReportError> {
    let mut by_name = Map::new();
    for m in methods {
        if by_name.insert(m.name.clone(), m.to_json()).is_some() {
            return Err(ReportError::Invalid(format!(
                "method {} appears twice; aggregate its seeds with group_by_method",
                m.name
            )));
        }
    }
    Ok(json!({
        "methods": by_name,
        "config": config,
        "split": split,
        "soft_label_quality": soft_label_quality,
    }))
}

/// Writes [`results_json`] to `path` (pretty-printed, atomically).
///
/// # Errors
/// As [`results_json`], plus [`ReportError::Io`] when writing fails.
pub fn write_results_json(
    path: &Path,
    methods: &[MethodSummary],
    config: Value,
    split: Value,
    soft_label_quality: Value,
) -> Result<(), ReportError> {
    let doc = results_json(methods, config, split, soft_label_quality)?;
    let mut text = serde_json::to_string_pretty(&doc).map_err(|e| ReportError::Render {
        what: path.display().to_string(),
        reason: e.to_string(),
    })?;
    text.push('\n');
    calseg_io::atomic::write_atomic(path, text.as_bytes())?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Markdown
// ---------------------------------------------------------------------------------------

/// The machine a result was computed on, for the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineInfo {
    /// CPU model (`model name` of `/proc/cpuinfo`), if known.
    pub cpu_model: Option<String>,
    /// Logical cores available to this process.
    pub cores: usize,
    /// Operating system: `PRETTY_NAME` of `/etc/os-release` if present, and the
    /// target OS and architecture.
    pub os: String,
}

impl MachineInfo {
    /// Reads what is available on this machine (never fails; unknowns are left out).
    pub fn detect() -> Self {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| cpu_model_of(&text));
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let pretty = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|text| {
                text.lines().find_map(|l| {
                    l.strip_prefix("PRETTY_NAME=")
                        .map(|v| v.trim_matches('"').to_owned())
                })
            });
        let target = format!("{} {}", std::env::consts::OS, std::env::consts::ARCH);
        MachineInfo {
            cpu_model,
            cores,
            os: match pretty {
                Some(p) => format!("{p} ({target})"),
                None => target,
            },
        }
    }
}

/// The CPU model in `/proc/cpuinfo` text: `model name` (x86), else `Model` or
/// `Hardware` (ARM boards).
fn cpu_model_of(cpuinfo: &str) -> Option<String> {
    ["model name", "Model", "Hardware"].iter().find_map(|key| {
        cpuinfo.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == *key && !v.trim().is_empty()).then(|| v.trim().to_owned())
        })
    })
}

/// Which way a column is better.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Better {
    Lower,
    Higher,
    /// Not a quality measure (e.g. training time): nothing is bold.
    Neither,
}

/// One column of the comparison table.
struct Column {
    header: &'static str,
    value: fn(&MethodResult) -> Option<f64>,
    better: Better,
    decimals: usize,
}

const COLUMNS: [Column; 10] = [
    Column {
        header: "ECE",
        value: |r| Some(r.ece),
        better: Better::Lower,
        decimals: 4,
    },
    Column {
        header: "ECE (fg)",
        value: |r| Some(r.ece_fg),
        better: Better::Lower,
        decimals: 4,
    },
    Column {
        header: "MCE",
        value: |r| Some(r.mce),
        better: Better::Lower,
        decimals: 4,
    },
    Column {
        header: "CECE",
        value: |r| Some(r.cece),
        better: Better::Lower,
        decimals: 4,
    },
    Column {
        header: "ACE",
        value: |r| Some(r.ace),
        better: Better::Lower,
        decimals: 4,
    },
    Column {
        header: "Brier",
        value: |r| Some(r.brier),
        better: Better::Lower,
        decimals: 4,
    },
    Column {
        header: "NLL",
        value: |r| Some(r.nll),
        better: Better::Lower,
        decimals: 4,
    },
    Column {
        header: "Dice (fg)",
        value: |r| Some(r.dice_mean_fg),
        better: Better::Higher,
        decimals: 4,
    },
    Column {
        header: "HD95 (fg, mm)",
        value: |r| r.hd95_mean_fg,
        better: Better::Lower,
        decimals: 2,
    },
    Column {
        header: "train (s)",
        value: |r| Some(r.train_seconds),
        better: Better::Neither,
        decimals: 1,
    },
];

/// The best finite value of a column (`None` if no finite value or no direction).
fn best(values: &[Option<f64>], better: Better) -> Option<f64> {
    let finite = values.iter().flatten().copied().filter(|v| v.is_finite());
    match better {
        Better::Lower => finite.reduce(f64::min),
        Better::Higher => finite.reduce(f64::max),
        Better::Neither => None,
    }
}

/// A table cell: `mean` or `mean ± sd` at `decimals`, bold when `mean` equals the
/// column's best; `–` when missing.
fn cell(mean: Option<f64>, sd: Option<f64>, decimals: usize, best: Option<f64>) -> String {
    let Some(m) = mean.filter(|m| m.is_finite()) else {
        return "–".to_owned();
    };
    let mut text = format!("{m:.decimals$}");
    if let Some(s) = sd.filter(|s| s.is_finite()) {
        let _ = write!(text, " ± {s:.decimals$}");
    }
    if best == Some(m) {
        format!("**{text}**")
    } else {
        text
    }
}

/// A JSON value as Markdown: an object as a bullet list (`key`: value), strings bare,
/// other values as inline JSON, `null` as "none".
fn render_value(v: &Value) -> String {
    let scalar = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "none".to_owned(),
        other => format!("`{other}`"),
    };
    match v {
        Value::Object(o) if !o.is_empty() => o
            .iter()
            .map(|(k, v)| format!("- `{k}`: {}\n", scalar(v)))
            .collect(),
        other => format!("{}\n", scalar(other)),
    }
}

/// The Markdown report: the comparison table (methods × ECE, ECE (fg), MCE, CECE, ACE,
/// Brier, NLL, Dice (fg), HD95 (fg, mm) when any method has it, training time; best
/// value of each quality column in **bold** — lowest, except Dice, highest — ties all
/// bold; `mean ± sd` when a method has several seeds), a per-class Dice table, then the
/// sections Configuration, Split, Soft-label quality (unless `null`), Budget and Machine.
pub fn results_markdown(
    methods: &[MethodSummary],
    config: &Value,
    split: &Value,
    soft_label_quality: &Value,
    budget: &Value,
    machine: &MachineInfo,
) -> String {
    let mut s = String::from("# Results\n\n");
    let columns: Vec<&Column> = COLUMNS
        .iter()
        .filter(|c| {
            c.header != "HD95 (fg, mm)" || methods.iter().any(|m| m.mean.hd95_mean_fg.is_some())
        })
        .collect();
    let _ = write!(s, "| Method | seeds |");
    for c in &columns {
        let _ = write!(s, " {} |", c.header);
    }
    s.push_str("\n|---|---:|");
    for _ in &columns {
        s.push_str("---:|");
    }
    s.push('\n');
    let bests: Vec<Option<f64>> = columns
        .iter()
        .map(|c| {
            let values: Vec<Option<f64>> = methods.iter().map(|m| (c.value)(&m.mean)).collect();
            best(&values, c.better)
        })
        .collect();
    for m in methods {
        let _ = write!(s, "| {} | {} |", m.name, m.n_seeds);
        for (c, b) in columns.iter().zip(&bests) {
            let sd = m.sd.as_ref().and_then(|sd| (c.value)(sd));
            let _ = write!(s, " {} |", cell((c.value)(&m.mean), sd, c.decimals, *b));
        }
        s.push('\n');
    }

    let k = methods.iter().map(|m| m.mean.dice.len()).max().unwrap_or(0);
    if k > 0 {
        s.push_str("\n## Dice per class\n\n| Method |");
        for c in 0..k {
            let _ = write!(s, " class {c} |");
        }
        s.push_str("\n|---|");
        for _ in 0..k {
            s.push_str("---:|");
        }
        s.push('\n');
        let at = |v: &[f64], c: usize| v.get(c).copied();
        let bests: Vec<Option<f64>> = (0..k)
            .map(|c| {
                let values: Vec<Option<f64>> =
                    methods.iter().map(|m| at(&m.mean.dice, c)).collect();
                best(&values, Better::Higher)
            })
            .collect();
        for m in methods {
            let _ = write!(s, "| {} |", m.name);
            for (c, b) in bests.iter().enumerate() {
                let sd = m.sd.as_ref().and_then(|sd| at(&sd.dice, c));
                let _ = write!(s, " {} |", cell(at(&m.mean.dice, c), sd, 4, *b));
            }
            s.push('\n');
        }
    }

    let _ = write!(s, "\n## Configuration\n\n{}", render_value(config));
    let _ = write!(s, "\n## Split\n\n{}", render_value(split));
    if !soft_label_quality.is_null() {
        let _ = write!(
            s,
            "\n## Soft-label quality\n\n{}",
            render_value(soft_label_quality)
        );
    }
    let _ = write!(s, "\n## Budget\n\n{}", render_value(budget));
    let _ = write!(
        s,
        "\n## Machine\n\n- CPU: {}\n- cores: {}\n- OS: {}\n",
        machine.cpu_model.as_deref().unwrap_or("unknown"),
        machine.cores,
        machine.os
    );
    s
}

/// Writes [`results_markdown`] to `path` atomically.
///
/// # Errors
/// [`ReportError::Io`] when writing fails.
pub fn write_results_markdown(
    path: &Path,
    methods: &[MethodSummary],
    config: &Value,
    split: &Value,
    soft_label_quality: &Value,
    budget: &Value,
    machine: &MachineInfo,
) -> Result<(), ReportError> {
    let text = results_markdown(methods, config, split, soft_label_quality, budget, machine);
    calseg_io::atomic::write_atomic(path, text.as_bytes())?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Figures
// ---------------------------------------------------------------------------------------

/// Draws the reliability curves of several methods in one figure, once per path (the
/// extension, `.png` or `.svg`, picks the format), with `title` on top.
///
/// # Errors
/// [`ReportError::Invalid`] for no path; [`ReportError::Plot`] for an unsupported
/// extension (checked for every path before anything is written), invalid bins, or a
/// failed write.
pub fn write_reliability_overlay(
    series: &[(&str, &[ReliabilityBin])],
    title: &str,
    paths: &[&Path],
) -> Result<(), ReportError> {
    if paths.is_empty() {
        return Err(ReportError::Invalid(
            "reliability overlay: no output path".into(),
        ));
    }
    for p in paths {
        calseg_metrics::plot::PlotFormat::from_path(p)?;
    }
    let opts = PlotOptions {
        title: title.to_owned(),
        width: 640,
        height: 640,
        show_histogram: false,
    };
    for p in paths {
        reliability_overlay(series, &opts, p)?;
    }
    Ok(())
}

/// Margin around and between tiles, pixels.
const MARGIN: u32 = 8;
/// Height of the title band above the tiles.
const TITLE_H: u32 = 24;
/// Height of the band below the tiles (colour bar and its 0/1 ticks).
const BAR_H: u32 = 24;
/// Height of the colour bar itself.
const BAR_STRIPE: u32 = 8;
/// Tiles are enlarged by an integer factor until their longer side reaches this.
const TILE_TARGET: usize = 256;
/// Narrowest column, so that titles fit above thin slices.
const MIN_COLUMN: u32 = 128;
/// Largest panel accepted, pixels (an RGB buffer of this size is allocated).
const MAX_PIXELS: u64 = 64 << 20;

/// Integer up-scaling of a slice of shape `(rows, cols)` and the panel size `(width,
/// height)` in pixels for `n_tiles` tiles of that slice: each tile is enlarged by the
/// largest integer factor (at least 1) that keeps its longer side within 256 pixels,
/// sits in a column at least 128 pixels wide, under a 24-pixel title band and above a
/// 24-pixel colour-bar band, with 8-pixel margins.
///
/// # Errors
/// [`ReportError::Invalid`] for an empty slice, no tile, or a panel over 64 Mi pixels.
pub fn panel_layout(shape: (usize, usize), n_tiles: usize) -> Result<PanelLayout, ReportError> {
    let (rows, cols) = shape;
    if rows == 0 || cols == 0 || n_tiles == 0 {
        return Err(ReportError::Invalid(format!(
            "panel: {n_tiles} tiles of a {rows}×{cols} slice; need at least one pixel and one tile"
        )));
    }
    let scale = (TILE_TARGET / rows.max(cols)).max(1);
    let too_big = || ReportError::Invalid(format!("panel: a {rows}×{cols} slice is too large"));
    let tile_w = u32::try_from(cols * scale).map_err(|_| too_big())?;
    let tile_h = u32::try_from(rows * scale).map_err(|_| too_big())?;
    let column = tile_w.max(MIN_COLUMN);
    let n = u32::try_from(n_tiles).map_err(|_| too_big())?;
    let width = u64::from(MARGIN) + u64::from(n) * u64::from(column + MARGIN);
    let height = u64::from(MARGIN + TITLE_H + BAR_H + MARGIN) + u64::from(tile_h);
    if width * height > MAX_PIXELS {
        return Err(too_big());
    }
    Ok(PanelLayout {
        scale,
        tile_w,
        tile_h,
        column,
        width: width as u32,
        height: height as u32,
    })
}

/// Geometry of a panel, from [`panel_layout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PanelLayout {
    /// Integer enlargement of the slice.
    pub scale: usize,
    /// Tile width in pixels (`cols × scale`).
    pub tile_w: u32,
    /// Tile height in pixels (`rows × scale`).
    pub tile_h: u32,
    /// Column width (tile width, at least 128).
    pub column: u32,
    /// Panel width.
    pub width: u32,
    /// Panel height.
    pub height: u32,
}

/// Viridis anchor colours at 0, 1/8, …, 1 (matplotlib's viridis sampled at nine points);
/// [`viridis`] interpolates linearly between them.
const VIRIDIS: [[u8; 3]; 9] = [
    [68, 1, 84],
    [72, 40, 120],
    [62, 73, 137],
    [49, 104, 142],
    [38, 130, 142],
    [31, 158, 137],
    [53, 183, 121],
    [110, 206, 88],
    [253, 231, 37],
];

/// A viridis-like perceptual colour of `v`, clamped to `[0, 1]`; `NaN` is mid grey.
pub fn viridis(v: f32) -> [u8; 3] {
    if v.is_nan() {
        return [128, 128, 128];
    }
    let x = v.clamp(0.0, 1.0) * (VIRIDIS.len() - 1) as f32;
    let i = (x.floor() as usize).min(VIRIDIS.len() - 2);
    let t = x - i as f32;
    let (a, b) = (VIRIDIS[i], VIRIDIS[i + 1]);
    [0, 1, 2].map(|c| (f32::from(a[c]) + t * (f32::from(b[c]) - f32::from(a[c]))).round() as u8)
}

/// Colours of the label tile: label 0 (background) black, labels 1, 2, … the Tableau 10
/// palette, cyclically.
pub const LABEL_COLORS: [[u8; 3]; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];

/// The colour of label `v` in the label tile.
pub fn label_color(v: u32) -> [u8; 3] {
    if v == 0 {
        [0, 0, 0]
    } else {
        LABEL_COLORS[(v as usize - 1) % LABEL_COLORS.len()]
    }
}

/// Grey levels of an image slice: the 1st–99th percentile of the finite values mapped
/// to 0–255 (robust to a few bright voxels), clamped; `NaN` black.
fn grey_levels(image: ArrayView2<'_, f32>) -> impl Fn(f32) -> [u8; 3] {
    let mut finite: Vec<f32> = image.iter().copied().filter(|v| v.is_finite()).collect();
    finite.sort_by(f32::total_cmp);
    let pick = |q: f64| -> f32 {
        if finite.is_empty() {
            0.0
        } else {
            finite[((finite.len() - 1) as f64 * q).round() as usize]
        }
    };
    let (lo, hi) = (pick(0.01), pick(0.99));
    move |v: f32| {
        if !v.is_finite() {
            return [0, 0, 0];
        }
        let g = if hi > lo {
            ((v - lo) / (hi - lo)).clamp(0.0, 1.0) * 255.0
        } else {
            0.0
        };
        let g = g.round() as u8;
        [g, g, g]
    }
}

/// How one tile is coloured.
enum Tile<'a> {
    Grey(ArrayView2<'a, f32>),
    Labels(ArrayView2<'a, u32>),
    Continuous(ArrayView2<'a, f32>),
}

/// Register the embedded DejaVu Sans as plotters' `sans-serif` family (once; the same
/// registration calseg-metrics' plots make, so the two agree).
fn ensure_fonts() -> Result<(), ReportError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(
            "sans-serif",
            plotters::style::FontStyle::Normal,
            dejavu::sans::regular(),
        )
        .is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(ReportError::Render {
            what: "panel".into(),
            reason: "the embedded DejaVu Sans font could not be parsed".into(),
        })
    }
}

/// [`write_panel_png`] in memory: the PNG file bytes.
///
/// # Errors
/// As [`write_panel_png`], except the I/O ones.
pub fn render_panel_png(
    image_slice: ArrayView2<'_, f32>,
    label: ArrayView2<'_, u32>,
    soft_label: Option<ArrayView2<'_, f32>>,
    confidences: &[(String, ArrayView2<'_, f32>)],
) -> Result<Vec<u8>, ReportError> {
    let shape = image_slice.dim();
    let mut tiles: Vec<(String, Tile<'_>)> = vec![
        ("image".to_owned(), Tile::Grey(image_slice)),
        ("label".to_owned(), Tile::Labels(label)),
    ];
    if let Some(s) = soft_label {
        tiles.push(("soft label".to_owned(), Tile::Continuous(s)));
    }
    for (name, c) in confidences {
        tiles.push((name.clone(), Tile::Continuous(*c)));
    }
    for (name, t) in &tiles {
        let dim = match t {
            Tile::Grey(a) | Tile::Continuous(a) => a.dim(),
            Tile::Labels(a) => a.dim(),
        };
        if dim != shape {
            return Err(ReportError::Invalid(format!(
                "panel: tile {name:?} has shape {dim:?}, the image slice {shape:?}"
            )));
        }
    }
    let layout = panel_layout(shape, tiles.len())?;
    let (w, h) = (layout.width as usize, layout.height as usize);
    let mut rgb = vec![255u8; w * h * 3];
    let put = |rgb: &mut [u8], x: usize, y: usize, c: [u8; 3]| {
        let i = (y * w + x) * 3;
        rgb[i..i + 3].copy_from_slice(&c);
    };
    let grey = grey_levels(image_slice);
    let tile_top = (MARGIN + TITLE_H) as usize;
    let scale = layout.scale;
    for (t, (_, tile)) in tiles.iter().enumerate() {
        let col_x = (MARGIN + t as u32 * (layout.column + MARGIN)) as usize;
        let x0 = col_x + ((layout.column - layout.tile_w) / 2) as usize;
        for r in 0..shape.0 {
            for c in 0..shape.1 {
                let colour = match tile {
                    Tile::Grey(a) => grey(a[[r, c]]),
                    Tile::Labels(a) => label_color(a[[r, c]]),
                    Tile::Continuous(a) => viridis(a[[r, c]]),
                };
                for dy in 0..scale {
                    for dx in 0..scale {
                        put(
                            &mut rgb,
                            x0 + c * scale + dx,
                            tile_top + r * scale + dy,
                            colour,
                        );
                    }
                }
            }
        }
        if matches!(tile, Tile::Continuous(_)) {
            let bar_top = tile_top + layout.tile_h as usize + 3;
            let bw = layout.tile_w as usize;
            for x in 0..bw {
                let colour = viridis(x as f32 / (bw.max(2) - 1) as f32);
                for y in 0..BAR_STRIPE as usize {
                    put(&mut rgb, x0 + x, bar_top + y, colour);
                }
            }
        }
    }
    draw_panel_text(&mut rgb, &layout, &tiles)?;
    encode_rgb_png(&rgb, layout.width, layout.height)
}

/// Titles above the tiles and the 0/1 ticks of the colour bars, drawn over `rgb`.
fn draw_panel_text(
    rgb: &mut [u8],
    layout: &PanelLayout,
    tiles: &[(String, Tile<'_>)],
) -> Result<(), ReportError> {
    use plotters::prelude::*;
    ensure_fonts()?;
    let err = |e: String| ReportError::Render {
        what: "panel".into(),
        reason: e,
    };
    let root = BitMapBackend::with_buffer(rgb, (layout.width, layout.height)).into_drawing_area();
    let title_font = ("sans-serif", 15).into_font().color(&BLACK);
    let tick_font = ("sans-serif", 11).into_font().color(&BLACK);
    for (t, (name, tile)) in tiles.iter().enumerate() {
        let col_x = (MARGIN + t as u32 * (layout.column + MARGIN)) as i32;
        let area = root.clone().shrink(
            (col_x, MARGIN as i32),
            (layout.column, layout.height - MARGIN),
        );
        let title = fit_title(&area, name, &title_font, layout.column.saturating_sub(4));
        area.draw(&Text::new(title, (2, 4), title_font.clone()))
            .map_err(|e| err(e.to_string()))?;
        if matches!(tile, Tile::Continuous(_)) {
            let x0 = ((layout.column - layout.tile_w) / 2) as i32;
            let y = (TITLE_H + layout.tile_h + 3 + BAR_STRIPE + 1) as i32;
            area.draw(&Text::new("0", (x0, y), tick_font.clone()))
                .map_err(|e| err(e.to_string()))?;
            area.draw(&Text::new(
                "1",
                (x0 + layout.tile_w as i32 - 7, y),
                tick_font.clone(),
            ))
            .map_err(|e| err(e.to_string()))?;
        }
    }
    root.present().map_err(|e| err(e.to_string()))
}

/// `title`, shortened with a trailing "…" until it is at most `width` pixels wide in
/// `font` (unchanged when it fits, or when its width cannot be measured).
fn fit_title<DB: plotters::prelude::DrawingBackend>(
    area: &plotters::prelude::DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    font: &plotters::style::TextStyle<'_>,
    width: u32,
) -> String {
    let fits = |t: &str| {
        area.estimate_text_size(t, font)
            .map_or(true, |(w, _)| w <= width)
    };
    if fits(title) {
        return title.to_owned();
    }
    let mut chars: Vec<char> = title.chars().collect();
    while !chars.is_empty() {
        chars.pop();
        let candidate: String = chars.iter().chain(['…'].iter()).collect();
        if fits(&candidate) {
            return candidate;
        }
    }
    "…".to_owned()
}

fn encode_rgb_png(rgb: &[u8], w: u32, h: u32) -> Result<Vec<u8>, ReportError> {
    let err = |e: png::EncodingError| ReportError::Render {
        what: "panel".into(),
        reason: e.to_string(),
    };
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(err)?;
    writer.write_image_data(rgb).map_err(err)?;
    writer.finish().map_err(err)?;
    Ok(out)
}

/// Writes a PNG panel of one slice, atomically: tiles side by side, left to right — the
/// image in grey (1st–99th percentile window), the label map (background black, classes
/// in the Tableau 10 palette), the soft label if given, then each `(title, map)` of
/// `confidences` — the last two in a viridis-like colour map over `[0, 1]` with a colour
/// bar; each tile titled. Row 0 of the arrays is the top row of the tiles (transpose or
/// flip a slice beforehand for radiological display). Size: [`panel_layout`].
///
/// # Errors
/// [`ReportError::Invalid`] when the arrays' shapes differ or the slice is empty or too
/// large; [`ReportError::Render`] when drawing fails; [`ReportError::Io`] when writing
/// fails (nothing is left at `path` then).
pub fn write_panel_png(
    path: &Path,
    image_slice: ArrayView2<'_, f32>,
    label: ArrayView2<'_, u32>,
    soft_label: Option<ArrayView2<'_, f32>>,
    confidences: &[(String, ArrayView2<'_, f32>)],
) -> Result<(), ReportError> {
    let bytes = render_panel_png(image_slice, label, soft_label, confidences)?;
    calseg_io::atomic::write_atomic(path, &bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use calseg_metrics::evaluate;
    use ndarray::{Array2, Array3};

    fn run(name: &str, ece: f64, dice_fg: f64, hd95: Option<f64>) -> MethodResult {
        MethodResult {
            name: name.into(),
            ece,
            ece_fg: ece * 2.0,
            mce: ece * 3.0,
            cece: ece / 2.0,
            ace: ece,
            brier: 0.1,
            nll: 0.3,
            dice: vec![0.99, dice_fg, f64::NAN],
            dice_mean_fg: dice_fg,
            hd95_mean_fg: hd95,
            train_seconds: 10.0,
            extra: BTreeMap::from([("kl".to_owned(), ece * 10.0)]),
        }
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("calseg-report-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn seeds_give_mean_and_sample_sd() {
        let runs = [
            run("CALSeg", 0.1, 0.8, Some(2.0)),
            run("CALSeg", 0.2, 0.9, None),
            run("CALSeg", 0.3, 0.7, Some(4.0)),
        ];
        let s = summarize(&runs).unwrap();
        assert_eq!(s.n_seeds, 3);
        assert!((s.mean.ece - 0.2).abs() < 1e-12);
        let sd = s.sd.as_ref().unwrap();
        // Sample sd of 0.1, 0.2, 0.3 is 0.1 (divisor n − 1), not 0.0816 (divisor n).
        assert!((sd.ece - 0.1).abs() < 1e-12, "{}", sd.ece);
        assert!((sd.dice_mean_fg - 0.1).abs() < 1e-12);
        assert!((sd.dice[0]).abs() < 1e-12);
        assert!(s.mean.dice[2].is_nan() && sd.dice[2].is_nan());
        // HD95 over the two seeds that have one: mean 3, sd √2.
        assert_eq!(s.mean.hd95_mean_fg, Some(3.0));
        assert!((sd.hd95_mean_fg.unwrap() - 2f64.sqrt()).abs() < 1e-12);
        assert!((sd.extra["kl"] - 1.0).abs() < 1e-12);

        let j = s.to_json();
        assert!((j["ece_sd"].as_f64().unwrap() - 0.1).abs() < 1e-12);
        assert!((j["dice_mean_fg_sd"].as_f64().unwrap() - 0.1).abs() < 1e-12);
        assert!(j["dice"][2].is_null() && j["dice_sd"][2].is_null());
        assert!((j["extra"]["kl_sd"].as_f64().unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(j["n_seeds"], 3);

        // One seed: the values themselves and no `_sd` key.
        let one = summarize(&runs[..1]).unwrap();
        assert!(one.sd.is_none());
        let j = one.to_json();
        assert_eq!(j["ece"].as_f64(), Some(0.1));
        assert!(j.as_object().unwrap().keys().all(|k| !k.ends_with("_sd")));

        assert!(summarize(&[]).is_err());
        assert!(summarize(&[run("A", 0.1, 0.8, None), run("B", 0.1, 0.8, None)]).is_err());
        let groups = group_by_method(&[
            run("B", 0.1, 0.8, None),
            run("A", 0.1, 0.8, None),
            run("B", 0.3, 0.8, None),
        ])
        .unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!((groups[0].name.as_str(), groups[0].n_seeds), ("B", 2));
        assert_eq!((groups[1].name.as_str(), groups[1].n_seeds), ("A", 1));
    }

    #[test]
    fn results_json_has_the_contract_keys_and_is_written_whole() {
        let methods = group_by_method(&[
            run("CE", 0.1, 0.8, None),
            run("CALSeg", 0.05, 0.85, Some(3.0)),
            run("CALSeg", 0.07, 0.83, Some(5.0)),
        ])
        .unwrap();
        let dir = scratch("json");
        let path = dir.join("results.json");
        write_results_json(
            &path,
            &methods,
            json!({"epochs": 3}),
            json!({"train": ["a"], "test": ["b"]}),
            json!({"kl": 0.01}),
        )
        .unwrap();
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for key in ["methods", "config", "split", "soft_label_quality"] {
            assert!(doc.get(key).is_some(), "{key}");
        }
        for name in ["CE", "CALSeg"] {
            let m = &doc["methods"][name];
            for key in [
                "ece",
                "ece_fg",
                "mce",
                "cece",
                "ace",
                "brier",
                "nll",
                "dice",
                "dice_mean_fg",
                "hd95_mean_fg",
                "train_seconds",
            ] {
                assert!(m.get(key).is_some(), "{name}.{key}");
            }
        }
        assert!(doc["methods"]["CE"]["hd95_mean_fg"].is_null());
        assert_eq!(doc["methods"]["CALSeg"]["hd95_mean_fg"].as_f64(), Some(4.0));
        assert!(doc["methods"]["CALSeg"].get("ece_sd").is_some());
        assert_eq!(doc["config"]["epochs"], 3);
        // Only the target in the folder: no temporary file left.
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(names.len(), 1);
        // Two summaries with one name are refused.
        let twice = [methods[0].clone(), methods[0].clone()];
        assert!(results_json(&twice, Value::Null, Value::Null, Value::Null).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Cells of the row of `method` in the first table.
    fn row<'a>(md: &'a str, method: &str) -> Vec<&'a str> {
        md.lines()
            .find(|l| l.starts_with(&format!("| {method} |")))
            .unwrap()
            .split('|')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect()
    }

    #[test]
    fn markdown_bolds_the_best_cell_of_each_column() {
        // A: better ECE (lower), B: better Dice (higher); C has an HD95, the others none.
        let methods: Vec<MethodSummary> = vec![
            run("A", 0.05, 0.70, None).into(),
            summarize(&[run("B", 0.2, 0.9, None), run("B", 0.2, 0.9, None)]).unwrap(),
            run("C", 0.10, 0.80, Some(7.5)).into(),
        ];
        let md = results_markdown(
            &methods,
            &json!({"epochs": 2, "lr": 0.001}),
            &json!({"test": ["x"]}),
            &Value::Null,
            &json!({"seconds": 60}),
            &MachineInfo {
                cpu_model: Some("Test CPU".into()),
                cores: 2,
                os: "linux".into(),
            },
        );
        let header: Vec<&str> = md
            .lines()
            .find(|l| l.starts_with("| Method"))
            .unwrap()
            .split('|')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        let col = |h: &str| header.iter().position(|x| *x == h).unwrap();
        let (a, b, c) = (row(&md, "A"), row(&md, "B"), row(&md, "C"));
        assert_eq!(a[col("ECE")], "**0.0500**");
        assert_eq!(b[col("ECE")], "0.2000 ± 0.0000");
        assert_eq!(c[col("ECE")], "0.1000");
        assert_eq!(b[col("Dice (fg)")], "**0.9000 ± 0.0000**");
        assert_eq!(a[col("Dice (fg)")], "0.7000");
        assert_eq!(c[col("HD95 (fg, mm)")], "**7.50**");
        assert_eq!(a[col("HD95 (fg, mm)")], "–");
        // Equal values are all best; the training time is never bold.
        assert_eq!(a[col("Brier")], "**0.1000**");
        assert_eq!(c[col("Brier")], "**0.1000**");
        assert!(!md.contains("**10.0**"));
        for section in [
            "## Configuration",
            "- `lr`: `0.001`",
            "## Split",
            "## Budget",
            "## Machine",
            "Test CPU",
        ] {
            assert!(md.contains(section), "{section} missing in\n{md}");
        }
        assert!(!md.contains("Soft-label quality"));
    }

    #[test]
    fn from_reports_takes_ece_fg_from_the_foreground_report() {
        // 2 classes, 4 voxels: background voxels confidently right, foreground ones 60 %.
        let labels = ndarray::array![0u8, 0, 1, 1];
        let p = Array2::from_shape_vec((2, 4), vec![0.9f32, 0.9, 0.4, 0.4, 0.1, 0.1, 0.6, 0.6])
            .unwrap();
        let base = MetricConfig::default();
        let all = evaluate(p.view(), labels.view(), &base).unwrap();
        let fg = evaluate(p.view(), labels.view(), &foreground_config(&base)).unwrap();
        let r = MethodResult::from_reports("CE", &all, &fg, Some(1.5), 12.0).unwrap();
        assert!((r.ece_fg - 0.4).abs() < 1e-6, "{}", r.ece_fg);
        assert!((r.ece - 0.25).abs() < 1e-6, "{}", r.ece);
        assert_eq!(r.dice, all.dice);
        assert_eq!((r.hd95_mean_fg, r.train_seconds), (Some(1.5), 12.0));
        let three = evaluate(
            Array2::from_shape_vec((3, 1), vec![0.5f32, 0.25, 0.25])
                .unwrap()
                .view(),
            ndarray::array![0u8].view(),
            &base,
        )
        .unwrap();
        assert!(MethodResult::from_reports("x", &all, &three, None, 0.0).is_err());
    }

    fn decode(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes.to_vec()))
            .read_info()
            .unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    #[test]
    fn panel_png_has_the_expected_size_tiles_and_titles() {
        let (rows, cols) = (20, 32);
        let image = Array2::from_shape_fn((rows, cols), |(r, c)| (r + c) as f32);
        let label = Array2::from_shape_fn((rows, cols), |(_, c)| (c / 11) as u32);
        let conf = Array2::from_elem((rows, cols), 1.0f32);
        let soft = Array3::from_elem((1, rows, cols), 0.0f32);
        let dir = scratch("panel");
        let path = dir.join("panel.png");
        write_panel_png(
            &path,
            image.view(),
            label.view(),
            Some(soft.index_axis(ndarray::Axis(0), 0)),
            &[("CALSeg".to_owned(), conf.view())],
        )
        .unwrap();
        let (w, h, px) = decode(&std::fs::read(&path).unwrap());
        // Scale 256 / 32 = 8: tiles 256 × 160; 4 columns of 256 + margins.
        let layout = panel_layout((rows, cols), 4).unwrap();
        assert_eq!(layout.scale, 8);
        assert_eq!((w, h), (layout.width, layout.height));
        assert_eq!((w, h), (8 + 4 * (256 + 8), 8 + 24 + 160 + 24 + 8));
        let at = |x: u32, y: u32| {
            let i = ((y * w + x) * 3) as usize;
            [px[i], px[i + 1], px[i + 2]]
        };
        let top = 8 + 24;
        // Label tile (column 1): background black at the left, class 1 right of it.
        let col1 = 8 + 264;
        assert_eq!(at(col1 + 4, top + 4), [0, 0, 0]);
        assert_eq!(at(col1 + 12 * 8, top + 4), LABEL_COLORS[0]);
        // Soft label 0 → viridis(0), confidence 1 → viridis(1).
        assert_eq!(at(8 + 2 * 264 + 10, top + 10), VIRIDIS[0]);
        assert_eq!(at(8 + 3 * 264 + 10, top + 10), VIRIDIS[8]);
        // Image: darkest top-left, brightest bottom-right.
        assert_eq!(at(9, top + 1), [0, 0, 0]);
        assert_eq!(at(8 + 255, top + 159), [255, 255, 255]);
        // Titles: dark text pixels in every title band.
        for t in 0..4 {
            let x0 = 8 + t * 264;
            let dark = (x0..x0 + 256)
                .flat_map(|x| (8..8 + 24).map(move |y| (x, y)))
                .filter(|&(x, y)| at(x, y)[0] < 100)
                .count();
            assert!(dark > 20, "title {t}: {dark} dark pixels");
        }
        // Mismatched shapes are refused and nothing is written.
        let small = Array2::<f32>::zeros((3, 3));
        let bad = dir.join("bad.png");
        let e =
            write_panel_png(&bad, image.view(), label.view(), Some(small.view()), &[]).unwrap_err();
        assert!(e.to_string().contains("soft label"), "{e}");
        assert!(!bad.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn viridis_endpoints_and_label_colours() {
        assert_eq!(viridis(0.0), [68, 1, 84]);
        assert_eq!(viridis(1.0), [253, 231, 37]);
        assert_eq!(viridis(2.0), viridis(1.0));
        assert_eq!(viridis(0.5), [38, 130, 142]);
        assert_eq!(viridis(f32::NAN), [128, 128, 128]);
        assert_eq!(label_color(0), [0, 0, 0]);
        assert_eq!(label_color(11), label_color(1));
        assert_eq!(
            cpu_model_of("processor\t: 0\nmodel name\t: Fancy CPU @ 3GHz\n").as_deref(),
            Some("Fancy CPU @ 3GHz")
        );
        assert_eq!(cpu_model_of("processor: 0\n"), None);
    }

    #[test]
    fn overlay_is_written_as_png_and_svg() {
        let bins: Vec<ReliabilityBin> = (0..5)
            .map(|b| ReliabilityBin {
                lower: b as f64 / 5.0,
                upper: (b + 1) as f64 / 5.0,
                count: 10,
                confidence: (b as f64 + 0.5) / 5.0,
                accuracy: b as f64 / 5.0,
            })
            .collect();
        let dir = scratch("overlay");
        let (png_path, svg_path) = (dir.join("rel.png"), dir.join("rel.svg"));
        write_reliability_overlay(
            &[("CE", &bins[..]), ("CALSeg", &bins[..])],
            "test",
            &[&png_path, &svg_path],
        )
        .unwrap();
        assert_eq!(&std::fs::read(&png_path).unwrap()[..4], b"\x89PNG");
        let svg = std::fs::read_to_string(&svg_path).unwrap();
        assert!(svg.contains("CALSeg") && svg.contains("<svg"));
        // A bad extension anywhere: nothing written.
        let jpg = dir.join("rel.jpg");
        let other = dir.join("other.png");
        assert!(write_reliability_overlay(&[("CE", &bins[..])], "t", &[&other, &jpg]).is_err());
        assert!(!other.exists() && !jpg.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
