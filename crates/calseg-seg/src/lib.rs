//! # calseg-seg — segmentation networks, calibration losses and training
//!
//! Trains 2D/3D U-Nets on the CPU with [candle](https://docs.rs/candle-core), fast:
//! candle 0.11's own CPU convolution is 10–20× slower than its matrix product and its
//! convolution gradient is a naive loop, so this crate supplies its own operators as
//! candle *custom ops* (forward and backward), which candle's autograd then uses like
//! any other op.
//!
//! - [`ops`]: convolution / transposed convolution (2D and 3D; im2col/vol2col tiles ×
//!   GEMM, multi-threaded), fused GroupNorm + ReLU, average pooling; [`ops::stock`] has
//!   the same operators from candle's own ops (the baseline, the test reference and the
//!   fallback on GPU devices).
//! - [`net`]: the [`net::UNet`] (seeded PyTorch-style init, candle-nn parameter names so
//!   `VarMap` safetensors checkpoints work), choosing fast or stock ops per
//!   [`net::Backend`].
//! - [`loss`]: soft-target cross-entropy (one fused op) and the calibration losses (CE,
//!   LS, focal, SVLS, MbLS, NACL, soft Dice) behind [`loss::LossConfig`].
//! - [`calibrate`]: temperature scaling fitted on validation logits (NLL or ECE).
//! - [`recipe`]: a segmentation net from cases in one call ([`recipe::NetRecipe`]: net,
//!   loss, budget, layout → trained model, with checkpoints and resume in a folder) —
//!   the one training path of `calseg train`'s methods, the experiment and CALSeg.
//! - [`score`]: a model over cases → probabilities → `calseg_metrics::Scorer` (the one
//!   scoring path of the project).
//! - [`train`]: the trainer, its data sets and [`train::convergence`] (has the
//!   validation Dice reached a plateau?).
//! - [`optim`]: AdamW with a fused in-place update.
//! - [`bench`](mod@bench): the timed training step behind `calseg bench unet-step`.
//! - [`init`]: seeded random tensors (candle's CPU RNG cannot be seeded).
//!
//! ```
//! use calseg_seg::net::{UNet, UNetConfig};
//! use calseg_seg::{init::randn, loss::soft_ce, optim::AdamW};
//! use candle_core::{DType, Device, Module};
//! use candle_nn::{Optimizer, ParamsAdamW, VarMap};
//! use rand::{SeedableRng, rngs::StdRng};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dev = Device::Cpu;
//! let cfg = UNetConfig { base: 4, depth: 2, ..UNetConfig::default() }; // 2D, 2 → 2 channels
//! let vm = VarMap::new();
//! let net = UNet::new(&cfg, &vm, 0, DType::F32, &dev)?;
//! let mut rng = StdRng::seed_from_u64(1);
//! let x = randn(&mut rng, &[2, 2, 16, 16], DType::F32, &dev)?;
//! let t = candle_nn::ops::softmax(&randn(&mut rng, &[2, 2, 16, 16], DType::F32, &dev)?, 1)?;
//! let mut opt = AdamW::new(vm.all_vars(), ParamsAdamW::default())?;
//! let loss = soft_ce(&net.forward(&x)?, &t)?;
//! opt.step(&loss.backward()?)?;
//! # Ok(()) }
//! ```
//!
//! ## Dependencies, and why
//!
//! - `candle-core` / `candle-nn`: tensors, autograd, custom-op and in-place-op traits,
//!   `VarMap` (parameters + safetensors I/O), the `Optimizer` trait and the stock ops.
//! - `gemm`: the matrix-multiply micro-kernels candle itself uses (runtime CPU feature
//!   detection: AVX2/FMA/AVX-512), called directly on L2-sized im2col tiles,
//!   single-threaded per tile. gemm compiles its AVX-512 kernels only with its `x86-v4`
//!   feature, which candle leaves off; this crate's default `avx512` feature turns it on
//!   (the choice of kernel stays a run-time one).
//! - `rayon`: the parallelism over (image, tile) tasks, norm groups and optimiser chunks.
//! - `rand` / `rand_distr`: seeded initialisation and random inputs.
//! - `serde` / `serde_json`: configurations and benchmark reports as JSON.
//! - `thiserror`: the typed [`SegError`].
//! - `ndarray`: the array type of calseg-io and calseg-metrics; [`convert`] copies
//!   between it and candle tensors (so those crates never depend on candle).
//!
//! Feature `cuda` builds candle with CUDA; on a GPU device every op of [`ops`] routes
//! to candle's own implementation.

pub mod bench;
pub mod calibrate;
pub mod convert;
pub mod error;
pub mod infer;
pub mod init;
pub mod loss;
pub mod model;
pub mod net;
pub mod ops;
pub mod optim;
pub mod recipe;
pub mod score;
pub mod train;

pub use error::{Result, SegError};

/// The name of a candle device for reports and JSON: `cpu`, `cuda:N`, `metal:N`.
pub fn device_name(device: &candle_core::Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}
