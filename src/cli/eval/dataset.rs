//! Dataset mode: `--data DIR --predictions DIR`, every case of a split scored one at a
//! time, pooled ("micro") and macro-averaged.

use super::output::{cell, macro_json, plot_reliability, to_json, with_monai};
use super::{EvalArgs, SplitArg, bad, io_bad, monai_of, read_optional_labels};
use crate::cli::{CliError, CliResult};
use calseg_io::{CaseRef, Dataset, ProbFile, ProbView};
use calseg_metrics::{MacroReport, Report, ScoreSpec, Scorer, foreground_mean, macro_average};
use serde_json::json;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

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
pub(super) fn run_dataset(args: &EvalArgs, data: &Path, predictions: &Path) -> CliResult {
    if !predictions.is_dir() {
        return Err(bad(format!(
            "--predictions {}: not a folder",
            predictions.display()
        )));
    }
    if let Some(m) = &args.mask
        && !m.is_dir()
    {
        return Err(bad(format!(
            "--mask {}: in dataset mode, a folder with one mask per case",
            m.display()
        )));
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
    let mut pooled = Scorer::new(ScoreSpec::new(config).hd95(args.hd95))
        .map_err(|e| bad(format!("invalid option: {e}")))?;
    let mut results = Vec::with_capacity(files.len());
    for f in &files {
        let result = score_case(&ds, f, n_classes, &mut pooled)?;
        if let Some(dir) = &args.plot_dir {
            let path = dir.join(format!("reliability_{}.png", result.id));
            plot_reliability(&result.report, &format!("{}: ", result.id), &path)?;
        }
        results.push(result);
    }
    let summary = pooled
        .finish()
        .map_err(|e| bad(format!("{}: pooled metrics: {e}", data.display())))?;
    let pooled = summary.region;
    let reports: Vec<Report> = results.iter().map(|r| r.report.clone()).collect();
    let macro_report = macro_average(&reports)
        .map_err(|e| bad(format!("{}: macro average: {e}", data.display())))?;
    // HD95 per class: the mean over the cases that have a finite value (the Scorer's rule).
    let macro_hd95 = summary.hd95;
    if let Some(dir) = &args.plot_dir {
        plot_reliability(&pooled, "pooled: ", &dir.join("reliability_pooled.png"))?;
    }

    let monai = monai_of(args, &reports, &data.display().to_string())?;
    if args.json {
        let mut cases = serde_json::Map::new();
        for r in &results {
            let m = monai_of(args, std::slice::from_ref(&r.report), &r.id)?;
            cases.insert(
                r.id.clone(),
                with_monai(to_json(&r.report, r.hd95.as_deref()), m.as_ref()),
            );
        }
        let out = with_monai(
            json!({
                "split": split.name(),
                "n_cases": results.len(),
                "cases": cases,
                "pooled": to_json(&pooled, None),
                "macro": macro_json(&macro_report, macro_hd95.as_deref()),
            }),
            monai.as_ref(),
        );
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
        if let Some(m) = &monai {
            println!(
                "\nMONAI CalibrationErrorMetric (one-vs-rest per class, mean over classes, then \
                 over {} cases): ECE {}  MCE {}  average CE {}",
                m.n_images,
                cell(m.ece, 4),
                cell(m.mce, 4),
                cell(m.average_ce, 4)
            );
        }
    }
    Ok(())
}

/// Loads one case and scores it into `pooled` (the one scoring path,
/// [`calseg_metrics::Scorer`]); returns its own report. Class or shape mismatches are bad
/// input naming the prediction file.
fn score_case(
    ds: &Dataset,
    f: &CaseFiles<'_>,
    n_classes: usize,
    pooled: &mut Scorer,
) -> Result<CaseResult, CliError> {
    let id = &f.case.id;
    let pred_name = f.prediction.display();
    let case = ds.load_case(f.case).map_err(io_bad)?;
    let labels = case.label.ok_or_else(|| {
        bad(format!(
            "case {id}: the dataset has no label file for it (split {:?})",
            f.case.split
        ))
    })?;
    let probs = ProbFile::open(&f.prediction).map_err(io_bad)?;
    let shape = probs.shape();
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
    let mask = read_optional_labels(f.mask.as_deref())?.map(|m| m.labels.mapv(|v| v != 0));
    let context = || match &f.mask {
        Some(m) => format!("case {id}: {pred_name} (mask {})", m.display()),
        None => format!("case {id}: {pred_name}"),
    };
    let mask = mask.as_ref().map(|m| m.view());
    let spacing = &case.geometry.spacing;
    let score = match probs.view() {
        ProbView::F32(p) => pooled.update(p, labels.view(), mask, spacing),
        ProbView::F64(p) => pooled.update(p, labels.view(), mask, spacing),
    }
    .map_err(|e| bad(format!("{}: {e}", context())))?;
    Ok(CaseResult {
        id: id.clone(),
        report: score.region,
        hd95: score.hd95,
    })
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
    let f = |x: f64| cell(x, 4);
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
            r.hd95
                .as_deref()
                .map(|h| foreground_mean(h, Some(bg as usize))),
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
        macro_hd95.map(|h| foreground_mean(h, Some(bg as usize))),
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
