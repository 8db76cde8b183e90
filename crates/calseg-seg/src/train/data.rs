//! In-memory training data: [`TrainSet`] (normalised, padded samples with their
//! targets) and the seeded [`BatchSampler`] that cuts it into [`Batch`]es.
//!
//! ## What a set holds
//! Every [`Sample`] has an image `(C, *sp)` f32, a target `(K, *sp)` f32 (per-voxel class
//! distributions), hard labels `(*sp)` u32 and the spatial size it had before padding.
//! All samples of a set share one spatial shape, so any of them batch together.
//!
//! ## Preparation, per case (before slicing or cutting patches)
//! 1. **Target** ([`TargetSource`]): one-hot of the label map, the case's own soft
//!    labels (`case.soft_label`), `DIR/CASE.safetensors` with a tensor `soft_labels`
//!    `(K, *sp)` f32, or the mean of the raters' one-hot maps (`case.raters`). Hard labels come from the label map, or are the argmax of the soft
//!    target (ties → lower class) when the case has none.
//! 2. **Normalisation**: z-score per channel over the voxels where any channel is
//!    nonzero, zero outside ([`calseg_io::preprocess::zscore_nonzero`], nnU-Net's choice
//!    for skull-stripped MRI). It is computed on the whole case, so the slices of a
//!    volume share one mean and standard deviation; inference
//!    ([`crate::infer`]) applies the same to the whole input image.
//! 3. **Layout** ([`Layout`]): 2D slices along one spatial axis (optionally only the
//!    slices in a range and/or with foreground), the whole case, or random patches.
//! 4. **Padding** at the end (high side) of every spatial axis up to the common shape of
//!    the set, rounded up to a multiple of `2^depth` (what the U-Net needs): zeros in
//!    the image, background one-hot in the target, label 0. [`Sample::size`] keeps the
//!    unpadded size so predictions can be cropped back.

use crate::train::Batch;
use crate::{Result, SegError};
use calseg_io::preprocess::{PatchSampler, zscore_nonzero};
use calseg_io::{Case, TypedArray};
use candle_core::{Device, Tensor};
use ndarray::{ArrayD, Axis, Dimension, IxDyn, Slice};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One training sample (all arrays in standard layout).
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Where it comes from: the case id, plus `_axis{a}_{index:04}` for a slice.
    pub id: String,
    /// Normalised image `(C, *sp)`, padded.
    pub image: ArrayD<f32>,
    /// Target distributions `(K, *sp)`, padded with background one-hot.
    pub target: ArrayD<f32>,
    /// Hard labels `(*sp)`, padded with 0.
    pub labels: ArrayD<u32>,
    /// Spatial size before padding (the region `0..size[i]` on every axis is real data).
    pub size: Vec<usize>,
}

/// Where the training targets come from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetSource {
    /// One-hot of the hard labels (`case.label`, required).
    #[default]
    OneHot,
    /// The case's own soft labels (`case.soft_label`, e.g. `softlabelsTr/`).
    CaseSoft,
    /// `DIR/CASE.safetensors` holding a tensor `soft_labels` `(K, *sp)` f32 (e.g. `Y_s`
    /// exported by the variational label smoother).
    Dir(PathBuf),
    /// The rater distribution of a multi-rater case (`case.raters`, required): the
    /// per-voxel mean of the raters' one-hot maps, `q_k = (1/R) Σ_r [Y_r == k]`
    /// ([`calseg_metrics::raters::rater_distribution`]).
    Raters,
}

/// How cases become samples.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// 2D slices of 3D cases along spatial `axis` (`None`: the last one, axial for RAS
    /// volumes). `range` keeps only slice indices in it (e.g. `0..41`: a slab of a
    /// single volume); `skip_empty` drops slices whose labels are all background. A 2D
    /// case is taken as one slice.
    Slices {
        /// Spatial axis to slice along (`None`: the last).
        axis: Option<usize>,
        /// Slice indices to keep (`None`: all).
        range: Option<Range<usize>>,
        /// Drop slices without foreground.
        skip_empty: bool,
    },
    /// Each case whole (2D images, or 3D volumes small enough for one pass).
    Whole,
    /// Random patches of this spatial size cut by the [`BatchSampler`]; with probability
    /// `foreground_fraction` centred on a foreground voxel (nnU-Net: 1/3).
    Patches {
        /// Patch size, one entry per spatial axis, each a multiple of `2^depth`.
        patch: Vec<usize>,
        /// Share of patches forced onto foreground.
        foreground_fraction: f64,
    },
}

