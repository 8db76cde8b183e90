//! Behaviour of the accumulators beyond the reference cases: exactness on large inputs,
//! merging, input modes, regions, element types, and every error.

use calseg_metrics::{
    CeceClasses, ClasswiseCalibration, EdgeConvention, EmptyDice, Evaluator, Input, InputMode,
    MetricConfig, MetricsError, Overlap, ProperScores, Region, Report, TopLabelCalibration,
    evaluate, macro_average, nanmean,
};
use ndarray::{Array, Array1, Array2, Array3, ArrayD, Axis, IxDyn, array, s};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// Random probabilities `(k, d0, d1)` (softmax of scaled normals) and labels drawn from a
/// softer version of them, so the model is over-confident.
fn random_case(k: usize, d0: usize, d1: usize, seed: u64) -> (Array3<f32>, Array2<u8>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut p = Array3::<f32>::zeros((k, d0, d1));
    let mut y = Array2::<u8>::zeros((d0, d1));
    for i in 0..d0 {
        for j in 0..d1 {
            let z: Vec<f64> = (0..k).map(|_| rng.random::<f64>() * 6.0).collect();
            let m = z.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
            let s: f64 = e.iter().sum();
            for c in 0..k {
                p[[c, i, j]] = (e[c] / s) as f32;
            }
            let soft: Vec<f64> = z.iter().map(|v| (0.6 * (v - m)).exp()).collect();
            let t: f64 = soft.iter().sum();
            let mut u = rng.random::<f64>() * t;
            let mut lab = k - 1;
            for (c, w) in soft.iter().enumerate() {
                if u < *w {
                    lab = c;
                    break;
                }
                u -= w;
            }
            y[[i, j]] = lab as u8;
        }
    }
    (p, y)
}

/// Exact equality of two reports, NaN equal to NaN (Debug prints every f64 exactly).
#[track_caller]
fn assert_same(a: &Report, b: &Report) {
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
}

fn counts(r: &Report) -> Vec<u64> {
    r.reliability.iter().map(|b| b.count).collect()
}

#[test]
fn ece_of_ten_million_identical_voxels_is_exact() {
    let n = 10_000_000;
    let mut p = Array2::<f32>::zeros((2, n));
    p.row_mut(0).fill(0.95);
    p.row_mut(1).fill(0.05);
    let y = Array1::<u8>::zeros(n);
    let mut acc = TopLabelCalibration::new(MetricConfig::default()).unwrap();
    acc.update(p.view(), y.view()).unwrap();
    let c = acc.finish().unwrap();
    let want = 1.0 - f64::from(0.95f32); // 0.05000001192092896
    assert!((c.ece - want).abs() < 1e-12, "{:e}", c.ece - want);
    assert!((c.mce - want).abs() < 1e-12);
    assert_eq!(c.n_voxels, n as u64);
    assert_eq!(c.reliability[14].count, n as u64);
}

#[test]
fn merging_shards_equals_one_pass() {
    let (p, y) = random_case(4, 90, 70, 11);
    for conv in [
        EdgeConvention::LeftClosed,
        EdgeConvention::RightClosed,
        EdgeConvention::Torchmetrics,
    ] {
        let cfg = MetricConfig::default()
            .edges(conv)
            .region(Region::Foreground);
        let mut one = Evaluator::new(cfg.clone()).unwrap();
        one.update(p.view(), y.view()).unwrap();
        let one = one.finish().unwrap();
        // Shards of unequal size (rows), each on its own evaluator, merged in another order.
        let cuts = [0, 7, 40, 41, 90];
        let mut shards: Vec<Evaluator> = cuts
            .windows(2)
            .map(|w| {
                let mut e = Evaluator::new(cfg.clone()).unwrap();
                e.update(p.slice(s![.., w[0]..w[1], ..]), y.slice(s![w[0]..w[1], ..]))
                    .unwrap();
                e
            })
            .collect();
        let mut merged = shards.pop().unwrap();
        for sh in shards.iter().rev() {
            merged.merge(sh).unwrap();
        }
        // An empty evaluator merges as a no-op.
        merged.merge(&Evaluator::new(cfg.clone()).unwrap()).unwrap();
        let m = merged.finish().unwrap();
        assert_eq!(counts(&m), counts(&one));
        assert_eq!((m.n_voxels, m.n_total), (one.n_voxels, one.n_total));
        assert_eq!((&m.tp, &m.fp, &m.fn_), (&one.tp, &one.fp, &one.fn_));
        for (a, b) in [
            (m.ece, one.ece),
            (m.mce, one.mce),
            (m.rmsce, one.rmsce),
            (m.ace, one.ace),
            (m.cece, one.cece),
            (m.brier, one.brier),
            (m.nll, one.nll),
            (m.mean_confidence, one.mean_confidence),
        ] {
            assert!((a - b).abs() <= 1e-12, "{a} vs {b}");
        }
        for (a, b) in m.reliability.iter().zip(&one.reliability) {
            assert!(
                a.confidence.is_nan() && b.confidence.is_nan()
                    || (a.confidence - b.confidence).abs() < 1e-12
            );
        }
    }
}

