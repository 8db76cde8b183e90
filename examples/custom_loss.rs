//! Train a segmentation net with your own loss: implement `SegLoss` (logits and target
//! distributions `(n, K, *spatial)` → scalar), hand it to a `SegModel`, and the trainer
//! does the rest (batches, flips, AdamW, validation with Dice/ECE, checkpoints).
//!
//! ```text
//! cargo run --release --example custom_loss
//! ```
//! Trains on the embedded ICBM152 brain (axial slices 0..41, validation 41..82) with
//! soft-target CE plus a confidence penalty `−β·H(p)` (Pereyra et al., 2017).

use calseg::io::icbm152;
use calseg::io::preprocess::crop;
use calseg::seg::loss::{SegLoss, soft_ce};
use calseg::seg::model::{InputSpec, SegModel};
use calseg::seg::net::UNetConfig;
use calseg::seg::train::{Layout, SetOptions, TargetSource, TrainSet, Trainer, TrainerConfig};
use candle_core::{Device, Tensor};
use std::sync::Arc;

/// `CE(t, p) − β · mean_voxels H(p)`: penalises over-confident outputs.
#[derive(Debug)]
struct ConfidencePenalty {
    beta: f64,
}

impl SegLoss for ConfidencePenalty {
    fn forward(&self, logits: &Tensor, target: &Tensor) -> candle_core::Result<Tensor> {
        let logp = candle_nn::ops::log_softmax(logits, 1)?;
        let entropy = (logp.exp()? * &logp)?.sum(1)?.mean_all()?.neg()?;
        soft_ce(logits, target)? - (entropy * self.beta)?
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ds = icbm152::open()?;
    let case = ds.load("icbm152")?;
    let (x, y, z) = (
        case.image.shape()[1],
        case.image.shape()[2],
        case.image.shape()[3],
    );
    let train = crop(&case, &[0..x, 0..y, 0..z / 2])?;
    let val = crop(&case, &[0..x, 0..y, z / 2..z])?;
    let cfg = UNetConfig {
        in_channels: 1,
        classes: 4,
        base: 16,
        depth: 3,
        ..UNetConfig::default()
    };
    let opts = SetOptions {
        classes: 4,
        targets: TargetSource::OneHot,
        layout: Layout::default(),
        multiple: cfg.size_multiple(),
    };
    let (train, val) = (
        TrainSet::build(&[train], &opts)?,
        TrainSet::build(&[val], &opts)?,
    );
    let model = SegModel::new(&cfg, 0, &Device::Cpu)?
        .with_loss(Arc::new(ConfidencePenalty { beta: 0.1 }))
        .with_input(InputSpec::from_set(&train));
    let trainer = Trainer::new(TrainerConfig {
        epochs: 5,
        iters_per_epoch: Some(20),
        lr: 2e-3,
        checkpoint_every: 0,
        ..TrainerConfig::default()
    });
    let report = trainer.fit(&model, &train, Some(&val), None)?;
    for e in &report.epochs {
        if let Some(v) = &e.val {
            println!(
                "epoch {}: loss {:.4}  val Dice(fg) {:.3}  ECE {:.4}",
                e.epoch, e.loss, v.dice_mean_fg, v.ece
            );
        }
    }
    model.save("custom-loss-model")?;
    println!("saved to custom-loss-model/");
    Ok(())
}
