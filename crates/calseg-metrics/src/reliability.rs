//! Reliability-diagram data: one entry per confidence bin.

/// One bin of a reliability diagram.
///
/// `confidence` and `accuracy` are the means of the confidences and of the correctness
/// indicator over the `count` samples that fell in `[lower, upper)` (or `(lower, upper]`,
/// depending on the edge convention). For an empty bin (`count == 0`) both are `NaN`:
/// an empty bin has no mean, and plots and JSON (`null`) must not show it as 0.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ReliabilityBin {
    /// Lower bin edge.
    pub lower: f64,
    /// Upper bin edge.
    pub upper: f64,
    /// Number of samples in the bin.
    pub count: u64,
    /// Mean confidence of the samples in the bin (`NaN` when empty).
    pub confidence: f64,
    /// Fraction of the samples in the bin that are correct (`NaN` when empty).
    pub accuracy: f64,
}
