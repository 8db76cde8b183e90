//! Soft labels from a trained [`VlsModel`]: `y_s` (mean of m sampled segmentations),
//! temperature, and the mix `Y_s` (see [`crate::mix`]).
//!
//! ```text
//! f      = trunk(x)                          once per image (or batch of slices)
//! a      = W_f · f                           once            (n, K, *sp)
//! z_s    ~ q(z|x,y)  or  N(0, I),  s = 1..m  (seeded)
//! p_s    = softmax(a + W_z · z_s + b)        per sample: an add and a softmax per voxel
//! y_s    = (1/m) Σ_s p_s
//! Y_s    = (1 − α) · onehot(y) + α · softmax(log(y_s) / τ)
//! ```
//!
//! The trunk (the expensive part) runs **once** per image; the m samples only re-run the
//! 1×1 head's latent offset and a softmax, in one fused multi-threaded pass that also
//! accumulates the per-voxel variance across samples ([`SmoothStats::sample_variance`],
//! the evidence that the samples differ, i.e. the latent did not collapse).
//!
//! **Input normalisation.** [`smooth_case`] z-scores each image channel over its nonzero
//! voxels ([`calseg_io::preprocess::zscore_nonzero`]), exactly what the segmentation
//! trainer does, so the model sees the intensities it was trained on. [`smooth_volume`]
//! takes an already-normalised image.
//!
//! **Geometry.** A model of the case's dimensionality processes the whole volume; a 2D
//! model on a 3D case processes axial slices (along the last spatial axis), `batch` at a
//! time. Spatial sizes are zero-padded (labels with background) at the high end to a
//! multiple of [`VlsConfig::multiple`](crate::VlsConfig::multiple) and cropped back.

use crate::error::{Result, VlsError};
use crate::mix::{MixKind, label_disagreement, mean_entropy, temperature};
use crate::model::VlsModel;
use calseg_io::{Case, Geometry, NamedTensor, write_nifti_probs, write_safetensors};
use calseg_seg::convert::array_to_tensor;
use calseg_seg::init::randn;
use candle_core::{DType, Tensor};
use ndarray::{ArrayD, ArrayViewD, Axis, IxDyn, Slice};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where the latent samples come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LatentSource {
    /// The approximate posterior `q(z|x,y)` of the case's image and labels (the paper).
    #[default]
    Posterior,
    /// The prior `N(0, I)` (label-free).
    Prior,
}

/// How to produce soft labels. Defaults: m = 16, τ = 2, α = 0.5, posterior, seed 0,
/// 8 slices per forward pass.
///
/// `Y_s = (1−α)·t(y) + α·y_s^τ` with `t(y)` the smoother's label-noise target
/// ([`crate::pipeline::anchored_mix`]). τ = 2 is only the fallback: `calseg vls smooth`
/// and the CALSeg pipeline use the τ calibrated on validation data
/// ([`calibrate_temperature`]). α = 0.5 weighs the label-only estimate `t(y)` and the
/// image-aware `y_s^τ` equally (a prior choice, not tuned; every α in [0.25, 0.6] gives
/// soft labels closer to the truth than SVLS on the embedded brain — calseg-vls README).
/// m = 16 puts the Monte Carlo error of `y_s` at TV 0.005 from m = 64 (m = 1: 0.023), at
/// ~18 ms per extra sample for the 82-slice volume.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmoothConfig {
    /// Number m of latent samples averaged into `y_s` (≥ 1).
    pub samples: usize,
    /// Temperature τ > 0 of `y_s^τ = softmax(log(y_s)/τ)`; τ < 1 sharpens.
    pub tau: f64,
    /// Mixing weight α ∈ [0, 1] of `Y_s = (1−α)·t(y) + α·y_s^τ`.
    pub alpha: f64,
    /// Posterior or prior samples.
    pub from: LatentSource,
    /// Seed of the latent noise (mixed with the case id in [`smooth_case`]).
    pub seed: u64,
    /// 2D model on a 3D case: slices per forward pass (≥ 1).
    pub batch: usize,
    /// How `y_s^τ` enters the mix ([`MixKind`]; the paper's class mix by default).
    pub mix: MixKind,
}

impl Default for SmoothConfig {
    fn default() -> Self {
        Self {
            samples: 16,
            tau: 2.0,
            alpha: 0.5,
            from: LatentSource::Posterior,
            seed: 0,
            batch: 8,
            mix: MixKind::Classes,
        }
    }
}

impl SmoothConfig {
    /// Checks α ∈ [0, 1], τ > 0 (finite), m ≥ 1, batch ≥ 1.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(VlsError::Config(format!(
                "alpha must be in [0, 1], got {}",
                self.alpha
            )));
        }
        if !(self.tau.is_finite() && self.tau > 0.0) {
            return Err(VlsError::Config(format!(
                "tau must be a finite number > 0, got {}",
                self.tau
            )));
        }
        if self.samples == 0 {
            return Err(VlsError::Config("samples (m) must be ≥ 1".into()));
        }
        if self.batch == 0 {
            return Err(VlsError::Config("batch must be ≥ 1".into()));
        }
        Ok(())
    }
}

