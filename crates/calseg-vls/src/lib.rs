//! # calseg-vls — the Variational Label Smoother (CALSeg, ICASSP 2024)
//!
//! **Status: skeleton.** Nothing is implemented here yet; this crate exists so the
//! workspace has its final shape. What will live here (see the project issues):
//!
//! - `model`: posterior encoder q(z|x,y), prior N(0, I), and a U-Net trunk with a
//!   segmentation head p(y|z,x) and a reconstruction head p(x|z,x); loss
//!   CE + MSE + β·KL with warm-up and a guard against posterior collapse.
//! - `smooth`: soft labels `y_s` from m posterior samples (trunk run once), temperature
//!   `y_s^τ = softmax(log(y_s)/τ)`, and the mix `Y_s = (1-α)·y + α·y_s^τ`.
