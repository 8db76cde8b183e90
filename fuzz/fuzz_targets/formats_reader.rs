//! libFuzzer target: arbitrary bytes through the npy reader; must never panic.
#![no_main]

use calseg_io::npy_from_bytes;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = npy_from_bytes(data, Path::new("fuzz.npy")) {
        let _ = a.min_max();
    }
});
