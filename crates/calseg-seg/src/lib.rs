//! # calseg-seg — segmentation networks, calibration losses and training
//!
//! (docs in progress)

pub mod bench;
pub mod error;
pub mod init;
pub mod loss;
pub mod net;
pub mod ops;
pub mod optim;

pub use error::{Result, SegError};
