//! Segmentation networks.

mod layers;
mod unet;

pub use layers::{
    BN_MOMENTUM, Backend, Conv, ConvTranspose, NORM_EPS, NetMode, NormKind, NormRelu,
};
pub use unet::{PoolKind, UNet, UNetConfig};