#[test]
fn several_updates_equal_one_update() {
    let (p, y) = random_case(3, 40, 30, 5);
    let cfg = MetricConfig::default();
    let mut a = TopLabelCalibration::new(cfg.clone()).unwrap();
    a.update(p.view(), y.view()).unwrap();
    let mut b = TopLabelCalibration::new(cfg).unwrap();
    for i in 0..40 {
        b.update(p.index_axis(Axis(1), i), y.index_axis(Axis(0), i))
            .unwrap();
    }
    assert_eq!(b.n_seen(), 1200);
    let (a, b) = (a.finish().unwrap(), b.finish().unwrap());
    assert_eq!(
        a.reliability.iter().map(|r| r.count).collect::<Vec<_>>(),
        b.reliability.iter().map(|r| r.count).collect::<Vec<_>>()
    );
    assert!((a.ece - b.ece).abs() < 1e-12);
}

#[test]
fn label_and_mask_types_and_f64_give_the_same_result() {
    let (p, y) = random_case(3, 20, 20, 3);
    let cfg = MetricConfig::default().region(Region::Mask);
    let mask_b = Array2::from_shape_fn((20, 20), |(i, j)| (i + j) % 3 != 0);
    let run = |r: Result<Report, MetricsError>| r.unwrap();
    let ev = |input: Input<'_, f32>| {
        let mut e = Evaluator::new(cfg.clone()).unwrap();
        e.update_input(&input).unwrap();
        e.finish()
    };
    let base = run(ev(Input::new(p.view(), y.view())
        .unwrap()
        .with_mask(mask_b.view())
        .unwrap()));
    let mask_u8 = mask_b.mapv(u8::from);
    let y16 = y.mapv(u16::from);
    let y32 = y.mapv(i32::from);
    let y64 = y.mapv(i64::from);
    let yus = y.mapv(usize::from);
    for r in [
        run(ev(Input::new(p.view(), y.view())
            .unwrap()
            .with_mask(mask_u8.view())
            .unwrap())),
        run(ev(Input::new(p.view(), y16.view())
            .unwrap()
            .with_mask(mask_b.view())
            .unwrap())),
        run(ev(Input::new(p.view(), y32.view())
            .unwrap()
            .with_mask(mask_b.view())
            .unwrap())),
        run(ev(Input::new(p.view(), y64.view())
            .unwrap()
            .with_mask(mask_b.view())
            .unwrap())),
        run(ev(Input::new(p.view(), yus.view())
            .unwrap()
            .with_mask(mask_b.view())
            .unwrap())),
    ] {
        assert_same(&r, &base);
    }
    let p64 = p.mapv(f64::from);
    let mut e = Evaluator::new(cfg.clone()).unwrap();
    e.update_input(
        &Input::new(p64.view(), y.view())
            .unwrap()
            .with_mask(mask_b.view())
            .unwrap(),
    )
    .unwrap();
    let r = e.finish().unwrap();
    assert_eq!(counts(&r), counts(&base));
    assert!((r.ece - base.ece).abs() < 1e-15 && (r.nll - base.nll).abs() < 1e-14);
    // dynamic-dimension views too
    let pd: ArrayD<f32> = p.clone().into_dyn();
    let yd: ArrayD<u8> = y.clone().into_dyn();
    let md = mask_b.clone().into_dyn();
    assert_same(
        &run(ev(Input::new(pd.view(), yd.view())
            .unwrap()
            .with_mask(md.view())
            .unwrap())),
        &base,
    );
}

