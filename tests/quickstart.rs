//! Runs `examples/quickstart.rs` (the README's library snippet) end to end on the
//! embedded brain with a tiny budget and a two-point (α, τ) sweep, so the validation
//! choice runs too. The numbers of such a budget are not a comparison; the test checks
//! that the public API carries the whole method through and that the choice obeys its
//! rule.

#[path = "../examples/quickstart.rs"]
#[allow(dead_code)]
mod quickstart;

mod common;

#[test]
fn quickstart_runs_calseg_end_to_end_with_a_validation_choice() {
    let mut cfg = common::tiny_calseg_config();
    cfg.alpha = vec![0.25, 0.5];
    let test = quickstart::run(cfg).expect("quickstart");
    assert_eq!(test.n_cases, 1);
    assert_eq!(test.region.n_classes, 4);
    assert!(test.region.ece.is_finite() && test.foreground.ece.is_finite());
    assert!((0.0..=1.0).contains(&test.region.dice[0]));
}
