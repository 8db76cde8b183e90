//! Typed errors of calseg-metrics.

/// What can go wrong when feeding data to a metric. Every variant says what was wrong
/// with the input; none of them is a panic.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// Probabilities `(K, *spatial)` and labels `(*spatial)` (or a mask) disagree in shape.
    #[error("shape mismatch: {what}: expected {expected:?}, got {got:?}")]
    ShapeMismatch {
        /// Which input disagrees (e.g. "labels", "mask").
        what: &'static str,
        /// The shape implied by the probabilities.
        expected: Vec<usize>,
        /// The shape given.
        got: Vec<usize>,
    },
    /// Anything else that is invalid about the input, described in words.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// An output file (e.g. a plot) could not be rendered or written. Nothing is left
    /// at `path` in that case (writes go to a temporary file that is renamed at the end).
    #[error("cannot write {}: {reason}", path.display())]
    Output {
        /// The file that was to be written.
        path: std::path::PathBuf,
        /// What went wrong (the I/O error, in words).
        reason: String,
    },
    /// Drawing a figure failed inside the plotting library (not an input problem).
    #[error("cannot render the figure: {0}")]
    Render(String),
}