#[test]
fn regions_restrict_calibration_but_not_dice() {
    let (p, y) = random_case(3, 30, 30, 8);
    let fg_cfg = MetricConfig::default().region(Region::Foreground);
    let r_fg = evaluate(p.view(), y.view(), &fg_cfg).unwrap();
    // Same calibration as scoring only the foreground voxels.
    let keep: Vec<usize> = (0..900).filter(|&i| y[[i / 30, i % 30]] != 0).collect();
    let pk = Array2::from_shape_fn((3, keep.len()), |(c, j)| p[[c, keep[j] / 30, keep[j] % 30]]);
    let yk = Array1::from_shape_fn(keep.len(), |j| y[[keep[j] / 30, keep[j] % 30]]);
    let r_sub = evaluate(pk.view(), yk.view(), &MetricConfig::default()).unwrap();
    assert_eq!(r_fg.n_voxels, keep.len() as u64);
    assert_eq!(counts(&r_fg), counts(&r_sub));
    for (a, b) in [
        (r_fg.ece, r_sub.ece),
        (r_fg.cece, r_sub.cece),
        (r_fg.brier, r_sub.brier),
        (r_fg.nll, r_sub.nll),
    ] {
        assert!((a - b).abs() < 1e-12, "{a} {b}");
    }
    // Dice is over every voxel either way.
    let r_all = evaluate(p.view(), y.view(), &MetricConfig::default()).unwrap();
    assert_eq!(
        (r_fg.n_total, &r_fg.tp, &r_fg.fp),
        (900, &r_all.tp, &r_all.fp)
    );
    // A different background class.
    let r_bg2 = evaluate(p.view(), y.view(), &fg_cfg.clone().background(Some(2))).unwrap();
    assert_eq!(r_bg2.n_voxels, y.iter().filter(|&&l| l != 2).count() as u64);
    // No voxel in the region: calibration NaN, Dice still there.
    let zeros = Array2::<u8>::zeros((30, 30));
    let r0 = evaluate(p.view(), zeros.view(), &fg_cfg).unwrap();
    assert_eq!(r0.n_voxels, 0);
    assert!(r0.ece.is_nan() && r0.brier.is_nan() && r0.cece.is_nan());
    assert!(!r0.dice[0].is_nan());
}

#[test]
fn input_modes_renormalise_and_logits() {
    let (p, y) = random_case(3, 16, 16, 4);
    let base = evaluate(p.view(), y.view(), &MetricConfig::default()).unwrap();
    // Scaled scores renormalise to (about) the same probabilities.
    let scaled = p.mapv(|v| v * 7.0);
    assert!(matches!(
        evaluate(scaled.view(), y.view(), &MetricConfig::default()),
        Err(MetricsError::NotNormalised { .. }) | Err(MetricsError::ProbabilityOutOfRange { .. })
    ));
    let rn = evaluate(
        scaled.view(),
        y.view(),
        &MetricConfig::default().input(InputMode::Renormalise),
    )
    .unwrap();
    assert_eq!(rn.tp, base.tp);
    assert!((rn.ece - base.ece).abs() < 1e-6 && (rn.nll - base.nll).abs() < 1e-6);
    // Logits: the softmax is computed in f64 and rounded to f32, exactly like this.
    let logits = p.mapv(|v| v.ln() + 3.0);
    let mut sm = Array3::<f32>::zeros(p.raw_dim());
    for i in 0..16 {
        for j in 0..16 {
            let l: Vec<f64> = (0..3).map(|c| f64::from(logits[[c, i, j]])).collect();
            let m = l.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = l.iter().map(|v| (v - m).exp()).collect();
            let s: f64 = e.iter().sum();
            for c in 0..3 {
                sm[[c, i, j]] = (e[c] / s) as f32;
            }
        }
    }
    let rl = evaluate(
        logits.view(),
        y.view(),
        &MetricConfig::default().input(InputMode::Logits),
    )
    .unwrap();
    let rs = evaluate(sm.view(), y.view(), &MetricConfig::default()).unwrap();
    assert_same(&rl, &rs);
    // A looser tolerance accepts what a tighter one rejects.
    let mut off = p.clone();
    off[[0, 0, 0]] += 0.004;
    assert!(evaluate(off.view(), y.view(), &MetricConfig::default()).is_err());
    let loose = MetricConfig::default().input(InputMode::Probabilities { tol: 0.01 });
    assert!(evaluate(off.view(), y.view(), &loose).is_ok());
}

