//! Smooth the labels of a dataset from Rust: train the variational label smoother on the
//! training cases, then write `Y_s = (1−α)·y + α·y_s^τ` for every case.
//!
//! ```text
//! cargo run --release --example smooth_labels -- [DATASET_DIR] [OUT_DIR]
//! ```
//! Without arguments it uses the embedded ICBM152 brain and writes to `soft-labels/`
//! (a short run: a few minutes on 2 cores).

use calseg::io::{Dataset, icbm152};
use calseg::seg::train::{Layout, SetOptions, TargetSource, TrainSet, Trainer, TrainerConfig};
use calseg::vls::smooth::{SmoothConfig, smooth_case, write_soft_labels};
use calseg::vls::{VlsConfig, VlsModel};
use candle_core::Device;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let ds = match args.get(1) {
        Some(dir) => Dataset::open(dir)?,
        None => icbm152::open()?,
    };
    let out = args.get(2).map_or("soft-labels", String::as_str);
    let cases = ds
        .training_cases()
        .iter()
        .map(|c| ds.load_case(c))
        .collect::<Result<Vec<_>, _>>()?;
    let classes = ds.info().num_classes();
    let in_channels = cases.first().map_or(1, |c| c.image.shape()[0]);

    // A small 2D smoother on axial slices; free bits keep the latent alive.
    let cfg = VlsConfig {
        in_channels,
        classes,
        base: 16,
        enc_base: 16,
        enc_levels: 4,
        depth: 3,
        ..VlsConfig::default()
    };
    let model = VlsModel::new(&cfg, 0, &Device::Cpu)?;
    let set = TrainSet::build(
        &cases,
        &SetOptions {
            classes,
            targets: TargetSource::OneHot,
            layout: Layout::default(),
            multiple: cfg.multiple(),
        },
    )?;
    let trainer = Trainer::new(TrainerConfig {
        epochs: 10,
        iters_per_epoch: Some(20),
        lr: 2e-3,
        validate_every: 0,
        checkpoint_every: 0,
        ..TrainerConfig::default()
    });
    let report = trainer.fit(&model, &set, None, None)?;
    if let Some(last) = report.epochs.last() {
        println!("last epoch: loss {:.4}, {:?}", last.loss, last.logs);
    }

    // m = 16 samples from q(z|x,y), τ = 1, α = 0.5 (never flips a label).
    let sc = SmoothConfig::default();
    for case in &cases {
        let soft = smooth_case(&model, case, &sc)?;
        let (st, nii) = write_soft_labels(out, &soft, &case.geometry)?;
        println!(
            "{}: sample variance {:.2e}, mean entropy {:.3}, flipped {:.3} → {} and {}",
            case.id,
            soft.stats.sample_variance,
            soft.stats.mean_entropy,
            soft.stats.flipped_fraction,
            st.display(),
            nii.display()
        );
    }
    Ok(())
}
