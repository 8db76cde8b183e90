//! Inference: class probabilities `(K, *sp)` of an image `(C, *sp)`.
//!
//! 1. The image gets the training normalisation (z-score over nonzero voxels per
//!    channel, on the whole image; see [`crate::train::data`]).
//! 2. Logits, by the mode of the model ([`InferSpec`]):
//!    - **2D net, 3D volume**: slice by slice along the model's axis (default the
//!      last), `batch_size` slices per forward pass;
//!    - **whole image** (2D net on a 2D image; 3D net on a volume that fits its patch,
//!      or without a patch): zero-padded at the high end of each axis to a multiple of
//!      `2^depth`, then cropped back;
//!    - **3D sliding window** (3D net, volume larger than the patch on some axis):
//!      windows of the patch size with `overlap` (default ½) between neighbours, each
//!      window's logits weighted by a Gaussian importance map (σ = patch/8 per axis,
//!      peak 1 at the centre, as nnU-Net) and averaged:
//!      `l(x) = Σ_w g(x − o_w) l_w(x) / Σ_w g(x − o_w)`.
//! 3. `p = softmax(l / T)` over the classes, `T` the temperature (the model's, unless
//!    overridden).

use crate::model::SegModel;
use crate::train::Trainable;
use crate::{Result, SegError};
use calseg_io::preprocess::zscore_nonzero;
use candle_core::{DType, Device, Tensor};
use ndarray::{ArrayD, ArrayViewD, Axis, Dimension, IxDyn, Slice};

/// How a network is applied.
#[derive(Clone, Debug, PartialEq)]
pub struct InferSpec {
    /// Spatial dimensions of the network (2 or 3).
    pub dims: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Classes.
    pub classes: usize,
    /// Spatial sizes must be multiples of this (`2^depth`).
    pub multiple: usize,
    /// Slicing axis of a 2D net on 3D volumes (`None`: last).
    pub axis: Option<usize>,
    /// Patch size of a 3D net (sliding window above it).
    pub patch: Option<Vec<usize>>,
}

impl InferSpec {
    /// The spec of a [`SegModel`].
    pub fn of(model: &SegModel) -> Self {
        let i = model.info();
        Self {
            dims: i.unet.dims,
            in_channels: i.in_channels,
            classes: i.classes,
            multiple: i.unet.size_multiple(),
            axis: i.input.axis,
            patch: i.input.patch.clone(),
        }
    }
}

/// Options of [`predict_probs_with`].
#[derive(Clone, Debug, PartialEq)]
pub struct InferOptions {
    /// Temperature (`None`: the model's).
    pub temperature: Option<f64>,
    /// Slices or windows per forward pass.
    pub batch_size: usize,
    /// Overlap of neighbouring windows, in `[0, 1)`.
    pub overlap: f64,
    /// Sliding-window patch (`None`: the model's).
    pub patch: Option<Vec<usize>>,
    /// Apply the training normalisation (set `false` for already-normalised input).
    pub normalise: bool,
}

impl Default for InferOptions {
    fn default() -> Self {
        Self {
            temperature: None,
            batch_size: 8,
            overlap: 0.5,
            patch: None,
            normalise: true,
        }
    }
}

/// Probabilities `(K, *sp)` of `image (C, *sp)` with default options (see the module
/// docs).
///
/// # Errors
/// [`SegError::Shape`] when the channel count or the number of spatial axes does not fit
/// the model.
pub fn predict_probs(model: &SegModel, image: ArrayD<f32>) -> Result<ArrayD<f32>> {
    predict_probs_with(model, image, &InferOptions::default())
}

/// [`predict_probs`] with options.
pub fn predict_probs_with(
    model: &SegModel,
    image: ArrayD<f32>,
    opts: &InferOptions,
) -> Result<ArrayD<f32>> {
    let t = opts.temperature.unwrap_or(model.temperature());
    let logits = predict_logits(model, &InferSpec::of(model), image, opts)?;
    softmax_classes(logits, t)
}

