//! The `calseg` command-line program.

use clap::Parser;

/// Calibrated medical image segmentation.
#[derive(Parser)]
#[command(name = "calseg", version, about)]
struct Cli {}

fn main() {
    let Cli {} = Cli::parse();
}
