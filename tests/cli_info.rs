//! `calseg info` run as a program: on the embedded template (written out by the library),
//! on npy/safetensors/PNG files, and on damaged files (exit status 2, file named on stderr).

use calseg::io::{
    self, Geometry, NamedTensor, write_nifti, write_nifti_probs, write_npy, write_png,
    write_safetensors,
};
use ndarray::{Array2, ArrayD, IxDyn};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("calseg-cli-info-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn info(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_calseg"))
        .arg("info")
        .args(args)
        .output()
        .unwrap()
}

fn info_json(path: &Path) -> Value {
    let out = info(&[path.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The embedded template's T1 and probabilities, written to disk unchanged.
fn template_files(dir: &Path) -> (PathBuf, PathBuf) {
    let ds = io::icbm152::open().unwrap();
    let case = ds.load("icbm152").unwrap();
    let t1 = dir.join("t1.nii.gz");
    let t1_img = io::icbm152::t1().unwrap();
    match &t1_img.data {
        io::TypedArray::F32(a) => write_nifti(&t1, a, &t1_img.geometry).unwrap(),
        other => panic!("T1 is {}", other.dtype()),
    }
    let probs = dir.join("probs.nii.gz");
    write_nifti_probs(&probs, case.soft_label.as_ref().unwrap(), &case.geometry).unwrap();
    (t1, probs)
}

#[test]
fn info_on_the_embedded_template() {
    let d = scratch("template");
    let (t1, probs) = template_files(&d);
    let v = info_json(&t1);
    assert_eq!(v["shape"], serde_json::json!([80, 100, 82]));
    assert_eq!(v["datatype"], "float32");
    assert_eq!(v["spacing"], serde_json::json!([2.0, 2.0, 2.0]));
    assert_eq!(v["affine"][0], serde_json::json!([2.0, 0.0, 0.0, -79.5]));
    assert_eq!(v["affine"][2][3], -71.5);
    assert_eq!(v["format"], "NIfTI-1 (gzip)");
    let t1_img = io::read_image(&t1).unwrap();
    let (lo, hi) = t1_img.value_range().unwrap();
    // (serde_json's default float parser may be off by one ulp.)
    assert!((v["min"].as_f64().unwrap() - lo).abs() <= 1e-12 * lo.abs().max(1.0));
    assert!((v["max"].as_f64().unwrap() - hi).abs() <= 1e-12 * hi.abs().max(1.0));
    assert!(lo >= 0.0 && hi <= 1.0 && hi > 0.5);

    let p = info_json(&probs);
    assert_eq!(p["shape"], serde_json::json!([80, 100, 82, 4]));
    assert_eq!(p["spacing"], serde_json::json!([2.0, 2.0, 2.0]));
    assert!(p["max"].as_f64().unwrap() <= 1.0 + 1e-6);

    // Readable text without --json.
    let out = info(&[t1.to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in ["80 × 100 × 82", "float32", "2 × 2 × 2", "-79.5000", "range"] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn info_applies_scaling_and_reads_every_format() {
    let d = scratch("formats");
    // A uint8 NIfTI with scl_slope 2, scl_inter -1 patched in: range must be scaled.
    let a = ArrayD::from_shape_fn(IxDyn(&[3, 2, 2]), |i| (i[0] * 4 + i[1] * 2 + i[2]) as u8);
    let nii = d.join("scaled.nii");
    write_nifti(&nii, &a, &Geometry::unit(3)).unwrap();
    let mut bytes = std::fs::read(&nii).unwrap();
    bytes[112..116].copy_from_slice(&2.0f32.to_le_bytes());
    bytes[116..120].copy_from_slice(&(-1.0f32).to_le_bytes());
    std::fs::write(&nii, bytes).unwrap();
    let v = info_json(&nii);
    assert_eq!(v["datatype"], "uint8");
    assert_eq!(
        (v["min"].as_f64(), v["max"].as_f64()),
        (Some(-1.0), Some(21.0))
    );
    assert_eq!(v["scaling"]["slope"], 2.0);

    let npy = d.join("x.npy");
    let f = ArrayD::from_shape_fn(IxDyn(&[2, 3]), |i| {
        if i == IxDyn(&[1, 1]) {
            f64::NAN
        } else {
            i[1] as f64 - 5.0
        }
    });
    write_npy(&npy, &f).unwrap();
    let v = info_json(&npy);
    assert_eq!(v["shape"], serde_json::json!([2, 3]));
    assert_eq!(v["datatype"], "float64");
    assert_eq!(v["spacing"], serde_json::json!([1.0, 1.0]));
    assert!(v["affine"].is_null());
    assert_eq!(
        (v["min"].as_f64(), v["max"].as_f64()),
        (Some(-5.0), Some(-3.0))
    );
    assert_eq!(v["nan_count"], 1);

    let st = d.join("t.safetensors");
    let probs = ArrayD::<f32>::from_elem(IxDyn(&[2, 3, 3]), 0.5);
    let labels = ArrayD::<u8>::from_elem(IxDyn(&[3, 3]), 1);
    write_safetensors(
        &st,
        &[
            NamedTensor::new("probs", &probs),
            NamedTensor::new("labels", &labels),
        ],
    )
    .unwrap();
    let v = info_json(&st);
    assert_eq!(v["format"], "safetensors");
    assert_eq!(v["tensors"]["probs"]["shape"], serde_json::json!([2, 3, 3]));
    assert_eq!(v["tensors"]["probs"]["datatype"], "float32");
    assert_eq!(v["tensors"]["labels"]["max"], 1.0);
    let out = info(&[st.to_str().unwrap()]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("tensor    probs") && text.contains("tensor    labels"),
        "{text}"
    );

    let png = d.join("s.png");
    write_png(
        &png,
        &Array2::from_shape_fn((4, 6), |(r, c)| (r * 6 + c) as u16 * 100),
    )
    .unwrap();
    let v = info_json(&png);
    assert_eq!(v["shape"], serde_json::json!([4, 6]));
    assert_eq!(v["datatype"], "uint16");
    assert_eq!(v["max"], 2300.0);
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn bad_input_exits_2_naming_the_file() {
    let d = scratch("bad");
    let (t1, _) = template_files(&d);
    let bytes = std::fs::read(&t1).unwrap();
    let corrupt = d.join("corrupt.nii.gz");
    std::fs::write(&corrupt, &bytes[..bytes.len() / 2]).unwrap();
    let garbage = d.join("garbage.nii");
    std::fs::write(&garbage, b"definitely not a NIfTI file").unwrap();
    let unknown = d.join("image.mha");
    std::fs::write(&unknown, b"x").unwrap();
    let missing = d.join("missing.npy");
    for (path, needle) in [
        (&corrupt, "gzip"),
        (&garbage, "NIfTI"),
        (&unknown, "unsupported file type"),
        (&missing, "cannot read"),
    ] {
        for json in [false, true] {
            let mut args = vec![path.to_str().unwrap()];
            if json {
                args.push("--json");
            }
            let out = info(&args);
            assert_eq!(out.status.code(), Some(2), "{}", path.display());
            let err = String::from_utf8_lossy(&out.stderr);
            let name = path.file_name().unwrap().to_str().unwrap();
            assert!(err.contains(name) && err.contains(needle), "{err}");
            assert!(out.stdout.is_empty());
        }
    }
    std::fs::remove_dir_all(d).unwrap();
}
