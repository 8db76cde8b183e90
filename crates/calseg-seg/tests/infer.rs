//! Inference: slice-wise 2D, whole-image padding, 3D sliding window with Gaussian
//! weights, temperature, and input checks.

use calseg_seg::SegError;
use calseg_seg::infer::{
    InferOptions, InferSpec, gaussian_weights, predict_logits, predict_probs, predict_probs_with,
    sliding_window_logits, softmax_classes, window_starts,
};
use calseg_seg::model::{InputSpec, SegModel};
use calseg_seg::net::{NormKind, UNetConfig};
use calseg_seg::train::Trainable;
use candle_core::Device;
use ndarray::{ArrayD, Axis, IxDyn};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn net(dims: usize) -> UNetConfig {
    UNetConfig {
        dims,
        in_channels: 2,
        classes: 3,
        base: 2,
        depth: 2,
        norm: NormKind::Group(2),
        ..UNetConfig::default()
    }
}

fn image(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    ArrayD::from_shape_fn(IxDyn(shape), |_| rng.random_range(0.0f32..2.0))
}

fn assert_distributions(p: &ArrayD<f32>) {
    for v in p.sum_axis(Axis(0)).iter() {
        assert!((v - 1.0).abs() < 1e-5, "sum {v}");
    }
    assert!(p.iter().all(|&v| (0.0..=1.0).contains(&v)));
}

#[test]
fn gaussian_weights_are_symmetric_with_peak_one() {
    let g = gaussian_weights(&[8, 6, 4], 1.0 / 8.0);
    assert_eq!(g.shape(), &[8, 6, 4]);
    for ((i, j, k), &v) in g
        .view()
        .into_dimensionality::<ndarray::Ix3>()
        .unwrap()
        .indexed_iter()
    {
        assert_eq!(v, g[[7 - i, j, k]]);
        assert_eq!(v, g[[i, 5 - j, k]]);
        assert_eq!(v, g[[i, j, 3 - k]]);
        assert!(v > 0.0 && v <= 1.0);
    }
    // even sizes: the four central voxels share the peak; the corner is the minimum
    let g2 = gaussian_weights(&[8, 8], 1.0 / 8.0);
    assert_eq!(g2[[3, 3]], g2[[4, 4]]);
    assert!(g2[[3, 3]] > 0.99);
    let min = g2.iter().cloned().fold(f32::INFINITY, f32::min);
    assert_eq!(min, g2[[0, 0]]);
}

#[test]
fn windows_cover_the_axis_with_the_requested_overlap() {
    assert_eq!(window_starts(16, 16, 0.5), vec![0]);
    assert_eq!(window_starts(10, 16, 0.5), vec![0]);
    assert_eq!(window_starts(24, 16, 0.5), vec![0, 8]);
    let s = window_starts(37, 16, 0.5);
    assert_eq!(*s.first().unwrap(), 0);
    assert_eq!(*s.last().unwrap(), 37 - 16);
    for w in s.windows(2) {
        assert!(w[1] - w[0] <= 8 && w[1] > w[0]);
    }
}

