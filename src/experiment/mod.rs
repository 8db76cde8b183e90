//! `calseg experiment`: CALSeg against its baselines on one dataset, end to end.
//!
//! Trains the variational label smoother on the training part, writes soft labels,
//! trains one segmentation net per method with the same budget, fits temperature
//! scaling for CE on the validation part (`ce+ts`), predicts the test part, scores every
//! method with calseg-metrics and writes `results.json`, `results.md`, reliability
//! diagrams and a slice panel. Every tuned value (α, τ for CALSeg; T for `ce+ts`) is
//! chosen on the validation part, never on the test part. Stages already done are
//! skipped on a re-run (and interrupted trainings resume from their checkpoints).

pub mod config;
mod run;
pub mod split;

pub use config::{CalsegParams, EvalParams, ExperimentConfig, LossParams, MethodId, Reported};
pub use run::{Experiment, ExperimentError, Masks, NoProgress, Outcome, Progress, StderrProgress};
pub use split::{Part, Slab, Split, SplitConfig, SplitError, SplitPlan, load_part};
