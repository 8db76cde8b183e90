//! End-to-end tests of `calseg eval`: the built binary on real files.

use calseg::io;
use calseg::metrics::{EdgeConvention, Evaluator, Input, MetricConfig, Region};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_calseg");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn reference(case: &str) -> PathBuf {
    root()
        .join("crates/calseg-metrics/tests/reference")
        .join(case)
}

fn icbm(rel: &str) -> PathBuf {
    root().join("crates/calseg-io/data/icbm152-2mm").join(rel)
}

/// A fresh, empty scratch folder for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("calseg-cli-eval-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
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

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * b.abs().max(1e-12)
}

/// The CLI reproduces the reference values of torchmetrics/numpy (left), the papers'
/// right-closed bins and torchmetrics' extra bin, on every reference case.
#[test]
fn json_matches_reference_values_for_every_case_and_convention() {
    let cases = [
        "random_c3_32x32",
        "edges_c16",
        "all_correct_c3_16x16",
        "all_wrong_c3_16x16",
        "class_absent_c5_16x16",
        "two_class_c2_8x8",
        "single_pixel_c3",
        "disagree_edge07",
    ];
    for case in cases {
        let dir = reference(case);
        let refj: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("ref.json")).unwrap()).unwrap();
        let p = dir.join("P.npy");
        let y = dir.join("Y.npy");
        for bins in [10, 15] {
            let cal = &refj["calibration"][format!("n_bins={bins}")];
            for (edges, key) in [
                ("torchmetrics", "numpy_left_closed(torchmetrics)"),
                ("right", "numpy_right_closed(papers)"),
            ] {
                let got = eval_json(&[
                    "--probs",
                    s(&p),
                    "--labels",
                    s(&y),
                    "--bins",
                    &bins.to_string(),
                    "--edges",
                    edges,
                ]);
                let want = &cal[key];
                for (g, w) in [("ece", "ece_l1"), ("mce", "mce_max"), ("rmsce", "rmsce_l2")] {
                    let (g, w) = (got[g].as_f64().unwrap(), want[w].as_f64().unwrap());
                    assert!(close(g, w), "{case} bins={bins} {edges} {key}: {g} vs {w}");
                }
                let counts: Vec<u64> = got["reliability"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| b["count"].as_u64().unwrap())
                    .collect();
                let want_counts: Vec<u64> = want["reliability"]["count"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c.as_f64().unwrap() as u64)
                    .collect();
                assert_eq!(counts, want_counts, "{case} bins={bins} {edges}");
            }
        }
        // Dice per class under both MONAI conventions (absent class → null or 1/0), and
        // the NaN-skipping mean over foreground classes.
        for (flag, key, mean_key) in [
            (
                "nan",
                "monai_ignore_empty_true",
                "ignore_empty_true_excl_bg",
            ),
            (
                "one",
                "monai_ignore_empty_false",
                "ignore_empty_false_excl_bg",
            ),
        ] {
            let got = eval_json(&["--probs", s(&p), "--labels", s(&y), "--empty-dice", flag]);
            let want = refj["dice"]["numpy"]["per_class"][key].as_array().unwrap();
            let got_dice = got["dice"].as_array().unwrap();
            assert_eq!(got_dice.len(), want.len(), "{case}");
            for (g, w) in got_dice.iter().zip(want) {
                match (g.as_f64(), w.as_f64()) {
                    (Some(g), Some(w)) => assert!(close(g, w), "{case} dice {g} vs {w}"),
                    (None, None) => {}
                    other => panic!("{case}: dice {other:?}"),
                }
            }
            let want_mean = &refj["dice"]["numpy"]["mean_nan_skipping(MONAI 'mean')"][mean_key];
            match (got["dice_mean_fg"].as_f64(), want_mean.as_f64()) {
                (Some(g), Some(w)) => assert!(close(g, w), "{case} mean dice {g} vs {w}"),
                (None, None) => {}
                other => panic!("{case}: mean dice {other:?}"),
            }
        }
    }
}

