//! Decathlon / nnU-Net v2 dataset folders: listing, lazy loading, every consistency check,
//! and the embedded ICBM152 template.

use calseg_io::phantom::{PhantomConfig, generate};
use calseg_io::{
    Dataset, Geometry, IoError, Split, write_nifti, write_nifti_labels, write_nifti_probs,
};
use ndarray::{ArrayD, Axis, IxDyn};
use std::fs;
use std::path::{Path, PathBuf};

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("calseg-io-ds-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

const JSON_V2: &str = r#"{
  "channel_names": {"0": "T1", "1": "T2"},
  "labels": {"background": 0, "A": 1, "B": 2},
  "numTraining": 2,
  "file_ending": ".nii.gz"
}"#;

fn geometry() -> Geometry {
    Geometry::with_affine(
        vec![1.0, 1.5, 2.0],
        [
            [1.0, 0.0, 0.0, -5.0],
            [0.0, 1.5, 0.0, -6.0],
            [0.0, 0.0, 2.0, -7.0],
            [0.0, 0.0, 0.0, 1.0],
        ],
    )
}

/// A two-channel, three-class dataset of 2 training and 1 test case from phantoms.
fn make_dataset(root: &Path) {
    for sub in ["imagesTr", "labelsTr", "imagesTs", "softlabelsTr"] {
        fs::create_dir_all(root.join(sub)).unwrap();
    }
    fs::write(root.join("dataset.json"), JSON_V2).unwrap();
    let cfg = PhantomConfig {
        shape: vec![10, 12, 8],
        classes: 3,
        supersample: 2,
        ..Default::default()
    };
    let g = geometry();
    for (i, id) in ["case_a", "case_b", "case_t"].iter().enumerate() {
        let p = generate(&cfg, i as u64).unwrap();
        let img = p.image.index_axis(Axis(0), 0).to_owned();
        let split = if *id == "case_t" { "Ts" } else { "Tr" };
        write_nifti(
            root.join(format!("images{split}/{id}_0000.nii.gz")),
            &img,
            &g,
        )
        .unwrap();
        write_nifti(
            root.join(format!("images{split}/{id}_0001.nii.gz")),
            &img.mapv(|v| 1.0 - v),
            &g,
        )
        .unwrap();
        if split == "Tr" {
            write_nifti_labels(root.join(format!("labelsTr/{id}.nii.gz")), &p.labels, &g).unwrap();
            write_nifti_probs(
                root.join(format!("softlabelsTr/{id}.nii.gz")),
                &p.soft_labels,
                &g,
            )
            .unwrap();
        }
    }
    // Hidden files (macOS ._ droppings) are ignored.
    fs::write(root.join("imagesTr/._case_a_0000.nii.gz"), b"junk").unwrap();
}

fn case_err(e: IoError, case: &str, needle: &str) {
    let msg = e.to_string();
    match &e {
        IoError::Case { case: c, .. } => assert_eq!(c, case, "{msg}"),
        other => panic!("expected a case error, got {other}"),
    }
    assert!(msg.contains(needle), "{msg}");
}

