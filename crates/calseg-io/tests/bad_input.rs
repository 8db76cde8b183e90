//! Every kind of bad input gives a typed error naming the file, never a panic; failed
//! writes leave nothing behind.

use calseg_io::{
    Format, Geometry, IoError, encode_nifti, images_from_bytes, nifti_from_bytes, read_image,
    read_labels, read_nifti, read_npy, read_png, read_probs, read_safetensors, write_nifti,
    write_nifti_probs, write_npy, write_png,
};
use ndarray::{Array2, ArrayD, IxDyn};
use std::path::{Path, PathBuf};

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("calseg-io-bad-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A valid 4×3×2 float32 `.nii` in memory.
fn valid_nii() -> Vec<u8> {
    let a = ArrayD::from_shape_fn(IxDyn(&[4, 3, 2]), |i| (i[0] + 4 * i[1] + 12 * i[2]) as f32);
    encode_nifti(
        &a,
        &Geometry::with_spacing(vec![1.0, 1.0, 1.0]),
        false,
        Path::new("v.nii"),
    )
    .unwrap()
}

fn valid_nii_gz() -> Vec<u8> {
    let a = ArrayD::from_shape_fn(IxDyn(&[16, 16, 8]), |i| (i[0] * i[1] + i[2]) as f32);
    encode_nifti(&a, &Geometry::unit(3), true, Path::new("v.nii.gz")).unwrap()
}

fn put_i16(b: &mut [u8], at: usize, v: i16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_f32(b: &mut [u8], at: usize, v: f32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Writes `bytes` to `dir/name`, reads it with `read_image`, returns the error.
fn read_err(dir: &Path, name: &str, bytes: &[u8]) -> IoError {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    let e = read_image(&p).expect_err(name);
    let msg = e.to_string();
    assert!(msg.contains(name), "error does not name the file: {msg}");
    assert_eq!(e.path(), p.as_path());
    e
}

#[test]
fn gzip_damage() {
    let d = scratch("gzip");
    let gz = valid_nii_gz();
    // Truncated at several points.
    for cut in [10, gz.len() / 3, gz.len() / 2, gz.len() - 4, gz.len() - 1] {
        let e = read_err(&d, "truncated.nii.gz", &gz[..cut]);
        assert!(matches!(e, IoError::Gzip { .. }), "cut {cut}: {e}");
    }
    // A flipped byte inside the deflate stream (CRC or deflate error).
    let mut bad = gz.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x55;
    let e = read_err(&d, "corrupt.nii.gz", &bad);
    assert!(matches!(e, IoError::Gzip { .. }), "{e}");
    // Corrupt CRC trailer only.
    let mut crc = gz.clone();
    let n = crc.len();
    crc[n - 8] ^= 1;
    let e = read_err(&d, "crc.nii.gz", &crc);
    assert!(matches!(e, IoError::Gzip { .. }), "{e}");
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn header_damage() {
    let d = scratch("header");
    let good = valid_nii();
    assert!(nifti_from_bytes(&good, Path::new("good.nii")).is_ok());

    let mut magic = good.clone();
    magic[344..348].copy_from_slice(b"abc\0");
    let e = read_err(&d, "magic.nii", &magic);
    assert!(
        matches!(e, IoError::NotNifti { .. }) && e.to_string().contains("magic"),
        "{e}"
    );

    let mut pair = good.clone();
    pair[344..348].copy_from_slice(b"ni1\0");
    let e = read_err(&d, "pair.nii", &pair);
    assert!(e.to_string().contains(".hdr/.img"), "{e}");

    let mut size = good.clone();
    size[0..4].copy_from_slice(&300i32.to_le_bytes());
    let e = read_err(&d, "sizeof.nii", &size);
    assert!(
        matches!(e, IoError::NotNifti { .. }) && e.to_string().contains("sizeof_hdr"),
        "{e}"
    );

    let mut nifti2 = good.clone();
    nifti2[0..4].copy_from_slice(&540i32.to_le_bytes());
    let e = read_err(&d, "two.nii", &nifti2);
    assert!(e.to_string().contains("NIfTI-2"), "{e}");

    let e = read_err(&d, "short.nii", &good[..200]);
    assert!(
        matches!(e, IoError::NotNifti { .. }) && e.to_string().contains("348"),
        "{e}"
    );
    let e = read_err(&d, "empty.nii", &[]);
    assert!(matches!(e, IoError::NotNifti { .. }), "{e}");
    let e = read_err(
        &d,
        "text.nii",
        b"this is not an image at all, just some text",
    );
    assert!(matches!(e, IoError::NotNifti { .. }), "{e}");

    for (dim0, name) in [
        (0i16, "dim0_zero.nii"),
        (9, "dim0_nine.nii"),
        (-3, "dim0_neg.nii"),
    ] {
        let mut b = good.clone();
        put_i16(&mut b, 40, dim0);
        let e = read_err(&d, name, &b);
        assert!(
            matches!(e, IoError::BadHeader { .. }) && e.to_string().contains("dim[0]"),
            "{e}"
        );
    }
    let mut zero = good.clone();
    put_i16(&mut zero, 44, 0); // dim[2] = 0
    let e = read_err(&d, "dim_zero.nii", &zero);
    assert!(e.to_string().contains("dim[2]"), "{e}");

    let mut off = good.clone();
    put_f32(&mut off, 108, 100.0);
    let e = read_err(&d, "voxoffset.nii", &off);
    assert!(
        matches!(e, IoError::BadHeader { .. }) && e.to_string().contains("vox_offset"),
        "{e}"
    );
    let mut nan_off = good.clone();
    put_f32(&mut nan_off, 108, f32::NAN);
    assert!(matches!(
        read_err(&d, "voxnan.nii", &nan_off),
        IoError::BadHeader { .. }
    ));

    let mut inter = good.clone();
    put_f32(&mut inter, 112, 2.0);
    put_f32(&mut inter, 116, f32::INFINITY);
    let e = read_err(&d, "inter.nii", &inter);
    assert!(e.to_string().contains("scl_inter"), "{e}");
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn dims_that_do_not_match_the_data() {
    let d = scratch("size");
    let good = valid_nii();
    // Data cut short.
    let e = read_err(&d, "cut.nii", &good[..good.len() - 5]);
    match e {
        IoError::DataSize {
            expected,
            found,
            ref shape,
            ..
        } => {
            assert_eq!(expected, 4 * 3 * 2 * 4);
            assert_eq!(found, 4 * 3 * 2 * 4 - 5);
            assert_eq!(shape, &vec![4, 3, 2]);
        }
        other => panic!("{other}"),
    }
    // Dimensions grown beyond the data: dim[3] = 30000.
    let mut big = good.clone();
    put_i16(&mut big, 46, 30000);
    let e = read_err(&d, "bigdim.nii", &big);
    assert!(matches!(e, IoError::DataSize { .. }), "{e}");
    // The largest claim NIfTI-1 allows (7 axes of 32767) must not allocate: it overflows or
    // is rejected by size.
    let mut huge = good.clone();
    put_i16(&mut huge, 40, 7);
    for k in 1..=7 {
        put_i16(&mut huge, 40 + 2 * k, 32767);
    }
    let e = read_err(&d, "huge.nii", &huge);
    assert!(
        matches!(e, IoError::BadHeader { .. } | IoError::DataSize { .. }),
        "{e}"
    );
    // A wrong bitpix alone is ignored, as nibabel does (datatype decides the size).
    let mut bitpix = good.clone();
    put_i16(&mut bitpix, 72, 8);
    let p = d.join("bitpix.nii");
    std::fs::write(&p, &bitpix).unwrap();
    assert_eq!(read_nifti(&p).unwrap().shape(), &[4, 3, 2]);
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn unsupported_datatypes() {
    let d = scratch("dtype");
    let good = valid_nii();
    for (code, name) in [
        (32i16, "complex64"),
        (128, "rgb24"),
        (1536, "float128"),
        (2304, "rgba32"),
        (0, "unknown"),
        (3, "not a NIfTI-1"),
    ] {
        let mut b = good.clone();
        put_i16(&mut b, 70, code);
        let e = read_err(&d, &format!("type{code}.nii"), &b);
        match &e {
            IoError::UnsupportedDatatype {
                code: c, name: n, ..
            } => {
                assert_eq!(*c, i32::from(code));
                assert!(n.contains(name), "{n}");
            }
            other => panic!("{other}"),
        }
    }
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn other_formats_damaged() {
    let d = scratch("formats");
    // npy
    let a = ArrayD::from_shape_fn(IxDyn(&[3, 4]), |i| (i[0] * 4 + i[1]) as f64);
    write_npy(d.join("ok.npy"), &a).unwrap();
    let good = std::fs::read(d.join("ok.npy")).unwrap();
    let e = read_err(&d, "magic.npy", &good[1..]);
    assert!(matches!(e, IoError::Npy { .. }), "{e}");
    let e = read_err(&d, "short.npy", &good[..good.len() - 3]);
    assert!(matches!(e, IoError::DataSize { .. }), "{e}");
    let e = read_err(&d, "long.npy", &[good.as_slice(), &[0u8; 8]].concat());
    assert!(matches!(e, IoError::DataSize { .. }), "{e}");
    let mut hdr = good.clone();
    let at = hdr.windows(5).position(|w| w == b"shape").unwrap();
    hdr[at] = b'x';
    let e = read_err(&d, "key.npy", &hdr);
    assert!(matches!(e, IoError::Npy { .. }), "{e}");
    let e = read_err(
        &d,
        "hlen.npy",
        &[&good[..8], &[0xff, 0xff], &good[10..60]].concat(),
    );
    assert!(matches!(e, IoError::Npy { .. }), "{e}");
    let mut ver = good.clone();
    ver[6] = 9;
    assert!(matches!(read_err(&d, "ver.npy", &ver), IoError::Npy { .. }));
    assert!(read_npy(d.join("ok.npy")).is_ok());

    // safetensors
    let e = read_err(
        &d,
        "junk.safetensors",
        b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}",
    );
    assert!(matches!(e, IoError::Safetensors { .. }), "{e}");
    let e = read_err(&d, "tiny.safetensors", b"\x01\x02");
    assert!(matches!(e, IoError::Safetensors { .. }), "{e}");
    assert!(read_safetensors(d.join("tiny.safetensors")).is_err());

    // png
    write_png(d.join("ok.png"), &Array2::<u16>::from_elem((3, 3), 7)).unwrap();
    let png = std::fs::read(d.join("ok.png")).unwrap();
    let e = read_err(&d, "cut.png", &png[..png.len() / 2]);
    assert!(matches!(e, IoError::Png { .. }), "{e}");
    // Found by cargo fuzz: a 131-byte PNG whose header claims 524292×62978 pixels made the
    // reader allocate 33 GB.
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz_png_huge_dims.png");
    let e = read_err(&d, "huge.png", &std::fs::read(fixture).unwrap());
    assert!(
        matches!(e, IoError::Png { .. }) && e.to_string().contains("524292×62978"),
        "{e}"
    );
    let e = read_err(&d, "junk.png", b"\x89PNG\r\n\x1a\nnonsense");
    assert!(matches!(e, IoError::Png { .. }), "{e}");
    assert!(read_png(d.join("junk.png")).is_err());

    // Unknown extension and missing file.
    let e = read_err(&d, "volume.mha", b"whatever");
    assert!(matches!(e, IoError::UnknownFormat { .. }), "{e}");
    let missing = d.join("nope.nii.gz");
    let e = read_image(&missing).unwrap_err();
    assert!(
        matches!(e, IoError::Io { .. }) && e.to_string().contains("nope.nii.gz"),
        "{e}"
    );
    let e = read_labels(&missing).unwrap_err();
    assert!(e.to_string().contains("nope.nii.gz"));
    let e = read_probs(d.join("x.png")).unwrap_err();
    assert!(e.to_string().contains("x.png"));
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn gzip_that_is_not_nifti_and_nifti_misnamed() {
    let d = scratch("misnamed");
    // Uncompressed bytes under a .nii.gz name are still read (gzip is detected by magic).
    let p = d.join("plain.nii.gz");
    std::fs::write(&p, valid_nii()).unwrap();
    assert_eq!(read_nifti(&p).unwrap().shape(), &[4, 3, 2]);
    // Gzipped text is not NIfTI.
    let gz = calseg_io::encode_npy(&ndarray::arr1(&[1u8, 2, 3]));
    let e = images_from_bytes(&gz, Path::new("npy-as.nii"), Format::Nifti).unwrap_err();
    assert!(matches!(e, IoError::NotNifti { .. }), "{e}");
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn failed_writes_leave_nothing() {
    let d = scratch("writes");
    // The target is an existing non-empty folder: the rename fails.
    let target = d.join("out.nii.gz");
    std::fs::create_dir_all(target.join("sub")).unwrap();
    let a = ArrayD::<f32>::zeros(IxDyn(&[2, 2, 2]));
    let e = write_nifti(&target, &a, &Geometry::unit(3)).unwrap_err();
    assert!(e.to_string().contains("out.nii.gz"), "{e}");
    assert_eq!(entries(&d), vec!["out.nii.gz".to_string()]);
    assert!(target.is_dir());
    let e = write_npy(d.join("out.nii.gz"), &a).unwrap_err();
    assert!(matches!(e, IoError::Io { .. }));
    assert_eq!(entries(&d), vec!["out.nii.gz".to_string()]);

    // Invalid arrays are refused before any file is created.
    let e = write_nifti_probs(
        d.join("p.nii.gz"),
        &ndarray::arr1(&[0.5f32, 0.5]),
        &Geometry::unit(0),
    )
    .unwrap_err();
    assert!(e.to_string().contains("p.nii.gz"), "{e}");
    let eight = ArrayD::<u8>::zeros(IxDyn(&[1; 8]));
    assert!(write_nifti(d.join("8d.nii"), &eight, &Geometry::unit(3)).is_err());
    let wide = ArrayD::<u8>::zeros(IxDyn(&[40000, 1, 1]));
    assert!(write_nifti(d.join("wide.nii"), &wide, &Geometry::unit(3)).is_err());
    assert!(write_png(d.join("empty.png"), &Array2::<u8>::zeros((0, 4))).is_err());
    assert_eq!(entries(&d), vec!["out.nii.gz".to_string()]);

    // Overwriting a good file with a failing write keeps the old file.
    let good = d.join("good.nii");
    write_nifti(&good, &a, &Geometry::unit(3)).unwrap();
    let before = std::fs::read(&good).unwrap();
    assert!(write_nifti(&good, &eight, &Geometry::unit(3)).is_err());
    assert_eq!(std::fs::read(&good).unwrap(), before);
    assert_eq!(
        entries(&d),
        vec!["good.nii".to_string(), "out.nii.gz".to_string()]
    );
    std::fs::remove_dir_all(d).unwrap();
}
