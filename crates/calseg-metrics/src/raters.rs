//! Evaluation against several raters: calibration against the rater distribution,
//! per-rater Dice, and the generalised energy distance (GED).
//!
//! With `R` rater label maps `Y_1 … Y_R` of a case, the **rater distribution** of voxel
//! `i` is the mean of their one-hot maps, `q_ik = (1/R) Σ_r [Y_r,i == k]`
//! ([`rater_distribution`]). Against it, with `p_i` the predicted probabilities
//! ([`SoftCalibration`]):
//!
//! ```text
//! Brier_soft = (1/N) Σ_i Σ_k (p_ik − q_ik)²
//! NLL_soft   = (1/N) Σ_i −Σ_k q_ik · ln max(p_ik, floor)        floor = MetricConfig::nll_floor
//! ECE_soft   = Σ_b (n_b / N) · |acc_b − conf_b|,   conf_i = max_k p_ik,   acc_i = q_{i, argmax_k p_ik}
//! ```
//!
//! Brier and NLL are the multi-class Brier score and the cross-entropy with a soft
//! target (both proper scores; with one rater they are the usual hard-label Brier and
//! NLL). The soft ECE bins voxels by confidence as the top-label ECE does (same edges,
//! [`crate::edges`]) and replaces the correctness indicator by its expectation under the
//! rater distribution: `acc_i` is the probability that a randomly drawn rater agrees
//! with the prediction (Guo et al. 2017 for the ECE; the expectation over annotators
//! as in the multi-rater calibration studies of Jungo et al. 2020, "Analyzing the
//! quality and challenges of uncertainty estimations for brain tumor segmentation",
//! and Mehrtash et al. 2020, "Confidence calibration and predictive uncertainty
//! estimation for deep medical image segmentation"). With `R = 1` it is the ECE.
//!
//! [`RaterAgreement`] compares hard segmentations:
//!
//! * **Per-rater Dice**: the prediction (arg-max) against each rater `r`, Dice per class
//!   pooled over the cases that have rater `r` ([`crate::overlap`]'s counts and
//!   conventions), the foreground mean per rater ([`crate::scoring::foreground_mean`]),
//!   then the mean, minimum and maximum over raters.
//! * **GED** (Kohl et al. 2018, "A Probabilistic U-Net for Segmentation of Ambiguous
//!   Images", NeurIPS; the metric of LIDC-IDRI and QUBIQ comparisons), per case with
//!   prediction samples `S_1 … S_n` and raters `Y_1 … Y_m`:
//!
//!   ```text
//!   D²_GED = 2·E[d(S, Y)] − E[d(S, S')] − E[d(Y, Y')]
//!   d(a, b) = 1 − mean_{c ∈ foreground} IoU_c(a, b),    IoU_c = 1 when c is in neither
//!   ```
//!
//!   Expectations are means over **all** ordered pairs, the pairs of a sample with
//!   itself included (as in the reference code of Kohl et al. and of Monteiro et al.
//!   2020, Stochastic Segmentation Networks), so `E[d(S, S')] = 0` for a deterministic
//!   net that gives one sample (its arg-max). `d` is Kohl et al.'s `1 − IoU` of the
//!   foreground for two classes, and the mean over foreground classes of SSN's code for
//!   more (with `d(∅, ∅) = 0`: two empty masks agree). The reported GED is the mean of
//!   the per-case values.
//!
//! Every accumulator has `update`, `merge` and `finish`, like the rest of the crate;
//! [`RaterScorer`] feeds both from probabilities and the raters' maps.

use ndarray::{ArrayD, ArrayViewD, Dimension, IxDyn, Zip};

use crate::config::EmptyDice;
use crate::edges::BinEdges;
use crate::overlap::{dice_from_counts, iou_from_counts};
use crate::scoring::{argmax, foreground_mean};
use crate::{MetricConfig, MetricsError, ReliabilityBin};