#[test]
fn sliding_window_equals_whole_volume_when_the_patch_covers_it() {
    let m = SegModel::new(&net(3), 1, &Device::Cpu).unwrap();
    let spec = InferSpec::of(&m);
    let x = image(&[2, 8, 8, 8], 2);
    let opts = InferOptions::default();
    let whole = predict_logits(&m, &spec, x.clone(), &opts).unwrap();
    let mut xn = x.clone();
    calseg_io::preprocess::zscore_nonzero(&mut xn);
    let run = |b: &ArrayD<f32>| {
        calseg_seg::infer::logits_array(
            &m,
            &calseg_seg::convert::array_to_tensor(b.view(), &Device::Cpu)?,
        )
    };
    let sw = sliding_window_logits(&run, xn.insert_axis(Axis(0)), &spec, &[8, 8, 8], 0.5, 4)
        .unwrap()
        .index_axis_move(Axis(0), 0);
    assert_eq!(sw.shape(), whole.shape());
    for (a, b) in sw.iter().zip(whole.iter()) {
        assert!((a - b).abs() < 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
    }
}

#[test]
fn sliding_window_on_a_larger_volume_gives_distributions() {
    let m = SegModel::new(&net(3), 1, &Device::Cpu)
        .unwrap()
        .with_input(InputSpec {
            patch: Some(vec![8, 8, 8]),
            ..InputSpec::default()
        });
    let p = predict_probs(&m, image(&[2, 13, 8, 6], 3)).unwrap();
    assert_eq!(p.shape(), &[3, 13, 8, 6]);
    assert_distributions(&p);
}

#[test]
fn a_2d_model_segments_volumes_slice_by_slice() {
    let m = SegModel::new(&net(2), 1, &Device::Cpu)
        .unwrap()
        .with_input(InputSpec {
            axis: Some(2),
            ..InputSpec::default()
        });
    let x = image(&[2, 10, 12, 5], 4);
    let p = predict_probs_with(
        &m,
        x.clone(),
        &InferOptions {
            batch_size: 2,
            ..InferOptions::default()
        },
    )
    .unwrap();
    assert_eq!(p.shape(), &[3, 10, 12, 5]);
    assert_distributions(&p);
    // slice 3 equals the model on that slice alone (same normalisation, padding 10 → 12)
    let mut xn = x.clone();
    calseg_io::preprocess::zscore_nonzero(&mut xn);
    let sl = xn.index_axis(Axis(3), 3).to_owned();
    let mut padded = ArrayD::<f32>::zeros(IxDyn(&[1, 2, 12, 12]));
    padded
        .slice_mut(ndarray::s![0, .., 0..10, 0..12])
        .assign(&sl);
    let t = calseg_seg::convert::array_to_tensor(padded.view(), &Device::Cpu).unwrap();
    m.set_training(false);
    let l = calseg_seg::infer::logits_array(&m, &t).unwrap();
    let l = l
        .index_axis(Axis(0), 0)
        .slice(ndarray::s![.., 0..10, 0..12])
        .to_owned()
        .into_dyn();
    let want = softmax_classes(l, 1.0).unwrap();
    let got = p.index_axis(Axis(3), 3);
    for (a, b) in got.iter().zip(want.iter()) {
        assert!((a - b).abs() < 1e-5);
    }
}

#[test]
fn temperature_divides_the_logits() {
    let mut m = SegModel::new(&net(2), 1, &Device::Cpu).unwrap();
    let x = image(&[2, 8, 8], 5);
    let l = predict_logits(&m, &InferSpec::of(&m), x.clone(), &InferOptions::default()).unwrap();
    m.set_temperature(2.5).unwrap();
    let p = predict_probs(&m, x.clone()).unwrap();
    let want = softmax_classes(l.mapv(|v| v / 2.5), 1.0).unwrap();
    for (a, b) in p.iter().zip(want.iter()) {
        assert!((a - b).abs() < 1e-6);
    }
    // an explicit temperature overrides the model's
    let p1 = predict_probs_with(
        &m,
        x,
        &InferOptions {
            temperature: Some(1.0),
            ..InferOptions::default()
        },
    )
    .unwrap();
    let want1 = softmax_classes(l, 1.0).unwrap();
    for (a, b) in p1.iter().zip(want1.iter()) {
        assert!((a - b).abs() < 1e-6);
    }
}

#[test]
fn wrong_channels_or_dimensions_are_errors() {
    let m = SegModel::new(&net(2), 1, &Device::Cpu).unwrap();
    let e = predict_probs(&m, image(&[3, 8, 8], 1)).unwrap_err();
    assert!(matches!(e, SegError::Shape(_)), "{e}");
    assert!(e.to_string().contains("2 channels"), "{e}");
    let m3 = SegModel::new(&net(3), 1, &Device::Cpu).unwrap();
    let e = predict_probs(&m3, image(&[2, 8, 8], 1)).unwrap_err();
    assert!(matches!(e, SegError::Shape(_)), "{e}");
}
