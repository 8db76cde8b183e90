//! A segmentation net from cases in one call: the U-Net, its loss, its training budget and
//! how cases become samples, as one value ([`NetRecipe`]), and [`NetRecipe::fit`], which
//! builds the sets, trains (with checkpoints and exact resume when given a folder) and
//! returns the trained [`SegModel`] with its wall time.
//!
//! Every method of the project trains through this one path: `calseg train`, each
//! baseline of `calseg experiment`, and CALSeg's final net (`calseg_vls::pipeline`).
//!
//! ```no_run
//! use calseg_seg::recipe::NetRecipe;
//! use calseg_seg::train::TargetSource;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let case = calseg_io::icbm152::open()?.load("icbm152")?;
//! let recipe = NetRecipe::for_classes(4, 1);       // 2D U-Net on axial slices, CE
//! let fitted = recipe.fit("ce", &[case], TargetSource::OneHot, &[], 0, None)?;
//! println!("trained in {:.1} s", fitted.seconds);
//! # Ok(()) }
//! ```

use crate::loss::LossConfig;
use crate::model::{InputSpec, MODEL_JSON, SegModel};
use crate::net::UNetConfig;
use crate::train::{
    Layout, SetOptions, TargetSource, TrainReport, TrainSet, Trainer, TrainerConfig,
};
use crate::{Result, SegError};
use calseg_io::Case;
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

/// The wall-time record written beside a trained model by [`NetRecipe::fit`].
pub const TIMING_FILE: &str = "timing.json";

/// How a segmentation net is built and trained. Equality ignores the device.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetRecipe {
    /// The U-Net (its `in_channels` and `classes` must match the data).
    pub net: UNetConfig,
    /// The training budget and optimiser (its `seed` is replaced by `fit`'s).
    pub train: TrainerConfig,
    /// The loss.
    pub loss: LossConfig,
    /// How cases become samples (2D slices along an axis, whole cases, 3D patches).
    pub layout: Layout,
    /// Device of the weights and of training.
    #[serde(skip)]
    pub device: Device,
}

impl Default for NetRecipe {
    fn default() -> Self {
        NetRecipe {
            net: UNetConfig::default(),
            train: TrainerConfig::default(),
            loss: LossConfig::default(),
            layout: Layout::default(),
            device: Device::Cpu,
        }
    }
}

impl PartialEq for NetRecipe {
    fn eq(&self, other: &Self) -> bool {
        self.net == other.net
            && self.train == other.train
            && self.loss == other.loss
            && self.layout == other.layout
    }
}

/// What [`NetRecipe::fit`] returns.
#[derive(Debug, Clone)]
pub struct FittedNet {
    /// The trained model (loss attached, method recorded in its `model.json`).
    pub model: SegModel,
    /// Wall-clock seconds of the training (as recorded when it was loaded from a folder).
    pub seconds: f64,
    /// The trainer's report (`None` when the model was loaded, already trained).
    pub report: Option<TrainReport>,
}

impl NetRecipe {
    /// The default recipe for `classes` classes and `in_channels` image channels.
    pub fn for_classes(classes: usize, in_channels: usize) -> Self {
        let mut r = NetRecipe::default();
        r.net.classes = classes;
        r.net.in_channels = in_channels;
        r
    }

    /// The same recipe on `device`.
    pub fn on(mut self, device: &Device) -> Self {
        self.device = device.clone();
        self
    }

    /// The options of the training and validation sets with `targets`.
    pub fn set_options(&self, targets: TargetSource) -> SetOptions {
        SetOptions {
            classes: self.net.classes,
            targets,
            layout: self.layout.clone(),
            multiple: self.net.size_multiple(),
        }
    }

    /// Trains a fresh net (weights from `seed`) named `name` on `train` with `targets`,
    /// validating on `val` (one-hot targets; empty: no validation).
    ///
    /// With `dir`, checkpoints go there, an interrupted run resumes from them, and the
    /// finished model is saved there (`model.json` last, then [`TIMING_FILE`]); a folder
    /// that already holds a finished model is loaded instead of trained again.
    ///
    /// # Errors
    /// [`SegError::Config`] for an invalid loss or budget, [`SegError::Shape`] when the
    /// cases do not fit the net, and whatever training or saving raises.
    pub fn fit(
        &self,
        name: &str,
        train: &[Case],
        targets: TargetSource,
        val: &[Case],
        seed: u64,
        dir: Option<&Path>,
    ) -> Result<FittedNet> {
        if let Some(d) = dir
            && let Some(done) = Self::load_finished(d)?
        {
            return Ok(done);
        }
        let loss = self.loss.build_arc()?;
        let train_set = TrainSet::build(train, &self.set_options(targets))?;
        let val_set = if val.is_empty() {
            None
        } else {
            Some(TrainSet::build(
                val,
                &self.set_options(TargetSource::OneHot),
            )?)
        };
        let model = SegModel::new(&self.net, seed, &self.device)?
            .with_loss(loss)
            .with_method(serde_json::json!({
                "name": name,
                "loss": self.loss.method,
                "dice_weight": self.loss.dice_weight,
            }))
            .with_input(InputSpec::from_set(&train_set));
        let trainer = Trainer::new(TrainerConfig {
            seed,
            resume: dir.is_some() || self.train.resume,
            ..self.train.clone()
        });
        let t0 = Instant::now();
        let report = trainer.fit(&model, &train_set, val_set.as_ref(), dir)?;
        let seconds = t0.elapsed().as_secs_f64();
        if let Some(d) = dir {
            model.save(d)?;
            let text = serde_json::json!({ "train_seconds": seconds }).to_string();
            calseg_io::atomic::write_atomic(&d.join(TIMING_FILE), text.as_bytes())?;
        }
        Ok(FittedNet {
            model,
            seconds,
            report: Some(report),
        })
    }

    /// The finished model of `dir` (`model.json` and [`TIMING_FILE`] both present), if any.
    ///
    /// # Errors
    /// As [`SegModel::load`].
    pub fn load_finished(dir: &Path) -> Result<Option<FittedNet>> {
        let timing = dir.join(TIMING_FILE);
        if !(dir.join(MODEL_JSON).exists() && timing.exists()) {
            return Ok(None);
        }
        let seconds = std::fs::read_to_string(&timing)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["train_seconds"].as_f64())
            .unwrap_or(f64::NAN);
        Ok(Some(FittedNet {
            model: SegModel::load(dir)?,
            seconds,
            report: None,
        }))
    }

    /// Checks the loss and the budget.
    ///
    /// # Errors
    /// [`SegError::Config`] naming the bad value.
    pub fn validate(&self) -> Result<()> {
        self.loss.validate()?;
        if self.train.batch_size == 0 || self.train.epochs == 0 {
            return Err(SegError::Config(
                "train.batch_size and train.epochs must be ≥ 1".into(),
            ));
        }
        if self.net.classes < 2 {
            return Err(SegError::Config(format!(
                "a segmentation net needs at least 2 classes, got {}",
                self.net.classes
            )));
        }
        Ok(())
    }
}
