//! Temperature scaling (Guo et al., ICML 2017): one scalar `T > 0` that divides the logits,
//! `p = softmax(l / T)`, fitted on validation data after training. It leaves every argmax
//! (hence Dice) unchanged and only changes the confidences.
//!
//! [`TemperatureFit`] accumulates validation logits and labels (as f32 logits and u32
//! labels in plain vectors, voxel-major: `4·(K + 1)` bytes per voxel), then
//! [`fit`](TemperatureFit::fit) scans a grid of temperatures (default `0.1..=10.0` step
//! `0.1`, parallel over the grid with rayon) for the one minimising the objective:
//!
//! ```text
//! NLL(T) = (1/N) Σ_i −log softmax(l_i / T)_{y_i}          (f64, exact log-sum-exp)
//! ECE(T) = Σ_b |Σ_{i∈b} [pred_i = y_i] − Σ_{i∈b} conf_i| / N,    conf_i = max_k softmax(l_i/T)_k
//! ```
//!
//! The ECE is the top-label ECE of `calseg_metrics` with the same bins: equal-width,
//! left-closed (`1.0` in the last bin), the f32 edges of [`calseg_metrics::BinEdges`],
//! the confidence rounded to f32 before binning and the first maximal class as prediction
//! (as `TopLabelCalibration` with `InputMode::Logits` on f32 logits; the tests check
//! the two agree). With `refine`, an NLL fit is refined by golden-section search on
//! `[T* − step, T* + step]` (NLL is unimodal in `T`: convex in `1/T`).
//!
//! ```
//! use calseg_seg::calibrate::{FitConfig, Temperature, TemperatureFit};
//! use ndarray::{ArrayD, IxDyn};
//! # fn main() -> calseg_seg::Result<()> {
//! // K = 2, 4 voxels of over-confident logits ±4 (3 of 4 right).
//! let l = ArrayD::from_shape_vec(IxDyn(&[2, 4]), vec![4.0f32, 4., 4., -4., -4., -4., -4., 4.]).unwrap();
//! let y = ArrayD::from_shape_vec(IxDyn(&[4]), vec![0u8, 0, 0, 0]).unwrap();
//! let mut fit = TemperatureFit::new(FitConfig::default())?;
//! fit.update(l.view(), y.view())?;
//! let r = fit.fit()?;
//! // Best: p = ¾ for the predicted class, i.e. 8/T = ln 3.
//! assert!((r.temperature.0 - 8.0 / 3f64.ln()).abs() < 1e-4);
//! assert!(r.nll <= r.nll_at_one);
//! # Ok(()) }
//! ```

use crate::{Result, SegError};
use calseg_metrics::{BinEdges, EdgeConvention, Label};
use candle_core::{DType, Device, Tensor};
use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A fitted temperature `T > 0`: calibrated probabilities are `softmax(l / T)`.
/// Serialises as a bare number; [`save`](Self::save) writes `{"temperature": T}`.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
pub struct Temperature(pub f64);

impl Default for Temperature {
    /// `T = 1` (no scaling).
    fn default() -> Self {
        Temperature(1.0)
    }
}

/// The JSON file a model directory stores its temperature in.
#[derive(Serialize, Deserialize)]
struct TemperatureFile {
    temperature: f64,
}

impl Temperature {
    /// File name used inside a model directory.
    pub const FILE_NAME: &'static str = "temperature.json";

    /// A temperature, checked.
    ///
    /// # Errors
    /// [`SegError::Config`] unless `t` is finite and `> 0`.
    pub fn new(t: f64) -> Result<Self> {
        if !t.is_finite() || t <= 0.0 {
            return Err(SegError::Config(format!(
                "temperature must be finite and > 0, got {t}"
            )));
        }
        Ok(Temperature(t))
    }

    /// `logits / T` (any shape, dtype and device; differentiable).
    pub fn apply(&self, logits: &Tensor) -> candle_core::Result<Tensor> {
        logits.affine(1.0 / self.0, 0.0)
    }

    /// `logits / T` as a new array (computed in f64, rounded to f32).
    pub fn apply_array(&self, logits: ArrayViewD<'_, f32>) -> ArrayD<f32> {
        let inv = 1.0 / self.0;
        logits.mapv(|v| (f64::from(v) * inv) as f32)
    }

