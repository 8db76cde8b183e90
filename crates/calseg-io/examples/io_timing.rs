//! Wall-clock timings of the main I/O paths on the embedded template (80×100×82, 4 classes).
//!
//! `cargo run --release -p calseg-io --example io_timing`

use calseg_io::phantom::{PhantomConfig, generate};
use calseg_io::{
    icbm152, read_labels, read_npy, read_probs, write_nifti_labels, write_nifti_probs, write_npy,
};
use std::time::Instant;

fn time<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = f();
    println!("{what:<48} {:8.1} ms", t.elapsed().as_secs_f64() * 1e3);
    r
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("calseg-io-timing-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let ds = time("icbm152::open (parse dataset.json, list)", icbm152::open)?;
    let case = time("load case (T1 + labels + 4D soft labels, gunzip)", || {
        ds.load("icbm152")
    })?;
    let soft = case.soft_label.clone().ok_or("no soft labels")?;
    let labels = case.label.clone().ok_or("no labels")?;
    time("write_nifti_probs .nii.gz (10.5 MB raw f32)", || {
        write_nifti_probs(dir.join("p.nii.gz"), &soft, &case.geometry)
    })?;
    time("write_nifti_probs .nii", || {
        write_nifti_probs(dir.join("p.nii"), &soft, &case.geometry)
    })?;
    time("read_probs .nii.gz (→ classes first)", || {
        read_probs(dir.join("p.nii.gz"))
    })?;
    time("read_probs .nii", || read_probs(dir.join("p.nii")))?;
    time("write_nifti_labels .nii.gz (u8)", || {
        write_nifti_labels(dir.join("l.nii.gz"), &labels, &case.geometry)
    })?;
    time("read_labels .nii.gz", || read_labels(dir.join("l.nii.gz")))?;
    time("write_npy probs (K, x, y, z) f32", || {
        write_npy(dir.join("p.npy"), &soft)
    })?;
    time("read_npy probs", || read_npy(dir.join("p.npy")))?;
    time("phantom 3D 64³, 4 classes, 4× supersampling", || {
        generate(
            &PhantomConfig {
                shape: vec![64, 64, 64],
                classes: 4,
                supersample: 4,
                ..Default::default()
            },
            0,
        )
    })?;
    time("phantom 2D 256², 3 classes, 4× supersampling", || {
        generate(
            &PhantomConfig {
                shape: vec![256, 256],
                ..Default::default()
            },
            0,
        )
    })?;
    let gz = std::fs::metadata(dir.join("p.nii.gz"))?.len();
    println!("probs .nii.gz size: {:.2} MB", gz as f64 / 1e6);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
