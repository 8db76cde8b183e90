//! MONAI's calibration conventions (`monai.metrics.CalibrationErrorMetric`, MONAI 1.6):
//! `MetricConfig::monai()` + `MonaiCalibration` against a reference written here from
//! MONAI's algorithm with plain loops in f64 — float32 edges `linspace(0, 1 + ε, n + 1)`,
//! `bucketize(p, edges[1:], right=False).clamp(max=n − 1)`, empty bins `NaN`, ECE as
//! `nansum(|Δ|·n_b) / Σ n_b`, average CE as `nanmean(|Δ|)`, MCE as the max over non-empty
//! bins, then MetricReduction "mean" (per image over channels, then over images, NaN
//! skipped) and "mean_batch" — on seeded random images with confidences 0, 1 and exactly
//! on (and one ulp beside) every edge, and on a tiny case computed by hand.

mod common;

use calseg_metrics::{EdgeConvention, Evaluator, MetricConfig, MonaiCalibration, Report};
use ndarray::{Array2, Array3, Axis};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// MONAI's edges as torch's float32 linspace computes them: `step = end / n` in float32,
/// `start + step·k` below the middle and `end − step·(n − k)` (one fused rounding) from it.
fn reference_edges(n: usize) -> Vec<f32> {
    let end = 1.0f32 + f32::EPSILON;
    let step = end / n as f32;
    (0..=n)
        .map(|k| {
            if k < n.div_ceil(2) {
                step * k as f32
            } else {
                (-step).mul_add((n - k) as f32, end)
            }
        })
        .collect()
}

/// Per-channel (ECE, MCE, average CE) of one image, MONAI's `calibration_binning` and
/// `_compute_tensor` written out: `probs` is `(K, N)` (float32, as MONAI casts), `labels`
/// `(N)`.
fn reference_image(probs: &Array2<f32>, labels: &[u8], n_bins: usize) -> Vec<[f64; 3]> {
    let edges = reference_edges(n_bins);
    let mut out = Vec::new();
    for (c, row) in probs.axis_iter(Axis(0)).enumerate() {
        let mut count = vec![0.0f64; n_bins];
        let mut sum_p = vec![0.0f64; n_bins];
        let mut sum_gt = vec![0.0f64; n_bins];
        for (&p, &y) in row.iter().zip(labels) {
            // bucketize(right=False) on edges[1:]: how many of them are < p.
            let mut b = 0;
            for &e in &edges[1..] {
                if e < p {
                    b += 1;
                }
            }
            let b = b.min(n_bins - 1);
            count[b] += 1.0;
            sum_p[b] += f64::from(p);
            sum_gt[b] += if usize::from(y) == c { 1.0 } else { 0.0 };
        }
        let mut abs_diff = vec![f64::NAN; n_bins];
        for b in 0..n_bins {
            if count[b] > 0.0 {
                abs_diff[b] = (sum_p[b] / count[b] - sum_gt[b] / count[b]).abs();
            }
        }
        let total: f64 = count.iter().sum();
        let mut weighted = 0.0;
        let (mut avg_sum, mut avg_n) = (0.0, 0.0);
        let mut max = f64::NEG_INFINITY;
        for b in 0..n_bins {
            if !abs_diff[b].is_nan() {
                weighted += abs_diff[b] * count[b];
                avg_sum += abs_diff[b];
                avg_n += 1.0;
                max = max.max(abs_diff[b]);
            }
        }
        let ece = if total == 0.0 {
            f64::NAN
        } else {
            weighted / total
        };
        let ace = if avg_n == 0.0 {
            f64::NAN
        } else {
            avg_sum / avg_n
        };
        let mce = if max == f64::NEG_INFINITY {
            f64::NAN
        } else {
            max
        };
        out.push([ece, mce, ace]);
    }
    out
}

/// MONAI's MetricReduction "mean" and "mean_batch" of an (image, channel) table of one
/// metric. (MONAI gives 0.0 where every value is NaN; never the case here.)
fn reference_reduce(table: &[Vec<f64>]) -> (f64, Vec<f64>) {
    let mut image_means = Vec::new();
    for row in table {
        let ok: Vec<f64> = row.iter().copied().filter(|v| !v.is_nan()).collect();
        if !ok.is_empty() {
            image_means.push(ok.iter().sum::<f64>() / ok.len() as f64);
        }
    }
    let mean = image_means.iter().sum::<f64>() / image_means.len() as f64;
    let per_channel = (0..table[0].len())
        .map(|c| {
            let ok: Vec<f64> = table.iter().map(|r| r[c]).filter(|v| !v.is_nan()).collect();
            ok.iter().sum::<f64>() / ok.len() as f64
        })
        .collect();
    (mean, per_channel)
}

