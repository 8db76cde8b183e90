//! `calseg eval`: calibration and overlap metrics of one probability map, or of every
//! case of a dataset folder against a folder of predictions.
//!
//! * **Single-file mode** (`--probs P --labels Y`): one report.
//! * **Dataset mode** (`--data DIR --predictions DIR`): the labels of a Decathlon /
//!   nnU-Net v2 dataset folder ([`calseg_io::Dataset`]) against one prediction file per
//!   case (`CASE.nii.gz`, `CASE.nii`, `CASE.safetensors` or `CASE.npy`). Cases are loaded
//!   and scored one at a time (memory: one case), each into its own [`Evaluator`]; the
//!   evaluators are merged into a pooled ("micro") one, and the per-case reports are
//!   averaged with [`macro_average`] ("macro"). Every prediction file is located before
//!   any case is scored, so a missing one fails fast.

use super::{CliError, CliResult};
use calseg_io::{CaseRef, Dataset, FloatArray, LabelMap};
use calseg_metrics::plot::{PlotFormat, PlotOptions, reliability_diagram};
use calseg_metrics::{
    EdgeConvention, EmptyDice, Evaluator, Input, InputMode, MacroReport, MetricConfig,
    MetricsError, Probability, Region, Report, hd95_per_class, macro_average, nanmean,
};
use clap::{Args, ValueEnum};
use ndarray::{ArrayD, ArrayViewD, Axis};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Bin-interval convention (`--edges`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum EdgesArg {
    /// `[lo, hi)`, confidence 1.0 in the last bin (default; torchmetrics/netcal minus their bugs).
    Left,
    /// `(lo, hi]`, as the SVLS/MbLS/NACL papers' code.
    Right,
    /// torchmetrics 1.9 exactly, including its extra bin for confidence 1.0.
    Torchmetrics,
}

/// Which voxels count (`--region`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum RegionArg {
    /// Every voxel.
    All,
    /// Voxels whose label is not `--background` (the MbLS/NACL protocol).
    Foreground,
    /// Voxels where `--mask` is non-zero.
    Mask,
}

/// Dice/IoU of a class absent from the ground truth (`--empty-dice`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum EmptyDiceArg {
    /// NaN (`null` in JSON), skipped by means — MONAI `ignore_empty=True`.
    Nan,
    /// 1.0 if the prediction is empty too, else 0.0 — MONAI `ignore_empty=False`.
    One,
}

/// How the values in `--probs` are interpreted (`--input`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum InputArg {
    /// Probabilities that must sum to 1 over classes (within `--tol`); otherwise an error.
    Probs,
    /// Non-negative scores, divided by their sum over classes.
    Renormalise,
    /// Logits, turned into probabilities by an explicit softmax over classes.
    Logits,
}

/// Which cases of a dataset are scored (`--split`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum SplitArg {
    /// `imagesTs`/`labelsTs`.
    Test,
    /// `imagesTr`/`labelsTr`.
    Train,
    /// Training cases, then test cases.
    All,
}

impl SplitArg {
    fn name(self) -> &'static str {
        match self {
            SplitArg::Test => "test",
            SplitArg::Train => "train",
            SplitArg::All => "all",
        }
    }
}

