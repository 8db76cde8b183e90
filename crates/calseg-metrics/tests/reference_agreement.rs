//! Agreement with the reference values of `tests/reference/*/ref.json` (numpy f64 sums,
//! torchmetrics 1.9 edges, netcal 1.4, MONAI 1.6): ECE, MCE, RMSCE, per-bin reliability,
//! class-wise ECE, the MbLS/NACL protocol and Dice, for 10 and 15 bins and every edge
//! convention.

mod common;

use calseg_metrics::{
    CeceClasses, ClasswiseCalibration, EdgeConvention, EmptyDice, Evaluator, MetricConfig, Overlap,
    ReliabilityBin, TopLabelCalibration, nanmean,
};
use common::*;
use serde_json::Value;

const BINS: [usize; 2] = [10, 15];

fn top(case: &Case, cfg: MetricConfig) -> calseg_metrics::Calibration {
    let mut acc = TopLabelCalibration::new(cfg).unwrap();
    acc.update(case.p.view(), case.y.view()).unwrap();
    acc.finish().unwrap()
}

/// Compares ECE/MCE/RMSCE and every bin with a numpy `binned_ce` block.
fn check_block(got: &calseg_metrics::Calibration, blk: &Value, what: &str) {
    assert_close(got.ece, num(&blk["ece_l1"]), &format!("{what} ece"));
    assert_close(got.mce, num(&blk["mce_max"]), &format!("{what} mce"));
    assert_close(got.rmsce, num(&blk["rmsce_l2"]), &format!("{what} rmsce"));
    assert_eq!(got.n_voxels, blk["n_total"].as_u64().unwrap(), "{what} N");
    assert_eq!(
        got.n_binned,
        blk["n_binned"].as_u64().unwrap(),
        "{what} binned"
    );
    let rel = &blk["reliability"];
    let counts: Vec<u64> = got.reliability.iter().map(|b| b.count).collect();
    assert_eq!(counts, ints(&rel["count"]), "{what} counts");
    let f = |g: fn(&ReliabilityBin) -> f64| got.reliability.iter().map(g).collect::<Vec<_>>();
    assert_all_close(
        &f(|b| b.lower),
        &nums(&rel["lower"]),
        &format!("{what} lower"),
    );
    assert_all_close(
        &f(|b| b.upper),
        &nums(&rel["upper"]),
        &format!("{what} upper"),
    );
    assert_all_close(
        &f(|b| b.confidence),
        &nums(&rel["mean_conf"]),
        &format!("{what} conf"),
    );
    assert_all_close(
        &f(|b| b.accuracy),
        &nums(&rel["accuracy"]),
        &format!("{what} acc"),
    );
    // ACE from the reference bins: mean gap over occupied bins.
    let gaps: Vec<f64> = nums(&rel["mean_conf"])
        .iter()
        .zip(nums(&rel["accuracy"]))
        .filter(|(c, _)| !c.is_nan())
        .map(|(c, a)| (a - c).abs())
        .collect();
    assert_close(
        got.ace,
        gaps.iter().sum::<f64>() / gaps.len() as f64,
        &format!("{what} ace"),
    );
}

#[test]
fn top_label_torchmetrics_convention_matches_numpy_with_extra_bin() {
    for case in cases() {
        for nb in BINS {
            let blk = &case.r["calibration"][format!("n_bins={nb}")];
            let got = top(
                &case,
                MetricConfig::default()
                    .bins(nb)
                    .edges(EdgeConvention::Torchmetrics),
            );
            assert_eq!(got.reliability.len(), nb + 1);
            check_block(
                &got,
                &blk["numpy_left_closed(torchmetrics)"],
                &format!("{} tm {nb}", case.name),
            );
            // torchmetrics' own bin counts (bucketize) agree too.
            let tm = &blk["torchmetrics"]["bins_internal_f32"]["count_bucketize"];
            let counts: Vec<u64> = got.reliability.iter().map(|b| b.count).collect();
            assert_eq!(
                counts,
                ints(tm),
                "{} torchmetrics bucketize counts",
                case.name
            );
            // and its f32 ECE to f32 precision
            assert!(
                (got.ece - num(&blk["torchmetrics"]["l1"])).abs() < 1e-6,
                "{}",
                case.name
            );
            // edges bit for bit (the hex strings are exact; JSON decimals may be 1 ulp off)
            let hex: Vec<f64> = blk["edges_f32_hex"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| parse_hex_float(h.as_str().unwrap()))
                .collect();
            assert_eq!(
                got.reliability
                    .iter()
                    .take(nb)
                    .map(|b| b.lower)
                    .collect::<Vec<_>>(),
                hex[..nb].to_vec()
            );
            assert_eq!(got.reliability[nb - 1].upper, 1.0);
        }
    }
}

