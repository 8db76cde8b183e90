//! A tiny VLS trained for a few dozen steps on phantoms: the loss goes down, the latent
//! stays alive (free bits) and the m sampled segmentations differ.

use calseg_io::phantom::{PhantomConfig, generate};
use calseg_seg::convert::array_to_tensor;
use calseg_seg::optim::AdamW;
use calseg_seg::train::{Batch, StepInfo, Trainable};
use calseg_vls::smooth::{LatentSource, SmoothConfig, smooth_volume};
use calseg_vls::{VlsConfig, VlsModel};
use candle_core::{Device, Tensor};
use candle_nn::{Optimizer, ParamsAdamW};
use ndarray::{ArrayD, Axis};
use rand::SeedableRng;
use rand::rngs::StdRng;

type Trained = (
    VlsModel,
    Vec<ArrayD<f32>>,
    Vec<ArrayD<u32>>,
    Vec<f64>,
    Vec<(String, f64)>,
);

/// Trains a tiny VLS for 40 steps on four 24×24 phantoms; returns the model, the
/// (z-scored) images and labels, the CE per step and the epoch report.
fn train(free_bits: f64) -> Trained {
    let dev = Device::Cpu;
    let cfg = VlsConfig {
        classes: 3,
        enc_levels: 3,
        enc_base: 4,
        base: 4,
        depth: 2,
        kl_warmup_epochs: 0,
        free_bits,
        ..VlsConfig::default()
    };
    // Four 24×24 phantoms, z-scored over their nonzero voxels like the trainer does.
    let (mut imgs, mut labs) = (Vec::new(), Vec::new());
    for seed in 0..4 {
        let p = generate(
            &PhantomConfig {
                shape: vec![24, 24],
                ..PhantomConfig::default()
            },
            seed,
        )
        .unwrap();
        let mut im = p.image.clone();
        calseg_io::preprocess::zscore_nonzero(&mut im);
        imgs.push(im);
        labs.push(p.labels.clone());
    }
    let stack = |v: &[ArrayD<f32>]| {
        let views: Vec<_> = v.iter().map(|a| a.view().insert_axis(Axis(0))).collect();
        ndarray::concatenate(Axis(0), &views).unwrap()
    };
    let x = array_to_tensor(stack(&imgs).view(), &dev).unwrap();
    let lv: Vec<_> = labs.iter().map(|a| a.view().insert_axis(Axis(0))).collect();
    let y: Tensor =
        array_to_tensor(ndarray::concatenate(Axis(0), &lv).unwrap().view(), &dev).unwrap();

    let model = VlsModel::new(&cfg, 0, &dev).unwrap();
    let batch = Batch {
        target: model.one_hot(&y).unwrap(),
        image: x,
        labels: y,
    };
    let mut opt = AdamW::new(
        model.varmap().all_vars(),
        ParamsAdamW {
            lr: 3e-3,
            ..ParamsAdamW::default()
        },
    )
    .unwrap();
    let mut rng = StdRng::seed_from_u64(0);
    let steps = 40;
    let mut ce = Vec::new();
    for step in 0..steps {
        let info = StepInfo {
            step,
            epoch: 0,
            total_steps: steps,
            epochs: 1,
        };
        let (loss, logs) = model.loss(&batch, &info, &mut rng).unwrap();
        ce.push(logs.iter().find(|(k, _)| k == "ce").unwrap().1);
        opt.step(&loss.backward().unwrap()).unwrap();
    }
    let ep = model.end_epoch(0);
    (model, imgs, labs, ce, ep)
}

fn get(ep: &[(String, f64)], key: &str) -> f64 {
    ep.iter().find(|(k, _)| k == key).map_or(f64::NAN, |x| x.1)
}

#[test]
fn short_training_keeps_the_samples_apart() {
    let (model, imgs, labs, ce, ep) = train(0.5);
    let steps = ce.len();
    let active = get(&ep, "active_dims");
    eprintln!("ce {:.3} → {:.3}; epoch {ep:?}", ce[0], ce[steps - 1]);
    assert!(ce[steps - 1] < 0.7 * ce[0], "the segmentation head learns");
    assert!(
        active >= 1.0,
        "free bits keep latent dimensions active: {ep:?}"
    );

    for from in [LatentSource::Posterior, LatentSource::Prior] {
        let sc = SmoothConfig {
            samples: 8,
            from,
            ..SmoothConfig::default()
        };
        let (_, var) = smooth_volume(&model, &imgs[0], &labs[0], &sc).unwrap();
        eprintln!("{from:?}: mean per-voxel variance across samples {var:.3e}");
        assert!(var > 1e-3, "{from:?}: samples collapsed (variance {var:e})");
    }
}

#[test]
fn plain_kl_drifts_towards_the_prior() {
    // The same run without free bits: the KL per dimension shrinks (the collapse the
    // free-bits floor prevents), while with it the KL stays well above the floor's
    // "active" threshold.
    let kl = |ep: &[(String, f64)]| (0..3).map(|d| get(ep, &format!("kl_dim{d}"))).sum::<f64>();
    let (.., plain) = train(0.0);
    let (.., fb) = train(0.5);
    eprintln!("plain {plain:?}\nfree bits {fb:?}");
    assert!(
        kl(&plain) < 0.5 * kl(&fb),
        "plain {} vs free bits {}",
        kl(&plain),
        kl(&fb)
    );
}