/// Arguments of `calseg eval`. The flag names and JSON keys are a contract.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Probabilities: .npy (K, *spatial) f32/f64; .safetensors (tensor `probs`, or the only
    /// tensor) (K, *spatial); .nii/.nii.gz 4D with classes on the last axis.
    #[arg(
        long,
        value_name = "P",
        required_unless_present = "data",
        conflicts_with = "data"
    )]
    pub probs: Option<PathBuf>,
    /// Ground-truth label map: .npy integer array or .nii/.nii.gz.
    #[arg(
        long,
        value_name = "Y",
        required_unless_present = "data",
        conflicts_with = "data"
    )]
    pub labels: Option<PathBuf>,
    /// A hard predicted label map, evaluated for overlap (Dice, IoU, HD95) instead of the
    /// argmax of the probabilities (single-file mode only).
    #[arg(long, value_name = "L", conflicts_with = "data")]
    pub pred: Option<PathBuf>,
    /// Dataset mode: a Decathlon / nnU-Net v2 dataset folder (dataset.json, imagesTr,
    /// labelsTr, imagesTs, labelsTs) whose label maps are the ground truth.
    #[arg(long, value_name = "DIR", requires = "predictions")]
    pub data: Option<PathBuf>,
    /// Dataset mode: folder with one probability file per case, CASE.nii.gz / CASE.nii
    /// (classes last), CASE.safetensors or CASE.npy ((K, *spatial)).
    #[arg(long, value_name = "DIR", requires = "data")]
    pub predictions: Option<PathBuf>,
    /// Dataset mode: cases to score (default: test if the dataset has test labels, else
    /// train).
    #[arg(long, value_enum, requires = "data")]
    pub split: Option<SplitArg>,
    /// Dataset mode: write reliability_CASE.png per case and reliability_pooled.png here
    /// (the folder is created if needed).
    #[arg(long, value_name = "DIR", requires = "data")]
    pub plot_dir: Option<PathBuf>,
    /// Number of equal-width confidence bins.
    #[arg(long, default_value_t = 15)]
    pub bins: usize,
    /// Bin-interval convention.
    #[arg(long, value_enum, default_value_t = EdgesArg::Left)]
    pub edges: EdgesArg,
    /// Voxels that count for calibration and proper scores.
    #[arg(long, value_enum, default_value_t = RegionArg::All)]
    pub region: RegionArg,
    /// ROI mask (non-zero = inside), required by `--region mask`. In dataset mode a folder
    /// with one mask per case (CASE.nii.gz, .nii, .npy, .safetensors or .png).
    #[arg(long, value_name = "M")]
    pub mask: Option<PathBuf>,
    /// Label index of the background class.
    #[arg(long, default_value_t = 0)]
    pub background: u32,
    /// Dice/IoU of a class absent from the ground truth.
    #[arg(long, value_enum, default_value_t = EmptyDiceArg::Nan)]
    pub empty_dice: EmptyDiceArg,
    /// Also compute HD95 per class (mm; costs a distance transform per class).
    #[arg(long)]
    pub hd95: bool,
    /// Write a reliability diagram (.png or .svg) (single-file mode; see --plot-dir).
    #[arg(long, value_name = "FILE", conflicts_with = "data")]
    pub plot: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// How to interpret `--probs`.
    #[arg(long, value_enum, default_value_t = InputArg::Probs)]
    pub input: InputArg,
    /// Tolerance on |Σ_k p_k − 1| for `--input probs`.
    #[arg(long, default_value_t = 1e-3)]
    pub tol: f64,
}

impl EvalArgs {
    /// The metric configuration these flags describe.
    fn config(&self) -> MetricConfig {
        MetricConfig::default()
            .bins(self.bins)
            .edges(match self.edges {
                EdgesArg::Left => EdgeConvention::LeftClosed,
                EdgesArg::Right => EdgeConvention::RightClosed,
                EdgesArg::Torchmetrics => EdgeConvention::Torchmetrics,
            })
            .region(match self.region {
                RegionArg::All => Region::All,
                RegionArg::Foreground => Region::Foreground,
                RegionArg::Mask => Region::Mask,
            })
            .background(Some(self.background as usize))
            .empty_dice(match self.empty_dice {
                EmptyDiceArg::Nan => EmptyDice::Nan,
                EmptyDiceArg::One => EmptyDice::One,
            })
            .input(match self.input {
                InputArg::Probs => InputMode::Probabilities { tol: self.tol },
                InputArg::Renormalise => InputMode::Renormalise,
                InputArg::Logits => InputMode::Logits,
            })
    }

