//! Unit tests of the result files.

use super::markdown::cpu_model_of;
use super::*;
use calseg_metrics::{MetricConfig, ReliabilityBin, evaluate};
use ndarray::Array2;
use serde_json::{Value, json};
use std::collections::BTreeMap;

fn run(name: &str, ece: f64, dice_fg: f64, hd95: Option<f64>) -> MethodResult {
    MethodResult {
        name: name.into(),
        ece,
        ece_fg: ece * 2.0,
        mce: ece * 3.0,
        cece: ece / 2.0,
        ace: ece,
        brier: 0.1,
        nll: 0.3,
        dice: vec![0.99, dice_fg, f64::NAN],
        dice_mean_fg: dice_fg,
        hd95_mean_fg: hd95,
        train_seconds: 10.0,
        extra: BTreeMap::from([("kl".to_owned(), ece * 10.0)]),
    }
}

fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("calseg-report-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn seeds_give_mean_and_sample_sd() {
    let runs = [
        run("CALSeg", 0.1, 0.8, Some(2.0)),
        run("CALSeg", 0.2, 0.9, None),
        run("CALSeg", 0.3, 0.7, Some(4.0)),
    ];
    let s = summarize(&runs).unwrap();
    assert_eq!(s.n_seeds, 3);
    assert!((s.mean.ece - 0.2).abs() < 1e-12);
    let sd = s.sd.as_ref().unwrap();
    // Sample sd of 0.1, 0.2, 0.3 is 0.1 (divisor n − 1), not 0.0816 (divisor n).
    assert!((sd.ece - 0.1).abs() < 1e-12, "{}", sd.ece);
    assert!((sd.dice_mean_fg - 0.1).abs() < 1e-12);
    assert!((sd.dice[0]).abs() < 1e-12);
    assert!(s.mean.dice[2].is_nan() && sd.dice[2].is_nan());
    // HD95 over the two seeds that have one: mean 3, sd √2.
    assert_eq!(s.mean.hd95_mean_fg, Some(3.0));
    assert!((sd.hd95_mean_fg.unwrap() - 2f64.sqrt()).abs() < 1e-12);
    assert!((sd.extra["kl"] - 1.0).abs() < 1e-12);

    let j = s.to_json();
    assert!((j["ece_sd"].as_f64().unwrap() - 0.1).abs() < 1e-12);
    assert!((j["dice_mean_fg_sd"].as_f64().unwrap() - 0.1).abs() < 1e-12);
    assert!(j["dice"][2].is_null() && j["dice_sd"][2].is_null());
    assert!((j["extra"]["kl_sd"].as_f64().unwrap() - 1.0).abs() < 1e-12);
    assert_eq!(j["n_seeds"], 3);

    // One seed: the values themselves and no `_sd` key.
    let one = summarize(&runs[..1]).unwrap();
    assert!(one.sd.is_none());
    let j = one.to_json();
    assert_eq!(j["ece"].as_f64(), Some(0.1));
    assert!(j.as_object().unwrap().keys().all(|k| !k.ends_with("_sd")));

    assert!(summarize(&[]).is_err());
    assert!(summarize(&[run("A", 0.1, 0.8, None), run("B", 0.1, 0.8, None)]).is_err());
    let groups = group_by_method(&[
        run("B", 0.1, 0.8, None),
        run("A", 0.1, 0.8, None),
        run("B", 0.3, 0.8, None),
    ])
    .unwrap();
    assert_eq!(groups.len(), 2);
    assert_eq!((groups[0].name.as_str(), groups[0].n_seeds), ("B", 2));
    assert_eq!((groups[1].name.as_str(), groups[1].n_seeds), ("A", 1));
}