fn report(probs: &Array2<f32>, labels: &[u8], config: &MetricConfig) -> Report {
    let y = ndarray::Array1::from(labels.to_vec());
    let mut ev = Evaluator::new(config.clone()).unwrap();
    ev.update(probs.view(), y.view()).unwrap();
    ev.finish().unwrap()
}

fn close(got: f64, want: f64, what: &str) {
    assert!(
        (got.is_nan() && want.is_nan()) || (got - want).abs() <= 1e-9,
        "{what}: got {got}, want {want}"
    );
}

/// A seeded image `(K, N)`: softmax of scaled random logits (over-confident), with voxels
/// set to one-hot (confidences 0 and 1), and for K = 2 voxels whose class-1 probability is
/// exactly an edge, one ulp below or above it (class 0 takes the rest).
fn random_image(rng: &mut StdRng, k: usize, n: usize, n_bins: usize) -> (Array2<f32>, Vec<u8>) {
    let edges = reference_edges(n_bins);
    let labels: Vec<u8> = (0..n).map(|_| rng.random_range(0..k as u8)).collect();
    let mut p = Array2::<f32>::zeros((k, n));
    for i in 0..n {
        let kind = rng.random_range(0..10);
        if kind == 0 {
            let hot = rng.random_range(0..k);
            p[[hot, i]] = 1.0;
        } else if kind <= 3 && k == 2 {
            let e = edges[rng.random_range(0..edges.len())].min(1.0);
            let x = match rng.random_range(0..3) {
                0 => e,
                1 if e > 0.0 => f32::from_bits(e.to_bits() - 1),
                _ if e < 1.0 => f32::from_bits(e.to_bits() + 1),
                _ => e,
            };
            p[[1, i]] = x;
            p[[0, i]] = 1.0 - x;
        } else {
            let scale = rng.random_range(0.5..6.0f64);
            let logits: Vec<f64> = (0..k)
                .map(|c| {
                    let bonus = if c == usize::from(labels[i]) {
                        1.5
                    } else {
                        0.0
                    };
                    scale * (rng.random::<f64>() + bonus)
                })
                .collect();
            let m = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = logits.iter().map(|l| (l - m).exp()).sum();
            for c in 0..k {
                p[[c, i]] = ((logits[c] - m).exp() / z) as f32;
            }
        }
    }
    (p, labels)
}

#[test]
fn preset_is_monai_defaults() {
    let m = MetricConfig::monai();
    assert_eq!(m.n_bins, 20);
    assert_eq!(m.edges, EdgeConvention::Monai);
    assert_eq!(m.region, calseg_metrics::Region::All);
    let e = calseg_metrics::BinEdges::new(20, EdgeConvention::Monai).unwrap();
    assert_eq!(e.edges(), reference_edges(20).as_slice());
    for n in [1, 2, 7, 10, 15, 20, 33, 100] {
        let e = calseg_metrics::BinEdges::new(n, EdgeConvention::Monai).unwrap();
        assert_eq!(e.edges(), reference_edges(n).as_slice(), "n = {n}");
    }
}

#[test]
fn seeded_images_agree_with_monai_formula_to_1e_9() {
    for (seed, k, n_bins, n_images) in [
        (1u64, 2usize, 20usize, 3usize),
        (2, 2, 15, 2),
        (3, 3, 20, 4),
        (4, 5, 10, 2),
        (5, 2, 7, 1),
        (6, 4, 20, 3),
    ] {
        let mut rng = StdRng::seed_from_u64(seed);
        let config = MetricConfig::monai().bins(n_bins);
        let mut reports = Vec::new();
        let mut tables = [Vec::new(), Vec::new(), Vec::new()];
        for _ in 0..n_images {
            let n = rng.random_range(200..700);
            let (p, y) = random_image(&mut rng, k, n, n_bins);
            let r = report(&p, &y, &config);
            let want = reference_image(&p, &y, n_bins);
            assert_eq!(want.len(), k);
            for (c, w) in want.iter().enumerate() {
                let what = format!("seed {seed} K {k} bins {n_bins} class {c}");
                close(r.class_ece[c], w[0], &format!("{what} ECE"));
                close(r.class_mce[c], w[1], &format!("{what} MCE"));
                close(r.class_ace[c], w[2], &format!("{what} average CE"));
            }
            for (m, t) in tables.iter_mut().enumerate() {
                t.push(want.iter().map(|w| w[m]).collect::<Vec<f64>>());
            }
            reports.push(r);
        }
        for include_background in [true, false] {
            let got = MonaiCalibration::from_reports(&reports, include_background).unwrap();
            let skip = usize::from(!include_background);
            assert_eq!(got.channels, (skip..k).collect::<Vec<_>>());
            assert_eq!(got.n_images, n_images);
            let results = [
                (got.ece, &got.ece_per_class),
                (got.mce, &got.mce_per_class),
                (got.average_ce, &got.average_ce_per_class),
            ];
            for (m, (mean, per_class)) in results.into_iter().enumerate() {
                let t: Vec<Vec<f64>> = tables[m].iter().map(|row| row[skip..].to_vec()).collect();
                let (want_mean, want_per) = reference_reduce(&t);
                let what =
                    format!("seed {seed} metric {m} include_background {include_background}");
                close(mean, want_mean, &what);
                assert_eq!(per_class.len(), want_per.len());
                for (g, w) in per_class.iter().zip(&want_per) {
                    close(*g, *w, &what);
                }
            }
        }
    }
}