/// Logits `(K, *sp)` of `image (C, *sp)` from any [`Trainable`] applied as `spec` says
/// (the model is put in evaluation mode).
pub fn predict_logits(
    model: &dyn Trainable,
    spec: &InferSpec,
    mut image: ArrayD<f32>,
    opts: &InferOptions,
) -> Result<ArrayD<f32>> {
    let shape = image.shape().to_vec();
    if shape.len() < 2 || shape[0] != spec.in_channels {
        return Err(SegError::Shape(format!(
            "image of shape {shape:?}: the model expects ({} channels, *spatial)",
            spec.in_channels
        )));
    }
    if shape.contains(&0) {
        return Err(SegError::Shape(format!("empty image {shape:?}")));
    }
    if opts.normalise {
        zscore_nonzero(&mut image);
    }
    model.set_training(false);
    let device = crate::train::checkpoint::named_vars(model.varmap())?
        .first()
        .map(|(_, v)| v.device().clone())
        .unwrap_or(Device::Cpu);
    let nsp = shape.len() - 1;
    let bs = opts.batch_size.max(1);
    let run = |x: &ArrayD<f32>| -> Result<ArrayD<f32>> {
        let t = crate::convert::array_to_tensor(x.view(), &device)?;
        let l = model.predict(&t)?.to_dtype(DType::F32)?;
        crate::convert::tensor_to_array(&l)
    };
    match (spec.dims, nsp) {
        (2, 3) => {
            let axis = spec.axis.unwrap_or(2);
            if axis > 2 {
                return Err(SegError::Config(format!(
                    "slice axis {axis} of a 3D volume"
                )));
            }
            let mut out_shape = vec![spec.classes];
            out_shape.extend_from_slice(&shape[1..]);
            let mut out = ArrayD::<f32>::zeros(IxDyn(&out_shape));
            let n = shape[axis + 1];
            let idx: Vec<usize> = (0..n).collect();
            for chunk in idx.chunks(bs) {
                let slices: Vec<ArrayViewD<f32>> = chunk
                    .iter()
                    .map(|&i| image.index_axis(Axis(axis + 1), i))
                    .collect();
                let stacked = ndarray::stack(Axis(0), &slices)
                    .map_err(|e| SegError::Shape(format!("stacking slices: {e}")))?;
                let l = padded_logits(&run, stacked, spec)?;
                for (j, &i) in chunk.iter().enumerate() {
                    out.index_axis_mut(Axis(axis + 1), i)
                        .assign(&l.index_axis(Axis(0), j));
                }
            }
            Ok(out)
        }
        (2, 2) | (3, 3) => {
            let patch = opts.patch.clone().or_else(|| spec.patch.clone());
            let batched = image.insert_axis(Axis(0));
            match patch {
                Some(p) if spec.dims == 3 && shape[1..].iter().zip(&p).any(|(s, q)| s > q) => {
                    let l = sliding_window_logits(&run, batched, spec, &p, opts.overlap, bs)?;
                    Ok(l.index_axis_move(Axis(0), 0))
                }
                _ => Ok(padded_logits(&run, batched, spec)?.index_axis_move(Axis(0), 0)),
            }
        }
        _ => Err(SegError::Shape(format!(
            "a {}D model cannot segment an image with {nsp} spatial axes ({shape:?})",
            spec.dims
        ))),
    }
}

/// Logits of a batch `(n, C, *sp)`: zero-pad each spatial axis at the high end to a
/// multiple of `spec.multiple`, run, crop back.
fn padded_logits(
    run: &dyn Fn(&ArrayD<f32>) -> Result<ArrayD<f32>>,
    x: ArrayD<f32>,
    spec: &InferSpec,
) -> Result<ArrayD<f32>> {
    let sp = x.shape()[2..].to_vec();
    let m = spec.multiple.max(1);
    let padded: Vec<usize> = sp.iter().map(|&s| s.div_ceil(m) * m).collect();
    let l = if padded == sp {
        run(&x.as_standard_layout().into_owned())?
    } else {
        run(&pad_high(&x, 2, &padded))?
    };
    Ok(crop(&l, 2, &sp))
}

