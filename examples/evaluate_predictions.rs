//! Evaluate a probability map against labels with the streaming metrics: ECE over the
//! brain, foreground-only ECE (MbLS/NACL protocol), Dice, and a reliability diagram.
//!
//! ```text
//! cargo run --release --example evaluate_predictions -- [PROBS.nii.gz LABELS.nii.gz]
//! ```
//! Without arguments it scores the embedded ICBM152 true tissue probabilities against
//! their own hard labels (the ECE that ECE gives to a perfect soft segmentation).

use calseg::io::{icbm152, read_labels, read_probs};
use calseg::metrics::{Evaluator, Input, MetricConfig, Region};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (probs, labels) = match (args.get(1), args.get(2)) {
        (Some(p), Some(l)) => (read_probs(p)?, read_labels(l)?),
        _ => (icbm152::true_probs()?, icbm152::labels()?),
    };
    let probs = probs.probs.into_f32();
    let labels = labels.labels;
    let mask = icbm152::brain_mask()?.labels.mapv(|v| v != 0);

    // Streaming: update per volume (or per shard), merge, finish.
    let cfg = MetricConfig::default().bins(15);
    let mut all = Evaluator::new(cfg.clone())?;
    all.update(probs.view(), labels.view())?;
    let mut brain = Evaluator::new(cfg.clone().region(Region::Mask))?;
    if mask.shape() == labels.shape() {
        brain.update_input(&Input::new(probs.view(), labels.view())?.with_mask(mask.view())?)?;
    }
    let mut fg = Evaluator::new(cfg.region(Region::Foreground).background(Some(0)))?;
    fg.update(probs.view(), labels.view())?;

    let a = all.finish()?;
    println!(
        "all voxels : ECE {:.4}  MCE {:.4}  NLL {:.4}  Brier {:.4}",
        a.ece, a.mce, a.nll, a.brier
    );
    if let Ok(b) = brain.finish() {
        println!(
            "brain mask : ECE {:.4}  class-wise ECE {:.4}",
            b.ece, b.cece
        );
    }
    println!("foreground : ECE {:.4}", fg.finish()?.ece);
    println!(
        "Dice per class {:?}, mean foreground {:.4}",
        a.dice, a.dice_mean_fg
    );
    calseg::metrics::plot::reliability_diagram(
        &a.reliability,
        &calseg::metrics::plot::PlotOptions::default(),
        std::path::Path::new("reliability.png"),
    )?;
    println!("wrote reliability.png");
    Ok(())
}