/// The CLI on NIfTI files gives exactly what the library gives on the same arrays
/// (probabilities 4D classes-last, labels and mask uint8), and the brain-region ECE of the
/// true tissue maps against hard labels is far from zero, as the anchors report (~0.23).
#[test]
fn nifti_inputs_with_mask_match_the_library() {
    let probs = icbm("softlabelsTr/icbm152.nii.gz");
    let labels = icbm("labelsTr/icbm152.nii.gz");
    let mask = icbm("extra/brainmask.nii.gz");
    let got = eval_json(&[
        "--probs",
        s(&probs),
        "--labels",
        s(&labels),
        "--region",
        "mask",
        "--mask",
        s(&mask),
        "--edges",
        "right",
        "--bins",
        "10",
    ]);

    let p = io::read_probs(&probs).unwrap();
    let y = io::read_labels(&labels).unwrap();
    let m = io::read_labels(&mask).unwrap();
    let io::FloatArray::F32(p) = p.probs else {
        panic!("f32 expected")
    };
    assert_eq!(p.shape(), &[4, 80, 100, 82]);
    let cfg = MetricConfig::default()
        .bins(10)
        .edges(EdgeConvention::RightClosed)
        .region(Region::Mask);
    let mut ev = Evaluator::new(cfg).unwrap();
    let input = Input::new(p.view(), y.labels.view())
        .unwrap()
        .with_mask(m.labels.view())
        .unwrap();
    ev.update_input(&input).unwrap();
    let want = ev.finish().unwrap();

    assert_eq!(got["n_voxels"].as_u64().unwrap(), want.n_voxels);
    assert_eq!(got["n_classes"].as_u64().unwrap(), 4);
    assert_eq!(got["bins"].as_u64().unwrap(), 10);
    for (k, v) in [
        ("ece", want.ece),
        ("mce", want.mce),
        ("cece", want.cece),
        ("brier", want.brier),
        ("nll", want.nll),
    ] {
        assert_eq!(got[k].as_f64().unwrap(), v, "{k}");
    }
    let n_brain = m.labels.iter().filter(|&&v| v != 0).count() as u64;
    assert_eq!(want.n_voxels, n_brain);
    assert!(want.ece > 0.15 && want.ece < 0.35, "brain ECE {}", want.ece);
    assert!(got.get("hd95").is_none(), "hd95 only with --hd95");
}

/// `--pred` scores a hard label map; `--hd95` adds per-class distances; a perfect
/// prediction has Dice 1 and HD95 0 for every present class.
#[test]
fn pred_and_hd95() {
    let dir = reference("random_c3_32x32");
    let got = eval_json(&[
        "--probs",
        s(&dir.join("P.npy")),
        "--labels",
        s(&dir.join("Y.npy")),
        "--pred",
        s(&dir.join("Y.npy")),
        "--hd95",
    ]);
    for d in got["dice"].as_array().unwrap() {
        assert_eq!(d.as_f64(), Some(1.0));
    }
    let hd = got["hd95"].as_array().unwrap();
    assert_eq!(hd.len(), 3);
    for h in hd {
        assert_eq!(h.as_f64(), Some(0.0));
    }
    // Without --pred the argmax of the probabilities is scored: not perfect here.
    let got = eval_json(&[
        "--probs",
        s(&dir.join("P.npy")),
        "--labels",
        s(&dir.join("Y.npy")),
        "--hd95",
    ]);
    assert!(got["dice_mean_fg"].as_f64().unwrap() < 0.9);
    assert!(
        got["hd95"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h.as_f64().unwrap() > 0.0)
    );
}

