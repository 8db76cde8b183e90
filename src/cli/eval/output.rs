//! What both modes output besides their tables: the JSON objects of the CLI contract
//! (`NaN` → `null`) and reliability diagrams.

use crate::cli::{CliError, CliResult};
use calseg_metrics::plot::{PlotOptions, reliability_diagram};
use calseg_metrics::{MacroReport, MonaiCalibration, OverlapReport, Report};
use serde_json::{Map, Value, json};
use std::path::Path;

/// Writes the reliability diagram of `report` to `path`, titled with its ECE (after
/// `prefix`, e.g. the case id).
pub(super) fn plot_reliability(report: &Report, prefix: &str, path: &Path) -> CliResult {
    let opts = PlotOptions {
        title: format!("{prefix}ECE = {:.4} ({} bins)", report.ece, report.n_bins),
        ..PlotOptions::default()
    };
    reliability_diagram(&report.reliability, &opts, path)
        .map_err(|e| CliError::Failed(format!("plot {}: {e}", path.display())))
}

/// A JSON number, or `null` for `NaN`/∞.
fn num(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// An array of [`num`]s.
fn nums(xs: &[f64]) -> Value {
    xs.iter().copied().map(num).collect()
}

/// The `(key, value)` entries a [`Report`] and a [`MacroReport`] share (same field names),
/// in the contract's order. A macro because the two types share field names, not a trait.
macro_rules! shared_entries {
    ($r:expr) => {
        [
            ("ece", num($r.ece)),
            ("mce", num($r.mce)),
            ("rmsce", num($r.rmsce)),
            ("ace", num($r.ace)),
            ("average_ce", num($r.ace)),
            ("cece", num($r.cece)),
            ("class_ece", nums(&$r.class_ece)),
            ("accuracy", num($r.accuracy)),
            ("mean_confidence", num($r.mean_confidence)),
            ("brier", num($r.brier)),
            ("nll", num($r.nll)),
            ("dice", nums(&$r.dice)),
            ("dice_mean_fg", num($r.dice_mean_fg)),
            ("iou", nums(&$r.iou)),
            ("iou_mean_fg", num($r.iou_mean_fg)),
        ]
    };
}

/// One JSON object: `head`, the shared entries, `tail`, then `hd95` when given.
fn object<'a>(
    head: Vec<(&'a str, Value)>,
    shared: impl IntoIterator<Item = (&'a str, Value)>,
    tail: Vec<(&'a str, Value)>,
    hd95: Option<&[f64]>,
) -> Value {
    let mut out = Map::new();
    for (key, value) in head.into_iter().chain(shared).chain(tail) {
        out.insert(key.to_owned(), value);
    }
    if let Some(h) = hd95 {
        out.insert("hd95".to_owned(), nums(h));
    }
    Value::Object(out)
}

/// The JSON object of a macro average: the [`MacroReport`] fields (`NaN` → `null`), plus
/// `hd95` (per class, mean over cases) when computed.
pub(super) fn macro_json(m: &MacroReport, hd95: Option<&[f64]>) -> Value {
    object(
        vec![("n_cases", json!(m.n_cases))],
        shared_entries!(m),
        Vec::new(),
        hd95,
    )
}

/// The JSON object of the CLI contract (`NaN` → `null`).
pub(super) fn to_json(r: &Report, hd95: Option<&[f64]>) -> Value {
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
    let head = vec![
        ("n_voxels", json!(r.n_voxels)),
        ("n_total", json!(r.n_total)),
        ("n_classes", json!(r.n_classes)),
        ("bins", json!(r.n_bins)),
        ("edges", json!(r.edges.to_string())),
    ];
    object(
        head,
        shared_entries!(r),
        vec![("reliability", Value::Array(reliability))],
        hd95,
    )
}

/// A table cell: `x` with `decimals` decimals, `-` when not finite.
pub(super) fn cell(x: f64, decimals: usize) -> String {
    if x.is_finite() {
        format!("{x:.decimals$}")
    } else {
        "-".to_owned()
    }
}

/// The JSON object of hard mode (`--pred` without `--probs`): `"mode": "hard"`, the class
/// count, the overlap keys of [`to_json`] (`dice`, `dice_mean_fg`, `iou`, `iou_mean_fg`,
/// `hd95` when computed), the voxel count `n_total`, and the per-class counts `tp`, `fp`,
/// `fn`. No calibration key: there are no probabilities.
pub(super) fn hard_json(r: &OverlapReport, hd95: Option<&[f64]>) -> Value {
    object(
        vec![
            ("mode", json!("hard")),
            ("n_total", json!(r.n_voxels)),
            ("n_classes", json!(r.dice.len())),
        ],
        [],
        vec![
            ("dice", nums(&r.dice)),
            ("dice_mean_fg", num(r.dice_mean_fg)),
            ("iou", nums(&r.iou)),
            ("iou_mean_fg", num(r.iou_mean_fg)),
            ("tp", json!(r.tp)),
            ("fp", json!(r.fp)),
            ("fn", json!(r.fn_)),
        ],
        hd95,
    )
}

/// `value` (a JSON object) with `"monai"` set to [`monai_json`] of `m`, when given.
pub(super) fn with_monai(mut value: Value, m: Option<&MonaiCalibration>) -> Value {
    if let (Value::Object(map), Some(m)) = (&mut value, m) {
        map.insert("monai".to_owned(), monai_json(m));
    }
    value
}

/// The `monai` JSON object (`--convention monai`): MONAI's per-class ECE, MCE and average
/// CE (`*_per_class`, reduction "mean_batch") and their reduction "mean" (`ece`, `mce`,
/// `average_ce`), for the channels `channels`.
pub(super) fn monai_json(m: &MonaiCalibration) -> Value {
    json!({
        "n_images": m.n_images,
        "include_background": m.include_background,
        "channels": m.channels,
        "ece": num(m.ece),
        "mce": num(m.mce),
        "average_ce": num(m.average_ce),
        "ece_per_class": nums(&m.ece_per_class),
        "mce_per_class": nums(&m.mce_per_class),
        "average_ce_per_class": nums(&m.average_ce_per_class),
    })
}
