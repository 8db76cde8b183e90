//! [`Evaluator`]: every metric of the crate in one pass over the data, and the
//! per-case ("macro") aggregation.
//!
//! * **micro** (pooled): feed every case into one `Evaluator` (or merge the evaluators of
//!   several shards/machines) and call `finish` once: the bins and counts of all voxels are
//!   pooled.
//! * **macro**: one `Evaluator` (or [`reset`](Evaluator::reset)) per case, one [`Report`]
//!   per case, then [`macro_average`]: the mean over cases of every scalar metric, `NaN`
//!   values skipped (the MbLS/NACL/cai4cai protocol).

use ndarray::{ArrayView, Dimension};

use crate::classwise::ClasswiseReport;
use crate::ece::{Calibration, accumulator_common};
use crate::edges::EdgeConvention;
use crate::engine::{Engine, Needs};
use crate::input::{Input, Label, Probability};
use crate::overlap::{OverlapReport, nanmean};
use crate::scores::Scores;
use crate::{MetricConfig, MetricsError, ReliabilityBin};

/// All metrics of one evaluation, as plain data.
///
/// Calibration metrics, Brier and NLL cover the voxels of the region (`n_voxels`); they are
/// `NaN` (and `reliability` has empty bins) when the region holds no voxel, e.g. a case
/// without foreground under [`Region::Foreground`](crate::Region::Foreground). Dice, IoU
/// and the counts cover all `n_total` voxels.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Report {
    /// Voxels in the region (scored by the calibration metrics, Brier and NLL).
    pub n_voxels: u64,
    /// All voxels (scored by Dice and IoU).
    pub n_total: u64,
    /// Number of classes `K`.
    pub n_classes: usize,
    /// Number of bins `n`.
    pub n_bins: usize,
    /// Bin convention.
    pub edges: EdgeConvention,
    /// Top-label ECE.
    pub ece: f64,
    /// Top-label MCE.
    pub mce: f64,
    /// Top-label RMSCE.
    pub rmsce: f64,
    /// Top-label average calibration error (unweighted mean gap over the non-empty bins;
    /// JSON `ace` and `average_ce`; not the adaptive ACE, see [`ece`](crate::ece)).
    pub ace: f64,
    /// Top-label accuracy (argmax correct) over the region.
    pub accuracy: f64,
    /// Mean top-label confidence over the region.
    pub mean_confidence: f64,
    /// Class-wise ECE: mean of `class_ece` over `cece_classes`.
    pub cece: f64,
    /// Classes averaged by `cece`.
    pub cece_classes: Vec<usize>,
    /// ECE of `p_c` against `[y == c]`, per class (`K` entries).
    pub class_ece: Vec<f64>,
    /// MCE of `p_c` against `[y == c]`, per class (`K` entries): the largest gap over the
    /// non-empty bins (`0` if none; `NaN` without a voxel in the region).
    pub class_mce: Vec<f64>,
    /// Average calibration error of `p_c` against `[y == c]`, per class (`K` entries): the
    /// mean gap over the non-empty bins (MONAI's per-channel "ACE").
    pub class_ace: Vec<f64>,
    /// Mean multi-class Brier score.
    pub brier: f64,
    /// Mean negative log-likelihood (nats).
    pub nll: f64,
    /// Dice per class.
    pub dice: Vec<f64>,
    /// NaN-skipping mean Dice over the non-background classes.
    pub dice_mean_fg: f64,
    /// IoU per class.
    pub iou: Vec<f64>,
    /// NaN-skipping mean IoU over the non-background classes.
    pub iou_mean_fg: f64,
    /// True positives per class.
    pub tp: Vec<u64>,
    /// False positives per class.
    pub fp: Vec<u64>,
    /// False negatives per class.
    #[cfg_attr(feature = "serde", serde(rename = "fn"))]
    pub fn_: Vec<u64>,
    /// Top-label reliability diagram (`n` bins, `n + 1` for torchmetrics' convention).
    pub reliability: Vec<ReliabilityBin>,
}

