//! Did a training run converge? The validation Dice of the epochs that validated (from
//! the [`TrainReport`](super::TrainReport) or the run's `train_log.jsonl`), summarised as
//! its final value and its gain over the last quarter of the run: a plateau shows as a
//! gain near 0.

use super::trainer::{EpochLog, LOG_FILE};
use crate::{Result, SegError};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The validation-Dice trajectory of a run, summarised.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plateau {
    /// Mean foreground validation Dice after the last validated epoch.
    pub final_dice: f64,
    /// `final_dice` minus the validation Dice of the last validated epoch at or before
    /// three quarters of the run.
    pub gain_last_quarter: f64,
    /// Epochs the run had.
    pub epochs: usize,
    /// The highest validation Dice of the run (the weights a
    /// [`keep_best`](super::TrainerConfig::keep_best) run ends with).
    #[serde(default)]
    pub best_dice: f64,
}

/// Reads the per-epoch log `dir/train_log.jsonl` a [`Trainer`](super::Trainer) wrote.
///
/// # Errors
/// [`SegError::Io`]-style config errors naming the file when it cannot be read or a
/// line is not an epoch log.
pub fn read_log(dir: &Path) -> Result<Vec<EpochLog>> {
    let path = dir.join(LOG_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| SegError::Config(format!("{}: cannot read: {e}", path.display())))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .map_err(|e| SegError::Config(format!("{}: not an epoch log: {e}", path.display())))
        })
        .collect()
}

/// The [`Plateau`] of `logs` (`None` when fewer than two epochs validated).
///
/// ```
/// use calseg_seg::train::{EpochLog, ValMetrics, convergence::plateau};
/// let log = |epoch: usize, d: f64| EpochLog {
///     epoch, loss: 0.0, lr: 0.0, steps: 0, seconds: 0.0, logs: Default::default(),
///     val: Some(ValMetrics { dice: vec![], dice_mean_fg: d, ece: 0.0, ece_fg: 0.0, cece: 0.0, nll: 0.0, brier: 0.0, accuracy: 0.0 }),
/// };
/// let p = plateau(&[log(3, 0.5), log(7, 0.70), log(11, 0.74), log(15, 0.75)]).unwrap();
/// assert_eq!(p.final_dice, 0.75);
/// assert!((p.gain_last_quarter - 0.01).abs() < 1e-12); // epoch 11 ends ¾ of 16: 0.75 − 0.74
/// assert_eq!(p.best_dice, 0.75);
/// ```
pub fn plateau(logs: &[EpochLog]) -> Option<Plateau> {
    let val: Vec<(usize, f64)> = logs
        .iter()
        .filter_map(|e| e.val.as_ref().map(|v| (e.epoch, v.dice_mean_fg)))
        .collect();
    let &(last_epoch, final_dice) = val.last()?;
    if val.len() < 2 {
        return None;
    }
    let epochs = last_epoch + 1;
    let cut = (3 * epochs) / 4;
    let &(_, before) = val.iter().rev().find(|(e, _)| *e < cut).unwrap_or(&val[0]);
    Some(Plateau {
        final_dice,
        gain_last_quarter: final_dice - before,
        epochs,
        best_dice: val.iter().map(|v| v.1).fold(f64::NEG_INFINITY, f64::max),
    })
}
