//! One scoring path for a segmentation over a set of cases: probabilities → [`Evaluator`]
//! (the configured region, and the foreground) → HD95 of the arg-max, per case and
//! pooled.
//!
//! `calseg eval --data`, the experiment runner and library users all score through a
//! [`Scorer`], so every number of the project comes from one place:
//!
//! * **one arg-max** ([`argmax`]: the first maximal class wins ties, as in every
//!   calseg-metrics accumulator);
//! * **one foreground mean** ([`foreground_mean`]: the mean of the finite per-class values
//!   over the classes other than `MetricConfig::background`, which need not be 0);
//! * **one list of headline metric names** ([`HEADLINE_METRICS`]).
//!
//! Per case, [`Scorer::update`] returns that case's own [`CaseScore`]; [`Scorer::finish`]
//! gives the pooled reports (every voxel of every case in one histogram, "micro") and
//! the per-class HD95 averaged over the cases that have it (NaN-skipping), whose
//! foreground mean is `hd95_mean_fg`.
//!
//! ```
//! use calseg_metrics::scoring::{ScoreSpec, Scorer};
//! use calseg_metrics::MetricConfig;
//! use ndarray::{ArrayD, IxDyn};
//! // Two classes on a 4×4 image: left half class 0, right half class 1, confidence 0.9.
//! let labels = ArrayD::from_shape_fn(IxDyn(&[4, 4]), |i| (i[1] >= 2) as u32);
//! let probs = ArrayD::from_shape_fn(IxDyn(&[2, 4, 4]), |i| {
//!     if (i[2] >= 2) as usize == i[0] { 0.9f32 } else { 0.1 }
//! });
//! let mut scorer = Scorer::new(ScoreSpec::new(MetricConfig::default()).hd95(true))?;
//! let case = scorer.update(probs.view(), labels.view(), None, &[1.0, 1.0])?;
//! assert_eq!(case.region.dice, vec![1.0, 1.0]);
//! let all = scorer.finish()?;
//! assert!((all.region.ece - 0.1).abs() < 1e-6);   // confidence 0.9, accuracy 1
//! assert_eq!(all.hd95_mean_fg, Some(0.0));        // prediction = truth
//! # Ok::<(), calseg_metrics::MetricsError>(())
//! ```

use crate::input::{Input, Label, Probability};
use crate::{Evaluator, MetricConfig, MetricsError, Region, Report, hd95_per_class};
use ndarray::{ArrayD, ArrayViewD, Axis};

/// The headline numbers of a scored method, in report order (the keys of
/// `results.json`'s method objects and the columns of the results tables):
/// top-label ECE over the region, top-label ECE over foreground voxels, MCE, class-wise
/// ECE, ACE, Brier, NLL, mean foreground Dice, mean foreground HD95 (mm).
pub const HEADLINE_METRICS: [&str; 9] = [
    "ece",
    "ece_fg",
    "mce",
    "cece",
    "ace",
    "brier",
    "nll",
    "dice_mean_fg",
    "hd95_mean_fg",
];

/// Arg-max over axis 0 of `(K, *spatial)` → `(*spatial)`; the first maximal class wins
/// ties (NaN never wins), as in every calseg-metrics accumulator.
///
/// ```
/// use ndarray::{ArrayD, IxDyn};
/// let p = ArrayD::from_shape_vec(IxDyn(&[3, 2]), vec![0.2f32, 0.5, 0.5, 0.5, 0.3, 0.0]).unwrap();
/// assert_eq!(calseg_metrics::scoring::argmax(p.view()).into_raw_vec_and_offset().0, vec![1, 0]);
/// ```
pub fn argmax<T: Probability>(probs: ArrayViewD<'_, T>) -> ArrayD<u32> {
    if probs.ndim() == 0 || probs.shape()[0] == 0 {
        return ArrayD::zeros(probs.shape().get(1..).unwrap_or(&[]));
    }
    let mut best = probs.index_axis(Axis(0), 0).to_owned();
    let mut arg = ArrayD::<u32>::zeros(best.raw_dim());
    for (k, channel) in probs.axis_iter(Axis(0)).enumerate().skip(1) {
        ndarray::Zip::from(&mut best)
            .and(&mut arg)
            .and(&channel)
            .for_each(|b, a, &p| {
                if p > *b {
                    *b = p;
                    *a = k as u32;
                }
            });
    }
    arg
}

/// Mean of the finite values of `per_class` over the classes other than `background`
/// (`None`: over every class); `NaN` when there is none. The one foreground-mean rule of
/// the project (Dice, IoU, HD95; an absent class is `NaN` and an undefined HD95 `∞` or
/// `NaN`, both skipped).
///
/// ```
/// use calseg_metrics::scoring::foreground_mean;
/// assert_eq!(foreground_mean(&[0.9, 0.5, f64::NAN, 0.7], Some(0)), 0.6);
/// assert_eq!(foreground_mean(&[0.5, 0.9, 0.7], Some(1)), 0.6);
/// assert!(foreground_mean(&[1.0, f64::INFINITY], Some(0)).is_nan());
/// ```
pub fn foreground_mean(per_class: &[f64], background: Option<usize>) -> f64 {
    let (s, n) = per_class
        .iter()
        .enumerate()
        .filter(|&(c, v)| Some(c) != background && v.is_finite())
        .fold((0.0, 0usize), |(s, n), (_, v)| (s + v, n + 1));
    if n == 0 { f64::NAN } else { s / n as f64 }
}

