//! End-to-end test of `calseg experiment`: every method (and `ce+ts`, and a two-value α
//! sweep for CALSeg) on a tiny phantom dataset with a tiny budget; checks the contract
//! keys of `results.json`, the report files, that a re-run skips the finished stages, and
//! that bad options exit 2.

mod common;

use common::{bad, ok, s, scratch_in};
use serde_json::Value;

const METHODS: [&str; 8] = [
    "ce", "ce+ts", "ls", "focal", "svls", "mbls", "nacl", "calseg",
];

const TINY: &str = r#"
[net]
base = 4
depth = 2
[train]
epochs = 2
iters_per_epoch = 2
batch_size = 4
validate_every = 1
[vls]
base = 4
enc_base = 4
enc_levels = 3
depth = 2
[vls_train]
epochs = 2
iters_per_epoch = 2
batch_size = 4
validate_every = 0
[calseg]
samples = 3
alpha = [0.5, 1.0]
[split]
min_cases = 3
test_fraction = 0.25
[eval]
hd95 = true
"#;

#[test]
fn experiment_end_to_end_and_resumable() {
    let root = scratch_in("cli-experiment", "e2e");
    let ids = ["ph_0", "ph_1", "ph_2", "ph_3"];
    let data = common::phantom_dataset(&root, "Dataset003_Phantom", &ids, 3, &[16, 16, 8], 40);
    let cfg = root.join("tiny.toml");
    std::fs::write(&cfg, TINY).unwrap();
    let out = root.join("out");
    let args = [
        "experiment",
        "--data",
        s(&data),
        "--out",
        s(&out),
        "--config",
        s(&cfg),
        "--quiet",
    ];
    let stdout = ok(&args);
    assert!(stdout.contains("| calseg |"), "{stdout}");

    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    for m in METHODS {
        let r = &json["methods"][m];
        for key in [
            "ece",
            "ece_fg",
            "mce",
            "cece",
            "ace",
            "brier",
            "nll",
            "dice_mean_fg",
            "train_seconds",
        ] {
            assert!(r[key].is_number(), "{m}.{key} missing: {r}");
        }
        assert_eq!(r["dice"].as_array().map(Vec::len), Some(3), "{m}: {r}");
        assert!(r.get("hd95_mean_fg").is_some());
        let ece = r["ece"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&ece), "{m}: ece {ece}");
        // The convergence record is found for every net (CALSeg's chosen net of a sweep
        // included, whose folder name carries its setting).
        assert!(
            r["extra"]["val_dice_final"].is_number(),
            "{m}: no validation-Dice record: {r}"
        );
    }
    // Split by cases (4 cases, min_cases 3): one test case, validation out of the rest.
    assert_eq!(json["split"]["kind"], "held-out cases");
    assert_eq!(json["split"]["test"].as_array().map(Vec::len), Some(1));
    // The α sweep was decided on validation and says so.
    let tuned = &json["config"]["tuned_on_validation"]["seed0"];
    // τ from the smoother calibrated on validation, α by the nets' validation ECE.
    let chosen_by = tuned["calseg"]["chosen_by"].as_str().unwrap();
    assert!(
        chosen_by.contains("calibrated on the validation"),
        "{chosen_by}"
    );
    assert!(chosen_by.contains("lowest validation ECE"), "{chosen_by}");
    assert!(tuned["calseg"]["calibration"]["tau"].as_f64().unwrap() > 0.0);
    assert_eq!(tuned["calseg"]["sweep"].as_array().map(Vec::len), Some(2));
    assert!(tuned["ce+ts.temperature"].as_f64().unwrap() > 0.0);
    for f in [
        "results.md",
        "split.json",
        "reliability_all.png",
        "reliability_all.svg",
        "reliability_calseg.png",
        "reliability_ce_ts.svg",
        "panel.png",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    // Re-running finds every stage done and gives the same numbers.
    let out2 = common::calseg(&args);
    assert!(out2.status.success());
    let err = String::from_utf8_lossy(&out2.stderr);
    assert!(err.contains("trained already"), "{err}");
    assert!(!err.contains("training ce\n"), "{err}");
    let again: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(
        json["methods"]["calseg"]["ece"],
        again["methods"]["calseg"]["ece"]
    );
    // The experiment's smoother (one by default; with `crossfit = k` one folder per
    // fold, `vls/fold{f}`: tests/crossfit.rs) is an ordinary model folder for
    // `calseg vls smooth`.
    let smoothed = root.join("smoothed");
    ok(&[
        "vls",
        "smooth",
        "--model",
        s(&out.join("seed0").join("vls")),
        "--data",
        s(&data),
        "--out",
        s(&smoothed),
        "--samples",
        "2",
    ]);
    assert!(smoothed.join("ph_0.safetensors").is_file());
}