#[test]
fn lists_and_loads_lazily() {
    let root = scratch("ok");
    make_dataset(&root);
    let ds = Dataset::open(&root).unwrap();
    assert_eq!(ds.info().channel_names, vec!["T1", "T2"]);
    assert_eq!(ds.info().num_classes(), 3);
    let ids: Vec<&str> = ds.training_cases().iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, vec!["case_a", "case_b"]);
    assert_eq!(ds.test_cases().len(), 1);
    assert_eq!(ds.test_cases()[0].split, Split::Test);
    ds.check().unwrap();

    let c = ds.load("case_a").unwrap();
    assert_eq!(c.image.shape(), &[2, 10, 12, 8]);
    let p = generate(
        &PhantomConfig {
            shape: vec![10, 12, 8],
            classes: 3,
            supersample: 2,
            ..Default::default()
        },
        0,
    )
    .unwrap();
    assert_eq!(c.label.as_ref().unwrap(), &p.labels);
    assert_eq!(c.soft_label.as_ref().unwrap(), &p.soft_labels);
    assert_eq!(
        c.image.index_axis(Axis(0), 0),
        p.image.index_axis(Axis(0), 0)
    );
    assert_eq!(c.geometry.spacing, vec![1.0, 1.5, 2.0]);
    assert_eq!(c.geometry.affine, geometry().affine);
    let t = ds.load("case_t").unwrap();
    assert!(t.label.is_none());
    assert!(ds.load("nope").is_err());

    // Deleting a file after opening only affects the case that needs it.
    fs::remove_file(root.join("imagesTr/case_b_0001.nii.gz")).unwrap();
    assert!(ds.load("case_a").is_ok());
    case_err(
        ds.load("case_b").unwrap_err(),
        "case_b",
        "channel 1 (T2) is missing",
    );
    case_err(ds.check().unwrap_err(), "case_b", "case_b_0001.nii.gz");
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn every_inconsistency_names_the_case() {
    let root = scratch("bad");
    make_dataset(&root);
    let g = geometry();

    // Channel shapes disagree.
    write_nifti(
        root.join("imagesTr/case_a_0001.nii.gz"),
        &ArrayD::<f32>::zeros(IxDyn(&[10, 12, 7])),
        &g,
    )
    .unwrap();
    case_err(
        Dataset::open(&root).unwrap().load("case_a").unwrap_err(),
        "case_a",
        "shape",
    );
    make_dataset(&root);

    // Channel affines disagree.
    let shifted = g.cropped(&[1, 0, 0]);
    write_nifti(
        root.join("imagesTr/case_a_0001.nii.gz"),
        &ArrayD::<f32>::zeros(IxDyn(&[10, 12, 8])),
        &shifted,
    )
    .unwrap();
    case_err(
        Dataset::open(&root).unwrap().load("case_a").unwrap_err(),
        "case_a",
        "affine",
    );
    make_dataset(&root);

    // Label shape and label affine.
    write_nifti_labels(
        root.join("labelsTr/case_b.nii.gz"),
        &ArrayD::<u32>::zeros(IxDyn(&[10, 12, 9])),
        &g,
    )
    .unwrap();
    case_err(
        Dataset::open(&root).unwrap().load("case_b").unwrap_err(),
        "case_b",
        "label shape",
    );
    write_nifti_labels(
        root.join("labelsTr/case_b.nii.gz"),
        &ArrayD::<u32>::zeros(IxDyn(&[10, 12, 8])),
        &shifted,
    )
    .unwrap();
    case_err(
        Dataset::open(&root).unwrap().load("case_b").unwrap_err(),
        "case_b",
        "label affine",
    );

    // Undeclared label value.
    let mut lab = ArrayD::<u32>::zeros(IxDyn(&[10, 12, 8]));
    lab[[3, 3, 3]] = 7;
    write_nifti_labels(root.join("labelsTr/case_b.nii.gz"), &lab, &g).unwrap();
    case_err(
        Dataset::open(&root).unwrap().load("case_b").unwrap_err(),
        "case_b",
        "label value 7 is not declared",
    );

    // Non-integral label in a float label file: typed error naming the file.
    let mut flab = ArrayD::<f32>::zeros(IxDyn(&[10, 12, 8]));
    flab[[1, 2, 3]] = 0.5;
    write_nifti(root.join("labelsTr/case_b.nii.gz"), &flab, &g).unwrap();
    let e = Dataset::open(&root).unwrap().load("case_b").unwrap_err();
    assert!(
        matches!(e, IoError::BadLabel { .. }) && e.to_string().contains("case_b.nii.gz"),
        "{e}"
    );

    // Missing label file.
    fs::remove_file(root.join("labelsTr/case_b.nii.gz")).unwrap();
    case_err(
        Dataset::open(&root).unwrap().load("case_b").unwrap_err(),
        "case_b",
        "label file is missing",
    );
    make_dataset(&root);

    // Soft labels with the wrong number of classes.
    write_nifti_probs(
        root.join("softlabelsTr/case_a.nii.gz"),
        &ArrayD::<f32>::zeros(IxDyn(&[2, 10, 12, 8])),
        &g,
    )
    .unwrap();
    case_err(
        Dataset::open(&root).unwrap().load("case_a").unwrap_err(),
        "case_a",
        "soft labels",
    );
    make_dataset(&root);

    // Corrupt image file: the file's own error.
    let p = root.join("imagesTr/case_a_0000.nii.gz");
    let bytes = fs::read(&p).unwrap();
    fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = Dataset::open(&root).unwrap().load("case_a").unwrap_err();
    assert!(
        matches!(e, IoError::Gzip { .. }) && e.to_string().contains("case_a_0000"),
        "{e}"
    );
    make_dataset(&root);

    // numTraining and orphan labels are checked by check().
    fs::write(
        root.join("dataset.json"),
        JSON_V2.replace("\"numTraining\": 2", "\"numTraining\": 3"),
    )
    .unwrap();
    let e = Dataset::open(&root).unwrap().check().unwrap_err();
    assert!(
        matches!(e, IoError::DatasetJson { .. }) && e.to_string().contains("numTraining is 3"),
        "{e}"
    );
    fs::write(root.join("dataset.json"), JSON_V2).unwrap();
    fs::copy(
        root.join("labelsTr/case_a.nii.gz"),
        root.join("labelsTr/case_z.nii.gz"),
    )
    .unwrap();
    case_err(
        Dataset::open(&root).unwrap().check().unwrap_err(),
        "case_z",
        "without images",
    );
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn dataset_json_and_folders() {
    let root = scratch("json");
    // No dataset.json.
    let e = Dataset::open(&root).unwrap_err();
    assert!(
        matches!(e, IoError::DatasetJson { .. }) && e.to_string().contains("dataset.json"),
        "{e}"
    );
    // Not JSON.
    fs::write(root.join("dataset.json"), "{\"channel_names\": ").unwrap();
    let e = Dataset::open(&root).unwrap_err();
    assert!(matches!(e, IoError::DatasetJson { .. }), "{e}");
    // Valid JSON, wrong content.
    fs::write(
        root.join("dataset.json"),
        r#"{"channel_names": {"0": "CT"}, "labels": {"bg": "zero"}, "numTraining": 0}"#,
    )
    .unwrap();
    let e = Dataset::open(&root).unwrap_err();
    assert!(e.to_string().contains("\"bg\""), "{e}");
    // Valid but no imagesTr.
    fs::write(
        root.join("dataset.json"),
        r#"{"channel_names": {"0": "CT"}, "labels": {"bg": 0}, "numTraining": 0}"#,
    )
    .unwrap();
    let e = Dataset::open(&root).unwrap_err();
    assert!(e.to_string().contains("imagesTr"), "{e}");
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn msd_v1_multichannel_4d_images() {
    let root = scratch("msd");
    fs::create_dir_all(root.join("imagesTr")).unwrap();
    fs::create_dir_all(root.join("labelsTr")).unwrap();
    fs::create_dir_all(root.join("imagesTs")).unwrap();
    fs::write(
        root.join("dataset.json"),
        r#"{"name": "Toy", "modality": {"0": "FLAIR", "1": "T1w", "2": "T2w"},
            "labels": {"0": "background", "1": "edema"},
            "numTraining": 1, "numTest": 1,
            "training": [{"image": "./imagesTr/toy_001.nii.gz", "label": "./labelsTr/toy_001.nii.gz"}],
            "test": ["./imagesTs/toy_002.nii.gz"]}"#,
    )
    .unwrap();
    let g = Geometry::unit(3);
    let img = ArrayD::from_shape_fn(IxDyn(&[4, 5, 6, 3]), |i| (i[3] * 100 + i[0]) as f32);
    write_nifti(root.join("imagesTr/toy_001.nii.gz"), &img, &g).unwrap();
    write_nifti(root.join("imagesTs/toy_002.nii.gz"), &img, &g).unwrap();
    let lab = ArrayD::from_shape_fn(IxDyn(&[4, 5, 6]), |i| u32::from(i[0] > 1));
    write_nifti_labels(root.join("labelsTr/toy_001.nii.gz"), &lab, &g).unwrap();
    let ds = Dataset::open(&root).unwrap();
    assert!(ds.info().msd_v1);
    assert_eq!(ds.info().channel_names, vec!["FLAIR", "T1w", "T2w"]);
    ds.check().unwrap();
    let c = ds.load("toy_001").unwrap();
    assert_eq!(c.image.shape(), &[3, 4, 5, 6]);
    assert_eq!(c.image[[2, 3, 0, 0]], 203.0);
    assert_eq!(c.geometry.spacing.len(), 3);
    assert_eq!(c.label.unwrap(), lab);
    // A 4D image with the wrong number of channels.
    write_nifti(
        root.join("imagesTr/toy_001.nii.gz"),
        &img.slice_axis(Axis(3), (0..2).into()),
        &g,
    )
    .unwrap();
    case_err(ds.load("toy_001").unwrap_err(), "toy_001", "3 channels");
    fs::remove_dir_all(root).unwrap();
}

#[cfg(feature = "embedded-data")]
#[test]
fn embedded_icbm152_is_a_consistent_dataset() {
    use calseg_io::icbm152;
    let ds = icbm152::open().unwrap();
    assert_eq!(ds.info().channel_names, vec!["T1"]);
    let names: Vec<&str> = ds.info().labels.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, icbm152::CLASSES);
    ds.check().unwrap();
    let case = ds.load("icbm152").unwrap();
    assert_eq!(case.image.shape(), &[1, 80, 100, 82]);
    assert_eq!(case.geometry.spacing, vec![2.0, 2.0, 2.0]);
    let a = case.geometry.affine.unwrap();
    assert_eq!([a[0][3], a[1][3], a[2][3]], [-79.5, -115.5, -71.5]);
    let (lo, hi) = case
        .image
        .iter()
        .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
    assert!(lo >= 0.0 && hi <= 1.0 && hi > 0.5);

    // Soft labels: a partition of unity, and the hard labels are their argmax
    // (ties → lower class), as the README says.
    let truth = icbm152::true_probs().unwrap();
    let p = truth.probs.into_f32();
    assert_eq!(&p, case.soft_label.as_ref().unwrap());
    let labels = case.label.as_ref().unwrap();
    let mut max_dev = 0.0f32;
    for (idx, &l) in labels.indexed_iter() {
        let v: Vec<f32> = (0..4).map(|k| p[[k, idx[0], idx[1], idx[2]]]).collect();
        max_dev = max_dev.max((v.iter().sum::<f32>() - 1.0).abs());
        let arg = (0..4).fold(0, |b, k| if v[k] > v[b] { k } else { b });
        assert_eq!(l as usize, arg, "voxel {idx:?}: {v:?}");
    }
    assert!(max_dev < 1e-5, "sum of probabilities off by {max_dev}");
    // Soft volumes match the README (a 2 mm voxel is 0.008 ml).
    let vol: Vec<f64> = (0..4)
        .map(|k| {
            p.index_axis(Axis(0), k)
                .iter()
                .map(|&v| f64::from(v))
                .sum::<f64>()
                * 0.008
        })
        .collect();
    for (v, want) in vol.iter().zip([3344.0, 225.5, 1008.2, 670.3]) {
        assert!((v - want).abs() < 0.5, "{vol:?}");
    }
    // The brain mask: 0/1, covering all white matter.
    let mask = icbm152::brain_mask().unwrap().labels;
    assert!(mask.iter().all(|&m| m <= 1));
    assert!(
        labels
            .iter()
            .zip(mask.iter())
            .all(|(&l, &m)| l != 3 || m == 1)
    );
    assert!(icbm152::NOTICE.contains("McConnell Brain Imaging Centre"));
    assert!(icbm152::README.contains("License notice"));
}

