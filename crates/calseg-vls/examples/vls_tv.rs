//! TV distance to the true tissue probabilities, inside the brain mask of the embedded
//! ICBM152 brain, of soft labels written by `calseg vls smooth` (the evaluation of the
//! CLI defaults), next to hard labels, LS 0.1 and SVLS σ = 1 (3×3 in-plane and 3×3×3).
//! Rows: the whole brain, the training slab (z < 66, where `calseg vls train` fitted the
//! smoother on a one-case dataset) and the validation slab (z ≥ 66).
//!
//! ```text
//! calseg vls train  --data crates/calseg-io/data/icbm152-2mm --dims 2 --out M
//! calseg vls smooth --model M --data crates/calseg-io/data/icbm152-2mm --out S
//! cargo run --release -p calseg-vls --example vls_tv -- S [S2 …]
//! ```

use calseg_io::icbm152;
use calseg_vls::mix::one_hot;
use calseg_vls::quality::{svls, svls_in_plane, tv_table, uniform_ls};
use ndarray::{ArrayD, Axis};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dirs: Vec<String> = std::env::args().skip(1).collect();
    let ds = icbm152::open()?;
    let case = ds.load("icbm152")?;
    let labels = case.label.clone().ok_or("no labels")?;
    let truth = icbm152::true_probs()?.probs.into_f32();
    let brain = icbm152::brain_mask()?.labels.mapv(|v| v > 0);
    let k = truth.shape()[0];
    let nz = labels.shape()[2];
    let cut = nz - ((nz as f64 * 0.2).round() as usize).clamp(1, nz - 1);
    let slab = |lo: usize, hi: usize| -> ArrayD<bool> {
        let mut m = brain.clone();
        for (z, mut s) in m.axis_iter_mut(Axis(2)).enumerate() {
            if z < lo || z >= hi {
                s.fill(false);
            }
        }
        m
    };
    let masks = [
        ("all", brain.clone()),
        ("train slab", slab(0, cut)),
        ("val slab", slab(cut, nz)),
    ];
    let svls2 = svls_in_plane(&labels.view(), k, 1.0, 2)?;
    // An entropy control: SVLS made softer everywhere by 10 % uniform mass, no image
    // information at all. The truth is softer than SVLS across the brain, so this too
    // moves closer to it; a smoother's gain over SVLS means more when it beats this row.
    let softer = svls2.mapv(|v| 0.9 * v + 0.1 / k as f32);
    let mut rows: Vec<(String, ArrayD<f32>)> = vec![
        ("hard".into(), one_hot(&labels.view(), k)?),
        ("LS 0.1".into(), uniform_ls(&labels.view(), k, 0.1)?),
        ("SVLS σ=1 3×3 (2D)".into(), svls2),
        ("SVLS σ=1 3×3×3 (3D)".into(), svls(&labels.view(), k, 1.0)?),
        ("0.9·SVLS 3×3 + 0.1/K (control)".into(), softer),
    ];
    for d in &dirs {
        let path = std::path::Path::new(d).join("icbm152.safetensors");
        let t = calseg_io::read_safetensors(&path)?
            .into_iter()
            .find(|(n, _)| n == "soft_labels")
            .ok_or("no soft_labels tensor")?
            .1
            .to_f32();
        rows.push((d.clone(), t));
    }
    print!("{}", tv_table(&rows, &masks, &truth)?);
    Ok(())
}
