//! The flags of `calseg eval` and the metric configuration they describe.

use super::bad;
use crate::cli::CliResult;
use calseg_metrics::config::DEFAULT_TOL;
use calseg_metrics::plot::PlotFormat;
use calseg_metrics::{EdgeConvention, EmptyDice, InputMode, MetricConfig, Region};
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
    /// MONAI's CalibrationErrorMetric: edges linspace(0, 1 + 2^-23), `(lo, hi]`, 0.0 in bin 0.
    Monai,
}

/// A library's whole set of metric conventions (`--convention`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ConventionArg {
    /// MONAI 1.6 `CalibrationErrorMetric`: 20 bins (unless `--bins`), `--edges monai`,
    /// every voxel, one-vs-rest per class channel; adds the `monai` JSON object.
    Monai,
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

/// Which cases of a dataset are scored (`--split`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum SplitArg {
    /// `imagesTs`/`labelsTs`.
    Test,
    /// `imagesTr`/`labelsTr`.
    Train,
    /// Training cases, then test cases.
    All,
}

impl SplitArg {
    pub(super) fn name(self) -> &'static str {
        match self {
            SplitArg::Test => "test",
            SplitArg::Train => "train",
            SplitArg::All => "all",
        }
    }
}

/// Arguments of `calseg eval`. The flag names and JSON keys are a contract.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Probabilities: .npy (K, *spatial) f32/f64; .safetensors (tensor `probs`, or the only
    /// tensor) (K, *spatial); .nii/.nii.gz 4D with classes on the last axis. Optional with
    /// `--pred`: without it the hard label map is scored for overlap only.
    #[arg(
        long,
        value_name = "P",
        required_unless_present_any = ["data", "pred"],
        conflicts_with = "data"
    )]
    pub probs: Option<PathBuf>,
    /// Ground-truth label map: .npy integer array or .nii/.nii.gz.
    #[arg(
        long = "labels",
        value_name = "Y",
        required_unless_present = "data",
        conflicts_with = "data"
    )]
    pub labels: Option<PathBuf>,
    /// A hard predicted label map, evaluated for overlap (Dice, IoU, HD95) instead of the
    /// argmax of the probabilities (single-file mode only). Without `--probs`: hard mode,
    /// overlap metrics only (no calibration).
    #[arg(long, value_name = "L", conflicts_with = "data")]
    pub pred: Option<PathBuf>,
    /// Hard mode (`--pred` without `--probs`): the number of classes K (default: the
    /// largest label of either map + 1, at least 2); a label >= K is an error.
    #[arg(long, value_name = "K", requires = "pred", conflicts_with = "probs")]
    pub classes: Option<usize>,
    /// Dataset mode: a Decathlon / nnU-Net v2 dataset folder (dataset.json, imagesTr,
    /// labelsTr, imagesTs, labelsTs) whose label maps are the ground truth.
    #[arg(long, value_name = "DIR", requires = "predictions")]
    pub data: Option<PathBuf>,
    /// Dataset mode: folder with one probability file per case, CASE.nii.gz / CASE.nii
    /// (classes last), CASE.safetensors or CASE.npy ((K, *spatial)).
    #[arg(long, value_name = "DIR", requires = "data")]
    pub predictions: Option<PathBuf>,
    /// Dataset mode: cases to score (default: test if the dataset has test labels, else
    /// train).
    #[arg(long, value_enum, requires = "data")]
    pub split: Option<SplitArg>,
    /// Dataset mode: write reliability_CASE.png per case and reliability_pooled.png here
    /// (the folder is created if needed).
    #[arg(long, value_name = "DIR", requires = "data")]
    pub plot_dir: Option<PathBuf>,
    /// Number of equal-width confidence bins [default: 15; 20 with --convention monai].
    #[arg(long)]
    pub bins: Option<usize>,
    /// Bin-interval convention [default: left; monai with --convention monai].
    #[arg(long, value_enum)]
    pub edges: Option<EdgesArg>,
    /// Reproduce a library's conventions: `monai` = MONAI's CalibrationErrorMetric (its
    /// bins and edges; JSON gains a `monai` object with its per-class ECE, MCE and average
    /// CE and their MONAI "mean" reductions).
    #[arg(long, value_enum)]
    pub convention: Option<ConventionArg>,
    /// Voxels that count for calibration and proper scores.
    #[arg(long, value_enum, default_value_t = RegionArg::All)]
    pub region: RegionArg,
    /// ROI mask (non-zero = inside), required by `--region mask`. In dataset mode a folder
    /// with one mask per case (CASE.nii.gz, .nii, .npy, .safetensors or .png).
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
    /// Write a reliability diagram (.png or .svg) (single-file mode; see --plot-dir).
    #[arg(long, value_name = "FILE", conflicts_with = "data")]
    pub plot: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// How to interpret `--probs`.
    #[arg(long, value_enum, default_value_t = InputArg::Probs)]
    pub input: InputArg,
    /// Tolerance on |Σ_k p_k − 1| for `--input probs`.
    #[arg(long, default_value_t = DEFAULT_TOL)]
    pub tol: f64,
}