/// `--plot` writes a PNG and an SVG reliability diagram; the table mode prints the metrics.
#[test]
fn plots_and_table() {
    let dir = reference("random_c3_32x32");
    let out = scratch("plots");
    for name in ["rel.png", "rel.svg"] {
        let target = out.join(name);
        let res = eval(&[
            "--probs",
            s(&dir.join("P.npy")),
            "--labels",
            s(&dir.join("Y.npy")),
            "--plot",
            s(&target),
        ]);
        assert!(
            res.status.success(),
            "{}",
            String::from_utf8_lossy(&res.stderr)
        );
        let bytes = std::fs::read(&target).unwrap();
        if name.ends_with("png") {
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        } else {
            assert!(String::from_utf8(bytes).unwrap().contains("<svg"));
        }
        let table = String::from_utf8(res.stdout).unwrap();
        assert!(table.contains("ECE") && table.contains("Brier") && table.contains("reliability"));
    }
    let _ = std::fs::remove_dir_all(&out);
}

fn assert_bad_input(args: &[&str], names: &str) {
    let out = eval(args);
    assert_eq!(out.status.code(), Some(2), "args {args:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(names), "stderr {err:?} should name {names:?}");
    assert!(out.stdout.is_empty(), "nothing on stdout on error");
}

/// Bad input exits with status 2 and a message naming the file or the flag.
#[test]
fn bad_input_exits_2_naming_the_problem() {
    let dir = reference("random_c3_32x32");
    let p = dir.join("P.npy");
    let y = dir.join("Y.npy");
    let other = reference("two_class_c2_8x8").join("Y.npy");
    let missing = dir.join("does-not-exist.npy");
    // Missing file.
    assert_bad_input(
        &["--probs", s(&missing), "--labels", s(&y)],
        "does-not-exist.npy",
    );
    // Shapes disagree (32×32 probabilities, 8×8 labels).
    assert_bad_input(
        &["--probs", s(&p), "--labels", s(&other)],
        "two_class_c2_8x8",
    );
    // A label map given as probabilities.
    assert_bad_input(&["--probs", s(&y), "--labels", s(&y)], "Y.npy");
    // Region mask without a mask, a mask without region mask.
    assert_bad_input(
        &["--probs", s(&p), "--labels", s(&y), "--region", "mask"],
        "--mask",
    );
    assert_bad_input(
        &["--probs", s(&p), "--labels", s(&y), "--mask", s(&y)],
        "--region mask",
    );
    // Zero bins.
    assert_bad_input(
        &["--probs", s(&p), "--labels", s(&y), "--bins", "0"],
        "bins",
    );
    // Labels out of range for K = 2 (labels of the 5-class case on a 2-class map of its shape).
    let scratch_dir = scratch("bad");
    let logits = scratch_dir.join("logits.npy");
    let arr = ndarray::Array3::<f32>::from_shape_fn((3, 32, 32), |(c, i, j)| (c + i + j) as f32);
    io::write_npy(&logits, &arr).unwrap();
    // Logits are not probabilities: refused unless --input logits says so.
    assert_bad_input(&["--probs", s(&logits), "--labels", s(&y)], "logits.npy");
    let ok = eval_json(&[
        "--probs",
        s(&logits),
        "--labels",
        s(&y),
        "--input",
        "logits",
    ]);
    assert!(ok["ece"].as_f64().unwrap() >= 0.0);
    // Unknown plot extension: error before any work, and no file written.
    let bad_plot = scratch_dir.join("rel.jpg");
    assert_bad_input(
        &["--probs", s(&p), "--labels", s(&y), "--plot", s(&bad_plot)],
        "rel.jpg",
    );
    assert!(!bad_plot.exists());
    let _ = std::fs::remove_dir_all(&scratch_dir);
}

/// `--convention monai`: MONAI's bins (20, edges `linspace(0, 1 + ε)`, `(lo, hi]`) and the
/// `monai` object — on the case computed by hand in calseg-metrics' `monai_reference`
/// tests (ECE 0.35, MCE 0.625, average CE 0.3129…), and on a reference case equal to the
/// library's `MonaiCalibration`. `ace` and `average_ce` are the same number.
#[test]
fn convention_monai() {
    use calseg::metrics::MonaiCalibration;
    let dir = scratch("monai");
    let p = dir.join("P.npy");
    let y = dir.join("Y.npy");
    let probs = ndarray::Array2::from_shape_vec(
        (2, 5),
        vec![1.0f32, 0.75, 0.74, 0.0, 0.0, 0.0, 0.25, 0.26, 1.0, 1.0],
    )
    .unwrap();
    io::write_npy(&p, &probs).unwrap();
    io::write_npy(&y, &ndarray::arr1(&[0u8, 1, 0, 1, 0])).unwrap();
    let got = eval_json(&["--probs", s(&p), "--labels", s(&y), "--convention", "monai"]);
    assert_eq!(
        (got["bins"].as_u64(), got["edges"].as_str()),
        (Some(20), Some("monai"))
    );
    assert_eq!(got["ace"], got["average_ce"]);
    let m = &got["monai"];
    assert_eq!(m["channels"], serde_json::json!([0, 1]));
    assert_eq!(m["include_background"], true);
    for (key, want) in [("ece", 0.35), ("mce", 0.625), ("average_ce", 0.3129166666)] {
        assert!(
            (m[key].as_f64().unwrap() - want).abs() < 1e-7,
            "{key}: {}",
            m[key]
        );
    }
    for (key, want) in [
        ("ece_per_class", [0.298, 0.402]),
        ("mce_per_class", [0.5, 0.75]),
        ("average_ce_per_class", [0.745 / 3.0, 0.3775]),
    ] {
        for c in 0..2 {
            assert!(
                (m[key][c].as_f64().unwrap() - want[c]).abs() < 1e-7,
                "{key}[{c}]"
            );
        }
    }
    // --bins changes MONAI's bin count; the table shows the MONAI block.
    let ten = eval_json(&[
        "--probs",
        s(&p),
        "--labels",
        s(&y),
        "--convention",
        "monai",
        "--bins",
        "10",
    ]);
    assert_eq!(ten["bins"], 10);
    let out = eval(&["--probs", s(&p), "--labels", s(&y), "--convention", "monai"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("MONAI CalibrationErrorMetric"));
    // Flags that contradict MONAI's conventions are refused.
    assert_bad_input(
        &[
            "--probs",
            s(&p),
            "--labels",
            s(&y),
            "--convention",
            "monai",
            "--edges",
            "left",
        ],
        "--edges left",
    );
    assert_bad_input(
        &[
            "--probs",
            s(&p),
            "--labels",
            s(&y),
            "--convention",
            "monai",
            "--region",
            "foreground",
        ],
        "--region",
    );
    // A reference case: the CLI's monai object is the library's.
    let case = reference("random_c3_32x32");
    let got = eval_json(&[
        "--probs",
        s(&case.join("P.npy")),
        "--labels",
        s(&case.join("Y.npy")),
        "--convention",
        "monai",
    ]);
    let probs = io::read_probs(case.join("P.npy")).unwrap();
    let labels = io::read_labels(case.join("Y.npy")).unwrap();
    let io::FloatArray::F32(pa) = &probs.probs else {
        panic!("float32 reference")
    };
    let mut ev = Evaluator::new(MetricConfig::monai()).unwrap();
    ev.update(pa.view(), labels.labels.view()).unwrap();
    let want = MonaiCalibration::from_reports(&[ev.finish().unwrap()], true).unwrap();
    assert!(close(got["monai"]["ece"].as_f64().unwrap(), want.ece));
    assert!(close(
        got["monai"]["average_ce"].as_f64().unwrap(),
        want.average_ce
    ));
    for c in 0..3 {
        assert!(close(
            got["monai"]["mce_per_class"][c].as_f64().unwrap(),
            want.mce_per_class[c]
        ));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
