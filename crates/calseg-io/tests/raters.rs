//! Multi-rater dataset folders: discovery of `labelsTr/CASE_rater{N}`, the majority vote,
//! the errors (gaps, shapes, a case with both kinds of label files), and the seeded
//! multi-rater phantom.

use calseg_io::dataset::majority_vote;
use calseg_io::phantom::{
    PhantomConfig, RaterDatasetConfig, RaterPhantomConfig, generate, generate_raters,
    write_rater_dataset,
};
use calseg_io::{Dataset, Geometry, IoError, write_nifti, write_nifti_labels};
use ndarray::{ArrayD, IxDyn};
use std::fs;
use std::path::{Path, PathBuf};

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("calseg-io-raters-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

fn small() -> RaterDatasetConfig {
    RaterDatasetConfig {
        phantom: RaterPhantomConfig {
            phantom: PhantomConfig {
                shape: vec![12, 12, 3],
                classes: 3,
                supersample: 2,
                ..Default::default()
            },
            raters: 3,
            spread: 0.6,
        },
        train: 2,
        test: 1,
    }
}

/// A hand-made one-case folder: image 2×3 and the given rater maps (`rater{N}` → map).
fn hand_made(root: &Path, raters: &[(u32, Vec<u32>, Vec<usize>)], own_label: bool) {
    for sub in ["imagesTr", "labelsTr"] {
        fs::create_dir_all(root.join(sub)).unwrap();
    }
    fs::write(
        root.join("dataset.json"),
        r#"{"channel_names": {"0": "MR"}, "labels": {"background": 0, "a": 1, "b": 2},
            "numTraining": 1, "file_ending": ".nii.gz"}"#,
    )
    .unwrap();
    let geo = Geometry::unit(2);
    let img = ArrayD::<f32>::zeros(IxDyn(&[2, 3]));
    write_nifti(root.join("imagesTr/c_0000.nii.gz"), &img, &geo).unwrap();
    for (n, v, shape) in raters {
        let m = ArrayD::from_shape_vec(IxDyn(shape), v.clone()).unwrap();
        write_nifti_labels(root.join(format!("labelsTr/c_rater{n}.nii.gz")), &m, &geo).unwrap();
    }
    if own_label {
        let m = ArrayD::<u32>::zeros(IxDyn(&[2, 3]));
        write_nifti_labels(root.join("labelsTr/c.nii.gz"), &m, &geo).unwrap();
    }
}

#[test]
fn phantom_folder_is_discovered_and_voted() {
    let root = scratch("discover");
    let cfg = small();
    write_rater_dataset(&root, &cfg, 11).unwrap();
    let ds = Dataset::open(&root).unwrap();
    ds.check().unwrap();
    let ids: Vec<&str> = ds.training_cases().iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["rp_000", "rp_001"]);
    assert_eq!(ds.test_cases()[0].id, "rp_002");
    assert!(
        ds.training_cases()
            .iter()
            .chain(ds.test_cases())
            .all(|c| c.rater_count() == 3)
    );
    for (i, id) in ["rp_000", "rp_001", "rp_002"].iter().enumerate() {
        let case = ds.load(id).unwrap();
        let raters = case.raters.clone().unwrap();
        // Read back exactly what the generator made, in rater order.
        let rp = generate_raters(&cfg.phantom, 11 + i as u64).unwrap();
        assert_eq!(raters, rp.raters);
        assert_eq!(
            case.label.as_ref().unwrap(),
            &majority_vote(&raters).unwrap()
        );
        assert!(majority_vote(&[]).is_err());
        assert!(majority_vote(&[raters[0].clone(), ArrayD::zeros(IxDyn(&[2]))]).is_err());
        let made = rp.to_case(id);
        assert_eq!(case.label, made.label);
        assert_eq!(case.image, made.image);
        let soft = case.soft_label.as_ref().unwrap();
        assert_eq!(soft.shape(), &[3, 12, 12, 3]);
        assert!(
            soft.iter()
                .zip(&rp.phantom.soft_labels)
                .all(|(a, b)| (a - b).abs() < 1e-6)
        );
    }
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn rater_phantom_is_seeded_and_disagrees_at_boundaries_only() {
    let cfg = RaterPhantomConfig {
        phantom: PhantomConfig {
            shape: vec![32, 32],
            ..Default::default()
        },
        raters: 5,
        spread: 0.5,
    };
    let a = generate_raters(&cfg, 3).unwrap();
    assert_eq!(a, generate_raters(&cfg, 3).unwrap());
    assert_ne!(a.raters, generate_raters(&cfg, 4).unwrap().raters);
    // The phantom is the one `generate` makes: raters draw from a separate stream.
    assert_eq!(a.phantom, generate(&cfg.phantom, 3).unwrap());
    let truth = &a.phantom.labels;
    let mut disagree = 0;
    for (idx, &t) in truth.indexed_iter() {
        let votes: Vec<u32> = a.raters.iter().map(|r| r[&idx]).collect();
        if votes.iter().any(|&v| v != votes[0]) {
            disagree += 1;
            // Disagreement only near a boundary of the truth (within 3 pixels).
            let near = (-3i64..=3).any(|dx| {
                (-3i64..=3).any(|dy| {
                    let (x, y) = (idx[0] as i64 + dx, idx[1] as i64 + dy);
                    (0..32).contains(&x)
                        && (0..32).contains(&y)
                        && truth[[x as usize, y as usize]] != t
                })
            });
            assert!(near, "raters disagree far from a boundary at {idx:?}");
        }
    }
    assert!(disagree > 10, "only {disagree} pixels of disagreement");
    // Spread 0: every rater draws the phantom's boundary at voxel centres.
    let same = generate_raters(
        &RaterPhantomConfig {
            spread: 0.0,
            ..cfg.clone()
        },
        3,
    )
    .unwrap();
    assert!(same.raters.iter().all(|r| *r == same.raters[0]));
    for bad in [
        RaterPhantomConfig {
            raters: 0,
            ..cfg.clone()
        },
        RaterPhantomConfig {
            spread: -1.0,
            ..cfg.clone()
        },
    ] {
        assert!(generate_raters(&bad, 0).is_err());
    }
}