/// How a [`Scorer`] scores: the metric configuration of the region (its `region`,
/// `background`, bins, edges, …) and whether HD95 is computed.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreSpec {
    /// Configuration of the region evaluator. With [`Region::Mask`] every update needs a
    /// mask; otherwise masks are refused.
    pub metrics: MetricConfig,
    /// Compute the per-class 95th-percentile Hausdorff distance of the arg-max (mm).
    pub with_hd95: bool,
}

impl Default for ScoreSpec {
    /// [`MetricConfig::default`] (15 left-closed bins, every voxel, background 0), no HD95.
    fn default() -> Self {
        ScoreSpec::new(MetricConfig::default())
    }
}

impl ScoreSpec {
    /// A spec with the given metric configuration and no HD95.
    pub fn new(metrics: MetricConfig) -> Self {
        ScoreSpec {
            metrics,
            with_hd95: false,
        }
    }

    /// With or without HD95.
    pub fn hd95(mut self, on: bool) -> Self {
        self.with_hd95 = on;
        self
    }

    /// The configuration of the foreground evaluator: the region's configuration with
    /// [`Region::Foreground`] and its background class (0 when it has none).
    pub fn foreground_config(&self) -> MetricConfig {
        let background = self.metrics.background.unwrap_or(0);
        self.metrics
            .clone()
            .region(Region::Foreground)
            .background(Some(background))
    }
}

/// The scores of one case.
#[derive(Debug, Clone)]
pub struct CaseScore {
    /// Every metric over the configured region.
    pub region: Report,
    /// Per-class HD95 (mm; `NaN`/`∞` where undefined) when the spec asks for it.
    pub hd95: Option<Vec<f64>>,
}

/// The pooled scores of every case.
#[derive(Debug, Clone)]
pub struct ScoreSummary {
    /// Cases scored.
    pub n_cases: usize,
    /// Every metric over the configured region, pooled over the cases.
    pub region: Report,
    /// Every metric over the foreground voxels (label ≠ background), pooled; its `ece` is
    /// the `ece_fg` of the reports.
    pub foreground: Report,
    /// Per-class HD95 (mm), the NaN-skipping mean over cases of the finite values.
    pub hd95: Option<Vec<f64>>,
    /// [`foreground_mean`] of `hd95`.
    pub hd95_mean_fg: Option<f64>,
}

/// Scores cases one by one into pooled region and foreground evaluators and HD95 sums
/// (see the [module documentation](self)).
#[derive(Debug, Clone)]
pub struct Scorer {
    spec: ScoreSpec,
    region: Evaluator,
    foreground: Evaluator,
    /// Per class: sum of the finite HD95 values and their number.
    hd95: Vec<(f64, usize)>,
    n_cases: usize,
}

impl Scorer {
    /// An empty scorer.
    ///
    /// # Errors
    /// [`MetricsError::InvalidConfig`] when the metric configuration does not validate.
    pub fn new(spec: ScoreSpec) -> Result<Self, MetricsError> {
        Ok(Scorer {
            region: Evaluator::new(spec.metrics.clone())?,
            foreground: Evaluator::new(spec.foreground_config())?,
            spec,
            hd95: Vec::new(),
            n_cases: 0,
        })
    }

    /// The spec.
    pub fn spec(&self) -> &ScoreSpec {
        &self.spec
    }

    /// Scores one case: probabilities `(K, *spatial)`, labels `(*spatial)`, the region
    /// mask `(*spatial)` (needed by, and only allowed with, [`Region::Mask`]) and the
    /// voxel spacing (mm, one per spatial axis; used by HD95). On error nothing is
    /// accumulated.
    ///
    /// # Errors
    /// As [`Evaluator::update_input`] and [`hd95_per_class`].
    pub fn update<T: Probability, L: Label>(
        &mut self,
        probs: ArrayViewD<'_, T>,
        labels: ArrayViewD<'_, L>,
        mask: Option<ArrayViewD<'_, bool>>,
        spacing: &[f64],
    ) -> Result<CaseScore, MetricsError> {
        let mut case = Evaluator::new(self.spec.metrics.clone())?;
        let input = Input::new(probs.view(), labels.view())?;
        let mut fg = Evaluator::new(self.spec.foreground_config())?;
        fg.update_input(&input)?;
        match mask {
            Some(m) => case.update_input(&input.with_mask(m)?)?,
            None => case.update_input(&input)?,
        }
        let region = case.finish()?;
        let hd95 = if self.spec.with_hd95 {
            let pred = argmax(probs.view());
            Some(hd95_per_class(
                pred.view(),
                labels.mapv(|l| l.to_class()).view(),
                region.n_classes,
                spacing,
            )?)
        } else {
            None
        };
        // Everything that can fail has run: accumulate.
        self.region.merge(&case)?;
        self.foreground.merge(&fg)?;
        if let Some(h) = &hd95 {
            self.add_hd95(h);
        }
        self.n_cases += 1;
        Ok(CaseScore { region, hd95 })
    }