/// Per-case report of [`smooth_case`] (over all voxels of the case).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SmoothStats {
    /// Case id.
    pub case: String,
    /// Voxels of the case.
    pub voxels: usize,
    /// Samples m.
    pub samples: usize,
    /// Fraction of voxels where the hard label is not an argmax of `Y_s` (0 when α ≤ ½).
    pub flipped_fraction: f64,
    /// Mean entropy (nats) of `Y_s`.
    pub mean_entropy: f64,
    /// Mean entropy (nats) of `y_s^τ`.
    pub mean_entropy_ys: f64,
    /// Mean over voxels and classes of the variance of `p_s,k` across the m samples
    /// (population variance; 0 iff all samples give the same segmentation).
    pub sample_variance: f64,
    /// Wall-clock seconds of the smoothing (model passes, mix and statistics).
    pub seconds: f64,
}

/// Soft labels of one case.
#[derive(Clone, Debug)]
pub struct SoftLabels {
    /// `y_s`: mean of the m sampled softmax maps, `(K, *spatial)`.
    pub y_s: ArrayD<f32>,
    /// `Y_s`: the mix, `(K, *spatial)` (what is written and trained on).
    pub soft: ArrayD<f32>,
    /// Statistics.
    pub stats: SmoothStats,
}

/// A per-case seed: `seed` mixed with the FNV-1a hash of the case id (so that cases get
/// different noise and one case's labels do not depend on which cases precede it).
pub fn case_seed(seed: u64, case: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in case.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    seed ^ h
}

/// Soft labels of one dataset case (image z-scored over its nonzero voxels first; see the
/// module docs). The latent noise is seeded with [`case_seed`]`(cfg.seed, case.id)`.
pub fn smooth_case(model: &VlsModel, case: &Case, cfg: &SmoothConfig) -> Result<SoftLabels> {
    cfg.validate()?;
    let start = Instant::now();
    let labels = case.label.as_ref().ok_or_else(|| {
        VlsError::Config(format!("case {:?} has no label map to smooth", case.id))
    })?;
    let mut image = case.image.clone();
    calseg_io::preprocess::zscore_nonzero(&mut image);
    let mut c = cfg.clone();
    c.seed = case_seed(cfg.seed, &case.id);
    let (y_s, sample_variance) = smooth_volume(model, &image, labels, &c)?;
    let y_tau = temperature(&y_s, cfg.tau)?;
    let soft = crate::pipeline::anchored_mix(model, case, &y_s, cfg.alpha, cfg.tau, cfg.mix)?;
    let stats = SmoothStats {
        case: case.id.clone(),
        voxels: labels.len(),
        samples: cfg.samples,
        flipped_fraction: label_disagreement(&soft, &labels.view())?,
        mean_entropy: mean_entropy(&soft)?,
        mean_entropy_ys: mean_entropy(&y_tau)?,
        sample_variance,
        seconds: start.elapsed().as_secs_f64(),
    };
    tracing::debug!(
        case = %stats.case,
        seconds = stats.seconds,
        variance = stats.sample_variance,
        "smoothed"
    );
    Ok(SoftLabels { y_s, soft, stats })
}

/// `y_s (K, *spatial)` of a normalised image `(C, *spatial)` and its labels `(*spatial)`,
/// and the mean per-voxel variance across samples. The noise of image (slice) `i` comes
/// from its own `StdRng` seeded from `(cfg.seed, i)`, so the result does not depend on
/// `cfg.batch`.
pub fn smooth_volume(
    model: &VlsModel,
    image: &ArrayD<f32>,
    labels: &ArrayD<u32>,
    cfg: &SmoothConfig,
) -> Result<(ArrayD<f32>, f64)> {
    cfg.validate()?;
    let mc = model.config();
    if image.ndim() < 3 || image.shape()[0] != mc.in_channels {
        return Err(VlsError::Shape(format!(
            "image must be ({}, *spatial), got {:?}",
            mc.in_channels,
            image.shape()
        )));
    }
    if image.shape()[1..] != *labels.shape() {
        return Err(VlsError::Shape(format!(
            "labels {:?} do not match image {:?}",
            labels.shape(),
            image.shape()
        )));
    }
    let nd = labels.ndim();
    if let Some(patch) = &mc.patch
        && nd == 3
    {
        return smooth_windows(model, image, labels, patch, cfg);
    }
    // Stacks (B, C, *sp2) and (B, *sp2) the model runs on.
    let (imgs, labs, sliced) = if nd == mc.dims {
        (
            image.view().insert_axis(Axis(0)),
            labels.view().insert_axis(Axis(0)),
            false,
        )
    } else if mc.dims == 2 && nd == 3 {
        (
            image.view().permuted_axes(IxDyn(&[3, 0, 1, 2])),
            labels.view().permuted_axes(IxDyn(&[2, 0, 1])),
            true,
        )
    } else {
        return Err(VlsError::Config(format!(
            "a {}D model cannot smooth a {nd}D case",
            mc.dims
        )));
    };
    let total = imgs.shape()[0];
    let (mut means, mut vars) = (Vec::new(), Vec::new());
    let mut start = 0;
    while start < total {
        let end = (start + cfg.batch).min(total);
        let im = imgs.slice_axis(Axis(0), Slice::from(start..end));
        let lb = labs.slice_axis(Axis(0), Slice::from(start..end));
        // One generator per image (slice), so results do not depend on `batch`.
        let mut rngs: Vec<StdRng> = (start..end)
            .map(|i| StdRng::seed_from_u64(image_seed(cfg.seed, i)))
            .collect();
        let (m, v) = smooth_batch(model, im, lb, cfg, &mut rngs)?;
        means.push(m);
        vars.push(v);
        start = end;
    }
    let cat = |parts: &[ArrayD<f32>]| -> Result<ArrayD<f32>> {
        let views: Vec<_> = parts.iter().map(|a| a.view()).collect();
        ndarray::concatenate(Axis(0), &views).map_err(|e| VlsError::Shape(e.to_string()))
    };
    let mean = cat(&means)?;
    let var = cat(&vars)?;
    let sample_variance = var.iter().map(|&x| f64::from(x)).sum::<f64>() / var.len().max(1) as f64;
    let y_s = if sliced {
        mean.permuted_axes(IxDyn(&[1, 2, 3, 0]))
            .as_standard_layout()
            .into_owned()
    } else {
        mean.index_axis_move(Axis(0), 0)
    };
    Ok((y_s, sample_variance))
}

