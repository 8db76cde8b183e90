//! Per-chunk input checks and transforms: class indices `< K`, renormalising or
//! softmaxing the probabilities into scratch, and locating the first invalid probability
//! once the fused loop has reported one.

use super::CHUNK;
use crate::MetricsError;
use crate::input::{ClassSource, Probability, unravel};

/// Where a chunk lies: `m` voxels of `k` classes from flat index `start` of a volume of
/// shape `spatial` (for the voxel index in error messages).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChunkAt<'s> {
    /// Classes.
    pub k: usize,
    /// Voxels in the chunk.
    pub m: usize,
    /// Flat index of the chunk's first voxel.
    pub start: usize,
    /// Spatial shape of the input.
    pub spatial: &'s [usize],
}

/// Validates class indices `< k`; error names the first bad voxel.
#[inline(always)]
pub(crate) fn check_classes(
    cls: &[u32],
    k: usize,
    start: usize,
    src: &dyn ClassSource,
    spatial: &[usize],
    what: &'static str,
) -> Result<(), MetricsError> {
    let mx = cls.iter().fold(0u32, |a, &b| a.max(b));
    if (mx as usize) < k {
        return Ok(());
    }
    let i = cls.iter().position(|&c| c as usize >= k).unwrap_or(0);
    Err(MetricsError::LabelOutOfRange {
        what,
        index: unravel(start + i, spatial),
        label: src.raw(start + i),
        n_classes: k,
    })
}

/// `v` if it is finite, else the error naming voxel `index` (flat) and class `class`.
#[inline(always)]
fn finite(v: f64, index: usize, class: usize, spatial: &[usize]) -> Result<f64, MetricsError> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(MetricsError::NonFinite {
            index: unravel(index, spatial),
            class,
            value: v,
        })
    }
}

/// Locates the first invalid voxel of a chunk (only called when there is one).
#[cold]
pub(crate) fn first_bad_probability<'p, T: Probability>(
    chan: &impl Fn(usize) -> &'p [T],
    k: usize,
    m: usize,
    start: usize,
    spatial: &[usize],
    tol: f64,
) -> MetricsError {
    for i in 0..m {
        let mut sum = T::ZERO;
        for c in 0..k {
            let v = chan(c)[i];
            let vf = match finite(v.to_f64(), start + i, c, spatial) {
                Ok(vf) => vf,
                Err(e) => return e,
            };
            if !(0.0..=1.0).contains(&vf) {
                return MetricsError::ProbabilityOutOfRange {
                    index: unravel(start + i, spatial),
                    class: c,
                    value: vf,
                };
            }
            sum = sum + v;
        }
        let d = (sum - T::ONE).to_f64();
        if d.is_nan() || d.abs() > T::from_f64(tol).to_f64() {
            return MetricsError::NotNormalised {
                index: unravel(start + i, spatial),
                sum: sum.to_f64(),
                tol,
            };
        }
    }
    MetricsError::Invalid("invalid probabilities in a chunk (voxel not located)".into())
}

/// In place: `p_k ← p_k / Σ_j p_j` (sum in f64). Rejects non-finite, negative, all-zero.
#[inline(always)]
pub(crate) fn renormalise<T: Probability>(
    pbuf: &mut [T],
    at: ChunkAt<'_>,
) -> Result<(), MetricsError> {
    let ChunkAt {
        k,
        m,
        start,
        spatial,
    } = at;
    for i in 0..m {
        let mut s = 0.0f64;
        for c in 0..k {
            let v = finite(pbuf[c * CHUNK + i].to_f64(), start + i, c, spatial)?;
            if v < 0.0 {
                return Err(MetricsError::ProbabilityOutOfRange {
                    index: unravel(start + i, spatial),
                    class: c,
                    value: v,
                });
            }
            s += v;
        }
        if s <= 0.0 || !s.is_finite() {
            return Err(MetricsError::ZeroSum {
                index: unravel(start + i, spatial),
            });
        }
        for c in 0..k {
            let v = &mut pbuf[c * CHUNK + i];
            *v = T::from_f64(v.to_f64() / s);
        }
    }
    Ok(())
}

/// In place: softmax over classes, in f64, rounded back to `T`. Rejects non-finite logits.
#[inline(always)]
pub(crate) fn softmax<T: Probability>(
    pbuf: &mut [T],
    lbuf: &mut [f64],
    at: ChunkAt<'_>,
) -> Result<(), MetricsError> {
    let (k, m) = (at.k, at.m);
    let (start, spatial) = (at.start, at.spatial);
    for i in 0..m {
        let mut mx = f64::NEG_INFINITY;
        for c in 0..k {
            let v = finite(pbuf[c * CHUNK + i].to_f64(), start + i, c, spatial)?;
            mx = mx.max(v);
        }
        let mut s = 0.0;
        for c in 0..k {
            let e = (pbuf[c * CHUNK + i].to_f64() - mx).exp();
            lbuf[c * CHUNK + i] = e;
            s += e;
        }
        for c in 0..k {
            pbuf[c * CHUNK + i] = T::from_f64(lbuf[c * CHUNK + i] / s);
        }
    }
    Ok(())
}
