//! Unit tests of the engine: the SIMD and portable loops agree bit for bit, and results do
//! not depend on threads or memory layout.

use super::lanes::W;
use super::{BLOCK, FORCE_PORTABLE, renorm, simd_enabled};
use crate::{EdgeConvention, Evaluator, Input, Report};
use ndarray::{Array2, Array3};
use rand::{Rng, SeedableRng, rngs::StdRng};

#[test]
fn renorm_keeps_the_value() {
    let mut prod = [1e-200, 0.75, 1.0, 3.0, 1e-5, 0.5, 2.0, 1e-300];
    let want: Vec<f64> = prod.iter().map(|v: &f64| v.ln()).collect();
    let mut ex = [0i64; W];
    renorm(&mut prod, &mut ex);
    for l in 0..W {
        assert!((1.0..2.0).contains(&prod[l]));
        let got = ex[l] as f64 * std::f64::consts::LN_2 + prod[l].ln();
        assert!((got - want[l]).abs() <= 1e-13 * want[l].abs().max(1.0));
    }
}

/// Probabilities with every kind of value the kernels special-case: exact 0 and 1,
/// values on and next to bin edges, tiny values, confident and uncertain voxels, runs
/// of identical voxels (whole groups in a hot row).
fn tricky(k: usize, n: usize, seed: u64) -> (Array2<f32>, Vec<u8>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let edges = crate::edges::torch_linspace_f32(15);
    let mut p = Array2::<f32>::zeros((k, n));
    let mut y = vec![0u8; n];
    let mut i = 0;
    while i < n {
        let run = if rng.random_bool(0.3) {
            rng.random_range(8..40)
        } else {
            1
        };
        let kind = rng.random_range(0..6);
        let top = rng.random_range(0..k);
        let conf: f32 = match kind {
            0 => 1.0,
            1 => 1.0 - 1e-7 * rng.random::<f32>(),
            2 => {
                let e = edges[rng.random_range(1..15)];
                let d = rng.random_range(-2i32..=2);
                f32::from_bits((e.to_bits() as i32 + d) as u32).max(1.0 / k as f32)
            }
            3 => rng.random_range(1.0 / k as f32..1.0),
            _ => 0.999,
        };
        let label = if rng.random_bool(0.8) {
            top
        } else {
            rng.random_range(0..k)
        };
        for _ in 0..run.min(n - i) {
            let rest = (1.0 - conf) / (k - 1) as f32;
            for c in 0..k {
                p[[c, i]] = if c == top {
                    conf
                } else if kind == 0 {
                    0.0
                } else {
                    rest
                };
            }
            y[i] = label as u8;
            i += 1;
        }
    }
    (p, y)
}

fn same(a: &Report, b: &Report) {
    let f = |r: &Report| {
        let mut v = vec![
            r.ece,
            r.mce,
            r.rmsce,
            r.ace,
            r.accuracy,
            r.mean_confidence,
            r.cece,
            r.brier,
            r.nll,
        ];
        v.extend(&r.class_ece);
        v.extend(&r.dice);
        v.extend(
            r.reliability
                .iter()
                .flat_map(|b| [b.confidence, b.accuracy, b.count as f64]),
        );
        v.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    };
    assert_eq!(f(a), f(b));
    assert_eq!((&a.tp, &a.fp, &a.fn_), (&b.tp, &b.fp, &b.fn_));
}

fn run(
    cfg: &crate::MetricConfig,
    p: &Array2<f32>,
    y: &[u8],
    mask: Option<&[bool]>,
    portable: bool,
) -> Report {
    FORCE_PORTABLE.with(|f| f.set(portable));
    let mut ev = Evaluator::new(cfg.clone()).unwrap();
    let yv = ndarray::ArrayView1::from(y);
    let input = Input::new(p.view(), yv).unwrap();
    let input = match mask {
        Some(m) => input.with_mask(ndarray::ArrayView1::from(m)).unwrap(),
        None => input,
    };
    ev.update_input(&input).unwrap();
    FORCE_PORTABLE.with(|f| f.set(false));
    ev.finish().unwrap()
}