    /// Checks the flags that do not need any file (before reading anything).
    fn check(&self) -> CliResult {
        match (self.region, &self.mask) {
            (RegionArg::Mask, None) => {
                return Err(bad("--region mask needs --mask M".to_owned()));
            }
            (RegionArg::All | RegionArg::Foreground, Some(m)) => {
                return Err(bad(format!(
                    "--mask {} is only used with --region mask",
                    m.display()
                )));
            }
            _ => {}
        }
        if let Some(plot) = &self.plot {
            PlotFormat::from_path(plot).map_err(|e| bad(format!("--plot: {e}")))?;
        }
        self.config()
            .validate()
            .map_err(|e| bad(format!("invalid option: {e}")))
    }
}

fn bad(msg: String) -> CliError {
    CliError::BadInput(msg)
}

fn io_bad(e: calseg_io::IoError) -> CliError {
    CliError::BadInput(e.to_string())
}

/// Runs `calseg eval`: dataset mode when `--data` is given, else single-file mode.
pub fn run(args: EvalArgs) -> CliResult {
    args.check()?;
    match (&args.data, &args.predictions) {
        (Some(data), Some(predictions)) => run_dataset(&args, data, predictions),
        _ => run_single(&args),
    }
}

/// Single-file mode: `--probs P --labels Y`.
fn run_single(args: &EvalArgs) -> CliResult {
    let (Some(probs_path), Some(labels_path)) = (&args.probs, &args.labels) else {
        return Err(bad(
            "give --probs P and --labels Y, or --data DIR and --predictions DIR".to_owned(),
        ));
    };
    let probs = calseg_io::read_probs(probs_path).map_err(io_bad)?;
    let labels = calseg_io::read_labels(labels_path).map_err(io_bad)?;
    let mask = args
        .mask
        .as_ref()
        .map(calseg_io::read_labels)
        .transpose()
        .map_err(io_bad)?;
    let pred = args
        .pred
        .as_ref()
        .map(calseg_io::read_labels)
        .transpose()
        .map_err(io_bad)?;
    let context = || {
        let mut files = format!("{} against {}", probs_path.display(), labels_path.display());
        if let Some(m) = &args.mask {
            files += &format!(" (mask {})", m.display());
        }
        if let Some(p) = &args.pred {
            files += &format!(" (pred {})", p.display());
        }
        files
    };
    let config = args.config();
    let report = match &probs.probs {
        FloatArray::F32(p) => accumulate(
            p.view(),
            &labels.labels,
            mask.as_ref(),
            pred.as_ref(),
            config,
        ),
        FloatArray::F64(p) => accumulate(
            p.view(),
            &labels.labels,
            mask.as_ref(),
            pred.as_ref(),
            config,
        ),
    }
    .and_then(|ev| ev.finish())
    .map_err(|e| bad(format!("evaluating {}: {e}", context())))?;

    let hd95 = if args.hd95 {
        let predicted = match &pred {
            Some(p) => p.labels.clone(),
            None => argmax_of(&probs.probs),
        };
        let spacing = &labels.geometry.spacing;
        Some(
            hd95_per_class(
                predicted.view(),
                labels.labels.view(),
                report.n_classes,
                spacing,
            )
            .map_err(|e| bad(format!("HD95 of {}: {e}", context())))?,
        )
    } else {
        None
    };

    if let Some(path) = &args.plot {
        plot_reliability(&report, "", path)?;
    }

    if args.json {
        println!("{}", to_json(&report, hd95.as_deref()));
    } else {
        print!(
            "{}",
            to_table(&report, hd95.as_deref(), args, probs_path, labels_path)
        );
    }
    Ok(())
}

/// Writes the reliability diagram of `report` to `path`, titled with its ECE (after
/// `prefix`, e.g. the case id).
fn plot_reliability(report: &Report, prefix: &str, path: &Path) -> CliResult {
    let opts = PlotOptions {
        title: format!("{prefix}ECE = {:.4} ({} bins)", report.ece, report.n_bins),
        ..PlotOptions::default()
    };
    reliability_diagram(&report.reliability, &opts, path)
        .map_err(|e| CliError::Failed(format!("plot {}: {e}", path.display())))
}

