//! The calseg-seg [`Trainer`] trains the VLS through its `Trainable` impl: per-step
//! logs, the end-of-epoch KL report and validation (through `predict`) all flow.

use calseg_io::phantom::{PhantomConfig, generate};
use calseg_seg::train::{Layout, SetOptions, TargetSource, TrainSet, Trainer, TrainerConfig};
use calseg_vls::smooth::{SmoothConfig, smooth_case};
use calseg_vls::{VlsConfig, VlsModel};
use candle_core::Device;

#[test]
fn calseg_seg_trainer_trains_the_vls() {
    let cfg = VlsConfig {
        classes: 3,
        enc_levels: 3,
        enc_base: 4,
        base: 4,
        depth: 2,
        kl_warmup_epochs: 1,
        ..VlsConfig::default()
    };
    let cases: Vec<_> = (0..4)
        .map(|s| {
            generate(
                &PhantomConfig {
                    shape: vec![24, 24],
                    ..PhantomConfig::default()
                },
                s,
            )
            .unwrap()
            .to_case(&format!("ph{s}"))
        })
        .collect();
    let set = TrainSet::build(
        &cases,
        &SetOptions {
            classes: 3,
            targets: TargetSource::OneHot,
            layout: Layout::Whole,
            multiple: cfg.multiple(),
        },
    )
    .unwrap();
    let model = VlsModel::new(&cfg, 0, &Device::Cpu).unwrap();
    let trainer = Trainer::new(TrainerConfig {
        epochs: 4,
        iters_per_epoch: Some(10),
        batch_size: 4,
        lr: 3e-3,
        flips: false,
        validate_every: 4,
        quiet: true,
        checkpoint_every: 0,
        ..TrainerConfig::default()
    });
    let report = trainer.fit(&model, &set, Some(&set), None).unwrap();
    assert_eq!(report.epochs_done, 4);
    let first = &report.epochs[0];
    let last = report.epochs.last().unwrap();
    for key in [
        "ce",
        "mse",
        "kl",
        "kl_0",
        "kl_dim0",
        "kl_dim2",
        "active_dims",
    ] {
        assert!(
            last.logs.contains_key(key),
            "missing {key}: {:?}",
            last.logs
        );
    }
    eprintln!("first {:?}\nlast {:?}", first.logs, last.logs);
    assert!(last.logs["ce"] < first.logs["ce"]);
    assert!(last.logs["active_dims"] >= 1.0, "{:?}", last.logs);
    assert!(last.val.is_some(), "validation ran through predict");
    // The trained model smooths a case with distinct samples.
    let s = smooth_case(&model, &cases[0], &SmoothConfig::default()).unwrap();
    assert!(s.stats.sample_variance > 1e-3, "{:?}", s.stats);
    assert_eq!(s.stats.flipped_fraction, 0.0);
}
