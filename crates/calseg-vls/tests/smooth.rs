//! Soft-label generation: configuration checks, α ≤ ½ consistency, τ semantics,
//! determinism, geometry (2D model on 3D cases, padding), and the writers.

use approx::assert_abs_diff_eq;
use calseg_io::phantom::{PhantomConfig, generate};
use calseg_io::{Case, Geometry};
use calseg_vls::mix::{
    MixKind, blend, label_disagreement, mean_entropy, mix, one_hot, temperature,
};
use calseg_vls::smooth::{
    LatentSource, SmoothConfig, smooth_case, smooth_volume, write_soft_labels,
};
use calseg_vls::{LatentMode, VlsConfig, VlsError, VlsModel};
use candle_core::Device;
use ndarray::{ArrayD, Axis, IxDyn};

fn tiny(dims: usize) -> VlsConfig {
    VlsConfig {
        dims,
        in_channels: 1,
        classes: 3,
        enc_levels: 3,
        enc_base: 4,
        base: 4,
        depth: 2,
        ..VlsConfig::default()
    }
}

fn phantom_case(shape: Vec<usize>, seed: u64) -> Case {
    let p = generate(
        &PhantomConfig {
            shape,
            classes: 3,
            ..PhantomConfig::default()
        },
        seed,
    )
    .unwrap();
    p.to_case("ph")
}

fn sums_to_one(p: &ArrayD<f32>) {
    for s in p.sum_axis(Axis(0)).iter() {
        assert_abs_diff_eq!(*s, 1.0, epsilon = 1e-5);
    }
}

#[test]
fn config_is_validated_before_any_work() {
    let model = VlsModel::new(&tiny(2), 0, &Device::Cpu).unwrap();
    // Inputs that would be a shape error: the config error must come first.
    let img = ArrayD::<f32>::zeros(IxDyn(&[5, 3, 3]));
    let lab = ArrayD::<u32>::zeros(IxDyn(&[7, 7]));
    let bad = [
        SmoothConfig {
            alpha: 1.5,
            ..SmoothConfig::default()
        },
        SmoothConfig {
            alpha: -0.1,
            ..SmoothConfig::default()
        },
        SmoothConfig {
            tau: 0.0,
            ..SmoothConfig::default()
        },
        SmoothConfig {
            tau: f64::NAN,
            ..SmoothConfig::default()
        },
        SmoothConfig {
            samples: 0,
            ..SmoothConfig::default()
        },
        SmoothConfig {
            batch: 0,
            ..SmoothConfig::default()
        },
    ];
    for cfg in bad {
        let e = smooth_volume(&model, &img, &lab, &cfg).unwrap_err();
        assert!(matches!(e, VlsError::Config(_)), "{cfg:?}: {e}");
        let e = smooth_case(&model, &phantom_case(vec![8, 8], 0), &cfg).unwrap_err();
        assert!(matches!(e, VlsError::Config(_)), "{cfg:?}: {e}");
    }
    // Valid config, mismatched shapes: a shape error.
    let e = smooth_volume(&model, &img, &lab, &SmoothConfig::default()).unwrap_err();
    assert!(matches!(e, VlsError::Shape(_)), "{e}");
}

/// With the paper's hard anchor (`target_sigma = 0`: `t(y)` is the one-hot label),
/// α ≤ ½ never moves the arg-max off the label. (With a label-noise anchor `t(y)` is
/// itself soft at boundaries, and `Y_s` may follow the image there.)
#[test]
fn alpha_up_to_half_never_flips_a_label() {
    let hard_anchor = VlsConfig {
        target_sigma: 0.0,
        ..tiny(2)
    };
    let model = VlsModel::new(&hard_anchor, 5, &Device::Cpu).unwrap();
    let case = phantom_case(vec![20, 24], 3);
    for tau in [0.25, 1.0, 4.0] {
        for alpha in [0.0, 0.3, 0.5] {
            let cfg = SmoothConfig {
                samples: 4,
                tau,
                alpha,
                ..SmoothConfig::default()
            };
            let s = smooth_case(&model, &case, &cfg).unwrap();
            assert_eq!(s.stats.flipped_fraction, 0.0, "tau {tau} alpha {alpha}");
            sums_to_one(&s.soft);
        }
    }
    // An untrained model disagrees with the labels, so α = 1 (pure y_s^τ) flips voxels:
    // the α ≤ ½ guarantee is not vacuous.
    let cfg = SmoothConfig {
        samples: 4,
        alpha: 1.0,
        ..SmoothConfig::default()
    };
    let s = smooth_case(&model, &case, &cfg).unwrap();
    assert!(s.stats.flipped_fraction > 0.0);
    // The worst case of α = ½: y_s^τ all on another class gives a tie, never a flip.
    let lab = ArrayD::from_elem(IxDyn(&[2]), 0u32);
    let other = ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![0.0f32, 0.0, 1.0, 1.0]).unwrap();
    let m = mix(&lab.view(), &other, 0.5).unwrap();
    assert_eq!(label_disagreement(&m, &lab.view()).unwrap(), 0.0);
}

