//! Short VLS run on the embedded ICBM152 template (2D model on axial slices): trains
//! with a minimal AdamW loop, reports KL per latent dimension and active dimensions per
//! "epoch", then smooths the case (m = 16) and prints sample variance, timings and the
//! TV-distance table against the true tissue probabilities inside the brain mask.
//!
//! ```text
//! cargo run --release -p calseg-vls --example vls_icbm -- [steps] [free_bits] [global|spatial] [base]
//! ```

use calseg_io::icbm152;
use calseg_seg::convert::array_to_tensor;
use calseg_seg::optim::AdamW;
use calseg_seg::train::{Batch, StepInfo, Trainable};
use calseg_vls::quality::{baselines, tv_distance};
use calseg_vls::smooth::{SmoothConfig, smooth_case, smooth_volume};
use calseg_vls::{LatentMode, VlsConfig, VlsModel};
use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, ParamsAdamW};
use ndarray::{ArrayD, Axis, IxDyn, Slice};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let steps: usize = args.get(1).map_or(Ok(200), |s| s.parse())?;
    let free_bits: f64 = args.get(2).map_or(Ok(0.5), |s| s.parse())?;
    let mode = match args.get(3).map(String::as_str) {
        Some("spatial") => LatentMode::Spatial,
        _ => LatentMode::Global,
    };
    let base: usize = args.get(4).map_or(Ok(16), |s| s.parse())?;
    let cfg = VlsConfig {
        base,
        enc_base: base,
        free_bits,
        latent_mode: mode,
        kl_warmup_epochs: 2,
        ..VlsConfig::default()
    };
    println!("config: {}", serde_json::to_string(&cfg)?);
    let dev = Device::Cpu;
    let model = VlsModel::new(&cfg, 7, &dev)?;

    let ds = icbm152::open()?;
    let case = ds.load("icbm152")?;
    let labels = case.label.clone().ok_or("no labels")?;
    let mut image = case.image.clone();
    calseg_io::preprocess::zscore_nonzero(&mut image);
    // Axial slices (z last) with brain, padded to a multiple of 16: (Z, 1, 80, 112).
    let m = cfg.multiple();
    let (x, y, z) = (labels.shape()[0], labels.shape()[1], labels.shape()[2]);
    let (xp, yp) = (x.div_ceil(m) * m, y.div_ceil(m) * m);
    let keep: Vec<usize> = (0..z)
        .filter(|&k| {
            labels
                .index_axis(Axis(2), k)
                .iter()
                .filter(|&&v| v > 0)
                .count()
                > 200
        })
        .collect();
    let mut imgs = ArrayD::<f32>::zeros(IxDyn(&[keep.len(), 1, xp, yp]));
    let mut labs = ArrayD::<u32>::zeros(IxDyn(&[keep.len(), xp, yp]));
    for (i, &k) in keep.iter().enumerate() {
        imgs.index_axis_mut(Axis(0), i)
            .slice_each_axis_mut(|a| Slice::from(0..[1, x, y][a.axis.index()]))
            .assign(&image.index_axis(Axis(3), k));
        labs.index_axis_mut(Axis(0), i)
            .slice_each_axis_mut(|a| Slice::from(0..[x, y][a.axis.index()]))
            .assign(&labels.index_axis(Axis(2), k));
    }
    println!("training slices: {} of {z}, padded {xp}×{yp}", keep.len());
    let imgs_t = array_to_tensor(imgs.view(), &dev)?;
    let labs_t = array_to_tensor(labs.view(), &dev)?;

    let mut opt = AdamW::new(
        model.varmap().all_vars(),
        ParamsAdamW {
            lr: 1e-3,
            weight_decay: 1e-4,
            ..ParamsAdamW::default()
        },
    )?;
    let mut rng = StdRng::seed_from_u64(1);
    let (bs, per_epoch) = (4usize, 25usize);
    let epochs = steps.div_ceil(per_epoch);
    let t0 = Instant::now();
    for step in 0..steps {
        let idx: Vec<u32> = (0..bs)
            .map(|_| rng.random_range(0..keep.len()) as u32)
            .collect();
        let idx = Tensor::new(idx.as_slice(), &dev)?;
        let image = imgs_t.index_select(&idx, 0)?;
        let lab = labs_t.index_select(&idx, 0)?;
        let target = model.one_hot(&lab)?;
        let batch = Batch {
            image,
            target,
            labels: lab,
        };
        let info = StepInfo {
            step,
            epoch: step / per_epoch,
            total_steps: epochs * per_epoch,
            epochs,
        };
        let (loss, logs) = model.loss(&batch, &info, &mut rng)?;
        opt.step(&loss.backward()?)?;
        if step % per_epoch == per_epoch - 1 || step + 1 == steps {
            let ep = model.end_epoch(info.epoch);
            let fmt = |v: &[(String, f64)]| {
                v.iter()
                    .map(|(k, x)| format!("{k}={x:.4}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            println!(
                "step {:4} {:6.1}s | {} | epoch: {}",
                step + 1,
                t0.elapsed().as_secs_f64(),
                fmt(&logs),
                fmt(&ep)
            );
        }
    }

    // Smoothing and timings.
    let scfg = SmoothConfig::default();
    let soft = smooth_case(&model, &case, &scfg)?;
    println!("smooth m=16: {}", serde_json::to_string(&soft.stats)?);
    for samples in [1, 16] {
        let c = SmoothConfig {
            samples,
            ..scfg.clone()
        };
        let t = Instant::now();
        smooth_volume(&model, &image, &labels, &c)?;
        println!(
            "smooth_volume m={samples}: {:.3}s",
            t.elapsed().as_secs_f64()
        );
    }
    let t = Instant::now();
    let mut frng = StdRng::seed_from_u64(3);
    for start in (0..keep.len()).step_by(scfg.batch) {
        let n = scfg.batch.min(keep.len() - start);
        let out = model.forward(
            &imgs_t.narrow(0, start, n)?,
            &labs_t.narrow(0, start, n)?,
            &mut frng,
        )?;
        candle_nn::ops::softmax(&out.seg_logits, 1)?.to_dtype(DType::F32)?;
    }
    println!(
        "one forward pass (posterior + trunk + heads, {} slices of {z}): {:.3}s",
        keep.len(),
        t.elapsed().as_secs_f64()
    );

    let truth = icbm152::true_probs()?.probs.into_f32();
    let mask = icbm152::brain_mask()?.labels.mapv(|v| v > 0);
    let mut rows = baselines(&labels.view(), &truth, Some(&mask), 0.1, 1.0, None)?;
    for (name, map) in [("VLS y_s", &soft.y_s), ("VLS Y_s", &soft.soft)] {
        rows.push(calseg_vls::quality::QualityRow {
            method: name.into(),
            tv: tv_distance(map, &truth, Some(&mask))?,
        });
    }
    // Does z carry label information? Posterior vs prior soft labels: identical for a
    // collapsed posterior (q = p), apart when the latent is used.
    let prior = smooth_case(
        &model,
        &case,
        &SmoothConfig {
            from: calseg_vls::LatentSource::Prior,
            ..scfg.clone()
        },
    )?;
    println!(
        "smooth prior m=16: {}",
        serde_json::to_string(&prior.stats)?
    );
    println!(
        "TV(y_s posterior, y_s prior) in brain: {:.4}",
        tv_distance(&soft.y_s, &prior.y_s, Some(&mask))?
    );
    for r in rows {
        println!("TV {:12} {:.4}", r.method, r.tv);
    }
    Ok(())
}