/// Every voxel of a K = 2 image on or beside an edge, every bin count, f32 input: the
/// bins themselves agree (through the per-class MCE, which sees every occupied bin).
#[test]
fn every_edge_and_its_neighbours() {
    for n_bins in [20, 10, 15, 3] {
        let edges = reference_edges(n_bins);
        let mut xs: Vec<f32> = Vec::new();
        for &e in &edges {
            let e = e.min(1.0);
            xs.push(e);
            if e > 0.0 {
                xs.push(f32::from_bits(e.to_bits() - 1));
            }
            if e < 1.0 {
                xs.push(f32::from_bits(e.to_bits() + 1));
            }
        }
        let n = xs.len();
        let p = Array2::from_shape_fn((2, n), |(c, i)| if c == 1 { xs[i] } else { 1.0 - xs[i] });
        // Alternate labels so that neighbouring bins have different accuracies.
        let y: Vec<u8> = (0..n).map(|i| ((i / 2) % 2) as u8).collect();
        let r = report(&p, &y, &MetricConfig::monai().bins(n_bins));
        let want = reference_image(&p, &y, n_bins);
        for (c, w) in want.iter().enumerate() {
            close(
                r.class_ece[c],
                w[0],
                &format!("{n_bins} bins class {c} ECE"),
            );
            close(
                r.class_mce[c],
                w[1],
                &format!("{n_bins} bins class {c} MCE"),
            );
            close(
                r.class_ace[c],
                w[2],
                &format!("{n_bins} bins class {c} ACE"),
            );
        }
    }
}

