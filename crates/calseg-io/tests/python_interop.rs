//! Files written by calseg-io, checked by Python (numpy, nibabel, safetensors).
//!
//! ```sh
//! CALSEG_PY_DIR=/tmp/calseg-py cargo test -p calseg-io --test python_interop -- --ignored
//! python3 crates/calseg-io/tests/fixtures/check_rust_outputs.py /tmp/calseg-py
//! ```
//! The script recomputes every expected value from the same formulas and fails on any
//! difference in shape, dtype, values or affine.

use calseg_io::{
    Geometry, NamedTensor, read_nifti, write_nifti, write_nifti_labels, write_nifti_probs,
    write_npy, write_safetensors,
};
use ndarray::{ArrayD, IxDyn};
use std::path::{Path, PathBuf};

#[test]
#[ignore = "writes files for tests/fixtures/check_rust_outputs.py; set CALSEG_PY_DIR"]
fn write_files_for_python() {
    let dir = PathBuf::from(std::env::var("CALSEG_PY_DIR").expect("set CALSEG_PY_DIR"));
    std::fs::create_dir_all(&dir).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nib_float32.nii.gz");
    let src = read_nifti(&fixture).unwrap();
    let g = &src.geometry;

    // value(x, y, z) = 100x + 10y + z on a 3×4×5 grid, as in the script.
    let labels = ArrayD::from_shape_fn(IxDyn(&[3, 4, 5]), |i| ((i[0] + i[1] + i[2]) % 4) as u32);
    write_nifti_labels(dir.join("labels_u8.nii.gz"), &labels, g).unwrap();
    write_nifti_labels(dir.join("labels_u16.nii"), &labels.mapv(|v| v * 1000), g).unwrap();
    let probs = ArrayD::from_shape_fn(IxDyn(&[2, 3, 4, 5]), |i| {
        let v = (i[1] * 100 + i[2] * 10 + i[3]) as f32 / 1000.0;
        if i[0] == 0 { v } else { 1.0 - v }
    });
    write_nifti_probs(dir.join("probs.nii.gz"), &probs, g).unwrap();
    let ramp = |t: f64| {
        ArrayD::from_shape_fn(IxDyn(&[3, 4, 5]), move |i| {
            (i[0] * 100 + i[1] * 10 + i[2]) as f64 * t
        })
    };
    write_nifti(
        dir.join("ramp_i16.nii"),
        &ramp(1.0).mapv(|v| v as i16 - 200),
        g,
    )
    .unwrap();
    write_nifti(dir.join("ramp_f64.nii.gz"), &ramp(0.5), g).unwrap();
    // A cropped geometry: a new affine, written as sform and qform.
    let crop = g.cropped(&[1, 2, 3]);
    write_nifti(
        dir.join("crop.nii.gz"),
        &ramp(1.0).mapv(|v| v as f32),
        &crop,
    )
    .unwrap();
    // No source header: diag(spacing).
    write_nifti(
        dir.join("plain.nii"),
        &ramp(1.0).mapv(|v| v as u8),
        &Geometry::with_spacing(vec![0.5, 1.5, 3.0]),
    )
    .unwrap();
    let affines = serde_json::json!({
        "source": g.affine.unwrap(),
        "crop": crop.affine.unwrap(),
    });
    std::fs::write(dir.join("affines.json"), affines.to_string()).unwrap();

    // npy, every type: value = (100i + 10j + k) cast, shape (2, 3, 4).
    let base = ArrayD::from_shape_fn(IxDyn(&[2, 3, 4]), |i| {
        (i[0] * 100 + i[1] * 10 + i[2]) as i64
    });
    write_npy(dir.join("f4.npy"), &base.mapv(|v| v as f32 / 4.0)).unwrap();
    write_npy(dir.join("f8.npy"), &base.mapv(|v| v as f64 / 3.0)).unwrap();
    write_npy(dir.join("u1.npy"), &base.mapv(|v| v as u8)).unwrap();
    write_npy(dir.join("i1.npy"), &base.mapv(|v| (v - 100) as i8)).unwrap();
    write_npy(dir.join("u2.npy"), &base.mapv(|v| v as u16 * 300)).unwrap();
    write_npy(dir.join("i2.npy"), &base.mapv(|v| v as i16 - 200)).unwrap();
    write_npy(dir.join("u4.npy"), &base.mapv(|v| v as u32 * 100_000)).unwrap();
    write_npy(dir.join("i4.npy"), &base.mapv(|v| v as i32 - 200)).unwrap();
    write_npy(dir.join("u8.npy"), &base.mapv(|v| v as u64 * (1 << 40))).unwrap();
    write_npy(dir.join("i8.npy"), &base.mapv(|v| v - (1 << 40))).unwrap();
    write_npy(dir.join("b1.npy"), &base.mapv(|v| v % 3 == 0)).unwrap();
    write_npy(dir.join("transposed.npy"), &base.mapv(|v| v as f32).t()).unwrap();
    write_npy(dir.join("scalar.npy"), &ndarray::arr0(2.5f64)).unwrap();

    write_safetensors(
        dir.join("soft.safetensors"),
        &[
            NamedTensor::new("soft_labels", &probs),
            NamedTensor::new("probs", &probs.mapv(f64::from)),
            NamedTensor::new("labels", &labels.mapv(|v| v as u8)),
        ],
    )
    .unwrap();
}
