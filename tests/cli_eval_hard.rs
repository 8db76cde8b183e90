//! End-to-end tests of hard mode, `calseg eval --pred A --labels B` without `--probs`:
//! two label maps of a seeded 120-class phantom, written as .npy and .nii.gz with the
//! calseg-io writers, scored by the built binary and checked against per-class Dice
//! counted here with plain loops.

mod common;

use calseg::io::{self, Geometry};
use common::{bad, calseg, ok, s, scratch_in};
use ndarray::{Array3, ArrayD};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Truth: 6×5×4 blocks of 4×4×4 voxels, one class each (120 classes, a seeded
/// permutation). Prediction: the truth shifted by one voxel along the first two axes,
/// class 7 relabelled 8, class 50 relabelled 121 (a class the truth lacks), and ~5 % of
/// the voxels replaced by a random class below 120.
fn phantom(seed: u64) -> (Array3<u32>, Array3<u32>) {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut perm: Vec<u32> = (0..120).collect();
    for i in (1..perm.len()).rev() {
        perm.swap(i, (next() % (i as u64 + 1)) as usize);
    }
    let truth = Array3::from_shape_fn((24, 20, 16), |(i, j, k)| {
        perm[(i / 4) * 20 + (j / 4) * 4 + k / 4]
    });
    let pred = Array3::from_shape_fn((24, 20, 16), |(i, j, k)| {
        let c = truth[[i.saturating_sub(1), (j + 1).min(19), k]];
        match c {
            7 => 8,
            50 => 121,
            c => c,
        }
    })
    .mapv(|c| {
        if next() % 20 == 0 {
            (next() % 120) as u32
        } else {
            c
        }
    });
    (truth, pred)
}

/// Dice per class, straight from the definition: 2·|P ∩ T| / (|P| + |T|), `NaN` when the
/// class is absent from the truth (or, with `empty_one`, 1 if also absent from the
/// prediction and 0 otherwise).
fn dice_by_loops(pred: &Array3<u32>, truth: &Array3<u32>, k: usize, empty_one: bool) -> Vec<f64> {
    let (mut inter, mut np, mut nt) = (vec![0u64; k], vec![0u64; k], vec![0u64; k]);
    for (&p, &t) in pred.iter().zip(truth.iter()) {
        np[p as usize] += 1;
        nt[t as usize] += 1;
        if p == t {
            inter[p as usize] += 1;
        }
    }
    (0..k)
        .map(|c| {
            if nt[c] == 0 {
                match (empty_one, np[c]) {
                    (false, _) => f64::NAN,
                    (true, 0) => 1.0,
                    (true, _) => 0.0,
                }
            } else {
                2.0 * inter[c] as f64 / (np[c] + nt[c]) as f64
            }
        })
        .collect()
}

/// JSON numbers and `null` (`NaN`) as f64.
fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap_or(f64::NAN))
        .collect()
}

fn same(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (c, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g.is_nan() && w.is_nan()) || (g - w).abs() <= 1e-12,
            "{what}: class {c}: got {g}, want {w}"
        );
    }
}

/// Writes the phantom pair as `pred.npy`/`truth.npy` (uint8, uint32) and
/// `pred.nii.gz`/`truth.nii.gz`.
fn write_pair(dir: &Path, pred: &Array3<u32>, truth: &Array3<u32>) -> [PathBuf; 4] {
    let paths = [
        dir.join("pred.npy"),
        dir.join("truth.npy"),
        dir.join("pred.nii.gz"),
        dir.join("truth.nii.gz"),
    ];
    io::write_npy(&paths[0], &pred.mapv(|v| v as u8)).unwrap();
    io::write_npy(&paths[1], truth).unwrap();
    let geometry = Geometry::with_spacing(vec![1.0, 1.0, 2.0]);
    io::write_nifti_labels(&paths[2], pred, &geometry).unwrap();
    io::write_nifti_labels(&paths[3], truth, &geometry).unwrap();
    paths
}

fn eval_json(args: &[&str]) -> Value {
    let mut all = vec!["eval"];
    all.extend_from_slice(args);
    all.push("--json");
    serde_json::from_str(&ok(&all)).unwrap()
}