    /// `logits /= T` in place.
    pub fn apply_in_place(&self, mut logits: ArrayViewMutD<'_, f32>) {
        let inv = 1.0 / self.0;
        logits.mapv_inplace(|v| (f64::from(v) * inv) as f32);
    }

    /// Writes `{"temperature": T}` to `path` (a file; for a model directory use
    /// `dir.join(Temperature::FILE_NAME)`).
    ///
    /// # Errors
    /// I/O errors of writing the file.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let s = serde_json::to_string_pretty(&TemperatureFile {
            temperature: self.0,
        })
        .map_err(std::io::Error::other)?;
        std::fs::write(path, s + "\n")
    }

    /// Reads a file written by [`save`](Self::save).
    ///
    /// # Errors
    /// I/O errors, or [`std::io::ErrorKind::InvalidData`] for malformed JSON or a
    /// temperature that is not finite and positive.
    pub fn load(path: &Path) -> std::io::Result<Self> {
        let s = std::fs::read_to_string(path)?;
        let f: TemperatureFile = serde_json::from_str(&s)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        Temperature::new(f.temperature)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
    }
}

/// What the temperature minimises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// Mean negative log-likelihood of the labels (default).
    Nll,
    /// Top-label ECE with `bins` equal-width left-closed bins (15 is the usual choice).
    Ece {
        /// Number of bins.
        bins: usize,
    },
}

/// The temperatures scanned: `min, min + step, …, ≤ max`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Grid {
    /// Smallest temperature (> 0).
    pub min: f64,
    /// Largest temperature (≥ min).
    pub max: f64,
    /// Spacing (> 0).
    pub step: f64,
}

impl Default for Grid {
    /// `0.1..=10.0` step `0.1` (100 points).
    fn default() -> Self {
        Grid {
            min: 0.1,
            max: 10.0,
            step: 0.1,
        }
    }
}

impl Grid {
    /// The grid points (rounded to 12 decimals so that `0.1·k` prints as itself).
    pub fn points(&self) -> Vec<f64> {
        let n = ((self.max - self.min) / self.step + 1e-9).floor() as usize + 1;
        (0..n)
            .map(|i| ((self.min + i as f64 * self.step) * 1e12).round() / 1e12)
            .collect()
    }
}

/// Bins of the ECE reported alongside an NLL fit.
pub const DEFAULT_ECE_BINS: usize = 15;

/// Most grid points accepted.
const MAX_GRID_POINTS: usize = 1_000_000;

/// How to fit the temperature.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FitConfig {
    /// What is minimised (default NLL).
    pub objective: Objective,
    /// Temperatures scanned (default `0.1..=10.0` step `0.1`).
    pub grid: Grid,
    /// Golden-section refinement of an NLL fit around the best grid point (default true;
    /// ignored for the ECE, which is piecewise constant in `T`).
    pub refine: bool,
}

impl Default for FitConfig {
    fn default() -> Self {
        FitConfig {
            objective: Objective::Nll,
            grid: Grid::default(),
            refine: true,
        }
    }
}

impl FitConfig {
    /// ECE objective with `bins` bins, default grid, no refinement.
    pub fn ece(bins: usize) -> Self {
        FitConfig {
            objective: Objective::Ece { bins },
            refine: false,
            ..FitConfig::default()
        }
    }

    /// Checks the grid and the number of bins.
    ///
    /// # Errors
    /// [`SegError::Config`] for a non-finite or non-positive `min`/`step`, `max < min`,
    /// more than 10⁶ grid points, or a bin count that `calseg_metrics` rejects.
    pub fn validate(&self) -> Result<()> {
        let g = self.grid;
        if !(g.min.is_finite() && g.max.is_finite() && g.step.is_finite())
            || g.min <= 0.0
            || g.step <= 0.0
            || g.max < g.min
        {
            return Err(SegError::Config(format!(
                "temperature grid needs 0 < min ≤ max and step > 0 (finite), got {g:?}"
            )));
        }
        if (g.max - g.min) / g.step >= MAX_GRID_POINTS as f64 {
            return Err(SegError::Config(format!(
                "temperature grid {g:?} has more than {MAX_GRID_POINTS} points"
            )));
        }
        self.bin_edges().map(|_| ())
    }

