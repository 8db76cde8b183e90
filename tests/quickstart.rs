//! Runs `examples/quickstart.rs` (the README's library snippet) end to end on the
//! embedded brain with a tiny budget and a two-point (α, τ) sweep, so the validation
//! choice runs too. The numbers of such a budget are not a comparison; the test checks
//! that the public API carries the whole method through and that the choice obeys its
//! rule.

#[path = "../examples/quickstart.rs"]
#[allow(dead_code)]
mod quickstart;

use calseg::CalsegConfig;
use calseg::seg::train::Schedule;

#[test]
fn quickstart_runs_calseg_end_to_end_with_a_validation_choice() {
    let mut cfg = CalsegConfig::for_classes(4, 1);
    for t in [&mut cfg.smoother_train, &mut cfg.net.train] {
        t.epochs = 1;
        t.iters_per_epoch = Some(2);
        t.batch_size = 2;
        t.schedule = Schedule::Constant;
        t.checkpoint_every = 0;
        t.quiet = true;
    }
    cfg.net.net.base = 4;
    cfg.smoother.base = 4;
    cfg.smoother.enc_base = 4;
    cfg.samples = 2;
    cfg.alpha = vec![0.25, 0.5];
    let test = quickstart::run(cfg).expect("quickstart");
    assert_eq!(test.n_cases, 1);
    assert_eq!(test.region.n_classes, 4);
    assert!(test.region.ece.is_finite() && test.foreground.ece.is_finite());
    assert!((0.0..=1.0).contains(&test.region.dice[0]));
}
