//! What the metrics read: probabilities `(K, *spatial)`, integer labels `(*spatial)`, an
//! optional mask and an optional hard prediction, as ndarray views.
//!
//! * Probabilities are `f32` or `f64` ([`Probability`]), channel-first, any number of
//!   spatial axes (also none). Views in standard (C-contiguous) layout — or whose every
//!   channel `probs[c]` is — are read in place; any other layout (transposed, strided,
//!   broadcast, channel-last permuted) is gathered chunk by chunk, with identical results.
//! * Labels and predictions are any primitive integer type ([`Label`]). Negative values or
//!   values `>= K` are an error ([`MetricsError::LabelOutOfRange`]).
//! * Masks are `bool` or any integer ([`MaskValue`]); non-zero means inside.
//!
//! Every voxel given is validated, also those outside the region of the metrics (a NaN
//! outside a mask is still an error: it means the file is wrong). Voxels are numbered in
//! row-major (C) order of the spatial shape; errors report the multi-index of the first
//! offending voxel, and nothing is accumulated from an input that has one.

use ndarray::{ArrayView, ArrayViewD, Axis, Dimension, IxDyn, Slice};

use crate::MetricsError;
use crate::edges::EdgeFloat;

/// Floating-point types probabilities can be given in: `f32` and `f64` (sealed).
pub trait Probability:
    EdgeFloat
    + Send
    + Sync
    + Default
    + std::fmt::Debug
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Div<Output = Self>
    + 'static
{
    /// `0`.
    const ZERO: Self;
    /// `1`.
    const ONE: Self;
    /// Exact widening (f32) or identity (f64).
    fn to_f64(self) -> f64;
    /// Rounding to nearest (f32) or identity (f64).
    fn from_f64(v: f64) -> Self;
    /// `Some(s)` when `Self` is `f32` (selects the f32 SIMD kernels).
    fn as_f32_slice(s: &[Self]) -> Option<&[f32]>;
    /// `Some(s)` when `Self` is `f32`.
    fn as_f32_slice_mut(s: &mut [Self]) -> Option<&mut [f32]>;
}

impl Probability for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    #[inline(always)]
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn as_f32_slice(s: &[Self]) -> Option<&[f32]> {
        Some(s)
    }
    #[inline(always)]
    fn as_f32_slice_mut(s: &mut [Self]) -> Option<&mut [f32]> {
        Some(s)
    }
}

impl Probability for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn as_f32_slice(_: &[Self]) -> Option<&[f32]> {
        None
    }
    #[inline(always)]
    fn as_f32_slice_mut(_: &mut [Self]) -> Option<&mut [f32]> {
        None
    }
}

/// Integer label types. `to_class` maps a value to its class index, or to `u32::MAX` when
/// it is negative or does not fit (such values are then rejected as out of range).
pub trait Label: Copy + Send + Sync + 'static {
    /// The class index, saturating to `u32::MAX` for negative or huge values.
    fn to_class(self) -> u32;
    /// The value, for error messages.
    fn to_i128(self) -> i128;
}

macro_rules! impl_label {
    ($($t:ty),*) => {$(
        impl Label for $t {
            #[inline(always)]
            fn to_class(self) -> u32 {
                u32::try_from(self).unwrap_or(u32::MAX)
            }
            #[inline(always)]
            fn to_i128(self) -> i128 {
                self as i128
            }
        }
    )*};
}
impl_label!(u8, u16, u32, u64, usize, i8, i16, i32, i64, isize);

/// Mask element types: `bool` or any integer; non-zero (`true`) means inside.
pub trait MaskValue: Copy + Send + Sync + 'static {
    /// Whether the voxel is inside the mask.
    fn inside(self) -> bool;
}

impl MaskValue for bool {
    #[inline(always)]
    fn inside(self) -> bool {
        self
    }
}

macro_rules! impl_mask {
    ($($t:ty),*) => {$(
        impl MaskValue for $t {
            #[inline(always)]
            fn inside(self) -> bool {
                self != 0
            }
        }
    )*};
}
impl_mask!(u8, u16, u32, u64, usize, i8, i16, i32, i64, isize);

