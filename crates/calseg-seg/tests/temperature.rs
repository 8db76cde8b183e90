//! Temperature scaling: recovery of a known temperature, NLL/ECE definitions checked by
//! hand and against calseg-metrics, array and tensor inputs, application and storage.

use calseg_metrics::{InputMode, MetricConfig, TopLabelCalibration};
use calseg_seg::SegError;
use calseg_seg::calibrate::{FitConfig, Grid, Objective, Temperature, TemperatureFit};
use candle_core::{DType, Device, Tensor};
use ndarray::{ArrayD, IxDyn};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

type R<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// `v` voxels of a calibrated K-class model (logits `z ~ N(0, 2²)`, label drawn from
/// `softmax(z)`), returned with logits multiplied by `scale`: `(K, v)` logits, `(v)` labels.
fn synthetic(k: usize, v: usize, scale: f64, seed: u64) -> (ArrayD<f32>, ArrayD<u8>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut l = ArrayD::<f32>::zeros(IxDyn(&[k, v]));
    let mut y = ArrayD::<u8>::zeros(IxDyn(&[v]));
    for i in 0..v {
        let z: Vec<f64> = (0..k)
            .map(|_| {
                let g: f64 = StandardNormal.sample(&mut rng);
                2.0 * g
            })
            .collect();
        let mx = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = z.iter().map(|x| (x - mx).exp()).collect();
        let s: f64 = e.iter().sum();
        let mut u = rng.random::<f64>() * s;
        let mut lab = k - 1;
        for (c, ec) in e.iter().enumerate() {
            if u < *ec {
                lab = c;
                break;
            }
            u -= ec;
        }
        y[[i]] = lab as u8;
        for c in 0..k {
            l[[c, i]] = (z[c] * scale) as f32;
        }
    }
    (l, y)
}

#[test]
fn recovers_temperature_three_with_nll() -> R {
    let (l, y) = synthetic(4, 20_000, 3.0, 1);
    let mut fit = TemperatureFit::new(FitConfig::default())?;
    // Two updates (two "images") of 10 000 voxels each.
    fit.update(
        l.slice_axis(ndarray::Axis(1), (0..10_000).into()),
        y.slice_axis(ndarray::Axis(0), (0..10_000).into()),
    )?;
    fit.update(
        l.slice_axis(ndarray::Axis(1), (10_000..20_000).into()),
        y.slice_axis(ndarray::Axis(0), (10_000..20_000).into()),
    )?;
    assert_eq!((fit.n_voxels(), fit.n_classes()), (20_000, 4));
    let r = fit.fit()?;
    let t = r.temperature.0;
    assert!((t - 3.0).abs() < 0.15, "fitted T = {t}");
    assert!(r.nll <= r.nll_at_one);
    assert!(
        r.nll_at_one - r.nll > 0.1,
        "scaling by 3 is far from calibrated"
    );
    assert!(r.ece < r.ece_at_one);
    assert_eq!(r.curve.len(), 100);
    assert_eq!(
        (r.curve[0].t, r.curve[9].t, r.curve[99].t),
        (0.1, 1.0, 10.0)
    );
    // The refined T is at least as good as every grid point.
    let grid_best = r.curve.iter().map(|p| p.nll).fold(f64::INFINITY, f64::min);
    assert!(r.nll <= grid_best + 1e-12);
    // Refinement off: a grid point.
    let mut coarse = TemperatureFit::new(FitConfig {
        refine: false,
        ..FitConfig::default()
    })?;
    coarse.update(l.view(), y.view())?;
    let c = coarse.fit()?;
    assert!(((c.temperature.0 * 10.0).round() - c.temperature.0 * 10.0).abs() < 1e-9);
    assert!((c.temperature.0 - t).abs() <= 0.1 + 1e-9);
    assert_eq!(c.nll, grid_best);
    Ok(())
}

#[test]
fn recovers_temperature_with_ece() -> R {
    let (l, y) = synthetic(3, 20_000, 3.0, 2);
    let mut fit = TemperatureFit::new(FitConfig::ece(15))?;
    fit.update(l.view(), y.view())?;
    let r = fit.fit()?;
    assert_eq!(r.objective, Objective::Ece { bins: 15 });
    assert!(
        (r.temperature.0 - 3.0).abs() < 0.5,
        "T = {}",
        r.temperature.0
    );
    assert!(r.ece < 0.02 && r.ece < r.ece_at_one);
    // Deterministic: the same data give bit-identical curves.
    assert_eq!(fit.fit()?, r);
    // Already calibrated logits: T ≈ 1.
    let (l1, y1) = synthetic(3, 20_000, 1.0, 3);
    let mut fit = TemperatureFit::new(FitConfig::default())?;
    fit.update(l1.view(), y1.view())?;
    assert!((fit.fit()?.temperature.0 - 1.0).abs() < 0.06);
    Ok(())
}

#[test]
fn nll_hand_value_and_ece_matches_calseg_metrics() -> R {
    // One voxel, logits (2 ln 3, 0), label 0: at T = 2, p_0 = 3/4.
    let l = ArrayD::from_shape_vec(IxDyn(&[2, 1]), vec![(2.0 * 3f64.ln()) as f32, 0.0])?;
    let y = ArrayD::from_shape_vec(IxDyn(&[1]), vec![0i64])?;
    let mut fit = TemperatureFit::new(FitConfig::default())?;
    fit.update(l.view(), y.view())?;
    let p = fit.evaluate(Temperature(2.0))?;
    assert!((p.nll + 0.75f64.ln()).abs() < 1e-7);
    assert!((p.ece - 0.25).abs() < 1e-7); // one right voxel at confidence ¾

    // ECE at several T equals calseg-metrics' top-label ECE (15 left-closed bins) of the
    // scaled logits.
    let (l, y) = synthetic(5, 3_000, 2.0, 4);
    let mut fit = TemperatureFit::new(FitConfig::default())?;
    fit.update(l.view(), y.view())?;
    for t in [0.5, 1.0, 2.0, 3.7] {
        let ours = fit.evaluate(Temperature(t))?;
        let scaled = Temperature(t).apply_array(l.view());
        let mut m = TopLabelCalibration::new(MetricConfig::default().input(InputMode::Logits))?;
        m.update(scaled.view(), y.view())?;
        let theirs = m.finish()?.ece;
        assert!(
            (ours.ece - theirs).abs() < 1e-6,
            "T = {t}: {} vs {theirs}",
            ours.ece
        );
    }
    Ok(())
}