    fn add_hd95(&mut self, per_class: &[f64]) {
        if self.hd95.len() < per_class.len() {
            self.hd95.resize(per_class.len(), (0.0, 0));
        }
        for (acc, &v) in self.hd95.iter_mut().zip(per_class) {
            if v.is_finite() {
                acc.0 += v;
                acc.1 += 1;
            }
        }
    }

    /// Adds everything `other` has scored (shards of a cohort combine exactly).
    ///
    /// # Errors
    /// [`MetricsError::ConfigMismatch`] for different specs, or as [`Evaluator::merge`].
    pub fn merge(&mut self, other: &Scorer) -> Result<(), MetricsError> {
        if self.spec != other.spec {
            return Err(MetricsError::ConfigMismatch {
                ours: format!("{:?}", self.spec),
                theirs: format!("{:?}", other.spec),
            });
        }
        self.region.merge(&other.region)?;
        self.foreground.merge(&other.foreground)?;
        if self.hd95.len() < other.hd95.len() {
            self.hd95.resize(other.hd95.len(), (0.0, 0));
        }
        for (a, b) in self.hd95.iter_mut().zip(&other.hd95) {
            a.0 += b.0;
            a.1 += b.1;
        }
        self.n_cases += other.n_cases;
        Ok(())
    }

    /// The pooled scores (does not consume the scorer).
    ///
    /// # Errors
    /// [`MetricsError::Empty`] when no case has been scored.
    pub fn finish(&self) -> Result<ScoreSummary, MetricsError> {
        let region = self.region.finish()?;
        let foreground = self.foreground.finish()?;
        let hd95 = self.spec.with_hd95.then(|| {
            let mut per_class: Vec<f64> = self
                .hd95
                .iter()
                .map(|&(s, n)| if n == 0 { f64::NAN } else { s / n as f64 })
                .collect();
            per_class.resize(region.n_classes, f64::NAN);
            per_class
        });
        let hd95_mean_fg = hd95
            .as_ref()
            .map(|h| foreground_mean(h, self.spec.metrics.background))
            .filter(|v| v.is_finite());
        Ok(ScoreSummary {
            n_cases: self.n_cases,
            region,
            foreground,
            hd95,
            hd95_mean_fg,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    fn case(shift: usize) -> (ArrayD<f32>, ArrayD<u32>) {
        let labels = ArrayD::from_shape_fn(IxDyn(&[6, 6]), |i| ((i[1] + shift) / 2 % 3) as u32);
        let probs = ArrayD::from_shape_fn(IxDyn(&[3, 6, 6]), |i| {
            let y = (i[2] + shift) / 2 % 3;
            let pred = if i[1] % 3 == 0 { (y + 1) % 3 } else { y };
            if i[0] == pred { 0.7 } else { 0.15 }
        });
        (probs, labels)
    }

    /// Scoring two cases in one scorer equals scoring them in two and merging; the
    /// foreground mean leaves out the configured background class (here 1, not 0).
    #[test]
    fn merge_equals_one_pass_and_background_is_respected() {
        let spec = ScoreSpec::new(MetricConfig::default().background(Some(1))).hd95(true);
        let (p0, l0) = case(0);
        let (p1, l1) = case(1);
        let mut one = Scorer::new(spec.clone()).unwrap();
        one.update(p0.view(), l0.view(), None, &[1.0, 1.0]).unwrap();
        one.update(p1.view(), l1.view(), None, &[1.0, 1.0]).unwrap();
        let (mut a, mut b) = (
            Scorer::new(spec.clone()).unwrap(),
            Scorer::new(spec).unwrap(),
        );
        a.update(p0.view(), l0.view(), None, &[1.0, 1.0]).unwrap();
        b.update(p1.view(), l1.view(), None, &[1.0, 1.0]).unwrap();
        a.merge(&b).unwrap();
        let (x, y) = (one.finish().unwrap(), a.finish().unwrap());
        assert_eq!(x.n_cases, 2);
        assert_eq!(x.region.dice, y.region.dice);
        assert!((x.region.ece - y.region.ece).abs() < 1e-12);
        assert!((x.foreground.ece - y.foreground.ece).abs() < 1e-12);
        assert_eq!(x.hd95, y.hd95);
        let d = &x.region.dice;
        assert!((x.region.dice_mean_fg - (d[0] + d[2]) / 2.0).abs() < 1e-12);
        let h = x.hd95.as_ref().unwrap();
        assert_eq!(x.hd95_mean_fg, Some((h[0] + h[2]) / 2.0));
        // A mask under a region that is not `Mask` is refused and nothing is accumulated.
        let m = ArrayD::from_elem(IxDyn(&[6, 6]), true);
        assert!(
            one.update(p0.view(), l0.view(), Some(m.view()), &[1.0, 1.0])
                .is_err()
        );
        assert_eq!(one.finish().unwrap().n_cases, 2);
    }
}
