//! Cross-fitted CALSeg (`CalsegConfig::crossfit = 2`) on the embedded brain with a tiny
//! budget: each half of the training slab gets its `y_s` from the smoother trained on
//! the other half, τ is calibrated on those maps, and a re-run from the same folder loads
//! every stage and gives the same numbers.

mod common;

use calseg::vls::crossfit;
use calseg::vls::smooth::smooth_case;
use calseg::vls::{Calseg, CalsegConfig, VlsModel};
use calseg::{Device, EvalCase};
use ndarray::{Axis, Slice};

fn tiny() -> CalsegConfig {
    let mut cfg = common::tiny_calseg_config();
    cfg.crossfit = 2;
    cfg
}

#[test]
fn each_half_is_smoothed_by_the_smoother_that_did_not_see_it() {
    let dir = common::scratch_in("crossfit", "halves");
    let brain = calseg::io::icbm152::open().unwrap();
    let data = calseg::experiment::Split::load(&brain, &Default::default()).unwrap();
    let val = EvalCase::all(&data.val);
    let method = Calseg::new(tiny()).unwrap();
    let run = method.run(&data.train, &val, 3, Some(&dir)).unwrap();
    assert_eq!(run.folds, 2);

    // The folds the pipeline cut: one training slab, halves along the axial axis.
    let case = &data.train[0];
    let folds = crossfit::plan(&data.train, 2, 2).unwrap();
    let sc = method.config().smooth_config(3);
    let y_s = &run.soft_labels[0].y_s;
    let mut fold_maps = Vec::new();
    for (f, fold) in folds.iter().enumerate() {
        let model =
            VlsModel::load_dir(dir.join("vls").join(format!("fold{f}")), &Device::Cpu).unwrap();
        let own = smooth_case(&model, case, &sc).unwrap().y_s;
        let r = fold.held[0].range.clone().unwrap();
        let held = y_s.slice_axis(Axis(3), Slice::from(r.clone()));
        let from_fold = own.slice_axis(Axis(3), Slice::from(r));
        assert_eq!(
            held, from_fold,
            "fold {f}'s slab comes from fold {f}'s smoother"
        );
        fold_maps.push(own);
    }
    // The two smoothers differ (they saw different slabs), so the assembly matters.
    assert_ne!(fold_maps[0], fold_maps[1]);

    // τ is calibrated on the out-of-sample maps and stored beside the folds.
    let cal = run.calibration.clone().expect("calibrated");
    assert!(cal.tau.is_finite() && cal.tau > 0.0);
    assert!(dir.join("vls").join("calibration.json").exists());
    assert_eq!(run.choice.tau, cal.tau);

    // A re-run loads every stage and gives the same soft labels and choice.
    let again = method.run(&data.train, &val, 3, Some(&dir)).unwrap();
    assert_eq!(&again.soft_labels[0].y_s, y_s);
    assert_eq!(again.choice, run.choice);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn one_fold_is_refused() {
    let mut cfg = tiny();
    cfg.crossfit = 1;
    let err = Calseg::new(cfg).unwrap_err().to_string();
    assert!(err.contains("crossfit"), "{err}");
}
