//! Overlap: Dice and IoU per class, from the argmax of the probabilities or from a hard
//! predicted label map.
//!
//! With `A = [pred == c]`, `B = [y == c]` over every voxel of the input (the region does not
//! apply: dropping background-labelled voxels would hide false positives):
//!
//! ```text
//! Dice_c = 2·tp / (2·tp + fp + fn)      IoU_c = tp / (tp + fp + fn)
//! ```
//!
//! When class `c` is absent from the ground truth (`tp + fn = 0`): `NaN` with
//! [`EmptyDice::Nan`] (MONAI `ignore_empty=True`), or with [`EmptyDice::One`] `1.0` if the
//! prediction is empty too and `0.0` otherwise (MONAI `ignore_empty=False`). Means skip
//! `NaN` ([`nanmean`]); the foreground mean leaves out the background class. Counts are
//! `u64`, so pooling cases ("micro" Dice) is exact.
//!
//! **Hard label maps** (no probabilities): [`Overlap::update_labels`] streams a predicted
//! map against the truth, and [`hard_overlap`] scores one pair in a call, taking `K` from
//! the maps (max label + 1 over both) when not given. The counts are one pass over the
//! voxels whatever `K` (runs of equal `(truth, prediction)` pairs are added at once), so
//! 100+ classes (e.g. TotalSegmentator's 118) cost about what 2 do.

use ndarray::{ArrayView, Dimension};

use crate::config::EmptyDice;
use crate::ece::accumulator_common;
use crate::engine::{Engine, Needs, State};
use crate::input::{Input, Label, LabelPair, Probability};
use crate::{MetricConfig, MetricsError};

/// Mean of the values that are not `NaN`; `NaN` when there are none. (MONAI returns 0.0
/// for an all-NaN mean; `NaN` says "undefined" instead of "worst".)
///
/// ```
/// use calseg_metrics::nanmean;
/// assert_eq!(nanmean([1.0, f64::NAN, 0.5]), 0.75);
/// assert!(nanmean([f64::NAN]).is_nan());
/// ```
pub fn nanmean(values: impl IntoIterator<Item = f64>) -> f64 {
    let (s, n) = values
        .into_iter()
        .filter(|v| !v.is_nan())
        .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 { f64::NAN } else { s / n as f64 }
}

/// Dice from counts, with the empty-ground-truth convention.
pub fn dice_from_counts(tp: u64, fp: u64, fn_: u64, empty: EmptyDice) -> f64 {
    if tp + fn_ == 0 {
        return empty_value(fp, empty);
    }
    2.0 * tp as f64 / (2 * tp + fp + fn_) as f64
}

/// IoU (Jaccard) from counts, with the empty-ground-truth convention.
pub fn iou_from_counts(tp: u64, fp: u64, fn_: u64, empty: EmptyDice) -> f64 {
    if tp + fn_ == 0 {
        return empty_value(fp, empty);
    }
    tp as f64 / (tp + fp + fn_) as f64
}

fn empty_value(fp: u64, empty: EmptyDice) -> f64 {
    match empty {
        EmptyDice::Nan => f64::NAN,
        EmptyDice::One => {
            if fp == 0 {
                1.0
            } else {
                0.0
            }
        }
    }
}

/// Result of [`Overlap`].
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct OverlapReport {
    /// Voxels counted.
    pub n_voxels: u64,
    /// True positives per class.
    pub tp: Vec<u64>,
    /// False positives per class.
    pub fp: Vec<u64>,
    /// False negatives per class.
    #[cfg_attr(feature = "serde", serde(rename = "fn"))]
    pub fn_: Vec<u64>,
    /// Dice per class.
    pub dice: Vec<f64>,
    /// IoU per class.
    pub iou: Vec<f64>,
    /// NaN-skipping mean Dice over the classes other than the background.
    pub dice_mean_fg: f64,
    /// NaN-skipping mean IoU over the classes other than the background.
    pub iou_mean_fg: f64,
}