#[cfg(feature = "embedded-data")]
#[test]
fn preprocessing_on_the_template() {
    use calseg_io::preprocess::{PatchSampler, crop_to_nonzero, slices, zscore_nonzero};
    let ds = calseg_io::icbm152::open().unwrap();
    let case = ds.load("icbm152").unwrap();
    let (mut cropped, bbox) = crop_to_nonzero(&case);
    assert!(
        bbox.iter()
            .zip(&[80, 100, 82])
            .all(|(r, &n)| r.end - r.start < n)
    );
    let stats = zscore_nonzero(&mut cropped.image);
    assert!(stats[0].std > 0.0);
    let inside: Vec<f64> = cropped
        .image
        .iter()
        .filter(|&&v| v != 0.0)
        .map(|&v| f64::from(v))
        .collect();
    let mean = inside.iter().sum::<f64>() / inside.len() as f64;
    assert!(mean.abs() < 1e-3, "{mean}");
    // Axial slices of the crop.
    let n = slices(&cropped, 2).count();
    assert_eq!(n, bbox[2].end - bbox[2].start);
    // Patches with foreground oversampling.
    let mut sampler = PatchSampler::new(vec![32, 32, 32], 1.0, 11);
    let p = sampler.sample(&cropped).unwrap();
    assert_eq!(p.image.shape(), &[1, 32, 32, 32]);
    assert_eq!(p.soft_label.unwrap().shape(), &[4, 32, 32, 32]);
    assert!(p.label.unwrap().iter().any(|&l| l > 0));
}