impl Default for Layout {
    /// Axial slices (last axis), all of them.
    fn default() -> Self {
        Layout::Slices {
            axis: None,
            range: None,
            skip_empty: false,
        }
    }
}

/// Options of [`TrainSet::build`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetOptions {
    /// Number of classes `K` (background included).
    pub classes: usize,
    /// Targets.
    #[serde(default)]
    pub targets: TargetSource,
    /// Sample layout.
    #[serde(default)]
    pub layout: Layout,
    /// Spatial sizes are padded to a multiple of this (`2^depth` of the U-Net).
    pub multiple: usize,
}

/// A set of samples in memory (see the module docs). For [`Layout::Patches`] it keeps
/// the prepared cases and the [`BatchSampler`] cuts patches from them.
#[derive(Clone, Debug)]
pub struct TrainSet {
    samples: Vec<Sample>,
    options: SetOptions,
    in_channels: usize,
    dims: usize,
    /// Prepared cases (target in `soft_label`), kept for random patches.
    cases: Vec<Case>,
}

/// Spatial dims and channel count of a case image `(C, *sp)`.
fn spatial(a: &ArrayD<f32>) -> &[usize] {
    &a.shape()[1.min(a.ndim())..]
}

/// One-hot `(K, *sp)` of `labels`.
fn one_hot(labels: &ArrayD<u32>, classes: usize, id: &str) -> Result<ArrayD<f32>> {
    let mut shape = vec![classes];
    shape.extend_from_slice(labels.shape());
    let mut t = ArrayD::<f32>::zeros(IxDyn(&shape));
    let n = labels.len();
    let flat = t
        .as_slice_mut()
        .ok_or_else(|| SegError::Shape("one-hot buffer not contiguous".into()))?;
    for (i, &l) in labels.iter().enumerate() {
        if l as usize >= classes {
            return Err(SegError::Config(format!(
                "case {id}: label value {l} is not below the number of classes {classes}"
            )));
        }
        flat[l as usize * n + i] = 1.0;
    }
    Ok(t)
}

/// Argmax over axis 0 (ties → lower class).
fn argmax(t: &ArrayD<f32>) -> ArrayD<u32> {
    calseg_metrics::argmax(t.view())
}

/// Reads `dir/ID.safetensors` → tensor `soft_labels` as f32.
fn read_soft_dir(dir: &Path, id: &str) -> Result<(PathBuf, ArrayD<f32>)> {
    let path = dir.join(format!("{id}.safetensors"));
    let tensors = calseg_io::read_safetensors(&path)?;
    let t = tensors
        .into_iter()
        .find(|(n, _)| n == "soft_labels")
        .ok_or_else(|| SegError::checkpoint(&path, "no tensor named soft_labels"))?;
    let a = match t.1 {
        TypedArray::F32(a) => a,
        other => {
            return Err(SegError::checkpoint(
                &path,
                format!("soft_labels must be float32, got {}", other.dtype().name()),
            ));
        }
    };
    Ok((path, a))
}