#[test]
fn temperature_below_one_sharpens() {
    let y = ArrayD::from_shape_vec(
        IxDyn(&[3, 4]),
        vec![
            0.6f32, 0.2, 0.5, 0.9, 0.3, 0.5, 0.3, 0.05, 0.1, 0.3, 0.2, 0.05,
        ],
    )
    .unwrap();
    let e = |t: f64| mean_entropy(&temperature(&y, t).unwrap()).unwrap();
    assert!(e(0.5) < e(1.0), "{} < {}", e(0.5), e(1.0));
    assert!(e(1.0) < e(2.0));
    assert!(e(0.05) < 0.01, "τ → 0 tends to one-hot: {}", e(0.05));
    // τ = 1 is the identity on a distribution.
    let same = temperature(&y, 1.0).unwrap();
    for (a, b) in same.iter().zip(y.iter()) {
        assert_abs_diff_eq!(a, b, epsilon = 1e-6);
    }
    // The argmax never changes with τ.
    let a = calseg_vls::mix::argmax(&y).unwrap();
    for t in [0.3, 3.0] {
        assert_eq!(
            calseg_vls::mix::argmax(&temperature(&y, t).unwrap()).unwrap(),
            a
        );
    }
    assert!(matches!(
        temperature(&y, -1.0).unwrap_err(),
        VlsError::Config(_)
    ));
}

#[test]
fn smoothing_is_deterministic_per_seed() {
    let model = VlsModel::new(&tiny(2), 9, &Device::Cpu).unwrap();
    let case = phantom_case(vec![16, 16], 1);
    let cfg = SmoothConfig {
        samples: 6,
        seed: 42,
        ..SmoothConfig::default()
    };
    let a = smooth_case(&model, &case, &cfg).unwrap();
    let b = smooth_case(&model, &case, &cfg).unwrap();
    assert_eq!(a.y_s, b.y_s);
    assert_eq!(a.soft, b.soft);
    let c = smooth_case(
        &model,
        &case,
        &SmoothConfig {
            seed: 43,
            ..cfg.clone()
        },
    )
    .unwrap();
    assert_ne!(a.y_s, c.y_s, "another seed draws other latents");
    for from in [LatentSource::Posterior, LatentSource::Prior] {
        let one = smooth_case(
            &model,
            &case,
            &SmoothConfig {
                samples: 1,
                from,
                ..cfg.clone()
            },
        )
        .unwrap();
        assert_eq!(one.stats.sample_variance, 0.0, "one sample has no spread");
        sums_to_one(&one.y_s);
    }
}

#[test]
fn geometry_2d_model_on_3d_case_and_3d_model() {
    // Sizes that are not multiples of 4: padded and cropped back.
    let case = phantom_case(vec![10, 9, 5], 2);
    let cfg = SmoothConfig {
        samples: 3,
        batch: 2,
        ..SmoothConfig::default()
    };
    for dims in [2, 3] {
        for mode in [LatentMode::Global, LatentMode::Spatial] {
            let model = VlsModel::new(
                &VlsConfig {
                    latent_mode: mode,
                    ..tiny(dims)
                },
                1,
                &Device::Cpu,
            )
            .unwrap();
            let s = smooth_case(&model, &case, &cfg).unwrap();
            assert_eq!(s.y_s.shape(), &[3, 10, 9, 5]);
            assert_eq!(s.soft.shape(), &[3, 10, 9, 5]);
            sums_to_one(&s.y_s);
            assert_eq!(s.stats.voxels, 450);
            assert!(s.stats.sample_variance > 0.0);
        }
    }
    // Slices are independent of the batch size (same noise order, same result).
    let model = VlsModel::new(&tiny(2), 1, &Device::Cpu).unwrap();
    let a = smooth_case(&model, &case, &cfg).unwrap();
    let b = smooth_case(
        &model,
        &case,
        &SmoothConfig {
            batch: 5,
            ..cfg.clone()
        },
    )
    .unwrap();
    assert_eq!(a.y_s, b.y_s);
    // A 3D model cannot smooth a 2D case.
    let m3 = VlsModel::new(&tiny(3), 0, &Device::Cpu).unwrap();
    let e = smooth_case(&m3, &phantom_case(vec![8, 8], 0), &cfg).unwrap_err();
    assert!(matches!(e, VlsError::Config(_)), "{e}");
}