#[test]
fn dice_of_120_class_maps_matches_plain_loops_in_npy_and_nifti() {
    let dir = scratch_in("eval-hard", "dice120");
    let (truth, pred) = phantom(16);
    let [pn, tn, pg, tg] = write_pair(&dir, &pred, &truth);
    let want = dice_by_loops(&pred, &truth, 122, false);
    // Every class of the truth occurs, 120 and 121 do not; 121 is predicted.
    assert!(want[..120].iter().all(|d| d.is_finite()));
    assert!(want[120].is_nan() && want[121].is_nan());
    let want_fg = {
        let fg: Vec<f64> = want[1..].iter().copied().filter(|d| !d.is_nan()).collect();
        fg.iter().sum::<f64>() / fg.len() as f64
    };
    for (p, t) in [(&pn, &tn), (&pg, &tg), (&pn, &tg), (&pg, &tn)] {
        let j = eval_json(&["--pred", s(p), "--labels", s(t)]);
        let what = format!("{} vs {}", p.display(), t.display());
        assert_eq!(j["mode"], "hard", "{what}");
        assert_eq!(j["n_classes"], 122, "{what}");
        assert_eq!(j["n_total"], 24 * 20 * 16, "{what}");
        same(&floats(&j["dice"]), &want, &what);
        assert!(j["dice"][120].is_null() && j["dice"][121].is_null());
        assert!((j["dice_mean_fg"].as_f64().unwrap() - want_fg).abs() < 1e-12);
        // IoU = Dice / (2 − Dice) for every class.
        let iou: Vec<f64> = want.iter().map(|d| d / (2.0 - d)).collect();
        same(&floats(&j["iou"]), &iou, &what);
        // No calibration key: there are no probabilities.
        for key in [
            "ece",
            "mce",
            "ace",
            "average_ce",
            "brier",
            "nll",
            "reliability",
        ] {
            assert!(j.get(key).is_none(), "{what}: unexpected key {key}");
        }
        let n121 = pred.iter().filter(|&&c| c == 121).count() as u64;
        assert!(n121 > 0);
        assert_eq!(
            (j["tp"][121].as_u64(), j["fp"][121].as_u64()),
            (Some(0), Some(n121))
        );
    }
    // Class 121 is all false positives; with --empty-dice one its Dice is 0, class 120's 1.
    let j = eval_json(&["--pred", s(&pn), "--labels", s(&tn), "--empty-dice", "one"]);
    same(
        &floats(&j["dice"]),
        &dice_by_loops(&pred, &truth, 122, true),
        "empty one",
    );
    assert_eq!(
        (j["dice"][120].as_f64(), j["dice"][121].as_f64()),
        (Some(1.0), Some(0.0))
    );
    // Another background class leaves another class out of the foreground mean.
    let j = eval_json(&["--pred", s(&pn), "--labels", s(&tn), "--background", "5"]);
    let fg: Vec<f64> = (0..122)
        .filter(|&c| c != 5 && !want[c].is_nan())
        .map(|c| want[c])
        .collect();
    let mean = fg.iter().sum::<f64>() / fg.len() as f64;
    assert!((j["dice_mean_fg"].as_f64().unwrap() - mean).abs() < 1e-12);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn class_count_flag_hd95_and_table() {
    let dir = scratch_in("eval-hard", "classes");
    let (truth, pred) = phantom(7);
    let [pn, tn, pg, tg] = write_pair(&dir, &pred, &truth);
    // --classes K pads with absent classes; a label >= K is bad input naming the file.
    let j = eval_json(&["--pred", s(&pn), "--labels", s(&tn), "--classes", "130"]);
    assert_eq!(j["n_classes"], 130);
    same(
        &floats(&j["dice"]),
        &dice_by_loops(&pred, &truth, 130, false),
        "K = 130",
    );
    let err = bad(&[
        "eval",
        "--pred",
        s(&pn),
        "--labels",
        s(&tn),
        "--classes",
        "100",
    ]);
    assert!(
        err.contains("pred.npy") && err.contains("outside 0..100"),
        "{err}"
    );
    // HD95 per class: the library's value on the same maps, in the same JSON key.
    let j = eval_json(&["--pred", s(&pg), "--labels", s(&tg), "--hd95"]);
    let want = calseg::metrics::hd95_per_class(
        pred.view().into_dyn(),
        truth.view().into_dyn(),
        122,
        &[1.0, 1.0, 2.0],
    )
    .unwrap();
    same(
        &floats(&j["hd95"]),
        &want
            .iter()
            .map(|h| if h.is_finite() { *h } else { f64::NAN })
            .collect::<Vec<_>>(),
        "hd95",
    );
    assert!(want[1..120].iter().all(|h| h.is_finite() && *h > 0.0));
    // The readable table.
    let out = ok(&["eval", "--pred", s(&pn), "--labels", s(&tn)]);
    assert!(
        out.contains("122 classes") && out.contains("mean Dice (fg)"),
        "{out}"
    );
    assert_eq!(
        out.lines()
            .filter(|l| l.trim_start().starts_with("121 "))
            .count(),
        1
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_input_exits_2_with_a_clear_message() {
    let dir = scratch_in("eval-hard", "bad");
    let (truth, pred) = phantom(3);
    let [pn, tn, ..] = write_pair(&dir, &pred, &truth);
    // Shape mismatch: both files named.
    let small = dir.join("small.npy");
    io::write_npy(&small, &ArrayD::<u8>::zeros(ndarray::IxDyn(&[24, 20, 15]))).unwrap();
    let err = bad(&["eval", "--pred", s(&small), "--labels", s(&tn)]);
    assert!(
        err.contains("small.npy") && err.contains("truth.npy") && err.contains("shape"),
        "{err}"
    );
    // Flags that need probabilities are refused, by name.
    for extra in [
        vec!["--plot", "r.png"],
        vec!["--bins", "10"],
        vec!["--edges", "right"],
        vec!["--region", "foreground"],
        vec!["--input", "logits"],
        vec!["--convention", "monai"],
    ] {
        let mut args = vec!["eval", "--pred", s(&pn), "--labels", s(&tn)];
        args.extend_from_slice(&extra);
        let err = bad(&args);
        assert!(
            err.contains(extra[0]) && err.contains("--probs"),
            "{extra:?}: {err}"
        );
    }
    // --classes needs --pred and no --probs; --labels is still required.
    let out = calseg(&["eval", "--pred", s(&pn)]);
    assert_eq!(out.status.code(), Some(2));
    let out = calseg(&[
        "eval",
        "--probs",
        s(&pn),
        "--labels",
        s(&tn),
        "--classes",
        "3",
    ]);
    assert_eq!(out.status.code(), Some(2));
    // A background class >= K.
    let err = bad(&[
        "eval",
        "--pred",
        s(&pn),
        "--labels",
        s(&tn),
        "--background",
        "122",
    ]);
    assert!(err.contains("background"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