#[test]
fn simd_and_portable_loops_agree_bit_for_bit() {
    if !simd_enabled() {
        return; // nothing to compare on this CPU
    }
    for (k, n, seed) in [(2usize, 4099usize, 1u64), (3, 2048 * 3 + 5, 2), (5, 777, 3)] {
        let (p, y) = tricky(k, n, seed);
        let mask: Vec<bool> = (0..n).map(|i| (i / 5) % 3 != 0).collect();
        for conv in [
            EdgeConvention::LeftClosed,
            EdgeConvention::RightClosed,
            EdgeConvention::Torchmetrics,
        ] {
            for bins in [1, 10, 15] {
                let base = crate::MetricConfig::default().bins(bins).edges(conv);
                let a = run(&base, &p, &y, None, false);
                let b = run(&base, &p, &y, None, true);
                same(&a, &b);
                let fg = base.clone().region(crate::Region::Foreground);
                same(
                    &run(&fg, &p, &y, None, false),
                    &run(&fg, &p, &y, None, true),
                );
                let mk = base.clone().region(crate::Region::Mask);
                same(
                    &run(&mk, &p, &y, Some(&mask), false),
                    &run(&mk, &p, &y, Some(&mask), true),
                );
            }
        }
    }
}

#[test]
fn results_do_not_depend_on_threads_or_layout() {
    // More than one block, so several rayon tasks.
    let (p, y) = tricky(3, BLOCK * 2 + 1234, 9);
    let cfg = crate::MetricConfig::default();
    let a = run(&cfg, &p, &y, None, false);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let b = pool.install(|| run(&cfg, &p, &y, None, false));
    same(&a, &b);
    // Channel-last storage, viewed channel-first: the gather path, same numbers.
    let pt = Array2::from_shape_fn((p.ncols(), p.nrows()), |(i, c)| p[[c, i]]); // (n, k)
    let view = pt.t(); // (k, n), not standard layout
    assert!(!view.is_standard_layout());
    let mut ev = Evaluator::new(cfg).unwrap();
    ev.update(view, ndarray::ArrayView1::from(&y[..])).unwrap();
    same(&a, &ev.finish().unwrap());
    // A 3-D volume split into two slabs along axis 1 (non-contiguous views) and merged.
    let v = Array3::from_shape_fn((3, 6, 7), |(c, i, j)| p[[c, i * 7 + j]]);
    let yv = ndarray::Array2::from_shape_fn((6, 7), |(i, j)| y[i * 7 + j]);
    let mut whole = Evaluator::new(crate::MetricConfig::default()).unwrap();
    whole.update(v.view(), yv.view()).unwrap();
    let mut parts = Evaluator::new(crate::MetricConfig::default()).unwrap();
    for (lo, hi) in [(0, 3), (3, 6)] {
        parts
            .update(
                v.slice(ndarray::s![.., lo..hi, ..]),
                yv.slice(ndarray::s![lo..hi, ..]),
            )
            .unwrap();
    }
    let (w, q) = (whole.finish().unwrap(), parts.finish().unwrap());
    assert_eq!(
        w.reliability.iter().map(|b| b.count).collect::<Vec<_>>(),
        q.reliability.iter().map(|b| b.count).collect::<Vec<_>>()
    );
    assert!((w.ece - q.ece).abs() < 1e-12 && (w.brier - q.brier).abs() < 1e-12);
}

/// The per-run scatter used for many classes gives the per-class compare's counts,
/// on runs, alternations and every class boundary of the switch.
#[test]
fn overlap_counts_by_runs_equal_counts_by_class() {
    use super::hard::{SCATTER_FROM_K, count_overlap};
    use super::{Needs, State};
    let needs = Needs {
        top: false,
        classwise: false,
        overlap: true,
        scores: false,
    };
    for k in [2, 5, SCATTER_FROM_K - 1, SCATTER_FROM_K, 40, 130] {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ k as u64;
        let mut next = |m: u32| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % u64::from(m)) as u32
        };
        // Runs of random length, then an alternating tail.
        let (mut cls, mut pr) = (Vec::new(), Vec::new());
        while cls.len() < 3000 {
            let (a, b, r) = (next(k as u32), next(k as u32), 1 + next(40));
            for _ in 0..r {
                cls.push(a);
                pr.push(if next(4) == 0 { a } else { b });
            }
        }
        for i in 0..100 {
            cls.push(i % k as u32);
            pr.push((i + 1) % k as u32);
        }
        let mut got = State::new(k, 3, needs);
        count_overlap(&cls, &pr, k, &mut got);
        let (mut gt, mut pc, mut tp) = (vec![0u64; k], vec![0u64; k], vec![0u64; k]);
        for (&a, &b) in cls.iter().zip(&pr) {
            gt[a as usize] += 1;
            pc[b as usize] += 1;
            tp[a as usize] += u64::from(a == b);
        }
        assert_eq!(
            (got.gt_count, got.pred_count, got.tp),
            (gt, pc, tp),
            "k = {k}"
        );
    }
}
