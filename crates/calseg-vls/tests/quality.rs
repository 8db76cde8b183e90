//! TV distance and the baseline soft labels, including the reference numbers on the
//! embedded ICBM152 template.

use approx::assert_abs_diff_eq;
use calseg_vls::mix::one_hot;
use calseg_vls::quality::{baselines, svls, svls_in_plane, tv_distance, uniform_ls};
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

/// The embedded brain's labels, true tissue probabilities and brain mask.
fn icbm152() -> (ArrayD<u32>, ArrayD<f32>, ArrayD<bool>) {
    let labels = calseg_io::icbm152::labels().unwrap().labels;
    let truth = calseg_io::icbm152::true_probs().unwrap().probs.into_f32();
    let mask = calseg_io::icbm152::brain_mask()
        .unwrap()
        .labels
        .mapv(|v| v > 0);
    (labels, truth, mask)
}

#[test]
fn icbm152_baselines_match_the_reference() {
    let (labels, truth, mask) = icbm152();
    let rows = baselines(&labels.view(), &truth, Some(&mask), 0.1, 1.0, None).unwrap();
    let tv = |name: &str| rows.iter().find(|r| r.method.starts_with(name)).unwrap().tv;
    // ANCHORS: hard 0.232; smoothing the hard labels brings them closer to the truth.
    assert_abs_diff_eq!(tv("hard"), 0.232, epsilon = 0.002);
    assert!(tv("LS") < tv("hard"));
    assert!(tv("SVLS") < tv("LS"));
}

#[test]
fn in_plane_svls_smooths_each_slice_alone() {
    let lab = ArrayD::from_shape_fn(IxDyn(&[5, 4, 3]), |i| ((i[0] * 2 + i[1] + i[2]) % 3) as u32);
    for axis in 0..3 {
        let s = svls_in_plane(&lab.view(), 3, 1.0, axis).unwrap();
        assert_eq!(s.shape(), &[3, 5, 4, 3]);
        for (z, slice) in lab.axis_iter(Axis(axis)).enumerate() {
            let want = svls(&slice, 3, 1.0).unwrap();
            let got = s.index_axis(Axis(axis + 1), z);
            assert!(want.iter().zip(got.iter()).all(|(a, b)| a == b));
        }
    }
    // Not the 3×3×3 smoothing: the neighbours across slices are left out.
    let s3 = svls(&lab.view(), 3, 1.0).unwrap();
    let s2 = svls_in_plane(&lab.view(), 3, 1.0, 2).unwrap();
    assert!(tv_distance(&s2, &s3, None).unwrap() > 1e-3);
    assert!(svls_in_plane(&lab.view(), 3, 1.0, 3).is_err());
}

#[test]
fn baselines_of_a_2d_experiment_name_both_svls_rows() {
    let (labels, truth, mask) = icbm152();
    let rows = baselines(&labels.view(), &truth, Some(&mask), 0.1, 1.0, Some(2)).unwrap();
    let tv = |name: &str| rows.iter().find(|r| r.method == name).unwrap().tv;
    // The 3D neighbourhood is closer to the (3D) partial volume than the in-plane one:
    // 0.139 vs 0.147 on the whole brain (crate README).
    assert!(tv("SVLS(σ=1, 3×3×3)") < tv("SVLS(σ=1, in-plane)"));
    assert_abs_diff_eq!(tv("SVLS(σ=1, in-plane)"), 0.147, epsilon = 0.002);
    assert_eq!(rows.len(), 4);
    // A 3D experiment (no slicing axis): the one SVLS row, as before.
    let rows = baselines(&labels.view(), &truth, Some(&mask), 0.1, 1.0, None).unwrap();
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().any(|r| r.method == "SVLS(σ=1)"));
}
