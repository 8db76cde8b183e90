//! End-to-end tests of `calseg train`, `calseg calibrate` and `calseg predict`: the built
//! binary on a tiny phantom dataset (two 16×16×8 training volumes, one test volume)
//! written with calseg-io.

mod common;

use calseg::io::phantom::{PhantomConfig, generate};
use calseg::io::{self, Geometry, TypedArray};
use common::{bad, ok, s, scratch_in};
use ndarray::{ArrayD, Axis};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const K: usize = 3;
const SHAPE: [usize; 3] = [16, 16, 8];

fn scratch(name: &str) -> common::Scratch {
    scratch_in("cli-train", name)
}

/// Writes a Decathlon folder: `train` phantom training cases with labels and one test
/// case without, with `channels` image channels (channel c = the phantom image + c).
fn write_dataset(root: &Path, train: usize, channels: usize) -> PathBuf {
    let data = root.join("Dataset001_Phantom");
    for sub in ["imagesTr", "labelsTr", "imagesTs"] {
        std::fs::create_dir_all(data.join(sub)).unwrap();
    }
    let names: Vec<String> = (0..channels)
        .map(|c| format!("\"{c}\": \"MR{c}\""))
        .collect();
    std::fs::write(
        data.join("dataset.json"),
        format!(
            r#"{{"channel_names": {{{}}}, "labels": {{"background": 0, "A": 1, "B": 2}},
                "numTraining": {train}, "file_ending": ".nii.gz"}}"#,
            names.join(", ")
        ),
    )
    .unwrap();
    let geo = Geometry::with_spacing(vec![1.0, 1.0, 2.0]);
    let cfg = PhantomConfig {
        shape: SHAPE.to_vec(),
        classes: K,
        supersample: 2,
        ..PhantomConfig::default()
    };
    for i in 0..=train {
        let ph = generate(&cfg, 10 + i as u64).unwrap();
        let (dir, id) = if i < train {
            ("imagesTr", format!("ph_{i}"))
        } else {
            ("imagesTs", "test_0".to_string())
        };
        let img = ph.image.index_axis(Axis(0), 0).to_owned();
        for c in 0..channels {
            let ch = img.mapv(|v| v + c as f32);
            io::write_nifti(data.join(format!("{dir}/{id}_{c:04}.nii.gz")), &ch, &geo).unwrap();
        }
        if i < train {
            io::write_nifti_labels(data.join(format!("labelsTr/{id}.nii.gz")), &ph.labels, &geo)
                .unwrap();
        }
    }
    data
}

/// The shared fixture: a one-channel dataset and a model trained on it (2 epochs).
struct Trained {
    root: PathBuf,
    data: PathBuf,
    model: PathBuf,
    stdout: String,
}

/// `calseg train` of the fixture's tiny CE net (seed 3, 2 epochs) from `data` into `out`,
/// with `extra` flags; returns stdout.
fn train_ce(data: &Path, out: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "train",
        "--data",
        s(data),
        "--method",
        "ce",
        "--dims",
        "2",
        "--out",
        s(out),
        "--epochs",
        "2",
        "--seed",
        "3",
        "--base",
        "4",
        "--depth",
        "2",
        "--batch-size",
        "4",
        "--iters-per-epoch",
        "2",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    ok(&args)
}

fn trained() -> &'static Trained {
    static T: OnceLock<Trained> = OnceLock::new();
    T.get_or_init(|| {
        let root = scratch("fixture").keep();
        let data = write_dataset(&root, 2, 1);
        let model = root.join("model_ce");
        let stdout = train_ce(&data, &model, &[]);
        Trained {
            root,
            data,
            model,
            stdout,
        }
    })
}

fn model_json(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("model.json")).unwrap()).unwrap()
}

