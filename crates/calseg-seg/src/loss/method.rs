//! The training methods by name, and the configuration that builds their loss.

use super::{
    CrossEntropy, Focal, LabelSmoothing, Mbls, Nacl, NaclNorm, NaclWindow, SegLoss, SoftDice,
    SoftTargetCe, Svls, WithDice, check_kernel, check_range,
};
use crate::{Result, SegError};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A training method (the loss family and its hyper-parameters).
///
/// Serialised internally tagged by `name`, e.g. `{"name": "ls", "eps": 0.1}`. Parsing a
/// bare name (`"ls".parse()`) gives the defaults of the papers (see [`crate::loss`]): ε = 0.1,
/// γ = 3, SVLS kernel 3 / σ = 1, MbLS m = 5 / λ = 0.1 (segmentation), NACL kernel 3 / α = 0.1 / L1 / mean.
///
/// ```
/// use calseg_seg::loss::{LossConfig, Method};
/// let m: Method = "focal".parse()?;
/// assert_eq!(m, Method::Focal { gamma: 3.0 });
/// assert_eq!(m.name(), "focal");
/// let cfg = LossConfig { method: Method::Ls { eps: 1.5 }, dice_weight: 0.0 };
/// assert!(cfg.validate().is_err());
/// let loss = LossConfig { method: m, dice_weight: 1.0 }.build()?; // focal + Dice
/// # let _ = loss;
/// # Ok::<(), calseg_seg::SegError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase")]
pub enum Method {
    /// Cross-entropy on one-hot labels (default).
    #[default]
    Ce,
    /// Label smoothing with ε ∈ [0, 1].
    Ls {
        /// Smoothing ε.
        eps: f64,
    },
    /// Focal loss with γ ≥ 0.
    Focal {
        /// Focusing parameter γ.
        gamma: f64,
    },
    /// Spatially varying label smoothing.
    Svls {
        /// Odd neighbourhood size per axis.
        kernel: usize,
        /// Gaussian σ > 0.
        sigma: f64,
    },
    /// Margin-based label smoothing.
    Mbls {
        /// Margin m ≥ 0.
        margin: f64,
        /// Penalty weight λ ≥ 0.
        lambda: f64,
    },
    /// Neighbour-aware calibration loss.
    Nacl {
        /// Odd window size per axis.
        kernel: usize,
        /// Penalty weight α ≥ 0.
        alpha: f64,
        /// L1 or L2 penalty.
        norm: NaclNorm,
        /// Mean or Gaussian window.
        window: NaclWindow,
    },
    /// Soft-target CE on given soft targets (CALSeg's `Y_s`).
    Soft,
}

impl Method {
    /// The short name: `ce`, `ls`, `focal`, `svls`, `mbls`, `nacl`, `soft`.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Ce => "ce",
            Method::Ls { .. } => "ls",
            Method::Focal { .. } => "focal",
            Method::Svls { .. } => "svls",
            Method::Mbls { .. } => "mbls",
            Method::Nacl { .. } => "nacl",
            Method::Soft => "soft",
        }
    }

    /// Every baseline with its default hyper-parameters (all but `soft`, which needs
    /// CALSeg's soft targets): ce, ls, focal, svls, mbls, nacl.
    pub fn all_baselines() -> Vec<Method> {
        ["ce", "ls", "focal", "svls", "mbls", "nacl"]
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect()
    }

    /// Checks the hyper-parameters.
    ///
    /// # Errors
    /// [`SegError::Config`] for ε ∉ [0, 1], γ < 0, σ ≤ 0, an even or zero kernel, a
    /// negative margin or weight, or any non-finite value.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Method::Ce | Method::Soft => Ok(()),
            Method::Ls { eps } => check_range("ls: ε", eps, 0.0, 1.0),
            Method::Focal { gamma } => check_range("focal: γ", gamma, 0.0, f64::MAX),
            Method::Svls { kernel, sigma } => {
                check_kernel("svls", kernel)?;
                check_sigma("svls", sigma)
            }
            Method::Mbls { margin, lambda } => {
                check_range("mbls: margin", margin, 0.0, f64::MAX)?;
                check_range("mbls: λ", lambda, 0.0, f64::MAX)
            }
            Method::Nacl {
                kernel,
                alpha,
                window,
                ..
            } => {
                check_kernel("nacl", kernel)?;
                check_range("nacl: α", alpha, 0.0, f64::MAX)?;
                match window {
                    NaclWindow::Mean => Ok(()),
                    NaclWindow::Gaussian { sigma } => check_sigma("nacl", sigma),
                }
            }
        }
    }

    /// The loss of this method (without Dice), after [`validate`](Self::validate).
    ///
    /// # Errors
    /// As [`validate`](Self::validate).
    pub fn build(&self) -> Result<Box<dyn SegLoss>> {
        self.validate()?;
        Ok(match *self {
            Method::Ce => Box::new(CrossEntropy),
            Method::Soft => Box::new(SoftTargetCe),
            Method::Ls { eps } => Box::new(LabelSmoothing { eps }),
            Method::Focal { gamma } => Box::new(Focal { gamma }),
            Method::Svls { kernel, sigma } => Box::new(Svls { kernel, sigma }),
            Method::Mbls { margin, lambda } => Box::new(Mbls { margin, lambda }),
            Method::Nacl {
                kernel,
                alpha,
                norm,
                window,
            } => Box::new(Nacl {
                kernel,
                alpha,
                norm,
                window,
            }),
        })
    }
}