/// Target, labels and normalised image of a case; returns it with the target in
/// `soft_label` and labels in `label`.
fn prepare(case: &Case, opts: &SetOptions) -> Result<Case> {
    let sp = spatial(&case.image).to_vec();
    let k = opts.classes;
    let check = |t: &ArrayD<f32>, what: &dyn Fn() -> String| -> Result<()> {
        let mut want = vec![k];
        want.extend_from_slice(&sp);
        if t.shape() != want.as_slice() {
            return Err(SegError::Shape(format!(
                "{}: soft labels of shape {:?}, expected (K = {k}, image spatial {sp:?}) = {want:?}",
                what(),
                t.shape()
            )));
        }
        Ok(())
    };
    let target = match &opts.targets {
        TargetSource::OneHot => {
            let l = case.label.as_ref().ok_or_else(|| {
                SegError::Config(format!(
                    "case {} has no label map for one-hot targets",
                    case.id
                ))
            })?;
            if l.shape() != sp.as_slice() {
                return Err(SegError::Shape(format!(
                    "case {}: labels {:?} vs image spatial {sp:?}",
                    case.id,
                    l.shape()
                )));
            }
            one_hot(l, k, &case.id)?
        }
        TargetSource::CaseSoft => {
            let t = case
                .soft_label
                .clone()
                .ok_or_else(|| SegError::Config(format!("case {} has no soft labels", case.id)))?;
            check(&t, &|| format!("case {}", case.id))?;
            t
        }
        TargetSource::Dir(dir) => {
            let (path, t) = read_soft_dir(dir, &case.id)?;
            check(&t, &|| path.display().to_string())?;
            t
        }
        TargetSource::Raters => {
            let raters = case.raters.as_ref().ok_or_else(|| {
                SegError::Config(format!(
                    "case {} has no raters (labelsTr/CASE_rater1…) for rater targets",
                    case.id
                ))
            })?;
            let views: Vec<_> = raters.iter().map(|r| r.view()).collect();
            let t = calseg_metrics::raters::rater_distribution(&views, k)
                .map_err(|e| SegError::Config(format!("case {}: rater targets: {e}", case.id)))?;
            check(&t, &|| format!("case {} (raters)", case.id))?;
            t
        }
    };
    if target.iter().any(|v| !v.is_finite()) {
        return Err(SegError::Config(format!(
            "case {}: target has non-finite values",
            case.id
        )));
    }
    let labels = match &case.label {
        Some(l) if l.shape() == sp.as_slice() => l.clone(),
        _ => argmax(&target),
    };
    let mut image = case.image.as_standard_layout().into_owned();
    zscore_nonzero(&mut image);
    Ok(Case {
        id: case.id.clone(),
        image,
        label: Some(labels),
        soft_label: Some(target),
        raters: None,
        geometry: case.geometry.clone(),
    })
}

/// Pads `a` (leading `lead` axes kept) at the high end of every spatial axis to `shape`
/// with `fill`.
fn pad_to<T: Clone>(a: &ArrayD<T>, lead: usize, shape: &[usize], fill: T) -> ArrayD<T> {
    let mut full = a.shape()[..lead].to_vec();
    full.extend_from_slice(shape);
    if full == a.shape() {
        return a.clone();
    }
    let mut out = ArrayD::from_elem(IxDyn(&full), fill);
    let mut view = out.view_mut();
    for (i, &s) in a.shape()[lead..].iter().enumerate() {
        view.slice_axis_inplace(Axis(lead + i), Slice::from(0..s));
    }
    view.assign(a);
    out
}

/// Pads a sample to `shape`: image zeros, target background one-hot, labels 0.
fn pad_sample(s: &mut Sample, shape: &[usize]) {
    if spatial(&s.image) == shape {
        return;
    }
    s.image = pad_to(&s.image, 1, shape, 0.0);
    let mut t = pad_to(&s.target, 1, shape, 0.0);
    // background one-hot where padded: voxels outside the original box
    let size = s.size.clone();
    for (idx, v) in t.index_axis_mut(Axis(0), 0).indexed_iter_mut() {
        if idx.slice().iter().zip(&size).any(|(i, n)| i >= n) {
            *v = 1.0;
        }
    }
    s.target = t;
    s.labels = pad_to(&s.labels, 0, shape, 0);
}

/// `x` rounded up to a multiple of `m`.
fn round_up(x: usize, m: usize) -> usize {
    x.div_ceil(m) * m
}