/// Row-major multi-index of flat voxel `flat` in `shape`.
pub(crate) fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        let n = shape[d].max(1);
        idx[d] = flat % n;
        flat /= n;
    }
    idx
}

/// Copies voxels `start .. start + out.len()` (row-major) of `view` through `f` into `out`,
/// for any strides. Works row by row along the last axis, so the per-voxel cost is that of
/// ndarray's 1-D iteration.
pub(crate) fn gather_map<A: Copy, B>(
    view: &ArrayViewD<'_, A>,
    start: usize,
    out: &mut [B],
    f: impl Fn(A) -> B,
) {
    let nd = view.ndim();
    if out.is_empty() {
        return;
    }
    if nd == 0 {
        if let (Some(o), Some(&v)) = (out.first_mut(), view.iter().next()) {
            *o = f(v);
        }
        return;
    }
    let shape = view.shape().to_vec();
    let last = shape[nd - 1];
    let mut pos = start;
    let mut done = 0;
    while done < out.len() && last > 0 {
        let row = pos / last;
        let col = pos % last;
        let take = (last - col).min(out.len() - done);
        let idx = unravel(row, &shape[..nd - 1]);
        let mut sub = view.view();
        for (d, &i) in idx.iter().enumerate() {
            sub.collapse_axis(Axis(d), i);
        }
        sub.slice_axis_inplace(Axis(nd - 1), Slice::from(col..col + take));
        for (o, &v) in out[done..done + take].iter_mut().zip(sub.iter()) {
            *o = f(v);
        }
        done += take;
        pos += take;
    }
}

/// A label map read chunk by chunk as class indices.
pub(crate) trait ClassSource: Send + Sync {
    /// Class indices (`u32::MAX` for negative/huge values) of voxels `start..start+out.len()`.
    fn fill(&self, start: usize, out: &mut [u32]);
    /// The raw value of flat voxel `voxel`, for error messages.
    fn raw(&self, voxel: usize) -> i128;
}

/// A mask read chunk by chunk as 0/1.
pub(crate) trait MaskSource: Send + Sync {
    /// `1` inside, `0` outside, for voxels `start..start+out.len()`.
    fn fill(&self, start: usize, out: &mut [u32]);
}

struct LabelArray<'a, L> {
    view: ArrayViewD<'a, L>,
    slice: Option<&'a [L]>,
}

impl<'a, L: Label> LabelArray<'a, L> {
    fn new(view: ArrayViewD<'a, L>) -> Self {
        let slice = view.to_slice();
        LabelArray { view, slice }
    }
}

impl<L: Label> ClassSource for LabelArray<'_, L> {
    fn fill(&self, start: usize, out: &mut [u32]) {
        match self.slice {
            Some(s) => {
                let n = out.len();
                for (o, &l) in out.iter_mut().zip(&s[start..start + n]) {
                    *o = l.to_class();
                }
            }
            None => gather_map(&self.view, start, out, L::to_class),
        }
    }
    fn raw(&self, voxel: usize) -> i128 {
        let idx = unravel(voxel, self.view.shape());
        self.view
            .get(IxDyn(&idx))
            .map(|&l| l.to_i128())
            .unwrap_or(-1)
    }
}

struct MaskArray<'a, M> {
    view: ArrayViewD<'a, M>,
    slice: Option<&'a [M]>,
}

impl<M: MaskValue> MaskSource for MaskArray<'_, M> {
    fn fill(&self, start: usize, out: &mut [u32]) {
        let f = |m: M| u32::from(m.inside());
        match self.slice {
            Some(s) => {
                let n = out.len();
                for (o, &m) in out.iter_mut().zip(&s[start..start + n]) {
                    *o = f(m);
                }
            }
            None => gather_map(&self.view, start, out, f),
        }
    }
}

