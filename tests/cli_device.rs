//! `--device` on every command that trains or predicts: the spellings, and the clear
//! exit-2 error when CUDA is asked of a build (or machine) without it — before any file
//! is read or any work starts.

use std::process::{Command, Output};

fn calseg(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_calseg"))
        .args(args)
        .output()
        .unwrap()
}

/// Each command with its required flags; the paths do not exist, so a command that
/// read anything before checking the device would fail with another message.
const COMMANDS: &[&[&str]] = &[
    &[
        "train",
        "--data",
        "/nonexistent/ds",
        "--method",
        "ce",
        "--dims",
        "2",
        "--out",
        "/nonexistent/out",
    ],
    &[
        "predict",
        "--model",
        "/nonexistent/m",
        "--image",
        "/nonexistent/i.nii.gz",
        "--out",
        "/nonexistent/o",
    ],
    &[
        "calibrate",
        "--model",
        "/nonexistent/m",
        "--data",
        "/nonexistent/ds",
    ],
    &[
        "vls",
        "train",
        "--data",
        "/nonexistent/ds",
        "--dims",
        "2",
        "--out",
        "/nonexistent/o",
    ],
    &[
        "vls",
        "smooth",
        "--model",
        "/nonexistent/m",
        "--data",
        "/nonexistent/ds",
        "--out",
        "/nonexistent/o",
    ],
    &[
        "experiment",
        "--data",
        "/nonexistent/ds",
        "--out",
        "/nonexistent/o",
    ],
    &["demo", "--out", "/nonexistent/o"],
    &["bench", "unet-step"],
];

#[test]
fn a_bad_spelling_is_bad_input_everywhere() {
    for cmd in COMMANDS {
        let mut args = cmd.to_vec();
        args.extend(["--device", "tpu:0"]);
        let out = calseg(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd:?}: {err}");
        assert!(
            err.contains("expected cpu, cuda or cuda:N"),
            "{cmd:?}: {err}"
        );
    }
}

#[test]
fn cuda_without_cuda_is_a_clear_exit_2() {
    if calseg::device::CUDA_BUILT {
        eprintln!("skipped: this is a CUDA build (the GPU tests cover it)");
        return;
    }
    for cmd in COMMANDS {
        for dev in ["cuda", "cuda:1"] {
            let mut args = cmd.to_vec();
            args.extend(["--device", dev]);
            let out = calseg(&args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{cmd:?} {dev}: {err}");
            assert!(err.contains("built without CUDA"), "{cmd:?} {dev}: {err}");
            assert!(err.contains("--features cuda"), "{cmd:?} {dev}: {err}");
            assert!(
                !err.contains("/nonexistent"),
                "read a file first: {cmd:?}: {err}"
            );
        }
    }
}

#[test]
fn cpu_is_the_default_and_can_be_named() {
    let tiny = [
        "bench",
        "unet-step",
        "--dims",
        "2",
        "--base",
        "4",
        "--depth",
        "1",
        "--batch",
        "1",
        "--size",
        "8",
        "--in-channels",
        "1",
        "--classes",
        "2",
        "--iters",
        "1",
        "--warmup",
        "0",
        "--json",
    ];
    let mut named = tiny.to_vec();
    named.extend(["--device", "CPU"]);
    for args in [tiny.to_vec(), named] {
        let out = calseg(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["device"], "cpu", "{v}");
    }
}