/// Arg-max label map of a probability map of either precision.
fn argmax_of(probs: &FloatArray) -> ArrayD<u32> {
    match probs {
        FloatArray::F32(p) => argmax(p.view()),
        FloatArray::F64(p) => argmax(p.view()),
    }
}

// ---------------------------------------------------------------------------------------
// Dataset mode
// ---------------------------------------------------------------------------------------

/// File endings of prediction files, in the order they are looked for.
const PREDICTION_ENDINGS: [&str; 4] = [".nii.gz", ".nii", ".safetensors", ".npy"];
/// File endings of per-case masks (`--mask DIR` in dataset mode).
const MASK_ENDINGS: [&str; 5] = [".nii.gz", ".nii", ".npy", ".safetensors", ".png"];

/// A case to score: its dataset entry and the files found for it.
struct CaseFiles<'a> {
    case: &'a CaseRef,
    prediction: PathBuf,
    mask: Option<PathBuf>,
}

/// The one file `DIR/ID<ending>` for one of `endings`: an error naming the expected
/// files when there is none, and naming both when two endings match (ambiguous).
fn find_case_file(dir: &Path, id: &str, endings: &[&str], what: &str) -> Result<PathBuf, CliError> {
    let found: Vec<PathBuf> = endings
        .iter()
        .map(|e| dir.join(format!("{id}{e}")))
        .filter(|p| p.is_file())
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(bad(format!(
            "case {id}: no {what} {} (looked for {} with ending {})",
            dir.join(format!("{id}{}", endings[0])).display(),
            dir.join(id).display(),
            endings.join(", ")
        ))),
        [a, b, ..] => Err(bad(format!(
            "case {id}: two {what} files, {} and {}; keep one",
            a.display(),
            b.display()
        ))),
    }
}

/// The split scored when `--split` is not given: test if any test case has a label file
/// in `labelsTs`, else train.
fn default_split(ds: &Dataset, root: &Path) -> SplitArg {
    let ending = &ds.info().file_ending;
    let labelled = ds.test_cases().iter().any(|c| {
        root.join("labelsTs")
            .join(format!("{}{ending}", c.id))
            .is_file()
    });
    if labelled {
        SplitArg::Test
    } else {
        SplitArg::Train
    }
}

/// Everything computed for one case.
struct CaseResult {
    id: String,
    report: Report,
    hd95: Option<Vec<f64>>,
}

