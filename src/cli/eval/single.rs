//! Single-file mode: `--probs P --labels Y` (optionally `--mask`, `--pred`), one report.

use super::output::{cell, plot_reliability, to_json, with_monai};
use super::{EvalArgs, accumulate, argmax_of, bad, io_bad, monai_of, read_optional_labels};
use crate::cli::CliResult;
use calseg_io::{ProbFile, ProbView};
use calseg_metrics::{MonaiCalibration, Report, hd95_per_class};
use std::path::Path;

/// Single-file mode: `--probs P --labels Y`.
pub(super) fn run_single(args: &EvalArgs) -> CliResult {
    let (Some(probs_path), Some(labels_path)) = (&args.probs, &args.labels) else {
        return Err(bad(
            "give --probs P and --labels Y, or --data DIR and --predictions DIR".to_owned(),
        ));
    };
    let probs = ProbFile::open(probs_path).map_err(io_bad)?;
    let labels = calseg_io::read_labels(labels_path).map_err(io_bad)?;
    let mask = read_optional_labels(args.mask.as_deref())?;
    let pred = read_optional_labels(args.pred.as_deref())?;
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
    let report = match probs.view() {
        ProbView::F32(p) => accumulate(p, &labels.labels, mask.as_ref(), pred.as_ref(), config),
        ProbView::F64(p) => accumulate(p, &labels.labels, mask.as_ref(), pred.as_ref(), config),
    }
    .and_then(|ev| ev.finish())
    .map_err(|e| bad(format!("evaluating {}: {e}", context())))?;

    let hd95 = if args.hd95 {
        let predicted = match &pred {
            Some(p) => p.labels.clone(),
            None => argmax_of(probs.view()),
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
    let monai = monai_of(args, std::slice::from_ref(&report), &context())?;

    if args.json {
        println!(
            "{}",
            with_monai(to_json(&report, hd95.as_deref()), monai.as_ref())
        );
    } else {
        print!(
            "{}",
            to_table(
                &report,
                hd95.as_deref(),
                monai.as_ref(),
                args,
                probs_path,
                labels_path
            )
        );
    }
    Ok(())
}

/// The readable report.
fn to_table(
    r: &Report,
    hd95: Option<&[f64]>,
    monai: Option<&MonaiCalibration>,
    args: &EvalArgs,
    probs: &Path,
    labels: &Path,
) -> String {
    use std::fmt::Write;
    let f = |x: f64| cell(x, 6);
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
        ("ACE (average)", r.ace),
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
    if let Some(m) = monai {
        let _ = writeln!(
            s,
            "\nMONAI CalibrationErrorMetric ({} bins, one-vs-rest per class, mean over classes)",
            r.n_bins
        );
        let _ = writeln!(
            s,
            "ECE {}  MCE {}  average CE {}",
            f(m.ece),
            f(m.mce),
            f(m.average_ce)
        );
        let _ = writeln!(s, "class       ECE       MCE  average CE");
        for (i, c) in m.channels.iter().enumerate() {
            let _ = writeln!(
                s,
                "{c:>5} {:>9} {:>9} {:>11}",
                f(m.ece_per_class[i]),
                f(m.mce_per_class[i]),
                f(m.average_ce_per_class[i])
            );
        }
    }
    s
}
