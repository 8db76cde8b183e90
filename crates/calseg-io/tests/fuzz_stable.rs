//! A seeded mutation fuzzer for the NIfTI reader that runs on stable Rust — the same job
//! as the libFuzzer target in `fuzz/` (which needs nightly), without coverage guidance.
//!
//! Valid NIfTI files (nibabel fixtures and files of every type written by this crate,
//! raw and gzipped) are damaged at random: bit flips, byte overwrites, truncations,
//! appended junk, chunk duplication, and header fields set to hostile values (dims,
//! datatype, bitpix, vox_offset, scaling, pixdim, quaternion, sform, sizeof_hdr, magic).
//! Gzipped seeds are usually mutated *inside* the compressed stream and recompressed,
//! so that mutations reach the parser instead of stopping at the CRC check.
//!
//! Every input goes through every NIfTI entry point; the test fails if any panics, and
//! for inputs that parse, checks that writing and re-reading gives the same voxels.
//!
//! `fuzz_nifti_smoke` runs a few thousand inputs in CI. The long run:
//! `CALSEG_FUZZ_SECS=300 cargo test -p calseg-io --release --test fuzz_stable -- --ignored --nocapture`
//! (`CALSEG_FUZZ_SEED` picks the seed; failing inputs are saved under `target/fuzz-stable-crashes/`).

use calseg_io::{
    Format, Geometry, TypedArray, encode_nifti, images_from_bytes, labels_from_bytes,
    nifti_from_bytes, probs_from_bytes,
};
use ndarray::{ArrayD, IxDyn};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(b)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

/// Uncompressed valid NIfTI files to start from.
fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.ends_with(".nii") || n.ends_with(".nii.gz")
        })
        .collect();
    names.sort();
    for p in names {
        let b = std::fs::read(&p).unwrap();
        out.push(if b.starts_with(&[0x1f, 0x8b]) {
            gunzip(&b)
        } else {
            b
        });
    }
    let g = Geometry::with_spacing(vec![1.5, 2.0, 0.5]);
    let p = Path::new("seed.nii");
    macro_rules! add {
        ($t:ty, $shape:expr) => {{
            let a = ArrayD::from_shape_fn(IxDyn(&$shape), |i| (i[0] * 3 + i[1]) as $t);
            out.push(encode_nifti(&a, &g, false, p).unwrap());
        }};
    }
    add!(u8, [2, 3, 2]);
    add!(i8, [3, 2]);
    add!(u16, [2, 2, 2, 2]);
    add!(i16, [4, 1, 3]);
    add!(u32, [2, 3, 1, 1, 2]);
    add!(i32, [2, 2, 2]);
    add!(u64, [2, 2]);
    add!(i64, [2, 1, 2]);
    add!(f32, [3, 3, 3, 2]);
    add!(f64, [2, 2, 2]);
    out
}

const INTERESTING_I16: [i16; 12] = [0, 1, -1, 2, 3, 4, 7, 8, 255, 32767, -32768, 16];
const DTYPES: [i16; 18] = [
    0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304,
];
const INTERESTING_F32: [f32; 14] = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    0.5,
    352.0,
    348.0,
    351.0,
    1e9,
    3e38,
    f32::NAN,
    f32::INFINITY,
    f32::NEG_INFINITY,
    f32::MIN_POSITIVE,
];

fn put(b: &mut [u8], at: usize, bytes: &[u8]) {
    if b.len() >= at + bytes.len() {
        b[at..at + bytes.len()].copy_from_slice(bytes);
    }
}

fn rand_f32(rng: &mut StdRng) -> f32 {
    if rng.random_bool(0.7) {
        INTERESTING_F32[rng.random_range(0..INTERESTING_F32.len())]
    } else {
        f32::from_bits(rng.random())
    }
}

fn rand_i16(rng: &mut StdRng) -> i16 {
    if rng.random_bool(0.7) {
        INTERESTING_I16[rng.random_range(0..INTERESTING_I16.len())]
    } else {
        rng.random()
    }
}

