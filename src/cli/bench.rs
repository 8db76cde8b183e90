//! `calseg bench`: performance measurements. `calseg bench unet-step` times one U-Net
//! training step (forward + soft-target CE, backward, AdamW) with the fast CPU ops or,
//! with `--stock`, candle's own ops; `calseg bench conv-kernels` reports the GFLOP/s of
//! the convolution kernels per layer shape against candle's matmul.

use super::{CliError, CliResult};
use calseg_seg::bench::{StepConfig, conv_kernels, format_step, to_json, unet_step};
use clap::{Args, Subcommand};

/// Arguments of `calseg bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchWhat,
}

#[derive(Subcommand, Debug)]
enum BenchWhat {
    /// Time one U-Net training step; prints median forward, backward, optimiser and total
    /// seconds (JSON keys `fwd_s`, `bwd_s`, `step_s`, `total_s`).
    UnetStep(StepArgs),
    /// GFLOP/s of the convolution kernels (forward, input grad, weight grad) for every
    /// layer shape of that U-Net, and of candle's f32 matmul for comparison.
    ConvKernels(StepArgs),
}

/// The U-Net step to measure.
#[derive(Args, Debug)]
struct StepArgs {
    /// Spatial dimensions: 2 or 3.
    #[arg(long, default_value_t = 2)]
    dims: usize,
    /// Width of the first level.
    #[arg(long, default_value_t = 16)]
    base: usize,
    /// Number of poolings.
    #[arg(long, default_value_t = 4)]
    depth: usize,
    /// Batch size.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Spatial size along every axis (divisible by 2^depth).
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Input channels.
    #[arg(long, default_value_t = 2)]
    in_channels: usize,
    /// Classes.
    #[arg(long, default_value_t = 2)]
    classes: usize,
    /// Timed iterations (medians are reported).
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Untimed warm-up iterations.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Seed of the weights, input and targets.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    device: super::DeviceArg,
    /// Use candle's own operators (the baseline) instead of the fast ones.
    #[arg(long)]
    stock: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Keep glibc's default allocator settings (by default the bench calls
    /// `calseg_seg::ops::keep_freed_memory`, which saves page faults).
    #[arg(long)]
    default_malloc: bool,
}

impl StepArgs {
    fn config(&self) -> Result<StepConfig, CliError> {
        let bad = |m: String| Err(CliError::BadInput(m));
        if !(2..=3).contains(&self.dims) {
            return bad(format!("--dims must be 2 or 3, got {}", self.dims));
        }
        if self.depth == 0 || self.depth > 8 {
            return bad(format!("--depth must be in 1..=8, got {}", self.depth));
        }
        if self.size == 0 || !self.size.is_multiple_of(1 << self.depth) {
            return bad(format!(
                "--size {} must be a positive multiple of 2^depth = {}",
                self.size,
                1 << self.depth
            ));
        }
        if self.batch == 0
            || self.base == 0
            || self.in_channels == 0
            || self.classes == 0
            || self.iters == 0
        {
            return bad(
                "--batch, --base, --in-channels, --classes and --iters must be positive".into(),
            );
        }
        Ok(StepConfig {
            dims: self.dims,
            base: self.base,
            depth: self.depth,
            batch: self.batch,
            size: self.size,
            in_channels: self.in_channels,
            classes: self.classes,
            iters: self.iters,
            warmup: self.warmup,
            stock: self.stock,
            seed: self.seed,
            device: self.device.open()?,
        })
    }
}

fn print_json(json: calseg_seg::Result<String>) -> CliResult {
    let s = json.map_err(|e| CliError::Failed(e.to_string()))?;
    println!("{s}");
    Ok(())
}

/// Runs `calseg bench …`.
pub fn run(args: BenchArgs) -> CliResult {
    let (BenchWhat::UnetStep(a) | BenchWhat::ConvKernels(a)) = &args.what;
    if !a.default_malloc {
        calseg_seg::ops::keep_freed_memory();
    }
    match args.what {
        BenchWhat::UnetStep(a) => {
            let cfg = a.config()?;
            let t = unet_step(&cfg).map_err(|e| CliError::Failed(e.to_string()))?;
            if a.json {
                print_json(to_json(&t))
            } else {
                println!("{}", format_step(&t));
                Ok(())
            }
        }
        BenchWhat::ConvKernels(a) => {
            let cfg = a.config()?;
            let r = conv_kernels(&cfg, a.iters).map_err(|e| CliError::Failed(e.to_string()))?;
            if a.json {
                return print_json(to_json(&r));
            }
            println!(
                "| layer (batch {}) | GFLOP | fwd GFLOP/s | input-grad GFLOP/s | weight-grad GFLOP/s |",
                cfg.batch
            );
            println!("|---|---|---|---|---|");
            for l in &r.layers {
                println!(
                    "| {} | {:.3} | {:.1} | {:.1} | {:.1} |",
                    l.layer, l.gflop, l.fwd_gflops, l.grad_input_gflops, l.grad_weight_gflops
                );
            }
            println!(
                "candle f32 matmul {0}×{0}: {1:.1} GFLOP/s",
                r.matmul_n, r.candle_matmul_gflops
            );
            Ok(())
        }
    }
}
