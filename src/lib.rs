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

pub use calseg_io as io;
pub use calseg_metrics as metrics;
pub use calseg_seg as seg;
pub use calseg_vls as vls;
