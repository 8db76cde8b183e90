//! Segmentation losses, one file each.
//!
//! Every loss takes logits `(n, k, …)` (k classes, any number of spatial axes) and
//! returns a scalar tensor that candle can differentiate.

mod soft_ce;

pub use soft_ce::{soft_ce, soft_ce_stock};
