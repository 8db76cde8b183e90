//! Seeded synthetic phantoms with exactly known soft labels, for tests and experiments.
//!
//! Each foreground class is a smooth blob (the level set `Σ_j exp(-|A_j (x - c_j)|²) = ½`
//! of a few random anisotropic Gaussians), painted over the previous classes. The
//! class map is evaluated on a grid `supersample` times finer per axis and averaged
//! down, so every voxel carries the exact fraction of its (sub-sampled) volume that
//! each class occupies: boundary voxels are soft, interior voxels one-hot. The image is
//! `(Σ_k p_k μ_k) · bias + noise`: the partial-volume mix of class intensities, times a
//! smooth multiplicative bias field (as MRI has), plus Gaussian noise.
//!
//! Unlimited cases with known ground-truth soft labels, in 2D or 3D.
//!
//! **Several raters** ([`generate_raters`], [`write_rater_dataset`]): rater `r` draws
//! class `c` as the level set of the same blob field at its own threshold
//! `t_rc = ½·exp(u_rc)`, `u_rc ~ U(−spread, spread)`, evaluated at the voxel centres —
//! every rater sees the same structures, and raters disagree at the boundaries, which
//! move in or out by about a voxel per 0.3 of `spread` for blobs of radius ~5 voxels.

use crate::dataset::Case;
use crate::error::{IoError, Result};
use crate::image::Geometry;
use crate::nifti_io::{write_nifti, write_nifti_labels};
use ndarray::{ArrayD, Axis, Dimension, IxDyn};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use std::path::Path;

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct PhantomConfig {
    /// Spatial shape: 2 or 3 axes.
    pub shape: Vec<usize>,
    /// Number of classes K, background included (at least 2).
    pub classes: usize,
    /// Fine-grid factor per axis (≥ 1): soft labels are multiples of `1 / supersample^d`.
    pub supersample: usize,
    /// Standard deviation of the additive Gaussian noise.
    pub noise_std: f32,
    /// Strength of the bias field: `bias = exp(s · smooth polynomial in [-1, 1])`, 0 = none.
    pub bias_strength: f32,
    /// Mean intensity of each class; default `k / (K - 1)` (background 0).
    pub intensities: Option<Vec<f32>>,
}

impl Default for PhantomConfig {
    /// 32×32, 3 classes, 4× supersampling, noise 0.05, bias 0.2.
    fn default() -> Self {
        PhantomConfig {
            shape: vec![32, 32],
            classes: 3,
            supersample: 4,
            noise_std: 0.05,
            bias_strength: 0.2,
            intensities: None,
        }
    }
}

/// A generated phantom.
#[derive(Debug, Clone, PartialEq)]
pub struct Phantom {
    /// `(1, *spatial)`: the noisy, biased image.
    pub image: ArrayD<f32>,
    /// `(K, *spatial)`: exact partial-volume fractions, summing to 1 per voxel.
    pub soft_labels: ArrayD<f32>,
    /// `(*spatial)`: argmax of the soft labels (ties → lower class).
    pub labels: ArrayD<u32>,
    /// `(*spatial)`: the multiplicative bias field that was applied.
    pub bias: ArrayD<f32>,
}

impl Phantom {
    /// The phantom as a dataset [`Case`] (unit spacing, no affine).
    pub fn to_case(&self, id: &str) -> Case {
        Case {
            id: id.to_string(),
            image: self.image.clone(),
            label: Some(self.labels.clone()),
            soft_label: Some(self.soft_labels.clone()),
            raters: None,
            geometry: Geometry::unit(self.labels.ndim()),
        }
    }
}

/// What to generate for a multi-rater phantom.
#[derive(Debug, Clone, PartialEq)]
pub struct RaterPhantomConfig {
    /// The phantom (image, true soft labels).
    pub phantom: PhantomConfig,
    /// Number of raters `R` (at least 1).
    pub raters: usize,
    /// Spread `s` of the raters' thresholds: `t = ½·exp(u)`, `u ~ U(−s, s)` per rater
    /// and class (0: every rater draws the phantom's own boundary; must be in `[0, 2]`).
    pub spread: f64,
}

impl Default for RaterPhantomConfig {
    /// The default phantom, 4 raters, spread 0.5.
    fn default() -> Self {
        RaterPhantomConfig {
            phantom: PhantomConfig::default(),
            raters: 4,
            spread: 0.5,
        }
    }
}

