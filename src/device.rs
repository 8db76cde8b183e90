//! Where networks run: the `--device cpu|cuda[:N]` choice of every command that trains or
//! predicts, and its library twin.
//!
//! Library users pass a candle [`Device`] as they always did
//! (`CalsegConfig::default().on(&device)`, `NetRecipe::on`, `SegModel::load_on`); this
//! module turns the command line's spelling into one, with a clear error when CUDA is
//! asked for and this build (the `cuda` feature) or this machine has none.
//!
//! | spelling | device |
//! |---|---|
//! | `cpu` (default) | [`Device::Cpu`] |
//! | `cuda` | the first CUDA GPU, `cuda:0` |
//! | `cuda:N` | CUDA GPU number `N` (as `nvidia-smi` numbers them, after `CUDA_VISIBLE_DEVICES`) |
//!
//! ```
//! use calseg::device::DeviceSpec;
//! let spec: DeviceSpec = "cuda:1".parse()?;
//! assert_eq!(spec, DeviceSpec::Cuda(1));
//! assert!(DeviceSpec::Cpu.open()?.is_cpu());
//! // In a build without the `cuda` feature, asking for a GPU is a typed error, not a panic.
//! if !calseg::device::CUDA_BUILT {
//!     assert!(DeviceSpec::Cuda(0).open().unwrap_err().is_bad_input());
//! }
//! # Ok::<(), calseg::Error>(())
//! ```

use crate::error::{Error, Result};
use candle_core::Device;

/// True when this build has the `cuda` feature (candle compiled with CUDA kernels).
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// A device named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// The CPU (the default).
    #[default]
    Cpu,
    /// CUDA GPU number `N`.
    Cuda(usize),
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl std::str::FromStr for DeviceSpec {
    type Err = Error;

    /// Parses `cpu`, `cuda` or `cuda:N` (case-insensitive, surrounding spaces ignored).
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        let bad = || {
            Error::Input(format!(
                "--device {s:?}: expected cpu, cuda or cuda:N (N = 0, 1, …)"
            ))
        };
        match t.as_str() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            _ => {
                let n = t
                    .strip_prefix("cuda:")
                    .or_else(|| t.strip_prefix("gpu:"))
                    .ok_or_else(bad)?;
                n.parse().map(DeviceSpec::Cuda).map_err(|_| bad())
            }
        }
    }
}

impl DeviceSpec {
    /// Opens the device.
    ///
    /// # Errors
    /// [`Error::Input`] (bad input, exit status 2) when CUDA is asked for and this build
    /// has no `cuda` feature, or the machine has no such GPU (no driver, no device `N`);
    /// the message says which, and how to get a CUDA build.
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(n) => open_cuda(n),
        }
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(n: usize) -> Result<Device> {
    Device::new_cuda(n).map_err(|e| {
        Error::Input(format!(
            "--device cuda:{n}: no usable CUDA device {n} on this machine ({e}); \
             check nvidia-smi and CUDA_VISIBLE_DEVICES, or run with --device cpu"
        ))
    })
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(n: usize) -> Result<Device> {
    Err(Error::Input(format!(
        "--device cuda:{n}: this calseg was built without CUDA support; rebuild with \
         `cargo build --release --features cuda` (README: \"On a GPU\"), or run with --device cpu"
    )))
}

pub use calseg_seg::device_name;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings() {
        for (s, want) in [
            ("cpu", DeviceSpec::Cpu),
            (" CPU ", DeviceSpec::Cpu),
            ("cuda", DeviceSpec::Cuda(0)),
            ("cuda:0", DeviceSpec::Cuda(0)),
            ("cuda:3", DeviceSpec::Cuda(3)),
            ("gpu:1", DeviceSpec::Cuda(1)),
        ] {
            assert_eq!(s.parse::<DeviceSpec>().unwrap(), want, "{s}");
        }
        for s in ["", "cuda:", "cuda:-1", "cuda:x", "tpu", "cuda0", "metal"] {
            let e = s.parse::<DeviceSpec>().unwrap_err();
            assert!(e.is_bad_input(), "{s}");
            assert!(e.to_string().contains("cpu, cuda or cuda:N"), "{e}");
        }
        assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
        assert_eq!(
            DeviceSpec::Cuda(2)
                .to_string()
                .parse::<DeviceSpec>()
                .unwrap(),
            DeviceSpec::Cuda(2)
        );
    }

    #[test]
    fn cpu_opens_and_cuda_fails_cleanly_without_the_feature() {
        let cpu = DeviceSpec::Cpu.open().unwrap();
        assert!(cpu.is_cpu());
        assert_eq!(device_name(&cpu), "cpu");
        if !CUDA_BUILT {
            let e = DeviceSpec::Cuda(0).open().unwrap_err();
            assert!(e.is_bad_input());
            assert!(e.to_string().contains("built without CUDA"), "{e}");
        }
    }
}
