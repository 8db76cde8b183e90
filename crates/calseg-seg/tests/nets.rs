//! U-Net options: BatchNorm (train/eval, running statistics), dropout (seeded, off at
//! eval), strided-conv downsampling, 2D and 3D, and backwards-compatible configs.

use calseg_seg::init::{ParamInit, randn};
use calseg_seg::loss::soft_ce;
use calseg_seg::net::{Backend, NORM_EPS, NormKind, NormRelu, PoolKind, UNet, UNetConfig};
use calseg_seg::optim::AdamW;
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Optimizer, ParamsAdamW, VarMap};
use rand::SeedableRng;
use rand::rngs::StdRng;

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn vec_of(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn configs_without_the_new_fields_still_parse() {
    let old = r#"{"dims":2,"in_channels":1,"classes":4,"base":8,"depth":3,
                  "norm":{"group":4},"pool":"avg","backend":"fast"}"#;
    let cfg: UNetConfig = serde_json::from_str(old).unwrap();
    assert_eq!(cfg.dropout, 0.0);
    assert_eq!(cfg.pool, PoolKind::Avg);
    let new: UNetConfig =
        serde_json::from_str(r#"{"dims":3,"in_channels":1,"classes":2,"base":4,"depth":1,"norm":"batch","pool":"conv","dropout":0.2}"#).unwrap();
    assert_eq!(new.norm, NormKind::Batch);
    assert_eq!(new.pool, PoolKind::Conv);
    let back: UNetConfig = serde_json::from_str(&serde_json::to_string(&new).unwrap()).unwrap();
    assert_eq!(back, new);
}

#[test]
fn invalid_dropout_is_a_config_error() {
    let cfg = UNetConfig {
        dropout: 1.0,
        ..UNetConfig::default()
    };
    assert!(UNet::new(&cfg, &VarMap::new(), 0, DType::F32, &Device::Cpu).is_err());
}

#[test]
fn batch_norm_uses_batch_statistics_in_training_and_running_ones_in_eval() {
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let mut rng = StdRng::seed_from_u64(3);
    let mode = std::sync::Arc::new(calseg_seg::net::NetMode::default());
    let bn = {
        let mut init = ParamInit::new(&vm, &mut rng, DType::F32, &dev);
        NormRelu::with_mode(&mut init, "bn", NormKind::Batch, 2, Backend::Fast, &mode).unwrap()
    };
    let mut rng = StdRng::seed_from_u64(4);
    let x = randn(&mut rng, &[3, 2, 4, 5], DType::F32, &dev)
        .unwrap()
        .affine(2.0, 1.5)
        .unwrap();
    let xs = vec_of(&x);
    // Reference statistics per channel over (n, h, w).
    let (n, c, s) = (3, 2, 20);
    let mut mean = [0f64; 2];
    let mut var = [0f64; 2];
    for ch in 0..c {
        let vals: Vec<f64> = (0..n)
            .flat_map(|i| (0..s).map(move |j| (i, j)))
            .map(|(i, j)| xs[(i * c + ch) * s + j] as f64)
            .collect();
        mean[ch] = vals.iter().sum::<f64>() / vals.len() as f64;
        var[ch] = vals.iter().map(|v| (v - mean[ch]).powi(2)).sum::<f64>() / vals.len() as f64;
    }
    assert!(mode.training());
    let y = vec_of(&bn.forward(&x).unwrap());
    for (i, (&xv, &yv)) in xs.iter().zip(&y).enumerate() {
        let ch = (i / s) % c;
        let want = ((xv as f64 - mean[ch]) / (var[ch] + NORM_EPS).sqrt()).max(0.0);
        assert!((yv as f64 - want).abs() < 1e-4, "{yv} vs {want}");
    }
    // Running statistics: 0.9·init + 0.1·batch (unbiased variance).
    let data = vm.data().lock().unwrap();
    let rm = vec_of(data["bn.running_mean"].as_tensor());
    let rv = vec_of(data["bn.running_var"].as_tensor());
    drop(data);
    let m = (n * s) as f64;
    for ch in 0..c {
        assert!((rm[ch] as f64 - 0.1 * mean[ch]).abs() < 1e-5);
        let unbiased = var[ch] * m / (m - 1.0);
        assert!((rv[ch] as f64 - (0.9 + 0.1 * unbiased)).abs() < 1e-4);
    }
    // Eval: running statistics, and they stay put.
    mode.set_training(false);
    let ye = vec_of(&bn.forward(&x).unwrap());
    for (i, (&xv, &yv)) in xs.iter().zip(&ye).enumerate() {
        let ch = (i / s) % c;
        let want = ((xv as f64 - rm[ch] as f64) / (rv[ch] as f64 + NORM_EPS).sqrt()).max(0.0);
        assert!((yv as f64 - want).abs() < 1e-4);
    }
    let data = vm.data().lock().unwrap();
    assert_eq!(vec_of(data["bn.running_mean"].as_tensor()), rm);
}

fn tiny(dims: usize, norm: NormKind, pool: PoolKind, dropout: f64) -> UNetConfig {
    UNetConfig {
        dims,
        in_channels: 1,
        classes: 3,
        base: 4,
        depth: 2,
        norm,
        pool,
        backend: Backend::Fast,
        dropout,
    }
}

#[test]
fn conv_pooling_and_batch_norm_in_2d_and_3d_train() {
    let dev = Device::Cpu;
    for (dims, shape) in [(2, vec![2, 1, 16, 16]), (3, vec![2, 1, 8, 8, 8])] {
        let cfg = tiny(dims, NormKind::Batch, PoolKind::Conv, 0.0);
        let vm = VarMap::new();
        let net = UNet::new(&cfg, &vm, 1, DType::F32, &dev).unwrap();
        {
            let data = vm.data().lock().unwrap();
            let mut want = vec![4, 4];
            want.extend(std::iter::repeat_n(2, dims));
            assert_eq!(data["down.0.weight"].dims(), want.as_slice());
            assert_eq!(data["down.1.weight"].dims()[0], 8);
            assert!(data.contains_key("enc.0.n1.running_var"));
        }
        let mut rng = StdRng::seed_from_u64(2);
        let x = randn(&mut rng, &shape, DType::F32, &dev).unwrap();
        let mut tshape = shape.clone();
        tshape[1] = 3;
        let t = candle_nn::ops::softmax(&randn(&mut rng, &tshape, DType::F32, &dev).unwrap(), 1)
            .unwrap();
        let mut opt = AdamW::new(
            vm.all_vars(),
            ParamsAdamW {
                lr: 1e-2,
                ..Default::default()
            },
        )
        .unwrap();
        let mut losses = Vec::new();
        for _ in 0..6 {
            let l = soft_ce(&net.forward(&x).unwrap(), &t).unwrap();
            losses.push(l.to_scalar::<f32>().unwrap());
            opt.step(&l.backward().unwrap()).unwrap();
        }
        assert!(losses[5] < losses[0], "{dims}D: {losses:?}");
        net.set_training(false);
        let y = net.forward(&x).unwrap();
        assert_eq!(y.dims(), tshape.as_slice());
        assert!(vec_of(&y).iter().all(|v| v.is_finite()));
    }
}

#[test]
fn dropout_is_seeded_and_off_in_eval() {
    let dev = Device::Cpu;
    let with = tiny(2, NormKind::Group(2), PoolKind::Avg, 0.3);
    let without = tiny(2, NormKind::Group(2), PoolKind::Avg, 0.0);
    let (vm1, vm2) = (VarMap::new(), VarMap::new());
    let a = UNet::new(&with, &vm1, 5, DType::F32, &dev).unwrap();
    let b = UNet::new(&without, &vm2, 5, DType::F32, &dev).unwrap();
    let mut rng = StdRng::seed_from_u64(9);
    let x = randn(&mut rng, &[1, 1, 16, 16], DType::F32, &dev).unwrap();
    a.set_dropout_seed(11);
    let y1 = a.forward(&x).unwrap();
    a.set_dropout_seed(11);
    let y2 = a.forward(&x).unwrap();
    assert_eq!(vec_of(&y1), vec_of(&y2), "same seed, same masks");
    let y3 = a.forward(&x).unwrap(); // seed advanced to 12
    assert!(max_abs_diff(&y1, &y3) > 1e-4, "another seed, other masks");
    let yb = b.forward(&x).unwrap();
    assert!(
        max_abs_diff(&y1, &yb) > 1e-4,
        "dropout changes the training output"
    );
    a.set_training(false);
    let ye = a.forward(&x).unwrap();
    assert_eq!(vec_of(&ye), vec_of(&yb), "no dropout in eval; same init");
}