/// Dataset mode: `--data DIR --predictions DIR`.
fn run_dataset(args: &EvalArgs, data: &Path, predictions: &Path) -> CliResult {
    if !predictions.is_dir() {
        return Err(bad(format!(
            "--predictions {}: not a folder",
            predictions.display()
        )));
    }
    if let Some(m) = &args.mask {
        if !m.is_dir() {
            return Err(bad(format!(
                "--mask {}: in dataset mode, a folder with one mask per case",
                m.display()
            )));
        }
    }
    let ds = Dataset::open(data).map_err(io_bad)?;
    let split = args.split.unwrap_or_else(|| default_split(&ds, data));
    let cases: Vec<&CaseRef> = match split {
        SplitArg::Train => ds.training_cases().iter().collect(),
        SplitArg::Test => ds.test_cases().iter().collect(),
        SplitArg::All => ds.training_cases().iter().chain(ds.test_cases()).collect(),
    };
    if cases.is_empty() {
        return Err(bad(format!(
            "{}: the dataset has no {} case",
            data.display(),
            split.name()
        )));
    }
    let mut ids = BTreeSet::new();
    if let Some(dup) = cases.iter().find(|c| !ids.insert(c.id.as_str())) {
        return Err(bad(format!(
            "{}: case id {} is both a training and a test case; score one split at a time",
            data.display(),
            dup.id
        )));
    }
    // Locate every file first: a missing prediction fails before any work.
    let files = cases
        .iter()
        .map(|case| {
            Ok(CaseFiles {
                case,
                prediction: find_case_file(
                    predictions,
                    &case.id,
                    &PREDICTION_ENDINGS,
                    "prediction",
                )?,
                mask: args
                    .mask
                    .as_deref()
                    .map(|dir| find_case_file(dir, &case.id, &MASK_ENDINGS, "mask"))
                    .transpose()?,
            })
        })
        .collect::<Result<Vec<_>, CliError>>()?;
    if let Some(dir) = &args.plot_dir {
        std::fs::create_dir_all(dir).map_err(|e| {
            CliError::Failed(format!(
                "--plot-dir {}: cannot create it: {e}",
                dir.display()
            ))
        })?;
    }

    let config = args.config();
    let n_classes = ds.info().num_classes();
    let mut pooled =
        Evaluator::new(config.clone()).map_err(|e| bad(format!("invalid option: {e}")))?;
    let mut results = Vec::with_capacity(files.len());
    for f in &files {
        let (ev, result) = score_case(args, &ds, f, n_classes, config.clone())?;
        pooled.merge(&ev).map_err(|e| {
            bad(format!(
                "case {}: {}: {e}",
                result.id,
                f.prediction.display()
            ))
        })?;
        if let Some(dir) = &args.plot_dir {
            let path = dir.join(format!("reliability_{}.png", result.id));
            plot_reliability(&result.report, &format!("{}: ", result.id), &path)?;
        }
        results.push(result);
    }
    let pooled = pooled
        .finish()
        .map_err(|e| bad(format!("{}: pooled metrics: {e}", data.display())))?;
    let reports: Vec<Report> = results.iter().map(|r| r.report.clone()).collect();
    let macro_report = macro_average(&reports)
        .map_err(|e| bad(format!("{}: macro average: {e}", data.display())))?;
    let macro_hd95 = args.hd95.then(|| {
        (0..n_classes)
            .map(|c| {
                nanmean(
                    results
                        .iter()
                        .filter_map(|r| r.hd95.as_ref().and_then(|h| h.get(c).copied())),
                )
            })
            .collect::<Vec<f64>>()
    });
    if let Some(dir) = &args.plot_dir {
        plot_reliability(&pooled, "pooled: ", &dir.join("reliability_pooled.png"))?;
    }

    if args.json {
        let cases: serde_json::Map<String, Value> = results
            .iter()
            .map(|r| (r.id.clone(), to_json(&r.report, r.hd95.as_deref())))
            .collect();
        let out = json!({
            "split": split.name(),
            "n_cases": results.len(),
            "cases": cases,
            "pooled": to_json(&pooled, None),
            "macro": macro_json(&macro_report, macro_hd95.as_deref()),
        });
        println!("{out}");
    } else {
        print!(
            "{}",
            dataset_table(
                &results,
                &pooled,
                &macro_report,
                macro_hd95.as_deref(),
                args,
                data,
                predictions,
                split
            )
        );
    }
    Ok(())
}

