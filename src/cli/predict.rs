//! `calseg predict`: class probabilities of a trained model (`calseg train`) for the
//! cases of a dataset or for one image file.

use super::train::{bad, failed, open_dataset, seg_err};
use super::{CliError, CliResult};
use calseg_io::{Geometry, NamedTensor};
use calseg_seg::infer::{InferOptions, predict_probs_with};
use calseg_seg::model::SegModel;
use clap::{Args, ValueEnum};
use ndarray::{ArrayD, Axis};
use std::path::{Path, PathBuf};

/// Output file format(s).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutFormat {
    /// CASE.nii.gz: float32 (x, y, z, K), classes last, with the source geometry.
    Nifti,
    /// CASE.safetensors: tensor `probs`, (K, *spatial) float32.
    Safetensors,
    /// Both files.
    Both,
}

/// Arguments of `calseg predict`.
#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["data", "image"])))]
pub struct PredictArgs {
    /// Model folder written by `calseg train` (model.json, model.safetensors).
    #[arg(long)]
    model: PathBuf,
    /// Dataset folder: predicts every test case (imagesTs), or every training case when
    /// there is none.
    #[arg(long)]
    data: Option<PathBuf>,
    /// One image file (NIfTI 3D for one channel, 4D with the channels last; also npy,
    /// safetensors, PNG).
    #[arg(long)]
    image: Option<PathBuf>,
    /// Output folder (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Temperature dividing the logits (default: the model's, 1 unless calibrated).
    #[arg(long)]
    temperature: Option<f64>,
    /// Output format(s).
    #[arg(long, value_enum, default_value_t = OutFormat::Nifti)]
    format: OutFormat,
    /// Slices or sliding windows per forward pass.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[command(flatten)]
    device: super::DeviceArg,
}

/// Case id of an image file: its name without `.nii.gz` (or its last extension).
fn case_id(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".nii.gz") {
        return name[..name.len() - 7].to_string();
    }
    match name.rfind('.') {
        Some(i) if i > 0 => name[..i].to_string(),
        _ => name,
    }
}

/// An image file as `(C, *spatial)` for a model with `channels` input channels: a
/// single-channel model takes a 2D/3D array as is (or a trailing singleton axis);
/// otherwise the channels must be the last axis.
fn image_channels_first(
    data: ArrayD<f32>,
    channels: usize,
    dims: usize,
    path: &Path,
) -> Result<ArrayD<f32>, CliError> {
    let shape = data.shape().to_vec();
    let nd = shape.len();
    if channels == 1 && (nd == dims || nd == 3) {
        return Ok(data.insert_axis(Axis(0)));
    }
    if nd >= 3 && shape[nd - 1] == channels {
        let mut order = vec![nd - 1];
        order.extend(0..nd - 1);
        return Ok(data.permuted_axes(order).as_standard_layout().into_owned());
    }
    Err(bad(format!(
        "{}: image of shape {shape:?} does not have the {channels} channel(s) the model \
         expects (one channel: a 2D/3D image; several: on the last axis)",
        path.display()
    )))
}

/// Writes the probabilities of one case in the requested format(s).
fn write(
    out: &Path,
    id: &str,
    probs: &ArrayD<f32>,
    geometry: &Geometry,
    format: OutFormat,
) -> Result<(), CliError> {
    if matches!(format, OutFormat::Nifti | OutFormat::Both) {
        calseg_io::write_nifti_probs(out.join(format!("{id}.nii.gz")), probs, geometry)
            .map_err(failed)?;
    }
    if matches!(format, OutFormat::Safetensors | OutFormat::Both) {
        calseg_io::write_safetensors(
            out.join(format!("{id}.safetensors")),
            &[NamedTensor::new("probs", probs)],
        )
        .map_err(failed)?;
    }
    Ok(())
}

/// Prefixes an error's message with the case (or file) it concerns, keeping its kind.
pub(crate) fn in_case(what: &str, e: CliError) -> CliError {
    let bad_input = e.exit_code() == 2;
    let m = format!("{what}: {e}");
    if bad_input {
        CliError::BadInput(m)
    } else {
        CliError::Failed(m)
    }
}

/// Loads a model folder (exit 2 naming the file on failure).
pub(crate) fn load_model(dir: &Path, device: &candle_core::Device) -> Result<SegModel, CliError> {
    SegModel::load_on(dir, device).map_err(|e| bad(format!("model {}: {e}", dir.display())))
}

/// Runs `calseg predict`.
pub fn run(args: PredictArgs) -> CliResult {
    if let Some(t) = args.temperature
        && !(t.is_finite() && t > 0.0)
    {
        return Err(bad(format!(
            "--temperature must be finite and positive, got {t}"
        )));
    }
    if args.batch_size == 0 {
        return Err(bad("--batch-size must be positive"));
    }
    let model = load_model(&args.model, &args.device.open()?)?;
    let (channels, dims) = (model.info().in_channels, model.info().unet.dims);
    let opts = InferOptions {
        temperature: args.temperature,
        batch_size: args.batch_size,
        ..InferOptions::default()
    };
    let t_used = args.temperature.unwrap_or(model.temperature());
    if let Some(path) = &args.image {
        let img = calseg_io::read_image(path).map_err(bad)?;
        let geometry = img.geometry.clone();
        let image = image_channels_first(img.to_f32(), channels, dims, path)?;
        let probs = predict_probs_with(&model, image, &opts)
            .map_err(|e| in_case(&path.display().to_string(), seg_err(e)))?;
        std::fs::create_dir_all(&args.out)
            .map_err(|e| failed(format!("{}: cannot create: {e}", args.out.display())))?;
        let id = case_id(path);
        write(&args.out, &id, &probs, &geometry, args.format)?;
        println!(
            "{id}: probabilities {:?} (T = {t_used}) written to {}",
            probs.shape(),
            args.out.display()
        );
        return Ok(());
    }
    let Some(data) = &args.data else {
        return Err(bad("give --data DIR or --image FILE"));
    };
    let ds = open_dataset(data)?;
    let ds_channels = ds.info().channel_names.len();
    if ds_channels != channels {
        return Err(bad(format!(
            "{}: the dataset has {ds_channels} channel(s), the model {} expects {channels}",
            data.join("dataset.json").display(),
            args.model.display()
        )));
    }
    let refs = if ds.test_cases().is_empty() {
        ds.training_cases()
    } else {
        ds.test_cases()
    };
    if refs.is_empty() {
        return Err(bad(format!("{}: the dataset has no cases", data.display())));
    }
    std::fs::create_dir_all(&args.out)
        .map_err(|e| failed(format!("{}: cannot create: {e}", args.out.display())))?;
    for r in refs {
        let case = ds.load_case(r).map_err(bad)?;
        let probs = predict_probs_with(&model, case.image, &opts)
            .map_err(|e| in_case(&case.id, seg_err(e)))?;
        write(&args.out, &case.id, &probs, &case.geometry, args.format)?;
        println!("{}: probabilities {:?}", case.id, probs.shape());
    }
    println!(
        "predicted {} case(s) (T = {t_used}) into {}",
        refs.len(),
        args.out.display()
    );
    Ok(())
}