/// Overlap of neighbouring windows of [`smooth_windows`] (nnU-Net's ½).
const WINDOW_OVERLAP: f64 = 0.5;

/// `y_s` and the mean sample variance of a volume under a 3D model trained on patches
/// ([`crate::VlsConfig::patch`]), so that every forward pass sees a patch-sized input as
/// in training: calseg-seg's sliding window ([`calseg_seg::infer::sliding_window_logits`]:
/// the volume zero-padded to at least the patch, windows overlapping by
/// [`WINDOW_OVERLAP`], blended with the Gaussian importance map σ = patch/8). Each window
/// is smoothed on its own — its own posterior, latent noise seeded from
/// `(cfg.seed, window index)` — and the blend is a convex combination per voxel, so `y_s`
/// still sums to 1 over the classes. The labels travel as an extra input channel and the
/// per-voxel sample variance as an extra output channel, so both are windowed alike.
fn smooth_windows(
    model: &VlsModel,
    image: &ArrayD<f32>,
    labels: &ArrayD<u32>,
    patch: &[usize],
    cfg: &SmoothConfig,
) -> Result<(ArrayD<f32>, f64)> {
    use calseg_seg::infer::{InferSpec, sliding_window_logits};
    let mc = model.config();
    let (c, k) = (mc.in_channels, mc.classes);
    // (1, C + 1, *sp): the image channels, then the labels.
    let lab = labels.mapv(|l| l as f32).insert_axis(Axis(0));
    let x = ndarray::concatenate(Axis(0), &[image.view(), lab.view()])
        .map_err(|e| VlsError::Shape(e.to_string()))?
        .insert_axis(Axis(0));
    let spec = InferSpec {
        dims: 3,
        in_channels: c + 1,
        classes: k + 1,
        multiple: mc.multiple(),
        axis: None,
        patch: Some(patch.to_vec()),
    };
    let index = std::cell::Cell::new(0usize);
    // Windows (b, C + 1, *patch) → (b, K + 1, *patch): y_s, then the sample variance.
    let run = |w: &ArrayD<f32>| -> calseg_seg::Result<ArrayD<f32>> {
        let mut outs = Vec::with_capacity(w.shape()[0]);
        for win in w.outer_iter() {
            let img = win
                .slice_axis(Axis(0), Slice::from(0..c))
                .insert_axis(Axis(0));
            let lab = win
                .index_axis(Axis(0), c)
                .mapv(|l| l.round().max(0.0) as u32)
                .insert_axis(Axis(0));
            let mut rng = [StdRng::seed_from_u64(image_seed(cfg.seed, index.get()))];
            index.set(index.get() + 1);
            let (m, v) = smooth_batch(model, img, lab.view(), cfg, &mut rng)?;
            let v = v.insert_axis(Axis(1));
            outs.push(
                ndarray::concatenate(Axis(1), &[m.view(), v.view()])
                    .map_err(|e| VlsError::Shape(e.to_string()))?,
            );
        }
        let views: Vec<_> = outs.iter().map(|a| a.view()).collect();
        Ok(ndarray::concatenate(Axis(0), &views).map_err(|e| VlsError::Shape(e.to_string()))?)
    };
    let out = sliding_window_logits(&run, x, &spec, patch, WINDOW_OVERLAP, 1)?
        .index_axis_move(Axis(0), 0);
    let y_s = out
        .slice_axis(Axis(0), Slice::from(0..k))
        .as_standard_layout()
        .into_owned();
    let var = out.index_axis(Axis(0), k);
    let sample_variance = var.iter().map(|&x| f64::from(x)).sum::<f64>() / var.len().max(1) as f64;
    Ok((y_s, sample_variance))
}