/// The rater distribution `(K, *spatial)`: the per-voxel mean of the raters' one-hot
/// maps, `q_k = (1/R) Σ_r [Y_r == k]` (the soft label of a multi-rater case).
///
/// ```
/// use ndarray::{ArrayD, IxDyn};
/// let r = |v: Vec<u32>| ArrayD::from_shape_vec(IxDyn(&[2]), v).unwrap();
/// let (a, b) = (r(vec![0, 1]), r(vec![1, 1]));
/// let q = calseg_metrics::raters::rater_distribution(&[a.view(), b.view()], 2)?;
/// assert_eq!(q.into_raw_vec_and_offset().0, vec![0.5, 0.0, 0.5, 1.0]); // (K, x)
/// # Ok::<(), calseg_metrics::MetricsError>(())
/// ```
///
/// # Errors
/// No rater, raters of different shapes, `classes < 2`, or a label `≥ classes`.
pub fn rater_distribution(
    raters: &[ArrayViewD<'_, u32>],
    classes: usize,
) -> Result<ArrayD<f32>, MetricsError> {
    let first = check_raters(raters)?;
    if classes < 2 {
        return Err(MetricsError::TooFewClasses { n_classes: classes });
    }
    let mut shape = vec![classes];
    shape.extend_from_slice(first.shape());
    let n = first.len();
    let mut q = vec![0.0f32; classes * n];
    // One count per voxel and class, then one division: exact multiples of 1/R.
    for r in raters {
        check_labels(r, classes, "raters")?;
        for (i, &l) in r.iter().enumerate() {
            q[l as usize * n + i] += 1.0;
        }
    }
    let w = raters.len() as f32;
    q.iter_mut().for_each(|v| *v /= w);
    let q = ArrayD::from_shape_vec(IxDyn(&shape), q)
        .map_err(|e| MetricsError::Invalid(e.to_string()))?;
    Ok(q)
}

/// The first rater, after checking there is one and all have its shape.
fn check_raters<'a, 'b>(
    raters: &'b [ArrayViewD<'a, u32>],
) -> Result<&'b ArrayViewD<'a, u32>, MetricsError> {
    let first = raters
        .first()
        .ok_or_else(|| MetricsError::Invalid("no rater label map given".into()))?;
    if let Some(r) = raters.iter().find(|r| r.shape() != first.shape()) {
        return Err(MetricsError::ShapeMismatch {
            what: "raters",
            expected: first.shape().to_vec(),
            got: r.shape().to_vec(),
        });
    }
    Ok(first)
}

fn check_labels(
    labels: &ArrayViewD<'_, u32>,
    classes: usize,
    what: &'static str,
) -> Result<(), MetricsError> {
    match labels.indexed_iter().find(|(_, l)| **l as usize >= classes) {
        Some((idx, &l)) => Err(MetricsError::LabelOutOfRange {
            what,
            index: idx.slice().to_vec(),
            label: i128::from(l),
            n_classes: classes,
        }),
        None => Ok(()),
    }
}

/// Result of [`SoftCalibration`].
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SoftCalibrationReport {
    /// Voxels scored (`N`).
    pub n_voxels: u64,
    /// ECE against the soft targets (see the module docs).
    pub ece: f64,
    /// Mean multi-class Brier score against the soft targets (in `[0, 2]`).
    pub brier: f64,
    /// Mean soft cross-entropy `−Σ_k q_k ln max(p_k, floor)` (nats).
    pub nll: f64,
    /// One entry per reported bin; `accuracy` is the mean `q` at the arg-max.
    pub reliability: Vec<ReliabilityBin>,
}

/// Streaming ECE, Brier score and NLL of probabilities against soft targets `q` (e.g.
/// the rater distribution), over every voxel or the voxels of a mask. Uses the
/// configuration's bins, edge convention and `nll_floor`.
///
/// ```
/// use calseg_metrics::{MetricConfig, raters::SoftCalibration};
/// use ndarray::{ArrayD, IxDyn};
/// let p = ArrayD::from_shape_vec(IxDyn(&[2, 1]), vec![0.8f32, 0.2]).unwrap();
/// let q = ArrayD::from_shape_vec(IxDyn(&[2, 1]), vec![0.5f32, 0.5]).unwrap();
/// let mut acc = SoftCalibration::new(MetricConfig::default())?;
/// acc.update(p.view(), q.view(), None)?;
/// let r = acc.finish()?;
/// assert!((r.ece - 0.3).abs() < 1e-6); // 80 % sure, half the raters agree
/// assert!((r.brier - 0.18).abs() < 1e-6); // 0.3² + 0.3²
/// assert!((r.nll - (-(0.5 * 0.8f64.ln() + 0.5 * 0.2f64.ln()))).abs() < 1e-6);
/// # Ok::<(), calseg_metrics::MetricsError>(())
/// ```
#[derive(Debug, Clone)]
pub struct SoftCalibration {
    config: MetricConfig,
    edges: BinEdges,
    classes: Option<usize>,
    n: u64,
    brier: f64,
    nll: f64,
    count: Vec<u64>,
    conf: Vec<f64>,
    acc: Vec<f64>,
}

impl SoftCalibration {
    /// A new, empty accumulator (uses `n_bins`, `edges`, `nll_floor`).
    ///
    /// # Errors
    /// [`MetricsError::InvalidConfig`] when the configuration does not validate.
    pub fn new(config: MetricConfig) -> Result<Self, MetricsError> {
        config.validate()?;
        let edges = BinEdges::new(config.n_bins, config.edges)?;
        let nb = edges.n_reported_bins();
        Ok(SoftCalibration {
            config,
            edges,
            classes: None,
            n: 0,
            brier: 0.0,
            nll: 0.0,
            count: vec![0; nb],
            conf: vec![0.0; nb],
            acc: vec![0.0; nb],
        })
    }

