//! GPU checks (issue 15): every operator of the fast path on a CUDA tensor against the same
//! operator on the CPU — values and the gradients of every input — and the U-Net training
//! step end to end.
//!
//! Compiled only with `--features cuda`. On a machine without a usable CUDA device every
//! test prints "skipped: …" and passes; they are meant to be run where a GPU is, e.g.
//! `cargo test --release -p calseg-seg --features cuda --test gpu -- --nocapture`.

#![cfg(feature = "cuda")]

use calseg_seg::bench::{StepConfig, Stepper};
use calseg_seg::init::randn;
use calseg_seg::loss::soft_ce;
use calseg_seg::ops;
use candle_core::{DType, Device, Result, Tensor, Var};
use rand::SeedableRng;
use rand::rngs::StdRng;

fn gpu() -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("skipped: no usable CUDA device 0 ({e})");
            None
        }
    }
}

fn max_abs(a: &Tensor) -> f64 {
    a.to_device(&Device::Cpu)
        .and_then(|t| t.to_dtype(DType::F64))
        .and_then(|t| t.abs())
        .and_then(|t| t.max_all())
        .and_then(|t| t.to_scalar::<f64>())
        .unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    max_abs(&(a.to_device(&Device::Cpu).unwrap() - b.to_device(&Device::Cpu).unwrap()).unwrap())
}

/// Runs `f` on `inputs` on the CPU and on `dev`; compares the output and the gradient of
/// `Σ y·r` (r a fixed random tensor) with respect to every input, relative to the CPU's
/// largest magnitude.
fn same_on_gpu(
    name: &str,
    dev: &Device,
    inputs: &[Tensor],
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) {
    let run = |d: &Device| -> (Tensor, Vec<Tensor>) {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(&t.to_device(d).unwrap()).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = f(&ts).unwrap();
        let r = randn(&mut StdRng::seed_from_u64(99), y.dims(), DType::F32, d).unwrap();
        let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g = vars
            .iter()
            .map(|v| grads.get(v).expect("every input has a gradient").clone())
            .collect();
        (y, g)
    };
    let (yc, gc) = run(&Device::Cpu);
    let (yg, gg) = run(dev);
    let tol = 2e-4;
    let dy = max_abs_diff(&yc, &yg) / max_abs(&yc).max(1e-6);
    assert!(dy < tol, "{name}: output differs by {dy:.2e} (relative)");
    for (i, (a, b)) in gc.iter().zip(&gg).enumerate() {
        let d = max_abs_diff(a, b) / max_abs(a).max(1e-6);
        assert!(
            d < tol,
            "{name}: gradient of input {i} differs by {d:.2e} (relative)"
        );
    }
    eprintln!("{name}: output and gradients agree (max relative difference {dy:.1e})");
}

fn rn(seed: u64, shape: &[usize]) -> Tensor {
    randn(
        &mut StdRng::seed_from_u64(seed),
        shape,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap()
}

#[test]
fn convolutions_match_the_cpu() {
    let Some(dev) = gpu() else { return };
    for (stride, pad) in [(1, 1), (2, 0)] {
        same_on_gpu(
            &format!("conv2d s{stride} p{pad}"),
            &dev,
            &[rn(1, &[2, 3, 16, 16]), rn(2, &[4, 3, 3, 3]), rn(3, &[4])],
            |t| ops::conv(&t[0], &t[1], Some(&t[2]), stride, pad),
        );
        same_on_gpu(
            &format!("conv3d s{stride} p{pad}"),
            &dev,
            &[
                rn(4, &[1, 2, 8, 8, 8]),
                rn(5, &[3, 2, 3, 3, 3]),
                rn(6, &[3]),
            ],
            |t| ops::conv(&t[0], &t[1], Some(&t[2]), stride, pad),
        );
    }
    same_on_gpu(
        "conv_cat 2d",
        &dev,
        &[
            rn(7, &[2, 2, 8, 8]),
            rn(8, &[2, 3, 8, 8]),
            rn(9, &[4, 5, 3, 3]),
            rn(10, &[4]),
        ],
        |t| ops::conv_cat(&t[0], &t[1], &t[2], Some(&t[3]), 1, 1),
    );
    same_on_gpu(
        "conv_transpose 2d",
        &dev,
        &[rn(11, &[2, 4, 8, 8]), rn(12, &[4, 3, 2, 2]), rn(13, &[3])],
        |t| ops::conv_transpose(&t[0], &t[1], Some(&t[2]), 2, 0),
    );
    same_on_gpu(
        "conv_transpose 3d",
        &dev,
        &[
            rn(14, &[1, 4, 4, 4, 4]),
            rn(15, &[4, 2, 2, 2, 2]),
            rn(16, &[2]),
        ],
        |t| ops::conv_transpose(&t[0], &t[1], Some(&t[2]), 2, 0),
    );
}

#[test]
fn norm_pool_and_loss_match_the_cpu() {
    let Some(dev) = gpu() else { return };
    for relu in [false, true] {
        same_on_gpu(
            &format!("group_norm relu={relu}"),
            &dev,
            &[rn(20, &[2, 8, 6, 6]), rn(21, &[8]), rn(22, &[8])],
            |t| ops::group_norm(&t[0], &t[1], &t[2], 4, 1e-5, relu),
        );
    }
    same_on_gpu("avg_pool 2d", &dev, &[rn(23, &[2, 3, 8, 8])], |t| {
        ops::avg_pool(&t[0], 2)
    });
    same_on_gpu("avg_pool 3d", &dev, &[rn(24, &[1, 2, 4, 4, 4])], |t| {
        ops::avg_pool(&t[0], 2)
    });
    let targets = candle_nn::ops::softmax(&rn(25, &[2, 4, 8, 8]), 1).unwrap();
    same_on_gpu("soft-target CE", &dev, &[rn(26, &[2, 4, 8, 8])], |t| {
        soft_ce(&t[0], &targets.to_device(t[0].device())?)
    });
}

#[test]
fn the_training_step_matches_the_cpu_and_learns() {
    let Some(dev) = gpu() else { return };
    let cfg = |device: Device| StepConfig {
        base: 8,
        depth: 2,
        batch: 2,
        size: 32,
        device,
        ..StepConfig::default()
    };
    let losses = |c: &StepConfig| -> Vec<f64> {
        let mut st = Stepper::new(c).unwrap();
        (0..4).map(|_| st.step().unwrap().loss).collect()
    };
    let cpu = losses(&cfg(Device::Cpu));
    let gpu = losses(&cfg(dev));
    assert!(gpu.iter().all(|l| l.is_finite()), "{gpu:?}");
    assert!(gpu[3] < gpu[0], "the GPU step does not learn: {gpu:?}");
    for (a, b) in cpu.iter().zip(&gpu) {
        assert!(
            (a - b).abs() < 1e-3 * a.abs().max(1.0),
            "CPU {cpu:?} vs GPU {gpu:?}"
        );
    }
    eprintln!("training step: CPU losses {cpu:?}, GPU losses {gpu:?}");
}