    fn bins(&self) -> usize {
        match self.objective {
            Objective::Nll => DEFAULT_ECE_BINS,
            Objective::Ece { bins } => bins,
        }
    }

    fn bin_edges(&self) -> Result<BinEdges> {
        BinEdges::new(self.bins(), EdgeConvention::LeftClosed)
            .map_err(|e| SegError::Config(format!("temperature ECE bins: {e}")))
    }
}

/// NLL and ECE of the accumulated data at one temperature.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// The temperature.
    pub t: f64,
    /// Mean negative log-likelihood.
    pub nll: f64,
    /// Top-label ECE (bins of the objective, or 15 for an NLL fit).
    pub ece: f64,
}

/// The result of [`TemperatureFit::fit`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitResult {
    /// The fitted temperature.
    pub temperature: Temperature,
    /// The objective it minimises.
    pub objective: Objective,
    /// NLL at the fitted temperature.
    pub nll: f64,
    /// ECE at the fitted temperature.
    pub ece: f64,
    /// NLL without scaling (`T = 1`).
    pub nll_at_one: f64,
    /// ECE without scaling (`T = 1`).
    pub ece_at_one: f64,
    /// Voxels the fit used.
    pub n_voxels: usize,
    /// NLL and ECE at every grid point.
    pub curve: Vec<CurvePoint>,
}

/// Voxels per parallel chunk (fixed, so sums are deterministic).
const CHUNK: usize = 8192;

/// Accumulates validation logits and labels, then fits a [`Temperature`].
#[derive(Debug, Clone)]
pub struct TemperatureFit {
    config: FitConfig,
    k: usize,
    /// Voxel-major logits: voxel `i`'s K logits at `i·K..(i+1)·K`.
    logits: Vec<f32>,
    labels: Vec<u32>,
}