#[test]
fn tensor_updates_match_array_updates() -> R {
    let (l, y) = synthetic(3, 2 * 4 * 5, 3.0, 5);
    let mut a = TemperatureFit::new(FitConfig::default())?;
    a.update(l.view(), y.view())?;
    // The same voxels as a batch (2, 3, 4, 5): image i holds voxels i·20..(i+1)·20.
    let dev = Device::Cpu;
    let lt = Tensor::from_vec(l.iter().cloned().collect::<Vec<f32>>(), (3, 2, 4, 5), &dev)?
        .transpose(0, 1)?;
    let yt = Tensor::from_vec(
        y.iter().map(|&v| u32::from(v)).collect::<Vec<u32>>(),
        (2, 4, 5),
        &dev,
    )?;
    let mut b = TemperatureFit::new(FitConfig::default())?;
    b.update_tensor(&lt, &yt)?;
    let mut c = TemperatureFit::new(FitConfig::default())?;
    let onehot = candle_nn::encoding::one_hot(yt.clone(), 3, 1f32, 0f32)?.permute((0, 3, 1, 2))?;
    c.update_tensor(&lt.to_dtype(DType::F64)?, &onehot)?;
    let (ra, rb, rc) = (a.fit()?, b.fit()?, c.fit()?);
    assert_eq!(ra.temperature, rb.temperature);
    assert_eq!(ra.temperature, rc.temperature);
    assert_eq!(ra.curve, rb.curve);
    Ok(())
}

#[test]
fn apply_and_store() -> R {
    let t = Temperature::new(2.0)?;
    let l = Tensor::new(&[2.0f32, -4.0, 1.0], &Device::Cpu)?;
    assert_eq!(t.apply(&l)?.to_vec1::<f32>()?, vec![1.0, -2.0, 0.5]);
    let a = ArrayD::from_shape_vec(IxDyn(&[3]), vec![2.0f32, -4.0, 1.0])?;
    assert_eq!(
        t.apply_array(a.view()).into_raw_vec_and_offset().0,
        vec![1.0, -2.0, 0.5]
    );
    let mut b = a.clone();
    t.apply_in_place(b.view_mut());
    assert_eq!(b.into_raw_vec_and_offset().0, vec![1.0, -2.0, 0.5]);
    assert_eq!(serde_json::to_string(&t)?, "2.0");
    let dir = std::env::temp_dir().join(format!("calseg-temp-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(Temperature::FILE_NAME);
    Temperature(2.75).save(&path)?;
    assert_eq!(Temperature::load(&path)?, Temperature(2.75));
    std::fs::write(&path, "{\"temperature\": -1}")?;
    assert!(Temperature::load(&path).is_err());
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn bad_inputs_are_typed_errors() -> R {
    assert!(matches!(Temperature::new(0.0), Err(SegError::Config(_))));
    assert!(matches!(
        Temperature::new(f64::NAN),
        Err(SegError::Config(_))
    ));
    for grid in [
        Grid {
            min: 0.0,
            max: 1.0,
            step: 0.1,
        },
        Grid {
            min: 1.0,
            max: 0.5,
            step: 0.1,
        },
        Grid {
            min: 0.1,
            max: 1.0,
            step: 0.0,
        },
    ] {
        let cfg = FitConfig {
            grid,
            ..FitConfig::default()
        };
        assert!(matches!(TemperatureFit::new(cfg), Err(SegError::Config(_))));
    }
    assert!(matches!(
        TemperatureFit::new(FitConfig::ece(0)),
        Err(SegError::Config(_))
    ));
    let mut fit = TemperatureFit::new(FitConfig::default())?;
    assert!(matches!(fit.fit(), Err(SegError::Config(_))));
    let l = ArrayD::<f32>::zeros(IxDyn(&[2, 3]));
    let bad = ArrayD::from_shape_vec(IxDyn(&[3]), vec![0u8, 2, 1])?;
    assert!(matches!(
        fit.update(l.view(), bad.view()),
        Err(SegError::Shape(_))
    ));
    assert_eq!(fit.n_voxels(), 0);
    let ok = ArrayD::from_shape_vec(IxDyn(&[3]), vec![0u8, 1, 1])?;
    fit.update(l.view(), ok.view())?;
    let l3 = ArrayD::<f32>::zeros(IxDyn(&[3, 3]));
    assert!(matches!(
        fit.update(l3.view(), ok.view()),
        Err(SegError::Shape(_))
    ));
    let short = ArrayD::from_shape_vec(IxDyn(&[2]), vec![0u8, 1])?;
    assert!(matches!(
        fit.update(l.view(), short.view()),
        Err(SegError::Shape(_))
    ));
    let neg = Tensor::new(&[[-1i64, 0, 1]], &Device::Cpu)?;
    let lt = Tensor::zeros((1, 2, 3), DType::F32, &Device::Cpu)?;
    assert!(matches!(
        fit.update_tensor(&lt, &neg),
        Err(SegError::Shape(_))
    ));
    assert_eq!(fit.n_voxels(), 3);
    Ok(())
}
