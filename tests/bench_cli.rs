//! `calseg bench unet-step`: the JSON contract and bad-input exit status.

use std::process::Command;

fn calseg(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_calseg"))
        .args(args)
        .output()
        .expect("run calseg")
}

#[test]
fn unet_step_json_has_the_contract_keys() {
    let tiny = [
        "bench",
        "unet-step",
        "--dims",
        "2",
        "--base",
        "2",
        "--depth",
        "1",
        "--batch",
        "1",
        "--size",
        "8",
    ];
    for extra in [&["--json"][..], &["--json", "--stock"][..]] {
        let mut args = tiny.to_vec();
        args.extend_from_slice(&["--in-channels", "1", "--classes", "3", "--iters", "2"]);
        args.extend_from_slice(extra);
        let out = calseg(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON output");
        for key in ["fwd_s", "bwd_s", "step_s", "total_s"] {
            let s = v[key].as_f64().unwrap_or_else(|| panic!("missing {key}"));
            assert!(s >= 0.0 && s.is_finite());
        }
        // warm-up 1 + 2 timed iterations, a soft-CE loss near log(3) at init.
        let losses = v["losses"].as_array().expect("losses");
        assert_eq!(losses.len(), 3);
        let l0 = losses[0].as_f64().expect("loss");
        assert!((l0 - 3f64.ln()).abs() < 0.5, "{l0}");
    }
}

#[test]
fn unet_step_rejects_bad_options_with_status_2() {
    for args in [
        &["bench", "unet-step", "--dims", "4"][..],
        &["bench", "unet-step", "--size", "100", "--depth", "4"][..],
        &["bench", "unet-step", "--batch", "0"][..],
    ] {
        let out = calseg(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
