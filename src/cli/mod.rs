//! Subcommands of the `calseg` program, one file each.

pub mod bench;
pub mod calibrate;
pub mod eval;
pub mod experiment;
pub mod info;
pub mod predict;
pub mod train;
pub mod vls;

/// What a subcommand can fail with. Bad input (a file that cannot be read, shapes that
/// disagree, an invalid option value) exits with status 2, as the CLI contract says;
/// anything else exits with status 1.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The user's input is wrong: the message names the file and the problem.
    #[error("{0}")]
    BadInput(String),
    /// Something failed that is not the input's fault (e.g. writing an output).
    #[error("{0}")]
    Failed(String),
    /// A library error, kept whole; [`calseg::Error::is_bad_input`] decides its status.
    #[error(transparent)]
    Lib(#[from] calseg::Error),
}

impl CliError {
    /// Process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::BadInput(_) => 2,
            CliError::Failed(_) => 1,
            CliError::Lib(e) if e.is_bad_input() => 2,
            CliError::Lib(_) => 1,
        }
    }
}

/// Result of a subcommand.
pub type CliResult = Result<(), CliError>;

/// `--device cpu|cuda[:N]`, shared by every command that trains or predicts
/// ([`calseg::device`]).
#[derive(clap::Args, Debug, Clone)]
pub struct DeviceArg {
    /// Where the networks run: cpu, cuda or cuda:N (CUDA needs a build with
    /// `--features cuda`; see the README).
    #[arg(long, default_value = "cpu", value_name = "cpu|cuda[:N]")]
    pub device: String,
}

impl DeviceArg {
    /// Opens the device (exit 2 with a clear message when it is not available).
    pub fn open(&self) -> Result<candle_core::Device, CliError> {
        let spec: calseg::device::DeviceSpec = self.device.parse()?;
        Ok(spec.open()?)
    }
}
