//! Round trips against files written by nibabel, numpy and safetensors (Python).
//! The fixtures and `expected.json` are made by `tests/fixtures/make_fixtures.py`.

use calseg_io::{
    DataType, Format, Geometry, IoError, LabelProblem, TypedArray, read_image, read_labels,
    read_nifti, read_npy, read_probs, read_safetensors, write_nifti, write_nifti_labels,
    write_nifti_probs,
};
use ndarray::{ArrayD, IxDyn};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn expected() -> serde_json::Map<String, serde_json::Value> {
    let text = std::fs::read_to_string(fixture("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn as_f64s(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("calseg-io-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn every_nibabel_file_reads_like_nibabel() {
    let exp = expected();
    assert!(exp.len() >= 17);
    for (name, e) in &exp {
        let img = read_nifti(fixture(name)).unwrap_or_else(|err| panic!("{name}: {err}"));
        let shape: Vec<usize> = as_f64s(&e["shape"]).iter().map(|&v| v as usize).collect();
        assert_eq!(img.shape(), &shape[..], "{name}");
        assert_eq!(
            img.datatype().name(),
            e["dtype"].as_str().unwrap(),
            "{name}"
        );
        // Values after scl_slope/scl_inter, in nibabel's index order.
        let want = match read_npy(fixture(&format!("{name}.expected.npy"))).unwrap() {
            TypedArray::F64(a) => a,
            other => panic!("{name}: expected float64, got {}", other.dtype()),
        };
        assert_eq!(img.to_f64(), want, "{name}");
        // Spacing = nibabel zooms (spatial part).
        let zooms = as_f64s(&e["zooms"]);
        let nsp = shape.len().min(3);
        for (a, b) in img.geometry.spacing.iter().zip(&zooms[..nsp]) {
            assert!(
                (a - b).abs() < 1e-6,
                "{name}: spacing {:?} vs {zooms:?}",
                img.geometry.spacing
            );
        }
        assert_eq!(img.geometry.spacing.len(), nsp);
        // Affine = nibabel's img.affine (sform, or qform when sform_code is 0).
        let affine = img.geometry.affine.unwrap();
        for (r, row) in e["affine"].as_array().unwrap().iter().enumerate() {
            for (c, v) in as_f64s(row).iter().enumerate() {
                assert!(
                    (affine[r][c] - v).abs() < 1e-5,
                    "{name}: affine[{r}][{c}] = {} vs nibabel {v}",
                    affine[r][c]
                );
            }
        }
        let fmt = if name.ends_with(".gz") {
            Format::NiftiGz
        } else {
            Format::Nifti
        };
        assert_eq!(img.format, fmt);
    }
}

#[test]
fn index_order_matches_nibabel_voxel_by_voxel() {
    // nibabel wrote arr = arange(60).reshape(3, 4, 5) + offset: nibabel's arr[x, y, z]
    // must be our data[[x, y, z]].
    for (name, offset) in [
        ("nib_int16.nii.gz", -30.0),
        ("nib_uint8.nii.gz", 0.0),
        ("nib_bigendian.nii", -30.0),
    ] {
        let img = read_nifti(fixture(name)).unwrap();
        let v = img.to_f64();
        for x in 0..3 {
            for y in 0..4 {
                for z in 0..5 {
                    let want = (x * 20 + y * 5 + z) as f64 + offset;
                    assert_eq!(v[[x, y, z]], want, "{name} at ({x},{y},{z})");
                }
            }
        }
    }
}

#[test]
fn scaling_big_endian_and_qform_only() {
    let s = read_nifti(fixture("nib_scaled_int16.nii")).unwrap();
    assert_eq!(s.datatype(), DataType::I16);
    assert_eq!(s.scaling, Some((0.5, -3.0)));
    // Stored value at (2, 3, 4) is 59 − 30 = 29; real value 0.5 · 29 − 3.
    assert_eq!(s.to_f64()[[2, 3, 4]], 0.5 * 29.0 - 3.0);
    let (lo, hi) = s.value_range().unwrap();
    assert_eq!((lo, hi), (0.5 * -30.0 - 3.0, 0.5 * 29.0 - 3.0));

    let b = read_nifti(fixture("nib_bigendian.nii")).unwrap();
    assert_eq!(b.datatype(), DataType::I16);
    assert_eq!(b.geometry.spacing, vec![1.5, 1.5, 3.0]);

    let q = read_nifti(fixture("nib_qform_only.nii.gz")).unwrap();
    let h = q.geometry.nifti_header().unwrap();
    assert_eq!((h.sform_code, h.qform_code), (0, 1));
    assert_eq!(h.pixdim[0], -1.0);
}

#[test]
fn probabilities_from_nifti_4d_5d_npy_and_safetensors_agree() {
    // The same (x, y, z, K) map in 4D and 5D NIfTI.
    let p4 = read_probs(fixture("nib_probs4d.nii")).unwrap();
    let p5 = read_probs(fixture("nib_probs5d.nii.gz")).unwrap();
    assert_eq!(p4.probs.shape(), &[3, 3, 4, 5]);
    assert_eq!(p4.probs, p5.probs);
    assert_eq!(p4.geometry.spacing, vec![2.0, 2.0, 2.0]);
    let raw = read_nifti(fixture("nib_probs4d.nii")).unwrap().to_f64();
    let pf = p4.probs.clone().into_f64();
    for k in 0..3 {
        for x in 0..3 {
            for y in 0..4 {
                for z in 0..5 {
                    assert_eq!(pf[[k, x, y, z]], raw[[x, y, z, k]]);
                }
            }
        }
    }
    // npy and safetensors hold (K, *spatial) directly; the `probs` tensor is picked.
    let n = read_probs(fixture("np_probs.npy")).unwrap();
    let s = read_probs(fixture("st_probs_labels.safetensors")).unwrap();
    assert_eq!(n.probs.shape(), &[3, 4, 5]);
    assert_eq!(n.probs, s.probs);
    assert_eq!(n.geometry.spacing, vec![1.0, 1.0]);
    assert!(n.geometry.affine.is_none());
    // A lone tensor is used whatever its name, in its own precision.
    let single = read_probs(fixture("st_single.safetensors")).unwrap();
    assert_eq!(single.probs.dtype(), DataType::F64);
    // Several tensors, none named `probs`: an error naming the file and the tensors.
    let e = read_probs(fixture("st_ambiguous.safetensors")).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, IoError::TensorChoice { .. }));
    assert!(
        msg.contains("st_ambiguous.safetensors") && msg.contains("\"a\"") && msg.contains("\"b\""),
        "{msg}"
    );
    // A 3D NIfTI or an integer array is not a probability map.
    let e = read_probs(fixture("nib_float32.nii.gz")).unwrap_err();
    assert!(
        e.to_string().contains("nib_float32.nii.gz") && e.to_string().contains("4D"),
        "{e}"
    );
    let e = read_probs(fixture("labels_u8.nii.gz")).unwrap_err();
    assert!(e.to_string().contains("label map"), "{e}");
}

#[test]
fn label_maps_checked() {
    let l = read_labels(fixture("labels_u8.nii.gz")).unwrap();
    let f = read_labels(fixture("labels_float_integral.nii.gz")).unwrap();
    assert_eq!(l.labels, f.labels);
    assert_eq!(l.labels[[2, 3, 4]], 59 % 4);
    let n = read_labels(fixture("np_i4.npy")).unwrap();
    assert_eq!(n.geometry.spacing, vec![1.0; 3]);
    let st = read_labels(fixture("st_probs_labels.safetensors")).unwrap();
    assert_eq!(st.labels.shape(), &[4, 5]);

    for (name, problem, index) in [
        ("labels_nan.nii.gz", LabelProblem::NotFinite, vec![1, 2, 3]),
        (
            "labels_fractional.nii.gz",
            LabelProblem::NotIntegral,
            vec![2, 0, 1],
        ),
        (
            "labels_negative.nii.gz",
            LabelProblem::Negative,
            vec![0, 3, 4],
        ),
    ] {
        match read_labels(fixture(name)) {
            Err(e @ IoError::BadLabel { .. }) => {
                assert!(e.to_string().contains(name), "{e}");
                if let IoError::BadLabel {
                    problem: p,
                    index: i,
                    ..
                } = e
                {
                    assert_eq!(p, problem, "{name}");
                    assert_eq!(i, index, "{name}");
                }
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    // Negative values of an integer type (nibabel's int8 ramp starts at -30).
    let e = read_labels(fixture("nib_int8.nii.gz")).unwrap_err();
    assert!(matches!(
        e,
        IoError::BadLabel {
            problem: LabelProblem::Negative,
            ..
        }
    ));
}

#[test]
fn written_overlays_keep_the_source_header() {
    let dir = scratch("overlay");
    let src = read_nifti(fixture("nib_float32.nii.gz")).unwrap();
    let labels = ArrayD::from_shape_fn(IxDyn(&[3, 4, 5]), |i| ((i[0] + i[1] + i[2]) % 3) as u32);
    let probs = ArrayD::from_shape_fn(
        IxDyn(&[2, 3, 4, 5]),
        |i| if i[0] == 0 { 0.25f32 } else { 0.75 },
    );
    write_nifti_labels(dir.join("seg.nii.gz"), &labels, &src.geometry).unwrap();
    write_nifti_probs(dir.join("probs.nii"), &probs, &src.geometry).unwrap();

    let seg = read_nifti(dir.join("seg.nii.gz")).unwrap();
    assert_eq!(seg.datatype(), DataType::U8);
    assert_eq!(seg.geometry.affine, src.geometry.affine);
    assert_eq!(seg.geometry.spacing, src.geometry.spacing);
    let (h0, h1) = (
        src.geometry.nifti_header().unwrap(),
        seg.geometry.nifti_header().unwrap(),
    );
    assert_eq!(
        (h1.sform_code, h1.qform_code),
        (h0.sform_code, h0.qform_code)
    );
    assert_eq!(h1.srow_x, h0.srow_x);
    assert_eq!(h1.xyzt_units, h0.xyzt_units);
    assert_eq!(read_labels(dir.join("seg.nii.gz")).unwrap().labels, labels);

    let p = read_nifti(dir.join("probs.nii")).unwrap();
    assert_eq!(p.shape(), &[3, 4, 5, 2]);
    assert_eq!(p.datatype(), DataType::F32);
    assert_eq!(p.geometry.affine, src.geometry.affine);
    let back = read_probs(dir.join("probs.nii")).unwrap();
    assert_eq!(back.probs.into_f32(), probs);

    // A label map saved as (x, y, z, 1) reads as (x, y, z).
    write_nifti(
        dir.join("t1.nii"),
        &labels.clone().insert_axis(ndarray::Axis(3)),
        &src.geometry,
    )
    .unwrap();
    assert_eq!(
        read_nifti(dir.join("t1.nii")).unwrap().shape(),
        &[3, 4, 5, 1]
    );
    assert_eq!(read_labels(dir.join("t1.nii")).unwrap().labels, labels);

    // Labels above 255 go to uint16, above 65535 to uint32.
    let big = labels.mapv(|v| v * 1000);
    write_nifti_labels(dir.join("big.nii"), &big, &src.geometry).unwrap();
    assert_eq!(
        read_image(dir.join("big.nii")).unwrap().datatype(),
        DataType::U16
    );
    let huge = labels.mapv(|v| v * 100_000);
    write_nifti_labels(dir.join("huge.nii"), &huge, &src.geometry).unwrap();
    assert_eq!(read_labels(dir.join("huge.nii")).unwrap().labels, huge);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn every_type_round_trips_through_our_writer() {
    let dir = scratch("types");
    let g = Geometry::with_spacing(vec![0.7, 0.8, 0.9]);
    macro_rules! rt {
        ($t:ty, $dt:expr) => {{
            let a =
                ArrayD::from_shape_fn(IxDyn(&[3, 2, 4]), |i| (i[0] * 8 + i[1] * 4 + i[2]) as $t);
            let p = dir.join(format!("{}.nii.gz", stringify!($t)));
            write_nifti(&p, &a, &g).unwrap();
            let img = read_nifti(&p).unwrap();
            assert_eq!(img.datatype(), $dt);
            assert_eq!(img.data, TypedArray::from(a.clone()));
            assert_eq!(
                img.geometry.spacing,
                vec![0.7f32 as f64, 0.8f32 as f64, 0.9f32 as f64]
            );
            let aff = img.geometry.affine.unwrap();
            assert_eq!(
                (aff[0][0], aff[1][1], aff[2][2]),
                (0.7f32 as f64, 0.8f32 as f64, 0.9f32 as f64)
            );
        }};
    }
    rt!(u8, DataType::U8);
    rt!(i8, DataType::I8);
    rt!(u16, DataType::U16);
    rt!(i16, DataType::I16);
    rt!(u32, DataType::U32);
    rt!(i32, DataType::I32);
    rt!(u64, DataType::U64);
    rt!(i64, DataType::I64);
    rt!(f32, DataType::F32);
    rt!(f64, DataType::F64);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn new_affine_written_as_sform_and_qform() {
    let dir = scratch("affine");
    let src = read_nifti(fixture("nib_qform_only.nii.gz")).unwrap();
    // A crop moves the origin: the written file must carry the new affine.
    let moved = src.geometry.cropped(&[1, 2, 0]);
    let data = ArrayD::<f32>::zeros(IxDyn(&[2, 2, 5]));
    write_nifti(dir.join("crop.nii"), &data, &moved).unwrap();
    let back = read_nifti(dir.join("crop.nii")).unwrap();
    let close = |a: [[f64; 4]; 4], b: [[f64; 4]; 4]| {
        for r in 0..4 {
            for c in 0..4 {
                assert!((a[r][c] - b[r][c]).abs() < 1e-4, "{a:?} vs {b:?}");
            }
        }
    };
    let want = moved.affine.unwrap();
    close(want, back.geometry.affine.unwrap());
    let h = back.geometry.nifti_header().unwrap();
    assert!(h.sform_code > 0 && h.qform_code > 0);
    // With the sform switched off (sform_code is the int16 at byte 254), the qform
    // alone must give the same affine.
    let mut raw = std::fs::read(dir.join("crop.nii")).unwrap();
    raw[254] = 0;
    raw[255] = 0;
    let qonly = calseg_io::nifti_from_bytes(&raw, Path::new("qonly.nii")).unwrap();
    assert_eq!(qonly.geometry.nifti_header().unwrap().sform_code, 0);
    close(want, qonly.geometry.affine.unwrap());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn python_written_npy_and_safetensors() {
    for tag in ["f4", "f8", "u1", "u2", "i2", "i4", "i8", "u4", "b1"] {
        let c = read_npy(fixture(&format!("np_{tag}.npy"))).unwrap();
        let f = read_npy(fixture(&format!("np_{tag}_fortran.npy"))).unwrap();
        assert_eq!(c.shape(), &[2, 3, 4], "{tag}");
        assert_eq!(c, f, "{tag}: Fortran-order file differs");
        let v = c.to_f64();
        for i in 0..2 {
            for j in 0..3 {
                for k in 0..4 {
                    let n = (i * 12 + j * 4 + k) as i64;
                    // numpy's % is Python's: (n - 5) % 7 is never negative.
                    let want = if tag == "b1" {
                        f64::from(u8::from(n % 3 == 0))
                    } else {
                        (n - 5).rem_euclid(7) as f64
                    };
                    assert_eq!(v[[i, j, k]], want, "{tag} at ({i},{j},{k})");
                }
            }
        }
    }
    let be = read_npy(fixture("np_f8_bigendian.npy")).unwrap();
    assert_eq!(be.dtype(), DataType::F64);
    assert_eq!(be.to_f64()[[1, 2, 3]], 23.0 - 5.0);
    assert_eq!(
        read_npy(fixture("np_scalar.npy"))
            .unwrap()
            .to_f64()
            .into_raw_vec_and_offset()
            .0,
        vec![3.5]
    );
    let one = read_npy(fixture("np_1d.npy")).unwrap();
    assert_eq!(
        one,
        TypedArray::I32(ndarray::Array1::from_iter(0..7).into_dyn())
    );

    let t = read_safetensors(fixture("st_probs_labels.safetensors")).unwrap();
    let names: Vec<&str> = t.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"probs") && names.contains(&"labels"));
    let h = read_safetensors(fixture("st_f16.safetensors")).unwrap();
    assert_eq!(
        h[0].1,
        TypedArray::F32(
            ndarray::arr2(&[[1.0f32, -2.0, 0.5], [65504.0, 0.0, half_1e4()]]).into_dyn()
        )
    );

    fn half_1e4() -> f32 {
        // 1e-4 rounded to float16 is 0x068e: (1 + 654/1024) · 2^-14.
        (1.0 + 654.0 / 1024.0) * f32::powi(2.0, -14)
    }
}
