//! The conventions every metric depends on, as explicit parameters.
//!
//! Libraries and papers disagree on bin edges, on which voxels count, on what Dice is for
//! an absent class and on how strict to be with inputs that are not probabilities. None of
//! these is hidden here: a [`MetricConfig`] names each choice, its [`Default`] is the
//! recommended one, and two accumulators only [merge](crate::Evaluator::merge) when their
//! configurations are identical.

use crate::MetricsError;
use crate::edges::{DEFAULT_BINS, EdgeConvention, MAX_BINS};

/// Which voxels the calibration metrics (ECE, MCE, RMSCE, ACE, class-wise ECE) and the
/// proper scores (Brier, NLL) are computed over.
///
/// Dice and IoU always use every voxel of the input: dropping the voxels labelled
/// background would hide every false positive there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Region {
    /// Every voxel (default).
    #[default]
    All,
    /// Voxels whose label is not [`MetricConfig::background`] (the MbLS/NACL evaluation
    /// protocol: "background voxels dropped first").
    Foreground,
    /// Voxels where the mask given with [`Input::with_mask`](crate::Input::with_mask) is
    /// non-zero (`true`). A mask is then required with every input.
    Mask,
}

impl std::fmt::Display for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Region::All => "all",
            Region::Foreground => "foreground",
            Region::Mask => "mask",
        })
    }
}

impl std::str::FromStr for Region {
    type Err = MetricsError;
    /// Parses the CLI spellings `all`, `foreground`, `mask`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "all" => Ok(Region::All),
            "foreground" | "fg" => Ok(Region::Foreground),
            "mask" => Ok(Region::Mask),
            _ => Err(MetricsError::InvalidConfig(format!(
                "unknown region {s:?} (expected all, foreground or mask)"
            ))),
        }
    }
}

/// How the values along axis 0 are turned into probabilities. Nothing is ever renormalised
/// or softmaxed silently (torchmetrics softmaxes every row as soon as one value is outside
/// `[0, 1]`): the mode says what the input is.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum InputMode {
    /// The input is a probability distribution per voxel and is checked: every value in
    /// `[0, 1]` (NaN/∞ rejected) and `|Σ_k p_k − 1| ≤ tol`, the sum taken in the input's
    /// precision (so for f32 input `tol` should stay above `K · 6e-8`). Default
    /// `tol` = [`DEFAULT_TOL`] (`1e-3`): loose enough for f16-stored softmax maps, tight
    /// enough to catch logits, unnormalised scores and swapped axes.
    Probabilities {
        /// Tolerance on the per-voxel sum.
        tol: f64,
    },
    /// Non-negative finite scores, divided by their per-voxel sum (in f64, rounded back to
    /// the input type). An all-zero voxel is an error.
    Renormalise,
    /// Logits: `p_k = exp(l_k − max_j l_j) / Σ_j exp(l_j − max_j l_j)` (in f64, rounded back
    /// to the input type). Non-finite logits are an error.
    Logits,
}

/// Default tolerance of [`InputMode::Probabilities`].
pub const DEFAULT_TOL: f64 = 1e-3;

impl Default for InputMode {
    fn default() -> Self {
        InputMode::Probabilities { tol: DEFAULT_TOL }
    }
}

/// Dice and IoU of a class that is absent from the ground truth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum EmptyDice {
    /// `NaN`, skipped by the means (MONAI `ignore_empty=True`, the default).
    #[default]
    Nan,
    /// `1.0` when the prediction is empty too, `0.0` otherwise (MONAI `ignore_empty=False`).
    One,
}

/// Which classes the class-wise ECE averages over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum CeceClasses {
    /// All `K` classes (default).
    #[default]
    All,
    /// Classes `0..=max label` found in the region over everything accumulated (the
    /// MbLS/NACL code loops over `range(max(label) + 1)`).
    UpToMaxLabel,
}

/// Default floor of the probability of the true class in the NLL.
pub const DEFAULT_NLL_FLOOR: f64 = 1e-12;

/// Every convention of the metrics, as one value. `MetricConfig::default()` is: 15 bins,
/// left-closed edges, all voxels, background class 0, probabilities checked to `1e-3`,
/// Dice `NaN` for classes absent from the truth, class-wise ECE over all classes, NLL
/// floor `1e-12`.
///
/// ```
/// use calseg_metrics::{EdgeConvention, MetricConfig, Region};
/// let cfg = MetricConfig::default().bins(10).edges(EdgeConvention::RightClosed).region(Region::Foreground);
/// assert_eq!(cfg.n_bins, 10);
/// assert!(cfg.validate().is_ok());
/// assert_eq!(MetricConfig::mbls_nacl().edges, EdgeConvention::RightClosed);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MetricConfig {
    /// Number of equal-width confidence bins, `1..=2^20` (default 15).
    pub n_bins: usize,
    /// Bin interval convention (default left-closed, `1.0` in the last bin).
    pub edges: EdgeConvention,
    /// Voxels scored by the calibration metrics and proper scores.
    pub region: Region,
    /// The background class (default `Some(0)`): dropped by [`Region::Foreground`] and left
    /// out of the foreground means of Dice and IoU. `None`: no class is background.
    pub background: Option<usize>,
    /// What the input along axis 0 is.
    pub input: InputMode,
    /// Dice/IoU of classes absent from the ground truth.
    pub empty_dice: EmptyDice,
    /// Classes averaged by the class-wise ECE.
    pub cece_classes: CeceClasses,
    /// The NLL uses `−ln max(p_y, nll_floor)`; must lie in `[1e-18, 1]` (default `1e-12`,
    /// which caps a voxel's loss at 27.6).
    pub nll_floor: f64,
}

