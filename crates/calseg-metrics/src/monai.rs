//! MONAI's calibration conventions: `monai.metrics.CalibrationErrorMetric` (MONAI 1.6),
//! reproduced from the class-wise histograms of an [`Evaluator`](crate::Evaluator).
//!
//! MONAI scores each image `i` and each class channel `c` **one-vs-rest**: the
//! confidence is `p_c`, the outcome `[y == c]`, over every voxel of the image. With
//! [`MetricConfig::monai`](crate::MetricConfig::monai) (20 bins, edges
//! `linspace(0, 1 + ε, 21)`, `(lo, hi]` bins with `0` in bin 0:
//! [`EdgeConvention::Monai`]), `n_b` voxels in bin `b`, `acc_b` the mean of `[y == c]`
//! and `conf_b` the mean of `p_c` there, `N = Σ_b n_b` (every voxel of the image):
//!
//! ```text
//! ECE_ic        = Σ_b n_b · |acc_b − conf_b| / N                 "expected"
//! MCE_ic        = max_{b: n_b > 0} |acc_b − conf_b|              "maximum"
//! average_CE_ic = mean_{b: n_b > 0} |acc_b − conf_b|             "average" (MONAI's "ACE")
//! ```
//!
//! Empty bins are `NaN` and skipped (`nansum`, `nanmean`, max over the non-empty ones);
//! a channel without any voxel would be `NaN`. These are the [`Report`]'s `class_ece`,
//! `class_mce` and `class_ace`. MONAI then reduces the `(image, channel)` table
//! (`MetricReduction`, `NaN`s skipped):
//!
//! * `"mean"` (MONAI's default): per image the mean over its channels, then the mean over
//!   images → [`MonaiCalibration::ece`], [`mce`](MonaiCalibration::mce),
//!   [`average_ce`](MonaiCalibration::average_ce);
//! * `"mean_batch"`: per channel the mean over images → the `*_per_class` fields.
//!
//! `include_background = false` drops channel 0 first (MONAI's `ignore_background`).
//!
//! **Differences, on purpose.** Bin sums are f64 here (MONAI sums in float32, which
//! drifts by ~1e-7 relative on large images); an all-`NaN` reduction is `NaN` here where
//! MONAI returns `0.0` (cannot happen for an image with voxels); f64 input is binned in
//! f64 against the float32 edges, where MONAI first rounds it to float32 (identical for
//! float32 input).
//!
//! "ACE" in MONAI (and `ace` in calseg's JSON) is this **average** calibration error, not
//! the *adaptive* calibration error of Nixon et al. (equal-mass bins), which calseg does
//! not compute.

use crate::edges::EdgeConvention;
use crate::overlap::nanmean;
use crate::{MetricsError, Report};

/// MONAI's calibration errors of a set of images (cases), reduced as MONAI reduces them.
///
/// ```
/// use calseg_metrics::{Evaluator, MetricConfig, MonaiCalibration};
/// use ndarray::{array, Array2};
///
/// // One image of 4 voxels, 2 classes; p_1 = 0.2, 0.2, 0.7, 1.0 and y = 0, 1, 1, 1.
/// let p = Array2::from_shape_vec((2, 4), vec![0.8f32, 0.8, 0.3, 0.0, 0.2, 0.2, 0.7, 1.0])?;
/// let y = array![0u8, 1, 1, 1];
/// let mut ev = Evaluator::new(MetricConfig::monai())?;
/// ev.update(p.view(), y.view())?;
/// let m = MonaiCalibration::from_reports(&[ev.finish()?], true)?;
/// // Channel 1, 20 bins: {0.2, 0.2} in bin 3 (acc 1/2), {0.7} in bin 13, {1.0} in bin 19.
/// // ECE = (2·0.3 + 0.3 + 0) / 4, MCE = 0.3, average = (0.3 + 0.3 + 0) / 3.
/// assert!((m.ece_per_class[1] - 0.225).abs() < 1e-7);
/// assert!((m.mce_per_class[1] - 0.3).abs() < 1e-7);
/// assert!((m.average_ce_per_class[1] - 0.2).abs() < 1e-7);
/// // Channel 0 is the mirror image (p_0 = 1 − p_1 against [y == 0]): same errors.
/// assert!((m.ece - 0.225).abs() < 1e-7);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MonaiCalibration {
    /// Number of images (reports) reduced.
    pub n_images: usize,
    /// Whether channel 0 was kept (MONAI's `include_background`, default `true`).
    pub include_background: bool,
    /// The class channels scored (`0..K`, or `1..K` without the background).
    pub channels: Vec<usize>,
    /// ECE, MONAI reduction `"mean"` (per image over channels, then over images).
    pub ece: f64,
    /// MCE, reduction `"mean"`.
    pub mce: f64,
    /// Average calibration error (MONAI's "ACE"), reduction `"mean"`.
    pub average_ce: f64,
    /// ECE per channel of `channels`, reduction `"mean_batch"` (mean over images).
    pub ece_per_class: Vec<f64>,
    /// MCE per channel, reduction `"mean_batch"`.
    pub mce_per_class: Vec<f64>,
    /// Average calibration error per channel, reduction `"mean_batch"`.
    pub average_ce_per_class: Vec<f64>,
}