    /// Accumulates probabilities `p` `(K, *spatial)` against targets `q` of the same
    /// shape, inside `mask` `(*spatial)` when given. On error nothing is accumulated.
    ///
    /// # Errors
    /// Shapes that differ, `K < 2` or a `K` different from earlier updates, a value of
    /// `p` or `q` that is not finite or outside `[0, 1]`.
    pub fn update(
        &mut self,
        p: ArrayViewD<'_, f32>,
        q: ArrayViewD<'_, f32>,
        mask: Option<ArrayViewD<'_, bool>>,
    ) -> Result<(), MetricsError> {
        if p.shape() != q.shape() {
            return Err(MetricsError::ShapeMismatch {
                what: "soft targets",
                expected: p.shape().to_vec(),
                got: q.shape().to_vec(),
            });
        }
        let k = p.shape().first().copied().unwrap_or(0);
        if k < 2 {
            return Err(MetricsError::TooFewClasses { n_classes: k });
        }
        if let Some(c) = self.classes.filter(|&c| c != k) {
            return Err(MetricsError::ClassCountMismatch {
                expected: c,
                got: k,
            });
        }
        if let Some(m) = &mask
            && m.shape() != &p.shape()[1..]
        {
            return Err(MetricsError::ShapeMismatch {
                what: "mask",
                expected: p.shape()[1..].to_vec(),
                got: m.shape().to_vec(),
            });
        }
        for a in [&p, &q] {
            if let Some((idx, &v)) = a
                .indexed_iter()
                .find(|(_, v)| !(v.is_finite() && (0.0..=1.0).contains(*v)))
            {
                let (class, index) = (idx[0], idx.slice()[1..].to_vec());
                return Err(if v.is_finite() {
                    MetricsError::ProbabilityOutOfRange {
                        index,
                        class,
                        value: f64::from(v),
                    }
                } else {
                    MetricsError::NonFinite {
                        index,
                        class,
                        value: f64::from(v),
                    }
                });
            }
        }
        self.classes = Some(k);
        let floor = self.config.nll_floor;
        // Voxels as columns of (K, n): standard-layout copies keep the loop simple.
        let n = p.len() / k;
        let p2 = p
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order((k, n))
            .map_err(|e| MetricsError::Invalid(e.to_string()))?;
        let q2 = q
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order((k, n))
            .map_err(|e| MetricsError::Invalid(e.to_string()))?;
        let m: Option<Vec<bool>> = mask.map(|m| m.iter().copied().collect());
        for i in 0..n {
            if m.as_ref().is_some_and(|m| !m[i]) {
                continue;
            }
            let (mut best, mut arg) = (f32::NEG_INFINITY, 0);
            let (mut brier, mut nll) = (0.0f64, 0.0f64);
            for c in 0..k {
                let (pc, qc) = (p2[[c, i]], q2[[c, i]]);
                if pc > best {
                    best = pc;
                    arg = c;
                }
                let d = f64::from(pc) - f64::from(qc);
                brier += d * d;
                if qc > 0.0 {
                    nll -= f64::from(qc) * f64::from(pc).max(floor).ln();
                }
            }
            self.n += 1;
            self.brier += brier;
            self.nll += nll;
            if let Some(b) = self.edges.bin_f32(best) {
                self.count[b] += 1;
                self.conf[b] += f64::from(best);
                self.acc[b] += f64::from(q2[[arg, i]]);
            }
        }
        Ok(())
    }

    /// Adds the sums of `other` (same configuration).
    ///
    /// # Errors
    /// [`MetricsError::ConfigMismatch`] or [`MetricsError::ClassCountMismatch`].
    pub fn merge(&mut self, other: &SoftCalibration) -> Result<(), MetricsError> {
        if self.config != other.config {
            return Err(MetricsError::ConfigMismatch {
                ours: format!("{:?}", self.config),
                theirs: format!("{:?}", other.config),
            });
        }
        if let (Some(a), Some(b)) = (self.classes, other.classes)
            && a != b
        {
            return Err(MetricsError::ClassCountMismatch {
                expected: a,
                got: b,
            });
        }
        self.classes = self.classes.or(other.classes);
        self.n += other.n;
        self.brier += other.brier;
        self.nll += other.nll;
        for b in 0..self.count.len() {
            self.count[b] += other.count[b];
            self.conf[b] += other.conf[b];
            self.acc[b] += other.acc[b];
        }
        Ok(())
    }

    /// The scores of everything accumulated so far.
    ///
    /// # Errors
    /// [`MetricsError::Empty`] when no voxel has been accumulated.
    pub fn finish(&self) -> Result<SoftCalibrationReport, MetricsError> {
        if self.n == 0 {
            return Err(MetricsError::Empty {
                what: "soft-target calibration: no voxel".into(),
            });
        }
        let nf = self.n as f64;
        let mut ece = 0.0;
        let mut reliability = Vec::with_capacity(self.count.len());
        for b in 0..self.count.len() {
            let (lower, upper) = self.edges.bounds(b);
            let c = self.count[b];
            ece += (self.acc[b] - self.conf[b]).abs();
            let (confidence, accuracy) = if c > 0 {
                (self.conf[b] / c as f64, self.acc[b] / c as f64)
            } else {
                (f64::NAN, f64::NAN)
            };
            reliability.push(ReliabilityBin {
                lower,
                upper,
                count: c,
                confidence,
                accuracy,
            });
        }
        Ok(SoftCalibrationReport {
            n_voxels: self.n,
            ece: ece / nf,
            brier: self.brier / nf,
            nll: self.nll / nf,
            reliability,
        })
    }
}

