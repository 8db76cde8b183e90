//! The numbers of one method: [`MethodResult`] (one seed, from two reports) and
//! [`MethodSummary`] (several seeds: NaN-skipping mean and sample standard deviation).

use super::ReportError;
use calseg_metrics::{MetricConfig, Region, Report};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Headline numbers of one method on the evaluation split (one seed). Field names are
/// the keys of `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodResult {
    /// Method name (the key under `"methods"`).
    pub name: String,
    /// Top-label ECE over every voxel.
    pub ece: f64,
    /// Top-label ECE over voxels whose label is not background (MbLS/NACL protocol).
    pub ece_fg: f64,
    /// Top-label MCE over every voxel.
    pub mce: f64,
    /// Class-wise ECE over every voxel.
    pub cece: f64,
    /// Adaptive (equal-mass) ECE over every voxel.
    pub ace: f64,
    /// Mean multi-class Brier score.
    pub brier: f64,
    /// Mean negative log-likelihood (nats).
    pub nll: f64,
    /// Dice per class (`NaN` for a class absent from the ground truth).
    pub dice: Vec<f64>,
    /// NaN-skipping mean Dice over the non-background classes.
    pub dice_mean_fg: f64,
    /// Mean HD95 over the foreground classes in mm, if computed.
    pub hd95_mean_fg: Option<f64>,
    /// Training wall time in seconds.
    pub train_seconds: f64,
    /// Further numbers (e.g. a soft-label KL), aggregated like the others.
    #[serde(default)]
    pub extra: BTreeMap<String, f64>,
}

/// `base` restricted to the voxels whose label is not background: the configuration of
/// the second evaluator whose report gives [`MethodResult::ece_fg`]. The background
/// class is `base`'s, or class 0 if `base` has none.
pub fn foreground_config(base: &MetricConfig) -> MetricConfig {
    let background = base.background.unwrap_or(0);
    base.clone()
        .region(Region::Foreground)
        .background(Some(background))
}

impl MethodResult {
    /// The numbers of a method from the report over every voxel (`all`) and the report
    /// of an evaluator configured with [`foreground_config`] on the same data (`fg`),
    /// whose top-label ECE becomes `ece_fg`. `extra` starts empty.
    ///
    /// # Errors
    /// [`ReportError::Invalid`] when the two reports have different numbers of classes
    /// (they cannot come from the same data).
    pub fn from_reports(
        name: impl Into<String>,
        all: &Report,
        fg: &Report,
        hd95_mean_fg: Option<f64>,
        train_seconds: f64,
    ) -> Result<Self, ReportError> {
        let name = name.into();
        if all.n_classes != fg.n_classes {
            return Err(ReportError::Invalid(format!(
                "method {name}: the report over all voxels has {} classes, the foreground one {}",
                all.n_classes, fg.n_classes
            )));
        }
        Ok(MethodResult {
            name,
            ece: all.ece,
            ece_fg: fg.ece,
            mce: all.mce,
            cece: all.cece,
            ace: all.ace,
            brier: all.brier,
            nll: all.nll,
            dice: all.dice.clone(),
            dice_mean_fg: all.dice_mean_fg,
            hd95_mean_fg,
            train_seconds,
            extra: BTreeMap::new(),
        })
    }
}

/// One method over one or several seeds.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodSummary {
    /// Method name.
    pub name: String,
    /// Number of seeds aggregated.
    pub n_seeds: usize,
    /// NaN-skipping mean over seeds of every number (`hd95_mean_fg`: mean of the seeds
    /// that have one, `None` if none has).
    pub mean: MethodResult,
    /// Sample standard deviation (divisor `n − 1`) of every number, over the seeds where
    /// it is not `NaN` (`NaN` with fewer than two); `None` for a single seed.
    pub sd: Option<MethodResult>,
}

impl From<MethodResult> for MethodSummary {
    fn from(r: MethodResult) -> Self {
        MethodSummary {
            name: r.name.clone(),
            n_seeds: 1,
            mean: r,
            sd: None,
        }
    }
}