/// The tiny 3D model of [`tiny`], trained on 8³ patches (so it smooths in windows).
fn patched_model(seed: u64) -> VlsModel {
    let cfg = VlsConfig {
        patch: Some(vec![8, 8, 8]),
        ..tiny(3)
    };
    VlsModel::new(&cfg, seed, &Device::Cpu).unwrap()
}

/// A 3D smoother trained on patches smooths volumes window by window: on a volume of
/// exactly the patch size that is one window, the same numbers as the whole-volume path;
/// on a larger one every voxel is a convex blend of overlapping windows (sums to 1), the
/// windows' posteriors differ from the whole volume's, and the result is deterministic.
#[test]
fn patch_smoother_runs_windows() {
    let cfg = SmoothConfig {
        samples: 3,
        ..SmoothConfig::default()
    };
    let whole = VlsModel::new(&tiny(3), 4, &Device::Cpu).unwrap();
    let patched = patched_model(4);
    // Same seed and shapes → same weights; a patch-sized volume is one window.
    let one = phantom_case(vec![8, 8, 8], 3);
    let a = smooth_case(&whole, &one, &cfg).unwrap();
    let b = smooth_case(&patched, &one, &cfg).unwrap();
    let max_diff = |x: &ArrayD<f32>, y: &ArrayD<f32>| {
        x.iter()
            .zip(y.iter())
            .map(|(p, q)| (p - q).abs())
            .fold(0.0f32, f32::max)
    };
    // (Equal up to the rounding of the weighting: y·w/w.)
    assert!(max_diff(&a.y_s, &b.y_s) < 1e-6);
    assert_abs_diff_eq!(
        a.stats.sample_variance,
        b.stats.sample_variance,
        epsilon = 1e-9
    );
    // A larger volume (not a multiple of the patch on any axis): 3 × 2 × 2 windows.
    let big = phantom_case(vec![18, 13, 9], 5);
    let w = smooth_case(&patched, &big, &cfg).unwrap();
    assert_eq!(w.y_s.shape(), &[3, 18, 13, 9]);
    sums_to_one(&w.y_s);
    assert!(w.y_s.iter().all(|&p| (0.0..=1.0).contains(&p)));
    assert!(w.stats.sample_variance > 0.0);
    let again = smooth_case(&patched, &big, &cfg).unwrap();
    assert_eq!(w.y_s, again.y_s);
    let full = smooth_case(&whole, &big, &cfg).unwrap();
    assert!(
        max_diff(&full.y_s, &w.y_s) > 1e-4,
        "windows should see other inputs than the whole volume"
    );
    // A patch is for 3D models, in multiples of the model's padding.
    for bad in [
        VlsConfig {
            patch: Some(vec![8, 8, 8]),
            ..tiny(2)
        },
        VlsConfig {
            patch: Some(vec![8, 6, 8]),
            ..tiny(3)
        },
        VlsConfig {
            patch: Some(vec![8, 8]),
            ..tiny(3)
        },
    ] {
        let e = bad.validate().unwrap_err();
        assert!(e.to_string().contains("patch"), "{e}");
    }
}

