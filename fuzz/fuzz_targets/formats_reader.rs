//! libFuzzer target: arbitrary bytes through the npy, PNG and safetensors readers (the
//! first byte picks the format) and the label/probability readers on top; must never panic.
#![no_main]

use calseg_io::{Format, images_from_bytes, labels_from_bytes, probs_from_bytes};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let (format, name) = match selector % 3 {
        0 => (Format::Npy, "fuzz.npy"),
        1 => (Format::Png, "fuzz.png"),
        _ => (Format::Safetensors, "fuzz.safetensors"),
    };
    let path = Path::new(name);
    if let Ok(images) = images_from_bytes(rest, path, format) {
        for image in &images {
            let _ = image.value_range();
        }
    }
    let _ = labels_from_bytes(rest, path, format);
    let _ = probs_from_bytes(rest, path, format);
});
