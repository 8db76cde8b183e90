//! Backward passes of the fast ops equal central finite differences (f64).
//!
//! For an op `f(a, b, …)` we check `L = Σ f(…) ⊙ R` (fixed random `R`): the gradient that
//! candle's backprop returns for every input equals `(L(a + h·e_i) − L(a − h·e_i)) / 2h`
//! on a sample of coordinates `i`, within 1e-6 relative to the largest gradient entry.

use calseg_seg::init::randn;
use calseg_seg::ops;
use candle_core::{DType, Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const H: f64 = 1e-5;
const TOL: f64 = 1e-6;

fn rnd(rng: &mut StdRng, shape: &[usize]) -> Tensor {
    randn(rng, shape, DType::F64, &Device::Cpu).unwrap()
}

/// Checks the gradients of `f` w.r.t. every tensor of `inputs`.
fn check(name: &str, inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Tensor, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&ts);
    let r = rnd(&mut rng, out.dims());
    let loss = |ts: &[Tensor]| -> f64 {
        (f(ts) * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let grads = (out * &r).unwrap().sum_all().unwrap().backward().unwrap();
    for (k, v) in vars.iter().enumerate() {
        let g: Vec<f64> = grads
            .get(v)
            .unwrap_or_else(|| panic!("{name}: no grad for input {k}"))
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let base: Vec<f64> = inputs[k].flatten_all().unwrap().to_vec1().unwrap();
        let n = base.len();
        let idx: Vec<usize> = if n <= 40 {
            (0..n).collect()
        } else {
            (0..40).map(|_| rng.random_range(0..n)).collect()
        };
        let scale = g.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-3);
        for &i in &idx {
            let eval = |delta: f64| {
                let mut v = base.clone();
                v[i] += delta;
                let mut ts2: Vec<Tensor> = inputs.to_vec();
                ts2[k] = Tensor::from_vec(v, inputs[k].dims(), &Device::Cpu).unwrap();
                loss(&ts2)
            };
            let fd = (eval(H) - eval(-H)) / (2.0 * H);
            let err = (fd - g[i]).abs() / scale;
            assert!(
                err < TOL,
                "{name}: input {k} coord {i}: backprop {} vs finite diff {fd} (rel {err:e})",
                g[i]
            );
        }
    }
}

#[test]
fn conv2d_gradients() {
    let mut rng = StdRng::seed_from_u64(10);
    // (n, ci, co, h, w, k, s, p)
    for (j, (n, ci, co, h, w, k, s, p)) in [
        (2, 3, 4, 6, 5, 3, 1, 1),
        (1, 2, 3, 7, 6, 3, 2, 1),
        (2, 3, 2, 4, 5, 1, 1, 0),
        (1, 2, 3, 6, 6, 2, 2, 0),
        (1, 1, 2, 5, 4, 3, 1, 0),
    ]
    .into_iter()
    .enumerate()
    {
        let x = rnd(&mut rng, &[n, ci, h, w]);
        let wt = rnd(&mut rng, &[co, ci, k, k]);
        let b = rnd(&mut rng, &[co]);
        check(
            &format!("conv2d #{j}"),
            &[x, wt, b],
            |t| ops::conv(&t[0], &t[1], Some(&t[2]), s, p).unwrap(),
            j as u64,
        );
    }
}

#[test]
fn conv3d_gradients() {
    let mut rng = StdRng::seed_from_u64(11);
    for (j, (n, ci, co, d, k, s, p)) in [
        (2, 2, 3, 4, 3, 1, 1),
        (1, 2, 2, 5, 3, 2, 1),
        (1, 3, 2, 4, 2, 2, 0),
    ]
    .into_iter()
    .enumerate()
    {
        let x = rnd(&mut rng, &[n, ci, d, d + 1, d]);
        let wt = rnd(&mut rng, &[co, ci, k, k, k]);
        let b = rnd(&mut rng, &[co]);
        check(
            &format!("conv3d #{j}"),
            &[x, wt, b],
            |t| ops::conv(&t[0], &t[1], Some(&t[2]), s, p).unwrap(),
            20 + j as u64,
        );
    }
}

#[test]
fn conv_transpose_gradients() {
    let mut rng = StdRng::seed_from_u64(12);
    let x = rnd(&mut rng, &[2, 4, 3, 5]);
    let wt = rnd(&mut rng, &[4, 3, 2, 2]);
    let b = rnd(&mut rng, &[3]);
    check(
        "convT2d k2s2",
        &[x, wt, b],
        |t| ops::conv_transpose(&t[0], &t[1], Some(&t[2]), 2, 0).unwrap(),
        30,
    );
    let x = rnd(&mut rng, &[1, 3, 4, 3]);
    let wt = rnd(&mut rng, &[3, 2, 3, 3]);
    check(
        "convT2d k3s2p1",
        &[x, wt],
        |t| ops::conv_transpose(&t[0], &t[1], None, 2, 1).unwrap(),
        31,
    );
    let x = rnd(&mut rng, &[2, 3, 2, 3, 2]);
    let wt = rnd(&mut rng, &[3, 2, 2, 2, 2]);
    let b = rnd(&mut rng, &[2]);
    check(
        "convT3d k2s2",
        &[x, wt, b],
        |t| ops::conv_transpose(&t[0], &t[1], Some(&t[2]), 2, 0).unwrap(),
        32,
    );
}

#[test]
fn group_norm_gradients() {
    let mut rng = StdRng::seed_from_u64(13);
    for (j, (shape, groups, relu)) in [
        (vec![2, 4, 3, 5], 2, true),
        (vec![2, 4, 3, 5], 4, false),
        (vec![1, 6, 2, 3, 2], 3, true),
        (vec![2, 3, 4, 4], 1, false),
    ]
    .into_iter()
    .enumerate()
    {
        let c = shape[1];
        let x = rnd(&mut rng, &shape);
        let g = (rnd(&mut rng, &[c]) + 1.0).unwrap();
        let b = (rnd(&mut rng, &[c]) * 0.5).unwrap();
        check(
            &format!("group norm #{j}"),
            &[x, g, b],
            |t| ops::group_norm(&t[0], &t[1], &t[2], groups, 1e-5, relu).unwrap(),
            40 + j as u64,
        );
    }
}

#[test]
fn avg_pool_and_soft_ce_gradients() {
    let mut rng = StdRng::seed_from_u64(14);
    check(
        "avg pool 2d",
        &[rnd(&mut rng, &[2, 3, 6, 5])],
        |t| ops::avg_pool(&t[0], 2).unwrap(),
        50,
    );
    check(
        "avg pool 3d",
        &[rnd(&mut rng, &[1, 2, 4, 5, 4])],
        |t| ops::avg_pool(&t[0], 2).unwrap(),
        51,
    );
    let l = (rnd(&mut rng, &[2, 3, 4, 3]) * 2.0).unwrap();
    let tg = (rnd(&mut rng, &[2, 3, 4, 3]).abs().unwrap() + 0.1).unwrap();
    check(
        "soft CE",
        &[l, tg],
        |t| calseg_seg::loss::soft_ce(&t[0], &t[1]).unwrap(),
        52,
    );
}