impl TrainSet {
    /// Prepares `cases` (see the module docs) into a set.
    ///
    /// ```
    /// use calseg_seg::train::data::{Layout, SetOptions, TrainSet};
    /// let ph = calseg_io::phantom::generate(
    ///     &calseg_io::phantom::PhantomConfig { shape: vec![12, 10, 3], ..Default::default() }, 1)?;
    /// let opts = SetOptions { classes: 3, targets: Default::default(), layout: Layout::default(), multiple: 4 };
    /// let set = TrainSet::build(&[ph.to_case("p")], &opts)?;
    /// assert_eq!(set.len(), 3); // axial slices
    /// assert_eq!(set.samples()[0].image.shape(), &[1, 12, 12]); // 10 padded to 12
    /// assert_eq!(set.samples()[0].size, vec![12, 10]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// A case without the labels/soft labels its target needs, a label `≥ K`, a soft
    /// label file that is missing, not float32 or of the wrong shape (the error names the
    /// file), a slice axis out of range, a patch size that is not a multiple of
    /// `multiple`, cases with different channel counts, or no sample at all.
    pub fn build(cases: &[Case], opts: &SetOptions) -> Result<TrainSet> {
        if opts.classes < 2 || opts.multiple == 0 {
            return Err(SegError::Config(format!(
                "need at least 2 classes and a positive size multiple, got {} and {}",
                opts.classes, opts.multiple
            )));
        }
        let mut samples = Vec::new();
        let mut prepared = Vec::new();
        let mut in_channels = None;
        let mut dims = 0;
        for case in cases {
            let c = case.image.shape().first().copied().unwrap_or(0);
            if *in_channels.get_or_insert(c) != c {
                return Err(SegError::Shape(format!(
                    "case {} has {c} channels, earlier cases {}",
                    case.id,
                    in_channels.unwrap_or(0)
                )));
            }
            let p = prepare(case, opts)?;
            let nsp = spatial(&p.image).len();
            match &opts.layout {
                // A 2D case is its own single slice.
                Layout::Slices { skip_empty, .. } if nsp == 2 => {
                    dims = 2;
                    if let (Some(labels), Some(target)) = (p.label, p.soft_label)
                        && !(*skip_empty && labels.iter().all(|&l| l == 0))
                    {
                        samples.push(Sample {
                            id: p.id,
                            size: spatial(&p.image).to_vec(),
                            image: p.image,
                            target,
                            labels,
                        });
                    }
                }
                Layout::Slices {
                    axis,
                    range,
                    skip_empty,
                } => {
                    let axis = axis.unwrap_or(nsp.saturating_sub(1));
                    if nsp != 3 || axis >= nsp {
                        return Err(SegError::Config(format!(
                            "case {}: cannot slice a {nsp}-D image along axis {axis}",
                            case.id
                        )));
                    }
                    dims = 2;
                    let n = p.image.shape()[axis + 1];
                    let r = range.clone().unwrap_or(0..n);
                    for i in r.start..r.end.min(n) {
                        let sl = calseg_io::preprocess::slice_case(&p, axis, i)?;
                        let (Some(labels), Some(target)) = (sl.label, sl.soft_label) else {
                            continue;
                        };
                        if *skip_empty && labels.iter().all(|&l| l == 0) {
                            continue;
                        }
                        samples.push(Sample {
                            id: sl.id,
                            size: spatial(&sl.image).to_vec(),
                            image: sl.image,
                            target,
                            labels,
                        });
                    }
                }
                Layout::Whole | Layout::Patches { .. } => {
                    dims = nsp;
                    if let (Some(labels), Some(target)) = (&p.label, &p.soft_label) {
                        samples.push(Sample {
                            id: p.id.clone(),
                            size: spatial(&p.image).to_vec(),
                            image: p.image.clone(),
                            target: target.clone(),
                            labels: labels.clone(),
                        });
                    }
                    if matches!(opts.layout, Layout::Patches { .. }) {
                        prepared.push(p);
                    }
                }
            }
        }
        if samples.is_empty() {
            return Err(SegError::Config("the training set has no sample".into()));
        }
        if let Layout::Patches {
            patch,
            foreground_fraction,
        } = &opts.layout
        {
            if patch.len() != dims || patch.iter().any(|&p| p == 0 || p % opts.multiple != 0) {
                return Err(SegError::Config(format!(
                    "patch {patch:?} must have {dims} sizes, each a positive multiple of {}",
                    opts.multiple
                )));
            }
            if !(0.0..=1.0).contains(foreground_fraction) {
                return Err(SegError::Config(format!(
                    "foreground fraction {foreground_fraction} outside [0, 1]"
                )));
            }
        }
        // Common padded shape.
        let mut shape = vec![0usize; dims];
        for s in &samples {
            if s.size.len() != dims {
                return Err(SegError::Shape(format!(
                    "sample {} has {} spatial axes, others {dims}",
                    s.id,
                    s.size.len()
                )));
            }
            for (m, &v) in shape.iter_mut().zip(&s.size) {
                *m = (*m).max(v);
            }
        }
        let shape: Vec<usize> = shape.iter().map(|&v| round_up(v, opts.multiple)).collect();
        for s in &mut samples {
            pad_sample(s, &shape);
        }
        Ok(TrainSet {
            samples,
            options: opts.clone(),
            in_channels: in_channels.unwrap_or(0),
            dims,
            cases: prepared,
        })
    }