impl EvalArgs {
    /// The metric configuration these flags describe.
    pub(super) fn config(&self) -> MetricConfig {
        let base = match self.convention {
            Some(ConventionArg::Monai) => MetricConfig::monai(),
            None => MetricConfig::default(),
        };
        let bins = self.bins.unwrap_or(base.n_bins);
        let edges = match self.edges {
            None => base.edges,
            Some(EdgesArg::Left) => EdgeConvention::LeftClosed,
            Some(EdgesArg::Right) => EdgeConvention::RightClosed,
            Some(EdgesArg::Torchmetrics) => EdgeConvention::Torchmetrics,
            Some(EdgesArg::Monai) => EdgeConvention::Monai,
        };
        base.bins(bins)
            .edges(edges)
            .region(match self.region {
                RegionArg::All => Region::All,
                RegionArg::Foreground => Region::Foreground,
                RegionArg::Mask => Region::Mask,
            })
            .background(Some(self.background as usize))
            .empty_dice(match self.empty_dice {
                EmptyDiceArg::Nan => EmptyDice::Nan,
                EmptyDiceArg::One => EmptyDice::One,
            })
            .input(match self.input {
                InputArg::Probs => InputMode::Probabilities { tol: self.tol },
                InputArg::Renormalise => InputMode::Renormalise,
                InputArg::Logits => InputMode::Logits,
            })
    }

    /// Whether this is hard mode: `--pred` without `--probs` (and not dataset mode).
    pub(super) fn hard_mode(&self) -> bool {
        self.probs.is_none() && self.pred.is_some() && self.data.is_none()
    }

    /// The flags given that only make sense with probabilities (hard mode refuses them).
    fn probability_flags(&self) -> Vec<&'static str> {
        let mut given = Vec::new();
        for (flag, set) in [
            ("--plot", self.plot.is_some()),
            ("--mask", self.mask.is_some()),
            ("--region", self.region != RegionArg::All),
            ("--input", self.input != InputArg::Probs),
            ("--tol", self.tol != DEFAULT_TOL),
            ("--bins", self.bins.is_some()),
            ("--edges", self.edges.is_some()),
            ("--convention", self.convention.is_some()),
        ] {
            if set {
                given.push(flag);
            }
        }
        given
    }

    /// Checks the flags that do not need any file (before reading anything).
    pub(super) fn check(&self) -> CliResult {
        if self.hard_mode() {
            let given = self.probability_flags();
            if !given.is_empty() {
                return Err(bad(format!(
                    "--pred without --probs scores a hard label map for overlap only \
                     (Dice, IoU, HD95); {} need{} --probs",
                    given.join(", "),
                    if given.len() == 1 { "s" } else { "" }
                )));
            }
        }
        if self.convention == Some(ConventionArg::Monai) {
            if let Some(e) = self.edges.filter(|&e| e != EdgesArg::Monai) {
                return Err(bad(format!(
                    "--convention monai uses MONAI's bin edges; drop --edges {}",
                    e.to_possible_value()
                        .map_or_else(String::new, |v| v.get_name().to_owned())
                )));
            }
            if self.region != RegionArg::All {
                return Err(bad(
                    "--convention monai scores every voxel of an image (MONAI has no region); \
                     drop --region"
                        .to_owned(),
                ));
            }
        }
        match (self.region, &self.mask) {
            (RegionArg::Mask, None) => {
                return Err(bad("--region mask needs --mask M".to_owned()));
            }
            (RegionArg::All | RegionArg::Foreground, Some(m)) => {
                return Err(bad(format!(
                    "--mask {} is only used with --region mask",
                    m.display()
                )));
            }
            _ => {}
        }
        if let Some(plot) = &self.plot {
            PlotFormat::from_path(plot).map_err(|e| bad(format!("--plot: {e}")))?;
        }
        self.config()
            .validate()
            .map_err(|e| bad(format!("invalid option: {e}")))
    }
}
