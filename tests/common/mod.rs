//! Helpers shared by the end-to-end tests (the built `calseg` binary, tiny library runs).
#![allow(dead_code)]

use calseg::io::phantom::{PhantomConfig, generate};
use calseg::io::{self, Geometry};
use ndarray::Axis;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `calseg` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_calseg");

/// A scratch folder of one test: removed when the guard drops after the test passed,
/// kept (for a look) when it failed.
pub struct Scratch(PathBuf);

impl Scratch {
    /// Keeps the folder beyond the guard (a fixture shared by several tests through a
    /// `static`, which is never dropped).
    pub fn keep(self) -> PathBuf {
        let dir = self.0.clone();
        std::mem::forget(self);
        dir
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A fresh, empty scratch folder `calseg-{tag}-{pid}-{name}` for one test, under cargo's
/// `CARGO_TARGET_TMPDIR` (inside `target/`, so `cargo clean` removes what a failed test
/// left; nothing is written to the system's temporary folder).
pub fn scratch_in(tag: &str, name: &str) -> Scratch {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("calseg-{tag}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

/// A path as `&str` (test paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs `calseg ARGS`.
pub fn calseg(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// Runs a command that must succeed; returns its stdout.
pub fn ok(args: &[&str]) -> String {
    let out = calseg(args);
    assert!(
        out.status.success(),
        "calseg {args:?} failed ({:?}): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command that must fail with exit status 2; returns its stderr.
pub fn bad(args: &[&str]) -> String {
    let out = calseg(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "calseg {args:?}: {err}");
    err
}

/// A one-channel Decathlon folder `root/name` of seeded phantom training cases `ids`
/// (`k` classes, spatial `shape`, spacing 1×1×2 mm, case `i` drawn with seed `seed + i`).
pub fn phantom_dataset(
    root: &Path,
    name: &str,
    ids: &[&str],
    k: usize,
    shape: &[usize],
    seed: u64,
) -> PathBuf {
    let data = root.join(name);
    for sub in ["imagesTr", "labelsTr"] {
        std::fs::create_dir_all(data.join(sub)).unwrap();
    }
    let labels: Vec<String> = (0..k)
        .map(|c| {
            if c == 0 {
                "\"background\": 0".to_string()
            } else {
                format!("\"C{c}\": {c}")
            }
        })
        .collect();
    std::fs::write(
        data.join("dataset.json"),
        format!(
            r#"{{"channel_names": {{"0": "MR"}}, "labels": {{{}}}, "numTraining": {}, "file_ending": ".nii.gz"}}"#,
            labels.join(", "),
            ids.len()
        ),
    )
    .unwrap();
    let geo = Geometry::with_spacing(vec![1.0, 1.0, 2.0]);
    let cfg = PhantomConfig {
        shape: shape.to_vec(),
        classes: k,
        supersample: 2,
        ..PhantomConfig::default()
    };
    for (i, id) in ids.iter().enumerate() {
        let ph = generate(&cfg, seed + i as u64).unwrap();
        let img = ph.image.index_axis(Axis(0), 0).to_owned();
        io::write_nifti(data.join(format!("imagesTr/{id}_0000.nii.gz")), &img, &geo).unwrap();
        io::write_nifti_labels(data.join(format!("labelsTr/{id}.nii.gz")), &ph.labels, &geo)
            .unwrap();
    }
    data
}

/// CALSeg on the embedded brain with a budget of seconds (1 epoch of 2 steps of 2
/// slices, base-4 nets and smoothers, m = 2): for tests of the pipeline's wiring, whose
/// numbers are not a comparison.
pub fn tiny_calseg_config() -> calseg::CalsegConfig {
    let mut cfg = calseg::CalsegConfig::for_classes(4, 1);
    for t in [&mut cfg.smoother_train, &mut cfg.net.train] {
        t.epochs = 1;
        t.iters_per_epoch = Some(2);
        t.batch_size = 2;
        t.schedule = calseg::seg::train::Schedule::Constant;
        t.checkpoint_every = 0;
        t.quiet = true;
    }
    cfg.net.net.base = 4;
    cfg.smoother.base = 4;
    cfg.smoother.enc_base = 4;
    cfg.samples = 2;
    cfg
}
