//! Top-label calibration: ECE, MCE, RMSCE, ACE and the reliability diagram, from one
//! histogram pass.
//!
//! Per voxel: confidence `conf = max_k p_k`, prediction `pred = argmax_k p_k` (the **first**
//! maximal index on ties, as numpy and torch), `correct = [pred == y]`. With the bins of
//! [`edges`](crate::edges), `n_b` voxels in bin `b`, `acc_b` their accuracy, `conf_b` their
//! mean confidence and `N` the voxels of the region (including, for right-closed bins,
//! confidences of exactly 0 that fall in no bin):
//!
//! ```text
//! ECE   = Σ_b (n_b / N) · |acc_b − conf_b|          = Σ_b |hits_b − Σconf_b| / N
//! MCE   = max_{b: n_b > 0} |acc_b − conf_b|          (0 if no bin is occupied)
//! RMSCE = sqrt( Σ_b (n_b / N) · (acc_b − conf_b)² )  (torchmetrics norm = "l2")
//! ACE   = mean_{b: n_b > 0} |acc_b − conf_b|         (0 if no bin is occupied)
//! ```
//!
//! **Which ACE.** `ace` is the *average* calibration error: the unweighted mean gap over
//! the non-empty equal-width bins — netcal's `ACE` and MONAI's `"average"` reduction
//! (its "ACE"), also reported under the JSON key `average_ce` (`ace` is kept as its alias).
//! It is **not** the *adaptive* calibration error of Nixon et al. (2019), which uses
//! equal-mass bins (the same number of predictions per bin); calseg does not compute
//! that one, and no key or field is named after it.
//!
//! Counts are exact (`u64`), sums are f64, so ECE over 10⁷ voxels is exact to ~1e-16
//! (torchmetrics sums in f32 and drifts by ~1e-4 there).

use ndarray::{ArrayView, Dimension};

use crate::edges::BinEdges;
use crate::engine::{Engine, Hist, Needs};
use crate::input::{Input, Label, Probability};
use crate::{MetricConfig, MetricsError, ReliabilityBin};

/// Result of a (top-label or one-class) calibration histogram.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Calibration {
    /// Voxels scored (`N`).
    pub n_voxels: u64,
    /// Voxels that fell in some bin (`N` minus right-closed zeros).
    pub n_binned: u64,
    /// Expected calibration error (L1).
    pub ece: f64,
    /// Maximum calibration error over occupied bins.
    pub mce: f64,
    /// Root-mean-square calibration error (L2, weighted by bin mass).
    pub rmsce: f64,
    /// Average calibration error: unweighted mean gap over occupied bins (netcal's and
    /// MONAI's "ACE"; not Nixon et al.'s adaptive ACE — see the [module docs](self)).
    pub ace: f64,
    /// Fraction of hits (top-label: accuracy; one class `c`: frequency of `y == c`).
    pub accuracy: f64,
    /// Mean score (top-label: mean confidence; one class `c`: mean `p_c`).
    pub mean_confidence: f64,
    /// One entry per reported bin (`n`, or `n + 1` for torchmetrics' convention); empty
    /// bins have `NaN` confidence and accuracy.
    pub reliability: Vec<ReliabilityBin>,
}

impl Calibration {
    pub(crate) fn from_hist(h: &Hist, n: u64, edges: &BinEdges) -> Self {
        let nb = edges.n_reported_bins();
        let nf = n as f64;
        let mut ece_num = 0.0;
        let mut rms = 0.0;
        let mut mce = 0.0f64;
        let mut ace = 0.0;
        let mut occupied = 0usize;
        let mut n_binned = 0;
        let mut reliability = Vec::with_capacity(nb);
        for b in 0..nb {
            let s = b + 1;
            let cnt = h.count[s];
            let (lower, upper) = edges.bounds(b);
            let hits = h.hits[s] as f64;
            let sum = h.sum[s];
            ece_num += (hits - sum).abs();
            let (confidence, accuracy) = if cnt > 0 {
                let c = cnt as f64;
                let acc = hits / c;
                let cf = sum / c;
                let gap = (acc - cf).abs();
                rms += (c / nf) * gap * gap;
                mce = mce.max(gap);
                ace += gap;
                occupied += 1;
                n_binned += cnt;
                (cf, acc)
            } else {
                (f64::NAN, f64::NAN)
            };
            reliability.push(ReliabilityBin {
                lower,
                upper,
                count: cnt,
                confidence,
                accuracy,
            });
        }
        let total_hits: u64 = h.hits.iter().sum();
        let total_sum: f64 = h.sum.iter().sum();
        Calibration {
            n_voxels: n,
            n_binned,
            ece: ece_num / nf,
            mce,
            rmsce: rms.sqrt(),
            ace: if occupied > 0 {
                ace / occupied as f64
            } else {
                0.0
            },
            accuracy: total_hits as f64 / nf,
            mean_confidence: total_sum / nf,
            reliability,
        }
    }
}

