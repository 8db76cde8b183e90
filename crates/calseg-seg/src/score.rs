//! Scoring a model over cases: predict → probabilities → [`Scorer`] (calibration and
//! overlap over the region, ECE over the foreground, HD95 of the arg-max). The one path
//! the experiment, CALSeg's validation sweep and library users take (`calseg eval
//! --data` feeds stored probabilities to the same [`Scorer`]).
//!
//! ```
//! use calseg_metrics::{MetricConfig, ScoreSpec};
//! use calseg_seg::model::SegModel;
//! use calseg_seg::net::UNetConfig;
//! use calseg_seg::score::{EvalCase, score_model};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cfg = UNetConfig { in_channels: 1, classes: 3, base: 4, depth: 2, ..UNetConfig::default() };
//! let model = SegModel::new(&cfg, 0, &candle_core::Device::Cpu)?;
//! let case = calseg_io::phantom::generate(&Default::default(), 1)?.to_case("p");
//! let spec = ScoreSpec::new(MetricConfig::default()).hd95(true);
//! let summary = score_model(&model, &[EvalCase::new(&case)], &spec, None)?;
//! assert_eq!(summary.n_cases, 1);
//! assert!(summary.region.ece >= 0.0);
//! # Ok(()) }
//! ```

use crate::infer::{InferOptions, InferSpec, predict_logits, softmax_classes};
use crate::model::SegModel;
use crate::{Result, SegError};
use calseg_io::Case;
use calseg_metrics::{CaseScore, ScoreSpec, ScoreSummary, Scorer};
use ndarray::{ArrayD, ArrayViewD};

/// A case to score, with the mask of its evaluation region (when the spec's region is
/// [`calseg_metrics::Region::Mask`]).
#[derive(Debug, Clone)]
pub struct EvalCase<'a> {
    /// The case (image and labels).
    pub case: &'a Case,
    /// Region mask `(*spatial)`, `true` inside.
    pub mask: Option<ArrayViewD<'a, bool>>,
}

impl<'a> EvalCase<'a> {
    /// A case without a mask.
    pub fn new(case: &'a Case) -> Self {
        EvalCase { case, mask: None }
    }

    /// Every case of `cases`, without masks.
    pub fn all(cases: &'a [Case]) -> Vec<EvalCase<'a>> {
        cases.iter().map(EvalCase::new).collect()
    }

    /// With a region mask.
    pub fn with_mask(mut self, mask: ArrayViewD<'a, bool>) -> Self {
        self.mask = Some(mask);
        self
    }
}

/// Predicts `case` with `model` at `temperature` (`None`: the model's) and scores it into
/// `scorer`; returns the case's scores and its probabilities `(K, *spatial)`.
///
/// # Errors
/// [`SegError::Shape`] for a case without labels or that does not fit the model, and
/// metric errors (a mask of the wrong shape, labels out of range) as
/// [`SegError::Metrics`].
pub fn score_case(
    model: &SegModel,
    case: &EvalCase<'_>,
    scorer: &mut Scorer,
    temperature: Option<f64>,
) -> Result<(CaseScore, ArrayD<f32>)> {
    let labels = case.case.label.as_ref().ok_or_else(|| {
        SegError::Shape(format!(
            "case {}: no label map to score against",
            case.case.id
        ))
    })?;
    let opts = InferOptions {
        temperature,
        ..InferOptions::default()
    };
    let logits = predict_logits(model, &InferSpec::of(model), case.case.image.clone(), &opts)?;
    let probs = softmax_classes(logits, temperature.unwrap_or(model.temperature()))?;
    let score = scorer.update(
        probs.view(),
        labels.view(),
        case.mask.clone(),
        &case.case.geometry.spacing,
    )?;
    Ok((score, probs))
}

/// Scores `model` over `cases` (see the module docs) and returns the pooled scores.
///
/// # Errors
/// As [`score_case`]; [`SegError::Config`] for an invalid spec or no cases.
pub fn score_model(
    model: &SegModel,
    cases: &[EvalCase<'_>],
    spec: &ScoreSpec,
    temperature: Option<f64>,
) -> Result<ScoreSummary> {
    if cases.is_empty() {
        return Err(SegError::Config("no cases to score".into()));
    }
    let mut scorer = Scorer::new(spec.clone())?;
    for c in cases {
        score_case(model, c, &mut scorer, temperature)?;
    }
    Ok(scorer.finish()?)
}