#[test]
fn majority_vote_ties_go_to_the_lowest_value() {
    let root = scratch("vote");
    hand_made(
        &root,
        &[
            (1, vec![0, 1, 2, 2, 1, 0], vec![2, 3]),
            (2, vec![1, 1, 2, 1, 2, 0], vec![2, 3]),
        ],
        false,
    );
    let ds = Dataset::open(&root).unwrap();
    ds.check().unwrap();
    let c = ds.load("c").unwrap();
    // Voxel by voxel: {0,1} → 0, {1,1} → 1, {2,2} → 2, {2,1} → 1, {1,2} → 1, {0,0} → 0.
    assert_eq!(
        c.label.unwrap().into_raw_vec_and_offset().0,
        vec![0, 1, 2, 1, 1, 0]
    );
    assert_eq!(c.raters.map(|r| r.len()), Some(2));
    fs::remove_dir_all(&root).unwrap();
}

fn case_error(root: &Path) -> (String, PathBuf) {
    let ds = Dataset::open(root).unwrap();
    let e = ds.load("c").unwrap_err();
    assert_eq!(
        ds.check().unwrap_err().to_string(),
        e.to_string(),
        "check() reports the same problem"
    );
    let msg = e.to_string();
    match e {
        IoError::Case { path, .. } => (msg, path),
        other => panic!("expected a case error, got {other}"),
    }
}

#[test]
fn rater_errors_name_the_file() {
    let ok = vec![0u32, 1, 2, 2, 1, 0];
    // A gap: rater 1 and 3.
    let root = scratch("gap");
    hand_made(
        &root,
        &[(1, ok.clone(), vec![2, 3]), (3, ok.clone(), vec![2, 3])],
        false,
    );
    let (msg, path) = case_error(&root);
    assert!(path.ends_with("labelsTr/c_rater2.nii.gz"), "{msg}");
    assert!(msg.contains("without gaps"), "{msg}");
    // Numbering must start at 1.
    let root = scratch("gap0");
    hand_made(&root, &[(2, ok.clone(), vec![2, 3])], false);
    let (msg, _) = case_error(&root);
    assert!(msg.contains("c_rater1.nii.gz"), "{msg}");
    // A rater of another shape.
    let root = scratch("shape");
    hand_made(
        &root,
        &[(1, ok.clone(), vec![2, 3]), (2, vec![0; 6], vec![3, 2])],
        false,
    );
    let (msg, path) = case_error(&root);
    assert!(path.ends_with("labelsTr/c_rater2.nii.gz"), "{msg}");
    assert!(msg.contains("rater 2 label shape [3, 2]"), "{msg}");
    // An undeclared value in a rater.
    let root = scratch("value");
    hand_made(&root, &[(1, vec![0, 1, 2, 7, 1, 0], vec![2, 3])], false);
    let (msg, path) = case_error(&root);
    assert!(path.ends_with("labelsTr/c_rater1.nii.gz"), "{msg}");
    assert!(msg.contains("value 7"), "{msg}");
    // Both CASE.nii.gz and CASE_rater1.nii.gz: ambiguous, an error naming both.
    let root = scratch("both");
    hand_made(&root, &[(1, ok.clone(), vec![2, 3])], true);
    let (msg, path) = case_error(&root);
    assert!(path.ends_with("labelsTr/c.nii.gz"), "{msg}");
    assert!(msg.contains("c_rater1.nii.gz"), "{msg}");
    // A rater file of a case that does not exist is flagged by check().
    let root = scratch("orphan");
    hand_made(&root, &[(1, ok.clone(), vec![2, 3])], false);
    let geo = Geometry::unit(2);
    let m = ArrayD::<u32>::zeros(IxDyn(&[2, 3]));
    write_nifti_labels(root.join("labelsTr/ghost_rater1.nii.gz"), &m, &geo).unwrap();
    let e = Dataset::open(&root)
        .unwrap()
        .check()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ghost_rater1.nii.gz") && e.contains("without images"),
        "{e}"
    );
    for d in ["gap", "gap0", "shape", "value", "both", "orphan"] {
        let _ = fs::remove_dir_all(
            std::env::temp_dir().join(format!("calseg-io-raters-{d}-{}", std::process::id())),
        );
    }
}