/// `(tp, fp, fn)` per class of `pred` against `truth` (same shape, labels `< k`).
fn confusion(pred: &ArrayViewD<'_, u32>, truth: &ArrayViewD<'_, u32>, k: usize) -> Vec<[u64; 3]> {
    let mut c = vec![[0u64; 3]; k];
    Zip::from(pred).and(truth).for_each(|&a, &b| {
        let (a, b) = (a as usize, b as usize);
        if a == b {
            c[a][0] += 1;
        } else {
            c[a][1] += 1;
            c[b][2] += 1;
        }
    });
    c
}

/// The GED distance `d(a, b) = 1 − mean_{c ≠ background} IoU_c(a, b)`, with
/// `IoU_c = 1` when class `c` is in neither map (see the module docs); symmetric.
///
/// ```
/// use ndarray::{ArrayD, IxDyn};
/// let m = |v: Vec<u32>| ArrayD::from_shape_vec(IxDyn(&[4]), v).unwrap();
/// let (a, b) = (m(vec![1, 1, 0, 0]), m(vec![0, 1, 1, 0]));
/// let d = calseg_metrics::raters::iou_distance(&a.view(), &b.view(), 2, Some(0))?;
/// assert!((d - (1.0 - 1.0 / 3.0)).abs() < 1e-12);
/// let empty = m(vec![0; 4]);
/// assert_eq!(calseg_metrics::raters::iou_distance(&empty.view(), &empty.view(), 2, Some(0))?, 0.0);
/// # Ok::<(), calseg_metrics::MetricsError>(())
/// ```
///
/// # Errors
/// Shapes that differ, or a label `≥ classes`.
pub fn iou_distance(
    a: &ArrayViewD<'_, u32>,
    b: &ArrayViewD<'_, u32>,
    classes: usize,
    background: Option<usize>,
) -> Result<f64, MetricsError> {
    if a.shape() != b.shape() {
        return Err(MetricsError::ShapeMismatch {
            what: "segmentations",
            expected: a.shape().to_vec(),
            got: b.shape().to_vec(),
        });
    }
    check_labels(a, classes, "segmentation")?;
    check_labels(b, classes, "segmentation")?;
    Ok(distance(&confusion(a, b, classes), background))
}

fn distance(conf: &[[u64; 3]], background: Option<usize>) -> f64 {
    let iou: Vec<f64> = conf
        .iter()
        .map(|&[tp, fp, fn_]| iou_from_counts(tp, fp, fn_, EmptyDice::One))
        .collect();
    let m = foreground_mean(&iou, background);
    // No foreground class at all (K = 1 with a background): nothing to disagree on.
    if m.is_nan() { 0.0 } else { 1.0 - m }
}

/// Result of [`RaterAgreement`].
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RaterAgreementReport {
    /// Cases accumulated.
    pub n_cases: u64,
    /// Mean over cases of `D²_GED`.
    pub ged: f64,
    /// Mean over cases of `E[d(S, Y)]`.
    pub ged_cross: f64,
    /// Mean over cases of `E[d(S, S')]` (0 for one sample per case).
    pub ged_samples: f64,
    /// Mean over cases of `E[d(Y, Y')]` (the raters' own diversity).
    pub ged_raters: f64,
    /// Per rater `r`: the foreground-mean Dice of the prediction against rater `r`
    /// (counts pooled over the cases that have rater `r`).
    pub dice_per_rater: Vec<f64>,
    /// NaN-skipping mean of `dice_per_rater`.
    pub dice_per_rater_mean: f64,
    /// Minimum of `dice_per_rater` (`NaN` if none is defined).
    pub dice_per_rater_min: f64,
    /// Maximum of `dice_per_rater` (`NaN` if none is defined).
    pub dice_per_rater_max: f64,
}