/// One piece of data to score: probabilities `(K, *spatial)` and labels `(*spatial)`, with
/// an optional ROI mask and an optional hard prediction (`(*spatial)` each).
///
/// Shapes are checked when the input is built. The hard prediction, when given, replaces
/// the argmax of the probabilities for Dice and IoU only (the calibration metrics always
/// use the probabilities).
///
/// ```
/// use calseg_metrics::{Evaluator, Input, MetricConfig, Region};
/// use ndarray::{array, Array3};
///
/// let probs = Array3::from_shape_vec((2, 1, 3), vec![0.9f32, 0.2, 0.6, 0.1, 0.8, 0.4]).unwrap();
/// let labels = array![[0u8, 1, 1]];
/// let mask = array![[true, true, false]];
/// let mut ev = Evaluator::new(MetricConfig::default().region(Region::Mask))?;
/// ev.update_input(&Input::new(probs.view(), labels.view())?.with_mask(mask.view())?)?;
/// let r = ev.finish()?;
/// assert_eq!(r.n_voxels, 2); // calibration over the mask
/// assert_eq!(r.n_total, 3); // Dice over every voxel
/// # Ok::<(), calseg_metrics::MetricsError>(())
/// ```
pub struct Input<'a, T: Probability> {
    pub(crate) probs: ArrayViewD<'a, T>,
    pub(crate) spatial: Vec<usize>,
    pub(crate) labels: Box<dyn ClassSource + 'a>,
    pub(crate) mask: Option<Box<dyn MaskSource + 'a>>,
    pub(crate) pred: Option<Box<dyn ClassSource + 'a>>,
}

impl<T: Probability> std::fmt::Debug for Input<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Input")
            .field("probs_shape", &self.probs.shape())
            .field("mask", &self.mask.is_some())
            .field("pred", &self.pred.is_some())
            .finish()
    }
}

fn check_shape(what: &'static str, expected: &[usize], got: &[usize]) -> Result<(), MetricsError> {
    if expected != got {
        return Err(MetricsError::ShapeMismatch {
            what,
            expected: expected.to_vec(),
            got: got.to_vec(),
        });
    }
    Ok(())
}

impl<'a, T: Probability> Input<'a, T> {
    /// Probabilities `(K, *spatial)` and labels `(*spatial)`.
    ///
    /// # Errors
    /// [`MetricsError::TooFewClasses`] when `K < 2` (or `probs` has no axis);
    /// [`MetricsError::ShapeMismatch`] when the label shape is not `probs.shape()[1..]`.
    pub fn new<L: Label, D: Dimension, E: Dimension>(
        probs: ArrayView<'a, T, D>,
        labels: ArrayView<'a, L, E>,
    ) -> Result<Self, MetricsError> {
        let probs = probs.into_dyn();
        let labels = labels.into_dyn();
        let k = probs.shape().first().copied().unwrap_or(0);
        if k < 2 {
            return Err(MetricsError::TooFewClasses { n_classes: k });
        }
        let spatial = probs.shape()[1..].to_vec();
        check_shape("labels", &spatial, labels.shape())?;
        Ok(Input {
            probs,
            spatial,
            labels: Box::new(LabelArray::new(labels)),
            mask: None,
            pred: None,
        })
    }

    /// Adds an ROI mask (`bool` or integer, non-zero = inside); needs
    /// [`Region::Mask`](crate::Region::Mask) in the configuration.
    ///
    /// # Errors
    /// [`MetricsError::ShapeMismatch`] when the mask shape is not the spatial shape.
    pub fn with_mask<M: MaskValue, D: Dimension>(
        mut self,
        mask: ArrayView<'a, M, D>,
    ) -> Result<Self, MetricsError> {
        let view = mask.into_dyn();
        check_shape("mask", &self.spatial, view.shape())?;
        let slice = view.to_slice();
        self.mask = Some(Box::new(MaskArray { view, slice }));
        Ok(self)
    }