    /// A set of ready samples (already normalised, same shape, sizes multiples of what
    /// the net needs).
    ///
    /// # Errors
    /// [`SegError::Shape`] if the samples are empty or differ in shape.
    pub fn from_samples(samples: Vec<Sample>, classes: usize) -> Result<TrainSet> {
        let first = samples
            .first()
            .ok_or_else(|| SegError::Config("the training set has no sample".into()))?;
        let (ishape, tshape) = (first.image.shape().to_vec(), first.target.shape().to_vec());
        if ishape.len() < 3 {
            return Err(SegError::Shape(format!(
                "sample {}: image {ishape:?} is not (C, *spatial) with 2 or 3 spatial axes",
                first.id
            )));
        }
        for s in &samples {
            if s.image.shape() != ishape.as_slice()
                || s.target.shape() != tshape.as_slice()
                || s.labels.shape() != &ishape[1..]
                || tshape.first() != Some(&classes)
            {
                return Err(SegError::Shape(format!(
                    "sample {}: image {:?}, target {:?}, labels {:?} do not match the first sample's {ishape:?}/{tshape:?} with {classes} classes",
                    s.id,
                    s.image.shape(),
                    s.target.shape(),
                    s.labels.shape()
                )));
            }
        }
        let dims = ishape.len() - 1;
        Ok(TrainSet {
            in_channels: ishape[0],
            options: SetOptions {
                classes,
                targets: TargetSource::OneHot,
                layout: Layout::Whole,
                multiple: 1,
            },
            samples,
            dims,
            cases: Vec::new(),
        })
    }

    /// The samples (for patch sets: the whole padded cases).
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }
    /// Whether the set is empty (never, for a built set).
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
    /// Classes `K`.
    pub fn classes(&self) -> usize {
        self.options.classes
    }
    /// Image channels `C`.
    pub fn in_channels(&self) -> usize {
        self.in_channels
    }
    /// Spatial dimensions of the samples (2 or 3).
    pub fn dims(&self) -> usize {
        self.dims
    }
    /// The options the set was built with.
    pub fn options(&self) -> &SetOptions {
        &self.options
    }
    /// Spatial shape of what a batch holds: the patch size for patch sets, the padded
    /// sample shape otherwise.
    pub fn batch_shape(&self) -> Vec<usize> {
        match &self.options.layout {
            Layout::Patches { patch, .. } => patch.clone(),
            _ => self
                .samples
                .first()
                .map(|s| spatial(&s.image).to_vec())
                .unwrap_or_default(),
        }
    }

    /// A [`Batch`] of the samples at `indices`, as they are (no augmentation).
    pub fn batch(&self, indices: &[usize], device: &Device) -> Result<Batch> {
        let items: Vec<(ArrayD<f32>, ArrayD<f32>, ArrayD<u32>)> = indices
            .iter()
            .map(|&i| {
                self.samples
                    .get(i)
                    .map(|s| (s.image.clone(), s.target.clone(), s.labels.clone()))
                    .ok_or_else(|| SegError::Config(format!("sample index {i} out of range")))
            })
            .collect::<Result<_>>()?;
        stack(&items, device)
    }
}

