//! Typed errors of calseg-seg.

use std::path::PathBuf;

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
    /// Reading or writing images, soft labels or atomic files failed (the error names
    /// the file).
    #[error(transparent)]
    Io(#[from] calseg_io::IoError),
    /// A validation metric could not be computed.
    #[error("metrics: {0}")]
    Metrics(#[from] calseg_metrics::MetricsError),
    /// The training loss became NaN or infinite. Training stops; the last good
    /// checkpoint (if any) is left untouched.
    #[error(
        "the loss is not finite at step {step}{}",
        match checkpoint {
            Some(p) => format!("; the last good checkpoint is {}", p.display()),
            None => String::from(" (no checkpoint was written)"),
        }
    )]
    NanLoss {
        /// Optimiser step (0-based) whose loss was not finite.
        step: usize,
        /// The last good checkpoint, if one was written.
        checkpoint: Option<PathBuf>,
    },
    /// A checkpoint or model file is missing, unreadable, corrupt or does not fit the
    /// model.
    #[error("{}: {reason}", path.display())]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl SegError {
    /// A [`SegError::Checkpoint`] about `path`.
    pub fn checkpoint(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        SegError::Checkpoint {
            path: path.into(),
            reason: reason.to_string(),
        }
    }
}

/// Result alias of calseg-seg.
pub type Result<T> = std::result::Result<T, SegError>;