fn check_sigma(what: &str, sigma: f64) -> Result<()> {
    if !sigma.is_finite() || sigma <= 0.0 {
        return Err(SegError::Config(format!(
            "{what}: σ must be finite and > 0, got {sigma}"
        )));
    }
    Ok(())
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Method {
    type Err = SegError;
    /// Parses a method name to the method with its default hyper-parameters.
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "ce" => Method::Ce,
            "soft" => Method::Soft,
            "ls" => Method::Ls {
                eps: LabelSmoothing::default().eps,
            },
            "focal" => Method::Focal {
                gamma: Focal::default().gamma,
            },
            "svls" => {
                let d = Svls::default();
                Method::Svls {
                    kernel: d.kernel,
                    sigma: d.sigma,
                }
            }
            "mbls" => {
                let d = Mbls::default();
                Method::Mbls {
                    margin: d.margin,
                    lambda: d.lambda,
                }
            }
            "nacl" => {
                let d = Nacl::default();
                Method::Nacl {
                    kernel: d.kernel,
                    alpha: d.alpha,
                    norm: d.norm,
                    window: d.window,
                }
            }
            other => {
                return Err(SegError::Config(format!(
                    "unknown method {other:?} (expected ce, ls, focal, svls, mbls, nacl or soft)"
                )));
            }
        })
    }
}

/// The training loss: a [`Method`] plus an optional soft-Dice term,
/// `L = method(l, t) + dice_weight · Dice(l, t)` (Dice: [`SoftDice::default`],
/// foreground classes, batch Dice). `dice_weight = 0` leaves the Dice term out.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct LossConfig {
    /// The method.
    pub method: Method,
    /// Weight of the soft-Dice term (≥ 0; 0 = none).
    #[serde(default)]
    pub dice_weight: f64,
}

impl LossConfig {
    /// Checks the method's hyper-parameters and the Dice weight.
    ///
    /// # Errors
    /// [`SegError::Config`] (see [`Method::validate`]; `dice_weight` must be finite, ≥ 0).
    pub fn validate(&self) -> Result<()> {
        self.method.validate()?;
        check_range("dice_weight", self.dice_weight, 0.0, f64::MAX)
    }

    /// The loss, validated first.
    ///
    /// # Errors
    /// As [`validate`](Self::validate).
    pub fn build(&self) -> Result<Box<dyn SegLoss>> {
        self.validate()?;
        let base = self.method.build()?;
        Ok(if self.dice_weight > 0.0 {
            Box::new(WithDice {
                base,
                dice: SoftDice::default(),
                weight: self.dice_weight,
            })
        } else {
            base
        })
    }

    /// [`build`](Self::build) as an `Arc` (shared across threads).
    ///
    /// # Errors
    /// As [`validate`](Self::validate).
    pub fn build_arc(&self) -> Result<Arc<dyn SegLoss>> {
        Ok(Arc::from(self.build()?))
    }
}
