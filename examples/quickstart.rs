//! The README's "As a library" snippet: CALSeg end to end on the brain MRI embedded in
//! calseg — variational label smoother, soft labels `Y_s`, the (α, τ) choice on the
//! validation slab, the calibrated net — scored on the test slab.
//!
//! ```text
//! cargo run --release --example quickstart      # the default budget: a few minutes on 2 cores
//! ```
//!
//! CI runs [`run`] with a tiny budget and a two-point (α, τ) sweep (`tests/quickstart.rs`).

use calseg::{Calseg, CalsegConfig, Device, EvalCase, ScoreSpec, score_model};

fn main() -> calseg::Result<()> {
    run(CalsegConfig::for_classes(4, 1))?; // 4 classes (background, CSF, GM, WM), 1 channel (T1)
    Ok(())
}

/// CALSeg with `cfg` on the embedded brain; prints the choice and the test scores.
pub fn run(cfg: CalsegConfig) -> calseg::Result<calseg::ScoreSummary> {
    let brain = calseg::io::icbm152::open()?; // T1 MRI, hard labels, true tissue probabilities
    let data = calseg::experiment::Split::load(&brain, &Default::default())?; // axial slabs
    let run =
        Calseg::new(cfg.on(&Device::Cpu))?.run(&data.train, &EvalCase::all(&data.val), 0, None)?;
    let test = score_model(
        &run.net.model,
        &EvalCase::all(&data.test),
        &ScoreSpec::default(),
        None,
    )?;
    let (a, t) = (run.choice.alpha, run.choice.tau);
    println!("(α, τ) = ({a}, {t}) by {}", run.choice.chosen_by);
    println!(
        "test: ECE {:.4}, foreground ECE {:.4}, Dice {:.3}",
        test.region.ece, test.foreground.ece, test.region.dice_mean_fg
    );
    Ok(test)
}