impl OverlapReport {
    pub(crate) fn from_state(st: &State, empty: EmptyDice, background: Option<usize>) -> Self {
        let k = st.tp.len();
        let fp: Vec<u64> = (0..k).map(|c| st.pred_count[c] - st.tp[c]).collect();
        let fn_: Vec<u64> = (0..k).map(|c| st.gt_count[c] - st.tp[c]).collect();
        let dice: Vec<f64> = (0..k)
            .map(|c| dice_from_counts(st.tp[c], fp[c], fn_[c], empty))
            .collect();
        let iou: Vec<f64> = (0..k)
            .map(|c| iou_from_counts(st.tp[c], fp[c], fn_[c], empty))
            .collect();
        let fg = |v: &[f64]| {
            nanmean(
                v.iter()
                    .enumerate()
                    .filter(|&(c, _)| Some(c) != background)
                    .map(|(_, &x)| x),
            )
        };
        OverlapReport {
            n_voxels: st.n_all,
            dice_mean_fg: fg(&dice),
            iou_mean_fg: fg(&iou),
            tp: st.tp.clone(),
            fp,
            fn_,
            dice,
            iou,
        }
    }
}

/// Streaming Dice/IoU counts.
///
/// ```
/// use calseg_metrics::{EmptyDice, MetricConfig, Overlap};
/// use ndarray::array;
///
/// let pred = array![[0u8, 1, 1], [0, 0, 2]];
/// let truth = array![[0u8, 1, 0], [0, 0, 0]];
/// let mut ov = Overlap::new(MetricConfig::default())?;
/// ov.update_labels(pred.view(), truth.view(), 3)?;
/// let r = ov.finish()?;
/// assert_eq!((r.tp[1], r.fp[1], r.fn_[1]), (1, 1, 0));
/// assert!((r.dice[1] - 2.0 / 3.0).abs() < 1e-12);
/// assert!(r.dice[2].is_nan()); // absent from the truth
/// let mut ov1 = Overlap::new(MetricConfig::default().empty_dice(EmptyDice::One))?;
/// ov1.update_labels(pred.view(), truth.view(), 3)?;
/// assert_eq!(ov1.finish()?.dice[2], 0.0); // ... but predicted
/// # Ok::<(), calseg_metrics::MetricsError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Overlap {
    engine: Engine,
}

accumulator_common!(Overlap);

impl Overlap {
    /// A new, empty accumulator (uses `empty_dice`, `background`, `input`).
    ///
    /// # Errors
    /// [`MetricsError::InvalidConfig`] when the configuration does not validate.
    pub fn new(config: MetricConfig) -> Result<Self, MetricsError> {
        Ok(Overlap {
            engine: Engine::new(
                config,
                Needs {
                    top: false,
                    classwise: false,
                    overlap: true,
                    scores: false,
                },
            )?,
        })
    }

    /// Accumulates a hard prediction `(*spatial)` against labels `(*spatial)`, both in
    /// `0..n_classes`.
    ///
    /// # Errors
    /// Shape mismatch, `n_classes < 2`, a label or prediction outside `0..n_classes`, or a
    /// different `n_classes` than before.
    pub fn update_labels<P, L, D, E>(
        &mut self,
        pred: ArrayView<'_, P, D>,
        labels: ArrayView<'_, L, E>,
        n_classes: usize,
    ) -> Result<(), MetricsError>
    where
        P: Label,
        L: Label,
        D: Dimension,
        E: Dimension,
    {
        self.engine
            .update_labels(&LabelPair::new(pred, labels)?, n_classes)
    }

    /// Dice, IoU and counts of everything accumulated so far.
    ///
    /// # Errors
    /// [`MetricsError::Empty`] when nothing has been accumulated.
    pub fn finish(&self) -> Result<OverlapReport, MetricsError> {
        match self.engine.state.as_ref().filter(|s| s.n_all > 0) {
            Some(st) => Ok(OverlapReport::from_state(
                st,
                self.engine.config.empty_dice,
                self.engine.config.background,
            )),
            None => Err(MetricsError::Empty {
                what: "overlap: no voxel".into(),
            }),
        }
    }
}

/// Largest number of classes [`hard_overlap`] infers from or accepts for a pair of label
/// maps (labels `0..65536`): every accumulated block holds three counts per class, so an
/// unbounded label value (a corrupt file, a wrong data type) must not size them.
pub const MAX_HARD_CLASSES: usize = 1 << 16;

