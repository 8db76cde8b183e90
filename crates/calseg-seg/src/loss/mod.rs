//! Segmentation losses, one file each.
//!
//! Every loss takes logits `(n, k, …)` (k classes, any number of spatial axes) and
//! returns a scalar tensor that candle can differentiate.

mod soft_ce;

pub use soft_ce::{soft_ce, soft_ce_stock};

use candle_core::Tensor;

/// A training loss of logits `(n, k, *spatial)` against target distributions of the same
/// shape (one-hot for hard labels, soft labels otherwise). Implemented by every method of
/// this module; the trainer only sees this trait.
pub trait SegLoss: Send + Sync + std::fmt::Debug {
    /// Scalar loss (a 0-d tensor candle can differentiate).
    fn forward(&self, logits: &Tensor, target: &Tensor) -> candle_core::Result<Tensor>;
}
