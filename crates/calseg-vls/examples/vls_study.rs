//! Soft-label fidelity study on the embedded ICBM152 brain, with the **same split and
//! trainer as `calseg vls train`**: the top 20 % of axial slices (z ≥ 66 of 82) are
//! validation data (hard labels only: the temperature is calibrated there), the rest are
//! the training slab. The smoother is trained with calseg-seg's `Trainer` exactly as the
//! CLI does (2D: every axial slice of the slab; 3D: the whole slab), then the whole
//! volume is smoothed and the mean TV distance to the true tissue probabilities inside
//! the brain mask is printed for the training slab (where soft labels are used), the
//! validation slab and all slices: hard labels, LS 0.1, SVLS σ = 1 (in-plane 3×3 and
//! 3×3×3), raw `y_s`, `y_s^τ*` (τ* calibrated on validation), and the mixes `Y_s`.
//!
//! The true probabilities are read **only** for the TV table, after every training and
//! selection step.
//!
//! ```text
//! cargo run --release -p calseg-vls --example vls_study -- dims=2 epochs=10 sigma=1 lr=0.001
//! ```
//! Options (key=value): dims (2), epochs (10), sigma (target σ, 1), lr (1e-3), batch (8),
//! iters (iterations per epoch; default one pass), mode (global|spatial), base (16),
//! dice (1), seed (0), samples (16), free_bits (0.5).

