//! Criterion bench of one U-Net training step (forward + soft CE, backward, AdamW) at
//! the reference sizes: 2D batch 8×2×128², and 3D batch 2×2×64³; fast ops vs candle's
//! stock ops (2D only: the stock step takes seconds). Small sample counts: each sample
//! is a whole step. `cargo bench --bench unet_step`.
//!
//! Like `calseg bench unet-step`, it first calls `calseg_seg::ops::keep_freed_memory`
//! (glibc keeps freed buffers instead of unmapping them: fewer page faults per step).

use calseg_seg::bench::{StepConfig, Stepper};
use criterion::{Criterion, criterion_group, criterion_main};
use std::time::Duration;

fn bench(c: &mut Criterion) {
    calseg_seg::ops::keep_freed_memory();
    let mut g = c.benchmark_group("unet_step");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(10));
    let cases = [
        ("2d_fast", StepConfig::default()),
        (
            "3d_fast",
            StepConfig {
                dims: 3,
                batch: 2,
                size: 64,
                ..StepConfig::default()
            },
        ),
        (
            "2d_stock",
            StepConfig {
                stock: true,
                ..StepConfig::default()
            },
        ),
    ];
    for (name, cfg) in cases {
        let mut st = match Stepper::new(&cfg) {
            Ok(s) => s,
            Err(e) => panic!("{name}: {e}"),
        };
        g.bench_function(name, |b| {
            b.iter(|| {
                if let Err(e) = st.step() {
                    panic!("{name}: {e}");
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