/// NaN-skipping mean and sample standard deviation (`NaN` when undefined).
fn mean_sd(values: impl IntoIterator<Item = f64>) -> (f64, f64) {
    let v: Vec<f64> = values.into_iter().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let sd = if v.len() < 2 {
        f64::NAN
    } else {
        (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    };
    (mean, sd)
}

/// Aggregates the runs (seeds) of one method: mean and sample standard deviation of
/// every number. A single run gives `sd = None`.
///
/// # Errors
/// [`ReportError::Invalid`] for no run, runs of different methods (names), or Dice
/// vectors of different lengths.
pub fn summarize(runs: &[MethodResult]) -> Result<MethodSummary, ReportError> {
    let first = runs
        .first()
        .ok_or_else(|| ReportError::Invalid("no run to summarize".into()))?;
    if let Some(r) = runs.iter().find(|r| r.name != first.name) {
        return Err(ReportError::Invalid(format!(
            "runs of different methods in one summary: {} and {}",
            first.name, r.name
        )));
    }
    let k = first.dice.len();
    if let Some(r) = runs.iter().find(|r| r.dice.len() != k) {
        return Err(ReportError::Invalid(format!(
            "method {}: runs with {} and {} Dice classes",
            first.name,
            k,
            r.dice.len()
        )));
    }
    if runs.len() == 1 {
        return Ok(first.clone().into());
    }
    let field = |f: fn(&MethodResult) -> f64| mean_sd(runs.iter().map(f));
    let (ece, ece_sd) = field(|r| r.ece);
    let (ece_fg, ece_fg_sd) = field(|r| r.ece_fg);
    let (mce, mce_sd) = field(|r| r.mce);
    let (cece, cece_sd) = field(|r| r.cece);
    let (ace, ace_sd) = field(|r| r.ace);
    let (brier, brier_sd) = field(|r| r.brier);
    let (nll, nll_sd) = field(|r| r.nll);
    let (dice_mean_fg, dice_mean_fg_sd) = field(|r| r.dice_mean_fg);
    let (train, train_sd) = field(|r| r.train_seconds);
    let (dice, dice_sd): (Vec<f64>, Vec<f64>) = (0..k)
        .map(|c| mean_sd(runs.iter().map(|r| r.dice[c])))
        .unzip();
    let hd95 = runs.iter().filter_map(|r| r.hd95_mean_fg);
    let (hd95, hd95_sd) = if hd95.clone().next().is_some() {
        let (m, s) = mean_sd(hd95);
        (Some(m), Some(s))
    } else {
        (None, None)
    };
    let mut extra = BTreeMap::new();
    let mut extra_sd = BTreeMap::new();
    let keys: std::collections::BTreeSet<&String> =
        runs.iter().flat_map(|r| r.extra.keys()).collect();
    for key in keys {
        let (m, s) = mean_sd(runs.iter().filter_map(|r| r.extra.get(key).copied()));
        extra.insert(key.clone(), m);
        extra_sd.insert(key.clone(), s);
    }
    let name = first.name.clone();
    Ok(MethodSummary {
        name: name.clone(),
        n_seeds: runs.len(),
        mean: MethodResult {
            name: name.clone(),
            ece,
            ece_fg,
            mce,
            cece,
            ace,
            brier,
            nll,
            dice,
            dice_mean_fg,
            hd95_mean_fg: hd95,
            train_seconds: train,
            extra,
        },
        sd: Some(MethodResult {
            name,
            ece: ece_sd,
            ece_fg: ece_fg_sd,
            mce: mce_sd,
            cece: cece_sd,
            ace: ace_sd,
            brier: brier_sd,
            nll: nll_sd,
            dice: dice_sd,
            dice_mean_fg: dice_mean_fg_sd,
            hd95_mean_fg: hd95_sd,
            train_seconds: train_sd,
            extra: extra_sd,
        }),
    })
}

/// Groups runs by method name (in order of first appearance) and [`summarize`]s each.
///
/// # Errors
/// As [`summarize`].
pub fn group_by_method(runs: &[MethodResult]) -> Result<Vec<MethodSummary>, ReportError> {
    let mut names: Vec<&str> = Vec::new();
    for r in runs {
        if !names.contains(&r.name.as_str()) {
            names.push(&r.name);
        }
    }
    names
        .into_iter()
        .map(|n| {
            let group: Vec<MethodResult> = runs.iter().filter(|r| r.name == n).cloned().collect();
            summarize(&group)
        })
        .collect()
}
