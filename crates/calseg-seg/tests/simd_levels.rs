//! The fast ops give the same values and gradients at every SIMD level this CPU has
//! (baseline, AVX2 + FMA, AVX-512), within f32 rounding: the AVX2 and baseline paths
//! stay tested on an AVX-512 machine. `CALSEG_SIMD` caps the level.
//!
//! One test function, so that the process-wide level is changed by nobody else while it
//! runs (each integration-test file is its own process).

use calseg_seg::init::randn;
use calseg_seg::ops::{self, SimdLevel};
use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// Every output and input gradient of a small conv → GroupNorm+ReLU → pool →
/// transposed conv chain (and the skip-concat conv), flattened.
fn run_chain() -> Vec<Vec<f32>> {
    let dev = Device::Cpu;
    let mut rng = StdRng::seed_from_u64(7);
    let mut rnd = |s: &[usize]| randn(&mut rng, s, DType::F32, &dev).unwrap();
    let x = Var::from_tensor(&rnd(&[2, 3, 20, 24])).unwrap();
    let w1 = Var::from_tensor(&rnd(&[16, 3, 3, 3])).unwrap();
    let b1 = Var::from_tensor(&rnd(&[16])).unwrap();
    let gamma = Var::from_tensor(&rnd(&[16])).unwrap();
    let beta = Var::from_tensor(&rnd(&[16])).unwrap();
    let wt = Var::from_tensor(&rnd(&[16, 8, 2, 2])).unwrap();
    let wc = Var::from_tensor(&rnd(&[4, 24, 3, 3])).unwrap();
    let h = ops::conv(x.as_tensor(), w1.as_tensor(), Some(b1.as_tensor()), 1, 1).unwrap();
    let h = ops::group_norm(&h, gamma.as_tensor(), beta.as_tensor(), 8, 1e-5, true).unwrap();
    let p = ops::avg_pool(&h, 2).unwrap();
    let up = ops::conv_transpose(&p, wt.as_tensor(), None, 2, 0).unwrap();
    let y = ops::conv_cat(&h, &up, wc.as_tensor(), None, 1, 1).unwrap();
    let r = rnd(y.dims());
    let loss = (&y * &r).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut out = vec![flat(&y)];
    for v in [&x, &w1, &b1, &gamma, &beta, &wt, &wc] {
        out.push(flat(grads.get(v.as_tensor()).expect("gradient")));
    }
    out
}

#[test]
fn every_simd_level_agrees_with_the_baseline() {
    // The environment variable caps the level (read once, at the first use).
    // SAFETY: no other thread of this test process reads or writes the environment yet.
    unsafe { std::env::set_var("CALSEG_SIMD", "avx2") };
    let detected = ops::detected_simd_level();
    assert_eq!(ops::simd_level(), detected.min(SimdLevel::Avx2));

    assert_eq!(
        ops::set_simd_level(SimdLevel::Baseline),
        SimdLevel::Baseline
    );
    let reference = run_chain();
    let mut checked = vec![SimdLevel::Baseline];
    for level in [SimdLevel::Avx2, SimdLevel::Avx512] {
        if level > detected {
            continue;
        }
        assert_eq!(ops::set_simd_level(level), level);
        assert_eq!(ops::simd_level(), level);
        let got = run_chain();
        for (i, (a, b)) in reference.iter().zip(&got).enumerate() {
            let scale = a.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
            let worst = a
                .iter()
                .zip(b)
                .fold(0.0f32, |m, (p, q)| m.max((p - q).abs()));
            assert!(
                worst <= 1e-4 * scale,
                "{}: tensor {i} differs from the baseline by {worst} (scale {scale})",
                level.name()
            );
        }
        checked.push(level);
    }
    // A level above the CPU's is capped, never enabled.
    assert_eq!(ops::set_simd_level(SimdLevel::Avx512), detected);
    eprintln!(
        "checked {:?} (CPU: {})",
        checked.iter().map(|l| l.name()).collect::<Vec<_>>(),
        detected.name()
    );
}