#[test]
fn top_label_right_closed_matches_papers_convention() {
    for case in cases() {
        for nb in BINS {
            let blk = &case.r["calibration"][format!("n_bins={nb}")];
            let got = top(
                &case,
                MetricConfig::default()
                    .bins(nb)
                    .edges(EdgeConvention::RightClosed),
            );
            assert_eq!(got.reliability.len(), nb);
            check_block(
                &got,
                &blk["numpy_right_closed(papers)"],
                &format!("{} right {nb}", case.name),
            );
        }
    }
}

/// The reference block with torchmetrics' extra bin folded into the last bin: the
/// "last bin closed" answer.
fn fold_extra_bin(blk: &Value) -> (f64, f64, f64, Vec<u64>) {
    let rel = &blk["reliability"];
    let mut cnt = ints(&rel["count"]);
    let mut sc = nums(&rel["sum_conf"]);
    let mut sa = nums(&rel["sum_acc"]);
    let n = cnt.len() - 1;
    cnt[n - 1] += cnt[n];
    sc[n - 1] += sc[n];
    sa[n - 1] += sa[n];
    cnt.pop();
    sc.pop();
    sa.pop();
    let total = blk["n_total"].as_u64().unwrap() as f64;
    let ece = sc.iter().zip(&sa).map(|(c, a)| (a - c).abs()).sum::<f64>() / total;
    let mut mce = 0.0f64;
    let mut rms = 0.0;
    for i in 0..n {
        if cnt[i] > 0 {
            let k = cnt[i] as f64;
            let gap = (sa[i] / k - sc[i] / k).abs();
            mce = mce.max(gap);
            rms += k / total * gap * gap;
        }
    }
    (ece, mce, rms.sqrt(), cnt)
}

#[test]
fn top_label_left_closed_puts_one_in_last_bin() {
    for case in cases() {
        let n_one = case.r["top_label"]["n_conf_eq_1"].as_u64().unwrap();
        for nb in BINS {
            let blk = &case.r["calibration"][format!("n_bins={nb}")];
            let got = top(&case, MetricConfig::default().bins(nb));
            assert_eq!(got.reliability.len(), nb);
            let tmb = &blk["numpy_left_closed(torchmetrics)"];
            let (ece, mce, rms, cnt) = fold_extra_bin(tmb);
            let what = format!("{} left {nb}", case.name);
            assert_close(got.ece, ece, &what);
            assert_close(got.mce, mce, &what);
            assert_close(got.rmsce, rms, &what);
            assert_eq!(
                got.reliability.iter().map(|b| b.count).collect::<Vec<_>>(),
                cnt
            );
            if n_one == 0 {
                // No confidence is 1.0: identical to the torchmetrics-convention values.
                assert_close(got.ece, num(&tmb["ece_l1"]), &what);
                assert_close(got.mce, num(&tmb["mce_max"]), &what);
                assert_close(got.rmsce, num(&tmb["rmsce_l2"]), &what);
            } else {
                assert_eq!(got.reliability[nb - 1].count, cnt[nb - 1]);
                assert!(got.reliability[nb - 1].upper == 1.0);
            }
            // netcal (f64 edges, last bin closed, f64 input) agrees except where an f32
            // confidence sits between the f32 and the f64 edge (disagree_edge07, and the
            // edge-straddling samples of edges_c16).
            if !matches!(case.name.as_str(), "disagree_edge07" | "edges_c16") {
                let nc = num(&blk["netcal"]["ece_toplabel_f64input"]);
                assert!(
                    (got.ece - nc).abs() <= 1e-6 * nc.abs() + 1e-12,
                    "{what} netcal {nc} vs {}",
                    got.ece
                );
            }
        }
    }
}