use calseg_io::icbm152;
use calseg_io::preprocess::crop;
use calseg_seg::train::{Layout, SetOptions, TargetSource, TrainSet, Trainer, TrainerConfig};
use calseg_vls::mix::{mix, one_hot, temperature};
use calseg_vls::quality::{svls, tv_table, uniform_ls};
use calseg_vls::smooth::{SmoothConfig, calibrate_temperature, smooth_case};
use calseg_vls::{LatentMode, VlsConfig, VlsModel};
use candle_core::Device;
use ndarray::{ArrayD, Axis, IxDyn};
use std::collections::HashMap;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let kv: HashMap<String, String> = std::env::args()
        .skip(1)
        .filter_map(|a| {
            a.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let get = |k: &str, d: &str| kv.get(k).cloned().unwrap_or_else(|| d.to_string());
    let dims: usize = get("dims", "2").parse()?;
    let epochs: usize = get("epochs", "10").parse()?;
    let sigma: f64 = get("sigma", "1").parse()?;
    let lr: f64 = get("lr", "0.001").parse()?;
    let batch: usize = get("batch", "8").parse()?;
    let iters: Option<usize> = kv.get("iters").map(|s| s.parse()).transpose()?;
    let base: usize = get("base", "16").parse()?;
    let dice: f64 = get("dice", "1").parse()?;
    let seed: u64 = get("seed", "0").parse()?;
    let samples: usize = get("samples", "16").parse()?;
    let free_bits: f64 = get("free_bits", "0.5").parse()?;
    let mode = if get("mode", "global") == "spatial" {
        LatentMode::Spatial
    } else {
        LatentMode::Global
    };

    let ds = icbm152::open()?;
    let case = ds.load("icbm152")?;
    let labels = case.label.clone().ok_or("no labels")?;
    let sp = labels.shape().to_vec();
    let nz = sp[2];
    // The CLI's rule: the top 20 % of slices along axis 2 (at least one) are validation.
    let cut = nz - ((nz as f64 * 0.2).round() as usize).clamp(1, nz - 1);
    let bbox = |r: std::ops::Range<usize>| vec![0..sp[0], 0..sp[1], r];
    let train_case = crop(&case, &bbox(0..cut))?;
    let val_case = crop(&case, &bbox(cut..nz))?;

    let cfg = VlsConfig {
        dims,
        base,
        depth: 4,
        enc_levels: 5,
        enc_base: 24,
        free_bits,
        dice_weight: dice,
        latent_mode: mode,
        target_sigma: sigma,
        volume_target: get("vol", "0") == "1",
        ..VlsConfig::default()
    };
    println!("config: {}", serde_json::to_string(&cfg)?);
    let (tl, vl) = if dims == 2 {
        let l = Layout::Slices {
            axis: Some(2),
            range: None,
            skip_empty: false,
        };
        (l.clone(), l)
    } else {
        (Layout::Whole, Layout::Whole)
    };
    // The label-noise target over the volume (volume_target) is supplied as the soft
    // target of the slices; otherwise the model smooths one-hot targets itself.
    let probe = VlsModel::new(&cfg, seed, &Device::Cpu)?;
    let with_target = |c: &calseg_io::Case| -> Result<calseg_io::Case, Box<dyn std::error::Error>> {
        let mut c = c.clone();
        c.soft_label = if cfg.volume_target && dims == 2 {
            Some(calseg_vls::smooth::noise_target(
                &probe,
                c.label.as_ref().ok_or("no labels")?,
            )?)
        } else {
            None
        };
        Ok(c)
    };
    let (case, train_case, val_case) = (
        with_target(&case)?,
        with_target(&train_case)?,
        with_target(&val_case)?,
    );
    let targets = if cfg.volume_target && dims == 2 {
        TargetSource::CaseSoft
    } else {
        TargetSource::OneHot
    };
    let build = |c: &calseg_io::Case, layout: Layout| {
        TrainSet::build(
            std::slice::from_ref(c),
            &SetOptions {
                classes: cfg.classes,
                targets: targets.clone(),
                layout,
                multiple: cfg.multiple(),
            },
        )
    };
    // crossfit=1: two slabs [0, cut/2), [cut/2, cut); crossfit=2: even / odd slices
    // (2D only), each smoothed by the model trained on the other part.
    let crossfit_mode = get("crossfit", "0");
    let crossfit = crossfit_mode != "0";
    let parity = crossfit_mode == "2";
    let half = cut / 2;
    let parts: Vec<calseg_io::Case> = if crossfit {
        vec![crop(&case, &bbox(0..half))?, crop(&case, &bbox(half..cut))?]
    } else {
        vec![train_case.clone()]
    };
    let val = build(&val_case, vl.clone())?;
    let mut models = Vec::new();
    for part in &parts {
        let train = build(part, tl.clone())?;
        let model = VlsModel::new(&cfg, seed, &Device::Cpu)?;
        let trainer = Trainer::new(TrainerConfig {
            epochs,
            iters_per_epoch: iters,
            batch_size: batch,
            lr,
            seed,
            quiet: true,
            checkpoint_every: 0,
            ..TrainerConfig::default()
        });
        let t0 = Instant::now();
        let rep = trainer.fit(&model, &train, Some(&val), None)?;
        let train_secs = t0.elapsed().as_secs_f64();
        for e in &rep.epochs {
            let vd = e.val.as_ref().map_or(f64::NAN, |v| v.dice_mean_fg);
            println!(
                "epoch {:3} steps {:4} loss {:.4} ce {:.4} kl {:.3} val Dice(z=0) {:.4} ({:.1}s)",
                e.epoch + 1,
                e.steps,
                e.loss,
                e.logs.get("ce").copied().unwrap_or(f64::NAN),
                e.logs.get("kl").copied().unwrap_or(f64::NAN),
                vd,
                e.seconds
            );
        }
        println!("train: {} steps, {train_secs:.1} s", rep.steps);
        models.push(model);
    }
    let model = &models[0];

    let scfg = SmoothConfig {
        samples,
        tau: 1.0,
        alpha: 1.0,
        ..SmoothConfig::default()
    };
    let t1 = Instant::now();
    let cal = calibrate_temperature(model, std::slice::from_ref(&val_case), &scfg)?;
    println!(
        "calibration (validation slab, {:.1} s): {}",
        t1.elapsed().as_secs_f64(),
        serde_json::to_string(&cal)?
    );
    let soft = smooth_case(model, &case, &scfg)?;
    println!("smooth: {}", serde_json::to_string(&soft.stats)?);
    let mut y_s = soft.y_s.clone();
    if crossfit {
        // Slices [0, half) from the model trained on [half, cut), and vice versa;
        // the validation slab from the mean of both.
        let other = smooth_case(&models[1], &case, &scfg)?.y_s;
        let cal1 = calibrate_temperature(&models[1], std::slice::from_ref(&val_case), &scfg)?;
        println!("calibration model 2: {}", serde_json::to_string(&cal1)?);
        for z in 0..nz {
            let first = if parity { z % 2 == 0 } else { z < half };
            let src = if z < cut && first {
                other.index_axis(Axis(3), z).to_owned()
            } else if z < cut {
                soft.y_s.index_axis(Axis(3), z).to_owned()
            } else {
                (&soft.y_s.index_axis(Axis(3), z) + &other.index_axis(Axis(3), z)) * 0.5
            };
            y_s.index_axis_mut(Axis(3), z).assign(&src);
        }
    }

    // Cross-fitted calibration: every slice of the case is out-of-sample for the
    // model that smoothed it, so τ can be fitted on all of them (hard labels only).
    let cal_cf = if crossfit {
        let items = [calseg_vls::smooth::CalibrationItem {
            y_s: &y_s,
            labels: &labels,
            image: &case.image,
        }];
        let c = calseg_vls::smooth::calibrate_maps(model, &items, samples)?;
        println!(
            "cross-fitted calibration (all slices): {}",
            serde_json::to_string(&c)?
        );
        Some(c)
    } else {
        None
    };

    // ---- Evaluation only from here on: the oracle is read now. ----
    let truth = icbm152::true_probs()?.probs.into_f32();
    let brain = icbm152::brain_mask()?.labels.mapv(|v| v > 0);
    let k = truth.shape()[0];
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
        ("train slab", slab(0, cut)),
        ("val slab", slab(cut, nz)),
        ("all", brain.clone()),
    ];
    let y_s = &y_s;
    let y_tau = temperature(y_s, cal.tau)?;
    let mut rows: Vec<(String, ArrayD<f32>)> = vec![
        ("hard".into(), one_hot(&labels.view(), k)?),
        ("LS 0.1".into(), uniform_ls(&labels.view(), k, 0.1)?),
        ("SVLS σ=1 3×3 (2D)".into(), svls_inplane(&labels, k)?),
        ("SVLS σ=1 3×3×3".into(), svls(&labels.view(), k, 1.0)?),
        ("y_s (τ=1)".into(), y_s.clone()),
        (format!("y_s^τ* (τ*={:.3})", cal.tau), y_tau.clone()),
    ];
    rows.push((
        format!("Y_s α*={} τ* (calibrated)", cal.alpha),
        mix(&labels.view(), &y_tau, cal.alpha)?,
    ));
    for a in [0.25, 0.5, 0.75] {
        rows.push((format!("Y_s α={a} τ*"), mix(&labels.view(), &y_tau, a)?));
    }
    if let Some(c) = &cal_cf {
        let yt = temperature(y_s, c.tau)?;
        rows.push((format!("y_s^τcf (τcf={:.3})", c.tau), yt.clone()));
        for a in [0.5, 0.75] {
            rows.push((format!("Y_s α={a} τcf"), mix(&labels.view(), &yt, a)?));
        }
    }
    rows.push((
        "Y_s α=0.25 τ=2 (old)".into(),
        mix(&labels.view(), &temperature(y_s, 2.0)?, 0.25)?,
    ));
    print!("{}", tv_table(&rows, &masks, &truth)?);
    Ok(())
}

/// SVLS σ = 1 in-plane (3×3 per axial slice) of a 3D label map → `(K, X, Y, Z)`.
fn svls_inplane(labels: &ArrayD<u32>, k: usize) -> Result<ArrayD<f32>, Box<dyn std::error::Error>> {
    let mut out = ArrayD::<f32>::zeros(IxDyn(&[
        k,
        labels.shape()[0],
        labels.shape()[1],
        labels.shape()[2],
    ]));
    for z in 0..labels.shape()[2] {
        let sl = labels.index_axis(Axis(2), z).to_owned();
        let s = svls(&sl.view(), k, 1.0)?;
        out.index_axis_mut(Axis(3), z).assign(&s);
    }
    Ok(out)
}
