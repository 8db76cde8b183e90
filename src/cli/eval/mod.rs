//! `calseg eval`: calibration and overlap metrics of one probability map, or of every
//! case of a dataset folder against a folder of predictions.
//!
//! * **Single-file mode** (`--probs P --labels Y`): one report.
//! * **Hard mode** (`--pred L --labels Y`, no `--probs`): overlap of two label maps
//!   (Dice, IoU, HD95 with `--hd95`) through [`calseg_metrics::hard_overlap`]; the class
//!   count is the largest label of either map + 1, or `--classes K`.
//! * **Dataset mode** (`--data DIR --predictions DIR`): the labels of a Decathlon /
//!   nnU-Net v2 dataset folder ([`calseg_io::Dataset`]) against one prediction file per
//!   case (`CASE.nii.gz`, `CASE.nii`, `CASE.safetensors` or `CASE.npy`). Cases are loaded
//!   and scored one at a time (memory: one case), each into its own [`Evaluator`]; the
//!   evaluators are merged into a pooled ("micro") one, and the per-case reports are
//!   averaged with [`macro_average`] ("macro"). Every prediction file is located before
//!   any case is scored, so a missing one fails fast.

//!
//! Files: [`args`] (flags and the metric configuration they describe), [`single`]
//! (single-file mode), [`hard`] (hard mode), [`dataset`] (dataset mode), [`output`] (JSON objects and
//! reliability diagrams shared by both modes).

mod args;
mod dataset;
mod hard;
mod output;
mod single;

pub use args::EvalArgs;
use args::SplitArg;

use super::{CliError, CliResult};
use calseg_io::{LabelMap, ProbView};
use calseg_metrics::{
    Evaluator, Input, MetricConfig, MetricsError, MonaiCalibration, Probability, Report,
};
use ndarray::{ArrayD, ArrayViewD};
use std::path::Path;

pub(super) fn bad(msg: String) -> CliError {
    CliError::BadInput(msg)
}

pub(super) fn io_bad(e: calseg_io::IoError) -> CliError {
    CliError::BadInput(e.to_string())
}

/// The label map at `path`, if a path is given (a mask or a hard prediction).
fn read_optional_labels(path: Option<&Path>) -> Result<Option<LabelMap>, CliError> {
    path.map(calseg_io::read_labels).transpose().map_err(io_bad)
}

/// MONAI's reduced calibration errors of `reports` (one per image) under `--convention
/// monai` (MONAI's default `include_background=True`), else `None`.
pub(super) fn monai_of(
    args: &EvalArgs,
    reports: &[Report],
    context: &str,
) -> Result<Option<MonaiCalibration>, CliError> {
    if args.convention != Some(args::ConventionArg::Monai) {
        return Ok(None);
    }
    MonaiCalibration::from_reports(reports, true)
        .map(Some)
        .map_err(|e| bad(format!("{context}: MONAI calibration: {e}")))
}

/// Runs `calseg eval`: dataset mode when `--data` is given, else single-file mode.
pub fn run(args: EvalArgs) -> CliResult {
    args.check()?;
    match (&args.data, &args.predictions) {
        (Some(data), Some(predictions)) => dataset::run_dataset(&args, data, predictions),
        _ if args.hard_mode() => hard::run_hard(&args),
        _ => single::run_single(&args),
    }
}

/// One pass of a fresh [`Evaluator`] over the inputs; the evaluator is returned so that
/// dataset mode can merge it into the pooled one.
pub(super) fn accumulate<T: Probability>(
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

/// Arg-max label map of a probability map of either precision.
pub(super) fn argmax_of(probs: ProbView<'_>) -> ArrayD<u32> {
    match probs {
        ProbView::F32(p) => calseg_metrics::argmax(p),
        ProbView::F64(p) => calseg_metrics::argmax(p),
    }
}