/// Streaming per-rater Dice and GED of hard segmentations against raters (see the
/// module docs); uses the configuration's `background` and `empty_dice`.
///
/// ```
/// use calseg_metrics::{MetricConfig, raters::RaterAgreement};
/// use ndarray::{ArrayD, IxDyn};
/// let m = |v: Vec<u32>| ArrayD::from_shape_vec(IxDyn(&[4]), v).unwrap();
/// let (y1, y2) = (m(vec![1, 1, 0, 0]), m(vec![1, 1, 1, 0]));
/// let mut acc = RaterAgreement::new(MetricConfig::default(), 2)?;
/// acc.update(&[y1.view()], &[y1.view(), y2.view()])?; // the prediction is rater 1
/// let r = acc.finish()?;
/// assert_eq!(r.dice_per_rater, vec![1.0, 0.8]);
/// // d(S,Y1) = 0, d(S,Y2) = 1/3; E[d(S,Y)] = 1/6, E[d(Y,Y')] = (0 + 1/3 + 1/3 + 0)/4.
/// assert!((r.ged - (2.0 / 6.0 - 1.0 / 6.0)).abs() < 1e-12);
/// # Ok::<(), calseg_metrics::MetricsError>(())
/// ```
#[derive(Debug, Clone)]
pub struct RaterAgreement {
    config: MetricConfig,
    classes: usize,
    n_cases: u64,
    ged: f64,
    cross: f64,
    samples: f64,
    raters: f64,
    /// `(tp, fp, fn)` per class, per rater index.
    per_rater: Vec<Vec<[u64; 3]>>,
}

impl RaterAgreement {
    /// A new, empty accumulator for label maps with values `0..classes`.
    ///
    /// # Errors
    /// [`MetricsError::InvalidConfig`] for an invalid configuration,
    /// [`MetricsError::TooFewClasses`] for `classes < 2`.
    pub fn new(config: MetricConfig, classes: usize) -> Result<Self, MetricsError> {
        config.validate()?;
        if classes < 2 {
            return Err(MetricsError::TooFewClasses { n_classes: classes });
        }
        Ok(RaterAgreement {
            config,
            classes,
            n_cases: 0,
            ged: 0.0,
            cross: 0.0,
            samples: 0.0,
            raters: 0.0,
            per_rater: Vec::new(),
        })
    }