/// A phantom with several raters' label maps.
#[derive(Debug, Clone, PartialEq)]
pub struct RaterPhantom {
    /// The phantom itself (its `labels` are the truth at threshold ½, not a rater).
    pub phantom: Phantom,
    /// `R` label maps `(*spatial)`, one per rater.
    pub raters: Vec<ArrayD<u32>>,
}

impl RaterPhantom {
    /// As a dataset [`Case`] the way a multi-rater folder loads: `raters`, their
    /// majority vote as `label`, the phantom's true soft labels as `soft_label`.
    pub fn to_case(&self, id: &str) -> Case {
        // Raters of one shape, at least one: the vote cannot fail.
        let vote = crate::dataset::majority_vote(&self.raters)
            .unwrap_or_else(|_| self.phantom.labels.clone());
        Case {
            id: id.to_string(),
            image: self.phantom.image.clone(),
            label: Some(vote),
            soft_label: Some(self.phantom.soft_labels.clone()),
            raters: Some(self.raters.clone()),
            geometry: Geometry::unit(self.phantom.labels.ndim()),
        }
    }
}

/// Salt of the raters' random stream (kept apart from the phantom's own draws, so
/// [`generate`] gives the same phantom with or without raters).
const RATER_SALT: u64 = 0x5241_5445_5253; // "RATERS"

/// Generates a phantom and `R` raters that disagree at its boundaries (see the module
/// docs); the same `config` and `seed` always give the same result, and
/// `result.phantom == generate(&config.phantom, seed)`.
///
/// ```
/// use calseg_io::phantom::{RaterPhantomConfig, generate_raters};
/// let rp = generate_raters(&RaterPhantomConfig::default(), 7)?;
/// assert_eq!(rp.raters.len(), 4);
/// assert_eq!(rp.raters[0].shape(), &[32, 32]);
/// assert_ne!(rp.raters[0], rp.raters[1]); // they disagree somewhere
/// # Ok::<(), calseg_io::IoError>(())
/// ```
///
/// # Errors
/// [`IoError::InvalidInput`] for an invalid phantom, no rater, or a spread outside `[0, 2]`.
pub fn generate_raters(config: &RaterPhantomConfig, seed: u64) -> Result<RaterPhantom> {
    if config.raters == 0 || !(0.0..=2.0).contains(&config.spread) {
        return Err(IoError::invalid(
            Path::new("rater phantom config"),
            format!(
                "need at least 1 rater and a spread in [0, 2], got {} and {}",
                config.raters, config.spread
            ),
        ));
    }
    let phantom = generate(&config.phantom, seed)?;
    let shape = &config.phantom.shape;
    let k = config.phantom.classes;
    // The phantom's first draws are its blobs: redraw them from the same seed.
    let blobs = make_blobs(&mut StdRng::seed_from_u64(seed), shape, k);
    let mut rng = StdRng::seed_from_u64(seed ^ RATER_SALT);
    let spatial = ArrayD::<u8>::zeros(IxDyn(shape));
    let mut raters = Vec::with_capacity(config.raters);
    for _ in 0..config.raters {
        let thresholds: Vec<f64> = (1..k)
            .map(|_| {
                let u = if config.spread > 0.0 {
                    rng.random_range(-config.spread..=config.spread)
                } else {
                    0.0
                };
                0.5 * u.exp()
            })
            .collect();
        let mut point = vec![0.0; shape.len()];
        let map = spatial.indexed_iter().map(|(idx, _)| {
            for (a, p) in point.iter_mut().enumerate() {
                *p = idx[a] as f64;
            }
            class_of(&blobs, &point, |c| thresholds[c - 1]) as u32
        });
        let values: Vec<u32> = map.collect();
        let map = ArrayD::from_shape_vec(IxDyn(shape), values)
            .map_err(|e| IoError::invalid(Path::new("rater phantom"), e.to_string()))?;
        raters.push(map);
    }
    Ok(RaterPhantom { phantom, raters })
}

/// A seeded multi-rater dataset folder.
#[derive(Debug, Clone, PartialEq)]
pub struct RaterDatasetConfig {
    /// Phantom and raters of every case (3D shapes make volumes; 2D shapes images).
    pub phantom: RaterPhantomConfig,
    /// Training cases (`imagesTr`, `labelsTr`).
    pub train: usize,
    /// Test cases (`imagesTs`, `labelsTs`; 0: no test folders).
    pub test: usize,
}