/// Loads and scores one case: its own evaluator (to merge into the pooled one) and its
/// report. Class or shape mismatches are bad input naming the prediction file.
fn score_case(
    args: &EvalArgs,
    ds: &Dataset,
    f: &CaseFiles<'_>,
    n_classes: usize,
    config: MetricConfig,
) -> Result<(Evaluator, CaseResult), CliError> {
    let id = &f.case.id;
    let pred_name = f.prediction.display();
    let case = ds.load_case(f.case).map_err(io_bad)?;
    let labels = case.label.ok_or_else(|| {
        bad(format!(
            "case {id}: the dataset has no label file for it (split {:?})",
            f.case.split
        ))
    })?;
    let probs = calseg_io::read_probs(&f.prediction).map_err(io_bad)?;
    let shape = probs.probs.shape();
    if shape.first() != Some(&n_classes) {
        return Err(bad(format!(
            "case {id}: {pred_name} has {} classes (shape {shape:?}, classes first), \
             dataset.json declares {n_classes}",
            shape.first().copied().unwrap_or(0)
        )));
    }
    if shape[1..] != *labels.shape() {
        return Err(bad(format!(
            "case {id}: {pred_name} has spatial shape {:?}, the label map has {:?}",
            &shape[1..],
            labels.shape()
        )));
    }
    let mask = f
        .mask
        .as_ref()
        .map(calseg_io::read_labels)
        .transpose()
        .map_err(io_bad)?;
    let context = || match &f.mask {
        Some(m) => format!("case {id}: {pred_name} (mask {})", m.display()),
        None => format!("case {id}: {pred_name}"),
    };
    let ev = match &probs.probs {
        FloatArray::F32(p) => accumulate(p.view(), &labels, mask.as_ref(), None, config),
        FloatArray::F64(p) => accumulate(p.view(), &labels, mask.as_ref(), None, config),
    }
    .map_err(|e| bad(format!("{}: {e}", context())))?;
    let report = ev
        .finish()
        .map_err(|e| bad(format!("{}: {e}", context())))?;
    let hd95 = if args.hd95 {
        let predicted = argmax_of(&probs.probs);
        Some(
            hd95_per_class(
                predicted.view(),
                labels.view(),
                report.n_classes,
                &case.geometry.spacing,
            )
            .map_err(|e| bad(format!("HD95 of {}: {e}", context())))?,
        )
    } else {
        None
    };
    Ok((
        ev,
        CaseResult {
            id: id.clone(),
            report,
            hd95,
        },
    ))
}

/// The JSON object of a macro average: the [`MacroReport`] fields (`NaN` → `null`), plus
/// `hd95` (per class, mean over cases) when computed.
fn macro_json(m: &MacroReport, hd95: Option<&[f64]>) -> Value {
    let num = |x: f64| if x.is_finite() { json!(x) } else { Value::Null };
    let nums = |xs: &[f64]| Value::Array(xs.iter().map(|&x| num(x)).collect());
    let mut out = json!({
        "n_cases": m.n_cases,
        "ece": num(m.ece),
        "mce": num(m.mce),
        "rmsce": num(m.rmsce),
        "ace": num(m.ace),
        "cece": num(m.cece),
        "class_ece": nums(&m.class_ece),
        "accuracy": num(m.accuracy),
        "mean_confidence": num(m.mean_confidence),
        "brier": num(m.brier),
        "nll": num(m.nll),
        "dice": nums(&m.dice),
        "dice_mean_fg": num(m.dice_mean_fg),
        "iou": nums(&m.iou),
        "iou_mean_fg": num(m.iou_mean_fg),
    });
    if let (Some(h), Some(obj)) = (hd95, out.as_object_mut()) {
        obj.insert("hd95".to_owned(), nums(h));
    }
    out
}

/// NaN-skipping mean of `per_class` over the classes other than `background`.
fn mean_fg(per_class: &[f64], background: u32) -> f64 {
    nanmean(
        per_class
            .iter()
            .enumerate()
            .filter(|&(c, _)| c != background as usize)
            .map(|(_, &v)| v),
    )
}