#[test]
fn writers_round_trip() {
    let model = VlsModel::new(&tiny(2), 2, &Device::Cpu).unwrap();
    let case = phantom_case(vec![12, 8, 3], 4);
    let s = smooth_case(
        &model,
        &case,
        &SmoothConfig {
            samples: 2,
            ..SmoothConfig::default()
        },
    )
    .unwrap();
    let dir = std::env::temp_dir().join(format!("calseg-vls-write-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let geo = Geometry::with_spacing(vec![1.0, 2.0, 3.0]);
    let (st, nii) = write_soft_labels(&dir, &s, &geo).unwrap();
    assert!(st.ends_with("ph.safetensors") && nii.ends_with("ph.nii.gz"));
    let back = calseg_io::read_safetensors(&st).unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].0, "soft_labels");
    assert_eq!(back[0].1.to_f32(), s.soft);
    let probs = calseg_io::read_probs(&nii).unwrap();
    assert_eq!(probs.probs.into_f32(), s.soft);
    assert_eq!(probs.geometry.spacing, vec![1.0, 2.0, 3.0]);
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(left.len(), 2, "no temporary files left behind");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn one_hot_and_mix_values() {
    let lab = ArrayD::from_shape_vec(IxDyn(&[3]), vec![0u32, 2, 1]).unwrap();
    let oh = one_hot(&lab.view(), 3).unwrap();
    assert_eq!(
        oh.as_slice().unwrap(),
        &[1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    );
    let u = ArrayD::from_elem(IxDyn(&[3, 3]), 1.0f32 / 3.0);
    let m = mix(&lab.view(), &u, 0.3).unwrap();
    assert_abs_diff_eq!(m[[0, 0]], 0.7 + 0.1, epsilon = 1e-6);
    assert_abs_diff_eq!(m[[1, 0]], 0.1, epsilon = 1e-6);
    assert!(one_hot(&lab.view(), 2).is_err());
}

/// The confidence mix keeps the smoother's confidence in the label and spreads the rest
/// evenly: hand-computed values, rows summing to one, the hard label kept for α ≤ ½ even
/// where the smoother is sure of another class, and the class mix for comparison.
#[test]
fn confidence_mix_spreads_the_doubt_evenly() {
    // Two voxels, K = 3; labels 0 and 2.
    let lab = ArrayD::from_shape_vec(IxDyn(&[2]), vec![0u32, 2]).unwrap();
    let t = one_hot(&lab.view(), 3).unwrap();
    // y_tau (class-major): voxel 0 = (0.6, 0.4, 0.0), voxel 1 = (0.0, 1.0, 0.0).
    let y = ArrayD::from_shape_vec(IxDyn(&[3, 2]), vec![0.6f32, 0.0, 0.4, 1.0, 0.0, 0.0]).unwrap();
    let a = 0.5;
    let conf = blend(&t, &y, a, MixKind::Confidence).unwrap();
    // Voxel 0: c = 0.6 → label 0.5 + 0.5·0.6 = 0.8, others 0.5·0.4/2 = 0.1 each.
    assert_abs_diff_eq!(conf[[0, 0]], 0.8, epsilon = 1e-6);
    assert_abs_diff_eq!(conf[[1, 0]], 0.1, epsilon = 1e-6);
    assert_abs_diff_eq!(conf[[2, 0]], 0.1, epsilon = 1e-6);
    // Voxel 1: c = 0 → label 0.5, others 0.25 each: the smoother's confusion with class 1
    // is not passed on, and the label stays the argmax.
    assert_abs_diff_eq!(conf[[2, 1]], 0.5, epsilon = 1e-6);
    assert_abs_diff_eq!(conf[[0, 1]], 0.25, epsilon = 1e-6);
    assert_abs_diff_eq!(conf[[1, 1]], 0.25, epsilon = 1e-6);
    sums_to_one(&conf);
    assert_eq!(label_disagreement(&conf, &lab.view()).unwrap(), 0.0);
    // The class mix of the same inputs moves the doubt to class 1 (a tie at α = ½).
    let classes = blend(&t, &y, a, MixKind::Classes).unwrap();
    assert_abs_diff_eq!(classes[[1, 1]], 0.5, epsilon = 1e-6);
    assert_abs_diff_eq!(classes[[0, 1]], 0.0, epsilon = 1e-6);
    assert_eq!(classes, mix(&lab.view(), &y, a).unwrap());
    // A soft (label-noise) anchor still gives distributions.
    let soft_t = blend(&t, &y, 0.5, MixKind::Classes).unwrap();
    sums_to_one(&blend(&soft_t, &y, 0.3, MixKind::Confidence).unwrap());
    // Bad input: α outside [0, 1], shapes that differ, a single class.
    assert!(matches!(
        blend(&t, &y, 1.5, MixKind::Confidence),
        Err(VlsError::Config(_))
    ));
    let y2 = ArrayD::from_elem(IxDyn(&[3, 3]), 1.0f32 / 3.0);
    assert!(matches!(
        blend(&t, &y2, 0.5, MixKind::Confidence),
        Err(VlsError::Shape(_))
    ));
    let one = ArrayD::from_elem(IxDyn(&[1, 2]), 1.0f32);
    assert!(matches!(
        blend(&one, &one, 0.5, MixKind::Confidence),
        Err(VlsError::Shape(_))
    ));
    // Names round-trip through the configuration spelling.
    for k in [MixKind::Classes, MixKind::Confidence] {
        assert_eq!(k.name().parse::<MixKind>().unwrap(), k);
    }
    assert!("uniform".parse::<MixKind>().is_err());
}

/// The label-noise target: one-hot for σ = 0, the SVLS smoothing otherwise (a
/// distribution per voxel, ½ on the label, in-plane for a 2D model on a 3D map).
#[test]
fn noise_target_is_svls_of_the_one_hot() {
    let case = phantom_case(vec![12, 10, 6], 3);
    let labels = case.label.clone().unwrap();
    let hard_cfg = VlsConfig {
        target_sigma: 0.0,
        ..tiny(2)
    };
    let hard = VlsModel::new(&hard_cfg, 0, &Device::Cpu).unwrap();
    let t0 = calseg_vls::smooth::noise_target(&hard, &labels).unwrap();
    assert_eq!(t0, one_hot(&labels.view(), 3).unwrap());
    for dims in [2, 3] {
        let cfg = VlsConfig {
            target_sigma: 1.0,
            ..tiny(dims)
        };
        let m = VlsModel::new(&cfg, 0, &Device::Cpu).unwrap();
        let t = calseg_vls::smooth::noise_target(&m, &labels).unwrap();
        assert_eq!(t.shape(), &[3, 12, 10, 6]);
        sums_to_one(&t);
        for (i, &l) in labels.iter().enumerate() {
            let v = labels.len();
            let p = t.as_slice().unwrap()[l as usize * v + i];
            assert!(p >= 0.5 - 1e-6, "labelled class keeps ≥ ½, got {p}");
        }
        // In-plane (2D) smoothing never mixes slices: a map whose slices differ only
        // along z is unchanged by the 2D target.
        if dims == 2 {
            let mut lz = ArrayD::<u32>::zeros(IxDyn(&[8, 8, 4]));
            for z in 0..4 {
                lz.index_axis_mut(Axis(2), z).fill(z as u32 % 3);
            }
            let tz = calseg_vls::smooth::noise_target(&m, &lz).unwrap();
            assert_eq!(tz, one_hot(&lz.view(), 3).unwrap());
        }
    }
}

/// The temperature calibrated on held-out cases: deterministic, in the search range,
/// never worse than τ = 1 on its own objective, and saved/loaded with the model folder.
#[test]
fn calibrate_temperature_minimises_validation_ce_and_round_trips() {
    let cfg = VlsConfig {
        target_sigma: 1.0,
        ..tiny(2)
    };
    let m = VlsModel::new(&cfg, 0, &Device::Cpu).unwrap();
    let cases = [phantom_case(vec![16, 16, 3], 5)];
    let sc = SmoothConfig {
        samples: 4,
        ..SmoothConfig::default()
    };
    let c = calseg_vls::calibrate_temperature(&m, &cases, &sc).unwrap();
    let again = calseg_vls::calibrate_temperature(&m, &cases, &sc).unwrap();
    assert_eq!(c, again);
    assert!((0.1 - 1e-9..=10.0 + 1e-9).contains(&c.tau), "tau {}", c.tau);
    assert!(c.ce <= c.ce_at_one + 1e-12);
    assert!(c.voxels > 0 && c.samples == 4 && c.target_sigma == 1.0);
    let dir = std::env::temp_dir().join(format!("calseg-vls-calib-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    assert_eq!(calseg_vls::Calibration::load(&dir).unwrap(), None);
    c.save(&dir).unwrap();
    // JSON keeps every field (floats to the last bit or so).
    let back = calseg_vls::Calibration::load(&dir).unwrap().unwrap();
    assert_abs_diff_eq!(back.tau, c.tau, epsilon = 1e-12);
    assert_abs_diff_eq!(back.ce, c.ce, epsilon = 1e-12);
    assert_eq!(
        (back.alpha, back.voxels, back.samples),
        (c.alpha, c.voxels, c.samples)
    );
    let bad = serde_json::json!({"tau": -1.0, "ce": 0.0, "ce_at_one": 0.0, "target_sigma": 0.0, "voxels": 1, "samples": 1});
    std::fs::write(dir.join(calseg_vls::CALIBRATION_FILE), bad.to_string()).unwrap();
    assert!(matches!(
        calseg_vls::Calibration::load(&dir),
        Err(VlsError::Config(_))
    ));
    std::fs::remove_dir_all(&dir).ok();
    // A case without labels is a configuration error, not a panic.
    let mut unlabelled = phantom_case(vec![16, 16, 3], 6);
    unlabelled.label = None;
    assert!(matches!(
        calseg_vls::calibrate_temperature(&m, &[unlabelled], &sc),
        Err(VlsError::Config(_))
    ));
}

/// The held-out slab of a slab split is smoothed with its training slab below it and
/// scored alone: the same calibration as `calibrate_maps` on the crop of the whole
/// volume's `y_s`, and a different one from smoothing the slab on its own.
#[test]
fn held_out_slabs_are_calibrated_in_context() {
    use calseg_io::preprocess::crop;
    use calseg_vls::smooth::{CalibrationItem, calibrate_held_out_slabs, calibrate_maps};
    let m = patched_model(2);
    let whole = phantom_case(vec![12, 12, 14], 9);
    let train = crop(&whole, &[0..12, 0..12, 0..10]).unwrap();
    let mut held = crop(&whole, &[0..12, 0..12, 10..14]).unwrap();
    held.soft_label = None;
    let sc = SmoothConfig {
        samples: 3,
        ..SmoothConfig::default()
    };
    let c = calibrate_held_out_slabs(&m, &[(&train, &held)], 2, &sc).unwrap();
    assert!(c.voxels > 0 && c.voxels <= 12 * 12 * 4, "{}", c.voxels);
    // By hand: y_s of the whole volume (noise seeded with the held-out slab's id), cropped.
    let mut image = whole.image.clone();
    calseg_io::preprocess::zscore_nonzero(&mut image);
    let labels = whole.label.clone().unwrap();
    let own = SmoothConfig {
        seed: calseg_vls::smooth::case_seed(sc.seed, &held.id),
        ..sc.clone()
    };
    let (y_s, _) = smooth_volume(&m, &image, &labels, &own).unwrap();
    let y_held = y_s
        .slice_axis(Axis(3), ndarray::Slice::from(10..14))
        .to_owned();
    let by_hand = calibrate_maps(
        &m,
        &[CalibrationItem {
            y_s: &y_held,
            labels: held.label.as_ref().unwrap(),
            image: &held.image,
        }],
        sc.samples,
    )
    .unwrap();
    assert_eq!(c, by_hand);
    let alone = calseg_vls::calibrate_temperature(&m, std::slice::from_ref(&held), &sc).unwrap();
    assert_ne!(c.ce_at_one, alone.ce_at_one);
    // Slabs that do not join (another in-plane size) are a shape error naming them.
    let other = crop(&phantom_case(vec![12, 10, 4], 1), &[0..12, 0..10, 0..4]).unwrap();
    let e = calibrate_held_out_slabs(&m, &[(&train, &other)], 2, &sc).unwrap_err();
    assert!(matches!(e, VlsError::Shape(_)), "{e}");
    // So is an axis the slabs do not have.
    let e = calibrate_held_out_slabs(&m, &[(&train, &held)], 3, &sc).unwrap_err();
    assert!(matches!(e, VlsError::Shape(_)), "{e}");

    // The pipeline does the same once told the split is one volume's slabs (what
    // `calseg experiment` does for a slab split); without it, each slab alone.
    use calseg_seg::score::EvalCase;
    use calseg_vls::pipeline::{Calseg, CalsegConfig};
    let cfg = CalsegConfig {
        samples: 3,
        ..CalsegConfig::default()
    };
    let val = [EvalCase::new(&held)];
    let plain = Calseg::new(cfg.clone()).unwrap();
    let in_context = Calseg::new(cfg.clone()).unwrap().with_held_out_slabs(2);
    let seed = 5;
    let sc = in_context.config().smooth_config(seed);
    let cal = |c: &Calseg| {
        c.calibrate(&m, std::slice::from_ref(&train), &val, seed, None)
            .unwrap()
            .unwrap()
    };
    assert_eq!(
        cal(&in_context),
        calibrate_held_out_slabs(&m, &[(&train, &held)], 2, &sc).unwrap()
    );
    assert_eq!(
        cal(&plain),
        calseg_vls::calibrate_temperature(&m, std::slice::from_ref(&held), &sc).unwrap()
    );
    // Slab pairs must pair up.
    let e = in_context.calibrate(&m, &[], &val, seed, None).unwrap_err();
    assert!(matches!(e, VlsError::Config(_)), "{e}");
}