impl Default for MetricConfig {
    fn default() -> Self {
        MetricConfig {
            n_bins: DEFAULT_BINS,
            edges: EdgeConvention::LeftClosed,
            region: Region::All,
            background: Some(0),
            input: InputMode::default(),
            empty_dice: EmptyDice::Nan,
            cece_classes: CeceClasses::All,
            nll_floor: DEFAULT_NLL_FLOOR,
        }
    }
}

impl MetricConfig {
    /// The MbLS/NACL evaluation protocol: 15 right-closed bins over foreground voxels
    /// (label ≠ 0), class-wise ECE over classes `0..=max label`.
    pub fn mbls_nacl() -> Self {
        MetricConfig {
            edges: EdgeConvention::RightClosed,
            region: Region::Foreground,
            cece_classes: CeceClasses::UpToMaxLabel,
            ..MetricConfig::default()
        }
    }

    /// MONAI's `CalibrationErrorMetric` defaults (MONAI 1.6): 20 bins with MONAI's edges
    /// `linspace(0, 1 + ε, 21)` and `(lo, hi]` binning ([`EdgeConvention::Monai`]), every
    /// voxel, class-wise (one-vs-rest per class channel) over all classes. The per-class
    /// ECE/MCE/average CE of a [`Report`](crate::Report) made with it are MONAI's values;
    /// [`MonaiCalibration`](crate::MonaiCalibration) applies MONAI's reductions.
    ///
    /// ```
    /// use calseg_metrics::{EdgeConvention, MetricConfig};
    /// let m = MetricConfig::monai();
    /// assert_eq!((m.n_bins, m.edges), (20, EdgeConvention::Monai));
    /// ```
    pub fn monai() -> Self {
        MetricConfig {
            n_bins: 20,
            edges: EdgeConvention::Monai,
            region: Region::All,
            cece_classes: CeceClasses::All,
            ..MetricConfig::default()
        }
    }

    /// Sets the number of bins.
    pub fn bins(mut self, n_bins: usize) -> Self {
        self.n_bins = n_bins;
        self
    }

    /// Sets the edge convention.
    pub fn edges(mut self, edges: EdgeConvention) -> Self {
        self.edges = edges;
        self
    }

    /// Sets the region.
    pub fn region(mut self, region: Region) -> Self {
        self.region = region;
        self
    }

    /// Sets the background class (`None`: no background class).
    pub fn background(mut self, background: Option<usize>) -> Self {
        self.background = background;
        self
    }

    /// Sets the input mode.
    pub fn input(mut self, input: InputMode) -> Self {
        self.input = input;
        self
    }

    /// Sets the empty-class Dice convention.
    pub fn empty_dice(mut self, empty_dice: EmptyDice) -> Self {
        self.empty_dice = empty_dice;
        self
    }

    /// Sets the classes of the class-wise ECE.
    pub fn cece_classes(mut self, cece_classes: CeceClasses) -> Self {
        self.cece_classes = cece_classes;
        self
    }

    /// Sets the NLL floor.
    pub fn nll_floor(mut self, nll_floor: f64) -> Self {
        self.nll_floor = nll_floor;
        self
    }

    /// Checks every value.
    ///
    /// # Errors
    /// [`MetricsError::InvalidConfig`] for zero or too many bins, a tolerance that is
    /// negative or not finite, an NLL floor outside `[1e-18, 1]`, or
    /// [`Region::Foreground`] without a background class.
    pub fn validate(&self) -> Result<(), MetricsError> {
        if self.n_bins == 0 || self.n_bins > MAX_BINS {
            return Err(MetricsError::InvalidConfig(format!(
                "number of bins must be in 1..={MAX_BINS}, got {}",
                self.n_bins
            )));
        }
        if let InputMode::Probabilities { tol } = self.input
            && !(tol.is_finite() && tol >= 0.0)
        {
            return Err(MetricsError::InvalidConfig(format!(
                "probability-sum tolerance must be finite and >= 0, got {tol}"
            )));
        }
        if !(self.nll_floor >= 1e-18 && self.nll_floor <= 1.0) {
            return Err(MetricsError::InvalidConfig(format!(
                "NLL floor must lie in [1e-18, 1], got {}",
                self.nll_floor
            )));
        }
        if self.region == Region::Foreground && self.background.is_none() {
            return Err(MetricsError::InvalidConfig(
                "region Foreground needs a background class".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_validation() {
        let c = MetricConfig::default();
        assert_eq!(c.n_bins, 15);
        assert_eq!(c.edges, EdgeConvention::LeftClosed);
        assert_eq!(c.input, InputMode::Probabilities { tol: 1e-3 });
        assert!(c.validate().is_ok());
        for bad in [
            MetricConfig::default().bins(0),
            MetricConfig::default().bins(MAX_BINS + 1),
            MetricConfig::default().input(InputMode::Probabilities { tol: -1.0 }),
            MetricConfig::default().input(InputMode::Probabilities { tol: f64::NAN }),
            MetricConfig::default().nll_floor(0.0),
            MetricConfig::default().nll_floor(2.0),
            MetricConfig::default()
                .region(Region::Foreground)
                .background(None),
        ] {
            assert!(
                matches!(bad.validate(), Err(MetricsError::InvalidConfig(_))),
                "{bad:?}"
            );
        }
        assert_eq!("foreground".parse::<Region>().unwrap(), Region::Foreground);
        assert!("everything".parse::<Region>().is_err());
    }
}