fn read_probs_st(path: &Path) -> ArrayD<f32> {
    let t = io::read_safetensors(path).unwrap();
    let (_, a) = t.into_iter().find(|(n, _)| n == "probs").unwrap();
    match a {
        TypedArray::F32(a) => a,
        other => panic!("probs is {:?}", other.dtype()),
    }
}

/// Probabilities (K, *sp) sum to one at every voxel.
fn assert_sums_to_one(p: &ArrayD<f32>) {
    for s in p.sum_axis(Axis(0)).iter() {
        assert!((s - 1.0).abs() < 1e-4, "probabilities sum to {s}");
    }
}

/// train → calibrate → predict: the model folder, the fitted temperature in model.json,
/// and probabilities of the test case in both formats that sum to one.
#[test]
fn train_calibrate_predict_end_to_end() {
    let t = trained();
    assert!(t.stdout.contains("2 epochs done"), "{}", t.stdout);
    assert!(t.stdout.contains("last validation Dice"), "{}", t.stdout);
    for f in ["model.json", "model.safetensors", "checkpoint.safetensors"] {
        assert!(t.model.join(f).is_file(), "{f} missing");
    }
    let log = std::fs::read_to_string(t.model.join("train_log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 2);
    let info = model_json(&t.model);
    assert_eq!(info["method"]["name"], "ce");
    assert_eq!(info["classes"], 3);
    assert_eq!(info["input"]["axis"], 2);

    // calibrate into a copy, so other tests keep T = 1.
    let cal = t.root.join("model_cal");
    std::fs::create_dir_all(&cal).unwrap();
    for f in ["model.json", "model.safetensors"] {
        std::fs::copy(t.model.join(f), cal.join(f)).unwrap();
    }
    let out = ok(&["calibrate", "--model", s(&cal), "--data", s(&t.data)]);
    assert!(out.contains("T = 1:"), "{out}");
    let printed: f64 = out
        .split("temperature T = ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no temperature in {out}"));
    let stored = model_json(&cal)["temperature"].as_f64().unwrap();
    assert!(stored.is_finite() && stored > 0.0);
    assert!((stored - printed).abs() < 1e-4, "{stored} vs {printed}");
    assert_ne!(stored, 1.0, "the fit should move T away from 1");

    // predict: the dataset has a test case, so only it is predicted.
    let preds = t.root.join("preds");
    let out = ok(&[
        "predict",
        "--model",
        s(&cal),
        "--data",
        s(&t.data),
        "--out",
        s(&preds),
        "--format",
        "both",
    ]);
    assert!(out.contains("predicted 1 case"), "{out}");
    assert!(!preds.join("ph_0.nii.gz").exists());
    let p = read_probs_st(&preds.join("test_0.safetensors"));
    assert_eq!(p.shape(), &[K, SHAPE[0], SHAPE[1], SHAPE[2]]);
    assert_sums_to_one(&p);
    let nii = io::read_image(preds.join("test_0.nii.gz")).unwrap();
    assert_eq!(nii.shape(), &[SHAPE[0], SHAPE[1], SHAPE[2], K]);
    assert_eq!(nii.geometry.spacing[..3], [1.0, 1.0, 2.0]);
    // classes-last NIfTI holds the same numbers as the classes-first safetensors.
    let back = nii.to_f32();
    let v = back[[3, 5, 2, 1]];
    assert!((v - p[[1, 3, 5, 2]]).abs() < 1e-6);

    // --image on one file, and a higher temperature flattens the probabilities.
    let img = t.data.join("imagesTs/test_0_0000.nii.gz");
    let hot = t.root.join("preds_hot");
    ok(&[
        "predict",
        "--model",
        s(&cal),
        "--image",
        s(&img),
        "--out",
        s(&hot),
        "--format",
        "safetensors",
        "--temperature",
        "20",
    ]);
    let q = read_probs_st(&hot.join("test_0_0000.safetensors"));
    assert_sums_to_one(&q);
    let mean_max = |a: &ArrayD<f32>| {
        let m = a.fold_axis(Axis(0), 0.0f32, |x, y| x.max(*y));
        m.mean().unwrap()
    };
    assert!(
        mean_max(&q) < mean_max(&p),
        "{} vs {}",
        mean_max(&q),
        mean_max(&p)
    );
}

/// The same seed gives the same weights (training is deterministic); `--keep-best` ends
/// with the best validation's weights and says which.
#[test]
fn training_is_deterministic_and_keeps_its_best_validation() {
    let t = trained();
    let run = |out: &Path, extra: &[&str]| train_ce(&t.data, out, extra);
    let again = t.root.join("model_again");
    run(&again, &[]);
    let a = std::fs::read(t.model.join("model.safetensors")).unwrap();
    let b = std::fs::read(again.join("model.safetensors")).unwrap();
    assert!(a == b, "same seed, different weights");
    assert!(!again.join("best.safetensors").exists());
    let best = t.root.join("model_best");
    let out = run(&best, &["--keep-best"]);
    assert!(out.contains("kept epoch"), "{out}");
    assert!(best.join("best.safetensors").exists());
}

/// `--method soft` without `--soft-labels` (or with a folder lacking a case's file)
/// fails with exit 2 before anything is written.
#[test]
fn soft_method_needs_soft_labels() {
    let root = scratch("soft");
    let data = write_dataset(&root, 2, 1);
    let out = root.join("m");
    let common = [
        "train",
        "--data",
        s(&data),
        "--method",
        "soft",
        "--dims",
        "2",
        "--out",
        s(&out),
        "--epochs",
        "1",
        "--base",
        "4",
        "--depth",
        "2",
    ];
    let err = bad(&common);
    assert!(err.contains("--soft-labels"), "{err}");
    let empty = root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let mut args = common.to_vec();
    args.extend(["--soft-labels", s(&empty)]);
    let err = bad(&args);
    assert!(err.contains("ph_0.safetensors"), "{err}");
    assert!(!out.exists(), "nothing may be written on bad input");
    // Unknown method and bad dims are bad input too.
    let err = bad(&[
        "train",
        "--data",
        s(&data),
        "--method",
        "hinge",
        "--dims",
        "2",
        "--out",
        s(&out),
    ]);
    assert!(err.contains("unknown method"), "{err}");
    bad(&[
        "train",
        "--data",
        s(&data),
        "--method",
        "ce",
        "--dims",
        "4",
        "--out",
        s(&out),
    ]);
}

/// A one-channel model on two-channel data (dataset or image) exits 2 naming the problem.
#[test]
fn wrong_channel_count_exits_2() {
    let t = trained();
    let two = write_dataset(&t.root.join("two"), 2, 2);
    let out = t.root.join("preds_two");
    let err = bad(&[
        "predict",
        "--model",
        s(&t.model),
        "--data",
        s(&two),
        "--out",
        s(&out),
    ]);
    assert!(err.contains("channel"), "{err}");
    assert!(!out.exists());
    let err = bad(&["calibrate", "--model", s(&t.model), "--data", s(&two)]);
    assert!(err.contains("channel"), "{err}");
    // A 4D image with two channels on the last axis.
    let img = t.root.join("two_channel.nii.gz");
    let a = ndarray::Array4::<f32>::from_elem((16, 16, 8, 2), 1.0);
    io::write_nifti(&img, &a, &Geometry::unit(4)).unwrap();
    let err = bad(&[
        "predict",
        "--model",
        s(&t.model),
        "--image",
        s(&img),
        "--out",
        s(&out),
    ]);
    assert!(err.contains("channel"), "{err}");
    // A model folder that is not one.
    let err = bad(&[
        "predict",
        "--model",
        s(&t.root),
        "--data",
        s(&t.data),
        "--out",
        s(&out),
    ]);
    assert!(err.contains("model.json"), "{err}");
    assert_eq!(model_json(&t.model)["temperature"], 1.0);
}
