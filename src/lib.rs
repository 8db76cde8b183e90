//! # calseg — calibrated medical image segmentation
//!
//! The facade of the calseg workspace: it re-exports the four crates so that one
//! dependency gives a user everything.
//!
//! | module | crate | job |
//! |---|---|---|
//! | [`metrics`] | `calseg-metrics` | ECE, MCE, class-wise ECE, Brier, NLL, Dice… as streaming accumulators |
//! | [`io`] | `calseg-io` | NIfTI, safetensors, npy, PNG, dataset folders |
//! | [`seg`] | `calseg-seg` | networks, calibration losses, training |
//! | [`vls`] | `calseg-vls` | the variational label smoother and the `Y_s` mix |
//!
//! ```
//! use calseg::metrics::{evaluate, MetricConfig};
//! use ndarray::{array, Array2};
//!
//! // 2 classes × 3 voxels, against labels [0, 1, 1].
//! let p = Array2::from_shape_vec((2, 3), vec![0.9f32, 0.3, 0.4, 0.1, 0.7, 0.6]).unwrap();
//! let r = evaluate(p.view(), array![0u8, 1, 1].view(), &MetricConfig::default())?;
//! assert_eq!(r.n_voxels, 3);
//! assert!((r.accuracy - 1.0).abs() < 1e-12);
//! # Ok::<(), calseg::metrics::MetricsError>(())
//! ```
//!
//! ## Dependencies of the program, and why
//! - `clap` (derive): the de-facto Rust argument parser; typed flags, `--help` for free,
//!   and value enums that make the CLI contract (`--edges left|right|torchmetrics`, …)
//!   checkable at parse time.
//! - `serde_json`: the `--json` outputs, which Python colleagues read with `json.load`.
//! - `thiserror`: the CLI's own error type, which maps bad input to exit status 2.
//! - `ndarray`: the array type every crate of the workspace exchanges.

pub use calseg_io as io;
pub use calseg_metrics as metrics;
pub use calseg_metrics::{ScoreSpec, ScoreSummary};
pub use calseg_seg as seg;
pub use calseg_seg::score::{EvalCase, score_model};
pub use calseg_vls as vls;
pub use calseg_vls::pipeline::{Calseg, CalsegConfig, CalsegRun};
/// The candle device type every model and pipeline takes (`Device::Cpu`, or
/// `Device::new_cuda(0)` in a CUDA build), re-exported so one dependency is enough.
pub use candle_core::Device;

pub mod device;
pub mod error;
pub mod experiment;
pub mod report;

pub use error::{Error, Result};