#[test]
fn proper_scores_known_values_and_floor() {
    // p_y = 0 is clamped at the floor: −ln(1e-12).
    let p = array![[0.0f32, 0.5], [1.0, 0.5]];
    let y = array![0u8, 1];
    let mut sc = ProperScores::new(MetricConfig::default()).unwrap();
    sc.update(p.view(), y.view()).unwrap();
    let s = sc.finish().unwrap();
    assert!((s.nll - (-(1e-12f64.ln()) - 0.5f64.ln()) / 2.0).abs() < 1e-12);
    assert!((s.brier - (2.0 + 0.5) / 2.0).abs() < 1e-15);
    let mut sc = ProperScores::new(MetricConfig::default().nll_floor(1e-3)).unwrap();
    sc.update(p.view(), y.view()).unwrap();
    assert!((sc.finish().unwrap().nll - (-(1e-3f64.ln()) - 0.5f64.ln()) / 2.0).abs() < 1e-12);
}

#[test]
fn nll_and_brier_match_direct_sums_on_a_large_case() {
    let (p, y) = random_case(5, 300, 200, 21);
    let mut acc = ProperScores::new(MetricConfig::default()).unwrap();
    acc.update(p.view(), y.view()).unwrap();
    let s = acc.finish().unwrap();
    let (mut nll, mut brier) = (0.0f64, 0.0f64);
    for ((i, j), &l) in y.indexed_iter() {
        nll -= f64::from(p[[l as usize, i, j]]).max(1e-12).ln();
        for c in 0..5 {
            let d = f64::from(p[[c, i, j]]) - if c == l as usize { 1.0 } else { 0.0 };
            brier += d * d;
        }
    }
    let n = y.len() as f64;
    assert!((s.nll - nll / n).abs() < 1e-13, "{} {}", s.nll, nll / n);
    assert!((s.brier - brier / n).abs() < 1e-13);
}

#[test]
fn right_closed_zero_counts_in_n_but_in_no_bin() {
    // One voxel with p_1 = 0 exactly: class-wise, class 1 has a 0.0 that no bin holds.
    let p = array![[1.0f32, 0.6], [0.0, 0.4]];
    let y = array![0u8, 1];
    let cfg = MetricConfig::default()
        .bins(10)
        .edges(EdgeConvention::RightClosed);
    let mut cw = ClasswiseCalibration::new(cfg).unwrap();
    cw.update(p.view(), y.view()).unwrap();
    let r = cw.finish().unwrap();
    let c1 = &r.per_class[1];
    assert_eq!((c1.n_voxels, c1.n_binned), (2, 1));
    // bin (0.3, 0.4]: p = 0.4, hit: |1 − 0.4| · 1/2
    assert!((c1.ece - 0.3).abs() < 1e-7);
    // the torchmetrics convention puts p_0 = 1.0 of voxel 0 in the extra bin
    let mut t = TopLabelCalibration::new(
        MetricConfig::default()
            .bins(10)
            .edges(EdgeConvention::Torchmetrics),
    )
    .unwrap();
    t.update(p.view(), y.view()).unwrap();
    let t = t.finish().unwrap();
    assert_eq!(t.reliability.len(), 11);
    assert_eq!((t.reliability[10].count, t.reliability[10].lower), (1, 1.0));
}

#[test]
fn cece_up_to_max_label() {
    let (p, mut y) = random_case(5, 10, 10, 2);
    y.mapv_inplace(|l| l.min(2)); // labels 0..=2 only
    let cfg = MetricConfig::default().cece_classes(CeceClasses::UpToMaxLabel);
    let mut cw = ClasswiseCalibration::new(cfg).unwrap();
    cw.update(p.view(), y.view()).unwrap();
    let r = cw.finish().unwrap();
    assert_eq!(r.classes, vec![0, 1, 2]);
    assert_eq!(r.per_class.len(), 5);
    let want = (0..3).map(|c| r.per_class[c].ece).sum::<f64>() / 3.0;
    assert!((r.cece - want).abs() < 1e-15);
}