/// The readable report of dataset mode: one row per case, then pooled and macro rows,
/// then per-class Dice and class-wise ECE of the pooled and macro results.
#[allow(clippy::too_many_arguments)]
fn dataset_table(
    results: &[CaseResult],
    pooled: &Report,
    macro_report: &MacroReport,
    macro_hd95: Option<&[f64]>,
    args: &EvalArgs,
    data: &Path,
    predictions: &Path,
    split: SplitArg,
) -> String {
    use std::fmt::Write;
    let f = |x: f64| {
        if x.is_finite() {
            format!("{x:.4}")
        } else {
            "-".to_owned()
        }
    };
    let hd = args.hd95;
    let mut s = String::new();
    let _ = writeln!(s, "dataset     {}", data.display());
    let _ = writeln!(s, "predictions {}", predictions.display());
    let _ = writeln!(
        s,
        "{} {} cases, {} classes ({} bins, edges {}, region {})\n",
        results.len(),
        split.name(),
        pooled.n_classes,
        pooled.n_bins,
        pooled.edges,
        args.config().region
    );
    let width = results
        .iter()
        .map(|r| r.id.len())
        .chain([6])
        .max()
        .unwrap_or(6);
    let _ = writeln!(
        s,
        "{:<width$} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}{}",
        "case",
        "voxels",
        "ECE",
        "MCE",
        "ACE",
        "CECE",
        "Brier",
        "NLL",
        "Dice fg",
        if hd { "  HD95 fg" } else { "" }
    );
    let mut row = |name: &str, n: String, r: [f64; 7], hd95: Option<f64>| {
        let _ = write!(s, "{name:<width$} {n:>10}");
        for v in r {
            let _ = write!(s, " {:>8}", f(v));
        }
        if let Some(h) = hd95 {
            let _ = write!(s, " {:>8}", f(h));
        }
        s.push('\n');
    };
    let bg = args.background;
    for r in results {
        let p = &r.report;
        row(
            &r.id,
            p.n_voxels.to_string(),
            [p.ece, p.mce, p.ace, p.cece, p.brier, p.nll, p.dice_mean_fg],
            r.hd95.as_deref().map(|h| mean_fg(h, bg)),
        );
    }
    row(
        "pooled",
        pooled.n_voxels.to_string(),
        [
            pooled.ece,
            pooled.mce,
            pooled.ace,
            pooled.cece,
            pooled.brier,
            pooled.nll,
            pooled.dice_mean_fg,
        ],
        hd.then_some(f64::NAN),
    );
    let m = macro_report;
    row(
        "macro",
        String::new(),
        [m.ece, m.mce, m.ace, m.cece, m.brier, m.nll, m.dice_mean_fg],
        macro_hd95.map(|h| mean_fg(h, bg)),
    );
    let _ = writeln!(
        s,
        "\nclass  Dice pooled  Dice macro  class-ECE pooled  class-ECE macro{}",
        if hd { "  HD95 macro" } else { "" }
    );
    for c in 0..pooled.n_classes {
        let at = |v: &[f64]| v.get(c).copied().unwrap_or(f64::NAN);
        let _ = write!(
            s,
            "{c:>5} {:>12} {:>11} {:>17} {:>16}",
            f(at(&pooled.dice)),
            f(at(&m.dice)),
            f(at(&pooled.class_ece)),
            f(at(&m.class_ece))
        );
        if let Some(h) = macro_hd95 {
            let _ = write!(s, " {:>11}", f(at(h)));
        }
        s.push('\n');
    }
    s
}

/// One pass of a fresh [`Evaluator`] over the inputs; the evaluator is returned so that
/// dataset mode can merge it into the pooled one.
fn accumulate<T: Probability>(
    probs: ArrayViewD<'_, T>,
    labels: &ArrayD<u32>,
    mask: Option<&LabelMap>,
    pred: Option<&LabelMap>,
    config: MetricConfig,
) -> Result<Evaluator, MetricsError> {
    let mut input = Input::new(probs, labels.view())?;
    if let Some(m) = mask {
        input = input.with_mask(m.labels.view())?;
    }
    if let Some(p) = pred {
        input = input.with_pred(p.labels.view())?;
    }
    let mut ev = Evaluator::new(config)?;
    ev.update_input(&input)?;
    Ok(ev)
}

/// Arg-max over axis 0 of `(K, *spatial)`; the first maximal class wins ties, as
/// everywhere in calseg-metrics.
fn argmax<T: Probability>(probs: ArrayViewD<'_, T>) -> ArrayD<u32> {
    let mut best = probs.index_axis(Axis(0), 0).to_owned();
    let mut arg = ArrayD::<u32>::zeros(best.raw_dim());
    for (k, channel) in probs.axis_iter(Axis(0)).enumerate().skip(1) {
        ndarray::Zip::from(&mut best)
            .and(&mut arg)
            .and(&channel)
            .for_each(|b, a, &p| {
                if p > *b {
                    *b = p;
                    *a = k as u32;
                }
            });
    }
    arg
}

