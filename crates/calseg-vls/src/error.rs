//! The typed errors of calseg-vls.

use calseg_io::IoError;
use calseg_seg::SegError;

/// What can go wrong in calseg-vls.
#[derive(Debug, thiserror::Error)]
pub enum VlsError {
    /// A configuration value is outside what is supported (checked before any work:
    /// `alpha` outside `[0, 1]`, `tau ≤ 0`, `samples = 0`, `dims = 4`, …).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Inputs whose shapes do not fit the model or each other (e.g. a label map whose
    /// spatial shape differs from the image's, a label ≥ the number of classes).
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// An error of the networks / losses crate.
    #[error(transparent)]
    Seg(#[from] SegError),
    /// An error raised by candle (shapes, dtypes, safetensors checkpoints…).
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    /// Reading or writing images, datasets or soft labels failed.
    #[error(transparent)]
    Io(#[from] IoError),
}

/// Result alias of calseg-vls.
pub type Result<T> = std::result::Result<T, VlsError>;

impl From<VlsError> for SegError {
    /// Errors crossing the [`calseg_seg::train::Trainable`] boundary: the trainer only
    /// knows [`SegError`]; the message is kept.
    fn from(e: VlsError) -> Self {
        match e {
            VlsError::Seg(e) => e,
            VlsError::Candle(e) => SegError::Candle(e),
            VlsError::Shape(m) => SegError::Shape(m),
            other => SegError::Config(other.to_string()),
        }
    }
}