#[test]
fn hard_prediction_replaces_argmax_for_dice_only() {
    let (p, y) = random_case(3, 12, 12, 6);
    let pred = y.clone(); // a perfect segmentation
    let mut ev = Evaluator::new(MetricConfig::default()).unwrap();
    ev.update_input(
        &Input::new(p.view(), y.view())
            .unwrap()
            .with_pred(pred.view())
            .unwrap(),
    )
    .unwrap();
    let r = ev.finish().unwrap();
    let plain = evaluate(p.view(), y.view(), &MetricConfig::default()).unwrap();
    assert!(r.dice.iter().all(|&d| d == 1.0));
    assert_eq!(r.ece, plain.ece);
    assert_eq!(r.fp, vec![0, 0, 0]);
}

#[test]
fn macro_average_is_the_mean_of_cases() {
    let cfg = MetricConfig::default().empty_dice(EmptyDice::Nan);
    let reports: Vec<Report> = (0..3)
        .map(|s| {
            let (p, mut y) = random_case(3, 10, 10, 30 + s);
            if s == 0 {
                y.mapv_inplace(|l| l.min(1)); // class 2 absent: Dice NaN in this case
            }
            evaluate(p.view(), y.view(), &cfg).unwrap()
        })
        .collect();
    let m = macro_average(&reports).unwrap();
    assert_eq!(m.n_cases, 3);
    assert!((m.ece - reports.iter().map(|r| r.ece).sum::<f64>() / 3.0).abs() < 1e-15);
    assert!(reports[0].dice[2].is_nan());
    assert!((m.dice[2] - (reports[1].dice[2] + reports[2].dice[2]) / 2.0).abs() < 1e-15);
    assert_eq!(
        m.dice_mean_fg,
        nanmean(reports.iter().map(|r| r.dice_mean_fg))
    );
    assert!(matches!(
        macro_average(&[]),
        Err(MetricsError::Empty { .. })
    ));
    let (p4, y4) = random_case(4, 3, 3, 1);
    let other = evaluate(p4.view(), y4.view(), &cfg).unwrap();
    assert!(matches!(
        macro_average(&[reports[0].clone(), other]),
        Err(MetricsError::ClassCountMismatch {
            expected: 3,
            got: 4
        })
    ));
}

#[test]
fn zero_dimensional_spatial_shape_is_one_voxel() {
    let p = array![0.2f32, 0.7, 0.1];
    let y = ndarray::arr0(1u8);
    let r = evaluate(p.view(), y.view(), &MetricConfig::default().bins(10)).unwrap();
    assert_eq!(r.n_voxels, 1);
    assert!((r.ece - (1.0 - f64::from(0.7f32))).abs() < 1e-12);
}

// ------------------------------------------------------------------------ errors

fn err(r: Result<Report, MetricsError>) -> MetricsError {
    r.expect_err("expected an error")
}