    /// Accumulates one case: prediction samples `S` (a deterministic net: its one
    /// arg-max; per-rater Dice uses the first sample) and the raters `Y`, all of one
    /// shape. On error nothing is accumulated.
    ///
    /// # Errors
    /// No sample or no rater, shapes that differ, a label `≥ classes`.
    pub fn update(
        &mut self,
        samples: &[ArrayViewD<'_, u32>],
        raters: &[ArrayViewD<'_, u32>],
    ) -> Result<(), MetricsError> {
        let s0 = check_raters(samples)?;
        let y0 = check_raters(raters)?;
        if s0.shape() != y0.shape() {
            return Err(MetricsError::ShapeMismatch {
                what: "raters",
                expected: s0.shape().to_vec(),
                got: y0.shape().to_vec(),
            });
        }
        for s in samples {
            check_labels(s, self.classes, "pred")?;
        }
        for y in raters {
            check_labels(y, self.classes, "raters")?;
        }
        let (k, bg) = (self.classes, self.config.background);
        let d =
            |a: &ArrayViewD<'_, u32>, b: &ArrayViewD<'_, u32>| distance(&confusion(a, b, k), bg);
        // Mean over all ordered pairs; d(x, x) = 0 and d is symmetric.
        let pairs_mean = |xs: &[ArrayViewD<'_, u32>]| {
            let mut s = 0.0;
            for i in 0..xs.len() {
                for j in i + 1..xs.len() {
                    s += 2.0 * d(&xs[i], &xs[j]);
                }
            }
            s / (xs.len() * xs.len()) as f64
        };
        let mut cross = 0.0;
        for s in samples {
            for y in raters {
                cross += d(s, y);
            }
        }
        cross /= (samples.len() * raters.len()) as f64;
        let (ss, yy) = (pairs_mean(samples), pairs_mean(raters));
        self.ged += 2.0 * cross - ss - yy;
        self.cross += cross;
        self.samples += ss;
        self.raters += yy;
        self.n_cases += 1;
        if self.per_rater.len() < raters.len() {
            self.per_rater.resize(raters.len(), vec![[0; 3]; k]);
        }
        for (acc, y) in self.per_rater.iter_mut().zip(raters) {
            for (a, c) in acc.iter_mut().zip(confusion(s0, y, k)) {
                for t in 0..3 {
                    a[t] += c[t];
                }
            }
        }
        Ok(())
    }

    /// Adds the sums of `other` (same configuration and classes).
    ///
    /// # Errors
    /// [`MetricsError::ConfigMismatch`] or [`MetricsError::ClassCountMismatch`].
    pub fn merge(&mut self, other: &RaterAgreement) -> Result<(), MetricsError> {
        if self.config != other.config {
            return Err(MetricsError::ConfigMismatch {
                ours: format!("{:?}", self.config),
                theirs: format!("{:?}", other.config),
            });
        }
        if self.classes != other.classes {
            return Err(MetricsError::ClassCountMismatch {
                expected: self.classes,
                got: other.classes,
            });
        }
        self.n_cases += other.n_cases;
        self.ged += other.ged;
        self.cross += other.cross;
        self.samples += other.samples;
        self.raters += other.raters;
        if self.per_rater.len() < other.per_rater.len() {
            self.per_rater
                .resize(other.per_rater.len(), vec![[0; 3]; self.classes]);
        }
        for (a, b) in self.per_rater.iter_mut().zip(&other.per_rater) {
            for (x, y) in a.iter_mut().zip(b) {
                for t in 0..3 {
                    x[t] += y[t];
                }
            }
        }
        Ok(())
    }

    /// The scores of everything accumulated so far.
    ///
    /// # Errors
    /// [`MetricsError::Empty`] when no case has been accumulated.
    pub fn finish(&self) -> Result<RaterAgreementReport, MetricsError> {
        if self.n_cases == 0 {
            return Err(MetricsError::Empty {
                what: "rater agreement: no case".into(),
            });
        }
        let n = self.n_cases as f64;
        let dice_per_rater: Vec<f64> = self
            .per_rater
            .iter()
            .map(|counts| {
                let dice: Vec<f64> = counts
                    .iter()
                    .map(|&[tp, fp, fn_]| dice_from_counts(tp, fp, fn_, self.config.empty_dice))
                    .collect();
                foreground_mean(&dice, self.config.background)
            })
            .collect();
        let defined = || dice_per_rater.iter().copied().filter(|v| !v.is_nan());
        let (min, max) = if defined().next().is_some() {
            (
                defined().fold(f64::INFINITY, f64::min),
                defined().fold(f64::NEG_INFINITY, f64::max),
            )
        } else {
            (f64::NAN, f64::NAN)
        };
        Ok(RaterAgreementReport {
            n_cases: self.n_cases,
            ged: self.ged / n,
            ged_cross: self.cross / n,
            ged_samples: self.samples / n,
            ged_raters: self.raters / n,
            dice_per_rater_mean: crate::overlap::nanmean(dice_per_rater.iter().copied()),
            dice_per_rater_min: min,
            dice_per_rater_max: max,
            dice_per_rater,
        })
    }
}

/// Everything rater-based of a set of cases: [`SoftCalibration`] against the rater
/// distribution and [`RaterAgreement`] of the arg-max.
#[derive(Debug, Clone)]
pub struct RaterScorer {
    soft: SoftCalibration,
    agreement: RaterAgreement,
    classes: usize,
}

/// Result of [`RaterScorer`].
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RaterReport {
    /// Calibration against the rater distribution.
    pub soft: SoftCalibrationReport,
    /// Per-rater Dice and GED.
    pub agreement: RaterAgreementReport,
}

impl RaterReport {
    /// The headline numbers under their contract names (`ece_soft`, `brier_soft`,
    /// `nll_soft`, `ged`, `dice_per_rater_mean`, `dice_per_rater_min`,
    /// `dice_per_rater_max`), in that order.
    pub fn headline(&self) -> [(&'static str, f64); 7] {
        [
            ("ece_soft", self.soft.ece),
            ("brier_soft", self.soft.brier),
            ("nll_soft", self.soft.nll),
            ("ged", self.agreement.ged),
            ("dice_per_rater_mean", self.agreement.dice_per_rater_mean),
            ("dice_per_rater_min", self.agreement.dice_per_rater_min),
            ("dice_per_rater_max", self.agreement.dice_per_rater_max),
        ]
    }
}

impl RaterScorer {
    /// A new scorer for `classes` classes (bins, edges, `nll_floor`, `background`,
    /// `empty_dice` from `config`).
    ///
    /// # Errors
    /// As [`SoftCalibration::new`] and [`RaterAgreement::new`].
    pub fn new(config: MetricConfig, classes: usize) -> Result<Self, MetricsError> {
        Ok(RaterScorer {
            soft: SoftCalibration::new(config.clone())?,
            agreement: RaterAgreement::new(config, classes)?,
            classes,
        })
    }

    /// Scores one case: probabilities `(K, *spatial)` against the raters' maps; the
    /// calibration inside `mask` when given (overlap and GED use every voxel, as Dice
    /// does in [`crate::overlap`]).
    ///
    /// ```
    /// use calseg_metrics::{MetricConfig, raters::RaterScorer};
    /// use ndarray::{ArrayD, IxDyn};
    /// let y = ArrayD::from_shape_vec(IxDyn(&[3]), vec![0u32, 1, 1]).unwrap();
    /// let p = ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![1.0f32, 0.0, 0.0, 0.0, 1.0, 1.0]).unwrap();
    /// let mut s = RaterScorer::new(MetricConfig::default(), 2)?;
    /// s.update(p.view(), &[y.view(), y.view()], None)?;
    /// let r = s.finish()?;
    /// assert_eq!((r.soft.ece, r.agreement.ged, r.agreement.dice_per_rater_mean), (0.0, 0.0, 1.0));
    /// # Ok::<(), calseg_metrics::MetricsError>(())
    /// ```
    ///
    /// # Errors
    /// As [`rater_distribution`], [`SoftCalibration::update`] and
    /// [`RaterAgreement::update`]; probabilities with a `K` other than the scorer's.
    pub fn update(
        &mut self,
        probs: ArrayViewD<'_, f32>,
        raters: &[ArrayViewD<'_, u32>],
        mask: Option<ArrayViewD<'_, bool>>,
    ) -> Result<(), MetricsError> {
        let k = probs.shape().first().copied().unwrap_or(0);
        if k != self.classes {
            return Err(MetricsError::ClassCountMismatch {
                expected: self.classes,
                got: k,
            });
        }
        let q = rater_distribution(raters, k)?;
        let pred = argmax(probs.view());
        // Check the agreement first: it validates the label ranges and shapes against
        // the prediction, so a failed update leaves both accumulators untouched.
        let mut agreement = self.agreement.clone();
        agreement.update(&[pred.view()], raters)?;
        self.soft.update(probs, q.view(), mask)?;
        self.agreement = agreement;
        Ok(())
    }

    /// Adds another scorer's sums.
    ///
    /// # Errors
    /// As [`SoftCalibration::merge`] and [`RaterAgreement::merge`].
    pub fn merge(&mut self, other: &RaterScorer) -> Result<(), MetricsError> {
        let mut soft = self.soft.clone();
        soft.merge(&other.soft)?;
        self.agreement.merge(&other.agreement)?;
        self.soft = soft;
        Ok(())
    }

    /// The report of everything accumulated.
    ///
    /// # Errors
    /// [`MetricsError::Empty`] when nothing was accumulated.
    pub fn finish(&self) -> Result<RaterReport, MetricsError> {
        Ok(RaterReport {
            soft: self.soft.finish()?,
            agreement: self.agreement.finish()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(v: Vec<u32>, shape: &[usize]) -> ArrayD<u32> {
        ArrayD::from_shape_vec(IxDyn(shape), v).unwrap()
    }

    #[test]
    fn ged_identical_raters_perfect_prediction_is_zero() {
        let y = map(vec![0, 1, 1, 2, 2, 0], &[2, 3]);
        let mut acc = RaterAgreement::new(MetricConfig::default(), 3).unwrap();
        acc.update(&[y.view()], &[y.view(), y.view(), y.view()])
            .unwrap();
        let r = acc.finish().unwrap();
        assert_eq!(r.ged, 0.0);
        assert_eq!(r.dice_per_rater, vec![1.0; 3]);
        assert_eq!((r.dice_per_rater_min, r.dice_per_rater_max), (1.0, 1.0));
    }

    #[test]
    fn ged_hand_computed() {
        // Binary, 4 voxels. S = {1,1,0,0}; Y1 = {1,0,0,0}, Y2 = {0,0,1,1}.
        let s = map(vec![1, 1, 0, 0], &[4]);
        let y1 = map(vec![1, 0, 0, 0], &[4]);
        let y2 = map(vec![0, 0, 1, 1], &[4]);
        // d(S,Y1) = 1 − 1/2, d(S,Y2) = 1 − 0, d(Y1,Y2) = 1.
        let mut acc = RaterAgreement::new(MetricConfig::default(), 2).unwrap();
        acc.update(&[s.view()], &[y1.view(), y2.view()]).unwrap();
        let r = acc.finish().unwrap();
        assert!((r.ged_cross - 0.75).abs() < 1e-12);
        assert!((r.ged_raters - 0.5).abs() < 1e-12); // (0 + 1 + 1 + 0) / 4
        assert_eq!(r.ged_samples, 0.0);
        assert!((r.ged - (1.5 - 0.5)).abs() < 1e-12);
        // Dice vs Y1: 2·1/(2+1) = 2/3; vs Y2: 0.
        assert!((r.dice_per_rater[0] - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(r.dice_per_rater[1], 0.0);
        assert!((r.dice_per_rater_mean - 1.0 / 3.0).abs() < 1e-12);
        // Two samples: E[d(S,S')] over all ordered pairs = (0 + 1 + 1 + 0)/4 with S' = Y2.
        let mut two = RaterAgreement::new(MetricConfig::default(), 2).unwrap();
        two.update(&[s.view(), y2.view()], &[y1.view(), y2.view()])
            .unwrap();
        let r2 = two.finish().unwrap();
        assert!((r2.ged_samples - 0.5).abs() < 1e-12);
        // cross: d(S,Y1)=.5, d(S,Y2)=1, d(Y2,Y1)=1, d(Y2,Y2)=0 → 2.5/4.
        assert!((r2.ged - (2.0 * 0.625 - 0.5 - 0.5)).abs() < 1e-12);
        // Merge = one pass over both cases.
        let mut m = acc.clone();
        m.merge(&two).unwrap();
        let rm = m.finish().unwrap();
        assert_eq!(rm.n_cases, 2);
        assert!((rm.ged - (r.ged + r2.ged) / 2.0).abs() < 1e-12);
        // Both empty: distance 0.
        let e = map(vec![0; 4], &[4]);
        assert_eq!(iou_distance(&e.view(), &e.view(), 2, Some(0)).unwrap(), 0.0);
        assert_eq!(iou_distance(&e.view(), &s.view(), 2, Some(0)).unwrap(), 1.0);
    }

    #[test]
    fn soft_calibration_hand_computed_and_one_rater_is_hard() {
        // Voxel 1: p = (0.8, 0.2), q = (0.5, 0.5); voxel 2: p = (0.3, 0.7), q = (0, 1).
        let p = ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![0.8f32, 0.3, 0.2, 0.7]).unwrap();
        let q = ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![0.5f32, 0.0, 0.5, 1.0]).unwrap();
        let mut acc = SoftCalibration::new(MetricConfig::default().bins(10)).unwrap();
        acc.update(p.view(), q.view(), None).unwrap();
        let r = acc.finish().unwrap();
        let (p8, p7) = (f64::from(0.8f32), f64::from(0.7f32));
        let (p2, p3) = (f64::from(0.2f32), f64::from(0.3f32));
        // Different bins: |0.5 − 0.8| + |1 − 0.7|, over 2.
        assert!((r.ece - ((0.5 - p8).abs() + (1.0 - p7).abs()) / 2.0).abs() < 1e-9);
        let brier = (0.5 - p8).powi(2) + (0.5 - p2).powi(2) + p3.powi(2) + (1.0 - p7).powi(2);
        assert!((r.brier - brier / 2.0).abs() < 1e-9);
        let nll = -(0.5 * p8.ln() + 0.5 * p2.ln()) - p7.ln();
        assert!((r.nll - nll / 2.0).abs() < 1e-9);
        // Mask: only voxel 2.
        let mask = ArrayD::from_shape_vec(IxDyn(&[2]), vec![false, true]).unwrap();
        let mut m = SoftCalibration::new(MetricConfig::default().bins(10)).unwrap();
        m.update(p.view(), q.view(), Some(mask.view())).unwrap();
        assert!((m.finish().unwrap().nll + p7.ln()).abs() < 1e-9);

        // One rater: the soft scores are the crate's hard-label ECE, Brier and NLL.
        let y = map(vec![1, 0, 1, 1, 0, 2], &[6]);
        let probs = ArrayD::from_shape_vec(
            IxDyn(&[3, 6]),
            vec![
                0.2f32, 0.6, 0.1, 0.3, 0.9, 0.25, 0.7, 0.3, 0.1, 0.6, 0.05, 0.25, 0.1, 0.1, 0.8,
                0.1, 0.05, 0.5,
            ],
        )
        .unwrap();
        let cfg = MetricConfig::default();
        let q1 = rater_distribution(&[y.view()], 3).unwrap();
        let mut s = SoftCalibration::new(cfg.clone()).unwrap();
        s.update(probs.view(), q1.view(), None).unwrap();
        let soft = s.finish().unwrap();
        let hard = crate::evaluate(probs.view(), y.view(), &cfg).unwrap();
        assert!(
            (soft.ece - hard.ece).abs() < 1e-12,
            "{} {}",
            soft.ece,
            hard.ece
        );
        assert!((soft.brier - hard.brier).abs() < 1e-12);
        assert!((soft.nll - hard.nll).abs() < 1e-12);
    }

    #[test]
    fn bad_input_is_refused() {
        let a = map(vec![0, 1], &[2]);
        let b = map(vec![0, 1, 1], &[3]);
        assert!(matches!(
            rater_distribution(&[a.view(), b.view()], 2),
            Err(MetricsError::ShapeMismatch { .. })
        ));
        assert!(matches!(
            rater_distribution(&[a.view()], 1),
            Err(MetricsError::TooFewClasses { .. })
        ));
        let c = map(vec![0, 5], &[2]);
        assert!(matches!(
            rater_distribution(&[c.view()], 2),
            Err(MetricsError::LabelOutOfRange { .. })
        ));
        assert!(rater_distribution(&[], 2).is_err());
        let mut acc = RaterAgreement::new(MetricConfig::default(), 2).unwrap();
        assert!(acc.update(&[a.view()], &[b.view()]).is_err());
        assert!(acc.finish().is_err()); // nothing was accumulated
        let p = ArrayD::from_shape_vec(IxDyn(&[2, 1]), vec![f32::NAN, 0.5]).unwrap();
        let q = ArrayD::from_shape_vec(IxDyn(&[2, 1]), vec![0.5f32, 0.5]).unwrap();
        let mut s = SoftCalibration::new(MetricConfig::default()).unwrap();
        assert!(matches!(
            s.update(p.view(), q.view(), None),
            Err(MetricsError::NonFinite { .. })
        ));
        let mut scorer = RaterScorer::new(MetricConfig::default(), 3).unwrap();
        assert!(
            scorer
                .update(q.view(), &[map(vec![0], &[1]).view()], None)
                .is_err()
        );
    }
}