#[test]
fn in_memory_dataset_names_embedded_paths() {
    let root = scratch("static");
    make_dataset(&root);
    // The same dataset held in memory, minus one channel of case_b.
    let mut files: Vec<(&'static str, &'static [u8])> = Vec::new();
    for rel in [
        "dataset.json",
        "imagesTr/case_a_0000.nii.gz",
        "imagesTr/case_a_0001.nii.gz",
        "imagesTr/case_b_0000.nii.gz",
        "labelsTr/case_a.nii.gz",
        "labelsTr/case_b.nii.gz",
    ] {
        let bytes: &'static [u8] = Box::leak(fs::read(root.join(rel)).unwrap().into_boxed_slice());
        files.push((rel, bytes));
    }
    let ds = Dataset::from_static("toy", Box::leak(files.into_boxed_slice())).unwrap();
    assert_eq!(ds.training_cases().len(), 2);
    assert!(ds.test_cases().is_empty());
    let a = ds.load("case_a").unwrap();
    assert_eq!(a.image.shape(), &[2, 10, 12, 8]);
    assert!(a.soft_label.is_none());
    let e = ds.load("case_b").unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("<embedded>/toy/imagesTr/case_b_0001.nii.gz") && msg.contains("is missing"),
        "{msg}"
    );
    fs::remove_dir_all(root).unwrap();
}
