//! End-to-end tests of `calseg vls train` and `calseg vls smooth` (and `calseg train
//! --method soft` on their output): the built binary on a tiny phantom dataset (three
//! 16×16×8 training volumes) written with calseg-io.

mod common;

use calseg::io::{self, TypedArray};
use common::{bad, ok, s, scratch_in};
use ndarray::{ArrayD, Axis};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const K: usize = 3;
const SHAPE: [usize; 3] = [16, 16, 8];
const CASES: [&str; 3] = ["ph_0", "ph_1", "ph_2"];

fn scratch(name: &str) -> common::Scratch {
    scratch_in("cli-vls", name)
}

/// A one-channel, three-class Decathlon folder with the phantom cases [`CASES`].
fn write_dataset(root: &Path) -> PathBuf {
    common::phantom_dataset(root, "Dataset002_Phantom", &CASES, K, &SHAPE, 20)
}

/// `calseg vls train` of a tiny smoother (one short epoch) on `data` into `out`, plus
/// `extra` options.
fn vls_train_args<'a>(data: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "vls",
        "train",
        "--data",
        s(data),
        "--out",
        s(out),
        "--latent",
        "2",
        "--epochs",
        "1",
        "--base",
        "4",
        "--depth",
        "2",
        "--enc-levels",
        "3",
        "--iters-per-epoch",
        "2",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    args
}

/// The shared fixture: the dataset and a VLS trained on it for one short epoch.
struct Trained {
    root: PathBuf,
    data: PathBuf,
    model: PathBuf,
    stdout: String,
}

fn trained() -> &'static Trained {
    static T: OnceLock<Trained> = OnceLock::new();
    T.get_or_init(|| {
        let root = scratch("fixture").keep();
        let data = write_dataset(&root);
        let model = root.join("vls");
        let stdout = ok(&vls_train_args(
            &data,
            &model,
            &["--dims", "2", "--seed", "5", "--batch-size", "4"],
        ));
        Trained {
            root,
            data,
            model,
            stdout,
        }
    })
}

fn soft_labels(path: &Path) -> ArrayD<f32> {
    let t = io::read_safetensors(path).unwrap();
    let (_, a) = t.into_iter().find(|(n, _)| n == "soft_labels").unwrap();
    match a {
        TypedArray::F32(a) => a,
        other => panic!("soft_labels is {:?}", other.dtype()),
    }
}

fn smooth(out: &Path, extra: &[&str]) -> String {
    let t = trained();
    let mut args = vec![
        "vls",
        "smooth",
        "--model",
        s(&t.model),
        "--data",
        s(&t.data),
        "--out",
        s(out),
        "--samples",
        "4",
        "--seed",
        "1",
    ];
    args.extend_from_slice(extra);
    ok(&args)
}

/// vls train writes its folder and reports KL per latent dimension; vls smooth writes
/// both files of every case with the right shape and valid distributions, plus the
/// statistics; `calseg train --method soft` trains on them.
#[test]
fn vls_train_then_smooth_writes_both_files_per_case() {
    let t = trained();
    assert!(t.model.join("model.safetensors").is_file());
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(t.model.join("vls.json")).unwrap()).unwrap();
    assert_eq!(cfg["latent"], 2);
    assert_eq!(cfg["classes"], 3);
    assert!(t.stdout.contains("KL per latent dim"), "{}", t.stdout);
    assert!(t.stdout.contains("active dims"), "{}", t.stdout);

    let out = t.root.join("soft_all");
    let printed = smooth(&out, &[]);
    for id in CASES {
        assert!(printed.contains(&format!("{id}: flipped")), "{printed}");
        let y = soft_labels(&out.join(format!("{id}.safetensors")));
        assert_eq!(y.shape(), &[K, SHAPE[0], SHAPE[1], SHAPE[2]]);
        for v in y.sum_axis(Axis(0)).iter() {
            assert!((v - 1.0).abs() < 1e-4, "soft labels sum to {v}");
        }
        assert!(y.iter().all(|&v| (0.0..=1.0 + 1e-6).contains(&v)));
        let nii = io::read_image(out.join(format!("{id}.nii.gz"))).unwrap();
        assert_eq!(nii.shape(), &[SHAPE[0], SHAPE[1], SHAPE[2], K]);
    }
    let stats: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("smooth_stats_0of1.json")).unwrap())
            .unwrap();
    let cases = stats["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    // With the label-noise anchor t(y) (the default smoother), Y_s may follow image and
    // neighbours at a few boundary voxels, never at many (the paper's hard anchor with
    // α ≤ ½ flips none: crates/calseg-vls/tests/smooth.rs).
    assert!(
        cases
            .iter()
            .all(|c| c["flipped_fraction"].as_f64().unwrap() < 0.05),
        "{cases:?}"
    );

    // The soft labels train a segmentation net.
    let net = t.root.join("net_soft");
    let done = ok(&[
        "train",
        "--data",
        s(&t.data),
        "--method",
        "soft",
        "--soft-labels",
        s(&out),
        "--dims",
        "2",
        "--out",
        s(&net),
        "--epochs",
        "1",
        "--base",
        "4",
        "--depth",
        "2",
        "--batch-size",
        "4",
        "--iters-per-epoch",
        "1",
        "--quiet",
    ]);
    assert!(done.contains("trained soft"), "{done}");
    assert!(net.join("model.json").is_file());
}

