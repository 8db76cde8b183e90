//! Training data, the trainer (logs, validation, exact resume, NaN stop) and model
//! directories, on tiny 16×16 phantoms.

use calseg_io::Case;
use calseg_io::phantom::{PhantomConfig, generate};
use calseg_seg::SegError;
use calseg_seg::loss::{SegLoss, soft_ce};
use calseg_seg::model::SegModel;
use calseg_seg::net::{NormKind, UNetConfig};
use calseg_seg::train::checkpoint::named_vars;
use calseg_seg::train::{
    Batch, BatchSampler, Layout, Schedule, SetOptions, StepInfo, TargetSource, TrainSet, Trainable,
    Trainer, TrainerConfig,
};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use ndarray::{ArrayD, Axis, IxDyn};
use rand::rngs::StdRng;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Soft-target cross-entropy as a [`SegLoss`].
#[derive(Debug)]
struct SoftCe;
impl SegLoss for SoftCe {
    fn forward(&self, logits: &Tensor, target: &Tensor) -> candle_core::Result<Tensor> {
        soft_ce(logits, target)
    }
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("calseg-trainer-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A 16×14×4 phantom volume with 3 classes (4 axial slices of 16×14).
fn volume(seed: u64) -> Case {
    let cfg = PhantomConfig {
        shape: vec![16, 14, 4],
        classes: 3,
        supersample: 2,
        ..Default::default()
    };
    generate(&cfg, seed).unwrap().to_case(&format!("ph{seed}"))
}

fn slice_opts(targets: TargetSource) -> SetOptions {
    SetOptions {
        classes: 3,
        targets,
        layout: Layout::default(),
        multiple: 4,
    }
}

fn unet() -> UNetConfig {
    UNetConfig {
        dims: 2,
        in_channels: 1,
        classes: 3,
        base: 4,
        depth: 2,
        norm: NormKind::Group(2),
        ..UNetConfig::default()
    }
}

fn model(seed: u64) -> SegModel {
    SegModel::new(&unet(), seed, &Device::Cpu)
        .unwrap()
        .with_loss(Arc::new(SoftCe))
}

fn params(vm: &VarMap) -> Vec<(String, Vec<f32>)> {
    named_vars(vm)
        .unwrap()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}

fn quiet(epochs: usize) -> TrainerConfig {
    TrainerConfig {
        epochs,
        batch_size: 2,
        lr: 1e-2,
        seed: 7,
        quiet: true,
        schedule: Schedule::Cosine { warmup: 1 },
        ..TrainerConfig::default()
    }
}

#[test]
fn slices_are_normalised_padded_and_keep_their_size() {
    let case = volume(1);
    let set = TrainSet::build(
        std::slice::from_ref(&case),
        &slice_opts(TargetSource::OneHot),
    )
    .unwrap();
    assert_eq!(set.len(), 4);
    assert_eq!(set.dims(), 2);
    let s = &set.samples()[2];
    assert_eq!(s.id, "ph1_axis2_0002");
    assert_eq!(s.size, vec![16, 14]);
    assert_eq!(s.image.shape(), &[1, 16, 16]);
    assert_eq!(s.target.shape(), &[3, 16, 16]);
    // padding: image 0, target background one-hot, label 0
    for i in 0..16 {
        for j in 14..16 {
            assert_eq!(s.image[[0, i, j]], 0.0);
            assert_eq!(s.target[[0, i, j]], 1.0);
            assert_eq!(s.target[[1, i, j]] + s.target[[2, i, j]], 0.0);
            assert_eq!(s.labels[[i, j]], 0);
        }
    }
    // targets are one-hot of the labels inside
    let l = case.label.as_ref().unwrap();
    assert_eq!(s.labels[[3, 5]], l[[3, 5, 2]]);
    assert_eq!(s.target[[l[[3, 5, 2]] as usize, 3, 5]], 1.0);
    // z-score over the nonzero voxels of the whole volume: mean 0 over them, all slices
    let vals: Vec<f32> = set
        .samples()
        .iter()
        .flat_map(|s| {
            let mut v = s.image.view();
            v.slice_axis_inplace(Axis(2), ndarray::Slice::from(0..14));
            v.iter().copied().collect::<Vec<_>>()
        })
        .filter(|&v| v != 0.0)
        .collect();
    let mean = vals.iter().map(|&v| v as f64).sum::<f64>() / vals.len() as f64;
    assert!(mean.abs() < 1e-3, "{mean}");
}

#[test]
fn slab_ranges_axes_and_empty_slices() {
    let case = volume(2);
    let mut o = slice_opts(TargetSource::CaseSoft);
    o.layout = Layout::Slices {
        axis: Some(2),
        range: Some(1..3),
        skip_empty: false,
    };
    let set = TrainSet::build(std::slice::from_ref(&case), &o).unwrap();
    let ids: Vec<&str> = set.samples().iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["ph2_axis2_0001", "ph2_axis2_0002"]);
    // soft targets are the case's soft labels
    let sl = case.soft_label.as_ref().unwrap();
    assert_eq!(set.samples()[0].target[[1, 4, 4]], sl[[1, 4, 4, 1]]);
    // along axis 0: 16 slices of 14×4 → padded to 16×4
    o.layout = Layout::Slices {
        axis: Some(0),
        range: None,
        skip_empty: false,
    };
    let set = TrainSet::build(std::slice::from_ref(&case), &o).unwrap();
    assert_eq!(set.len(), 16);
    assert_eq!(set.samples()[0].image.shape(), &[1, 16, 4]);
    // skip_empty drops slices that are all background
    let mut c = case.clone();
    let l = c.label.as_mut().unwrap();
    for z in 0..4 {
        l[[5, 5, z]] = 1;
    }
    l.index_axis_mut(Axis(2), 0).fill(0);
    let mut o = slice_opts(TargetSource::OneHot);
    o.layout = Layout::Slices {
        axis: None,
        range: None,
        skip_empty: true,
    };
    let set = TrainSet::build(std::slice::from_ref(&c), &o).unwrap();
    assert_eq!(set.len(), 3);
    // 2D cases are single slices (of different sizes: padded to a common shape)
    let two_d = |shape: Vec<usize>, seed| {
        let cfg = PhantomConfig {
            shape,
            classes: 3,
            ..Default::default()
        };
        generate(&cfg, seed)
            .unwrap()
            .to_case(&format!("flat{seed}"))
    };
    let set = TrainSet::build(&[two_d(vec![12, 9], 1), two_d(vec![10, 13], 2)], &o).unwrap();
    assert_eq!(set.len(), 2);
    assert_eq!(set.samples()[0].image.shape(), &[1, 12, 16]);
    assert_eq!(set.samples()[1].size, vec![10, 13]);
}

#[test]
fn bad_targets_are_clear_errors() {
    let mut case = volume(3);
    // label ≥ K
    case.label.as_mut().unwrap()[[0, 0, 0]] = 7;
    let e = TrainSet::build(
        std::slice::from_ref(&case),
        &slice_opts(TargetSource::OneHot),
    )
    .unwrap_err();
    assert!(e.to_string().contains("label value 7"), "{e}");
    // a soft-label file of the wrong shape is named
    let dir = scratch("softdir");
    std::fs::create_dir_all(&dir).unwrap();
    let wrong = ArrayD::<f32>::zeros(IxDyn(&[3, 16, 14, 5]));
    let file = dir.join("ph3.safetensors");
    calseg_io::write_safetensors(&file, &[calseg_io::NamedTensor::new("soft_labels", &wrong)])
        .unwrap();
    let e = TrainSet::build(&[volume(3)], &slice_opts(TargetSource::Dir(dir.clone()))).unwrap_err();
    assert!(e.to_string().contains("ph3.safetensors"), "{e}");
    assert!(matches!(e, SegError::Shape(_)));
    // a missing one too
    let e = TrainSet::build(&[volume(4)], &slice_opts(TargetSource::Dir(dir.clone()))).unwrap_err();
    assert!(e.to_string().contains("ph4.safetensors"), "{e}");
    // and a right one is used
    let v = volume(3);
    let right = v.soft_label.clone().unwrap();
    calseg_io::write_safetensors(&file, &[calseg_io::NamedTensor::new("soft_labels", &right)])
        .unwrap();
    let set = TrainSet::build(&[v], &slice_opts(TargetSource::Dir(dir.clone()))).unwrap();
    assert_eq!(set.samples()[1].target[[2, 3, 3]], right[[2, 3, 3, 1]]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn rater_targets_are_the_mean_of_the_raters_one_hot_maps() {
    use calseg_io::phantom::{RaterPhantomConfig, generate_raters};
    let rp = generate_raters(
        &RaterPhantomConfig {
            phantom: PhantomConfig {
                shape: vec![16, 14, 4],
                classes: 3,
                supersample: 2,
                ..Default::default()
            },
            raters: 3,
            spread: 0.6,
        },
        5,
    )
    .unwrap();
    let case = rp.to_case("rp5");
    let set = TrainSet::build(
        std::slice::from_ref(&case),
        &slice_opts(TargetSource::Raters),
    )
    .unwrap();
    let raters = case.raters.as_ref().unwrap();
    let mut soft = 0;
    for (z, sample) in set.samples().iter().enumerate() {
        for x in 0..16 {
            for y in 0..14 {
                for k in 0..3u32 {
                    let votes = raters.iter().filter(|r| r[[x, y, z]] == k).count();
                    let want = votes as f32 / 3.0;
                    let got = sample.target[[k as usize, x, y]];
                    assert!((got - want).abs() < 1e-6, "({x},{y},{z}) class {k}");
                    soft += usize::from(votes == 1 || votes == 2);
                }
                // Hard labels: the majority vote.
                assert_eq!(
                    sample.labels[[x, y]],
                    case.label.as_ref().unwrap()[[x, y, z]]
                );
            }
        }
    }
    assert!(soft > 0, "the raters never disagree");
    // A case without raters is a clear error.
    let e = TrainSet::build(&[volume(1)], &slice_opts(TargetSource::Raters)).unwrap_err();
    assert!(e.to_string().contains("no raters"), "{e}");
}

#[test]
fn sampler_is_seeded_and_flips_image_and_labels_together() {
    // A sample whose image equals its labels shows whether flips stay aligned.
    let labels = ArrayD::from_shape_fn(IxDyn(&[4, 4]), |i| ((i[0] * 4 + i[1]) % 3) as u32);
    let mk = |id: &str| calseg_seg::train::Sample {
        id: id.into(),
        image: labels.mapv(|v| v as f32).insert_axis(Axis(0)),
        target: ArrayD::from_shape_fn(IxDyn(&[3, 4, 4]), |i| {
            (labels[[i[1], i[2]]] as usize == i[0]) as u8 as f32
        }),
        labels: labels.clone(),
        size: vec![4, 4],
    };
    let set = TrainSet::from_samples(vec![mk("a"), mk("b"), mk("c")], 3).unwrap();
    let draw = |seed| {
        let mut s = BatchSampler::new(&set, 2, true, seed);
        (0..4)
            .map(|_| s.next_batch(&Device::Cpu).unwrap())
            .collect::<Vec<Batch>>()
    };
    let (a, b) = (draw(1), draw(1));
    let mut flipped = false;
    for (x, y) in a.iter().zip(&b) {
        let xi: Vec<f32> = x.image.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(xi, y.image.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let xl: Vec<u32> = x.labels.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(xi, xl.iter().map(|&v| v as f32).collect::<Vec<_>>());
        let amax = x.target.argmax(1).unwrap().flatten_all().unwrap();
        assert_eq!(amax.to_vec1::<u32>().unwrap(), xl);
        flipped |= xl[..16] != labels.iter().copied().collect::<Vec<_>>()[..];
    }
    assert!(flipped, "some sample was mirrored");
}

#[test]
fn patches_of_3d_cases() {
    let case = volume(5);
    let o = SetOptions {
        classes: 3,
        targets: TargetSource::CaseSoft,
        layout: Layout::Patches {
            patch: vec![8, 8, 8],
            foreground_fraction: 0.5,
        },
        multiple: 4,
    };
    let set = TrainSet::build(&[case], &o).unwrap();
    assert_eq!(set.dims(), 3);
    assert_eq!(set.samples()[0].image.shape(), &[1, 16, 16, 4]);
    let mut s = BatchSampler::new(&set, 2, false, 3);
    let b = s.next_batch(&Device::Cpu).unwrap();
    assert_eq!(b.image.dims(), &[2, 1, 8, 8, 8]);
    assert_eq!(b.target.dims(), &[2, 3, 8, 8, 8]);
    // targets are distributions everywhere, padding included (z = 4..8 is outside)
    let sums = b.target.sum(1).unwrap().flatten_all().unwrap();
    for v in sums.to_vec1::<f32>().unwrap() {
        assert!((v - 1.0).abs() < 1e-5);
    }
    // a patch size that the net cannot take is refused
    let bad = SetOptions {
        layout: Layout::Patches {
            patch: vec![6, 8, 8],
            foreground_fraction: 0.5,
        },
        ..o
    };
    assert!(TrainSet::build(&[volume(5)], &bad).is_err());
}

#[test]
fn training_learns_logs_and_validates() {
    let train = TrainSet::build(&[volume(1)], &slice_opts(TargetSource::OneHot)).unwrap();
    let val = TrainSet::build(&[volume(2)], &slice_opts(TargetSource::OneHot)).unwrap();
    let dir = scratch("fit");
    let m = model(0);
    let cfg = TrainerConfig {
        iters_per_epoch: Some(4),
        ..quiet(3)
    };
    let r = Trainer::new(cfg)
        .fit(&m, &train, Some(&val), Some(&dir))
        .unwrap();
    assert_eq!(r.epochs.len(), 3);
    assert_eq!(r.steps, 12);
    assert!(r.epochs[2].loss < r.epochs[0].loss, "{:?}", r.epochs);
    let v = r.epochs[2].val.as_ref().unwrap();
    assert_eq!(v.dice.len(), 3);
    assert!(v.ece.is_finite() && (0.0..=1.0).contains(&v.ece));
    assert!(v.accuracy > 0.3);
    let log = std::fs::read_to_string(dir.join("train_log.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[1]["epoch"], 1);
    assert!(lines[2]["val"]["dice_mean_fg"].is_number());
    assert!(dir.join("checkpoint.safetensors").exists());
    let st: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("checkpoint.json")).unwrap())
            .unwrap();
    assert_eq!(st["epoch"], 3);
    assert_eq!(st["step"], 12);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn resumed_run_ends_bit_identical_to_uninterrupted_run() {
    let train = TrainSet::build(&[volume(1)], &slice_opts(TargetSource::OneHot)).unwrap();
    let cfg = TrainerConfig {
        flips: true,
        ..quiet(2)
    };
    // uninterrupted
    let a = model(3);
    Trainer::new(cfg.clone())
        .fit(&a, &train, None, None)
        .unwrap();
    // killed after epoch 1 …
    let dir = scratch("resume");
    let b = model(3);
    let r = Trainer::new(TrainerConfig {
        stop_after: Some(1),
        ..cfg.clone()
    })
    .fit(&b, &train, None, Some(&dir))
    .unwrap();
    assert_eq!(r.epochs_done, 1);
    assert_ne!(params(b.varmap()), params(a.varmap()));
    // … and resumed in a fresh process (fresh model, differently initialised)
    let c = model(99);
    let r = Trainer::new(TrainerConfig {
        resume: true,
        ..cfg.clone()
    })
    .fit(&c, &train, None, Some(&dir))
    .unwrap();
    assert_eq!(r.resumed_from, 1);
    assert_eq!(r.epochs.len(), 1);
    assert_eq!(
        params(c.varmap()),
        params(a.varmap()),
        "bit-identical weights"
    );
    let log = std::fs::read_to_string(dir.join("train_log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 2);
    // a checkpoint from another seed is refused
    let e = Trainer::new(TrainerConfig {
        resume: true,
        seed: 8,
        ..cfg
    })
    .fit(&model(3), &train, None, Some(&dir))
    .unwrap_err();
    assert!(matches!(e, SegError::Checkpoint { .. }), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A model whose loss turns NaN at one step.
struct NanAt(SegModel, usize);
impl Trainable for NanAt {
    fn varmap(&self) -> &VarMap {
        self.0.varmap()
    }
    fn loss(
        &self,
        batch: &Batch,
        info: &StepInfo,
        rng: &mut StdRng,
    ) -> calseg_seg::Result<(Tensor, Vec<(String, f64)>)> {
        let (l, logs) = self.0.loss(batch, info, rng)?;
        Ok(if info.step == self.1 {
            ((l * f64::NAN)?, logs)
        } else {
            (l, logs)
        })
    }
    fn predict(&self, image: &Tensor) -> calseg_seg::Result<Tensor> {
        self.0.predict(image)
    }
}

#[test]
fn nan_loss_stops_and_keeps_the_last_good_checkpoint() {
    let train = TrainSet::build(&[volume(1)], &slice_opts(TargetSource::OneHot)).unwrap();
    let dir = scratch("nan");
    let m = NanAt(model(1), 3); // 2 steps per epoch: step 3 is in epoch 1
    let before = {
        Trainer::new(TrainerConfig {
            stop_after: Some(1),
            ..quiet(3)
        })
        .fit(&m, &train, None, Some(&dir))
        .unwrap();
        std::fs::read(dir.join("checkpoint.safetensors")).unwrap()
    };
    let e = Trainer::new(TrainerConfig {
        resume: true,
        ..quiet(3)
    })
    .fit(&m, &train, None, Some(&dir))
    .unwrap_err();
    match &e {
        SegError::NanLoss { step, checkpoint } => {
            assert_eq!(*step, 3);
            assert_eq!(
                checkpoint.as_deref(),
                Some(dir.join("checkpoint.safetensors").as_path())
            );
        }
        other => panic!("expected NanLoss, got {other}"),
    }
    assert!(e.to_string().contains("step 3"));
    assert_eq!(
        std::fs::read(dir.join("checkpoint.safetensors")).unwrap(),
        before
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_failing_checkpoint_write_is_an_error_and_leaves_no_temporary_file() {
    let train = TrainSet::build(&[volume(1)], &slice_opts(TargetSource::OneHot)).unwrap();
    let dir = scratch("ckfail");
    // A non-empty directory where the checkpoint goes: the final rename must fail.
    std::fs::create_dir_all(dir.join("checkpoint.safetensors").join("x")).unwrap();
    let e = Trainer::new(quiet(1))
        .fit(&model(1), &train, None, Some(&dir))
        .unwrap_err();
    assert!(e.to_string().contains("checkpoint.safetensors"), "{e}");
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_3d_net_trains_on_patches_and_validates_on_whole_volumes() {
    let cfg = PhantomConfig {
        shape: vec![12, 10, 8],
        classes: 3,
        supersample: 1,
        ..Default::default()
    };
    let case = generate(&cfg, 11).unwrap().to_case("v");
    let patches = SetOptions {
        classes: 3,
        targets: TargetSource::OneHot,
        layout: Layout::Patches {
            patch: vec![8, 8, 8],
            foreground_fraction: 0.5,
        },
        multiple: 2,
    };
    let train = TrainSet::build(std::slice::from_ref(&case), &patches).unwrap();
    let whole = SetOptions {
        layout: Layout::Whole,
        ..patches
    };
    let val = TrainSet::build(std::slice::from_ref(&case), &whole).unwrap();
    assert_eq!(val.samples()[0].image.shape(), &[1, 12, 10, 8]);
    let net = UNetConfig {
        dims: 3,
        in_channels: 1,
        classes: 3,
        base: 2,
        depth: 1,
        norm: NormKind::Batch,
        dropout: 0.1,
        ..UNetConfig::default()
    };
    let m = SegModel::new(&net, 0, &Device::Cpu)
        .unwrap()
        .with_loss(Arc::new(SoftCe));
    let r = Trainer::new(TrainerConfig {
        iters_per_epoch: Some(2),
        ..quiet(2)
    })
    .fit(&m, &train, Some(&val), None)
    .unwrap();
    assert_eq!(r.steps, 4);
    assert!(r.epochs[1].val.as_ref().unwrap().nll.is_finite());
    assert!(!m.net().training(), "left in evaluation mode");
    let spec = calseg_seg::model::InputSpec::from_set(&train);
    assert_eq!(spec.patch, Some(vec![8, 8, 8]));
}

#[test]
fn schedules() {
    let c = Schedule::Cosine { warmup: 2 };
    assert_eq!(c.lr(1.0, 0, 0, 10), 0.5);
    assert_eq!(c.lr(1.0, 1, 0, 10), 1.0);
    assert!((c.lr(1.0, 2, 0, 10) - 1.0).abs() < 1e-12);
    assert!((c.lr(1.0, 6, 0, 10) - 0.5).abs() < 1e-12);
    let s = Schedule::Step {
        every: 2,
        gamma: 0.1,
    };
    assert_eq!(s.lr(1.0, 99, 1, 100), 1.0);
    assert!((s.lr(1.0, 99, 5, 100) - 0.01).abs() < 1e-12);
    assert_eq!(Schedule::Constant.lr(0.3, 5, 5, 10), 0.3);
    // configs parse from partial JSON
    let cfg: TrainerConfig =
        serde_json::from_str(r#"{"epochs": 3, "schedule": {"step": {"every": 1, "gamma": 0.5}}}"#)
            .unwrap();
    assert_eq!(cfg.epochs, 3);
    assert_eq!(cfg.lr, 1e-3);
    assert_eq!(
        cfg.schedule,
        Schedule::Step {
            every: 1,
            gamma: 0.5
        }
    );
}

#[test]
fn input_spec_follows_the_training_set() {
    let set = TrainSet::build(&[volume(1)], &slice_opts(TargetSource::OneHot)).unwrap();
    let spec = calseg_seg::model::InputSpec::from_set(&set);
    assert_eq!(spec.axis, Some(2));
    assert_eq!(spec.patch, None);
    assert_eq!(spec.train_size, vec![16, 16]);
}

#[test]
fn model_directories_round_trip_and_name_bad_files() {
    let dir = scratch("modeldir");
    let mut m = model(4).with_method(serde_json::json!({"name": "ce"}));
    m.set_temperature(1.7).unwrap();
    assert!(m.set_temperature(0.0).is_err());
    m.save(&dir).unwrap();
    let back = SegModel::load(&dir).unwrap();
    assert_eq!(back.info(), m.info());
    assert_eq!(params(back.varmap()), params(m.varmap()));
    assert_eq!(back.temperature(), 1.7);
    // a loaded model has no loss until one is set
    let train = TrainSet::build(&[volume(1)], &slice_opts(TargetSource::OneHot)).unwrap();
    assert!(
        Trainer::new(quiet(1))
            .fit(&back, &train, None, None)
            .is_err()
    );
    // corrupt weights are named
    std::fs::write(dir.join("model.safetensors"), b"garbage").unwrap();
    let e = SegModel::load(&dir).unwrap_err();
    assert!(e.to_string().contains("model.safetensors"), "{e}");
    // a missing description is named
    std::fs::remove_file(dir.join("model.json")).unwrap();
    let e = SegModel::load(&dir).unwrap_err();
    assert!(e.to_string().contains("model.json"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(SegModel::load(Path::new("/nonexistent/calseg")).is_err());
}

/// The embedded brain, split into axial slabs (train z < 41, validate z ≥ 41): a real-size
/// smoke run (a few steps; `cargo test --release -- --ignored icbm`).
#[test]
#[ignore]
fn icbm152_slab_smoke_run() {
    let ds = calseg_io::icbm152::open().unwrap();
    let case = ds.load("icbm152").unwrap();
    let opts = |range| SetOptions {
        classes: 4,
        targets: TargetSource::CaseSoft,
        layout: Layout::Slices {
            axis: None,
            range: Some(range),
            skip_empty: true,
        },
        multiple: 8,
    };
    let train = TrainSet::build(std::slice::from_ref(&case), &opts(0..41)).unwrap();
    let val = TrainSet::build(std::slice::from_ref(&case), &opts(41..82)).unwrap();
    assert_eq!(train.samples()[0].image.shape(), &[1, 80, 104]);
    let cfg = UNetConfig {
        dims: 2,
        in_channels: 1,
        classes: 4,
        base: 8,
        depth: 3,
        ..UNetConfig::default()
    };
    let m = SegModel::new(&cfg, 0, &Device::Cpu)
        .unwrap()
        .with_loss(Arc::new(SoftCe));
    let t0 = std::time::Instant::now();
    let r = Trainer::new(TrainerConfig {
        epochs: 2,
        iters_per_epoch: Some(5),
        batch_size: 4,
        lr: 3e-3,
        quiet: true,
        ..TrainerConfig::default()
    })
    .fit(&m, &train, Some(&val), None)
    .unwrap();
    eprintln!("{:?} in {:?}", r.epochs.last(), t0.elapsed());
    let m = m.with_input(calseg_seg::model::InputSpec::from_set(&train));
    let p = calseg_seg::infer::predict_probs(&m, case.image.clone()).unwrap();
    assert_eq!(p.shape(), &[4, 80, 100, 82]);
    eprintln!("inference done in {:?}", t0.elapsed());
}

#[test]
fn keep_best_ends_with_the_best_validations_weights() {
    let train = TrainSet::build(&[volume(1)], &slice_opts(TargetSource::OneHot)).unwrap();
    let val = TrainSet::build(&[volume(2)], &slice_opts(TargetSource::OneHot)).unwrap();
    // A constant schedule, so the first e epochs of any run are the same trajectory.
    let cfg = TrainerConfig {
        iters_per_epoch: Some(2),
        lr: 8e-2,
        schedule: Schedule::Constant,
        keep_best: true,
        ..quiet(8)
    };
    let dir = scratch("best");
    let a = model(5);
    let r = Trainer::new(cfg.clone())
        .fit(&a, &train, Some(&val), Some(&dir))
        .unwrap();
    let dice: Vec<f64> = r
        .epochs
        .iter()
        .map(|e| e.val.as_ref().unwrap().dice_mean_fg)
        .collect();
    let best = r
        .best
        .expect("a validated keep-best run reports its best epoch");
    let top = dice.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    assert_eq!(best.dice_mean_fg, top, "{dice:?}");
    assert_eq!(dice[best.epoch], top);
    assert!(
        best.epoch + 1 < dice.len(),
        "this setting peaks before the end: {dice:?}"
    );
    assert!(dir.join(calseg_seg::train::BEST_FILE).exists());
    // The kept weights are those of epoch `best.epoch`: a plain run that stops there.
    let b = model(5);
    Trainer::new(TrainerConfig {
        epochs: best.epoch + 1,
        keep_best: false,
        ..cfg.clone()
    })
    .fit(&b, &train, None, None)
    .unwrap();
    assert_eq!(params(a.varmap()), params(b.varmap()));
    // … and they validate to the recorded Dice.
    let v = calseg_seg::train::validate(&a, &val, 2).unwrap();
    assert_eq!(v.dice_mean_fg, best.dice_mean_fg);
    // Without keep_best the run ends with the last weights.
    let c = model(5);
    let rc = Trainer::new(TrainerConfig {
        keep_best: false,
        ..cfg.clone()
    })
    .fit(&c, &train, Some(&val), None)
    .unwrap();
    assert!(rc.best.is_none());
    assert_ne!(params(a.varmap()), params(c.varmap()));
    // Killed half-way and resumed: the best of the first half survives in best.safetensors.
    let dir2 = scratch("best-resume");
    let d = model(5);
    let rd = Trainer::new(TrainerConfig {
        stop_after: Some(best.epoch + 1),
        ..cfg.clone()
    })
    .fit(&d, &train, Some(&val), Some(&dir2))
    .unwrap();
    assert!(rd.best.is_none(), "a stopped run keeps its last weights");
    let e = model(77);
    let re = Trainer::new(TrainerConfig {
        resume: true,
        ..cfg.clone()
    })
    .fit(&e, &train, Some(&val), Some(&dir2))
    .unwrap();
    assert_eq!(re.best, Some(best));
    assert_eq!(params(e.varmap()), params(a.varmap()));
    // A fresh run in the same folder does not inherit an earlier run's best weights.
    let f = Trainer::new(cfg.clone())
        .fit(&model(5), &train, None, Some(&dir))
        .unwrap();
    assert!(f.best.is_none());
    assert!(!dir.join(calseg_seg::train::BEST_FILE).exists());
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&dir2).unwrap();
}
