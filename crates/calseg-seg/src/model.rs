//! A trained segmentation model on disk: [`SegModel`] = U-Net + training loss +
//! temperature, saved as a *model directory*:
//!
//! - `model.safetensors`: the parameters (candle-nn names, BatchNorm running
//!   statistics included), written atomically;
//! - `model.json`: [`ModelInfo`] — the U-Net configuration, the method (name and
//!   parameters as free JSON supplied by the caller), classes, input channels,
//!   temperature, the normalisation applied to inputs, and how the net sees images
//!   ([`InputSpec`]: 2D slices along an axis, whole images, or 3D patches).
//!
//! [`SegModel::load`] rebuilds the U-Net from `model.json` and loads the weights; the
//! loss is not stored (it only matters for training: set one with
//! [`SegModel::with_loss`] to fine-tune).

use crate::loss::SegLoss;
use crate::net::{UNet, UNetConfig};
use crate::train::checkpoint::{load_into_varmap, load_tensors, named_vars, save_tensors};
use crate::train::{Batch, StepInfo, Trainable};
use crate::{Result, SegError};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarMap;
use rand::Rng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

/// Weights file of a model directory.
pub const MODEL_WEIGHTS: &str = "model.safetensors";
/// Description file of a model directory.
pub const MODEL_JSON: &str = "model.json";

/// The normalisation every input image gets (training and inference).
pub const NORMALISATION: &str =
    "zscore_nonzero: per channel, z-score over voxels where any channel is nonzero; 0 elsewhere";

/// How the network sees images.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    /// For a 2D net applied to 3D volumes: the spatial axis it slices along (`None`:
    /// the last one).
    #[serde(default)]
    pub axis: Option<usize>,
    /// For a 3D net trained on patches: the patch size (inference uses a sliding window
    /// on larger volumes).
    #[serde(default)]
    pub patch: Option<Vec<usize>>,
    /// Spatial size of the training samples (after padding), for the record.
    #[serde(default)]
    pub train_size: Vec<usize>,
}

impl InputSpec {
    /// How a net trained on `set` sees images: the slicing axis of a slice set
    /// (resolved: the last spatial axis of the volumes when it was left unset), the patch
    /// of a patch set, and the batch shape.
    pub fn from_set(set: &crate::train::TrainSet) -> Self {
        use crate::train::Layout;
        let (axis, patch) = match &set.options().layout {
            Layout::Slices { axis, .. } => (Some(axis.unwrap_or(2)), None),
            Layout::Whole => (None, None),
            Layout::Patches { patch, .. } => (None, Some(patch.clone())),
        };
        Self {
            axis,
            patch,
            train_size: set.batch_shape(),
        }
    }
}

/// Contents of `model.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The network.
    pub unet: UNetConfig,
    /// The training method: name and parameters, as the caller describes them (e.g.
    /// `{"name": "svls", "sigma": 1.0}`).
    pub method: serde_json::Value,
    /// Number of classes `K`.
    pub classes: usize,
    /// Input channels `C`.
    pub in_channels: usize,
    /// Temperature dividing the logits before the softmax (1 = none).
    pub temperature: f64,
    /// The input normalisation ([`NORMALISATION`]).
    pub normalisation: String,
    /// How the network sees images.
    #[serde(default)]
    pub input: InputSpec,
    /// Seed the network was initialised with.
    #[serde(default)]
    pub seed: u64,
}

/// U-Net + loss + temperature; implements [`Trainable`].
///
/// ```
/// use calseg_seg::model::SegModel;
/// use calseg_seg::net::UNetConfig;
/// use calseg_seg::train::Trainable;
/// use candle_core::{Device, Tensor};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cfg = UNetConfig { in_channels: 1, classes: 3, base: 4, depth: 2, ..UNetConfig::default() };
/// let model = SegModel::new(&cfg, 0, &Device::Cpu)?;
/// let dir = std::env::temp_dir().join(format!("calseg-model-doc-{}", std::process::id()));
/// model.save(&dir)?;
/// let back = SegModel::load(&dir)?;
/// let x = Tensor::ones((1, 1, 8, 8), candle_core::DType::F32, &Device::Cpu)?;
/// let same = (model.predict(&x)? - back.predict(&x)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
/// assert_eq!(same, 0.0);
/// std::fs::remove_dir_all(&dir)?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SegModel {
    net: UNet,
    varmap: VarMap,
    loss: Option<Arc<dyn SegLoss>>,
    info: ModelInfo,
}

