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
    /// CALSeg against its baselines on a dataset: trains the smoother and one net per
    /// method, tunes on validation, scores the test part, writes results.json/.md and figures.
    Experiment(cli::experiment::ExperimentArgs),
    /// `calseg experiment` on the embedded ICBM152 brain MRI (`--quick`: smoke test).
    Demo(cli::experiment::DemoArgs),
    /// Train a segmentation net with one calibration method (ce, ls, focal, svls, mbls,
    /// nacl, or soft on CALSeg soft labels) on a dataset's training cases.
    Train(cli::train::TrainArgs),
    /// Class probabilities of a trained model for a dataset's cases or one image.
    Predict(cli::predict::PredictArgs),
    /// Temperature scaling: fit T on the validation part, store it in the model.
    Calibrate(cli::calibrate::CalibrateArgs),
    /// The variational label smoother: `vls train`, `vls smooth` (soft labels).
    Vls(cli::vls::VlsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Training and inference allocate many tensor-sized buffers per step: keeping freed
    // heap memory (glibc) avoids a page fault per fresh buffer (measured: −13 % per U-Net
    // step, benches/RESULTS.md). `calseg bench` decides itself (`--default-malloc`).
    if !matches!(cli.command, Command::Bench(_)) {
        calseg::seg::ops::keep_freed_memory();
    }
    let result = match cli.command {
        Command::Eval(args) => cli::eval::run(args),
        Command::Info(args) => cli::info::run(args),
        Command::Bench(args) => cli::bench::run(args),
        Command::Experiment(args) => cli::experiment::run(args),
        Command::Demo(args) => cli::experiment::demo(args),
        Command::Train(args) => cli::train::run(args),
        Command::Predict(args) => cli::predict::run(args),
        Command::Calibrate(args) => cli::calibrate::run(args),
        Command::Vls(args) => cli::vls::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("calseg: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