/// One-pass accumulator of every metric: top-label ECE/MCE/RMSCE/ACE and reliability,
/// class-wise ECE, Brier, NLL, and Dice/IoU counts.
///
/// ```
/// use calseg_metrics::{Evaluator, MetricConfig};
/// use ndarray::{Array, Array3};
///
/// // Two cases of 3 classes × 4×4 voxels, fed separately and pooled.
/// let mut ev = Evaluator::new(MetricConfig::default())?;
/// for case in 0..2 {
///     let probs = Array::from_shape_fn((3, 4, 4), |(c, i, j)| {
///         if c == (i + j + case) % 3 { 0.8f32 } else { 0.1 }
///     });
///     let labels = Array3::from_shape_fn((1, 4, 4), |(_, i, j)| ((i + j) % 3) as u8)
///         .into_shape_with_order((4, 4)).unwrap();
///     ev.update(probs.view(), labels.view())?;
/// }
/// let r = ev.finish()?;
/// assert_eq!(r.n_voxels, 32);
/// assert!((r.accuracy - 0.5).abs() < 1e-12); // case 0 right, case 1 wrong everywhere
/// assert!((r.ece - 0.3).abs() < 1e-6); // one bin: |0.5 − 0.8|
/// assert_eq!(r.reliability.len(), 15);
/// # Ok::<(), calseg_metrics::MetricsError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Evaluator {
    engine: Engine,
}

accumulator_common!(Evaluator);

impl Evaluator {
    /// A new, empty evaluator.
    ///
    /// # Errors
    /// [`MetricsError::InvalidConfig`] when the configuration does not validate.
    pub fn new(config: MetricConfig) -> Result<Self, MetricsError> {
        Ok(Evaluator {
            engine: Engine::new(
                config,
                Needs {
                    top: true,
                    classwise: true,
                    overlap: true,
                    scores: true,
                },
            )?,
        })
    }

    /// The report of everything accumulated so far (does not consume the evaluator).
    ///
    /// # Errors
    /// [`MetricsError::Empty`] when no voxel at all has been accumulated.
    pub fn finish(&self) -> Result<Report, MetricsError> {
        let st = match self.engine.state.as_ref().filter(|s| s.n_all > 0) {
            Some(s) => s,
            None => {
                return Err(MetricsError::Empty {
                    what: "evaluator: nothing accumulated".into(),
                });
            }
        };
        let edges = &self.engine.edges;
        let cfg = &self.engine.config;
        let top = match (&st.top, st.n_cal) {
            (Some(h), n) if n > 0 => Some(Calibration::from_hist(h, n, edges)),
            _ => None,
        };
        let reliability = match &top {
            Some(c) => c.reliability.clone(),
            None => (0..edges.n_reported_bins())
                .map(|b| {
                    let (lower, upper) = edges.bounds(b);
                    ReliabilityBin {
                        lower,
                        upper,
                        count: 0,
                        confidence: f64::NAN,
                        accuracy: f64::NAN,
                    }
                })
                .collect(),
        };
        let cw = ClasswiseReport::from_state(st, &self.engine);
        let scores = Scores::from_state(st);
        let ov = OverlapReport::from_state(st, cfg.empty_dice, cfg.background);
        let nan = f64::NAN;
        let t = |f: fn(&Calibration) -> f64| top.as_ref().map_or(nan, f);
        Ok(Report {
            n_voxels: st.n_cal,
            n_total: st.n_all,
            n_classes: st.k,
            n_bins: edges.n_bins(),
            edges: edges.convention(),
            ece: t(|c| c.ece),
            mce: t(|c| c.mce),
            rmsce: t(|c| c.rmsce),
            ace: t(|c| c.ace),
            accuracy: t(|c| c.accuracy),
            mean_confidence: t(|c| c.mean_confidence),
            cece: cw.as_ref().map_or(nan, |c| c.cece),
            cece_classes: cw.as_ref().map_or_else(Vec::new, |c| c.classes.clone()),
            class_ece: per_class(cw.as_ref(), st.k, |p| p.ece),
            class_mce: per_class(cw.as_ref(), st.k, |p| p.mce),
            class_ace: per_class(cw.as_ref(), st.k, |p| p.ace),
            brier: scores.map_or(nan, |s| s.brier),
            nll: scores.map_or(nan, |s| s.nll),
            dice: ov.dice,
            dice_mean_fg: ov.dice_mean_fg,
            iou: ov.iou,
            iou_mean_fg: ov.iou_mean_fg,
            tp: ov.tp,
            fp: ov.fp,
            fn_: ov.fn_,
            reliability,
        })
    }
}

/// One value per class from the class-wise report (`NaN` for every class without one).
fn per_class(cw: Option<&ClasswiseReport>, k: usize, f: fn(&Calibration) -> f64) -> Vec<f64> {
    cw.map_or_else(
        || vec![f64::NAN; k],
        |c| c.per_class.iter().map(f).collect(),
    )
}