/// `--shard 1/2` smooths exactly the cases with index ≡ 1 (mod 2), with the same values
/// as an unsharded run (per-case seeds), and names its statistics by the shard.
#[test]
fn shard_processes_the_right_cases() {
    let t = trained();
    let out = t.root.join("soft_shard");
    let printed = smooth(&out, &["--shard", "1/2"]);
    assert!(out.join("ph_1.safetensors").is_file());
    assert!(out.join("ph_1.nii.gz").is_file());
    for id in ["ph_0", "ph_2"] {
        assert!(
            !out.join(format!("{id}.safetensors")).exists(),
            "{id} is not in shard 1/2"
        );
        assert!(!printed.contains(id), "{printed}");
    }
    assert!(out.join("smooth_stats_1of2.json").is_file());
    let full = t.root.join("soft_shard_ref");
    smooth(&full, &[]);
    assert_eq!(
        soft_labels(&out.join("ph_1.safetensors")),
        soft_labels(&full.join("ph_1.safetensors"))
    );
}

/// Invalid smoothing options exit 2 before anything is written.
#[test]
fn bad_smoothing_options_exit_2() {
    let t = trained();
    let out = t.root.join("soft_bad");
    let base = [
        "vls",
        "smooth",
        "--model",
        s(&t.model),
        "--data",
        s(&t.data),
        "--out",
        s(&out),
    ];
    for (extra, needle) in [
        (["--alpha", "1.5"], "alpha"),
        (["--tau", "0"], "tau"),
        (["--samples", "0"], "samples"),
        (["--shard", "2/2"], "--shard"),
        (["--shard", "0/0"], "--shard"),
        (["--mix", "uniform"], "unknown mix"),
    ] {
        let mut args = base.to_vec();
        args.extend(extra);
        let err = bad(&args);
        assert!(err.contains(needle), "{extra:?}: {err}");
    }
    assert!(!out.exists(), "nothing may be written on bad input");
    // A folder that is not a VLS model.
    let err = bad(&[
        "vls",
        "smooth",
        "--model",
        s(&t.root),
        "--data",
        s(&t.data),
        "--out",
        s(&out),
    ]);
    assert!(err.contains("vls.json"), "{err}");
}

/// `vls train --dims 3` trains on patches (recorded in vls.json), calibrates on the
/// held-out slab in context and `vls smooth` writes windowed soft labels of the whole
/// volume; `--patch` with a 2D smoother or off the model's grid exits 2.
#[test]
fn vls_train_3d_on_patches_then_smooth() {
    let t = trained();
    let model = t.root.join("vls3d");
    fn train<'a>(data: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
        let mut extra = extra.to_vec();
        extra.extend(["--batch-size", "2", "--calib-samples", "2"]);
        vls_train_args(data, out, &extra)
    }
    let printed = ok(&train(
        &t.data,
        &model,
        &["--dims", "3", "--patch", "8,8,8"],
    ));
    assert!(printed.contains("trained the VLS (3D"), "{printed}");
    assert!(printed.contains("calibrated on"), "{printed}");
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("vls.json")).unwrap()).unwrap();
    assert_eq!(cfg["patch"], serde_json::json!([8, 8, 8]));
    let out = t.root.join("soft_3d");
    ok(&[
        "vls",
        "smooth",
        "--model",
        s(&model),
        "--data",
        s(&t.data),
        "--out",
        s(&out),
        "--samples",
        "2",
    ]);
    for id in CASES {
        let y = soft_labels(&out.join(format!("{id}.safetensors")));
        assert_eq!(y.shape(), &[K, SHAPE[0], SHAPE[1], SHAPE[2]]);
        for v in y.sum_axis(Axis(0)).iter() {
            assert!((v - 1.0).abs() < 1e-4, "soft labels sum to {v}");
        }
    }
    for (extra, needle) in [
        (&["--dims", "2", "--patch", "8,8,8"][..], "--patch"),
        (&["--dims", "3", "--patch", "8,6,8"][..], "patch"),
    ] {
        let out = t.root.join("vls3d_bad");
        let err = bad(&train(&t.data, &out, extra));
        assert!(err.contains(needle), "{extra:?}: {err}");
        assert!(!out.join("model.safetensors").exists());
    }
}
