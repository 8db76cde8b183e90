//! # calseg-metrics — streaming calibration and overlap metrics for segmentation
//!
//! Calibration (ECE, MCE, RMSCE, ACE = average calibration error, class-wise ECE, reliability
//! diagrams, MONAI's per-class conventions in [`monai`]), proper scores
//! (Brier, NLL) and overlap (Dice, IoU, HD95) of a probability map against a label map,
//! computed in one pass, in parallel, over volumes of any size and any number of spatial
//! axes.
//!
//! * **Accumulators.** Every metric is an accumulator with `update(probs, labels)`,
//!   `merge(&other)` and `finish()`: a volume can be fed in chunks or case by case, and
//!   partial results from several shards or machines combine exactly (pooled bins,
//!   integer counts, f64 sums). [`Evaluator`] computes everything at once;
//!   [`TopLabelCalibration`], [`ClasswiseCalibration`], [`ProperScores`] and [`Overlap`]
//!   compute one family each. Per-case ("macro") averages: [`macro_average`].
//! * **Conventions are parameters** ([`MetricConfig`]): number of bins, bin edges exactly
//!   as `torch.linspace` makes them in float32, `[lo, hi)` / `(lo, hi]` / torchmetrics'
//!   extra bin ([`EdgeConvention`]), all voxels / foreground / ROI mask ([`Region`]), Dice of
//!   absent classes ([`EmptyDice`]), strictness about the input ([`InputMode`]). Each one is
//!   tested against torchmetrics, netcal, MONAI and the SVLS/MbLS/NACL evaluation code
//!   (`tests/reference/`).
//! * **Inputs** ([`Input`]): probabilities `(K, *spatial)` as f32 or f64 ndarray views
//!   (any layout; standard layout is read in place, without a copy), labels `(*spatial)` of
//!   any integer type, an optional mask (`bool` or integer) and an optional hard
//!   prediction. Bad input is a typed [`MetricsError`], never a panic and never a silent
//!   fix: shape mismatches, `K < 2`, labels out of range, NaN/∞, probabilities that do not
//!   sum to 1.
//! * **Exact where it matters.** Counts are `u64`, sums f64: ECE over 10⁷ voxels of
//!   confidence `f32(0.95)` is `1 − f32(0.95)` to 1e-16 (torchmetrics, summing in f32, is
//!   off by ~1e-4). Results are identical, bit for bit, whatever the number of threads and
//!   the memory layout of the input.
//! * **Fast.** One pass over the data; on a 2-core machine the top-label ECE of a
//!   BraTS-sized volume (4 × 240 × 240 × 155 f32, 143 MB) takes about as long as reading
//!   it, and all metrics together a few times that (`benches/RESULTS.md` of the
//!   repository), against 0.3–1.3 s for torchmetrics, numpy or netcal.
//!
//! ```
//! use calseg_metrics::{EdgeConvention, Evaluator, MetricConfig, Region};
//! use ndarray::{Array3, Array4};
//!
//! // A tiny 3-D case: K = 3 classes, 2×3×4 voxels, "network" 80 % sure of the truth.
//! let labels = Array3::from_shape_fn((2, 3, 4), |(i, j, k)| ((i + j + k) % 3) as u8);
//! let probs = Array4::from_shape_fn((3, 2, 3, 4), |(c, i, j, k)| {
//!     if c == labels[[i, j, k]] as usize { 0.8f32 } else { 0.1 }
//! });
//!
//! // MbLS/NACL protocol: 15 right-closed bins over foreground voxels.
//! let mut ev = Evaluator::new(MetricConfig::mbls_nacl())?;
//! ev.update(probs.view(), labels.view())?; // call again for more data, or merge()
//! let r = ev.finish()?;
//! assert_eq!(r.n_voxels, 16); // voxels labelled 1 or 2
//! assert!((r.ece - 0.2).abs() < 1e-6); // always right, 80 % confident
//! assert_eq!(r.dice, vec![1.0, 1.0, 1.0]);
//! assert_eq!(r.reliability.len(), 15);
//!
//! // Same data, torchmetrics' conventions, every voxel.
//! let tm = MetricConfig::default().edges(EdgeConvention::Torchmetrics).region(Region::All);
//! let r = calseg_metrics::evaluate(probs.view(), labels.view(), &tm)?;
//! assert_eq!(r.reliability.len(), 16); // torchmetrics' extra bin for confidence 1.0
//! # Ok::<(), calseg_metrics::MetricsError>(())
//! ```
//!
//! ## How it is computed
//! Voxels are cut into fixed blocks (parallel tasks) and chunks of 2048 voxels; per chunk
//! one loop over the channels finds the confidence and the argmax, validates the input,
//! accumulates Brier and NLL, and bins every score. Histograms keep two "hot" rows (bin 0
//! without a hit, the last bin with a hit: most voxels of a segmentation) in vector lanes
//! and scatter the rest into four interleaved copies. On x86-64 with AVX2 the loop runs as
//! hand-written AVX2 code chosen at run time; elsewhere as portable code. Both do the same
//! arithmetic in the same order and give identical results. Details: [`edges`] (binning),
//! [`ece`] and [`classwise`] (formulas), [`scores`] (Brier, NLL precision), [`overlap`]
//! (Dice/IoU), [`evaluator`] (micro and macro aggregation).
//!
//! **Several raters** ([`raters`]): ECE, Brier and NLL against the rater distribution
//! (soft targets), per-rater Dice and the generalised energy distance (GED) of the
//! multi-rater literature (LIDC-IDRI, QUBIQ).
//!
//! ## Dependencies
//! - `ndarray`: the n-d arrays and views every input comes as (the de-facto standard in
//!   Rust, zero-copy views of any layout).
//! - `rayon`: data parallelism over voxel blocks (work stealing, deterministic results
//!   because blocks are combined in a fixed order), and the per-line passes of the exact
//!   distance transform in [`hd95`].
//! - `thiserror`: the [`MetricsError`] type with messages, without hand-written `Display`.
//! - Feature `serde` only: `serde`, to serialise reports and configurations.
//! - Feature `plot` only: `plotters` (the Rust plotting library; default features off, just
//!   its pure-Rust bitmap and SVG backends and the `ab_glyph` text renderer), `png` (encodes
//!   the rendered bitmap), and `dejavu` (the DejaVu Sans font faces as bytes, embedded so that
//!   PNG rendering needs no system font library — no fontconfig, no freetype). DejaVu fonts
//!   are under the Bitstream Vera Fonts license with DejaVu's changes in the public domain
//!   (free to use, embed and redistribute); the `dejavu` crate's code is MIT/Apache-2.0.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod classwise;
pub mod config;
pub mod ece;
pub mod edges;
mod engine;
pub mod error;
pub mod evaluator;
pub mod hd95;
pub mod input;
pub mod monai;
pub mod overlap;
#[cfg(feature = "plot")]
#[cfg_attr(docsrs, doc(cfg(feature = "plot")))]
pub mod plot;
pub mod raters;
pub mod reliability;
pub mod scores;
pub mod scoring;
#[cfg(target_arch = "x86_64")]
mod simd;

pub use classwise::{ClasswiseCalibration, ClasswiseReport};
pub use config::{CeceClasses, EmptyDice, InputMode, MetricConfig, Region};
pub use ece::{Calibration, TopLabelCalibration};
pub use edges::{BinEdges, EdgeConvention};
pub use error::MetricsError;
pub use evaluator::{Evaluator, MacroReport, Report, evaluate, macro_average};
pub use hd95::{euclidean_distance_transform, hd95_per_class};
pub use input::{Input, Label, MaskValue, Probability};
pub use monai::MonaiCalibration;
pub use overlap::{
    MAX_HARD_CLASSES, Overlap, OverlapReport, dice_from_counts, hard_overlap, iou_from_counts,
    nanmean,
};
pub use reliability::ReliabilityBin;
pub use scores::{ProperScores, Scores};
pub use scoring::{
    CaseScore, HEADLINE_METRICS, ScoreSpec, ScoreSummary, Scorer, argmax, foreground_mean,
};
