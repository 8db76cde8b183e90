//! calseg-metrics (under construction: modules are being filled in)
//!
//! ## Dependencies
//! - `ndarray` (n-d arrays and views), `rayon` (data parallelism, e.g. the per-line passes
//!   of the exact distance transform in [`hd95`]), `thiserror` (the [`MetricsError`] type).
//! - Feature `plot` only: `plotters` (the Rust plotting library; default features off, just
//!   its pure-Rust bitmap and SVG backends and the `ab_glyph` text renderer), `png` (encodes
//!   the rendered bitmap), and `dejavu` (the DejaVu Sans font faces as bytes, embedded so that
//!   PNG rendering needs no system font library — no fontconfig, no freetype). DejaVu fonts
//!   are under the Bitstream Vera Fonts license with DejaVu's changes in the public domain
//!   (free to use, embed and redistribute); the `dejavu` crate's code is MIT/Apache-2.0.

pub mod classwise;
pub mod config;
pub mod ece;
pub mod edges;
mod engine;
pub mod error;
pub mod evaluator;
pub mod hd95;
pub mod input;
pub mod overlap;
#[cfg(feature = "plot")]
pub mod plot;
pub mod reliability;
pub mod scores;
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
pub use overlap::{Overlap, OverlapReport, dice_from_counts, iou_from_counts, nanmean};
pub use reliability::ReliabilityBin;
pub use scores::{ProperScores, Scores};