#[test]
fn every_input_error_is_typed() {
    let cfg = MetricConfig::default();
    let p = Array3::from_elem((2, 2, 3), 0.5f32);
    let y = Array2::<u8>::zeros((2, 3));
    // shape mismatches
    let y_bad = Array2::<u8>::zeros((3, 2));
    assert!(matches!(
        err(evaluate(p.view(), y_bad.view(), &cfg)),
        MetricsError::ShapeMismatch { what: "labels", .. }
    ));
    let m_bad = Array2::from_elem((2, 2), true);
    assert!(matches!(
        Input::new(p.view(), y.view())
            .unwrap()
            .with_mask(m_bad.view())
            .unwrap_err(),
        MetricsError::ShapeMismatch { what: "mask", .. }
    ));
    assert!(matches!(
        Input::new(p.view(), y.view())
            .unwrap()
            .with_pred(y_bad.view())
            .unwrap_err(),
        MetricsError::ShapeMismatch { what: "pred", .. }
    ));
    // K < 2
    let p1 = Array3::from_elem((1, 2, 3), 1.0f32);
    assert_eq!(
        err(evaluate(p1.view(), y.view(), &cfg)),
        MetricsError::TooFewClasses { n_classes: 1 }
    );
    let p0 = ndarray::arr0(1.0f32);
    assert!(matches!(
        err(evaluate(p0.view(), ndarray::arr0(0u8).view(), &cfg)),
        MetricsError::TooFewClasses { n_classes: 0 }
    ));
    // labels out of range, negative, and in the prediction
    let mut y2 = y.clone();
    y2[[1, 2]] = 2;
    match err(evaluate(p.view(), y2.view(), &cfg)) {
        MetricsError::LabelOutOfRange {
            what,
            index,
            label,
            n_classes,
        } => {
            assert_eq!(
                (what, index, label, n_classes),
                ("labels", vec![1, 2], 2, 2)
            );
        }
        e => panic!("{e}"),
    }
    let yneg = Array2::from_shape_fn((2, 3), |(i, j)| if (i, j) == (0, 1) { -1i32 } else { 0 });
    assert!(matches!(
        err(evaluate(p.view(), yneg.view(), &cfg)),
        MetricsError::LabelOutOfRange { label: -1, .. }
    ));
    let mut ev = Evaluator::new(cfg.clone()).unwrap();
    let e = ev
        .update_input(
            &Input::new(p.view(), y.view())
                .unwrap()
                .with_pred(y2.view())
                .unwrap(),
        )
        .unwrap_err();
    assert!(matches!(
        e,
        MetricsError::LabelOutOfRange { what: "pred", .. }
    ));
    // non-finite, out of [0, 1], not normalised
    let mut pn = p.clone();
    pn[[1, 1, 1]] = f32::NAN;
    assert!(matches!(
        err(evaluate(pn.view(), y.view(), &cfg)),
        MetricsError::NonFinite { class: 1, .. }
    ));
    pn[[1, 1, 1]] = f32::INFINITY;
    assert!(matches!(
        err(evaluate(pn.view(), y.view(), &cfg)),
        MetricsError::NonFinite { .. }
    ));
    let mut pr = p.clone();
    pr[[0, 0, 0]] = 1.5;
    pr[[1, 0, 0]] = -0.5;
    match err(evaluate(pr.view(), y.view(), &cfg)) {
        MetricsError::ProbabilityOutOfRange {
            index,
            class,
            value,
        } => assert_eq!((index, class, value), (vec![0, 0], 0, 1.5)),
        e => panic!("{e}"),
    }
    let mut ps = p.clone();
    ps[[0, 1, 0]] = 0.4;
    match err(evaluate(ps.view(), y.view(), &cfg)) {
        e @ MetricsError::NotNormalised { .. } => {
            let msg = e.to_string();
            assert!(
                msg.contains("[1, 0]") && msg.contains("Renormalise"),
                "{msg}"
            );
        }
        e => panic!("{e}"),
    }
    // renormalise: all-zero voxel; negative value
    let mut pz = p.clone();
    pz[[0, 1, 1]] = 0.0;
    pz[[1, 1, 1]] = 0.0;
    let rn = cfg.clone().input(InputMode::Renormalise);
    assert_eq!(
        err(evaluate(pz.view(), y.view(), &rn)),
        MetricsError::ZeroSum { index: vec![1, 1] }
    );
    pz[[1, 1, 1]] = -1.0;
    assert!(matches!(
        err(evaluate(pz.view(), y.view(), &rn)),
        MetricsError::ProbabilityOutOfRange { .. }
    ));
    // logits: non-finite
    let mut pl = p.clone();
    pl[[0, 0, 2]] = f32::NEG_INFINITY;
    assert!(matches!(
        err(evaluate(
            pl.view(),
            y.view(),
            &cfg.clone().input(InputMode::Logits)
        )),
        MetricsError::NonFinite { .. }
    ));
    // background class not below K
    assert!(matches!(
        err(evaluate(
            p.view(),
            y.view(),
            &cfg.clone().background(Some(5))
        )),
        MetricsError::InvalidConfig(_)
    ));
}

#[test]
fn errors_leave_the_accumulator_unchanged() {
    let (p, y) = random_case(3, 8, 8, 1);
    let mut ev = Evaluator::new(MetricConfig::default()).unwrap();
    ev.update(p.view(), y.view()).unwrap();
    let before = ev.finish().unwrap();
    let mut bad = p.clone();
    bad[[0, 7, 7]] = f32::NAN; // last voxel: everything before it was processed
    assert!(ev.update(bad.view(), y.view()).is_err());
    assert_same(&ev.finish().unwrap(), &before);
}

