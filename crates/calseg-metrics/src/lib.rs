//! calseg-metrics (under construction: modules are being filled in)

pub mod error;
pub mod reliability;

pub use error::MetricsError;
pub use reliability::ReliabilityBin;
