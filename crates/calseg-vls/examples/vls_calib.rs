//! Re-runs the validation calibration (τ*, α*) of a `calseg vls train` model folder on
//! the embedded brain's validation slab (top 20 % of axial slices, hard labels only)
//! and prints it (2D or 3D smoother, as `calseg vls train` calibrates each).
//!
//! ```text
//! cargo run --release -p calseg-vls --example vls_calib -- MODEL_DIR
//! ```

use calseg_io::icbm152;
use calseg_io::preprocess::crop;
use calseg_vls::VlsModel;
use calseg_vls::smooth::{SmoothConfig, calibrate_held_out_slabs, calibrate_temperature};
use candle_core::Device;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: vls_calib MODEL_DIR")?;
    let model = VlsModel::load_dir(&dir, &Device::Cpu)?;
    let case = icbm152::open()?.load("icbm152")?;
    let sp = case.image.shape()[1..].to_vec();
    let nz = sp[2];
    let cut = nz - ((nz as f64 * 0.2).round() as usize).clamp(1, nz - 1);
    let mut val = crop(&case, &[0..sp[0], 0..sp[1], cut..nz])?;
    val.soft_label = None;
    let c = if model.config().dims == 3 {
        // As `calseg vls train` does for a 3D smoother: the validation slab is smoothed
        // with the training slab below it, and scored alone.
        let mut train = crop(&case, &[0..sp[0], 0..sp[1], 0..cut])?;
        train.soft_label = None;
        calibrate_held_out_slabs(&model, &[(&train, &val)], 2, &SmoothConfig::default())?
    } else {
        calibrate_temperature(&model, &[val], &SmoothConfig::default())?
    };
    println!("{}", serde_json::to_string(&c)?);
    Ok(())
}
