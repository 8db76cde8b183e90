//! TV distance and the baseline soft labels, including the reference numbers on the
//! embedded ICBM152 template.

use approx::assert_abs_diff_eq;
use calseg_vls::mix::one_hot;
use calseg_vls::quality::{baselines, svls, tv_distance, uniform_ls};
use ndarray::{ArrayD, Axis, IxDyn};

#[test]
fn tv_of_identical_maps_is_zero_and_of_disjoint_is_one() {
    let lab = ArrayD::from_shape_fn(IxDyn(&[5, 4]), |i| ((i[0] + i[1]) % 3) as u32);
    let a = svls(&lab.view(), 3, 1.0).unwrap();
    assert_eq!(tv_distance(&a, &a, None).unwrap(), 0.0);
    let shifted = lab.mapv(|v| (v + 1) % 3);
    let h = one_hot(&lab.view(), 3).unwrap();
    let g = one_hot(&shifted.view(), 3).unwrap();
    assert_abs_diff_eq!(tv_distance(&h, &g, None).unwrap(), 1.0, epsilon = 1e-12);
    // The mask restricts the mean; an empty mask gives 0.
    let mut mask = ArrayD::from_elem(IxDyn(&[5, 4]), false);
    assert_eq!(tv_distance(&h, &g, Some(&mask)).unwrap(), 0.0);
    mask[[0, 0]] = true;
    assert_abs_diff_eq!(
        tv_distance(&h, &g, Some(&mask)).unwrap(),
        1.0,
        epsilon = 1e-12
    );
    assert!(tv_distance(&h, &a.slice_axis(Axis(1), (0..2).into()).to_owned(), None).is_err());
}

#[test]
fn uniform_ls_values() {
    let lab = ArrayD::from_shape_vec(IxDyn(&[2]), vec![0u32, 3]).unwrap();
    let y = uniform_ls(&lab.view(), 4, 0.2).unwrap();
    assert_abs_diff_eq!(y[[0, 0]], 0.85, epsilon = 1e-6);
    assert_abs_diff_eq!(y[[1, 0]], 0.05, epsilon = 1e-6);
    assert_abs_diff_eq!(y[[3, 1]], 0.85, epsilon = 1e-6);
    assert!(uniform_ls(&lab.view(), 4, 1.5).is_err());
}

#[test]
fn svls_weights_and_borders() {
    // A single class-1 voxel in a 5×5 field of class 0.
    let mut lab = ArrayD::from_elem(IxDyn(&[5, 5]), 0u32);
    lab[[2, 2]] = 1;
    let y = svls(&lab.view(), 2, 1.0).unwrap();
    assert_abs_diff_eq!(y[[1, 2, 2]], 0.5, epsilon = 1e-6); // the centre keeps ½
    let (edge, corner) = ((-0.5f64).exp(), (-1.0f64).exp());
    let wsum = 4.0 * edge + 4.0 * corner;
    assert_abs_diff_eq!(f64::from(y[[1, 1, 2]]), 0.5 * edge / wsum, epsilon = 1e-6);
    assert_abs_diff_eq!(f64::from(y[[1, 1, 1]]), 0.5 * corner / wsum, epsilon = 1e-6);
    assert_eq!(y[[1, 0, 0]], 0.0);
    for s in y.sum_axis(Axis(0)).iter() {
        assert_abs_diff_eq!(*s, 1.0, epsilon = 1e-6);
    }
    // Constant labels stay one-hot (replicate padding: no border effect), in 3D too.
    let c = ArrayD::from_elem(IxDyn(&[3, 4, 2]), 2u32);
    assert_eq!(
        svls(&c.view(), 3, 1.0).unwrap(),
        one_hot(&c.view(), 3).unwrap()
    );
}

#[test]
fn icbm152_baselines_match_the_reference() {
    let labels = calseg_io::icbm152::labels().unwrap().labels;
    let truth = calseg_io::icbm152::true_probs().unwrap().probs.into_f32();
    let mask = calseg_io::icbm152::brain_mask()
        .unwrap()
        .labels
        .mapv(|v| v > 0);
    let rows = baselines(&labels.view(), &truth, Some(&mask), 0.1, 1.0).unwrap();
    let tv = |name: &str| rows.iter().find(|r| r.method.starts_with(name)).unwrap().tv;
    // ANCHORS: hard 0.232; smoothing the hard labels brings them closer to the truth.
    assert_abs_diff_eq!(tv("hard"), 0.232, epsilon = 0.002);
    assert!(tv("LS") < tv("hard"));
    assert!(tv("SVLS") < tv("LS"));
}
