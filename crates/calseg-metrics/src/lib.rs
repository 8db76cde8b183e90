//! calseg-metrics (under construction: modules are being filled in)

pub mod error;
pub mod hd95;
pub mod reliability;

pub use error::MetricsError;
pub use hd95::{euclidean_distance_transform, hd95_per_class};
pub use reliability::ReliabilityBin;
