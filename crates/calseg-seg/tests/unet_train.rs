//! A tiny U-Net trained with the fast ops reaches the same losses as the same net
//! (same seed) trained with candle's stock ops; checkpoints use candle-nn names/shapes.

use calseg_seg::init::randn;
use calseg_seg::loss::{soft_ce, soft_ce_stock};
use calseg_seg::net::{Backend, NormKind, UNet, UNetConfig};
use candle_core::{DType, Device, Module};
use candle_nn::{Optimizer, ParamsAdamW, VarMap};
use rand::SeedableRng;
use rand::rngs::StdRng;

fn train(cfg: &UNetConfig, shape: &[usize], steps: usize, fused_adamw: bool) -> Vec<f64> {
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let net = UNet::new(cfg, &vm, 7, DType::F32, &dev).unwrap();
    let mut rng = StdRng::seed_from_u64(8);
    let x = randn(&mut rng, shape, DType::F32, &dev).unwrap();
    let mut tshape = shape.to_vec();
    tshape[1] = cfg.classes;
    let t =
        candle_nn::ops::softmax(&randn(&mut rng, &tshape, DType::F32, &dev).unwrap(), 1).unwrap();
    let hp = ParamsAdamW {
        lr: 1e-2,
        weight_decay: 1e-4,
        ..Default::default()
    };
    let mut fused = calseg_seg::optim::AdamW::new(vm.all_vars(), hp.clone()).unwrap();
    let mut stock = candle_nn::AdamW::new(vm.all_vars(), hp).unwrap();
    let mut losses = Vec::new();
    for _ in 0..steps {
        let logits = net.forward(&x).unwrap();
        let loss = match cfg.backend {
            Backend::Fast => soft_ce(&logits, &t).unwrap(),
            Backend::Stock => soft_ce_stock(&logits, &t).unwrap(),
        };
        losses.push(loss.to_scalar::<f32>().unwrap() as f64);
        let g = loss.backward().unwrap();
        if fused_adamw {
            fused.step(&g).unwrap()
        } else {
            stock.step(&g).unwrap()
        }
    }
    losses
}

fn assert_same(cfg: UNetConfig, shape: &[usize]) {
    let steps = 4;
    let fast = train(
        &UNetConfig {
            backend: Backend::Fast,
            ..cfg.clone()
        },
        shape,
        steps,
        true,
    );
    let reference = train(
        &UNetConfig {
            backend: Backend::Stock,
            ..cfg
        },
        shape,
        steps,
        false,
    );
    for (a, b) in fast.iter().zip(&reference) {
        assert!((a - b).abs() < 1e-4, "fast {fast:?} vs stock {reference:?}");
    }
    // Training does something.
    assert!(
        fast[steps - 1] < fast[0] - 1e-3,
        "loss did not decrease: {fast:?}"
    );
}

#[test]
fn unet2d_fast_and_stock_train_identically() {
    let cfg = UNetConfig {
        dims: 2,
        in_channels: 2,
        classes: 3,
        base: 4,
        depth: 2,
        norm: NormKind::Group(2),
        ..Default::default()
    };
    assert_same(cfg, &[2, 2, 12, 16]);
}

#[test]
fn unet3d_fast_and_stock_train_identically() {
    let cfg = UNetConfig {
        dims: 3,
        in_channels: 1,
        classes: 2,
        base: 2,
        depth: 1,
        norm: NormKind::Instance,
        ..Default::default()
    };
    assert_same(cfg, &[1, 1, 4, 6, 4]);
}

#[test]
fn unet_without_norm_trains_identically() {
    let cfg = UNetConfig {
        base: 4,
        depth: 1,
        norm: NormKind::None,
        ..Default::default()
    };
    assert_same(cfg, &[2, 2, 8, 8]);
}

#[test]
fn parameters_have_candle_nn_names_and_shapes_and_round_trip() {
    let cfg = UNetConfig {
        base: 4,
        depth: 2,
        ..Default::default()
    };
    let vm = VarMap::new();
    let net = UNet::new(&cfg, &vm, 1, DType::F32, &Device::Cpu).unwrap();
    let data = vm.data().lock().unwrap();
    let dims = |k: &str| {
        data.get(k)
            .unwrap_or_else(|| panic!("missing {k}"))
            .dims()
            .to_vec()
    };
    assert_eq!(dims("enc.0.c1.weight"), [4, 2, 3, 3]);
    assert_eq!(dims("enc.0.c1.bias"), [4]);
    assert_eq!(dims("enc.0.n1.weight"), [4]);
    assert_eq!(dims("bott.c2.weight"), [16, 16, 3, 3]);
    assert_eq!(dims("ups.0.op.weight"), [16, 8, 2, 2]); // ConvTranspose: (in, out, k, k)
    assert_eq!(dims("dec.1.c1.weight"), [4, 8, 3, 3]);
    assert_eq!(dims("head.weight"), [2, 4, 1, 1]);
    drop(data);
    // Same seed ⇒ same weights; save/load through safetensors reproduces the output.
    let dir = std::env::temp_dir().join(format!(
        "calseg-seg-unet-{}.safetensors",
        std::process::id()
    ));
    vm.save(&dir).unwrap();
    let vm2 = VarMap::new();
    let net2 = UNet::new(&cfg, &vm2, 99, DType::F32, &Device::Cpu).unwrap();
    let x = randn(
        &mut StdRng::seed_from_u64(3),
        &[1, 2, 8, 8],
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let before = net2.forward(&x).unwrap();
    let mut vm2 = vm2;
    vm2.load(&dir).unwrap();
    let after = net2.forward(&x).unwrap();
    let want = net.forward(&x).unwrap();
    let _ = std::fs::remove_file(&dir);
    let diff = |a: &candle_core::Tensor, b: &candle_core::Tensor| {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert!(
        diff(&before, &want) > 1e-3,
        "different seeds should give different nets"
    );
    assert_eq!(diff(&after, &want), 0.0);
}
