//! `calseg experiment` and `calseg demo`: CALSeg against its baselines, end to end
//! (see [`calseg::experiment`]).

use super::{CliError, CliResult};
use calseg::experiment::{Experiment, ExperimentConfig, Masks, MethodId, StderrProgress};
use calseg_io::Dataset;
use clap::Args;
use std::path::PathBuf;

/// Arguments of `calseg experiment`.
#[derive(Args, Debug)]
pub struct ExperimentArgs {
    /// Decathlon/nnU-Net dataset folder (dataset.json, imagesTr, labelsTr[, imagesTs, labelsTs]).
    #[arg(long)]
    data: PathBuf,
    /// Output folder (re-running with the same folder skips the stages already done).
    #[arg(long)]
    out: PathBuf,
    /// 2 (slices) or 3 (volumes / patches). Overrides the config file.
    #[arg(long)]
    dims: Option<usize>,
    /// Comma-separated methods (ce,ls,focal,svls,mbls,nacl,calseg; raters on a dataset with
    /// raters). Overrides the config.
    #[arg(long, value_delimiter = ',')]
    methods: Option<Vec<MethodId>>,
    /// First seed. Overrides the config.
    #[arg(long)]
    seed: Option<u64>,
    /// Number of seeds (means and spreads are reported). Overrides the config.
    #[arg(long)]
    seeds: Option<usize>,
    /// TOML file with every hyper-parameter (see `calseg::experiment::config`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// A development split: never load the test part; hold out this fraction of the
    /// training data as a development test part instead (choose designs here, then run
    /// without it once). Overrides `split.development`.
    #[arg(long, value_name = "FRACTION")]
    development: Option<f64>,
    /// No progress bars (stage lines are still printed).
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    device: super::DeviceArg,
}

fn read_config(path: Option<&PathBuf>) -> Result<ExperimentConfig, CliError> {
    match path {
        None => Ok(ExperimentConfig::default()),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| CliError::BadInput(format!("{}: cannot read: {e}", p.display())))?;
            ExperimentConfig::from_toml(&text)
                .map_err(|e| CliError::BadInput(format!("{}: {e}", p.display())))
        }
    }
}

/// Runs `calseg experiment`.
pub fn run(args: ExperimentArgs) -> CliResult {
    let device = args.device.open()?;
    let mut cfg = read_config(args.config.as_ref())?;
    if let Some(d) = args.dims {
        cfg.dims = d;
    }
    if let Some(m) = args.methods {
        cfg.methods = m;
    }
    if let Some(s) = args.seed {
        cfg.seed = s;
    }
    if let Some(n) = args.seeds {
        cfg.seeds = n;
    }
    if let Some(f) = args.development {
        cfg.split.development = Some(f);
    }
    cfg.validate().map_err(|e| {
        CliError::BadInput(format!(
            "configuration: {e} (methods: {})",
            MethodId::all_names()
        ))
    })?;
    let ds = Dataset::open(&args.data).map_err(|e| CliError::BadInput(e.to_string()))?;
    let masks = Masks::from_path(cfg.eval.mask.as_deref())?;
    let progress = StderrProgress;
    let out = Experiment::new(&ds, cfg, &args.out, masks, &progress)?
        .quiet(args.quiet)
        .on(&device)
        .run()?;
    println!("{}", out.markdown);
    println!("report: {}", out.out.join("results.md").display());
    Ok(())
}

/// Arguments of `calseg demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Output folder.
    #[arg(long, default_value = "calseg-demo")]
    out: PathBuf,
    /// A smoke test (≈ 1–3 minutes): tiny budget, numbers are not a comparison.
    #[arg(long)]
    quick: bool,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Number of seeds.
    #[arg(long, default_value_t = 1)]
    seeds: usize,
    /// Comma-separated methods (default: all of ce,ls,focal,svls,mbls,nacl,calseg). A
    /// later run into the same `--out` with more methods reuses the nets already trained.
    #[arg(long, value_delimiter = ',')]
    methods: Option<Vec<MethodId>>,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    device: super::DeviceArg,
}

/// Runs `calseg demo`: `calseg experiment` on the embedded ICBM152 brain (2D axial
/// slices; train on the inferior slab, test on the superior slab; ECE over the brain
/// mask).
pub fn demo(args: DemoArgs) -> CliResult {
    let device = args.device.open()?;
    let ds = calseg_io::icbm152::open().map_err(|e| CliError::Failed(e.to_string()))?;
    let mask = calseg_io::icbm152::brain_mask()
        .map_err(|e| CliError::Failed(e.to_string()))?
        .labels
        .mapv(|v| v != 0);
    let mut cfg = if args.quick {
        calseg::experiment::config::demo_quick()
    } else {
        calseg::experiment::config::demo()
    };
    cfg.seed = args.seed;
    cfg.seeds = args.seeds;
    if let Some(m) = args.methods {
        cfg.methods = m;
    }
    let progress = StderrProgress;
    let mut exp = Experiment::new(&ds, cfg, &args.out, Masks::Shared(mask), &progress)?
        .quiet(args.quiet)
        .on(&device);
    exp = exp.note(if args.quick {
        "calseg demo --quick: a smoke test with a tiny training budget — these numbers are NOT a comparison of the methods; run `calseg demo` for that."
    } else {
        "calseg demo: the embedded ICBM152 2009a template (2 mm), 2D axial slices; train on slices 0–32, validate on 33–40, test on 41–81. ECE, MCE, CECE, ACE, Brier and NLL are computed inside the brain mask; ECE (fg) over voxels labelled CSF/GM/WM; Dice and HD95 over the whole slab."
    });
    let out = exp.run()?;
    println!("{}", out.markdown);
    println!("report: {}", out.out.join("results.md").display());
    Ok(())
}