/// Seed of image (slice) `i` of a volume: SplitMix64 of `seed + i`.
fn image_seed(seed: u64, i: usize) -> u64 {
    let mut z = seed.wrapping_add((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Zero-pads the axes from `lead` on to multiples of `m` (at the high end).
fn pad_to<T: Clone>(a: ArrayViewD<'_, T>, lead: usize, m: usize, fill: T) -> ArrayD<T> {
    let mut shape = a.shape().to_vec();
    for s in shape[lead..].iter_mut() {
        *s = s.div_ceil(m) * m;
    }
    let mut out = ArrayD::from_elem(IxDyn(&shape), fill);
    out.slice_each_axis_mut(|ax| Slice::from(0..a.shape()[ax.axis.index()]))
        .assign(&a);
    out
}

/// One forward batch: images `(b, C, *sp)`, labels `(b, *sp)` → mean `(b, K, *sp)` and
/// per-voxel variance `(b, *sp)` (mean over classes), cropped back to `*sp`.
fn smooth_batch(
    model: &VlsModel,
    images: ArrayViewD<'_, f32>,
    labels: ArrayViewD<'_, u32>,
    cfg: &SmoothConfig,
    rngs: &mut [StdRng],
) -> Result<(ArrayD<f32>, ArrayD<f32>)> {
    let mc = model.config();
    let mult = mc.multiple();
    let dev = model.device();
    let x = pad_to(images.view(), 2, mult, 0.0f32);
    let y = pad_to(labels.view(), 1, mult, 0u32);
    let xt = array_to_tensor(x.view(), dev)?;
    let yt = array_to_tensor(y.view(), dev)?;
    let b = x.shape()[0];
    let k = mc.classes;
    let sp = x.shape()[2..].to_vec();
    let v: usize = sp.iter().product();
    let mut full = vec![b, k];
    full.extend_from_slice(&sp);

    let feats = model.features(&xt)?;
    let a: Vec<f32> = model
        .seg_feature_term(&feats)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    drop(feats);
    let post = match cfg.from {
        LatentSource::Posterior => Some(model.posterior(&xt, &yt)?),
        LatentSource::Prior => None,
    };
    let zshape = model.latent_shape(b, &sp);
    let mut zterms: Vec<Vec<f32>> = Vec::with_capacity(cfg.samples);
    for _ in 0..cfg.samples {
        // ε per image from its own generator, then z = μ + σ·ε (or z = ε).
        let mut one = zshape.clone();
        one[0] = 1;
        let eps = rngs
            .iter_mut()
            .map(|r| randn(r, &one, DType::F32, dev))
            .collect::<calseg_seg::Result<Vec<_>>>()?;
        let eps = Tensor::cat(&eps, 0)?;
        let z = match &post {
            Some(p) => (&p.mu + (p.logvar.clone() * 0.5)?.exp()?.mul(&eps)?)?,
            None => eps,
        };
        zterms.push(model.seg_latent_term(&z, &full)?.flatten_all()?.to_vec1()?);
    }
    let per_voxel = zterms.first().is_some_and(|t| t.len() == b * k * v);
    let (mean, var) = sample_mean_var(&a, &zterms, b, k, v, per_voxel);
    let mut vk_shape = vec![b];
    vk_shape.extend_from_slice(&sp);
    let var = ArrayD::from_shape_vec(IxDyn(&vk_shape), var)
        .map_err(|e| VlsError::Shape(e.to_string()))?;
    let mean =
        ArrayD::from_shape_vec(IxDyn(&full), mean).map_err(|e| VlsError::Shape(e.to_string()))?;
    let crop_mean = mean
        .slice_each_axis(|ax| {
            let i = ax.axis.index();
            if i < 2 {
                Slice::from(..)
            } else {
                Slice::from(0..labels.shape()[i - 1])
            }
        })
        .as_standard_layout()
        .into_owned();
    let crop_var = var
        .slice_each_axis(|ax| Slice::from(0..labels.shape()[ax.axis.index()]))
        .as_standard_layout()
        .into_owned();
    Ok((crop_mean, crop_var))
}

/// Voxels per task of [`sample_mean_var`] (a multiple of the SIMD width).
const VOXEL_CHUNK: usize = 512;

/// The per-sample softmax pass of the smoother, fused: for logits
/// `l_s = a + zt_s` (`a (b, K, V)`; `zt_s (b, K)` broadcast over voxels, or `(b, K, V)`
/// when `per_voxel`), returns the mean `(1/m) Σ_s softmax(l_s)` as `(b, K, V)` and the
/// per-voxel variance across samples, averaged over classes, as `(b, V)`.
///
/// Structure-of-arrays over chunks of [`VOXEL_CHUNK`] voxels, so every inner loop runs
/// over contiguous voxels and vectorises, with the branch-free [`exp_neg`]; chunks run
/// in parallel and each is computed independently, so the result does not depend on
/// the thread count. f32 throughout (probabilities in `[0, 1]`; measured against an f64
/// reference in the tests to 1e-6).
fn sample_mean_var(
    a: &[f32],
    zterms: &[Vec<f32>],
    b: usize,
    k: usize,
    v: usize,
    per_voxel: bool,
) -> (Vec<f32>, Vec<f32>) {
    let mut mean = vec![0.0f32; b * k * v];
    let mut var = vec![0.0f32; b * v];
    let inv_m = 1.0 / zterms.len().max(1) as f32;
    let tasks: Vec<(usize, usize)> = (0..b)
        .flat_map(|img| (0..v.div_ceil(VOXEL_CHUNK)).map(move |c| (img, c * VOXEL_CHUNK)))
        .collect();
    let results: Vec<(Vec<f32>, Vec<f32>)> = tasks
        .par_iter()
        .map(|&(img, v0)| {
            let n = VOXEL_CHUNK.min(v - v0);
            let mut l = vec![0.0f32; k * n];
            let mut sum = vec![0.0f32; k * n];
            let mut sum2 = vec![0.0f32; k * n];
            let mut mx = vec![0.0f32; n];
            let mut den = vec![0.0f32; n];
            for zt in zterms {
                mx.fill(f32::NEG_INFINITY);
                for c in 0..k {
                    let ac = &a[(img * k + c) * v + v0..][..n];
                    let lc = &mut l[c * n..(c + 1) * n];
                    if per_voxel {
                        let zc = &zt[(img * k + c) * v + v0..][..n];
                        for ((li, ai), zi) in lc.iter_mut().zip(ac).zip(zc) {
                            *li = ai + zi;
                        }
                    } else {
                        let zc = zt[img * k + c];
                        for (li, ai) in lc.iter_mut().zip(ac) {
                            *li = ai + zc;
                        }
                    }
                    for (m, li) in mx.iter_mut().zip(lc.iter()) {
                        *m = m.max(*li);
                    }
                }
                den.fill(0.0);
                for c in 0..k {
                    for ((li, m), d) in l[c * n..(c + 1) * n].iter_mut().zip(&mx).zip(&mut den) {
                        *li = exp_neg(*li - m);
                        *d += *li;
                    }
                }
                for d in den.iter_mut() {
                    *d = 1.0 / *d;
                }
                for c in 0..k {
                    let r = c * n..(c + 1) * n;
                    for (((li, d), s1), s2) in l[r.clone()]
                        .iter()
                        .zip(&den)
                        .zip(&mut sum[r.clone()])
                        .zip(&mut sum2[r])
                    {
                        let p = li * d;
                        *s1 += p;
                        *s2 += p * p;
                    }
                }
            }
            let mut vo = vec![0.0f32; n];
            for c in 0..k {
                let r = c * n..(c + 1) * n;
                for ((s1, s2), o) in sum[r.clone()].iter_mut().zip(&sum2[r]).zip(&mut vo) {
                    let mu = *s1 * inv_m;
                    *o += (*s2 * inv_m - mu * mu).max(0.0);
                    *s1 = mu;
                }
            }
            let inv_k = 1.0 / k as f32;
            vo.iter_mut().for_each(|o| *o *= inv_k);
            (sum, vo)
        })
        .collect();
    for (&(img, v0), (mu, vo)) in tasks.iter().zip(results) {
        let n = vo.len();
        for c in 0..k {
            mean[(img * k + c) * v + v0..][..n].copy_from_slice(&mu[c * n..(c + 1) * n]);
        }
        var[img * v + v0..][..n].copy_from_slice(&vo);
    }
    (mean, var)
}

/// `e^x` for `x ≤ 0` in f32, branch-free so loops over it vectorise (plain SSE2):
/// `x = n·ln2 + r`, `|r| ≤ ln2/2`, `e^r` by a degree-6 Taylor polynomial (relative
/// error < 2e-7 on the interval), `2^n` built in the exponent bits. Inputs below −87
/// are clamped (the result, < 2e-38, is then not exactly 0 but negligible next to the
/// softmax's largest term, which is 1).
#[inline(always)]
fn exp_neg(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5·2^23: adding it rounds to an integer
    let x = x.clamp(-87.0, 0.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let bits = ((n as i32 + 127) as u32) << 23;
    p * f32::from_bits(bits)
}

/// Writes `Y_s` of one case as `DIR/CASE.safetensors` (tensor `soft_labels`, `(K,
/// *spatial)` f32) and `DIR/CASE.nii.gz` (classes on the last axis, with `geometry`'s
/// spacing and affine). Both writes are atomic (write-then-rename by calseg-io).
/// Returns the two paths.
pub fn write_soft_labels(
    dir: impl AsRef<Path>,
    soft: &SoftLabels,
    geometry: &Geometry,
) -> Result<(PathBuf, PathBuf)> {
    let dir = dir.as_ref();
    let st = dir.join(format!("{}.safetensors", soft.stats.case));
    let nii = dir.join(format!("{}.nii.gz", soft.stats.case));
    write_safetensors(&st, &[NamedTensor::new("soft_labels", &soft.soft)])?;
    write_nifti_probs(&nii, &soft.soft, geometry)?;
    Ok((st, nii))
}

/// The file of a VLS model folder that holds its validation-calibrated temperature
/// ([`Calibration::save`]); `calseg vls smooth` uses its τ unless `--tau` is given.
pub const CALIBRATION_FILE: &str = "calibration.json";

/// A temperature chosen on held-out (validation) data: see [`calibrate_temperature`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// The chosen temperature τ* (the argmin of the validation cross-entropy).
    pub tau: f64,
    /// Validation cross-entropy (nats per voxel) at τ*.
    pub ce: f64,
    /// Validation cross-entropy at τ = 1 (the uncalibrated `y_s`).
    pub ce_at_one: f64,
    /// σ of the label-noise target the cross-entropy was taken against (0 = one-hot).
    pub target_sigma: f64,
    /// Validation voxels used (nonzero image or foreground label).
    pub voxels: usize,
    /// Latent samples m of the validation `y_s`.
    pub samples: usize,
    /// The mixing weight α* chosen after τ*: the argmin over α ∈ {0, 0.05, …, 1} of the
    /// same validation cross-entropy of `Y_s = (1−α)·onehot(y) + α·y_s^τ*`.
    #[serde(default = "one")]
    pub alpha: f64,
    /// Validation cross-entropy of `Y_s` at (α*, τ*).
    #[serde(default)]
    pub ce_mix: f64,
}

fn one() -> f64 {
    1.0
}

impl Calibration {
    /// Writes `dir/`[`CALIBRATION_FILE`] (atomically).
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let json = serde_json::to_string_pretty(self)
            .map_err(|e| VlsError::Config(format!("cannot serialise the calibration: {e}")))?;
        calseg_io::atomic::write_atomic(&dir.as_ref().join(CALIBRATION_FILE), json.as_bytes())?;
        Ok(())
    }

    /// Reads `dir/`[`CALIBRATION_FILE`]: `Ok(None)` when the folder has none, a
    /// [`VlsError::Config`] naming the file when it cannot be read or parsed or its τ
    /// is not a finite positive number.
    pub fn load(dir: impl AsRef<Path>) -> Result<Option<Self>> {
        let path = dir.as_ref().join(CALIBRATION_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| VlsError::Config(format!("{}: cannot read: {e}", path.display())))?;
        let c: Calibration = serde_json::from_str(&text)
            .map_err(|e| VlsError::Config(format!("{}: not a calibration: {e}", path.display())))?;
        if !(c.tau.is_finite() && c.tau > 0.0 && (0.0..=1.0).contains(&c.alpha)) {
            return Err(VlsError::Config(format!(
                "{}: need a finite tau > 0 and alpha in [0, 1], got tau {}, alpha {}",
                path.display(),
                c.tau,
                c.alpha
            )));
        }
        Ok(Some(c))
    }
}

/// The label-noise target of a label map `(*spatial)` for `model`: one-hot `(K,
/// *spatial)` smoothed by [`VlsModel::noisy_target`] (SVLS with σ =
/// [`VlsConfig::target_sigma`](crate::VlsConfig::target_sigma); in-plane, slice by slice
/// along the last axis, for a 2D model on a 3D map).
pub fn noise_target(model: &VlsModel, labels: &ArrayD<u32>) -> Result<ArrayD<f32>> {
    let mc = model.config();
    let oh = crate::mix::one_hot(&labels.view(), mc.classes)?;
    if mc.target_sigma <= 0.0 {
        return Ok(oh);
    }
    let nd = labels.ndim();
    let dev = candle_core::Device::Cpu;
    if mc.dims == 2 && nd == 3 && !mc.volume_target {
        // (K, X, Y, Z) → (Z, K, X, Y), smooth in-plane, back.
        let stack = oh.view().permuted_axes(IxDyn(&[3, 0, 1, 2]));
        let t = array_to_tensor(stack.as_standard_layout().view(), &dev)?;
        let s: ArrayD<f32> = calseg_seg::convert::tensor_to_array(&model.noisy_target(&t)?)?;
        Ok(s.permuted_axes(IxDyn(&[1, 2, 3, 0]))
            .as_standard_layout()
            .into_owned())
    } else {
        // The model's own dimensionality, or the whole volume (3×3×3) for a 2D model
        // with `volume_target`.
        let t = array_to_tensor(oh.view().insert_axis(Axis(0)), &dev)?;
        let t = calseg_seg::loss::svls_smooth(&t, 3, mc.target_sigma)?;
        let s: ArrayD<f32> = calseg_seg::convert::tensor_to_array(&t)?;
        Ok(s.index_axis_move(Axis(0), 0))
    }
}

/// Chooses the temperature of the smoother on held-out cases (hard labels only):
///
/// ```text
/// CE(τ) = (1/|V|) Σ_{v∈V} −Σ_k t_{v,k} · log softmax(log y_s,v / τ)_k
/// τ*    = argmin_{τ ∈ [0.1, 10]} CE(τ)
/// ```
///
/// `y_s` is the smoother's soft label of each case (m = `cfg.samples`, `cfg.from`,
/// seeded like [`smooth_case`]), `t` the label-noise target of the model
/// ([`noise_target`]: the one-hot labels, or their SVLS smoothing when the model was
/// trained on it), and `V` the voxels with a nonzero image value or a foreground label
/// (the far background, where every method is certain, would only dilute the mean).
/// Proper scoring: τ* makes `y_s^τ` neither over- nor under-confident on data the
/// smoother did not fit. Search: a grid of 41 log-spaced τ, refined by golden-section
/// search on `ln τ` around the best grid point.
pub fn calibrate_temperature(
    model: &VlsModel,
    cases: &[Case],
    cfg: &SmoothConfig,
) -> Result<Calibration> {
    cfg.validate()?;
    let mut maps = Vec::with_capacity(cases.len());
    for case in cases {
        let labels = case.label.as_ref().ok_or_else(|| {
            VlsError::Config(format!(
                "case {:?} has no label map to calibrate on",
                case.id
            ))
        })?;
        let mut image = case.image.clone();
        calseg_io::preprocess::zscore_nonzero(&mut image);
        let mut c = cfg.clone();
        c.seed = case_seed(cfg.seed, &case.id);
        let (y_s, _) = smooth_volume(model, &image, labels, &c)?;
        maps.push(y_s);
    }
    let items: Vec<CalibrationItem<'_>> = cases
        .iter()
        .zip(&maps)
        .filter_map(|(c, y)| {
            c.label.as_ref().map(|l| CalibrationItem {
                y_s: y,
                labels: l,
                image: &c.image,
            })
        })
        .collect();
    calibrate_maps(model, &items, cfg.samples)
}

/// [`calibrate_temperature`] for volumes split into a training slab and a held-out slab
/// along spatial `axis` (how `calseg vls train` validates on a dataset of fewer than five
/// cases): each held-out slab is smoothed *together with* its training slab — the volume
/// they were cut from, `[train, held-out]` along `axis` — and only the held-out slab's
/// voxels are scored. A 3D smoother trained on patches thus sees the held-out slab with
/// its real neighbours, as every voxel is seen when the training volume is smoothed;
/// smoothed alone, a thin slab is a truncated volume that no training patch looked like
/// (on the embedded brain that made τ* 8.9). The weights never trained on the held-out
/// voxels. `pairs`: (training slab, held-out slab) of each case, equal in every other axis.
///
/// # Errors
/// [`VlsError::Shape`] when a pair does not fit together; as [`calibrate_temperature`].
pub fn calibrate_held_out_slabs(
    model: &VlsModel,
    pairs: &[(&Case, &Case)],
    axis: usize,
    cfg: &SmoothConfig,
) -> Result<Calibration> {
    cfg.validate()?;
    let mut maps = Vec::with_capacity(pairs.len());
    for (train, held) in pairs {
        let (Some(tl), Some(hl)) = (&train.label, &held.label) else {
            return Err(VlsError::Config(format!(
                "cases {:?} / {:?}: a label map is missing",
                train.id, held.id
            )));
        };
        if axis >= tl.ndim() || tl.ndim() != hl.ndim() {
            return Err(VlsError::Shape(format!(
                "slabs {:?} {:?} and {:?} {:?}: no spatial axis {axis} to join along",
                train.id,
                tl.shape(),
                held.id,
                hl.shape()
            )));
        }
        let join = |a: ArrayViewD<'_, f32>, b: ArrayViewD<'_, f32>, ax: usize| {
            ndarray::concatenate(Axis(ax), &[a, b]).map_err(|e| {
                VlsError::Shape(format!(
                    "slabs {:?} and {:?} do not join along axis {axis}: {e}",
                    train.id, held.id
                ))
            })
        };
        let mut image = join(train.image.view(), held.image.view(), axis + 1)?;
        calseg_io::preprocess::zscore_nonzero(&mut image);
        let labels = ndarray::concatenate(Axis(axis), &[tl.view(), hl.view()])
            .map_err(|e| VlsError::Shape(format!("label slabs do not join: {e}")))?;
        let mut c = cfg.clone();
        c.seed = case_seed(cfg.seed, &held.id);
        let (y_s, _) = smooth_volume(model, &image, &labels, &c)?;
        let from = tl.shape()[axis];
        maps.push(
            y_s.slice_axis(Axis(axis + 1), Slice::from(from..))
                .as_standard_layout()
                .into_owned(),
        );
    }
    let items: Vec<CalibrationItem<'_>> = pairs
        .iter()
        .zip(&maps)
        .filter_map(|((_, h), y)| {
            h.label.as_ref().map(|l| CalibrationItem {
                y_s: y,
                labels: l,
                image: &h.image,
            })
        })
        .collect();
    calibrate_maps(model, &items, cfg.samples)
}

/// One held-out map for [`calibrate_maps`]: the smoother's `y_s (K, *spatial)`, the hard
/// labels `(*spatial)` and the image `(C, *spatial)` (only its nonzero voxels matter).
#[derive(Clone, Copy, Debug)]
pub struct CalibrationItem<'a> {
    /// `y_s` of the voxels, from a smoother that did not train on them.
    pub y_s: &'a ArrayD<f32>,
    /// Hard labels.
    pub labels: &'a ArrayD<u32>,
    /// Image (raw or normalised: only `≠ 0` is read).
    pub image: &'a ArrayD<f32>,
}

/// [`calibrate_temperature`] on `y_s` maps computed elsewhere (e.g. cross-fitted ones:
/// each part smoothed by a model that did not train on it). `samples` is recorded only.
pub fn calibrate_maps(
    model: &VlsModel,
    items: &[CalibrationItem<'_>],
    samples: usize,
) -> Result<Calibration> {
    let k = model.config().classes;
    // Per selected voxel: K log-probabilities and K target weights.
    let (mut logs, mut targets) = (Vec::<f64>::new(), Vec::<f64>::new());
    let mut hard = Vec::<usize>::new();
    let mut neighbours = Vec::<f64>::new();
    let sigma = model.config().target_sigma;
    for it in items {
        let labels = it.labels;
        if it.y_s.ndim() < 2
            || it.y_s.shape()[0] != k
            || it.y_s.shape()[1..] != *labels.shape()
            || it.image.ndim() < 2
            || it.image.shape()[1..] != *labels.shape()
        {
            return Err(VlsError::Shape(format!(
                "calibration maps do not match: y_s {:?}, labels {:?}, image {:?}",
                it.y_s.shape(),
                labels.shape(),
                it.image.shape()
            )));
        }
        let t = noise_target(model, labels)?;
        let v = labels.len();
        let (ys, ts) = (it.y_s.as_standard_layout(), t.as_standard_layout());
        let img = it.image.as_standard_layout();
        let (Some(ys), Some(ts), Some(img)) = (ys.as_slice(), ts.as_slice(), img.as_slice()) else {
            return Err(VlsError::Shape("maps not contiguous".into()));
        };
        let chans = it.image.shape()[0];
        for (i, &l) in labels.iter().enumerate() {
            let nonzero = (0..chans).any(|ch| img[ch * v + i] != 0.0);
            if l == 0 && !nonzero {
                continue;
            }
            hard.push(l as usize);
            for c in 0..k {
                logs.push(f64::from(ys[c * v + i]).max(1e-30).ln());
                targets.push(f64::from(ts[c * v + i]));
                // The neighbours' share of the SVLS target, `N = 2·t − onehot(y)`
                // (`N = onehot(y)` without smoothing): the labels the mix does not use.
                let t = f64::from(ts[c * v + i]);
                let own = if c == l as usize { 1.0 } else { 0.0 };
                neighbours.push(if sigma > 0.0 {
                    (2.0 * t - own).max(0.0)
                } else {
                    own
                });
            }
        }
    }
    let n = logs.len() / k.max(1);
    if n == 0 {
        return Err(VlsError::Config(
            "no validation voxels (nonzero image or foreground label) to calibrate on".into(),
        ));
    }
    let ce = |tau: f64| -> f64 {
        let total: f64 = logs
            .par_chunks(k)
            .zip(targets.par_chunks(k))
            .map(|(l, t)| {
                let mx = l.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b)) / tau;
                let lse = mx + l.iter().map(|&x| (x / tau - mx).exp()).sum::<f64>().ln();
                l.iter()
                    .zip(t)
                    .map(|(&x, &w)| -w * (x / tau - lse))
                    .sum::<f64>()
            })
            .collect::<Vec<f64>>()
            .iter()
            .sum(); // in order: the same sum whatever rayon's split
        total / n as f64
    };
    let (lo, hi) = (0.1f64.ln(), 10.0f64.ln());
    let steps = 40;
    let grid: Vec<(f64, f64)> = (0..=steps)
        .map(|i| {
            let u = lo + (hi - lo) * i as f64 / steps as f64;
            (u, ce(u.exp()))
        })
        .collect();
    let best = grid
        .iter()
        .enumerate()
        .min_by(|a, b| a.1.1.total_cmp(&b.1.1))
        .map_or(steps / 2, |(i, _)| i);
    let (mut a, mut b) = (
        grid[best.saturating_sub(1)].0,
        grid[(best + 1).min(steps)].0,
    );
    let g = (5f64.sqrt() - 1.0) / 2.0;
    for _ in 0..30 {
        let (c1, c2) = (b - g * (b - a), a + g * (b - a));
        if ce(c1.exp()) < ce(c2.exp()) {
            b = c2;
        } else {
            a = c1;
        }
    }
    let mut tau = ((a + b) / 2.0).exp();
    let mut best_ce = ce(tau);
    if grid[best].1 < best_ce {
        tau = grid[best].0.exp();
        best_ce = grid[best].1;
    }
    // α* given τ*: CE of the mix with the one-hot labels, scored against the labels of
    // the neighbours (the mix contains the voxel's own label already).
    let ce_mix = |alpha: f64| -> f64 {
        let total: f64 = logs
            .par_chunks(k)
            .zip(neighbours.par_chunks(k))
            .zip(hard.par_iter())
            .map(|((l, t), &y)| {
                let mx = l.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b)) / tau;
                let den: f64 = l.iter().map(|&x| (x / tau - mx).exp()).sum();
                l.iter()
                    .zip(t)
                    .enumerate()
                    .map(|(c, (&x, &w))| {
                        let q = alpha * (x / tau - mx).exp() / den
                            + if c == y { 1.0 - alpha } else { 0.0 };
                        if w > 0.0 { -w * q.max(1e-30).ln() } else { 0.0 }
                    })
                    .sum::<f64>()
            })
            .collect::<Vec<f64>>()
            .iter()
            .sum(); // in order: the same sum whatever rayon's split
        total / n as f64
    };
    let (alpha, ce_at_alpha) = (0..=20)
        .map(|i| {
            let a = f64::from(i) / 20.0;
            (a, ce_mix(a))
        })
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((1.0, best_ce));
    Ok(Calibration {
        tau,
        alpha,
        ce_mix: ce_at_alpha,
        ce: best_ce,
        ce_at_one: ce(1.0),
        target_sigma: model.config().target_sigma,
        voxels: n,
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::{exp_neg, sample_mean_var};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn exp_neg_matches_std_to_float_precision() {
        let mut worst = 0.0f64;
        for i in 0..=200_000 {
            let x = -87.0 * f64::from(i) / 200_000.0;
            let got = f64::from(exp_neg(x as f32));
            let want = (f64::from(x as f32)).exp();
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(exp_neg(0.0), 1.0);
        assert!(exp_neg(-1e4) < 1e-37 && exp_neg(-1e4) >= 0.0);
    }

    /// The fused f32 pass against a plain f64 reference, both z-term layouts and a
    /// voxel count that is not a multiple of the chunk.
    #[test]
    fn sample_mean_var_matches_f64_reference() {
        let (b, k, v, m) = (2, 4, 1300, 5);
        let mut rng = StdRng::seed_from_u64(7);
        let a: Vec<f32> = (0..b * k * v)
            .map(|_| rng.random_range(-6.0..6.0))
            .collect();
        for per_voxel in [false, true] {
            let len = if per_voxel { b * k * v } else { b * k };
            let zt: Vec<Vec<f32>> = (0..m)
                .map(|_| (0..len).map(|_| rng.random_range(-3.0..3.0)).collect())
                .collect();
            let (mean, var) = sample_mean_var(&a, &zt, b, k, v, per_voxel);
            for img in 0..b {
                for vox in 0..v {
                    let (mut s1, mut s2) = (vec![0.0f64; k], vec![0.0f64; k]);
                    for z in &zt {
                        let l: Vec<f64> = (0..k)
                            .map(|c| {
                                let ai = (img * k + c) * v + vox;
                                let zi = if per_voxel { ai } else { img * k + c };
                                f64::from(a[ai]) + f64::from(z[zi])
                            })
                            .collect();
                        let mx = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                        let den: f64 = l.iter().map(|x| (x - mx).exp()).sum();
                        for c in 0..k {
                            let p = (l[c] - mx).exp() / den;
                            s1[c] += p;
                            s2[c] += p * p;
                        }
                    }
                    let mut vs = 0.0;
                    for c in 0..k {
                        let mu = s1[c] / m as f64;
                        vs += s2[c] / m as f64 - mu * mu;
                        let got = f64::from(mean[(img * k + c) * v + vox]);
                        assert!((got - mu).abs() < 1e-6, "mean {got} vs {mu}");
                    }
                    let got = f64::from(var[img * v + vox]);
                    assert!((got - vs / k as f64).abs() < 1e-6, "var {got}");
                }
            }
        }
    }
}
