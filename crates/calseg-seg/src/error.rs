//! Typed errors of calseg-seg.

/// What can go wrong in calseg-seg.
#[derive(Debug, thiserror::Error)]
pub enum SegError {
    /// An error raised by candle (shape mismatch, dtype, device, I/O of safetensors...).
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    /// A configuration value is outside what is supported (e.g. `dims = 4`, `depth = 0`).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Tensor shapes do not fit together (e.g. input channels differ from the weight's).
    #[error("shape mismatch: {0}")]
    Shape(String),
}

/// Result alias of calseg-seg.
pub type Result<T> = std::result::Result<T, SegError>;
