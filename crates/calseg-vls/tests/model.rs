//! Model shapes, the loss pieces (KL formula, free bits, β schedule), configuration
//! errors and the Trainable plumbing, on tiny inputs.

use approx::assert_abs_diff_eq;
use calseg_seg::init::randn;
use calseg_seg::train::{Batch, StepInfo, Trainable};
use calseg_vls::loss::{beta_at, free_bits_kl, kl_per_dim, minmax01};
use calseg_vls::{LatentMode, VlsConfig, VlsError, VlsModel};
use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;
use rand::rngs::StdRng;

fn tiny(dims: usize, mode: LatentMode) -> VlsConfig {
    VlsConfig {
        dims,
        in_channels: 2,
        classes: 3,
        latent: 3,
        enc_levels: 3,
        enc_base: 4,
        base: 4,
        depth: 2,
        latent_mode: mode,
        ..VlsConfig::default()
    }
}

fn labels(rng: &mut StdRng, shape: &[usize], k: u32) -> Tensor {
    use rand::Rng;
    let n: usize = shape.iter().product();
    let v: Vec<u32> = (0..n).map(|_| rng.random_range(0..k)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

#[test]
fn forward_shapes_2d_3d_global_and_spatial() {
    let dev = Device::Cpu;
    for (dims, sp) in [(2usize, vec![16usize, 12]), (3, vec![8, 8, 4])] {
        for mode in [LatentMode::Global, LatentMode::Spatial] {
            let cfg = tiny(dims, mode);
            let model = VlsModel::new(&cfg, 1, &dev).unwrap();
            let mut rng = StdRng::seed_from_u64(2);
            let mut xs = vec![2, 2];
            xs.extend(&sp);
            let mut ls = vec![2];
            ls.extend(&sp);
            let x = randn(&mut rng, &xs, DType::F32, &dev).unwrap();
            let y = labels(&mut rng, &ls, 3);
            let out = model.forward(&x, &y, &mut rng).unwrap();
            let mut seg = vec![2, 3];
            seg.extend(&sp);
            assert_eq!(out.seg_logits.dims(), seg.as_slice());
            assert_eq!(out.recon.dims(), xs.as_slice());
            let r = out.recon.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(r.iter().all(|&v| v > 0.0 && v < 1.0), "sigmoid range");
            let mut lat = vec![2, 3];
            if mode == LatentMode::Spatial {
                lat.extend(sp.iter().map(|s| s / 4));
            }
            assert_eq!(out.posterior.mu.dims(), lat.as_slice());
            assert_eq!(out.z.dims(), lat.as_slice());
            assert_eq!(model.latent_shape(2, &sp), lat);
            assert_eq!(model.predict(&x).unwrap().dims(), seg.as_slice());
        }
    }
}

#[test]
fn kl_matches_closed_form() {
    let dev = Device::Cpu;
    let mu = Tensor::new(&[[1.0f32, 0.0, 2.0], [0.0, -1.0, 0.0]], &dev).unwrap();
    let lv = Tensor::new(&[[0.0f32, 2f32.ln(), -1.0], [0.0, 0.0, 1.0]], &dev).unwrap();
    let kl = kl_per_dim(&mu, &lv).unwrap().to_vec1::<f32>().unwrap();
    let f = |m: f64, l: f64| 0.5 * (m * m + l.exp() - 1.0 - l);
    let expect = [
        (f(1.0, 0.0) + f(0.0, 0.0)) / 2.0,
        (f(0.0, 2f64.ln()) + f(-1.0, 0.0)) / 2.0,
        (f(2.0, -1.0) + f(0.0, 1.0)) / 2.0,
    ];
    for (a, e) in kl.iter().zip(expect) {
        assert_abs_diff_eq!(f64::from(*a), e, epsilon = 1e-6);
    }
    // The prior itself has zero KL.
    let z = Tensor::zeros((4, 3), DType::F32, &dev).unwrap();
    let k0 = kl_per_dim(&z, &z).unwrap().to_vec1::<f32>().unwrap();
    assert!(k0.iter().all(|&v| v == 0.0));
    // Spatial latents: averaged over locations too.
    let mu = Tensor::new(&[[[1.0f32, 3.0]]], &dev).unwrap(); // (1, 1, 2)
    let lv = Tensor::zeros((1, 1, 2), DType::F32, &dev).unwrap();
    let k = kl_per_dim(&mu, &lv).unwrap().to_vec1::<f32>().unwrap();
    assert_abs_diff_eq!(k[0], 0.25 * (1.0 + 9.0), epsilon = 1e-6);
}

#[test]
fn free_bits_floor_value_and_gradient() {
    let dev = Device::Cpu;
    let kl = Var::new(&[0.1f32, 0.7, 0.0], &dev).unwrap();
    let fb = free_bits_kl(kl.as_tensor(), 0.5).unwrap();
    assert_abs_diff_eq!(fb.to_scalar::<f32>().unwrap(), 1.7, epsilon = 1e-6);
    let g = fb.backward().unwrap();
    let g = g.get(&kl).unwrap().to_vec1::<f32>().unwrap();
    // Below the floor: no pressure towards the prior; above it: the ordinary gradient.
    assert_eq!(g, vec![0.0, 1.0, 0.0]);
    let plain = free_bits_kl(kl.as_tensor(), 0.0).unwrap();
    assert_abs_diff_eq!(plain.to_scalar::<f32>().unwrap(), 0.8, epsilon = 1e-6);
}

#[test]
fn beta_warmup_and_cycles() {
    let cfg = VlsConfig {
        beta: 2.0,
        kl_warmup_epochs: 5,
        ..VlsConfig::default()
    };
    let at = |step| StepInfo {
        step,
        epoch: step / 10,
        total_steps: 100,
        epochs: 10,
    };
    assert_eq!(beta_at(&cfg, &at(0)), 0.0);
    assert_abs_diff_eq!(beta_at(&cfg, &at(25)), 1.0, epsilon = 1e-12);
    assert_eq!(beta_at(&cfg, &at(60)), 2.0);
    let no_warm = VlsConfig {
        kl_warmup_epochs: 0,
        ..cfg.clone()
    };
    assert_eq!(beta_at(&no_warm, &at(0)), 2.0);
    let cyc = VlsConfig {
        beta_cycles: 2,
        ..cfg
    };
    // Period 5 epochs: ramp over 2.5 epochs, then flat, then restart.
    assert_abs_diff_eq!(beta_at(&cyc, &at(10)), 0.8, epsilon = 1e-12);
    assert_eq!(beta_at(&cyc, &at(40)), 2.0);
    assert_eq!(beta_at(&cyc, &at(50)), 0.0);
}

#[test]
fn minmax_target_is_in_unit_interval_per_image() {
    let dev = Device::Cpu;
    let x = Tensor::new(&[[[-2.0f32, 0.0, 2.0]], [[5.0, 6.0, 7.0]]], &dev).unwrap();
    let y = minmax01(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    for (a, e) in y.iter().zip([0.0, 0.5, 1.0, 0.0, 0.5, 1.0]) {
        assert_abs_diff_eq!(*a, e, epsilon = 1e-6);
    }
}

#[test]
fn invalid_configurations_are_config_errors() {
    let dev = Device::Cpu;
    let base = tiny(2, LatentMode::Global);
    let bad = [
        VlsConfig {
            dims: 4,
            ..base.clone()
        },
        VlsConfig {
            classes: 1,
            ..base.clone()
        },
        VlsConfig {
            latent: 0,
            ..base.clone()
        },
        VlsConfig {
            free_bits: -0.1,
            ..base.clone()
        },
        VlsConfig {
            beta: f64::NAN,
            ..base.clone()
        },
        VlsConfig {
            logvar_clamp: [1.0, -1.0],
            ..base.clone()
        },
        VlsConfig {
            enc_levels: 0,
            ..base.clone()
        },
    ];
    for cfg in bad {
        let e = VlsModel::new(&cfg, 0, &dev).unwrap_err();
        assert!(matches!(e, VlsError::Config(_)), "{cfg:?}: {e}");
    }
    // serde: missing fields take the defaults, unknown fields are refused.
    let c: VlsConfig = serde_json::from_str(r#"{"classes": 5}"#).unwrap();
    assert_eq!(c.classes, 5);
    assert_eq!(c.free_bits, VlsConfig::default().free_bits);
    assert!(serde_json::from_str::<VlsConfig>(r#"{"clases": 5}"#).is_err());
}

#[test]
fn bad_inputs_are_shape_errors() {
    let dev = Device::Cpu;
    let model = VlsModel::new(&tiny(2, LatentMode::Global), 0, &dev).unwrap();
    let mut rng = StdRng::seed_from_u64(0);
    let x = randn(&mut rng, &[1, 2, 16, 16], DType::F32, &dev).unwrap();
    let y = labels(&mut rng, &[1, 16, 16], 5); // labels up to 4 ≥ 3 classes
    assert!(matches!(
        model.posterior(&x, &y).unwrap_err(),
        VlsError::Shape(_)
    ));
    let odd = randn(&mut rng, &[1, 2, 10, 16], DType::F32, &dev).unwrap();
    assert!(matches!(
        model.features(&odd).unwrap_err(),
        VlsError::Shape(_)
    ));
    let wrong_c = randn(&mut rng, &[1, 1, 16, 16], DType::F32, &dev).unwrap();
    assert!(matches!(
        model.features(&wrong_c).unwrap_err(),
        VlsError::Shape(_)
    ));
}

#[test]
fn trainable_logs_and_epoch_report() {
    let dev = Device::Cpu;
    let model = VlsModel::new(&tiny(2, LatentMode::Global), 3, &dev).unwrap();
    let mut rng = StdRng::seed_from_u64(4);
    let x = randn(&mut rng, &[2, 2, 16, 16], DType::F32, &dev).unwrap();
    let y = labels(&mut rng, &[2, 16, 16], 3);
    let batch = Batch {
        target: model.one_hot(&y).unwrap(),
        image: x,
        labels: y,
    };
    let mut kl_sum = [0.0; 3];
    for step in 0..2 {
        let info = StepInfo {
            step,
            epoch: 0,
            total_steps: 2,
            epochs: 1,
        };
        let (loss, logs) = model.loss(&batch, &info, &mut rng).unwrap();
        assert!(loss.to_scalar::<f32>().unwrap().is_finite());
        let get = |k: &str| logs.iter().find(|(n, _)| n == k).map(|(_, v)| *v).unwrap();
        for key in ["ce", "dice", "mse", "kl", "beta"] {
            assert!(get(key).is_finite(), "{key}");
        }
        let dims: f64 = (0..3).map(|d| get(&format!("kl_{d}"))).sum();
        assert_abs_diff_eq!(dims, get("kl"), epsilon = 1e-9);
        for (d, s) in kl_sum.iter_mut().enumerate() {
            *s += get(&format!("kl_{d}"));
        }
    }
    let ep = model.end_epoch(0);
    for (d, s) in kl_sum.iter().enumerate() {
        let v = ep
            .iter()
            .find(|(n, _)| *n == format!("kl_dim{d}"))
            .unwrap()
            .1;
        assert_abs_diff_eq!(v, s / 2.0, epsilon = 1e-9);
    }
    let active = ep.iter().find(|(n, _)| n == "active_dims").unwrap().1;
    let expect = kl_sum
        .iter()
        .filter(|s| *s / 2.0 > calseg_vls::ACTIVE_KL)
        .count();
    assert_eq!(active, expect as f64);
    // Reset: the next epoch starts empty.
    assert_eq!(model.epoch_kl().0, Vec::<f64>::new());
}

#[test]
fn save_and_load_round_trip() {
    let dev = Device::Cpu;
    let cfg = tiny(2, LatentMode::Global);
    let a = VlsModel::new(&cfg, 11, &dev).unwrap();
    let dir = std::env::temp_dir().join(format!("calseg-vls-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("vls.safetensors");
    a.save(&path).unwrap();
    let b = VlsModel::load(&cfg, &path, &dev).unwrap();
    let mut rng = StdRng::seed_from_u64(0);
    let x = randn(&mut rng, &[1, 2, 16, 16], DType::F32, &dev).unwrap();
    let pa = a
        .predict(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let pb = b
        .predict(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(pa, pb);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The Dice term enters the loss with exactly its weight: same weights, same latent
/// noise, `dice_weight` 0 and 2 differ by 2·Dice.
#[test]
fn dice_weight_adds_weighted_soft_dice() {
    let dev = Device::Cpu;
    let mut rng = StdRng::seed_from_u64(9);
    let x = randn(&mut rng, &[2, 2, 16, 16], DType::F32, &dev).unwrap();
    let y = labels(&mut rng, &[2, 16, 16], 3);
    let info = StepInfo {
        step: 1,
        epoch: 0,
        total_steps: 2,
        epochs: 1,
    };
    let parts = |w: f64| {
        let cfg = VlsConfig {
            dice_weight: w,
            ..tiny(2, LatentMode::Global)
        };
        let model = VlsModel::new(&cfg, 3, &dev).unwrap();
        let batch = Batch {
            target: model.one_hot(&y).unwrap(),
            image: x.clone(),
            labels: y.clone(),
        };
        model
            .loss_parts(&batch, &info, &mut StdRng::seed_from_u64(1))
            .unwrap()
    };
    let (p0, p2) = (parts(0.0), parts(2.0));
    assert_abs_diff_eq!(p0.dice, p2.dice, epsilon = 1e-12);
    assert!(p0.dice > 0.0 && p0.dice < 1.0, "dice {}", p0.dice);
    let t0 = f64::from(p0.total.to_scalar::<f32>().unwrap());
    let t2 = f64::from(p2.total.to_scalar::<f32>().unwrap());
    assert_abs_diff_eq!(t2 - t0, 2.0 * p0.dice, epsilon = 1e-5);
    // A negative weight is a configuration error.
    let bad = VlsConfig {
        dice_weight: -1.0,
        ..tiny(2, LatentMode::Global)
    };
    assert!(matches!(bad.validate(), Err(VlsError::Config(_))));
}