/// Largest class index of `map` (`None` for an empty map); a negative or too large label
/// is [`MetricsError::LabelOutOfRange`] naming `what`.
fn max_label<L: Label, D: Dimension>(
    map: &ArrayView<'_, L, D>,
    what: &'static str,
    limit: usize,
) -> Result<Option<u32>, MetricsError> {
    let max = map.iter().map(|&v| v.to_class()).max();
    if max.is_some_and(|m| m as usize >= limit) {
        let dyn_map = map.view().into_dyn();
        if let Some((index, &v)) = dyn_map
            .indexed_iter()
            .find(|(_, v)| v.to_class() as usize >= limit)
        {
            return Err(MetricsError::LabelOutOfRange {
                what,
                label: v.to_i128(),
                index: index.slice().to_vec(),
                n_classes: limit,
            });
        }
    }
    Ok(max)
}

/// Dice, IoU and counts per class of a hard predicted label map against the truth, in one
/// call: the everyday "how close is this mask to that mask" question.
///
/// `K` is `n_classes`, or when `None` the largest label of either map plus one (at least
/// 2, so that a pair of empty masks still has a background and one class): a map with
/// more classes than the other is fine, and classes missing from both are counted as
/// absent (`NaN` Dice/IoU under [`EmptyDice::Nan`]). Uses `empty_dice` and `background`
/// of `config` (the foreground means leave out the background class). Equivalent to
/// [`Overlap::update_labels`] followed by [`Overlap::finish`].
///
/// ```
/// use calseg_metrics::{MetricConfig, hard_overlap};
/// use ndarray::array;
///
/// let truth = array![[0u8, 1, 1], [0, 2, 2]];
/// let pred = array![[0u16, 1, 0], [0, 2, 5]]; // label 5 only in the prediction
/// let r = hard_overlap(pred.view(), truth.view(), None, &MetricConfig::default())?;
/// assert_eq!(r.dice.len(), 6); // K = 5 + 1
/// assert!((r.dice[1] - 2.0 / 3.0).abs() < 1e-12); // 2·1 / (2·1 + 0 + 1)
/// assert!(r.dice[3].is_nan()); // in neither map
/// assert!(r.dice[5].is_nan()); // absent from the truth (predicted: a false positive)
/// assert_eq!(r.fp[5], 1);
/// // With an explicit K, a larger label is an error, not a silent drop.
/// assert!(hard_overlap(pred.view(), truth.view(), Some(4), &MetricConfig::default()).is_err());
/// # Ok::<(), calseg_metrics::MetricsError>(())
/// ```
///
/// # Errors
/// [`MetricsError::ShapeMismatch`] when the maps differ in shape;
/// [`MetricsError::LabelOutOfRange`] for a negative label, a label `≥ n_classes`, or one
/// `≥` [`MAX_HARD_CLASSES`]; [`MetricsError::InvalidConfig`] for an invalid
/// configuration, `n_classes` outside `2..=MAX_HARD_CLASSES`, or a background class
/// `≥ K`; [`MetricsError::Empty`] for maps without a voxel.
pub fn hard_overlap<P, L, D, F>(
    pred: ArrayView<'_, P, D>,
    labels: ArrayView<'_, L, F>,
    n_classes: Option<usize>,
    config: &MetricConfig,
) -> Result<OverlapReport, MetricsError>
where
    P: Label,
    L: Label,
    D: Dimension,
    F: Dimension,
{
    if pred.shape() != labels.shape() {
        return Err(MetricsError::ShapeMismatch {
            what: "pred (against labels)",
            expected: labels.shape().to_vec(),
            got: pred.shape().to_vec(),
        });
    }
    let k = match n_classes {
        Some(k) if (2..=MAX_HARD_CLASSES).contains(&k) => k,
        Some(k) => {
            return Err(MetricsError::InvalidConfig(format!(
                "number of classes must be in 2..={MAX_HARD_CLASSES}, got {k}"
            )));
        }
        None => {
            let a = max_label(&pred, "pred", MAX_HARD_CLASSES)?;
            let b = max_label(&labels, "labels", MAX_HARD_CLASSES)?;
            (a.max(b).map_or(0, |m| m as usize) + 1).max(2)
        }
    };
    let mut ov = Overlap::new(config.clone())?;
    ov.update_labels(pred, labels, k)?;
    ov.finish()
}
