//! The error of the facade (the experiment runner, the CLI): the crates' own typed
//! errors, kept whole as sources, and the **one** rule that decides which of them are
//! the user's input's fault ([`Error::is_bad_input`]; the CLI exits 2 for those, 1 for
//! the rest).

use crate::experiment::SplitError;
use crate::report::ReportError;
use calseg_io::IoError;
use calseg_metrics::MetricsError;
use calseg_seg::SegError;
use calseg_vls::VlsError;

/// What can stop a calseg run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The data or the configuration is wrong, in words (names the file or key).
    #[error("{0}")]
    Input(String),
    /// A step failed for a reason of its own, in words.
    #[error("{0}")]
    Failed(String),
    /// Reading or writing a file, or a dataset folder.
    #[error(transparent)]
    Io(#[from] IoError),
    /// Networks, losses, training, inference.
    #[error(transparent)]
    Seg(#[from] SegError),
    /// The variational label smoother and the CALSeg pipeline.
    #[error(transparent)]
    Vls(#[from] VlsError),
    /// Metrics.
    #[error("metrics: {0}")]
    Metrics(#[from] MetricsError),
    /// A train/validation/test split that cannot be made.
    #[error(transparent)]
    Split(#[from] SplitError),
    /// Writing the report.
    #[error("report: {0}")]
    Report(#[from] ReportError),
    /// A tensor operation.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    /// An operating-system call on a path (creating a folder, …).
    #[error("{what}: {source}")]
    Os {
        /// What was being done, naming the path.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Result alias of the facade.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Whether the error is the input's fault: a file that cannot be read or does not
    /// parse, shapes or classes that disagree, an invalid option or configuration value
    /// (exit status 2). Failures of the run itself — a NaN loss, a failed write, a
    /// rendering error — are not (exit status 1).
    pub fn is_bad_input(&self) -> bool {
        match self {
            Error::Input(_) | Error::Io(_) | Error::Split(_) => true,
            Error::Failed(_) | Error::Report(_) | Error::Candle(_) | Error::Os { .. } => false,
            Error::Seg(e) => seg_is_bad_input(e),
            Error::Vls(e) => match e {
                VlsError::Config(_) | VlsError::Shape(_) | VlsError::Io(_) => true,
                VlsError::Seg(e) => seg_is_bad_input(e),
                VlsError::Candle(_) => false,
            },
            Error::Metrics(e) => metrics_is_bad_input(e),
        }
    }

    /// An [`Error::Os`] for `what` (naming the path).
    pub fn os(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Os {
            what: what.into(),
            source,
        }
    }
}

fn seg_is_bad_input(e: &SegError) -> bool {
    match e {
        SegError::Config(_)
        | SegError::Shape(_)
        | SegError::Io(_)
        | SegError::Checkpoint { .. } => true,
        SegError::Metrics(m) => metrics_is_bad_input(m),
        _ => false,
    }
}

fn metrics_is_bad_input(e: &MetricsError) -> bool {
    !matches!(e, MetricsError::Output { .. } | MetricsError::Render(_))
}
