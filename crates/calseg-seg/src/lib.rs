//! # calseg-seg — segmentation networks, calibration losses and training
//!
//! **Status: skeleton.** Nothing is implemented here yet; this crate exists so the
//! workspace has its final shape. What will live here (see the project issues):
//!
//! - `ops`: fast CPU convolution / transposed convolution for candle (im2col + GEMM),
//!   forward and backward, as candle custom ops.
//! - `net`: U-Net 2D and 3D with seeded initialisation, saved as safetensors.
//! - `loss`: soft-target CE, CE, Dice, focal, label smoothing, SVLS, MbLS, NACL.
//! - `calibrate`: temperature scaling fitted on validation data.
//! - `train` / `infer`: a `Trainer` with resumable checkpoints, sliding-window inference.