/// Stacks `(image, target, labels)` triples of one shape into a [`Batch`].
fn stack(items: &[(ArrayD<f32>, ArrayD<f32>, ArrayD<u32>)], device: &Device) -> Result<Batch> {
    let Some(first) = items.first() else {
        return Err(SegError::Config("empty batch".into()));
    };
    let n = items.len();
    let shape_of = |a: &[usize]| {
        let mut s = vec![n];
        s.extend_from_slice(a);
        s
    };
    let (is, ts, ls) = (
        shape_of(first.0.shape()),
        shape_of(first.1.shape()),
        shape_of(first.2.shape()),
    );
    let mut img = Vec::with_capacity(is.iter().product());
    let mut tgt = Vec::with_capacity(ts.iter().product());
    let mut lab = Vec::with_capacity(ls.iter().product());
    for (i, t, l) in items {
        if i.shape() != &is[1..] || t.shape() != &ts[1..] || l.shape() != &ls[1..] {
            return Err(SegError::Shape("samples of a batch differ in shape".into()));
        }
        img.extend(i.iter().copied());
        tgt.extend(t.iter().copied());
        lab.extend(l.iter().copied());
    }
    Ok(Batch {
        image: Tensor::from_vec(img, is, device)?,
        target: Tensor::from_vec(tgt, ts, device)?,
        labels: Tensor::from_vec(lab, ls, device)?,
    })
}

/// Mirrors every spatial axis of `(image, target, labels)` with probability ½.
fn random_flips(
    rng: &mut StdRng,
    item: (ArrayD<f32>, ArrayD<f32>, ArrayD<u32>),
) -> (ArrayD<f32>, ArrayD<f32>, ArrayD<u32>) {
    let (mut i, mut t, mut l) = item;
    for ax in 0..l.ndim() {
        if rng.random_bool(0.5) {
            i.invert_axis(Axis(ax + 1));
            t.invert_axis(Axis(ax + 1));
            l.invert_axis(Axis(ax));
        }
    }
    (
        i.as_standard_layout().into_owned(),
        t.as_standard_layout().into_owned(),
        l.as_standard_layout().into_owned(),
    )
}

/// A seeded stream of training batches from a [`TrainSet`]: shuffled passes over the
/// samples (a new permutation each pass; a batch may straddle two passes), or for
/// [`Layout::Patches`] random cases and random patches (foreground-oversampled by
/// [`PatchSampler`]); each sample optionally mirrored along every spatial axis with
/// probability ½. Same set, seed and calls → same batches.
#[derive(Debug)]
pub struct BatchSampler<'a> {
    set: &'a TrainSet,
    batch_size: usize,
    flips: bool,
    rng: StdRng,
    order: Vec<usize>,
    pos: usize,
    patches: Option<PatchSampler>,
}

impl<'a> BatchSampler<'a> {
    /// A sampler of batches of `batch_size` from `set`, seeded with `seed`.
    pub fn new(set: &'a TrainSet, batch_size: usize, flips: bool, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let patches = match &set.options.layout {
            Layout::Patches {
                patch,
                foreground_fraction,
            } if !set.cases.is_empty() => Some(PatchSampler::new(
                patch.clone(),
                *foreground_fraction,
                rng.random(),
            )),
            _ => None,
        };
        Self {
            set,
            batch_size: batch_size.max(1),
            flips,
            rng,
            order: Vec::new(),
            pos: 0,
            patches,
        }
    }

    fn next_index(&mut self) -> usize {
        if self.pos >= self.order.len() {
            self.order = (0..self.set.samples.len()).collect();
            self.order.shuffle(&mut self.rng);
            self.pos = 0;
        }
        self.pos += 1;
        self.order[self.pos - 1]
    }

    /// The next batch, on `device`.
    pub fn next_batch(&mut self, device: &Device) -> Result<Batch> {
        let mut items = Vec::with_capacity(self.batch_size);
        for _ in 0..self.batch_size {
            let item = if let Some(ps) = self.patches.as_mut() {
                let ci = self.rng.random_range(0..self.set.cases.len());
                let p = ps.sample(&self.set.cases[ci])?;
                let (Some(mut t), Some(l)) = (p.soft_label, p.label) else {
                    return Err(SegError::Config("prepared case without target".into()));
                };
                // Padding outside the case is background.
                let k = t.shape()[0];
                let mut sum = t.sum_axis(Axis(0));
                sum.mapv_inplace(|s| if s == 0.0 { 1.0 } else { 0.0 });
                if k > 0 {
                    let mut bg = t.index_axis_mut(Axis(0), 0);
                    bg += &sum;
                }
                (p.image, t, l)
            } else {
                let s = &self.set.samples[self.next_index()];
                (s.image.clone(), s.target.clone(), s.labels.clone())
            };
            items.push(if self.flips {
                random_flips(&mut self.rng, item)
            } else {
                item
            });
        }
        stack(&items, device)
    }
}
