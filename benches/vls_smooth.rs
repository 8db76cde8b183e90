//! Criterion bench of CALSeg soft-label generation on the embedded ICBM152 volume
//! (2D smoother on its 82 axial slices of 80×100): `smooth_case` with m = 16 and m = 1
//! samples against one forward pass of the same model (`predict`: trunk + heads at
//! z = 0) over the same slices. The trunk runs once per slice and only the 1×1 heads run
//! per sample, so m = 16 should cost ≤ 1.5× one forward pass.
//! `cargo bench --bench vls_smooth`.

use calseg::io::icbm152;
use calseg::seg::infer::{InferOptions, InferSpec, predict_logits};
use calseg::vls::smooth::{SmoothConfig, smooth_case};
use calseg::vls::{VlsConfig, VlsModel};
use candle_core::Device;
use criterion::{Criterion, criterion_group, criterion_main};
use std::time::Duration;

fn bench(c: &mut Criterion) {
    let case = match icbm152::open().and_then(|d| d.load("icbm152")) {
        Ok(c) => c,
        Err(e) => panic!("embedded data: {e}"),
    };
    let cfg = VlsConfig {
        base: 16,
        enc_base: 16,
        enc_levels: 4,
        depth: 3,
        ..VlsConfig::default()
    };
    let model = match VlsModel::new(&cfg, 0, &Device::Cpu) {
        Ok(m) => m,
        Err(e) => panic!("model: {e}"),
    };
    let mut g = c.benchmark_group("vls_smooth");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(20));
    for m in [16usize, 1] {
        let sc = SmoothConfig {
            samples: m,
            ..SmoothConfig::default()
        };
        g.bench_function(format!("smooth_m{m}"), |b| {
            b.iter(|| {
                if let Err(e) = smooth_case(&model, &case, &sc) {
                    panic!("smooth: {e}");
                }
            })
        });
    }
    let spec = InferSpec {
        dims: 2,
        in_channels: 1,
        classes: cfg.classes,
        multiple: cfg.multiple(),
        axis: Some(2),
        patch: None,
    };
    g.bench_function("forward", |b| {
        b.iter(|| {
            if let Err(e) =
                predict_logits(&model, &spec, case.image.clone(), &InferOptions::default())
            {
                panic!("forward: {e}");
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
