//! Speed of the calibration metrics on a BraTS-sized volume: 4 classes × 240×240×155 f32
//! probabilities (143 MB) and u8 labels, generated in memory.
//!
//! Run: `cargo bench --bench metrics`. Results and the machine they were measured on:
//! `benches/RESULTS.md`.
//!
//! * `top_label_ece`: ECE, MCE, RMSCE, ACE and the reliability diagram
//!   ([`TopLabelCalibration`]), input validated.
//! * `evaluator_all`: everything in one pass ([`Evaluator`]): top-label calibration,
//!   class-wise ECE, Brier, NLL, Dice/IoU counts.
//!
//! Each also runs on one thread (`…/1_thread`) to show the scaling.

use calseg::metrics::{Evaluator, MetricConfig, TopLabelCalibration};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ndarray::{Array3, Array4};
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::hint::black_box;

/// A BraTS-like case: three ellipsoidal tumours (necrotic core 1, enhancing ring 3,
/// oedema 2) in background 0 (≈ 1.3 % foreground). The "network" sees boundaries shifted
/// by a few per cent and is confident away from them, uncertain near them — like a real
/// segmentation net (most voxels saturated near 1.0, a thin shell of uncertain ones).
fn brats_like(seed: u64) -> (Array4<f32>, Array3<u8>) {
    let (d0, d1, d2) = (240usize, 240usize, 155usize);
    let mut rng = StdRng::seed_from_u64(seed);
    let tumours: Vec<([f64; 3], [f64; 3], f64)> = [30.0, 18.0, 10.0]
        .iter()
        .map(|&size| {
            let c = [
                rng.random_range(60.0..180.0),
                rng.random_range(60.0..180.0),
                rng.random_range(40.0..115.0),
            ];
            let r = [
                size * rng.random_range(0.8..1.2),
                size * rng.random_range(0.8..1.2),
                size * rng.random_range(0.6..1.0),
            ];
            (c, r, rng.random_range(-0.06..0.06))
        })
        .collect();
    let mut p = Array4::<f32>::zeros((4, d0, d1, d2));
    let mut y = Array3::<u8>::zeros((d0, d1, d2));
    let sig = |z: f64| 1.0 / (1.0 + (-z).exp());
    for i in 0..d0 {
        for j in 0..d1 {
            for k in 0..d2 {
                let (mut r, mut rp) = (f64::INFINITY, f64::INFINITY);
                for (c, a, shift) in &tumours {
                    let q = (((i as f64 - c[0]) / a[0]).powi(2)
                        + ((j as f64 - c[1]) / a[1]).powi(2)
                        + ((k as f64 - c[2]) / a[2]).powi(2))
                    .sqrt();
                    r = r.min(q);
                    rp = rp.min(q * (1.0 + shift));
                }
                y[[i, j, k]] = if r < 0.35 {
                    1
                } else if r < 0.6 {
                    3
                } else if r < 1.0 {
                    2
                } else {
                    0
                };
                let w = 0.04 * (1.0 + 0.3 * rng.random::<f64>());
                let (s1, s3, s2) = (
                    sig((0.35 - rp) / w),
                    sig((0.6 - rp) / w),
                    sig((1.0 - rp) / w),
                );
                let mut q = [1.0 - s2, s1, s2 - s3, s3 - s1];
                let mut tot = 0.0;
                for v in q.iter_mut() {
                    *v = v.max(0.0) + 1e-7 * rng.random::<f64>();
                    tot += *v;
                }
                for (c, v) in q.iter().enumerate() {
                    p[[c, i, j, k]] = (v / tot) as f32;
                }
            }
        }
    }
    (p, y)
}

fn bench(c: &mut Criterion) {
    let (p, y) = brats_like(20_260_101);
    let bytes = (p.len() * 4 + y.len()) as u64;
    let cfg = MetricConfig::default();
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().ok();
    let mut g = c.benchmark_group("metrics_brats_4x240x240x155");
    g.throughput(Throughput::Bytes(bytes));
    g.sample_size(20);
    g.bench_function("top_label_ece", |b| {
        b.iter(|| {
            let mut acc = TopLabelCalibration::new(cfg.clone()).expect("config");
            acc.update(p.view(), y.view()).expect("valid input");
            black_box(acc.finish().expect("non-empty"))
        })
    });
    g.bench_function("evaluator_all", |b| {
        b.iter(|| {
            let mut ev = Evaluator::new(cfg.clone()).expect("config");
            ev.update(p.view(), y.view()).expect("valid input");
            black_box(ev.finish().expect("non-empty"))
        })
    });
    if let Some(pool) = one {
        g.bench_function("top_label_ece/1_thread", |b| {
            b.iter(|| {
                pool.install(|| {
                    let mut acc = TopLabelCalibration::new(cfg.clone()).expect("config");
                    acc.update(p.view(), y.view()).expect("valid input");
                    black_box(acc.finish().expect("non-empty"))
                })
            })
        });
        g.bench_function("evaluator_all/1_thread", |b| {
            b.iter(|| {
                pool.install(|| {
                    let mut ev = Evaluator::new(cfg.clone()).expect("config");
                    ev.update(p.view(), y.view()).expect("valid input");
                    black_box(ev.finish().expect("non-empty"))
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
