//! `calseg calibrate`: temperature scaling of a trained model, fitted on the validation
//! part of a dataset (the split rule of `calseg train`), stored in its `model.json`.

use super::CliResult;
use super::predict::{in_case, load_model};
use super::train::{bad, failed, open_dataset, seg_err, train_val_cases};
use calseg_seg::calibrate::{DEFAULT_ECE_BINS, FitConfig, Objective, Temperature, TemperatureFit};
use calseg_seg::infer::{InferOptions, InferSpec, predict_logits};
use clap::{Args, ValueEnum};
use std::path::PathBuf;

/// What the temperature minimises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ObjectiveArg {
    /// Mean negative log-likelihood (grid, then golden-section refinement).
    Nll,
    /// Top-label ECE with `--bins` bins (grid only: the ECE is piecewise constant in T).
    Ece,
}

/// Arguments of `calseg calibrate`.
#[derive(Args, Debug)]
pub struct CalibrateArgs {
    /// Model folder written by `calseg train`; its model.json gets the fitted temperature.
    #[arg(long)]
    model: PathBuf,
    /// The dataset the model was trained on: T is fitted on its validation part (the
    /// last 20 % of ≥ 5 training cases, else the top 20 % of slices along the axis).
    #[arg(long)]
    data: PathBuf,
    /// What T minimises on the validation voxels.
    #[arg(long, value_enum, default_value_t = ObjectiveArg::Nll)]
    objective: ObjectiveArg,
    /// Bins of the ECE (objective and report).
    #[arg(long, default_value_t = DEFAULT_ECE_BINS)]
    bins: usize,
    /// Axis of the slice-wise validation split (default: the one `calseg train` used,
    /// recorded in model.json, else 2).
    #[arg(long)]
    axis: Option<usize>,
    #[command(flatten)]
    device: super::DeviceArg,
}

/// Runs `calseg calibrate`.
pub fn run(args: CalibrateArgs) -> CliResult {
    let fit_cfg = match args.objective {
        ObjectiveArg::Nll => FitConfig::default(),
        ObjectiveArg::Ece => FitConfig::ece(args.bins),
    };
    let mut fit = TemperatureFit::new(fit_cfg).map_err(|e| bad(format!("--bins: {e}")))?;
    // ECE at the requested bins when the objective's own report uses other bins.
    let mut ece_fit = match (args.objective, args.bins) {
        (ObjectiveArg::Nll, b) if b != DEFAULT_ECE_BINS => {
            Some(TemperatureFit::new(FitConfig::ece(b)).map_err(|e| bad(format!("--bins: {e}")))?)
        }
        _ => None,
    };
    let mut model = load_model(&args.model, &args.device.open()?)?;
    let info = model.info().clone();
    let ds = open_dataset(&args.data)?;
    let (ds_channels, ds_classes) = (ds.info().channel_names.len(), ds.info().num_classes());
    if ds_channels != info.in_channels || ds_classes != info.classes {
        return Err(bad(format!(
            "{}: the dataset has {ds_channels} channel(s) and {ds_classes} classes, the model {} \
             takes {} channel(s) and predicts {} classes",
            args.data.join("dataset.json").display(),
            args.model.display(),
            info.in_channels,
            info.classes
        )));
    }
    let axis = args
        .axis
        .or_else(|| {
            info.method
                .get("val_split_axis")
                .and_then(|v| v.as_u64())
                .map(|a| a as usize)
        })
        .unwrap_or(2);
    let (_, val) = train_val_cases(&ds, axis, None)?;
    let spec = InferSpec::of(&model);
    let opts = InferOptions::default();
    for case in val {
        let label = case
            .label
            .as_ref()
            .ok_or_else(|| bad(format!("validation case {} has no label map", case.id)))?
            .clone();
        let logits = predict_logits(&model, &spec, case.image, &opts)
            .map_err(|e| in_case(&case.id, seg_err(e)))?;
        fit.update(logits.view(), label.view())
            .map_err(|e| in_case(&case.id, seg_err(e)))?;
        if let Some(f) = ece_fit.as_mut() {
            f.update(logits.view(), label.view())
                .map_err(|e| in_case(&case.id, seg_err(e)))?;
        }
    }
    let r = fit.fit().map_err(seg_err)?;
    let t = r.temperature.0;
    let (ece1, ece_t) = match &ece_fit {
        Some(f) => (
            f.evaluate(Temperature(1.0)).map_err(failed)?.ece,
            f.evaluate(r.temperature).map_err(failed)?.ece,
        ),
        None => (r.ece_at_one, r.ece),
    };
    model.set_temperature(t).map_err(failed)?;
    model.save(&args.model).map_err(failed)?;
    let objective = match r.objective {
        Objective::Nll => "NLL".to_string(),
        Objective::Ece { bins } => format!("ECE ({bins} bins)"),
    };
    println!(
        "temperature T = {t:.4} (minimising {objective} on {} validation voxels)",
        r.n_voxels
    );
    println!(
        "  T = 1:      NLL {:.5}  ECE({} bins) {ece1:.5}",
        r.nll_at_one, args.bins
    );
    println!(
        "  T = {t:<7.4} NLL {:.5}  ECE({} bins) {ece_t:.5}",
        r.nll, args.bins
    );
    println!(
        "stored in {}",
        args.model.join(calseg_seg::model::MODEL_JSON).display()
    );
    Ok(())
}
