//! The README's "As a library" snippet, kept here so that CI compiles it: train the
//! variational label smoother on the embedded brain, smooth its labels, train a
//! segmentation net on them, evaluate. `cargo run --release --example quickstart`
//! (several minutes: the default budgets).

use calseg::io::icbm152;
use calseg::metrics::{Evaluator, MetricConfig};
use calseg::seg::train::{SetOptions, TargetSource, TrainSet, Trainer, TrainerConfig};
use calseg::seg::{infer::predict_probs, loss::Method, model::SegModel, net::UNetConfig};
use calseg::vls::{
    VlsConfig, VlsModel,
    smooth::{SmoothConfig, smooth_case},
};
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let case = icbm152::open()?.load("icbm152")?; // image (1, 80,100,82), labels
    let vls = VlsModel::new(&VlsConfig::default(), 0, &candle_core::Device::Cpu)?;
    let opts = |t| SetOptions {
        classes: 4,
        targets: t,
        layout: Default::default(),
        multiple: 16,
    };
    Trainer::new(TrainerConfig::default()).fit(
        &vls,
        &TrainSet::build(std::slice::from_ref(&case), &opts(TargetSource::OneHot))?,
        None,
        None,
    )?;
    let mut soft = case.clone(); // Y_s = ½·y + ½·y_s (m = 16)
    soft.soft_label = Some(smooth_case(&vls, &case, &SmoothConfig::default())?.soft);
    let cfg = UNetConfig {
        in_channels: 1,
        classes: 4,
        ..UNetConfig::default()
    };
    let net =
        SegModel::new(&cfg, 0, &candle_core::Device::Cpu)?.with_loss(Method::Soft.build()?.into());
    Trainer::new(TrainerConfig::default()).fit(
        &net,
        &TrainSet::build(&[soft], &opts(TargetSource::CaseSoft))?,
        None,
        None,
    )?;
    let probs = predict_probs(&net, case.image.clone())?; // (4, 80,100,82)
    let mut ev = Evaluator::new(MetricConfig::default())?; // streaming: update / merge / finish
    ev.update(probs.view(), case.label.as_ref().ok_or("no labels")?.view())?;
    println!("ECE {:.4}  Dice {:?}", ev.finish()?.ece, ev.finish()?.dice);
    Ok(())
}