/// One random damage to `b` (uncompressed NIfTI bytes).
fn mutate(b: &mut Vec<u8>, rng: &mut StdRng) {
    let header = b.len().clamp(1, 352);
    match rng.random_range(0..12) {
        0 => {
            // Bit flip, header-biased.
            if b.is_empty() {
                return;
            }
            let i = if rng.random_bool(0.7) {
                rng.random_range(0..header.min(b.len()))
            } else {
                rng.random_range(0..b.len())
            };
            b[i] ^= 1 << rng.random_range(0..8);
        }
        1 => {
            if b.is_empty() {
                return;
            }
            let i = rng.random_range(0..b.len());
            b[i] = rng.random();
        }
        2 => {
            let n = rng.random_range(0..=b.len());
            b.truncate(n);
        }
        3 => {
            let n = rng.random_range(1..64);
            for _ in 0..n {
                b.push(rng.random());
            }
        }
        4 => {
            // dim[k]
            let k = rng.random_range(0..8);
            put(b, 40 + 2 * k, &rand_i16(rng).to_le_bytes());
        }
        5 => put(
            b,
            70,
            &DTYPES[rng.random_range(0..DTYPES.len())].to_le_bytes(),
        ),
        6 => {
            // bitpix, slice, intent, qform/sform codes
            let at = [72usize, 74, 68, 120, 252, 254][rng.random_range(0..6)];
            put(b, at, &rand_i16(rng).to_le_bytes());
        }
        7 => {
            // vox_offset, scl_slope, scl_inter, cal_max/min
            let at = [108usize, 112, 116, 124, 128][rng.random_range(0..5)];
            put(b, at, &rand_f32(rng).to_le_bytes());
        }
        8 => {
            // pixdim[k], quaternion, offsets, srow
            let at = if rng.random_bool(0.5) {
                76 + 4 * rng.random_range(0..8)
            } else {
                256 + 4 * rng.random_range(0..18)
            };
            put(b, at, &rand_f32(rng).to_le_bytes());
        }
        9 => {
            // sizeof_hdr / magic / byte-swapped header.
            match rng.random_range(0..4) {
                0 => put(b, 0, &rng.random::<i32>().to_le_bytes()),
                1 => put(b, 0, &540i32.to_le_bytes()),
                2 => put(
                    b,
                    344,
                    [b"ni1\0", b"n+2\0", b"\0\0\0\0"][rng.random_range(0..3)],
                ),
                _ => put(b, 0, &348i32.to_be_bytes()),
            }
        }
        10 => {
            // Duplicate or remove a chunk.
            if b.len() < 2 {
                return;
            }
            let s = rng.random_range(0..b.len() - 1);
            let e = rng.random_range(s + 1..=b.len().min(s + 64));
            if rng.random_bool(0.5) {
                let chunk = b[s..e].to_vec();
                let at = rng.random_range(0..=b.len());
                b.splice(at..at, chunk);
            } else {
                b.drain(s..e);
            }
        }
        _ => {
            // dim[0] and one dim together: rank changes with plausible sizes.
            put(b, 40, &rng.random_range(-1i16..10).to_le_bytes());
            let k = rng.random_range(1..8);
            put(b, 40 + 2 * k, &rng.random_range(0i16..6).to_le_bytes());
        }
    }
}

#[derive(Default)]
struct Stats {
    inputs: u64,
    parsed: u64,
    outcomes: BTreeMap<String, u64>,
    panics: Vec<PathBuf>,
}

fn kind(e: &calseg_io::IoError) -> String {
    format!("{e:?}")
        .split([' ', '{', '('])
        .next()
        .unwrap_or("?")
        .to_string()
}