#[test]
fn disagree_edge07_documents_the_f32_edge() {
    let case = cases()
        .into_iter()
        .find(|c| c.name == "disagree_edge07")
        .unwrap();
    let got = top(&case, MetricConfig::default().bins(10));
    // torchmetrics' f32 edge: both samples in [0.7, 0.8): |0.5 − 0.725| = 0.225
    assert!((got.ece - 0.225).abs() < 1e-7, "{}", got.ece);
    // netcal's f64 edge would give 0.525: we follow torch's f32 edges.
    let nc = num(&case.r["calibration"]["n_bins=10"]["netcal"]["ece_toplabel_f64input"]);
    assert!((nc - 0.525).abs() < 1e-7);
}

/// Straightforward class-wise ECE with last-bin-closed `[lo, hi)` bins (test oracle for
/// cases with probabilities of exactly 1.0, which the reference only gives with the
/// torchmetrics extra bin).
fn oracle_left_cece(case: &Case, nb: usize) -> Vec<f64> {
    let edges = calseg_metrics::edges::torch_linspace_f32(nb);
    let k = case.p.shape()[0];
    let n = case.y.len();
    let y: Vec<u8> = case.y.iter().copied().collect();
    (0..k)
        .map(|c| {
            let pc: Vec<f32> = case
                .p
                .index_axis(ndarray::Axis(0), c)
                .iter()
                .copied()
                .collect();
            let mut sc = vec![0.0f64; nb];
            let mut sa = vec![0.0f64; nb];
            for (i, &x) in pc.iter().enumerate() {
                let b = (edges.iter().filter(|&&e| e <= x).count() - 1).min(nb - 1);
                sc[b] += f64::from(x);
                sa[b] += if y[i] as usize == c { 1.0 } else { 0.0 };
            }
            sc.iter().zip(&sa).map(|(a, b)| (a - b).abs()).sum::<f64>() / n as f64
        })
        .collect()
}

#[test]
fn classwise_ece_all_conventions() {
    for case in cases() {
        for nb in BINS {
            let cb = &case.r["cece"][format!("n_bins={nb}")];
            for (conv, key) in [
                (
                    EdgeConvention::Torchmetrics,
                    Some("numpy_left_closed(torchmetrics)"),
                ),
                (
                    EdgeConvention::RightClosed,
                    Some("numpy_right_closed(papers)"),
                ),
                (EdgeConvention::LeftClosed, None),
            ] {
                let mut acc =
                    ClasswiseCalibration::new(MetricConfig::default().bins(nb).edges(conv))
                        .unwrap();
                acc.update(case.p.view(), case.y.view()).unwrap();
                let got = acc.finish().unwrap();
                let per: Vec<f64> = got.per_class.iter().map(|c| c.ece).collect();
                let what = format!("{} cece {conv:?} {nb}", case.name);
                match key {
                    Some(key) => {
                        assert_all_close(&per, &nums(&cb[key]["per_class"]), &what);
                        assert_close(got.cece, num(&cb[key]["cece"]), &what);
                    }
                    None => {
                        let want = oracle_left_cece(&case, nb);
                        assert_all_close(&per, &want, &what);
                        assert_close(
                            got.cece,
                            want.iter().sum::<f64>() / want.len() as f64,
                            &what,
                        );
                        if !case.p.iter().any(|&v| v == 1.0) {
                            let tm = &cb["numpy_left_closed(torchmetrics)"];
                            assert_close(got.cece, num(&tm["cece"]), &what);
                        }
                        // netcal (clips to 1 − eps, f32 input) to f32 precision
                        if matches!(case.name.as_str(), "conf_one_c3" | "random_c3_32x32") {
                            let nc = num(&cb["netcal_binary_per_class"]["cece"]);
                            assert!((got.cece - nc).abs() < 1e-6, "{what}: netcal {nc}");
                        }
                    }
                }
                assert_eq!(got.classes, (0..case.p.shape()[0]).collect::<Vec<_>>());
            }
        }
    }
}

