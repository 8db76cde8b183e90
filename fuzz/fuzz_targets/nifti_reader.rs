//! libFuzzer target: arbitrary bytes through every NIfTI entry point of calseg-io. It
//! must never panic, and whatever parses must survive a write/read round trip unchanged.
#![no_main]

use calseg_io::{
    Format, TypedArray, encode_nifti, labels_from_bytes, nifti_from_bytes, probs_from_bytes,
};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.nii");
    let _ = labels_from_bytes(data, path, Format::Nifti);
    let _ = probs_from_bytes(data, path, Format::Nifti);
    let Ok(img) = nifti_from_bytes(data, path) else {
        return;
    };
    let _ = img.value_range();
    macro_rules! rt {
        ($a:expr) => {
            encode_nifti($a, &img.geometry, false, Path::new("rt.nii"))
        };
    }
    let encoded = match &img.data {
        TypedArray::Bool(a) => rt!(a),
        TypedArray::U8(a) => rt!(a),
        TypedArray::I8(a) => rt!(a),
        TypedArray::U16(a) => rt!(a),
        TypedArray::I16(a) => rt!(a),
        TypedArray::U32(a) => rt!(a),
        TypedArray::I32(a) => rt!(a),
        TypedArray::U64(a) => rt!(a),
        TypedArray::I64(a) => rt!(a),
        TypedArray::F32(a) => rt!(a),
        TypedArray::F64(a) => rt!(a),
    }
    .expect("a parsed image must be writable");
    let back = nifti_from_bytes(&encoded, Path::new("rt.nii")).expect("our output must parse");
    assert_eq!(back.shape(), img.shape());
    assert_eq!(back.data.to_le_bytes(), img.data.to_le_bytes());
});
