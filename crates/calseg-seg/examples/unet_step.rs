//! Times one U-Net training step without the CLI:
//! `cargo run --release -p calseg-seg --example unet_step -- [2|3] [stock] [kernels]`.
//! (`calseg bench unet-step` is the full-featured front end.)

use calseg_seg::bench::{StepConfig, conv_kernels, format_step, unet_step};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let has = |s: &str| args.iter().any(|a| a == s);
    let mut cfg = StepConfig::default();
    if has("3") {
        cfg = StepConfig {
            dims: 3,
            batch: 2,
            size: 64,
            ..cfg
        };
    }
    cfg.stock = has("stock");
    if has("kernels") {
        let r = conv_kernels(&cfg, 3)?;
        for l in &r.layers {
            println!(
                "{:<28} {:7.3} GFLOP  fwd {:6.1}  dx {:6.1}  dw {:6.1} GFLOP/s",
                l.layer, l.gflop, l.fwd_gflops, l.grad_input_gflops, l.grad_weight_gflops
            );
        }
        println!(
            "candle matmul {}²: {:.1} GFLOP/s",
            r.matmul_n, r.candle_matmul_gflops
        );
        return Ok(());
    }
    cfg.iters = if cfg.stock { 2 } else { 5 };
    println!("{}", format_step(&unet_step(&cfg)?));
    Ok(())
}