impl TemperatureFit {
    /// An empty accumulator.
    ///
    /// # Errors
    /// [`SegError::Config`] when the configuration does not [validate](FitConfig::validate).
    pub fn new(config: FitConfig) -> Result<Self> {
        config.validate()?;
        Ok(TemperatureFit {
            config,
            k: 0,
            logits: Vec::new(),
            labels: Vec::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &FitConfig {
        &self.config
    }

    /// Voxels accumulated.
    pub fn n_voxels(&self) -> usize {
        self.labels.len()
    }

    /// Classes `K` (0 before the first update).
    pub fn n_classes(&self) -> usize {
        self.k
    }

    /// Checks `K` against earlier updates.
    fn check_k(&self, k: usize) -> Result<()> {
        if k < 2 {
            return Err(SegError::Shape(format!(
                "temperature fit needs K ≥ 2, got {k}"
            )));
        }
        if self.k != 0 && self.k != k {
            return Err(SegError::Shape(format!(
                "temperature fit: {k} classes, earlier updates had {}",
                self.k
            )));
        }
        Ok(())
    }

    /// Appends voxel-major logits and labels after checking them (nothing is kept on error).
    fn push(&mut self, k: usize, logits: Vec<f32>, labels: Vec<u32>) -> Result<()> {
        if let Some(v) = logits.iter().find(|v| !v.is_finite()) {
            return Err(SegError::Shape(format!(
                "temperature fit: non-finite logit {v}"
            )));
        }
        if let Some(y) = labels.iter().find(|&&y| y as usize >= k) {
            return Err(SegError::Shape(format!(
                "temperature fit: label {y} outside 0..{k}"
            )));
        }
        self.k = k;
        self.logits.extend_from_slice(&logits);
        self.labels.extend_from_slice(&labels);
        Ok(())
    }

    /// Accumulates one image: logits `(K, *spatial)` and labels `(*spatial)` (any integer
    /// type; any memory layout).
    ///
    /// # Errors
    /// [`SegError::Shape`] for mismatched shapes, `K < 2`, a `K` different from earlier
    /// updates, labels outside `0..K` or non-finite logits. Nothing is accumulated on error.
    pub fn update<L: Label>(
        &mut self,
        logits: ArrayViewD<'_, f32>,
        labels: ArrayViewD<'_, L>,
    ) -> Result<()> {
        let sh = logits.shape();
        if sh.is_empty() || &sh[1..] != labels.shape() {
            return Err(SegError::Shape(format!(
                "temperature fit: logits {sh:?} must be (K, *spatial) with labels {:?} = spatial",
                labels.shape()
            )));
        }
        let k = sh[0];
        self.check_k(k)?;
        let v = labels.len();
        let mut out = vec![0.0f32; v * k];
        for (c, plane) in logits.outer_iter().enumerate() {
            for (i, x) in plane.iter().enumerate() {
                out[i * k + c] = *x;
            }
        }
        let labs: Vec<u32> = labels.iter().map(|y| y.to_class()).collect();
        self.push(k, out, labs)
    }

    /// Accumulates a batch: logits `(n, K, *spatial)` (any float dtype and device) and
    /// labels either `(n, *spatial)` class indices (any dtype) or `(n, K, *spatial)`
    /// one-hot / soft targets (their first argmax is the label).
    ///
    /// # Errors
    /// As [`update`](Self::update); candle errors become [`SegError::Candle`].
    pub fn update_tensor(&mut self, logits: &Tensor, labels: &Tensor) -> Result<()> {
        let d = logits.dims().to_vec();
        if d.len() < 2 {
            return Err(SegError::Shape(format!(
                "temperature fit: logits {d:?} must be (n, K, *spatial)"
            )));
        }
        let (n, k) = (d[0], d[1]);
        let mut spatial_shape = vec![n];
        spatial_shape.extend_from_slice(&d[2..]);
        let labels = if labels.dims() == d.as_slice() {
            labels.argmax(1)?
        } else if labels.dims() == spatial_shape.as_slice() {
            labels.clone()
        } else {
            return Err(SegError::Shape(format!(
                "temperature fit: labels {:?} must be {spatial_shape:?} or {d:?}",
                labels.dims()
            )));
        };
        self.check_k(k)?;
        let lab = labels
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        let labs: Vec<u32> = lab
            .iter()
            .map(|&y| {
                if y >= 0.0 && y.fract() == 0.0 && y < u32::MAX as f64 {
                    y as u32
                } else {
                    u32::MAX
                }
            })
            .collect();
        // (n, K, S) → (n, S, K): voxel-major.
        let l = logits
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .reshape((n, k, ()))?
            .transpose(1, 2)?
            .contiguous()?
            .flatten_all()?
            .to_vec1::<f32>()?;
        self.push(k, l, labs)
    }

    /// NLL and ECE at temperature `t` (the fit's bins), over everything accumulated.
    ///
    /// # Errors
    /// [`SegError::Config`] when nothing has been accumulated or `t` is not finite and
    /// positive.
    pub fn evaluate(&self, t: Temperature) -> Result<CurvePoint> {
        Temperature::new(t.0)?;
        if self.labels.is_empty() {
            return Err(SegError::Config(
                "temperature fit: no voxel accumulated".into(),
            ));
        }
        let edges = self.config.bin_edges()?;
        Ok(self.point(t.0, edges.edges()))
    }

    /// NLL and ECE at `t`, parallel over fixed chunks of voxels, summed in order.
    fn point(&self, t: f64, edges: &[f32]) -> CurvePoint {
        let k = self.k;
        let nb = edges.len() - 1;
        let inv = 1.0 / t;
        let parts: Vec<(f64, Vec<f64>, Vec<f64>)> = self
            .labels
            .par_chunks(CHUNK)
            .zip(self.logits.par_chunks(CHUNK * k))
            .map(|(ys, ls)| {
                let mut nll = 0.0;
                let mut hits = vec![0.0f64; nb];
                let mut sums = vec![0.0f64; nb];
                for (y, l) in ys.iter().zip(ls.chunks_exact(k)) {
                    let mut best = 0;
                    let mut mx = f64::from(l[0]) * inv;
                    for (c, &v) in l.iter().enumerate().skip(1) {
                        let z = f64::from(v) * inv;
                        if z > mx {
                            mx = z;
                            best = c;
                        }
                    }
                    let se: f64 = l.iter().map(|&v| (f64::from(v) * inv - mx).exp()).sum();
                    let lse = mx + se.ln();
                    nll += lse - f64::from(l[*y as usize]) * inv;
                    let conf = (1.0 / se) as f32;
                    let b = bin_of(conf, edges, nb);
                    sums[b] += f64::from(conf);
                    if best == *y as usize {
                        hits[b] += 1.0;
                    }
                }
                (nll, hits, sums)
            })
            .collect();
        let mut nll = 0.0;
        let mut hits = vec![0.0f64; nb];
        let mut sums = vec![0.0f64; nb];
        for (n, h, s) in parts {
            nll += n;
            for b in 0..nb {
                hits[b] += h[b];
                sums[b] += s[b];
            }
        }
        let nv = self.labels.len() as f64;
        let ece = hits
            .iter()
            .zip(&sums)
            .map(|(h, s)| (h - s).abs())
            .sum::<f64>()
            / nv;
        CurvePoint {
            t,
            nll: nll / nv,
            ece,
        }
    }

    /// Fits the temperature: the grid point minimising the objective (the smallest `T`
    /// on ties), refined by golden-section search on the NLL when configured.
    ///
    /// # Errors
    /// [`SegError::Config`] when nothing has been accumulated.
    pub fn fit(&self) -> Result<FitResult> {
        if self.labels.is_empty() {
            return Err(SegError::Config(
                "temperature fit: no voxel accumulated".into(),
            ));
        }
        let bin_edges = self.config.bin_edges()?;
        let edges = bin_edges.edges();
        let grid = self.config.grid;
        let curve: Vec<CurvePoint> = grid
            .points()
            .into_par_iter()
            .map(|t| self.point(t, edges))
            .collect();
        let score = |p: &CurvePoint| match self.config.objective {
            Objective::Nll => p.nll,
            Objective::Ece { .. } => p.ece,
        };
        let mut best = curve[0];
        for p in &curve[1..] {
            if score(p) < score(&best) {
                best = *p;
            }
        }
        if self.config.refine && self.config.objective == Objective::Nll {
            let lo = (best.t - grid.step).max(grid.min);
            let hi = (best.t + grid.step).min(grid.max);
            let r = golden_section(lo, hi, 48, |t| self.point(t, edges).nll);
            let p = self.point(r, edges);
            if p.nll <= best.nll {
                best = p;
            }
        }
        let one = self.point(1.0, edges);
        Ok(FitResult {
            temperature: Temperature(best.t),
            objective: self.config.objective,
            nll: best.nll,
            ece: best.ece,
            nll_at_one: one.nll,
            ece_at_one: one.ece,
            n_voxels: self.labels.len(),
            curve,
        })
    }
}

/// Left-closed bin of a confidence in `[0, 1]` with the f32 `edges` (`nb + 1` of them):
/// a guess `⌊x·nb⌋` is off by at most one.
fn bin_of(x: f32, edges: &[f32], nb: usize) -> usize {
    let mut g = ((f64::from(x) * nb as f64) as usize).min(nb - 1);
    if g > 0 && x < edges[g] {
        g -= 1;
    } else if g + 1 < nb && x >= edges[g + 1] {
        g += 1;
    }
    g
}

/// Minimiser of a unimodal `f` on `[lo, hi]` by golden-section search (`iters` steps).
fn golden_section(mut lo: f64, mut hi: f64, iters: usize, f: impl Fn(f64) -> f64) -> f64 {
    let r = (5f64.sqrt() - 1.0) / 2.0;
    let mut a = hi - r * (hi - lo);
    let mut b = lo + r * (hi - lo);
    let (mut fa, mut fb) = (f(a), f(b));
    for _ in 0..iters {
        if fa <= fb {
            hi = b;
            b = a;
            fb = fa;
            a = hi - r * (hi - lo);
            fa = f(a);
        } else {
            lo = a;
            a = b;
            fa = fb;
            b = lo + r * (hi - lo);
            fb = f(b);
        }
    }
    if fa <= fb { a } else { b }
}