/// Writes a multi-rater dataset in the layout of [`crate::dataset`] under `root`:
/// `dataset.json` (one channel `"synthetic"`, classes `background`, `class1`, …),
/// `imagesTr/rp_{i:03}_0000.nii.gz`, `labelsTr/rp_{i:03}_rater{r}.nii.gz` for
/// `r = 1..=R`, `softlabelsTr/rp_{i:03}.nii.gz` (the true partial-volume fractions; 3D
/// phantoms only, NIfTI soft labels being `(x, y, z, K)`), and
/// the same for the test cases in `imagesTs`/`labelsTs`/`softlabelsTs`. Case `i` (test
/// cases numbered after the training cases) is [`generate_raters`] with seed `seed + i`;
/// unit spacing, no affine.
///
/// ```
/// use calseg_io::phantom::{RaterDatasetConfig, RaterPhantomConfig, write_rater_dataset};
/// let dir = std::env::temp_dir().join(format!("calseg-raters-doc-{}", std::process::id()));
/// let cfg = RaterDatasetConfig { phantom: RaterPhantomConfig::default(), train: 2, test: 1 };
/// write_rater_dataset(&dir, &cfg, 0)?;
/// let ds = calseg_io::Dataset::open(&dir)?;
/// ds.check()?;
/// let case = ds.load("rp_000")?;
/// assert_eq!(case.raters.as_ref().map(Vec::len), Some(4));
/// std::fs::remove_dir_all(&dir).ok();
/// # Ok::<(), calseg_io::IoError>(())
/// ```
///
/// # Errors
/// As [`generate_raters`], and any failure to create a folder or write a file.
pub fn write_rater_dataset(root: &Path, config: &RaterDatasetConfig, seed: u64) -> Result<()> {
    let k = config.phantom.phantom.classes;
    let mut labels = serde_json::Map::new();
    labels.insert("background".into(), 0.into());
    for c in 1..k {
        labels.insert(format!("class{c}"), c.into());
    }
    let json = serde_json::json!({
        "name": "RaterPhantom",
        "description": "seeded multi-rater phantom (calseg_io::phantom::write_rater_dataset)",
        "channel_names": {"0": "synthetic"},
        "labels": labels,
        "numTraining": config.train,
        "file_ending": ".nii.gz",
    });
    let mk = |sub: &str| -> Result<()> {
        let d = root.join(sub);
        std::fs::create_dir_all(&d).map_err(|e| IoError::io(&d, "create", e))
    };
    let mut folders = vec![("imagesTr", "labelsTr", "softlabelsTr", 0, config.train)];
    if config.test > 0 {
        folders.push((
            "imagesTs",
            "labelsTs",
            "softlabelsTs",
            config.train,
            config.test,
        ));
    }
    let text =
        serde_json::to_string_pretty(&json).map_err(|e| IoError::invalid(root, e.to_string()))?;
    mk("")?;
    crate::atomic::write_atomic(&root.join("dataset.json"), text.as_bytes())?;
    for (images, labels, soft, first, n) in folders {
        for sub in [images, labels] {
            mk(sub)?;
        }
        if config.phantom.phantom.shape.len() == 3 {
            mk(soft)?;
        }
        for i in first..first + n {
            let rp = generate_raters(&config.phantom, seed + i as u64)?;
            let geo = Geometry::unit(rp.phantom.labels.ndim());
            let id = format!("rp_{i:03}");
            let img = rp.phantom.image.index_axis(Axis(0), 0);
            write_nifti(root.join(format!("{images}/{id}_0000.nii.gz")), &img, &geo)?;
            for (r, map) in rp.raters.iter().enumerate() {
                let path = root.join(format!("{labels}/{id}_rater{}.nii.gz", r + 1));
                write_nifti_labels(path, map, &geo)?;
            }
            // NIfTI soft labels are (x, y, z, K): volumes only.
            if rp.phantom.labels.ndim() == 3 {
                crate::nifti_io::write_nifti_probs(
                    root.join(format!("{soft}/{id}.nii.gz")),
                    &rp.phantom.soft_labels,
                    &geo,
                )?;
            }
        }
    }
    Ok(())
}

/// One Gaussian bump of a blob: centre and inverse-scale matrix (rows).
#[derive(Debug, Clone)]
struct Bump {
    centre: Vec<f64>,
    inv: Vec<Vec<f64>>,
}

