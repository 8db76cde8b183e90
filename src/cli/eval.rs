//! `calseg eval`: calibration and overlap metrics of one probability map.

use super::{CliError, CliResult};
use clap::{Args, ValueEnum};
use std::path::PathBuf;

/// Bin-interval convention (`--edges`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum EdgesArg {
    /// `[lo, hi)`, confidence 1.0 in the last bin (default; torchmetrics/netcal minus their bugs).
    Left,
    /// `(lo, hi]`, as the SVLS/MbLS/NACL papers' code.
    Right,
    /// torchmetrics 1.9 exactly, including its extra bin for confidence 1.0.
    Torchmetrics,
}

/// Which voxels count (`--region`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum RegionArg {
    /// Every voxel.
    All,
    /// Voxels whose label is not `--background` (the MbLS/NACL protocol).
    Foreground,
    /// Voxels where `--mask` is non-zero.
    Mask,
}

/// Dice/IoU of a class absent from the ground truth (`--empty-dice`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum EmptyDiceArg {
    /// NaN (`null` in JSON), skipped by means — MONAI `ignore_empty=True`.
    Nan,
    /// 1.0 if the prediction is empty too, else 0.0 — MONAI `ignore_empty=False`.
    One,
}

/// How the values in `--probs` are interpreted (`--input`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum InputArg {
    /// Probabilities that must sum to 1 over classes (within `--tol`); otherwise an error.
    Probs,
    /// Non-negative scores, divided by their sum over classes.
    Renormalise,
    /// Logits, turned into probabilities by an explicit softmax over classes.
    Logits,
}

/// Arguments of `calseg eval`. The flag names and JSON keys are a contract.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Probabilities: .npy (K, *spatial) f32/f64; .safetensors (tensor `probs`, or the only
    /// tensor) (K, *spatial); .nii/.nii.gz 4D with classes on the last axis.
    #[arg(long, value_name = "P")]
    pub probs: PathBuf,
    /// Ground-truth label map: .npy integer array or .nii/.nii.gz.
    #[arg(long, value_name = "Y")]
    pub labels: PathBuf,
    /// A hard predicted label map, evaluated for overlap (Dice, IoU, HD95) instead of the
    /// argmax of the probabilities.
    #[arg(long, value_name = "L")]
    pub pred: Option<PathBuf>,
    /// Number of equal-width confidence bins.
    #[arg(long, default_value_t = 15)]
    pub bins: usize,
    /// Bin-interval convention.
    #[arg(long, value_enum, default_value_t = EdgesArg::Left)]
    pub edges: EdgesArg,
    /// Voxels that count for calibration and proper scores.
    #[arg(long, value_enum, default_value_t = RegionArg::All)]
    pub region: RegionArg,
    /// ROI mask (non-zero = inside), required by `--region mask`.
    #[arg(long, value_name = "M")]
    pub mask: Option<PathBuf>,
    /// Label index of the background class.
    #[arg(long, default_value_t = 0)]
    pub background: u32,
    /// Dice/IoU of a class absent from the ground truth.
    #[arg(long, value_enum, default_value_t = EmptyDiceArg::Nan)]
    pub empty_dice: EmptyDiceArg,
    /// Also compute HD95 per class (mm; costs a distance transform per class).
    #[arg(long)]
    pub hd95: bool,
    /// Write a reliability diagram (.png or .svg).
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// How to interpret `--probs`.
    #[arg(long, value_enum, default_value_t = InputArg::Probs)]
    pub input: InputArg,
    /// Tolerance on |Σ_k p_k − 1| for `--input probs`.
    #[arg(long, default_value_t = 1e-3)]
    pub tol: f64,
}

/// Runs `calseg eval`.
pub fn run(args: EvalArgs) -> CliResult {
    Err(CliError::Failed(format!(
        "calseg eval is not implemented yet ({})",
        args.probs.display()
    )))
}
