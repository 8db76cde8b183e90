//! The one error type of the crate. Every variant names the file (or the dataset
//! case) it is about, so that a message printed by the CLI tells the user which
//! input to fix and what is wrong with it.

use std::path::{Path, PathBuf};

/// Why a label value was rejected by [`crate::read_labels`] or a dataset check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelProblem {
    /// NaN or ±Inf.
    NotFinite,
    /// A float with a fractional part (e.g. 1.5): not a class index.
    NotIntegral,
    /// Below zero: class indices start at 0.
    Negative,
    /// Above `u32::MAX`.
    TooLarge,
}

impl std::fmt::Display for LabelProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LabelProblem::NotFinite => "is not finite (NaN or Inf)",
            LabelProblem::NotIntegral => "is not an integer",
            LabelProblem::Negative => "is negative",
            LabelProblem::TooLarge => "is larger than 4294967295",
        })
    }
}

/// Everything that can go wrong while reading or writing images and datasets.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// The operating system refused an operation (open, read, write, rename…).
    #[error("{}: cannot {op}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was attempted ("read", "create", "write", "rename to target"…).
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A gzip stream that ends early or whose data or checksum is damaged.
    #[error("{}: truncated or corrupt gzip data: {source}", path.display())]
    Gzip {
        /// The file.
        path: PathBuf,
        /// What flate2 reported.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a NIfTI-1 file: wrong `sizeof_hdr`, wrong magic, too short for a header.
    #[error("{}: not a NIfTI-1 file: {reason}", path.display())]
    NotNifti {
        /// The file.
        path: PathBuf,
        /// What gave it away.
        reason: String,
    },
    /// A NIfTI header field that makes the file unreadable (bad `dim`, `vox_offset`, …).
    #[error("{}: invalid NIfTI header: {reason}", path.display())]
    BadHeader {
        /// The file.
        path: PathBuf,
        /// Which field and why.
        reason: String,
    },
    /// The voxel type is not one this crate reads (complex, RGB, float128, …).
    #[error("{}: unsupported data type {name} (code {code})", path.display())]
    UnsupportedDatatype {
        /// The file.
        path: PathBuf,
        /// The format's code for the type (NIfTI `datatype`, or 0 where there is none).
        code: i32,
        /// Human-readable name of the type.
        name: String,
    },
    /// The header's dimensions need a different number of bytes than the file holds.
    #[error(
        "{}: data size does not match the dimensions: shape {shape:?} of {dtype} needs {expected} bytes, the file has {found}",
        path.display()
    )]
    DataSize {
        /// The file.
        path: PathBuf,
        /// The shape the header declares.
        shape: Vec<usize>,
        /// The declared element type.
        dtype: String,
        /// Bytes the shape needs.
        expected: u64,
        /// Bytes available.
        found: u64,
    },
    /// A malformed `.npy` file.
    #[error("{}: invalid .npy file: {reason}", path.display())]
    Npy {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A malformed `.safetensors` file.
    #[error("{}: invalid .safetensors file: {reason}", path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A malformed or unsupported PNG.
    #[error("{}: cannot decode PNG: {reason}", path.display())]
    Png {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file extension is not one of the supported formats.
    #[error(
        "{}: unsupported file type (expected .nii, .nii.gz, .npy, .safetensors or .png)",
        path.display()
    )]
    UnknownFormat {
        /// The file.
        path: PathBuf,
    },
    /// A safetensors file with several tensors and none named as asked.
    #[error("{}: {reason}; tensors in the file: {names:?}", path.display())]
    TensorChoice {
        /// The file.
        path: PathBuf,
        /// Why no tensor could be picked.
        reason: String,
        /// Names of the tensors present.
        names: Vec<String>,
    },
    /// The array is readable but does not have the shape or type the caller needs
    /// (e.g. a 3D file given where 4D probabilities are expected).
    #[error("{}: {reason}", path.display())]
    Unexpected {
        /// The file.
        path: PathBuf,
        /// What was expected and what was found.
        reason: String,
    },
    /// A voxel of a label map that is not a valid class index.
    #[error("{}: label value {value} at index {index:?} {problem}", path.display())]
    BadLabel {
        /// The file.
        path: PathBuf,
        /// The offending value (after `scl_slope`/`scl_inter`).
        value: f64,
        /// Its index in the array.
        index: Vec<usize>,
        /// Why it is rejected.
        problem: LabelProblem,
    },
    /// `dataset.json` is missing, not JSON, or lacks required keys.
    #[error("{}: invalid dataset.json: {reason}", path.display())]
    DatasetJson {
        /// The `dataset.json` file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A case of a dataset folder is inconsistent or incomplete.
    #[error("dataset case {case:?} ({}): {reason}", path.display())]
    Case {
        /// The case identifier (e.g. `"BRATS_001"`).
        case: String,
        /// The file (or folder) concerned.
        path: PathBuf,
        /// What is wrong: missing channel, shape or affine mismatch, undeclared label…
        reason: String,
    },
    /// The caller passed arrays or parameters that cannot be honoured
    /// (e.g. writing probabilities that are not `(K, *spatial)`).
    #[error("{}: {reason}", path.display())]
    InvalidInput {
        /// The file being written or read, or a short description of the input.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = IoError> = std::result::Result<T, E>;

impl IoError {
    /// The file or folder this error is about.
    pub fn path(&self) -> &Path {
        match self {
            IoError::Io { path, .. }
            | IoError::Gzip { path, .. }
            | IoError::NotNifti { path, .. }
            | IoError::BadHeader { path, .. }
            | IoError::UnsupportedDatatype { path, .. }
            | IoError::DataSize { path, .. }
            | IoError::Npy { path, .. }
            | IoError::Safetensors { path, .. }
            | IoError::Png { path, .. }
            | IoError::UnknownFormat { path }
            | IoError::TensorChoice { path, .. }
            | IoError::Unexpected { path, .. }
            | IoError::BadLabel { path, .. }
            | IoError::DatasetJson { path, .. }
            | IoError::Case { path, .. }
            | IoError::InvalidInput { path, .. } => path,
        }
    }

    pub(crate) fn io(path: &Path, op: &'static str, source: std::io::Error) -> Self {
        IoError::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    }

    pub(crate) fn invalid(path: &Path, reason: impl Into<String>) -> Self {
        IoError::InvalidInput {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    pub(crate) fn unexpected(path: &Path, reason: impl Into<String>) -> Self {
        IoError::Unexpected {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}