/// The JSON object of the CLI contract (`NaN` → `null`).
fn to_json(r: &Report, hd95: Option<&[f64]>) -> Value {
    let num = |x: f64| if x.is_finite() { json!(x) } else { Value::Null };
    let nums = |xs: &[f64]| Value::Array(xs.iter().map(|&x| num(x)).collect());
    let reliability: Vec<Value> = r
        .reliability
        .iter()
        .map(|b| {
            json!({
                "lower": b.lower,
                "upper": b.upper,
                "count": b.count,
                "confidence": num(b.confidence),
                "accuracy": num(b.accuracy),
            })
        })
        .collect();
    let mut out = json!({
        "n_voxels": r.n_voxels,
        "n_total": r.n_total,
        "n_classes": r.n_classes,
        "bins": r.n_bins,
        "edges": r.edges.to_string(),
        "ece": num(r.ece),
        "mce": num(r.mce),
        "rmsce": num(r.rmsce),
        "ace": num(r.ace),
        "cece": num(r.cece),
        "class_ece": nums(&r.class_ece),
        "accuracy": num(r.accuracy),
        "mean_confidence": num(r.mean_confidence),
        "brier": num(r.brier),
        "nll": num(r.nll),
        "dice": nums(&r.dice),
        "dice_mean_fg": num(r.dice_mean_fg),
        "iou": nums(&r.iou),
        "iou_mean_fg": num(r.iou_mean_fg),
        "reliability": reliability,
    });
    if let (Some(h), Some(obj)) = (hd95, out.as_object_mut()) {
        obj.insert("hd95".to_owned(), nums(h));
    }
    out
}

/// The readable report.
fn to_table(
    r: &Report,
    hd95: Option<&[f64]>,
    args: &EvalArgs,
    probs: &Path,
    labels: &Path,
) -> String {
    use std::fmt::Write;
    let f = |x: f64| {
        if x.is_finite() {
            format!("{x:.6}")
        } else {
            "-".to_owned()
        }
    };
    let mut s = String::new();
    let _ = writeln!(s, "probs  {}", probs.display());
    let _ = writeln!(s, "labels {}", labels.display());
    let _ = writeln!(
        s,
        "{} classes, {} voxels scored of {} ({} bins, edges {}, region {})\n",
        r.n_classes,
        r.n_voxels,
        r.n_total,
        r.n_bins,
        r.edges,
        args.config().region
    );
    for (name, v) in [
        ("ECE", r.ece),
        ("MCE", r.mce),
        ("RMSCE", r.rmsce),
        ("ACE", r.ace),
        ("class-wise ECE", r.cece),
        ("Brier", r.brier),
        ("NLL", r.nll),
        ("accuracy", r.accuracy),
        ("mean confidence", r.mean_confidence),
        ("mean Dice (fg)", r.dice_mean_fg),
        ("mean IoU (fg)", r.iou_mean_fg),
    ] {
        let _ = writeln!(s, "{name:<16} {}", f(v));
    }
    let _ = writeln!(
        s,
        "\nclass      Dice       IoU  class-ECE{}",
        if hd95.is_some() { "   HD95 (mm)" } else { "" }
    );
    for c in 0..r.n_classes {
        let _ = write!(
            s,
            "{c:>5} {:>9} {:>9} {:>10}",
            f(r.dice[c]),
            f(r.iou[c]),
            f(r.class_ece[c])
        );
        if let Some(h) = hd95 {
            let _ = write!(s, " {:>12}", f(h[c]));
        }
        s.push('\n');
    }
    let _ = writeln!(s, "\nreliability        count  confidence  accuracy");
    for b in &r.reliability {
        let _ = writeln!(
            s,
            "[{:.3}, {:.3}] {:>10} {:>11} {:>9}",
            b.lower,
            b.upper,
            b.count,
            f(b.confidence),
            f(b.accuracy)
        );
    }
    s
}