/// Scores `probs` against `labels` in one call (one [`Evaluator`], one update).
///
/// ```
/// use calseg_metrics::{evaluate, MetricConfig};
/// use ndarray::{array, Array2};
/// let p = Array2::from_shape_vec((2, 2), vec![0.9f64, 0.2, 0.1, 0.8]).unwrap();
/// let r = evaluate(p.view(), array![0i64, 1].view(), &MetricConfig::default())?;
/// assert_eq!(r.dice, vec![1.0, 1.0]);
/// # Ok::<(), calseg_metrics::MetricsError>(())
/// ```
///
/// # Errors
/// As [`Evaluator::update`] and [`Evaluator::finish`].
pub fn evaluate<T, L, D, E>(
    probs: ArrayView<'_, T, D>,
    labels: ArrayView<'_, L, E>,
    config: &MetricConfig,
) -> Result<Report, MetricsError>
where
    T: Probability,
    L: Label,
    D: Dimension,
    E: Dimension,
{
    let mut ev = Evaluator::new(config.clone())?;
    ev.update(probs, labels)?;
    ev.finish()
}

/// Per-case ("macro") averages: each field is the NaN-skipping mean over cases of the
/// [`Report`] field of the same name (`NaN` if every case is `NaN`).
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MacroReport {
    /// Number of cases.
    pub n_cases: usize,
    /// Mean ECE.
    pub ece: f64,
    /// Mean MCE.
    pub mce: f64,
    /// Mean RMSCE.
    pub rmsce: f64,
    /// Mean ACE.
    pub ace: f64,
    /// Mean accuracy.
    pub accuracy: f64,
    /// Mean of the mean confidences.
    pub mean_confidence: f64,
    /// Mean class-wise ECE.
    pub cece: f64,
    /// Mean Brier score.
    pub brier: f64,
    /// Mean NLL.
    pub nll: f64,
    /// Mean of the per-case foreground Dice means.
    pub dice_mean_fg: f64,
    /// Mean of the per-case foreground IoU means.
    pub iou_mean_fg: f64,
    /// Per class: mean Dice over the cases where it is not `NaN`.
    pub dice: Vec<f64>,
    /// Per class: mean IoU over the cases where it is not `NaN`.
    pub iou: Vec<f64>,
    /// Per class: mean class-wise ECE.
    pub class_ece: Vec<f64>,
}

/// Mean over cases of every scalar metric (and, per class, of Dice, IoU and class ECE),
/// `NaN` values skipped.
///
/// ```
/// use calseg_metrics::{evaluate, macro_average, MetricConfig};
/// use ndarray::{array, Array2};
/// let cfg = MetricConfig::default();
/// let a = evaluate(Array2::from_shape_vec((2, 1), vec![0.9f32, 0.1]).unwrap().view(), array![0u8].view(), &cfg)?;
/// let b = evaluate(Array2::from_shape_vec((2, 1), vec![0.7f32, 0.3]).unwrap().view(), array![0u8].view(), &cfg)?;
/// let m = macro_average(&[a, b])?;
/// assert!((m.ece - 0.2).abs() < 1e-6); // (0.1 + 0.3) / 2
/// # Ok::<(), calseg_metrics::MetricsError>(())
/// ```
///
/// # Errors
/// [`MetricsError::Empty`] for no report; [`MetricsError::ClassCountMismatch`] when the
/// reports have different numbers of classes.
pub fn macro_average(reports: &[Report]) -> Result<MacroReport, MetricsError> {
    let first = reports.first().ok_or_else(|| MetricsError::Empty {
        what: "macro average of no report".into(),
    })?;
    let k = first.n_classes;
    if let Some(r) = reports.iter().find(|r| r.n_classes != k) {
        return Err(MetricsError::ClassCountMismatch {
            expected: k,
            got: r.n_classes,
        });
    }
    let m = |f: fn(&Report) -> f64| nanmean(reports.iter().map(f));
    let per = |f: fn(&Report) -> &Vec<f64>| -> Vec<f64> {
        (0..k)
            .map(|c| {
                nanmean(
                    reports
                        .iter()
                        .map(|r| f(r).get(c).copied().unwrap_or(f64::NAN)),
                )
            })
            .collect()
    };
    Ok(MacroReport {
        n_cases: reports.len(),
        ece: m(|r| r.ece),
        mce: m(|r| r.mce),
        rmsce: m(|r| r.rmsce),
        ace: m(|r| r.ace),
        accuracy: m(|r| r.accuracy),
        mean_confidence: m(|r| r.mean_confidence),
        cece: m(|r| r.cece),
        brier: m(|r| r.brier),
        nll: m(|r| r.nll),
        dice_mean_fg: m(|r| r.dice_mean_fg),
        iou_mean_fg: m(|r| r.iou_mean_fg),
        dice: per(|r| &r.dice),
        iou: per(|r| &r.iou),
        class_ece: per(|r| &r.class_ece),
    })
}