#[test]
fn state_and_configuration_errors() {
    let cfg = MetricConfig::default();
    // nothing accumulated
    assert!(matches!(
        Evaluator::new(cfg.clone()).unwrap().finish(),
        Err(MetricsError::Empty { .. })
    ));
    assert!(matches!(
        TopLabelCalibration::new(cfg.clone()).unwrap().finish(),
        Err(MetricsError::Empty { .. })
    ));
    assert!(matches!(
        ClasswiseCalibration::new(cfg.clone()).unwrap().finish(),
        Err(MetricsError::Empty { .. })
    ));
    assert!(matches!(
        ProperScores::new(cfg.clone()).unwrap().finish(),
        Err(MetricsError::Empty { .. })
    ));
    assert!(matches!(
        Overlap::new(cfg.clone()).unwrap().finish(),
        Err(MetricsError::Empty { .. })
    ));
    // empty spatial shape
    let pe = Array3::<f32>::zeros((2, 0, 4));
    let ye = Array2::<u8>::zeros((0, 4));
    let mut t = TopLabelCalibration::new(cfg.clone()).unwrap();
    t.update(pe.view(), ye.view()).unwrap();
    assert!(matches!(t.finish(), Err(MetricsError::Empty { .. })));
    // invalid configuration
    assert!(matches!(
        Evaluator::new(cfg.clone().bins(0)),
        Err(MetricsError::InvalidConfig(_))
    ));
    // class count change, merge with other K or config
    let (p3, y3) = random_case(3, 4, 4, 1);
    let (p4, y4) = random_case(4, 4, 4, 1);
    let mut a = Evaluator::new(cfg.clone()).unwrap();
    a.update(p3.view(), y3.view()).unwrap();
    assert_eq!(
        a.update(p4.view(), y4.view()).unwrap_err(),
        MetricsError::ClassCountMismatch {
            expected: 3,
            got: 4
        }
    );
    let mut b = Evaluator::new(cfg.clone()).unwrap();
    b.update(p4.view(), y4.view()).unwrap();
    assert!(matches!(
        a.merge(&b),
        Err(MetricsError::ClassCountMismatch { .. })
    ));
    let c = Evaluator::new(cfg.clone().bins(10)).unwrap();
    assert!(matches!(
        a.merge(&c),
        Err(MetricsError::ConfigMismatch { .. })
    ));
    // masks: required by Region::Mask, refused otherwise
    let mask = Array2::from_elem((4, 4), 1u8);
    let mut m = Evaluator::new(cfg.clone().region(Region::Mask)).unwrap();
    assert_eq!(
        m.update(p3.view(), y3.view()).unwrap_err(),
        MetricsError::MissingMask
    );
    let mut nm = Evaluator::new(cfg.clone()).unwrap();
    let e = nm
        .update_input(
            &Input::new(p3.view(), y3.view())
                .unwrap()
                .with_mask(mask.view())
                .unwrap(),
        )
        .unwrap_err();
    assert!(matches!(e, MetricsError::UnexpectedMask { .. }));
    // a hard prediction where no overlap is computed
    let mut tl = TopLabelCalibration::new(cfg.clone()).unwrap();
    let e = tl
        .update_input(
            &Input::new(p3.view(), y3.view())
                .unwrap()
                .with_pred(y3.view())
                .unwrap(),
        )
        .unwrap_err();
    assert!(matches!(e, MetricsError::Invalid(_)));
    // label-only overlap: K < 2 and out of range
    let mut ov = Overlap::new(cfg.clone()).unwrap();
    assert!(matches!(
        ov.update_labels(y3.view(), y3.view(), 1),
        Err(MetricsError::TooFewClasses { .. })
    ));
    assert!(matches!(
        ov.update_labels(y3.view(), y3.view(), 2),
        Err(MetricsError::LabelOutOfRange { .. })
    ));
    let yd: ArrayD<u8> = Array::zeros(IxDyn(&[4, 4]));
    ov.update_labels(yd.view(), y3.view(), 3).unwrap();
    assert_eq!(ov.finish().unwrap().n_voxels, 16);
}