impl std::fmt::Debug for SegModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegModel")
            .field("net", &self.net)
            .field("loss", &self.loss)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl SegModel {
    /// A fresh model (weights from `seed`, f32 on `device`), no loss, temperature 1,
    /// method `null`.
    pub fn new(cfg: &UNetConfig, seed: u64, device: &Device) -> Result<Self> {
        let varmap = VarMap::new();
        let net = UNet::new(cfg, &varmap, seed, DType::F32, device)?;
        Ok(Self {
            net,
            varmap,
            loss: None,
            info: ModelInfo {
                unet: cfg.clone(),
                method: serde_json::Value::Null,
                classes: cfg.classes,
                in_channels: cfg.in_channels,
                temperature: 1.0,
                normalisation: NORMALISATION.to_string(),
                input: InputSpec::default(),
                seed,
            },
        })
    }

    /// Sets the training loss.
    pub fn with_loss(mut self, loss: Arc<dyn SegLoss>) -> Self {
        self.loss = Some(loss);
        self
    }

    /// Sets the method description stored in `model.json`.
    pub fn with_method(mut self, method: serde_json::Value) -> Self {
        self.info.method = method;
        self
    }

    /// Sets how the network sees images (stored in `model.json`, used by inference).
    pub fn with_input(mut self, input: InputSpec) -> Self {
        self.info.input = input;
        self
    }

    /// The network.
    pub fn net(&self) -> &UNet {
        &self.net
    }

    /// The loss, if set.
    pub fn loss_fn(&self) -> Option<&Arc<dyn SegLoss>> {
        self.loss.as_ref()
    }

    /// The description (`model.json`).
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Mutable description (method, input spec…); the U-Net part must stay as built.
    pub fn info_mut(&mut self) -> &mut ModelInfo {
        &mut self.info
    }

    /// The temperature.
    pub fn temperature(&self) -> f64 {
        self.info.temperature
    }

    /// Sets the temperature (from temperature scaling).
    ///
    /// # Errors
    /// [`SegError::Config`] unless `t` is finite and positive.
    pub fn set_temperature(&mut self, t: f64) -> Result<()> {
        if !(t.is_finite() && t > 0.0) {
            return Err(SegError::Config(format!(
                "temperature must be finite and positive, got {t}"
            )));
        }
        self.info.temperature = t;
        Ok(())
    }

    /// Writes `dir/model.safetensors` and `dir/model.json` (creating `dir`), each
    /// atomically.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| SegError::checkpoint(dir, e))?;
        let tensors: Vec<(String, Tensor)> = named_vars(&self.varmap)?
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().clone()))
            .collect();
        save_tensors(&dir.join(MODEL_WEIGHTS), &tensors, None)?;
        let json = serde_json::to_string_pretty(&self.info)
            .map_err(|e| SegError::Config(format!("model.json: {e}")))?;
        calseg_io::atomic::write_atomic(&dir.join(MODEL_JSON), json.as_bytes())?;
        Ok(())
    }

    /// Loads a model directory onto the CPU, in evaluation mode.
    ///
    /// # Errors
    /// [`SegError::Checkpoint`] naming `model.json` or `model.safetensors` when it is
    /// missing, corrupt, or does not fit the configuration.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        Self::load_on(dir, &Device::Cpu)
    }

    /// [`SegModel::load`] onto `device`.
    pub fn load_on(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let dir = dir.as_ref();
        let jp = dir.join(MODEL_JSON);
        let text = std::fs::read_to_string(&jp).map_err(|e| SegError::checkpoint(&jp, e))?;
        let info: ModelInfo = serde_json::from_str(&text)
            .map_err(|e| SegError::checkpoint(&jp, format!("invalid model description: {e}")))?;
        if info.classes != info.unet.classes || info.in_channels != info.unet.in_channels {
            return Err(SegError::checkpoint(
                &jp,
                "classes/in_channels disagree with the U-Net configuration",
            ));
        }
        let mut m =
            Self::new(&info.unet, info.seed, device).map_err(|e| SegError::checkpoint(&jp, e))?;
        let wp = dir.join(MODEL_WEIGHTS);
        let (tensors, _) = load_tensors(&wp, device)?;
        load_into_varmap(&m.varmap, &tensors, &wp)?;
        m.info = info;
        m.net.set_training(false);
        Ok(m)
    }
}

impl Trainable for SegModel {
    fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// `loss(net(image), target)`; dropout (if any) reseeded from `rng` first.
    fn loss(
        &self,
        batch: &Batch,
        _info: &StepInfo,
        rng: &mut StdRng,
    ) -> Result<(Tensor, Vec<(String, f64)>)> {
        let loss = self
            .loss
            .as_ref()
            .ok_or_else(|| SegError::Config("the model has no training loss set".into()))?;
        self.net.set_dropout_seed(rng.random());
        let logits = self.net.forward(&batch.image)?;
        Ok((loss.forward(&logits, &batch.target)?, Vec::new()))
    }

    /// Raw logits (no temperature).
    fn predict(&self, image: &Tensor) -> Result<Tensor> {
        Ok(self.net.forward(image)?)
    }

    fn set_training(&self, training: bool) {
        self.net.set_training(training)
    }
}