#[test]
fn bad_experiment_options_exit_2() {
    let root = scratch_in("cli-experiment", "bad");
    let data =
        common::phantom_dataset(&root, "Dataset004_Phantom", &["a", "b"], 3, &[16, 16, 8], 1);
    let out = root.join("out");
    // Runs `calseg experiment` on the phantom with `extra` options; returns stderr.
    let experiment = |extra: &[&str]| {
        let mut args = vec!["experiment", "--data", s(&data), "--out", s(&out)];
        args.extend_from_slice(extra);
        bad(&args)
    };
    let err = experiment(&["--methods", "ce,magic"]);
    assert!(err.contains("magic"), "{err}");
    let cfg = root.join("bad.toml");
    // Runs `calseg experiment` with `toml` as its configuration; returns stderr.
    let with_config = |toml: &str| {
        std::fs::write(&cfg, toml).unwrap();
        experiment(&["--config", s(&cfg)])
    };
    let err = with_config("[calseg]\nalpha = [1.5]\n");
    assert!(err.contains("alpha"), "{err}");
    let err = with_config("[trian]\nepochs = 1\n");
    assert!(err.contains("bad.toml"), "{err}");
    // An evaluation mask on another grid is found before any training.
    let mask = root.join("mask.nii.gz");
    let ones = ndarray::ArrayD::<u32>::ones(ndarray::IxDyn(&[9, 9, 9]));
    calseg::io::write_nifti_labels(&mask, &ones, &calseg::io::Geometry::unit(3)).unwrap();
    let err = with_config(&format!("[eval]\nmask = {:?}\n", s(&mask)));
    assert!(err.contains("mask"), "{err}");
    let err = experiment(&["--development", "1.5"]);
    assert!(err.contains("development"), "{err}");
    let err = bad(&[
        "experiment",
        "--data",
        s(&root.join("nope")),
        "--out",
        s(&out),
    ]);
    assert!(err.contains("nope"), "{err}");
    assert!(!out.exists(), "nothing may be written on bad input");
}

/// A seeded multi-rater phantom folder: `calseg experiment` adds the `raters` method to
/// the default list, trains it on the rater distribution, and reports the rater-based
/// metrics of every method; `raters` on a dataset without raters is bad input.
#[test]
fn experiment_on_a_multi_rater_folder_reports_rater_metrics() {
    use calseg::io::phantom::{
        PhantomConfig, RaterDatasetConfig, RaterPhantomConfig, write_rater_dataset,
    };
    let root = scratch_in("cli-experiment", "raters");
    let data = root.join("Dataset005_Raters");
    let rcfg = RaterDatasetConfig {
        phantom: RaterPhantomConfig {
            phantom: PhantomConfig {
                shape: vec![16, 16, 4],
                classes: 3,
                supersample: 2,
                ..PhantomConfig::default()
            },
            raters: 3,
            spread: 0.6,
        },
        train: 4,
        test: 1,
    };
    write_rater_dataset(&data, &rcfg, 5).unwrap();

    // The default method list gains `raters` on this folder.
    let ds = calseg::io::Dataset::open(&data).unwrap();
    let progress = calseg::experiment::NoProgress;
    let exp = calseg::experiment::Experiment::new(
        &ds,
        calseg::experiment::ExperimentConfig::default(),
        root.join("unused"),
        calseg::experiment::Masks::None,
        &progress,
    )
    .unwrap();
    assert!(
        exp.config()
            .methods
            .contains(&calseg::experiment::MethodId::Raters)
    );

    let cfg = root.join("tiny.toml");
    let tiny = TINY.replace(
        "[net]",
        "methods = [\"ce\", \"raters\"]\ntemperature_scaling = false\n[net]",
    );
    std::fs::write(&cfg, tiny).unwrap();
    let out = root.join("out");
    let stdout = ok(&[
        "experiment",
        "--data",
        s(&data),
        "--out",
        s(&out),
        "--config",
        s(&cfg),
        "--quiet",
    ]);
    assert!(stdout.contains("| raters |"), "{stdout}");
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    // The test part is the folder's own labelled test case.
    assert_eq!(json["split"]["test"].as_array().map(Vec::len), Some(1));
    for m in ["ce", "raters"] {
        let r = &json["methods"][m]["raters"];
        for key in [
            "ece_soft",
            "brier_soft",
            "nll_soft",
            "ged",
            "dice_per_rater_mean",
            "dice_per_rater_min",
            "dice_per_rater_max",
        ] {
            assert!(r[key].is_number(), "{m}.raters.{key} missing: {r}");
        }
        let (lo, mean, hi) = (
            r["dice_per_rater_min"].as_f64().unwrap(),
            r["dice_per_rater_mean"].as_f64().unwrap(),
            r["dice_per_rater_max"].as_f64().unwrap(),
        );
        assert!(
            (0.0..=1.0).contains(&lo) && lo <= mean && mean <= hi && hi <= 1.0,
            "{r}"
        );
        assert!(r["ece_soft"].as_f64().unwrap() <= 1.0, "{r}");
        assert!(r["ged"].as_f64().unwrap() > -1e-9, "{r}");
        assert!(
            json["methods"][m]["extra"]
                .as_object()
                .unwrap()
                .keys()
                .all(|k| !k.starts_with("raters.")),
            "rater keys stay out of extra"
        );
    }
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(md.contains("## Against the raters"), "{md}");

    // `raters` on a folder without raters: exit 2, before anything is written.
    let plain = common::phantom_dataset(&root, "Dataset006_Plain", &["a", "b"], 3, &[16, 16, 8], 1);
    let out2 = root.join("out_plain");
    let err = bad(&[
        "experiment",
        "--data",
        s(&plain),
        "--out",
        s(&out2),
        "--methods",
        "ce,raters",
    ]);
    assert!(err.contains("raters"), "{err}");
    assert!(!out2.exists());
}
