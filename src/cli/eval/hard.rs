//! Hard mode: `--pred L --labels Y` without `--probs`: the overlap of two label maps
//! (Dice, IoU per class and their foreground means; HD95 with `--hd95`), no calibration.

use super::output::{cell, hard_json};
use super::{EvalArgs, bad, io_bad};
use crate::cli::CliResult;
use calseg_metrics::{OverlapReport, hard_overlap, hd95_per_class};

/// Hard mode: reads both maps, checks their shapes, scores them in one pass.
pub(super) fn run_hard(args: &EvalArgs) -> CliResult {
    let (Some(pred_path), Some(labels_path)) = (&args.pred, &args.labels) else {
        return Err(bad("give --pred L and --labels Y".to_owned()));
    };
    let pred = calseg_io::read_labels(pred_path).map_err(io_bad)?;
    let labels = calseg_io::read_labels(labels_path).map_err(io_bad)?;
    let context = format!("{} against {}", pred_path.display(), labels_path.display());
    if pred.labels.shape() != labels.labels.shape() {
        return Err(bad(format!(
            "{context}: the label maps differ in shape: --pred {} is {:?}, --labels {} is {:?}",
            pred_path.display(),
            pred.labels.shape(),
            labels_path.display(),
            labels.labels.shape()
        )));
    }
    let config = args.config();
    let report = hard_overlap(
        pred.labels.view(),
        labels.labels.view(),
        args.classes,
        &config,
    )
    .map_err(|e| bad(format!("{context}: {e}")))?;
    let n_classes = report.dice.len();
    let hd95 = if args.hd95 {
        Some(
            hd95_per_class(
                pred.labels.view(),
                labels.labels.view(),
                n_classes,
                &labels.geometry.spacing,
            )
            .map_err(|e| bad(format!("HD95 of {context}: {e}")))?,
        )
    } else {
        None
    };
    if args.json {
        println!("{}", hard_json(&report, hd95.as_deref()));
    } else {
        print!("{}", hard_table(&report, hd95.as_deref(), args));
    }
    Ok(())
}

/// The readable report of hard mode.
fn hard_table(r: &OverlapReport, hd95: Option<&[f64]>, args: &EvalArgs) -> String {
    use std::fmt::Write;
    let f = |x: f64| cell(x, 6);
    let mut s = String::new();
    let show = |p: &Option<std::path::PathBuf>| {
        p.as_deref()
            .map_or_else(String::new, |p| p.display().to_string())
    };
    let _ = writeln!(s, "pred   {}", show(&args.pred));
    let _ = writeln!(s, "labels {}", show(&args.labels));
    let _ = writeln!(
        s,
        "{} classes, {} voxels (hard label maps: overlap only, background {})\n",
        r.dice.len(),
        r.n_voxels,
        args.background
    );
    let _ = writeln!(s, "{:<16} {}", "mean Dice (fg)", f(r.dice_mean_fg));
    let _ = writeln!(s, "{:<16} {}", "mean IoU (fg)", f(r.iou_mean_fg));
    let _ = writeln!(
        s,
        "\nclass      Dice       IoU       |pred|      |label|{}",
        if hd95.is_some() { "   HD95 (mm)" } else { "" }
    );
    for c in 0..r.dice.len() {
        let _ = write!(
            s,
            "{c:>5} {:>9} {:>9} {:>12} {:>12}",
            f(r.dice[c]),
            f(r.iou[c]),
            r.tp[c] + r.fp[c],
            r.tp[c] + r.fn_[c]
        );
        if let Some(h) = hd95 {
            let _ = write!(s, " {:>12}", f(h.get(c).copied().unwrap_or(f64::NAN)));
        }
        s.push('\n');
    }
    s
}