#[test]
fn mbls_nacl_protocol() {
    for case in cases() {
        for nb in BINS {
            let pr = &case.r["protocol_mbls_nacl"][format!("n_bins={nb}")];
            let cfg = MetricConfig::mbls_nacl().bins(nb);
            assert_eq!(cfg.cece_classes, CeceClasses::UpToMaxLabel);
            let mut ev = Evaluator::new(cfg).unwrap();
            ev.update(case.p.view(), case.y.view()).unwrap();
            let r = ev.finish().unwrap();
            let what = format!("{} mbls {nb}", case.name);
            assert_eq!(r.n_voxels, pr["n_pixels"].as_u64().unwrap(), "{what}");
            if r.n_voxels == 0 {
                assert!(r.ece.is_nan() && r.cece.is_nan());
                continue;
            }
            assert_close(r.ece, num(&pr["ece"]), &what);
            assert_close(r.cece, num(&pr["cece"]["cece"]), &what);
            let classes: Vec<usize> = ints(&pr["cece"]["classes"])
                .iter()
                .map(|&c| c as usize)
                .collect();
            assert_eq!(r.cece_classes, classes, "{what}");
            let per: Vec<f64> = classes.iter().map(|&c| r.class_ece[c]).collect();
            assert_all_close(&per, &nums(&pr["cece"]["per_class"]), &what);
            // Dice is not restricted to the foreground region.
            assert_eq!(r.n_total as usize, case.y.len());
        }
    }
}

#[test]
fn dice_under_both_empty_conventions() {
    for case in cases() {
        let d = &case.r["dice"]["numpy"];
        let k = case.p.shape()[0];
        for (empty, key, mean_key) in [
            (
                EmptyDice::Nan,
                "monai_ignore_empty_true",
                "ignore_empty_true",
            ),
            (
                EmptyDice::One,
                "monai_ignore_empty_false",
                "ignore_empty_false",
            ),
        ] {
            let cfg = MetricConfig::default().empty_dice(empty);
            let mut ov = Overlap::new(cfg.clone()).unwrap();
            ov.update(case.p.view(), case.y.view()).unwrap();
            let r = ov.finish().unwrap();
            let what = format!("{} dice {key}", case.name);
            assert_eq!(r.tp, ints(&d["tp"]), "{what}");
            assert_eq!(r.fp, ints(&d["fp"]), "{what}");
            assert_eq!(r.fn_, ints(&d["fn"]), "{what}");
            assert_all_close(&r.dice, &nums(&d["per_class"][key]), &what);
            let means = &d["mean_nan_skipping(MONAI 'mean')"];
            // MONAI's mean is 0.0 when every class is NaN; ours is NaN.
            let monai_mean = |x: f64| if x.is_nan() { 0.0 } else { x };
            assert_close(
                monai_mean(r.dice_mean_fg),
                num(&means[format!("{mean_key}_excl_bg")]),
                &what,
            );
            assert_close(
                monai_mean(nanmean(r.dice.iter().copied())),
                num(&means[format!("{mean_key}_incl_bg")]),
                &what,
            );
            // MONAI's own per-class numbers (f32) to 1e-6.
            let monai = &case.r["dice"]["monai"][format!(
                "include_background=True,ignore_empty={}",
                if empty == EmptyDice::Nan {
                    "True"
                } else {
                    "False"
                }
            )]["per_class"];
            for (c, (&a, b)) in r.dice.iter().zip(nums(monai)).enumerate() {
                assert!(
                    a.is_nan() == b.is_nan() && (a.is_nan() || (a - b).abs() < 1e-6),
                    "{what} monai class {c}"
                );
            }
            // The hard-label path (CLI --pred) gives the same counts.
            let pred = case.p.map_axis(ndarray::Axis(0), |v| {
                let mut best = 0;
                for (i, &x) in v.iter().enumerate() {
                    if x > v[best] {
                        best = i;
                    }
                }
                best as u16
            });
            let mut ov2 = Overlap::new(cfg).unwrap();
            ov2.update_labels(pred.view(), case.y.view(), k).unwrap();
            let r2 = ov2.finish().unwrap();
            assert_eq!(
                (&r2.tp, &r2.fp, &r2.fn_),
                (&r.tp, &r.fp, &r.fn_),
                "{what} via labels"
            );
            assert_same(&r2.dice, &r.dice, &what);
            assert_same(&r2.iou, &r.iou, &what);
        }
    }
}

