//! Training: the contract between the trainer and what it trains ([`Trainable`]), the
//! mini-batch it feeds ([`Batch`]), and the trainer itself.
//!
//! Anything with parameters in a [`VarMap`] and a differentiable loss on a [`Batch`] can be
//! trained: the segmentation net with any calibration loss ([`crate::loss`]) and the
//! variational label smoother of `calseg-vls` both implement [`Trainable`].

pub mod checkpoint;
pub mod convergence;
pub mod data;
pub mod trainer;

pub use data::{BatchSampler, Layout, Sample, SetOptions, TargetSource, TrainSet};
pub use trainer::{
    BEST_FILE, BestEpoch, EpochLog, Schedule, TrainReport, Trainer, TrainerConfig, ValMetrics,
    validate,
};

use crate::Result;
use candle_core::Tensor;
use candle_nn::VarMap;
use rand::rngs::StdRng;

/// One mini-batch, on the model's device.
#[derive(Clone, Debug)]
pub struct Batch {
    /// Images `(n, c, *spatial)`, f32, normalised.
    pub image: Tensor,
    /// Target class distributions `(n, k, *spatial)`, f32: one-hot for hard labels,
    /// `Y_s` (or any soft labels) otherwise.
    pub target: Tensor,
    /// Hard labels `(n, *spatial)`, u32.
    pub labels: Tensor,
}

/// Where the training run is when a loss is computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepInfo {
    /// Optimiser steps done before this one (0-based).
    pub step: usize,
    /// Current epoch (0-based).
    pub epoch: usize,
    /// Total optimiser steps of the run.
    pub total_steps: usize,
    /// Total epochs of the run.
    pub epochs: usize,
}

/// A model the trainer can optimise.
pub trait Trainable {
    /// The parameters (optimised with AdamW, saved as safetensors).
    fn varmap(&self) -> &VarMap;

    /// Scalar training loss of one batch, plus named values to log (e.g. `("kl", 0.3)`).
    /// `rng` is the run's seeded generator (for sampling inside the model).
    fn loss(
        &self,
        batch: &Batch,
        info: &StepInfo,
        rng: &mut StdRng,
    ) -> Result<(Tensor, Vec<(String, f64)>)>;

    /// Class logits `(n, k, *spatial)` for images `(n, c, *spatial)` (validation, inference).
    fn predict(&self, image: &Tensor) -> Result<Tensor>;

    /// Named values to log at the end of an epoch (e.g. KL per latent dimension), and a
    /// chance to reset per-epoch accumulators. Default: nothing.
    fn end_epoch(&self, _epoch: usize) -> Vec<(String, f64)> {
        Vec::new()
    }

    /// Switches between training (`true`) and evaluation (`false`) behaviour (BatchNorm
    /// statistics, dropout). The trainer calls it before training steps and before
    /// validation. Default: nothing (models without such layers).
    fn set_training(&self, _training: bool) {}
}