/// Zero-pads axes `lead..` of `a` at the high end to `shape`.
fn pad_high(a: &ArrayD<f32>, lead: usize, shape: &[usize]) -> ArrayD<f32> {
    let mut full = a.shape()[..lead].to_vec();
    full.extend_from_slice(shape);
    let mut out = ArrayD::<f32>::zeros(IxDyn(&full));
    let mut v = out.view_mut();
    for (i, &s) in a.shape()[lead..].iter().enumerate() {
        v.slice_axis_inplace(Axis(lead + i), Slice::from(0..s));
    }
    v.assign(a);
    out
}

/// The `0..size` corner of axes `lead..` of `a`.
fn crop(a: &ArrayD<f32>, lead: usize, size: &[usize]) -> ArrayD<f32> {
    let mut v = a.view();
    for (i, &s) in size.iter().enumerate() {
        v.slice_axis_inplace(Axis(lead + i), Slice::from(0..s));
    }
    v.as_standard_layout().into_owned()
}

/// Gaussian importance map of a patch: `g(x) = Π_i exp(−(x_i − c_i)²/(2σ_i²))`,
/// `c_i = (p_i − 1)/2` (symmetric), `σ_i = sigma_scale · p_i` (nnU-Net: 1/8), peak 1,
/// floored at the smallest positive f32 so no voxel has weight 0.
pub fn gaussian_weights(patch: &[usize], sigma_scale: f64) -> ArrayD<f32> {
    let axes: Vec<Vec<f64>> = patch
        .iter()
        .map(|&p| {
            let c = (p as f64 - 1.0) / 2.0;
            let s = (sigma_scale * p as f64).max(1e-6);
            (0..p)
                .map(|x| (-(x as f64 - c).powi(2) / (2.0 * s * s)).exp())
                .collect()
        })
        .collect();
    let peak: f64 = axes
        .iter()
        .map(|a| a.iter().cloned().fold(0.0, f64::max))
        .product();
    ArrayD::from_shape_fn(IxDyn(patch), |idx| {
        let v: f64 = idx.slice().iter().zip(&axes).map(|(&i, a)| a[i]).product();
        ((v / peak) as f32).max(f32::MIN_POSITIVE)
    })
}

/// Start positions of windows of size `patch` over an axis of size `size ≥ patch`,
/// neighbours overlapping by at least `overlap · patch` (nnU-Net's rule: the fewest
/// windows with step ≤ `patch·(1 − overlap)`, spread evenly, first at 0, last at
/// `size − patch`).
pub fn window_starts(size: usize, patch: usize, overlap: f64) -> Vec<usize> {
    if size <= patch {
        return vec![0];
    }
    let step = ((patch as f64) * (1.0 - overlap.clamp(0.0, 0.99)))
        .floor()
        .max(1.0);
    let n = ((size - patch) as f64 / step).ceil() as usize + 1;
    let actual = (size - patch) as f64 / (n - 1) as f64;
    (0..n)
        .map(|i| (i as f64 * actual).round() as usize)
        .collect()
}

