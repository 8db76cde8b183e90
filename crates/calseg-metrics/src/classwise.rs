//! Class-wise (marginal) calibration: for each class `c`, the calibration of `p_c` against
//! the indicator `[y == c]` over the voxels of the region, and CECE, their mean.
//!
//! ```text
//! ECE_c = Σ_b (n_{c,b} / N) · |mean_b([y == c]) − mean_b(p_c)|
//! CECE  = (1 / |C|) Σ_{c ∈ C} ECE_c
//! ```
//!
//! `C` is every class ([`CeceClasses::All`]) or `0..=max label` found in the region
//! ([`CeceClasses::UpToMaxLabel`], the MbLS/NACL code). Bins and edges as for the top-label
//! metrics; note that most `p_c` are near 0, so under right-closed bins the exact zeros
//! fall in no bin but still count in `N`.

use ndarray::{ArrayView, Dimension};

use crate::config::CeceClasses;
use crate::ece::{Calibration, accumulator_common};
use crate::engine::{Engine, Needs, State};
use crate::input::{Input, Label, Probability};
use crate::{MetricConfig, MetricsError};

/// Result of [`ClasswiseCalibration`].
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ClasswiseReport {
    /// Mean of `per_class[c].ece` over `classes`.
    pub cece: f64,
    /// The classes averaged (see [`CeceClasses`]).
    pub classes: Vec<usize>,
    /// Calibration of `p_c` against `[y == c]`, for every class `c` (`K` entries, also
    /// those outside `classes`); `accuracy` is the frequency of class `c`.
    pub per_class: Vec<Calibration>,
}

impl ClasswiseReport {
    pub(crate) fn from_state(st: &State, engine: &Engine) -> Option<Self> {
        if st.n_cal == 0 || st.class.len() != st.k {
            return None;
        }
        let per_class: Vec<Calibration> = st
            .class
            .iter()
            .map(|h| Calibration::from_hist(h, st.n_cal, &engine.edges))
            .collect();
        let classes: Vec<usize> = match engine.config.cece_classes {
            CeceClasses::All => (0..st.k).collect(),
            CeceClasses::UpToMaxLabel => {
                // Hits of class c = voxels of the region labelled c (in any slot).
                let max = st
                    .class
                    .iter()
                    .rposition(|h| h.hits.iter().any(|&x| x > 0))?;
                (0..=max).collect()
            }
        };
        let cece = classes.iter().map(|&c| per_class[c].ece).sum::<f64>() / classes.len() as f64;
        Some(ClasswiseReport {
            cece,
            classes,
            per_class,
        })
    }
}

/// Streaming class-wise calibration (CECE and per-class ECE/MCE/reliability).
///
/// ```
/// use calseg_metrics::{ClasswiseCalibration, MetricConfig};
/// use ndarray::{array, Array2};
///
/// let p = Array2::from_shape_vec((2, 2), vec![0.8f32, 0.3, 0.2, 0.7]).unwrap();
/// let y = array![0u8, 1];
/// let mut acc = ClasswiseCalibration::new(MetricConfig::default().bins(10))?;
/// acc.update(p.view(), y.view())?;
/// let r = acc.finish()?;
/// // class 0: p = 0.8 (hit) and 0.3 (miss) in different bins: (0.2 + 0.3) / 2
/// assert!((r.per_class[0].ece - 0.25).abs() < 1e-6);
/// assert!((r.cece - 0.25).abs() < 1e-6);
/// # Ok::<(), calseg_metrics::MetricsError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ClasswiseCalibration {
    engine: Engine,
}

accumulator_common!(ClasswiseCalibration);

impl ClasswiseCalibration {
    /// A new, empty accumulator (uses `n_bins`, `edges`, `region`, `background`, `input`,
    /// `cece_classes`).
    ///
    /// # Errors
    /// [`MetricsError::InvalidConfig`] when the configuration does not validate.
    pub fn new(config: MetricConfig) -> Result<Self, MetricsError> {
        Ok(ClasswiseCalibration {
            engine: Engine::new(
                config,
                Needs {
                    top: false,
                    classwise: true,
                    overlap: false,
                    scores: false,
                },
            )?,
        })
    }

    /// The metrics of everything accumulated so far.
    ///
    /// # Errors
    /// [`MetricsError::Empty`] when no voxel of the region has been accumulated.
    pub fn finish(&self) -> Result<ClasswiseReport, MetricsError> {
        self.engine
            .state
            .as_ref()
            .and_then(|s| ClasswiseReport::from_state(s, &self.engine))
            .ok_or_else(|| MetricsError::Empty {
                what: "class-wise calibration: no voxel in the region".into(),
            })
    }
}
