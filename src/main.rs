//! The `calseg` command-line program. Each subcommand lives in its own file under
//! `src/cli/`; this file only parses and dispatches.

mod cli;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Calibrated medical image segmentation: calibration metrics, label smoothing, training.
#[derive(Parser)]
#[command(name = "calseg", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure calibration (ECE, MCE, RMSCE, ACE, class-wise ECE, Brier, NLL) and
    /// overlap (Dice, IoU, HD95) of a probability map against a label map.
    Eval(cli::eval::EvalArgs),
    /// Print shape, data type, spacing, affine and value range of an image file
    /// (.nii, .nii.gz, .npy, .safetensors — each tensor —, .png).
    Info(cli::info::InfoArgs),
    /// Performance benchmarks (e.g. `calseg bench unet-step`: one U-Net training step).
    Bench(cli::bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Eval(args) => cli::eval::run(args),
        Command::Info(args) => cli::info::run(args),
        Command::Bench(args) => cli::bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("calseg: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