/// Sliding-window logits of `x (1, C, *sp)` (see the module docs): the volume is
/// zero-padded to at least `patch` per axis, windows are run `batch` at a time.
///
/// # Errors
/// [`SegError::Config`] if `patch` has the wrong length or is not a multiple of
/// `spec.multiple`.
pub fn sliding_window_logits(
    run: &dyn Fn(&ArrayD<f32>) -> Result<ArrayD<f32>>,
    x: ArrayD<f32>,
    spec: &InferSpec,
    patch: &[usize],
    overlap: f64,
    batch: usize,
) -> Result<ArrayD<f32>> {
    if x.ndim() < 3 || x.shape()[0] != 1 {
        return Err(SegError::Shape(format!(
            "sliding window: expected (1, C, *spatial), got {:?}",
            x.shape()
        )));
    }
    let sp = x.shape()[2..].to_vec();
    let m = spec.multiple.max(1);
    if patch.len() != sp.len() || patch.iter().any(|&p| p == 0 || p % m != 0) {
        return Err(SegError::Config(format!(
            "patch {patch:?} must have {} sizes, each a positive multiple of {m}",
            sp.len()
        )));
    }
    let full: Vec<usize> = sp.iter().zip(patch).map(|(&s, &p)| s.max(p)).collect();
    let x = if full == sp {
        x.as_standard_layout().into_owned()
    } else {
        pad_high(&x, 2, &full)
    };
    let g = gaussian_weights(patch, 1.0 / 8.0);
    let starts: Vec<Vec<usize>> = full
        .iter()
        .zip(patch)
        .map(|(&s, &p)| window_starts(s, p, overlap))
        .collect();
    // Cartesian product of the start positions.
    let mut origins: Vec<Vec<usize>> = vec![vec![]];
    for s in &starts {
        origins = origins
            .into_iter()
            .flat_map(|o| {
                s.iter().map(move |&v| {
                    let mut o = o.clone();
                    o.push(v);
                    o
                })
            })
            .collect();
    }
    let mut acc_shape = vec![spec.classes];
    acc_shape.extend_from_slice(&full);
    let mut acc = ArrayD::<f32>::zeros(IxDyn(&acc_shape));
    let mut wsum = ArrayD::<f32>::zeros(IxDyn(&full));
    fn window<'a>(a: ArrayViewD<'a, f32>, o: &[usize], patch: &[usize]) -> ArrayViewD<'a, f32> {
        let mut v = a;
        for (i, (&s, &p)) in o.iter().zip(patch).enumerate() {
            v.slice_axis_inplace(Axis(1 + i), Slice::from(s..s + p));
        }
        v
    }
    let x0 = x.index_axis(Axis(0), 0);
    for chunk in origins.chunks(batch.max(1)) {
        let wins: Vec<ArrayViewD<f32>> =
            chunk.iter().map(|o| window(x0.view(), o, patch)).collect();
        let stacked = ndarray::stack(Axis(0), &wins)
            .map_err(|e| SegError::Shape(format!("stacking windows: {e}")))?;
        let l = run(&stacked)?;
        for (j, o) in chunk.iter().enumerate() {
            let lw = l.index_axis(Axis(0), j);
            let mut a = acc.view_mut();
            let mut w = wsum.view_mut();
            for (i, (&s, &p)) in o.iter().zip(patch).enumerate() {
                a.slice_axis_inplace(Axis(1 + i), Slice::from(s..s + p));
                w.slice_axis_inplace(Axis(i), Slice::from(s..s + p));
            }
            ndarray::Zip::from(&mut w)
                .and(&g)
                .for_each(|w, &gv| *w += gv);
            for (mut ac, lc) in a.outer_iter_mut().zip(lw.outer_iter()) {
                ndarray::Zip::from(&mut ac)
                    .and(&lc)
                    .and(&g)
                    .for_each(|a, &l, &gv| *a += l * gv);
            }
        }
    }
    for mut ac in acc.outer_iter_mut() {
        ndarray::Zip::from(&mut ac)
            .and(&wsum)
            .for_each(|a, &w| *a /= w);
    }
    Ok(crop(&acc, 1, &sp).insert_axis(Axis(0)))
}

/// `softmax(l / T)` over axis 0 of logits `(K, *sp)`, in f64 per voxel.
///
/// # Errors
/// [`SegError::Config`] for a temperature that is not finite and positive.
pub fn softmax_classes(mut logits: ArrayD<f32>, temperature: f64) -> Result<ArrayD<f32>> {
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(SegError::Config(format!(
            "temperature must be finite and positive, got {temperature}"
        )));
    }
    let inv = 1.0 / temperature;
    let mut buf = Vec::new();
    for mut lane in logits.lanes_mut(Axis(0)) {
        let mx = lane
            .iter()
            .map(|&v| v as f64 * inv)
            .fold(f64::NEG_INFINITY, f64::max);
        buf.clear();
        buf.extend(lane.iter().map(|&v| (v as f64 * inv - mx).exp()));
        let s: f64 = buf.iter().sum();
        for (o, e) in lane.iter_mut().zip(&buf) {
            *o = (e / s) as f32;
        }
    }
    Ok(logits)
}

/// Logits of a batch tensor through a model, as an array (helper for callers that
/// hold tensors).
pub fn logits_array(model: &dyn Trainable, x: &Tensor) -> Result<ArrayD<f32>> {
    model.set_training(false);
    crate::convert::tensor_to_array(&model.predict(x)?.to_dtype(DType::F32)?)
}
