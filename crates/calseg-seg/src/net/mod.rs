//! Segmentation networks.

mod layers;
mod unet;

pub use layers::{Backend, Conv, ConvTranspose, NORM_EPS, NormKind, NormRelu};
pub use unet::{PoolKind, UNet, UNetConfig};