impl MonaiCalibration {
    /// Reduces the per-image, per-class calibration errors of `reports` (one per image,
    /// each made with [`EdgeConvention::Monai`] bins over every voxel, e.g. by an
    /// [`Evaluator`](crate::Evaluator) with [`MetricConfig::monai`](crate::MetricConfig::monai))
    /// as MONAI does.
    ///
    /// # Errors
    /// [`MetricsError::Empty`] for no report; [`MetricsError::ClassCountMismatch`] for
    /// reports with different `K`; [`MetricsError::InvalidConfig`] for a report made with
    /// other bin edges or over a region smaller than the image (MONAI has neither).
    pub fn from_reports(
        reports: &[Report],
        include_background: bool,
    ) -> Result<Self, MetricsError> {
        let first = reports.first().ok_or_else(|| MetricsError::Empty {
            what: "MONAI calibration of no image".into(),
        })?;
        let k = first.n_classes;
        for r in reports {
            if r.n_classes != k {
                return Err(MetricsError::ClassCountMismatch {
                    expected: k,
                    got: r.n_classes,
                });
            }
            if r.edges != EdgeConvention::Monai {
                return Err(MetricsError::InvalidConfig(format!(
                    "MONAI's calibration needs the monai bin edges, the report has {}",
                    r.edges
                )));
            }
            if r.n_voxels != r.n_total {
                return Err(MetricsError::InvalidConfig(format!(
                    "MONAI's calibration scores every voxel; the report scored {} of {}",
                    r.n_voxels, r.n_total
                )));
            }
        }
        let channels: Vec<usize> = (usize::from(!include_background)..k).collect();
        let table = |f: fn(&Report) -> &Vec<f64>| -> Vec<Vec<f64>> {
            reports
                .iter()
                .map(|r| {
                    channels
                        .iter()
                        .map(|&c| f(r).get(c).copied().unwrap_or(f64::NAN))
                        .collect()
                })
                .collect()
        };
        let (ece, mce, ace) = (
            table(|r| &r.class_ece),
            table(|r| &r.class_mce),
            table(|r| &r.class_ace),
        );
        Ok(MonaiCalibration {
            n_images: reports.len(),
            include_background,
            ece: reduce_mean(&ece),
            mce: reduce_mean(&mce),
            average_ce: reduce_mean(&ace),
            ece_per_class: reduce_mean_batch(&ece, channels.len()),
            mce_per_class: reduce_mean_batch(&mce, channels.len()),
            average_ce_per_class: reduce_mean_batch(&ace, channels.len()),
            channels,
        })
    }
}

/// MONAI's `"mean"`: per image (row) the mean of its non-`NaN` values, then the mean of
/// the rows that had one (`NaN` when none did).
fn reduce_mean(table: &[Vec<f64>]) -> f64 {
    nanmean(table.iter().map(|row| nanmean(row.iter().copied())))
}

/// MONAI's `"mean_batch"`: per channel (column) the mean of its non-`NaN` values.
fn reduce_mean_batch(table: &[Vec<f64>], n_channels: usize) -> Vec<f64> {
    (0..n_channels)
        .map(|c| {
            nanmean(
                table
                    .iter()
                    .map(|row| row.get(c).copied().unwrap_or(f64::NAN)),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reductions_skip_nan_as_monai() {
        let t = vec![
            vec![0.1, f64::NAN, 0.3],
            vec![f64::NAN, f64::NAN, f64::NAN],
            vec![0.5, 0.5, 0.2],
        ];
        // Row means 0.2, (skipped), 0.4 → 0.3.
        assert!((reduce_mean(&t) - 0.3).abs() < 1e-15);
        let b = reduce_mean_batch(&t, 3);
        assert!((b[0] - 0.3).abs() < 1e-15);
        assert_eq!(b[1], 0.5);
        assert!((b[2] - 0.25).abs() < 1e-15);
        assert!(reduce_mean(&[vec![f64::NAN]]).is_nan());
    }
}