/// Runs one input through every NIfTI entry point; returns Err(message) on a panic or
/// on a failed write/re-read property.
fn exercise(input: &[u8], stats: &mut Stats) -> Result<(), String> {
    let path = Path::new("fuzz.nii");
    let result = catch_unwind(AssertUnwindSafe(|| -> Result<Option<String>, String> {
        let first = nifti_from_bytes(input, path);
        let _ = images_from_bytes(input, path, Format::NiftiGz);
        let _ = labels_from_bytes(input, path, Format::Nifti);
        let _ = probs_from_bytes(input, path, Format::Nifti);
        match first {
            Err(e) => Ok(Some(kind(&e))),
            Ok(img) => {
                let _ = img.value_range();
                let _ = img.to_f64();
                // Write it back (copying the damaged header) and read it again.
                macro_rules! rt {
                    ($a:expr) => {
                        encode_nifti($a, &img.geometry, true, Path::new("rt.nii.gz"))
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
                .map_err(|e| format!("re-encoding a parsed image failed: {e}"))?;
                let back = nifti_from_bytes(&encoded, Path::new("rt.nii.gz"))
                    .map_err(|e| format!("re-reading our own output failed: {e}"))?;
                if back.data.to_le_bytes() != img.data.to_le_bytes() || back.shape() != img.shape()
                {
                    return Err("voxels changed after a write/read round trip".into());
                }
                Ok(None)
            }
        }
    }));
    stats.inputs += 1;
    match result {
        Ok(Ok(Some(k))) => {
            *stats.outcomes.entry(k).or_default() += 1;
            Ok(())
        }
        Ok(Ok(None)) => {
            stats.parsed += 1;
            *stats.outcomes.entry("Ok".into()).or_default() += 1;
            Ok(())
        }
        Ok(Err(msg)) => Err(msg),
        Err(p) => Err(p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into())),
    }
}

fn run(seed: u64, budget: Duration, max_inputs: u64) -> Stats {
    // Silence the default panic message; failures are collected and reported below.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let seeds = seeds();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut stats = Stats::default();
    let crash_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/fuzz-stable-crashes");
    let start = Instant::now();
    while start.elapsed() < budget && stats.inputs < max_inputs {
        let mut b = seeds[rng.random_range(0..seeds.len())].clone();
        for _ in 0..rng.random_range(1..=4) {
            mutate(&mut b, &mut rng);
        }
        let input = if rng.random_bool(0.35) {
            let mut gz = gzip(&b);
            if rng.random_bool(0.2) {
                // Damage the compressed stream itself too.
                mutate(&mut gz, &mut rng);
            }
            gz
        } else {
            b
        };
        if let Err(msg) = exercise(&input, &mut stats) {
            std::fs::create_dir_all(&crash_dir).unwrap();
            let p = crash_dir.join(format!("crash-{seed}-{}.nii", stats.inputs));
            std::fs::write(&p, &input).unwrap();
            eprintln!("FAILURE on input {} ({}): {msg}", stats.inputs, p.display());
            stats.panics.push(p);
        }
    }
    std::panic::set_hook(hook);
    eprintln!(
        "fuzz_stable: seed {seed}, {} inputs in {:.1} s ({} parsed OK), failures: {}",
        stats.inputs,
        start.elapsed().as_secs_f64(),
        stats.parsed,
        stats.panics.len()
    );
    eprintln!("outcomes: {:?}", stats.outcomes);
    stats
}

#[test]
fn fuzz_nifti_smoke() {
    let stats = run(1, Duration::from_secs(20), 3000);
    assert!(
        stats.panics.is_empty(),
        "failing inputs: {:?}",
        stats.panics
    );
    // The mutations must reach both the parser's errors and successful parses.
    assert!(stats.parsed > 0, "{:?}", stats.outcomes);
    assert!(
        stats.outcomes.len() >= 6,
        "too few distinct outcomes: {:?}",
        stats.outcomes
    );
}

#[test]
#[ignore = "long fuzz run: set CALSEG_FUZZ_SECS (default 120)"]
fn fuzz_nifti_long() {
    let secs = std::env::var("CALSEG_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let seed = std::env::var("CALSEG_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20240);
    let stats = run(seed, Duration::from_secs(secs), u64::MAX);
    assert!(
        stats.panics.is_empty(),
        "failing inputs: {:?}",
        stats.panics
    );
}