/// Many classes (the per-run overlap counts): the Dice of the argmax of 24 classes and of a
/// hard 130-class map equal plain per-voxel counts, whatever the chunking.
#[test]
fn overlap_with_many_classes_equals_plain_counts() {
    fn plain_dice(pred: &[u32], truth: &[u32], k: usize) -> Vec<f64> {
        let (mut i, mut a, mut b) = (vec![0u64; k], vec![0u64; k], vec![0u64; k]);
        for (&p, &t) in pred.iter().zip(truth) {
            a[p as usize] += 1;
            b[t as usize] += 1;
            i[p as usize] += u64::from(p == t);
        }
        (0..k)
            .map(|c| {
                if b[c] == 0 {
                    f64::NAN
                } else {
                    2.0 * i[c] as f64 / (a[c] + b[c]) as f64
                }
            })
            .collect()
    }
    let same = |got: &[f64], want: &[f64]| {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g.is_nan() && w.is_nan()) || g == w, "{g} vs {w}");
        }
    };
    // Probabilities with 24 classes: Dice of the argmax.
    let (p, y) = random_case(24, 70, 90, 5);
    let r = evaluate(p.view(), y.view(), &MetricConfig::default()).unwrap();
    let arg = calseg_metrics::argmax(p.view().into_dyn());
    let truth: Vec<u32> = y.iter().map(|&v| u32::from(v)).collect();
    same(&r.dice, &plain_dice(arg.as_slice().unwrap(), &truth, 24));
    // Hard maps with runs, 130 classes, one of them only predicted.
    let mut rng = StdRng::seed_from_u64(9);
    let truth: Vec<u32> = (0..150_000).map(|i| ((i / 37) % 128) as u32).collect();
    let pred: Vec<u32> = truth
        .iter()
        .map(|&t| match rng.random_range(0..10) {
            0 => rng.random_range(0..130),
            1 => 129,
            _ => t,
        })
        .collect();
    let (pa, ta) = (Array1::from(pred.clone()), Array1::from(truth.clone()));
    let r =
        calseg_metrics::hard_overlap(pa.view(), ta.view(), None, &MetricConfig::default()).unwrap();
    same(&r.dice, &plain_dice(&pred, &truth, 130));
    assert!(r.dice[128].is_nan() && r.dice[129].is_nan());
}

#[test]
fn hard_overlap_errors_are_typed() {
    let cfg = MetricConfig::default();
    let a = array![[0i32, 1], [2, 3]];
    let b = array![0u8, 1, 2, 3];
    assert!(matches!(
        calseg_metrics::hard_overlap(a.view(), b.view(), None, &cfg),
        Err(MetricsError::ShapeMismatch { .. })
    ));
    let neg = array![[0i32, -1], [2, 3]];
    let ok = array![[0u8, 1], [2, 3]];
    assert!(matches!(
        calseg_metrics::hard_overlap(neg.view(), ok.view(), None, &cfg),
        Err(MetricsError::LabelOutOfRange {
            what: "pred",
            label: -1,
            ..
        })
    ));
    let huge = array![[0u32, 70_000], [2, 3]];
    assert!(matches!(
        calseg_metrics::hard_overlap(ok.view(), huge.view(), None, &cfg),
        Err(MetricsError::LabelOutOfRange {
            what: "labels",
            label: 70_000,
            ..
        })
    ));
    for k in [0, 1, calseg_metrics::MAX_HARD_CLASSES + 1] {
        assert!(matches!(
            calseg_metrics::hard_overlap(ok.view(), ok.view(), Some(k), &cfg),
            Err(MetricsError::InvalidConfig(_))
        ));
    }
    assert!(matches!(
        calseg_metrics::hard_overlap(ok.view(), ok.view(), Some(3), &cfg),
        Err(MetricsError::LabelOutOfRange { n_classes: 3, .. })
    ));
    // Two empty masks: K = 2, background perfect, class 1 absent.
    let zeros = Array2::<u8>::zeros((3, 3));
    let r = calseg_metrics::hard_overlap(zeros.view(), zeros.view(), None, &cfg).unwrap();
    assert_eq!(r.dice[0], 1.0);
    assert!(r.dice[1].is_nan() && r.dice_mean_fg.is_nan());
    let none = Array1::<u8>::zeros(0);
    assert!(matches!(
        calseg_metrics::hard_overlap(none.view(), none.view(), None, &cfg),
        Err(MetricsError::Empty { .. })
    ));
}