#[test]
fn evaluator_one_pass_equals_the_separate_accumulators() {
    for case in cases() {
        for conv in [
            EdgeConvention::LeftClosed,
            EdgeConvention::RightClosed,
            EdgeConvention::Torchmetrics,
        ] {
            let cfg = MetricConfig::default().bins(15).edges(conv);
            let mut ev = Evaluator::new(cfg.clone()).unwrap();
            ev.update(case.p.view(), case.y.view()).unwrap();
            let r = ev.finish().unwrap();
            let t = top(&case, cfg.clone());
            assert_eq!(
                (r.ece, r.mce, r.rmsce, r.ace),
                (t.ece, t.mce, t.rmsce, t.ace)
            );
            assert_eq!(r.reliability.len(), t.reliability.len());
            let mut cw = ClasswiseCalibration::new(cfg.clone()).unwrap();
            cw.update(case.p.view(), case.y.view()).unwrap();
            let cw = cw.finish().unwrap();
            assert_eq!(r.cece, cw.cece);
            assert_close(
                r.accuracy,
                num(&case.r["top_label"]["accuracy"]),
                &case.name,
            );
            assert_close(
                r.mean_confidence,
                num(&case.r["top_label"]["mean_conf"]),
                &case.name,
            );
            assert_eq!(r.tp, ints(&case.r["dice"]["numpy"]["tp"]));
            assert!(r.brier.is_finite() && r.nll.is_finite());
        }
    }
}

#[test]
fn f64_input_bins_like_f32_input() {
    for case in cases() {
        let p64 = case.p.mapv(f64::from);
        for conv in [
            EdgeConvention::LeftClosed,
            EdgeConvention::RightClosed,
            EdgeConvention::Torchmetrics,
        ] {
            let cfg = MetricConfig::default().bins(15).edges(conv);
            let mut a = Evaluator::new(cfg.clone()).unwrap();
            a.update(case.p.view(), case.y.view()).unwrap();
            let mut b = Evaluator::new(cfg).unwrap();
            b.update(p64.view(), case.y.view()).unwrap();
            let (a, b) = (a.finish().unwrap(), b.finish().unwrap());
            assert_eq!(
                a.reliability.iter().map(|x| x.count).collect::<Vec<_>>(),
                b.reliability.iter().map(|x| x.count).collect::<Vec<_>>()
            );
            assert_eq!(
                (a.ece, a.cece, a.brier),
                (b.ece, b.cece, b.brier),
                "{}",
                case.name
            );
            assert_same(&a.dice, &b.dice, &case.name);
            assert_close(a.nll, b.nll, &case.name);
        }
    }
}

/// torchmetrics' confidence 0 (`edges.rs` docs): torchmetrics 1.9's own per-class
/// `binary_calibration_error` on `conf_one_c3`, whose class probabilities are often exactly
/// 0.0 (and 1.0), equals the `Torchmetrics` convention to float32 precision — 0.0 counted in
/// bin 0 (no index −1) — while the right-closed bins, where 0.0 falls in no bin, differ.
#[test]
fn torchmetrics_counts_confidence_zero_in_bin_zero() {
    let case = cases()
        .into_iter()
        .find(|c| c.name == "conf_one_c3")
        .unwrap();
    assert!(case.p.iter().filter(|&&v| v == 0.0).count() >= 4);
    for nb in BINS {
        let cb = &case.r["cece"][format!("n_bins={nb}")];
        let tm = nums(&cb["torchmetrics_binary_per_class"]["per_class"]);
        let per = |conv| {
            let mut acc =
                ClasswiseCalibration::new(MetricConfig::default().bins(nb).edges(conv)).unwrap();
            acc.update(case.p.view(), case.y.view()).unwrap();
            acc.finish()
                .unwrap()
                .per_class
                .iter()
                .map(|c| c.ece)
                .collect::<Vec<f64>>()
        };
        let got = per(EdgeConvention::Torchmetrics);
        let right = per(EdgeConvention::RightClosed);
        for c in 0..tm.len() {
            assert!(
                (got[c] - tm[c]).abs() < 1e-6,
                "bins {nb} class {c}: {} vs {}",
                got[c],
                tm[c]
            );
        }
        assert!(
            (0..tm.len()).any(|c| (right[c] - tm[c]).abs() > 1e-3),
            "bins {nb}: the zeros must matter"
        );
    }
}
