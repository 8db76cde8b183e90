//! `calseg eval`: calibration and overlap metrics of one probability map.

use super::{CliError, CliResult};
use clap::Args;
use std::path::PathBuf;

/// Arguments of `calseg eval` (names are a contract: see README).
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Probabilities: .npy (K, *spatial), .safetensors (`probs`), .nii/.nii.gz 4D (classes last).
    #[arg(long)]
    pub probs: PathBuf,
    /// Integer label map: .npy or .nii/.nii.gz.
    #[arg(long)]
    pub labels: PathBuf,
}

/// Runs `calseg eval`.
pub fn run(args: EvalArgs) -> CliResult {
    Err(CliError::Failed(format!(
        "calseg eval is not implemented yet ({})",
        args.probs.display()
    )))
}