/// The methods every accumulator shares (`update`, `update_input`, `merge`, `reset`,
/// `config`).
macro_rules! accumulator_common {
    ($t:ty) => {
        impl $t {
            /// Accumulates probabilities `(K, *spatial)` against labels `(*spatial)` (no
            /// mask, no hard prediction: see [`update_input`](Self::update_input)). On error
            /// nothing is accumulated.
            ///
            /// # Errors
            /// Shape mismatch, `K < 2`, labels out of `0..K`, invalid probabilities for the
            /// configured [`InputMode`](crate::InputMode), a different `K` than before,
            /// or [`MetricsError::MissingMask`] under [`Region::Mask`](crate::Region::Mask).
            pub fn update<T, L, D, E>(
                &mut self,
                probs: ArrayView<'_, T, D>,
                labels: ArrayView<'_, L, E>,
            ) -> Result<(), MetricsError>
            where
                T: Probability,
                L: Label,
                D: Dimension,
                E: Dimension,
            {
                self.engine.update(&Input::new(probs, labels)?)
            }

            /// Accumulates an [`Input`] (with its optional mask and hard prediction). On
            /// error nothing is accumulated.
            ///
            /// # Errors
            /// As [`update`](Self::update), plus [`MetricsError::UnexpectedMask`] for a mask
            /// when the region is not `Mask`.
            pub fn update_input<T: Probability>(
                &mut self,
                input: &Input<'_, T>,
            ) -> Result<(), MetricsError> {
                self.engine.update(input)
            }

            /// Adds the counts and sums of `other` (pooled bins: exactly what one pass over
            /// both inputs gives, up to f64 rounding of the sums).
            ///
            /// # Errors
            /// [`MetricsError::ConfigMismatch`] for different configurations,
            /// [`MetricsError::ClassCountMismatch`] for different `K`.
            pub fn merge(&mut self, other: &Self) -> Result<(), MetricsError> {
                self.engine.merge(&other.engine)
            }

            /// Forgets everything accumulated (keeps the configuration).
            pub fn reset(&mut self) {
                self.engine.reset();
            }

            /// The configuration.
            pub fn config(&self) -> &MetricConfig {
                &self.engine.config
            }

            /// Voxels accumulated so far (all voxels, whatever the region).
            pub fn n_seen(&self) -> u64 {
                self.engine.state.as_ref().map_or(0, |s| s.n_all)
            }
        }
    };
}
pub(crate) use accumulator_common;

/// Streaming top-label calibration (ECE, MCE, RMSCE, ACE, reliability diagram).
///
/// ```
/// use calseg_metrics::{MetricConfig, TopLabelCalibration};
/// use ndarray::{array, Array2};
///
/// // K = 2 classes, 4 voxels: confidences 0.9, 0.9, 0.6, 0.6; the last one is wrong.
/// let p = Array2::from_shape_vec((2, 4), vec![0.9f32, 0.1, 0.6, 0.4, 0.1, 0.9, 0.4, 0.6]).unwrap();
/// let y = array![0u8, 1, 0, 0];
/// let mut acc = TopLabelCalibration::new(MetricConfig::default().bins(10))?;
/// acc.update(p.view(), y.view())?;
/// let c = acc.finish()?;
/// // bin [0.9, 1]: 2 voxels, acc 1, conf 0.9; bin [0.6, 0.7): 2 voxels, acc 0.5, conf 0.6
/// assert!((c.ece - (0.5 * 0.1 + 0.5 * 0.1)).abs() < 1e-6);
/// assert!((c.mce - 0.1).abs() < 1e-6);
/// # Ok::<(), calseg_metrics::MetricsError>(())
/// ```
#[derive(Debug, Clone)]
pub struct TopLabelCalibration {
    engine: Engine,
}

accumulator_common!(TopLabelCalibration);

impl TopLabelCalibration {
    /// A new, empty accumulator. Uses `n_bins`, `edges`, `region`, `background` and `input`
    /// of the configuration.
    ///
    /// # Errors
    /// [`MetricsError::InvalidConfig`] when the configuration does not
    /// [validate](MetricConfig::validate).
    pub fn new(config: MetricConfig) -> Result<Self, MetricsError> {
        Ok(TopLabelCalibration {
            engine: Engine::new(
                config,
                Needs {
                    top: true,
                    classwise: false,
                    overlap: false,
                    scores: false,
                },
            )?,
        })
    }

    /// The metrics of everything accumulated so far (does not consume the accumulator).
    ///
    /// # Errors
    /// [`MetricsError::Empty`] when no voxel of the region has been accumulated.
    pub fn finish(&self) -> Result<Calibration, MetricsError> {
        let st = self.engine.state.as_ref().filter(|s| s.n_cal > 0);
        match st.and_then(|s| s.top.as_ref().map(|h| (h, s.n_cal))) {
            Some((h, n)) => Ok(Calibration::from_hist(h, n, &self.engine.edges)),
            None => Err(MetricsError::Empty {
                what: "top-label calibration: no voxel in the region".into(),
            }),
        }
    }
}