/// The soft labels `(K, *shape)` of the class map `class_at` (a function of a point in
/// voxel coordinates, voxel `i` covering `[i - ½, i + ½]`), averaged over
/// `supersample^d` evenly spaced points per voxel. Class indices ≥ `classes` are
/// clamped to the last class.
pub fn partial_volume(
    shape: &[usize],
    supersample: usize,
    classes: usize,
    class_at: impl Fn(&[f64]) -> usize,
) -> ArrayD<f32> {
    let s = supersample.max(1);
    let k = classes.max(1);
    let d = shape.len();
    let per_voxel = s.pow(d as u32);
    let weight = 1.0 / per_voxel as f64;
    let mut full = vec![k];
    full.extend_from_slice(shape);
    let mut out = ArrayD::<f32>::zeros(IxDyn(&full));
    let spatial = ArrayD::<u8>::zeros(IxDyn(shape));
    let mut counts = vec![0usize; k];
    let mut point = vec![0.0; d];
    let mut sub = vec![0usize; d];
    for (idx, _) in spatial.indexed_iter() {
        counts.iter_mut().for_each(|c| *c = 0);
        for n in 0..per_voxel {
            // n → sub-sample multi-index (base s).
            let mut rest = n;
            for a in (0..d).rev() {
                sub[a] = rest % s;
                rest /= s;
            }
            for a in 0..d {
                point[a] = idx[a] as f64 - 0.5 + (sub[a] as f64 + 0.5) / s as f64;
            }
            let c = class_at(&point).min(k - 1);
            counts[c] += 1;
        }
        for (c, &cnt) in counts.iter().enumerate() {
            if cnt > 0 {
                let mut at = Vec::with_capacity(d + 1);
                at.push(c);
                at.extend(idx.as_array_view().iter().copied());
                out[IxDyn(&at)] = (cnt as f64 * weight) as f32;
            }
        }
    }
    out
}

/// The random blobs of the foreground classes `1..k` (class 1 largest, later classes
/// smaller and painted on top): the first draws of a phantom's generator.
fn make_blobs(rng: &mut StdRng, shape: &[usize], k: usize) -> Vec<Vec<Bump>> {
    let d = shape.len();
    let extent: Vec<f64> = shape.iter().map(|&n| n as f64).collect();
    let min_extent = extent.iter().copied().fold(f64::INFINITY, f64::min);
    let mut blobs: Vec<Vec<Bump>> = Vec::with_capacity(k - 1);
    for c in 1..k {
        let scale = 0.32 - 0.18 * (c - 1) as f64 / (k - 1).max(1) as f64;
        let n_bumps = 3;
        let mut bumps = Vec::with_capacity(n_bumps);
        for _ in 0..n_bumps {
            let centre: Vec<f64> = extent
                .iter()
                .map(|&e| e * (0.5 + rng.random_range(-0.12..0.12)) - 0.5)
                .collect();
            // Random rotation-free anisotropic scale, then a random rotation in one plane.
            let radii: Vec<f64> = (0..d)
                .map(|_| min_extent * scale * rng.random_range(0.6..1.1))
                .collect();
            let theta: f64 = rng.random_range(0.0..std::f64::consts::PI);
            let (sn, cs) = theta.sin_cos();
            let mut inv = vec![vec![0.0; d]; d];
            for (a, row) in inv.iter_mut().enumerate() {
                row[a] = 1.0 / radii[a];
            }
            // Rotate axes 0 and 1: inv = diag(1/r) · R.
            let (r0, r1) = (inv[0][0], inv[1][1]);
            inv[0][0] = r0 * cs;
            inv[0][1] = r0 * sn;
            inv[1][0] = -r1 * sn;
            inv[1][1] = r1 * cs;
            bumps.push(Bump { centre, inv });
        }
        blobs.push(bumps);
    }
    blobs
}

/// `Σ_j exp(-|A_j (p - c_j)|²)` of one class's bumps at point `p`.
fn field(bumps: &[Bump], p: &[f64]) -> f64 {
    bumps
        .iter()
        .map(|b| {
            let mut q = 0.0;
            for row in &b.inv {
                let mut v = 0.0;
                for a in 0..p.len() {
                    v += row[a] * (p[a] - b.centre[a]);
                }
                q += v * v;
            }
            (-q).exp()
        })
        .sum()
}

/// The class at point `p`: the last class whose field exceeds `threshold` (0.5 for the
/// phantom itself; a rater's threshold moves every boundary in or out).
fn class_of(blobs: &[Vec<Bump>], p: &[f64], threshold: impl Fn(usize) -> f64) -> usize {
    for c in (1..=blobs.len()).rev() {
        if field(&blobs[c - 1], p) > threshold(c) {
            return c;
        }
    }
    0
}