/// A case computed by hand from MONAI's formula (20 bins of width ≈ 0.05; MONAI's edge
/// `e_k = k(1 + ε)/20` lies just above `k/20`, so 0.25 is in bin 4 = (0.2, 0.25] and 0.26 in
/// bin 5; 0 in bin 0 and 1 in bin 19).
///
/// Class 1: p = 0, 0.25, 0.26, 1, 1 against [y == 1] = 0, 1, 0, 1, 0:
/// bin 0 {0}: gap 0; bin 4 {0.25}: |1 − 0.25| = 0.75; bin 5 {0.26}: 0.26; bin 19 {1, 1}:
/// |0.5 − 1| = 0.5. ECE = (0 + 0.75 + 0.26 + 2·0.5)/5 = 0.402, MCE = 0.75,
/// average CE = (0 + 0.75 + 0.26 + 0.5)/4 = 0.3775.
///
/// Class 0: p = 1, 0.75, 0.74, 0, 0 against [y == 0] = 1, 0, 1, 0, 1:
/// bin 19 {1}: 0; bin 14 {0.75, 0.74} (both in (0.70, 0.75]): |0.5 − 0.745| = 0.245;
/// bin 0 {0, 0}: |0.5 − 0| = 0.5. ECE = (0 + 2·0.245 + 2·0.5)/5 = 0.298, MCE = 0.5,
/// average CE = (0 + 0.245 + 0.5)/3 = 0.24833….
///
/// MONAI "mean": ECE (0.402 + 0.298)/2 = 0.35, MCE 0.625, average CE 0.3129166….
/// (0.26 and 0.74 are float32 values, 0.25999999046… and 0.74000000954…, so the numbers
/// below carry their exact value; the literals above hold to 1e-7.)
#[test]
fn hand_computed_case() {
    let a = f64::from(0.26f32);
    let b = f64::from(0.74f32);
    let p = Array2::from_shape_vec(
        (2, 5),
        vec![1.0f32, 0.75, 0.74, 0.0, 0.0, 0.0, 0.25, 0.26, 1.0, 1.0],
    )
    .unwrap();
    let y = [0u8, 1, 0, 1, 0];
    let r = report(&p, &y, &MetricConfig::monai());
    let ece1 = (0.75 + a + 1.0) / 5.0;
    let ace1 = (0.75 + a + 0.5) / 4.0;
    let gap14 = (0.5 - (0.75 + b) / 2.0).abs();
    let ece0 = (2.0 * gap14 + 1.0) / 5.0;
    let ace0 = (gap14 + 0.5) / 3.0;
    close(r.class_ece[1], ece1, "class 1 ECE");
    close(r.class_mce[1], 0.75, "class 1 MCE");
    close(r.class_ace[1], ace1, "class 1 average CE");
    close(r.class_ece[0], ece0, "class 0 ECE");
    close(r.class_mce[0], 0.5, "class 0 MCE");
    close(r.class_ace[0], ace0, "class 0 average CE");
    for (got, lit) in [
        (r.class_ece[1], 0.402),
        (r.class_ace[1], 0.3775),
        (r.class_ece[0], 0.298),
        (r.class_ace[0], 0.745 / 3.0),
    ] {
        assert!((got - lit).abs() < 1e-7, "{got} vs {lit}");
    }
    let m = MonaiCalibration::from_reports(std::slice::from_ref(&r), true).unwrap();
    close(m.ece, (ece0 + ece1) / 2.0, "mean ECE");
    close(m.mce, 0.625, "mean MCE");
    close(m.average_ce, (ace0 + ace1) / 2.0, "mean average CE");
    assert!((m.ece - 0.35).abs() < 1e-7 && (m.average_ce - 0.3129166666).abs() < 1e-7);
    let fg = MonaiCalibration::from_reports(std::slice::from_ref(&r), false).unwrap();
    assert_eq!(fg.channels, vec![1]);
    close(fg.ece, ece1, "without background");
    // The edges matter: with [lo, hi) bins 0.25 and 0.26 share bin 5, and class 1's ECE is
    // (0 + 2·|0.5 − 0.255| + 2·0.5)/5 = 0.298 instead of 0.402.
    let left = report(
        &p,
        &y,
        &MetricConfig::monai().edges(EdgeConvention::LeftClosed),
    );
    close(
        left.class_ece[1],
        (2.0 * (0.5 - (0.25 + a) / 2.0) + 1.0) / 5.0,
        "left-closed",
    );
    // MONAI's reductions refuse reports made with other edges or a region.
    assert!(MonaiCalibration::from_reports(&[left], true).is_err());
    let fg_region = report(
        &p,
        &y,
        &MetricConfig::monai().region(calseg_metrics::Region::Foreground),
    );
    assert!(MonaiCalibration::from_reports(&[fg_region], true).is_err());
    assert!(MonaiCalibration::from_reports(&[], true).is_err());
}

/// 3-D input gives the same values as the same voxels flattened (MONAI flattens the
/// spatial axes), and f64 input holding float32 values gives the float32 result.
#[test]
fn spatial_layout_and_f64_input() {
    let mut rng = StdRng::seed_from_u64(11);
    let (p, y) = random_image(&mut rng, 3, 6 * 7 * 8, 20);
    let flat = report(&p, &y, &MetricConfig::monai());
    let p3 = p.clone().into_shape_with_order((3, 6, 7, 8)).unwrap();
    let y3 = Array3::from_shape_vec((6, 7, 8), y.clone()).unwrap();
    let mut ev = Evaluator::new(MetricConfig::monai()).unwrap();
    ev.update(p3.view(), y3.view()).unwrap();
    let r3 = ev.finish().unwrap();
    assert_eq!(flat.class_ece, r3.class_ece);
    assert_eq!(flat.class_ace, r3.class_ace);
    let p64 = p3.mapv(f64::from);
    let mut ev = Evaluator::new(MetricConfig::monai()).unwrap();
    ev.update(p64.view(), y3.view()).unwrap();
    let r64 = ev.finish().unwrap();
    for c in 0..3 {
        close(r64.class_ece[c], flat.class_ece[c], "f64 ECE");
        close(r64.class_mce[c], flat.class_mce[c], "f64 MCE");
    }
}
