//! End-to-end tests of `calseg eval --data DIR --predictions DIR` (dataset mode): the
//! built binary on a tiny Decathlon/nnU-Net v2 folder written with calseg-io.

use calseg::io::{self, Geometry, NamedTensor};
use calseg::metrics::{Evaluator, MetricConfig, Report, evaluate};
use ndarray::{Array3, Array4, Axis, concatenate};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_calseg");
const K: usize = 3;
const SHAPE: (usize, usize, usize) = (6, 5, 4);

/// A fresh, empty scratch folder for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("calseg-cli-evalds-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn eval(args: &[&str]) -> Output {
    Command::new(BIN).arg("eval").args(args).output().unwrap()
}

fn eval_json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = eval(&all);
    assert!(
        out.status.success(),
        "calseg eval {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A deterministic pseudo-random stream in [0, 1) (SplitMix64), so the test data is the
/// same on every run and platform.
struct Stream(u64);

impl Stream {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Labels of case `seed`: mostly background, a block of class 1 and one of class 2.
fn labels(seed: u64) -> Array3<u32> {
    let o = seed as usize % 2;
    Array3::from_shape_fn(SHAPE, |(x, y, _)| {
        if (1 + o..4 + o).contains(&x) && y < 3 {
            1
        } else if y == 4 {
            2
        } else {
            0
        }
    })
}

/// Probabilities `(K, *SHAPE)` leaning towards `labels`, with noise; f32 values that sum
/// to 1 within rounding. How strongly they lean depends on `seed`, and when `seed % 3 ==
/// 2` they lean confidently towards a wrong class for `x < 2`: cases under- and
/// over-confident in different bins, so that the pooled ECE is not the mean of the
/// per-case ECEs (it is when every bin errs the same way).
fn probs(labels: &Array3<u32>, seed: u64) -> Array4<f32> {
    let mut rng = Stream(seed);
    let boost = 0.5 + (seed % 3) as f32 * 1.5;
    let mut p = Array4::<f32>::zeros((K, SHAPE.0, SHAPE.1, SHAPE.2));
    for ((x, y, z), &l) in labels.indexed_iter() {
        let favoured = if seed % 3 == 2 && x < 2 {
            (l + 1) % K as u32
        } else {
            l
        };
        let raw: Vec<f32> = (0..K)
            .map(|k| rng.next() + if k as u32 == favoured { boost } else { 0.0 })
            .collect();
        let sum: f32 = raw.iter().sum();
        for k in 0..K {
            p[[k, x, y, z]] = raw[k] / sum;
        }
    }
    p
}

fn geometry() -> Geometry {
    Geometry::with_spacing(vec![1.0, 1.0, 2.0])
}

/// Writes image and label of `id` into `images{split}` / `labels{split}`.
fn write_case(root: &Path, split: &str, id: &str, labels: &Array3<u32>) {
    let image = labels.mapv(|l| l as f32 * 100.0 + 5.0);
    io::write_nifti(
        root.join(format!("images{split}/{id}_0000.nii.gz")),
        &image,
        &geometry(),
    )
    .unwrap();
    io::write_nifti_labels(
        root.join(format!("labels{split}/{id}.nii.gz")),
        labels,
        &geometry(),
    )
    .unwrap();
}

/// The test data: a dataset with 2 training and 3 test cases, and predictions for the
/// test cases in three formats (NIfTI classes-last, npy and safetensors classes-first).
struct Fixture {
    root: PathBuf,
    data: PathBuf,
    preds: PathBuf,
    /// Test cases: id, labels, probabilities.
    test: Vec<(String, Array3<u32>, Array4<f32>)>,
}

fn fixture(name: &str) -> Fixture {
    let root = scratch(name);
    let data = root.join("Dataset001_Tiny");
    let preds = root.join("preds");
    for sub in ["imagesTr", "labelsTr", "imagesTs", "labelsTs"] {
        std::fs::create_dir_all(data.join(sub)).unwrap();
    }
    std::fs::create_dir_all(&preds).unwrap();
    std::fs::write(
        data.join("dataset.json"),
        r#"{"channel_names": {"0": "MR"}, "labels": {"background": 0, "A": 1, "B": 2},
            "numTraining": 2, "file_ending": ".nii.gz"}"#,
    )
    .unwrap();
    for (i, id) in ["tr_1", "tr_2"].iter().enumerate() {
        let l = labels(i as u64);
        write_case(&data, "Tr", id, &l);
        io::write_nifti_probs(
            preds.join(format!("{id}.nii.gz")),
            &probs(&l, 50 + i as u64),
            &geometry(),
        )
        .unwrap();
    }
    let mut test = Vec::new();
    for (i, id) in ["ts_1", "ts_2", "ts_3"].iter().enumerate() {
        let l = labels(i as u64 + 1);
        let p = probs(&l, 100 + i as u64);
        write_case(&data, "Ts", id, &l);
        match i {
            0 => {
                io::write_nifti_probs(preds.join(format!("{id}.nii.gz")), &p, &geometry()).unwrap()
            }
            1 => io::write_npy(preds.join(format!("{id}.npy")), &p).unwrap(),
            _ => io::write_safetensors(
                preds.join(format!("{id}.safetensors")),
                &[NamedTensor::new("probs", &p)],
            )
            .unwrap(),
        }
        test.push((id.to_string(), l, p));
    }
    Fixture {
        root,
        data,
        preds,
        test,
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * (1.0 + b.abs())
}

fn assert_scalars(got: &Value, want: &Report, what: &str) {
    for (key, w) in [
        ("ece", want.ece),
        ("mce", want.mce),
        ("rmsce", want.rmsce),
        ("ace", want.ace),
        ("cece", want.cece),
        ("brier", want.brier),
        ("nll", want.nll),
        ("accuracy", want.accuracy),
        ("dice_mean_fg", want.dice_mean_fg),
    ] {
        let g = got[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{what}.{key} missing"));
        assert!(close(g, w), "{what}.{key}: {g} vs {w}");
    }
    assert_eq!(got["n_voxels"].as_u64(), Some(want.n_voxels), "{what}");
    let dice: Vec<f64> = got["dice"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(dice.len(), K);
    for (g, w) in dice.iter().zip(&want.dice) {
        assert!(close(*g, *w), "{what}.dice {g} vs {w}");
    }
}

/// Pooled = the library's metrics of all test cases concatenated; per case = the
/// library's metrics of that case; macro = the mean of the per-case values.
#[test]
fn pooled_is_the_concatenation_and_macro_the_mean_over_cases() {
    let fx = fixture("pooled");
    // Default split: the dataset has test labels, so the test cases are scored.
    let got = eval_json(&[
        "--data",
        s(&fx.data),
        "--predictions",
        s(&fx.preds),
        "--bins",
        "10",
    ]);
    assert_eq!(got["split"], "test");
    let cases = got["cases"].as_object().unwrap();
    assert_eq!(
        cases.keys().collect::<Vec<_>>(),
        vec!["ts_1", "ts_2", "ts_3"]
    );
    let cfg = MetricConfig::default().bins(10);
    for (id, l, p) in &fx.test {
        let want = evaluate(p.view(), l.view(), &cfg).unwrap();
        assert_scalars(&cases[id], &want, id);
        // Same keys as single-file mode.
        assert_eq!(cases[id]["reliability"].as_array().unwrap().len(), 10);
    }

    // Concatenate along x: (K, 3·6, 5, 4) against (3·6, 5, 4).
    let pv: Vec<_> = fx.test.iter().map(|(_, _, p)| p.view()).collect();
    let lv: Vec<_> = fx.test.iter().map(|(_, l, _)| l.view()).collect();
    let all_p = concatenate(Axis(1), &pv).unwrap();
    let all_l = concatenate(Axis(0), &lv).unwrap();
    let pooled = evaluate(all_p.view(), all_l.view(), &cfg).unwrap();
    assert_eq!(pooled.n_voxels, (3 * SHAPE.0 * SHAPE.1 * SHAPE.2) as u64);
    assert_scalars(&got["pooled"], &pooled, "pooled");
    // The concatenation differs from the mean of the cases (the test would not tell
    // pooled from macro otherwise).
    let m = &got["macro"];
    assert!((m["ece"].as_f64().unwrap() - pooled.ece).abs() > 1e-6);

    // Macro: mean over the per-case values, for scalars and per class.
    assert_eq!(m["n_cases"], 3);
    for key in ["ece", "mce", "ace", "cece", "brier", "nll", "dice_mean_fg"] {
        let mean = cases
            .values()
            .map(|c| c[key].as_f64().unwrap())
            .sum::<f64>()
            / 3.0;
        assert!(close(m[key].as_f64().unwrap(), mean), "macro.{key}");
    }
    for c in 0..K {
        let mean = cases
            .values()
            .map(|v| v["dice"][c].as_f64().unwrap())
            .sum::<f64>()
            / 3.0;
        assert!(
            close(m["dice"][c].as_f64().unwrap(), mean),
            "macro.dice[{c}]"
        );
    }

    // The same pooled numbers with one Evaluator fed case by case (the library's own
    // streaming path), under the foreground region.
    let fg = MetricConfig::default()
        .bins(10)
        .region(calseg::metrics::Region::Foreground);
    let got_fg = eval_json(&[
        "--data",
        s(&fx.data),
        "--predictions",
        s(&fx.preds),
        "--bins",
        "10",
        "--region",
        "foreground",
    ]);
    let mut ev = Evaluator::new(fg).unwrap();
    for (_, l, p) in &fx.test {
        ev.update(p.view(), l.view()).unwrap();
    }
    assert_scalars(&got_fg["pooled"], &ev.finish().unwrap(), "pooled fg");
    let _ = std::fs::remove_dir_all(&fx.root);
}

/// `--split train`, the table, `--plot-dir` and `--hd95`.
#[test]
fn train_split_table_plots_and_hd95() {
    let fx = fixture("train");
    let plots = fx.root.join("plots");
    let out = eval(&[
        "--data",
        s(&fx.data),
        "--predictions",
        s(&fx.preds),
        "--split",
        "train",
        "--plot-dir",
        s(&plots),
        "--hd95",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "tr_1",
        "tr_2",
        "pooled",
        "macro",
        "ECE",
        "HD95",
        "2 train cases",
    ] {
        assert!(table.contains(needle), "{needle} missing in\n{table}");
    }
    assert!(!table.contains("ts_1"));
    for name in [
        "reliability_tr_1.png",
        "reliability_tr_2.png",
        "reliability_pooled.png",
    ] {
        let bytes = std::fs::read(plots.join(name)).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{name}");
    }
    assert_eq!(std::fs::read_dir(&plots).unwrap().count(), 3);

    let got = eval_json(&[
        "--data",
        s(&fx.data),
        "--predictions",
        s(&fx.preds),
        "--split",
        "all",
        "--hd95",
    ]);
    assert_eq!(got["cases"].as_object().unwrap().len(), 5);
    let h = got["cases"]["tr_1"]["hd95"].as_array().unwrap();
    assert_eq!(h.len(), K);
    assert!(
        got["macro"]["hd95"].as_array().unwrap()[1]
            .as_f64()
            .unwrap()
            >= 0.0
    );
    let _ = std::fs::remove_dir_all(&fx.root);
}

fn assert_bad(args: &[&str], names: &[&str]) {
    let out = eval(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "args {args:?}: {err}");
    for n in names {
        assert!(err.contains(n), "stderr {err:?} should name {n:?}");
    }
    assert!(out.stdout.is_empty(), "nothing on stdout on error");
}

/// Missing prediction, wrong class count, wrong shape, ambiguous files, conflicting
/// flags: exit status 2 and a message naming the file.
#[test]
fn bad_predictions_exit_2_naming_the_file() {
    let fx = fixture("bad");
    let (d, p) = (s(&fx.data), s(&fx.preds));
    let plots = fx.root.join("plots");

    // Missing prediction: nothing is computed or plotted.
    std::fs::remove_file(fx.preds.join("ts_2.npy")).unwrap();
    assert_bad(
        &["--data", d, "--predictions", p, "--plot-dir", s(&plots)],
        &["ts_2", "preds"],
    );
    assert!(
        !plots.exists(),
        "no plot folder when a prediction is missing"
    );

    // Two classes instead of three.
    let l = &fx.test[1].1;
    let two = Array4::from_shape_fn((2, SHAPE.0, SHAPE.1, SHAPE.2), |(k, x, y, z)| {
        if (l[[x, y, z]] > 0) == (k == 1) {
            0.8f32
        } else {
            0.2
        }
    });
    io::write_npy(fx.preds.join("ts_2.npy"), &two).unwrap();
    assert_bad(&["--data", d, "--predictions", p], &["ts_2.npy", "classes"]);

    // Spatial shape differs from the label's.
    let small = Array4::from_elem((K, 2, 2, 2), 1.0f32 / 3.0);
    io::write_npy(fx.preds.join("ts_2.npy"), &small).unwrap();
    assert_bad(&["--data", d, "--predictions", p], &["ts_2.npy", "shape"]);

    // Two files for one case.
    io::write_npy(fx.preds.join("ts_2.npy"), &fx.test[1].2).unwrap();
    io::write_npy(fx.preds.join("ts_1.npy"), &fx.test[0].2).unwrap();
    assert_bad(
        &["--data", d, "--predictions", p],
        &["ts_1.nii.gz", "ts_1.npy"],
    );
    std::fs::remove_file(fx.preds.join("ts_1.npy")).unwrap();

    // Not a dataset; predictions folder missing; flags of the other mode.
    assert_bad(&["--data", p, "--predictions", p], &["dataset.json"]);
    let nowhere = fx.root.join("nowhere");
    assert_bad(&["--data", d, "--predictions", s(&nowhere)], &["nowhere"]);
    assert_bad(&["--data", d], &["--predictions"]);
    assert_bad(
        &[
            "--data",
            d,
            "--predictions",
            p,
            "--probs",
            s(&fx.preds.join("ts_2.npy")),
        ],
        &["--probs"],
    );
    assert_bad(&["--predictions", p], &["--data"]);

    // Everything back in place: it works again.
    let ok = eval_json(&["--data", d, "--predictions", p]);
    assert_eq!(ok["n_cases"], 3);
    let _ = std::fs::remove_dir_all(&fx.root);
}

/// `--convention monai` in dataset mode: each case gets MONAI's per-image values, and the
/// top-level `monai` object reduces the cases as MONAI's "mean" / "mean_batch" do — the
/// library's [`MonaiCalibration`] of the per-case reports.
#[test]
fn convention_monai_reduces_over_cases() {
    use calseg::metrics::MonaiCalibration;
    let fx = fixture("monai");
    let got = eval_json(&[
        "--data",
        s(&fx.data),
        "--predictions",
        s(&fx.preds),
        "--convention",
        "monai",
    ]);
    let cfg = MetricConfig::monai();
    let reports: Vec<Report> = fx
        .test
        .iter()
        .map(|(_, l, p)| evaluate(p.view(), l.view(), &cfg).unwrap())
        .collect();
    let want = MonaiCalibration::from_reports(&reports, true).unwrap();
    let m = &got["monai"];
    assert_eq!(m["n_images"], 3);
    for (key, w) in [
        ("ece", want.ece),
        ("mce", want.mce),
        ("average_ce", want.average_ce),
    ] {
        assert!(close(m[key].as_f64().unwrap(), w), "{key}");
    }
    for (i, w) in want.ece_per_class.iter().enumerate() {
        assert!(close(m["ece_per_class"][i].as_f64().unwrap(), *w));
    }
    for ((id, _, _), r) in fx.test.iter().zip(&reports) {
        let case = &got["cases"][id];
        assert_eq!(case["edges"], "monai");
        assert_eq!(case["bins"], 20);
        assert_eq!(case["monai"]["n_images"], 1);
        let mean = r.class_ece.iter().sum::<f64>() / r.class_ece.len() as f64;
        assert!(close(case["monai"]["ece"].as_f64().unwrap(), mean), "{id}");
    }
    let table = eval(&[
        "--data",
        s(&fx.data),
        "--predictions",
        s(&fx.preds),
        "--convention",
        "monai",
    ]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("MONAI CalibrationErrorMetric") && text.contains(&format!("{:.4}", want.ece)),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&fx.root);
}