fn check(config: &PhantomConfig) -> Result<()> {
    let bad = |r: String| Err(IoError::invalid(Path::new("phantom config"), r));
    if !(2..=3).contains(&config.shape.len()) || config.shape.contains(&0) {
        return bad(format!(
            "shape must have 2 or 3 nonzero axes, got {:?}",
            config.shape
        ));
    }
    if config.classes < 2 {
        return bad(format!("need at least 2 classes, got {}", config.classes));
    }
    if config.supersample == 0 || config.supersample > 16 {
        return bad(format!(
            "supersample must be between 1 and 16, got {}",
            config.supersample
        ));
    }
    if !(config.noise_std.is_finite() && config.noise_std >= 0.0) {
        return bad(format!("noise_std must be ≥ 0, got {}", config.noise_std));
    }
    if !config.bias_strength.is_finite() {
        return bad(format!(
            "bias_strength must be finite, got {}",
            config.bias_strength
        ));
    }
    if let Some(mu) = &config.intensities
        && mu.len() != config.classes
    {
        return bad(format!(
            "{} intensities given for {} classes",
            mu.len(),
            config.classes
        ));
    }
    Ok(())
}

/// Generates a phantom; the same `config` and `seed` always give the same phantom.
///
/// ```
/// use calseg_io::phantom::{PhantomConfig, generate};
/// let p = generate(&PhantomConfig { shape: vec![24, 24], ..Default::default() }, 42)?;
/// assert_eq!(p.soft_labels.shape(), &[3, 24, 24]);
/// // Soft labels are a partition of unity at every pixel.
/// let sums = p.soft_labels.sum_axis(ndarray::Axis(0));
/// assert!(sums.iter().all(|&s| (s - 1.0).abs() < 1e-5));
/// # Ok::<(), calseg_io::IoError>(())
/// ```
pub fn generate(config: &PhantomConfig, seed: u64) -> Result<Phantom> {
    check(config)?;
    let mut rng = StdRng::seed_from_u64(seed);
    let shape = &config.shape;
    let k = config.classes;
    let blobs = make_blobs(&mut rng, shape, k);
    let class_at = |p: &[f64]| class_of(&blobs, p, |_| 0.5);
    let soft = partial_volume(shape, config.supersample, k, class_at);

    // Hard labels: argmax, ties → lower class.
    let mut labels = ArrayD::<u32>::zeros(IxDyn(shape));
    let mut best = ArrayD::<f32>::from_elem(IxDyn(shape), -1.0);
    for (c, plane) in soft.axis_iter(Axis(0)).enumerate() {
        ndarray::Zip::from(&mut labels)
            .and(&mut best)
            .and(&plane)
            .for_each(|l, b, &p| {
                if p > *b {
                    *b = p;
                    *l = c as u32;
                }
            });
    }

    // Bias field: exp(s · Σ_a (α_a u_a + β_a u_a²) / d), u_a ∈ [-1, 1] across the grid.
    let bias = crate::shift::bias_field(shape, f64::from(config.bias_strength), &mut rng);

    let mu: Vec<f32> = match &config.intensities {
        Some(m) => m.clone(),
        None => (0..k).map(|c| c as f32 / (k - 1) as f32).collect(),
    };
    let mut clean = ArrayD::<f32>::zeros(IxDyn(shape));
    for (c, plane) in soft.axis_iter(Axis(0)).enumerate() {
        let m = mu.get(c).copied().unwrap_or(0.0);
        ndarray::Zip::from(&mut clean)
            .and(&plane)
            .for_each(|v, &p| *v += p * m);
    }
    let noise = Normal::new(0.0f32, config.noise_std)
        .map_err(|e| IoError::invalid(Path::new("phantom config"), e.to_string()))?;
    let mut image = &clean * &bias;
    image.mapv_inplace(|v| v + noise.sample(&mut rng));
    let image = image.insert_axis(Axis(0));
    Ok(Phantom {
        image,
        soft_labels: soft,
        labels,
        bias,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_area_converges_to_pi_r_squared() {
        // A disk of radius 7.3 centred off-grid: the soft area approaches π r².
        let r: f64 = 7.3;
        let inside = |p: &[f64]| usize::from((p[0] - 15.2).powi(2) + (p[1] - 14.7).powi(2) < r * r);
        let exact = std::f64::consts::PI * r * r;
        let mut last_err = f64::INFINITY;
        for s in [1, 4, 16] {
            let pv = partial_volume(&[32, 32], s, 2, inside);
            let area: f64 = pv
                .index_axis(Axis(0), 1)
                .iter()
                .map(|&v| f64::from(v))
                .sum();
            let err = (area - exact).abs();
            assert!(err <= last_err + 0.5, "s={s}: area {area} vs {exact}");
            last_err = err;
        }
        assert!(last_err < 0.5, "16× supersampled area off by {last_err}");
        // Only boundary pixels are fractional.
        let pv = partial_volume(&[32, 32], 4, 2, inside);
        for ((_, y, x), &v) in pv
            .index_axis(Axis(0), 1)
            .into_dimensionality::<ndarray::Ix2>()
            .unwrap()
            .indexed_iter()
            .map(|((y, x), v)| ((0, y, x), v))
        {
            let dist = ((x as f64 - 14.7).powi(2) + (y as f64 - 15.2).powi(2)).sqrt();
            if (dist - r).abs() > 0.75 {
                assert!(
                    v == 0.0 || v == 1.0,
                    "pixel ({y},{x}) at distance {dist}: {v}"
                );
            }
        }
    }

    #[test]
    fn phantom_properties_3d() {
        let cfg = PhantomConfig {
            shape: vec![12, 14, 10],
            classes: 4,
            supersample: 2,
            noise_std: 0.0,
            bias_strength: 0.0,
            intensities: None,
        };
        let p = generate(&cfg, 5).unwrap();
        assert_eq!(p.soft_labels.shape(), &[4, 12, 14, 10]);
        assert_eq!(p.image.shape(), &[1, 12, 14, 10]);
        let mut fractional = 0;
        for (idx, &l) in p.labels.indexed_iter() {
            let probs: Vec<f32> = (0..4)
                .map(|c| p.soft_labels[[c, idx[0], idx[1], idx[2]]])
                .collect();
            let sum: f32 = probs.iter().sum();
            assert!((sum - 1.0).abs() < 1e-6);
            for &q in &probs {
                // Multiples of 1/8.
                assert!((q * 8.0 - (q * 8.0).round()).abs() < 1e-5);
            }
            if probs.iter().any(|&q| q > 0.0 && q < 1.0) {
                fractional += 1;
            }
            let max = probs.iter().copied().fold(f32::MIN, f32::max);
            assert_eq!(probs[l as usize], max);
            // Without noise and bias the image is exactly the partial-volume mix.
            let mix: f32 = probs
                .iter()
                .enumerate()
                .map(|(c, &q)| q * c as f32 / 3.0)
                .sum();
            assert!((p.image[[0, idx[0], idx[1], idx[2]]] - mix).abs() < 1e-6);
        }
        assert!(fractional > 0, "no boundary voxel");
        for c in 0..4u32 {
            assert!(p.labels.iter().any(|&l| l == c), "class {c} absent");
        }
    }

    #[test]
    fn seeded_and_noisy() {
        let cfg = PhantomConfig::default();
        let a = generate(&cfg, 1).unwrap();
        let b = generate(&cfg, 1).unwrap();
        let c = generate(&cfg, 2).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.soft_labels, c.soft_labels);
        // Noise: residual against the biased clean mix has about the configured std.
        let k = cfg.classes;
        let mut sq = 0.0f64;
        let mut n = 0usize;
        for (idx, &v) in a.image.index_axis(Axis(0), 0).indexed_iter() {
            let mut clean = 0.0f32;
            for cl in 0..k {
                let mut at = vec![cl];
                at.extend(idx.as_array_view().iter().copied());
                clean += a.soft_labels[IxDyn(&at)] * cl as f32 / (k - 1) as f32;
            }
            let r = f64::from(v - clean * a.bias[&idx]);
            sq += r * r;
            n += 1;
        }
        let std = (sq / n as f64).sqrt();
        assert!((std - 0.05).abs() < 0.01, "noise std {std}");
        assert!(a.bias.iter().any(|&b| (b - 1.0).abs() > 1e-3));
    }

    #[test]
    fn bad_configs_rejected() {
        for cfg in [
            PhantomConfig {
                shape: vec![8],
                ..Default::default()
            },
            PhantomConfig {
                shape: vec![8, 0],
                ..Default::default()
            },
            PhantomConfig {
                classes: 1,
                ..Default::default()
            },
            PhantomConfig {
                supersample: 0,
                ..Default::default()
            },
            PhantomConfig {
                noise_std: f32::NAN,
                ..Default::default()
            },
            PhantomConfig {
                intensities: Some(vec![0.0]),
                ..Default::default()
            },
        ] {
            assert!(generate(&cfg, 0).is_err(), "{cfg:?}");
        }
    }
}
