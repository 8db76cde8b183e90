//! Result files of an experiment: `results.json`, a Markdown comparison table, image
//! panels of one slice, and a reliability overlay of all methods.
//!
//! * [`MethodResult`] holds the headline numbers of one method and one seed, built from
//!   two [`Report`](calseg_metrics::Report)s with [`MethodResult::from_reports`]: one over every voxel, one over
//!   the voxels whose label is not background ([`foreground_config`]; `ece_fg`, the
//!   MbLS/NACL protocol).
//! * [`MethodSummary`] is a method over one or several seeds: the NaN-skipping mean of
//!   every number and, with two or more seeds, the sample standard deviation
//!   ([`summarize`], [`group_by_method`]).
//! * [`write_results_json`] writes
//!   `{"methods": {NAME: {"ece", "ece_fg", "mce", "cece", "ace", "brier", "nll", "dice",
//!   "dice_mean_fg", "hd95_mean_fg", "train_seconds", "n_seeds", "extra", …_sd}},
//!   "config", "split", "soft_label_quality"}` — the key names are a contract with the
//!   scripts that read it. `NaN` and absent values are `null`. When the test cases have
//!   raters, every method also has `"raters": {"ece_soft", "brier_soft", "nll_soft",
//!   "ged", "dice_per_rater_mean", "dice_per_rater_min", "dice_per_rater_max"}`
//!   (`calseg_metrics::raters`; kept in [`MethodResult::extra`] under [`RATERS_PREFIX`]),
//!   and [`raters_section`] renders them in `results.md`.
//! * [`results_markdown`] renders methods × metrics with the best value of each column in
//!   bold, `± sd` with several seeds, then the configuration, split, soft-label quality,
//!   budget and machine ([`MachineInfo`]).
//! * [`write_panel_png`] draws one slice as titled tiles side by side (image, label map,
//!   soft label, confidence maps) with `calseg_metrics::plot::panel`.
//! * [`write_reliability_overlay`] draws the reliability curves of all methods in one
//!   figure (PNG and/or SVG) with `calseg_metrics::plot::reliability_overlay`.
//!
//! Every file is encoded in memory and written with a temporary file and a rename
//! (`calseg_io::atomic::write_atomic`; figures: its counterpart in `calseg_metrics::plot`),
//! so a failure never leaves half a file.
//!
//! Files: `stats` (one method, several seeds), `json` (`results.json`), `markdown` (the
//! table and the machine), `figures` (reliability overlay and slice panels, drawn by
//! `calseg_metrics::plot`).

mod figures;
mod json;
mod markdown;
mod stats;
#[cfg(test)]
mod tests;

pub use figures::{write_panel_png, write_reliability_overlay};
pub use json::{results_json, write_results_json};
pub use markdown::{MachineInfo, methods_table, raters_section, results_markdown, seed_spread};

/// Prefix of the [`MethodResult::extra`] keys that hold rater-based metrics
/// (`raters.ged`, …); `results.json` lists them in a `raters` object without it.
pub const RATERS_PREFIX: &str = "raters.";
pub use stats::{MethodResult, MethodSummary, foreground_config, group_by_method, summarize};

use calseg_metrics::MetricsError;

/// What writing a result file can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The data given is inconsistent (e.g. seeds of different methods, shapes that differ).
    #[error("{0}")]
    Invalid(String),
    /// Writing a file failed (the error names the file).
    #[error(transparent)]
    Io(#[from] calseg_io::IoError),
    /// Rendering a figure (reliability overlay or slice panel) failed.
    #[error(transparent)]
    Plot(#[from] MetricsError),
    /// Rendering or encoding a document failed.
    #[error("rendering {what}: {reason}")]
    Render {
        /// The document.
        what: String,
        /// What went wrong.
        reason: String,
    },
}
