//! Proper scoring rules: Brier score and negative log-likelihood, over the voxels of the
//! region.
//!
//! ```text
//! Brier = (1/N) Σ_i Σ_k (p_ik − [y_i == k])²
//! NLL   = (1/N) Σ_i −ln max(p_{i,y_i}, floor)       floor = MetricConfig::nll_floor (1e-12)
//! ```
//!
//! Brier terms are computed and summed in f64. The NLL multiplies the clamped `p_y` (exact
//! in f64) into running products whose exponent is moved into an integer every 16 factors,
//! taking one `ln` per 512 voxels instead of one per voxel; the absolute error of the mean
//! NLL is ≈ 1e-16 (relative error ≈ 1e-16 / NLL).

use ndarray::{ArrayView, Dimension};

use crate::ece::accumulator_common;
use crate::engine::{Engine, Needs, State};
use crate::input::{Input, Label, Probability};
use crate::{MetricConfig, MetricsError};

/// Result of [`ProperScores`].
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Scores {
    /// Voxels scored.
    pub n_voxels: u64,
    /// Mean multi-class Brier score (in `[0, 2]`).
    pub brier: f64,
    /// Mean negative log-likelihood of the true class (nats).
    pub nll: f64,
}

impl Scores {
    pub(crate) fn from_state(st: &State) -> Option<Self> {
        (st.n_cal > 0).then(|| Scores {
            n_voxels: st.n_cal,
            brier: st.brier / st.n_cal as f64,
            nll: st.nll / st.n_cal as f64,
        })
    }
}

/// Streaming Brier score and NLL.
///
/// ```
/// use calseg_metrics::{MetricConfig, ProperScores};
/// use ndarray::{array, Array2};
///
/// let p = Array2::from_shape_vec((2, 2), vec![0.75f32, 0.5, 0.25, 0.5]).unwrap();
/// let y = array![0u8, 1];
/// let mut acc = ProperScores::new(MetricConfig::default())?;
/// acc.update(p.view(), y.view())?;
/// let s = acc.finish()?;
/// assert!((s.brier - (0.125 + 0.5) / 2.0).abs() < 1e-12);
/// assert!((s.nll - (-(0.75f64.ln()) - 0.5f64.ln()) / 2.0).abs() < 1e-12);
/// # Ok::<(), calseg_metrics::MetricsError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ProperScores {
    engine: Engine,
}

accumulator_common!(ProperScores);

impl ProperScores {
    /// A new, empty accumulator (uses `region`, `background`, `input`, `nll_floor`).
    ///
    /// # Errors
    /// [`MetricsError::InvalidConfig`] when the configuration does not validate.
    pub fn new(config: MetricConfig) -> Result<Self, MetricsError> {
        Ok(ProperScores {
            engine: Engine::new(
                config,
                Needs {
                    top: false,
                    classwise: false,
                    overlap: false,
                    scores: true,
                },
            )?,
        })
    }

    /// The scores of everything accumulated so far.
    ///
    /// # Errors
    /// [`MetricsError::Empty`] when no voxel of the region has been accumulated.
    pub fn finish(&self) -> Result<Scores, MetricsError> {
        self.engine
            .state
            .as_ref()
            .and_then(Scores::from_state)
            .ok_or_else(|| MetricsError::Empty {
                what: "Brier/NLL: no voxel in the region".into(),
            })
    }
}