#[test]
fn results_json_has_the_contract_keys_and_is_written_whole() {
    let methods = group_by_method(&[
        run("CE", 0.1, 0.8, None),
        run("CALSeg", 0.05, 0.85, Some(3.0)),
        run("CALSeg", 0.07, 0.83, Some(5.0)),
    ])
    .unwrap();
    let dir = scratch("json");
    let path = dir.join("results.json");
    write_results_json(
        &path,
        &methods,
        json!({"epochs": 3}),
        json!({"train": ["a"], "test": ["b"]}),
        json!({"kl": 0.01}),
    )
    .unwrap();
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for key in ["methods", "config", "split", "soft_label_quality"] {
        assert!(doc.get(key).is_some(), "{key}");
    }
    for name in ["CE", "CALSeg"] {
        let m = &doc["methods"][name];
        let keys = "ece ece_fg mce cece ace brier nll dice dice_mean_fg hd95_mean_fg train_seconds";
        for key in keys.split_whitespace() {
            assert!(m.get(key).is_some(), "{name}.{key}");
        }
    }
    assert!(doc["methods"]["CE"]["hd95_mean_fg"].is_null());
    assert_eq!(doc["methods"]["CALSeg"]["hd95_mean_fg"].as_f64(), Some(4.0));
    assert!(doc["methods"]["CALSeg"].get("ece_sd").is_some());
    assert_eq!(doc["config"]["epochs"], 3);
    // Only the target in the folder: no temporary file left.
    let names: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(names.len(), 1);
    // Two summaries with one name are refused.
    let twice = [methods[0].clone(), methods[0].clone()];
    assert!(results_json(&twice, Value::Null, Value::Null, Value::Null).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Cells of the row of `method` in the first table.
fn row<'a>(md: &'a str, method: &str) -> Vec<&'a str> {
    md.lines()
        .find(|l| l.starts_with(&format!("| {method} |")))
        .unwrap()
        .split('|')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

#[test]
fn markdown_bolds_the_best_cell_of_each_column() {
    // A: better ECE (lower), B: better Dice (higher); C has an HD95, the others none.
    let methods: Vec<MethodSummary> = vec![
        run("A", 0.05, 0.70, None).into(),
        summarize(&[run("B", 0.2, 0.9, None), run("B", 0.2, 0.9, None)]).unwrap(),
        run("C", 0.10, 0.80, Some(7.5)).into(),
    ];
    let md = results_markdown(
        &methods,
        &json!({"epochs": 2, "lr": 0.001}),
        &json!({"test": ["x"]}),
        &Value::Null,
        &json!({"seconds": 60}),
        &MachineInfo {
            cpu_model: Some("Test CPU".into()),
            cores: 2,
            os: "linux".into(),
        },
    );
    let header: Vec<&str> = md
        .lines()
        .find(|l| l.starts_with("| Method"))
        .unwrap()
        .split('|')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    let col = |h: &str| header.iter().position(|x| *x == h).unwrap();
    let (a, b, c) = (row(&md, "A"), row(&md, "B"), row(&md, "C"));
    assert_eq!(a[col("ECE")], "**0.0500**");
    assert_eq!(b[col("ECE")], "0.2000 ± 0.0000");
    assert_eq!(c[col("ECE")], "0.1000");
    assert_eq!(b[col("Dice (fg)")], "**0.9000 ± 0.0000**");
    assert_eq!(a[col("Dice (fg)")], "0.7000");
    assert_eq!(c[col("HD95 (fg, mm)")], "**7.50**");
    assert_eq!(a[col("HD95 (fg, mm)")], "–");
    // Equal values are all best; the training time is never bold.
    assert_eq!(a[col("Brier")], "**0.1000**");
    assert_eq!(c[col("Brier")], "**0.1000**");
    assert!(!md.contains("**10.0**"));
    let sections = "## Configuration|- `lr`: `0.001`|## Split|## Budget|## Machine|Test CPU";
    for section in sections.split('|') {
        assert!(md.contains(section), "{section} missing in\n{md}");
    }
    assert!(!md.contains("Soft-label quality"));
}

#[test]
fn from_reports_takes_ece_fg_from_the_foreground_report() {
    // 2 classes, 4 voxels: background voxels confidently right, foreground ones 60 %.
    let labels = ndarray::array![0u8, 0, 1, 1];
    let p =
        Array2::from_shape_vec((2, 4), vec![0.9f32, 0.9, 0.4, 0.4, 0.1, 0.1, 0.6, 0.6]).unwrap();
    let base = MetricConfig::default();
    let all = evaluate(p.view(), labels.view(), &base).unwrap();
    let fg = evaluate(p.view(), labels.view(), &foreground_config(&base)).unwrap();
    let r = MethodResult::from_reports("CE", &all, &fg, Some(1.5), 12.0).unwrap();
    assert!((r.ece_fg - 0.4).abs() < 1e-6, "{}", r.ece_fg);
    assert!((r.ece - 0.25).abs() < 1e-6, "{}", r.ece);
    assert_eq!(r.dice, all.dice);
    assert_eq!((r.hd95_mean_fg, r.train_seconds), (Some(1.5), 12.0));
    let three = evaluate(
        Array2::from_shape_vec((3, 1), vec![0.5f32, 0.25, 0.25])
            .unwrap()
            .view(),
        ndarray::array![0u8].view(),
        &base,
    )
    .unwrap();
    assert!(MethodResult::from_reports("x", &all, &three, None, 0.0).is_err());
}

#[test]
fn cpu_model_is_read_from_cpuinfo() {
    assert_eq!(
        cpu_model_of("processor\t: 0\nmodel name\t: Fancy CPU @ 3GHz\n").as_deref(),
        Some("Fancy CPU @ 3GHz")
    );
    assert_eq!(cpu_model_of("processor: 0\n"), None);
}

#[test]
fn overlay_is_written_as_png_and_svg() {
    let bins: Vec<ReliabilityBin> = (0..5)
        .map(|b| ReliabilityBin {
            lower: b as f64 / 5.0,
            upper: (b + 1) as f64 / 5.0,
            count: 10,
            confidence: (b as f64 + 0.5) / 5.0,
            accuracy: b as f64 / 5.0,
        })
        .collect();
    let dir = scratch("overlay");
    let (png_path, svg_path) = (dir.join("rel.png"), dir.join("rel.svg"));
    write_reliability_overlay(
        &[("CE", &bins[..]), ("CALSeg", &bins[..])],
        "test",
        &[&png_path, &svg_path],
    )
    .unwrap();
    assert_eq!(&std::fs::read(&png_path).unwrap()[..4], b"\x89PNG");
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(svg.contains("CALSeg") && svg.contains("<svg"));
    // A bad extension anywhere: nothing written.
    let jpg = dir.join("rel.jpg");
    let other = dir.join("other.png");
    assert!(write_reliability_overlay(&[("CE", &bins[..])], "t", &[&other, &jpg]).is_err());
    assert!(!other.exists() && !jpg.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn rater_metrics_get_their_own_object_and_section() {
    let mut a = run("raters", 0.1, 0.8, None);
    let mut b = run("raters", 0.3, 0.7, None);
    a.extra.insert(format!("{RATERS_PREFIX}ged"), 0.2);
    b.extra.insert(format!("{RATERS_PREFIX}ged"), 0.4);
    a.extra.insert(format!("{RATERS_PREFIX}ece_soft"), 0.05);
    b.extra.insert(format!("{RATERS_PREFIX}ece_soft"), 0.05);
    let s = summarize(&[a, b]).unwrap();
    let j = s.to_json();
    assert!(
        (j["raters"]["ged"].as_f64().unwrap() - 0.3).abs() < 1e-12,
        "{j}"
    );
    assert!(j["raters"]["ged_sd"].as_f64().unwrap() > 0.0, "{j}");
    assert_eq!(j["raters"]["ece_soft_sd"].as_f64(), Some(0.0));
    assert!(j["extra"]["kl"].is_number());
    assert!(j["extra"].get("raters.ged").is_none(), "{j}");
    // Without rater metrics there is no `raters` object and no section.
    let plain: MethodSummary = run("ce", 0.1, 0.8, None).into();
    assert!(plain.to_json().get("raters").is_none());
    assert_eq!(raters_section(std::slice::from_ref(&plain)), "");
    let md = raters_section(&[s, plain]);
    assert!(
        md.contains("## Against the raters") && md.contains("| raters | 0.0500 |"),
        "{md}"
    );
    assert!(!md.contains("| ce |"), "{md}");
}
