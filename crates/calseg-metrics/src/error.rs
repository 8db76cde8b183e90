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

    /// The probabilities have fewer than two classes along axis 0 (or no axis 0 at all).
    #[error("need at least 2 classes along axis 0 of the probabilities, got {n_classes}")]
    TooFewClasses {
        /// Number of classes found.
        n_classes: usize,
    },
    /// A label (or a predicted label) is negative or not smaller than the number of classes.
    #[error("{what}: label {label} at voxel {index:?} is outside 0..{n_classes}")]
    LabelOutOfRange {
        /// Which input ("labels" or "pred").
        what: &'static str,
        /// Multi-index of the voxel (over the spatial axes).
        index: Vec<usize>,
        /// The offending value.
        label: i128,
        /// Number of classes `K`.
        n_classes: usize,
    },
    /// A probability (or logit) is NaN or infinite.
    #[error("probabilities: non-finite value {value} at class {class}, voxel {index:?}")]
    NonFinite {
        /// Multi-index of the voxel (over the spatial axes).
        index: Vec<usize>,
        /// Class (index along axis 0).
        class: usize,
        /// The offending value.
        value: f64,
    },
    /// A probability is negative or greater than 1.
    #[error("probabilities: value {value} at class {class}, voxel {index:?} is outside [0, 1]")]
    ProbabilityOutOfRange {
        /// Multi-index of the voxel (over the spatial axes).
        index: Vec<usize>,
        /// Class (index along axis 0).
        class: usize,
        /// The offending value.
        value: f64,
    },
    /// The probabilities of a voxel do not sum to 1 within the tolerance of
    /// [`InputMode::Probabilities`](crate::InputMode::Probabilities).
    #[error(
        "probabilities at voxel {index:?} sum to {sum}, not 1 within {tol} \
         (use InputMode::Renormalise or InputMode::Logits if that is intended)"
    )]
    NotNormalised {
        /// Multi-index of the voxel (over the spatial axes).
        index: Vec<usize>,
        /// The sum over classes.
        sum: f64,
        /// The tolerance in force.
        tol: f64,
    },
    /// [`InputMode::Renormalise`](crate::InputMode::Renormalise) met a voxel whose
    /// probabilities are all zero: it has no distribution to rescale.
    #[error("probabilities at voxel {index:?} are all zero: cannot renormalise")]
    ZeroSum {
        /// Multi-index of the voxel (over the spatial axes).
        index: Vec<usize>,
    },
    /// `finish()` was called on an accumulator that has seen no voxel (in its region).
    #[error("no voxel to score: {what}")]
    Empty {
        /// What was empty, in words.
        what: String,
    },
    /// Two accumulators with different configurations cannot be merged.
    #[error("cannot merge accumulators with different configurations: {ours} vs {theirs}")]
    ConfigMismatch {
        /// Configuration of the accumulator merged into (`Debug` form).
        ours: String,
        /// Configuration of the other accumulator (`Debug` form).
        theirs: String,
    },
    /// The number of classes differs from what the accumulator has already seen.
    #[error("number of classes changed: accumulator has {expected}, input has {got}")]
    ClassCountMismatch {
        /// Classes seen so far.
        expected: usize,
        /// Classes of the new input.
        got: usize,
    },
    /// A configuration value is invalid (e.g. zero bins, a negative tolerance).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The region is [`Region::Mask`](crate::Region::Mask) but no mask was given with
    /// the input.
    #[error("region is Mask but the input has no mask (use Input::with_mask)")]
    MissingMask,
    /// A mask was given but the region is not [`Region::Mask`](crate::Region::Mask); it
    /// would be ignored, so this is refused rather than silently dropped.
    #[error("a mask was given but the region is {region}; set Region::Mask to use it")]
    UnexpectedMask {
        /// The configured region, in words.
        region: String,
    },
}
