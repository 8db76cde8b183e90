//! `calseg eval`: calibration and overlap metrics of one probability map.

use super::{CliError, CliResult};
use calseg_io::{FloatArray, LabelMap};
use calseg_metrics::plot::{PlotFormat, PlotOptions, reliability_diagram};
use calseg_metrics::{
    EdgeConvention, EmptyDice, Evaluator, Input, InputMode, MetricConfig, MetricsError,
    Probability, Region, Report, hd95_per_class,
};
use clap::{Args, ValueEnum};
use ndarray::{ArrayD, ArrayViewD, Axis};
use serde_json::{Value, json};
use std::path::PathBuf;

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

/// Arguments of `calseg eval`. The flag names and JSON keys are a contract.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Probabilities: .npy (K, *spatial) f32/f64; .safetensors (tensor `probs`, or the only
    /// tensor) (K, *spatial); .nii/.nii.gz 4D with classes on the last axis.
    #[arg(long, value_name = "P")]
    pub probs: PathBuf,
    /// Ground-truth label map: .npy integer array or .nii/.nii.gz.
    #[arg(long, value_name = "Y")]
    pub labels: PathBuf,
    /// A hard predicted label map, evaluated for overlap (Dice, IoU, HD95) instead of the
    /// argmax of the probabilities.
    #[arg(long, value_name = "L")]
    pub pred: Option<PathBuf>,
    /// Number of equal-width confidence bins.
    #[arg(long, default_value_t = 15)]
    pub bins: usize,
    /// Bin-interval convention.
    #[arg(long, value_enum, default_value_t = EdgesArg::Left)]
    pub edges: EdgesArg,
    /// Voxels that count for calibration and proper scores.
    #[arg(long, value_enum, default_value_t = RegionArg::All)]
    pub region: RegionArg,
    /// ROI mask (non-zero = inside), required by `--region mask`.
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
    /// Write a reliability diagram (.png or .svg).
    #[arg(long, value_name = "FILE")]
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

/// Runs `calseg eval`.
pub fn run(args: EvalArgs) -> CliResult {
    args.check()?;
    let probs = calseg_io::read_probs(&args.probs).map_err(io_bad)?;
    let labels = calseg_io::read_labels(&args.labels).map_err(io_bad)?;
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
        let mut files = format!("{} against {}", args.probs.display(), args.labels.display());
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
        FloatArray::F32(p) => evaluate_one(p.view(), &labels, mask.as_ref(), pred.as_ref(), config),
        FloatArray::F64(p) => evaluate_one(p.view(), &labels, mask.as_ref(), pred.as_ref(), config),
    }
    .map_err(|e| bad(format!("evaluating {}: {e}", context())))?;

    let hd95 = if args.hd95 {
        let predicted = match &pred {
            Some(p) => p.labels.clone(),
            None => match &probs.probs {
                FloatArray::F32(p) => argmax(p.view()),
                FloatArray::F64(p) => argmax(p.view()),
            },
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
        let opts = PlotOptions {
            title: format!("ECE = {:.4} ({} bins)", report.ece, report.n_bins),
            ..PlotOptions::default()
        };
        reliability_diagram(&report.reliability, &opts, path)
            .map_err(|e| CliError::Failed(format!("--plot {}: {e}", path.display())))?;
    }

    if args.json {
        println!("{}", to_json(&report, hd95.as_deref()));
    } else {
        print!("{}", to_table(&report, hd95.as_deref(), &args));
    }
    Ok(())
}

/// One pass of the [`Evaluator`] over the inputs.
fn evaluate_one<T: Probability>(
    probs: ArrayViewD<'_, T>,
    labels: &LabelMap,
    mask: Option<&LabelMap>,
    pred: Option<&LabelMap>,
    config: MetricConfig,
) -> Result<Report, MetricsError> {
    let mut input = Input::new(probs, labels.labels.view())?;
    if let Some(m) = mask {
        input = input.with_mask(m.labels.view())?;
    }
    if let Some(p) = pred {
        input = input.with_pred(p.labels.view())?;
    }
    let mut ev = Evaluator::new(config)?;
    ev.update_input(&input)?;
    ev.finish()
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
fn to_table(r: &Report, hd95: Option<&[f64]>, args: &EvalArgs) -> String {
    use std::fmt::Write;
    let f = |x: f64| {
        if x.is_finite() {
            format!("{x:.6}")
        } else {
            "-".to_owned()
        }
    };
    let mut s = String::new();
    let _ = writeln!(s, "probs  {}", args.probs.display());
    let _ = writeln!(s, "labels {}", args.labels.display());
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