    /// Adds a hard predicted label map (e.g. a post-processed segmentation) used for Dice
    /// and IoU instead of the argmax of the probabilities.
    ///
    /// # Errors
    /// [`MetricsError::ShapeMismatch`] when its shape is not the spatial shape.
    pub fn with_pred<P: Label, D: Dimension>(
        mut self,
        pred: ArrayView<'a, P, D>,
    ) -> Result<Self, MetricsError> {
        let view = pred.into_dyn();
        check_shape("pred", &self.spatial, view.shape())?;
        self.pred = Some(Box::new(LabelArray::new(view)));
        Ok(self)
    }

    /// Number of classes `K`.
    pub fn n_classes(&self) -> usize {
        self.probs.shape()[0]
    }

    /// The spatial shape.
    pub fn spatial_shape(&self) -> &[usize] {
        &self.spatial
    }

    /// Number of voxels (product of the spatial shape).
    pub fn n_voxels(&self) -> usize {
        self.spatial.iter().product()
    }
}

/// A hard prediction and labels, without probabilities (for [`Overlap`](crate::Overlap)).
pub(crate) struct LabelPair<'a> {
    pub(crate) spatial: Vec<usize>,
    pub(crate) labels: Box<dyn ClassSource + 'a>,
    pub(crate) pred: Box<dyn ClassSource + 'a>,
}

impl<'a> LabelPair<'a> {
    pub(crate) fn new<P: Label, L: Label, D: Dimension, E: Dimension>(
        pred: ArrayView<'a, P, D>,
        labels: ArrayView<'a, L, E>,
    ) -> Result<Self, MetricsError> {
        let pred = pred.into_dyn();
        let labels = labels.into_dyn();
        let spatial = labels.shape().to_vec();
        check_shape("pred", &spatial, pred.shape())?;
        Ok(LabelPair {
            spatial,
            labels: Box::new(LabelArray::new(labels)),
            pred: Box::new(LabelArray::new(pred)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array3, ArrayD, IxDyn};

    #[test]
    fn label_conversion_saturates() {
        assert_eq!(3u8.to_class(), 3);
        assert_eq!((-1i32).to_class(), u32::MAX);
        assert_eq!((-1i64).to_class(), u32::MAX);
        assert_eq!((1u64 << 40).to_class(), u32::MAX);
        assert_eq!(7usize.to_class(), 7);
        assert_eq!((-5i8).to_i128(), -5);
        assert!(2u16.inside());
        assert!(!0i64.inside());
        assert!(true.inside());
    }

    #[test]
    fn gather_matches_logical_order_for_any_layout() {
        let a = Array3::from_shape_fn((3, 4, 5), |(i, j, k)| (i * 100 + j * 10 + k) as i32);
        let logical: Vec<i32> = a.iter().copied().collect();
        let views = [
            a.view().into_dyn(),
            a.view().reversed_axes().into_dyn(),
            a.slice(ndarray::s![..;-1, 1.., ..;2]).into_dyn(),
        ];
        for v in views {
            let want: Vec<i32> = v.iter().copied().collect();
            let n = want.len();
            for start in 0..n {
                for len in [1, 2, 3, 7, 13, n - start] {
                    let len = len.min(n - start);
                    let mut out = vec![0; len];
                    gather_map(&v, start, &mut out, |x| x);
                    assert_eq!(out, want[start..start + len], "start {start} len {len}");
                }
            }
        }
        assert_eq!(logical.len(), 60);
        let zero_d = ArrayD::from_elem(IxDyn(&[]), 9i32);
        let mut out = [0];
        gather_map(&zero_d.view(), 0, &mut out, |x| x);
        assert_eq!(out, [9]);
    }

    #[test]
    fn unravel_row_major() {
        assert_eq!(unravel(0, &[2, 3]), vec![0, 0]);
        assert_eq!(unravel(5, &[2, 3]), vec![1, 2]);
        assert_eq!(unravel(7, &[2, 3, 2]), vec![1, 0, 1]);
        assert_eq!(unravel(0, &[]), Vec::<usize>::new());
    }
}
