//! Geometry of a (2D or 3D) convolution and the im2col / col2im transforms on tiles.
//!
//! Everything is expressed in 3D: a 2D convolution is a 3D one with depth 1, kernel
//! depth 1, stride 1 and padding 0 along depth. Images are stored channel-major
//! (`C × D × H × W`, row-major), the layout of candle's `NCHW` / `NCDHW` tensors.
//!
//! The column matrix of a convolution has one row per (input channel, kernel offset)
//! pair — row `r = ((c·kd + a)·kh + b)·kw + e`, the same order as the flattened weight
//! `(out, in, kd, kh, kw)` — and one column per output position. The kernels below only
//! ever materialise a *tile* of it: the columns `p0 .. p0 + pt` (flat output positions)
//! and the rows of a channel range `c0 .. c1`, so the buffer stays in the L2 cache.

use super::simd::avx2_dispatch;
use candle_core::WithDType;

/// Shape of one convolution `x (n, ci, i) ⊛ w (co, ci, k) → y (n, co, o)` with
/// `o = (i + 2p − k) / s + 1` along each of the three spatial axes (depth, height, width).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geom {
    pub n: usize,
    pub ci: usize,
    pub co: usize,
    pub i: [usize; 3],
    pub k: [usize; 3],
    pub s: [usize; 3],
    pub p: [usize; 3],
    pub o: [usize; 3],
}

impl Geom {
    /// Builds the geometry, computing the output size; `None` when the kernel does not
    /// fit in the padded input or a stride is zero.
    pub fn new(
        n: usize,
        ci: usize,
        co: usize,
        i: [usize; 3],
        k: [usize; 3],
        s: [usize; 3],
        p: [usize; 3],
    ) -> Option<Self> {
        let mut o = [0; 3];
        for a in 0..3 {
            if s[a] == 0 || k[a] == 0 || i[a] + 2 * p[a] < k[a] {
                return None;
            }
            o[a] = (i[a] + 2 * p[a] - k[a]) / s[a] + 1;
        }
        Some(Self {
            n,
            ci,
            co,
            i,
            k,
            s,
            p,
            o,
        })
    }

    /// Number of kernel taps `kd·kh·kw`.
    pub fn kvol(&self) -> usize {
        self.k[0] * self.k[1] * self.k[2]
    }
    /// Voxels of one input channel.
    pub fn ivol(&self) -> usize {
        self.i[0] * self.i[1] * self.i[2]
    }
    /// Voxels of one output channel (columns of the column matrix).
    pub fn ovol(&self) -> usize {
        self.o[0] * self.o[1] * self.o[2]
    }
    /// Rows of the column matrix, `ci · kvol` (the GEMM reduction size of the forward pass).
    pub fn kdim(&self) -> usize {
        self.ci * self.kvol()
    }
    /// True when the column matrix is the input itself (1×1×1 kernel, stride 1, no padding).
    pub fn is_pointwise(&self) -> bool {
        self.k == [1, 1, 1] && self.s == [1, 1, 1] && self.p == [0, 0, 0]
    }
    /// Multiply-adds ×2 of the forward pass (= of each of the two backward GEMMs).
    pub fn flops(&self) -> f64 {
        2.0 * self.n as f64 * self.co as f64 * self.kdim() as f64 * self.ovol() as f64
    }
    /// Output columns per tile: enough rows × columns to amortise the GEMM packing,
    /// few enough that a tile of the column matrix (`rows × pt`) stays about `budget`
    /// elements (L2-sized).
    pub fn tile_cols(&self, rows: usize, budget: usize) -> usize {
        let pt = (budget / rows.max(1)).max(96);
        let pt = pt.div_ceil(16) * 16;
        pt.min(self.ovol()).max(1)
    }
}

/// One run of consecutive output positions along the width axis inside a tile:
/// output row `(z, y)`, columns `x0 .. x0 + len`, stored at tile column `q`.
struct Run {
    z: usize,
    y: usize,
    x0: usize,
    len: usize,
    q: usize,
}

/// Iterates the width-runs covering flat output positions `p0 .. p0 + pt`.
#[inline(always)]
fn runs(g: &Geom, p0: usize, pt: usize, mut f: impl FnMut(Run)) {
    let [_, oh, ow] = g.o;
    let mut x0 = p0 % ow;
    let mut y = (p0 / ow) % oh;
    let mut z = p0 / (ow * oh);
    let mut q = 0;
    while q < pt {
        let len = (ow - x0).min(pt - q);
        f(Run { z, y, x0, len, q });
        q += len;
        x0 = 0;
        y += 1;
        if y == oh {
            y = 0;
            z += 1;
        }
    }
}

/// Input coordinate `o·s + t − p` of output coordinate `o` and kernel tap `t`, or `None`
/// if it falls into the zero padding.
#[inline]
fn src_coord(o: usize, s: usize, t: usize, p: usize, len: usize) -> Option<usize> {
    let v = (o * s + t).checked_sub(p)?;
    (v < len).then_some(v)
}

/// Range `j0 .. j1` of the run positions `j` (output column `x0 + j`) whose input
/// column `(x0 + j)·sw + e − pw` lies inside `0 .. iw`.
#[inline]
fn valid_span(x0: usize, len: usize, sw: usize, e: usize, pw: usize, iw: usize) -> (usize, usize) {
    // first j with (x0+j)*sw + e >= pw
    let lo_num = pw.saturating_sub(x0 * sw + e);
    let j0 = lo_num.div_ceil(sw).min(len);
    // last valid: (x0+j)*sw + e - pw <= iw - 1  <=>  (x0+j)*sw <= iw - 1 + pw - e
    let hi = (iw - 1 + pw).checked_sub(e);
    let j1 = match hi {
        None => 0,
        Some(h) => {
            let xmax = h / sw; // largest output column that is still valid
            if xmax < x0 {
                0
            } else {
                (xmax - x0 + 1).min(len)
            }
        }
    };
    (j0, j1.max(j0))
}

/// Fills `col` (`(c1 − c0)·kvol` rows × `pt` columns, row-major) with the column-matrix
/// tile of one image `x` (`ci × ivol`) for channels `c0 .. c1` and output positions
/// `p0 .. p0 + pt`.
pub(crate) fn im2col<T: WithDType>(
    g: &Geom,
    x: &[T],
    c0: usize,
    c1: usize,
    p0: usize,
    pt: usize,
    col: &mut [T],
) {
    if g.s == [1, 1, 1] {
        im2col_s1_d(g, x, c0, c1, p0, pt, col)
    } else {
        im2col_impl_d(g, x, c0, c1, p0, pt, col)
    }
}

avx2_dispatch! {
    /// [`im2col_s1`] with AVX2 + FMA when available.
    fn im2col_s1_d<T: WithDType>(g: &Geom, x: &[T], c0: usize, c1: usize, p0: usize, pt: usize, col: &mut [T]) => im2col_s1
}

avx2_dispatch! {
    /// [`im2col_impl`] with AVX2 + FMA when available.
    fn im2col_impl_d<T: WithDType>(g: &Geom, x: &[T], c0: usize, c1: usize, p0: usize, pt: usize, col: &mut [T]) => im2col_impl
}

avx2_dispatch! {
    /// [`col2im_add_impl`] with AVX2 + FMA when available.
    fn col2im_add_impl_d<T: WithDType>(g: &Geom, col: &[T], c0: usize, c1: usize, p0: usize, pt: usize, dx: &mut [T]) => col2im_add_impl
}

/// [`im2col`] for stride 1 (every 3×3 "same" convolution and the flipped input-gradient
/// convolutions): the width-runs of the tile are listed once, and the valid span of each
/// run and tap needs no division.
#[inline(always)]
fn im2col_s1<T: WithDType>(
    g: &Geom,
    x: &[T],
    c0: usize,
    c1: usize,
    p0: usize,
    pt: usize,
    col: &mut [T],
) {
    let [kd, kh, kw] = g.k;
    let [pd, ph, pw] = g.p;
    let [id, ih, iw] = g.i;
    let ivol = g.ivol();
    let zero = T::from_f64(0.0);
    let mut rs: Vec<Run> = Vec::with_capacity(pt / g.o[2].max(1) + 2);
    runs(g, p0, pt, |r| rs.push(r));
    let mut row = 0;
    for c in c0..c1 {
        let xc = &x[c * ivol..(c + 1) * ivol];
        for a in 0..kd {
            for b in 0..kh {
                for e in 0..kw {
                    let dst = &mut col[row * pt..(row + 1) * pt];
                    for r in &rs {
                        let out = &mut dst[r.q..r.q + r.len];
                        // Input coordinates, shifted by the padding (wrap = out of range).
                        let iz = (r.z + a).wrapping_sub(pd);
                        let iy = (r.y + b).wrapping_sub(ph);
                        if iz >= id || iy >= ih {
                            out.fill(zero);
                            continue;
                        }
                        let line = &xc[(iz * ih + iy) * iw..(iz * ih + iy + 1) * iw];
                        // Input column of run position j is x0 + e + j − pw.
                        let st = r.x0 + e;
                        let j0 = pw.saturating_sub(st).min(r.len);
                        let j1 = (iw + pw).saturating_sub(st).min(r.len).max(j0);
                        for o in &mut out[..j0] {
                            *o = zero;
                        }
                        for o in &mut out[j1..] {
                            *o = zero;
                        }
                        if j1 > j0 {
                            let s0 = st + j0 - pw;
                            out[j0..j1].copy_from_slice(&line[s0..s0 + (j1 - j0)]);
                        }
                    }
                    row += 1;
                }
            }
        }
    }
}

#[inline(always)]
fn im2col_impl<T: WithDType>(
    g: &Geom,
    x: &[T],
    c0: usize,
    c1: usize,
    p0: usize,
    pt: usize,
    col: &mut [T],
) {
    let [kd, kh, kw] = g.k;
    let [sd, sh, sw] = g.s;
    let [pd, ph, pw] = g.p;
    let [id, ih, iw] = g.i;
    let ivol = g.ivol();
    let zero = T::from_f64(0.0);
    let mut row = 0;
    for c in c0..c1 {
        let xc = &x[c * ivol..(c + 1) * ivol];
        for a in 0..kd {
            for b in 0..kh {
                for e in 0..kw {
                    let dst = &mut col[row * pt..(row + 1) * pt];
                    runs(g, p0, pt, |r| {
                        let out = &mut dst[r.q..r.q + r.len];
                        let src = src_coord(r.z, sd, a, pd, id).zip(src_coord(r.y, sh, b, ph, ih));
                        let Some((iz, iy)) = src else {
                            out.fill(zero);
                            return;
                        };
                        let line = &xc[(iz * ih + iy) * iw..(iz * ih + iy + 1) * iw];
                        let (j0, j1) = valid_span(r.x0, r.len, sw, e, pw, iw);
                        out[..j0].fill(zero);
                        out[j1..].fill(zero);
                        if j1 > j0 {
                            let s0 = (r.x0 + j0) * sw + e - pw;
                            if sw == 1 {
                                out[j0..j1].copy_from_slice(&line[s0..s0 + (j1 - j0)]);
                            } else {
                                for (j, o) in out[j0..j1].iter_mut().enumerate() {
                                    *o = line[s0 + j * sw];
                                }
                            }
                        }
                    });
                    row += 1;
                }
            }
        }
    }
}

/// Adjoint of [`im2col`]: adds the column tile `col` (rows of channels `c0 .. c1`) back
/// into the image gradient `dx` (`ci × ivol`), summing overlapping taps.
pub(crate) fn col2im_add<T: WithDType>(
    g: &Geom,
    col: &[T],
    c0: usize,
    c1: usize,
    p0: usize,
    pt: usize,
    dx: &mut [T],
) {
    col2im_add_impl_d(g, col, c0, c1, p0, pt, dx)
}

#[inline(always)]
fn col2im_add_impl<T: WithDType>(
    g: &Geom,
    col: &[T],
    c0: usize,
    c1: usize,
    p0: usize,
    pt: usize,
    dx: &mut [T],
) {
    let [kd, kh, kw] = g.k;
    let [sd, sh, sw] = g.s;
    let [pd, ph, pw] = g.p;
    let [id, ih, iw] = g.i;
    let ivol = g.ivol();
    let mut row = 0;
    for c in c0..c1 {
        let dxc = &mut dx[c * ivol..(c + 1) * ivol];
        for a in 0..kd {
            for b in 0..kh {
                for e in 0..kw {
                    let src = &col[row * pt..(row + 1) * pt];
                    runs(g, p0, pt, |r| {
                        let Some((iz, iy)) =
                            src_coord(r.z, sd, a, pd, id).zip(src_coord(r.y, sh, b, ph, ih))
                        else {
                            return;
                        };
                        let line = &mut dxc[(iz * ih + iy) * iw..(iz * ih + iy + 1) * iw];
                        let (j0, j1) = valid_span(r.x0, r.len, sw, e, pw, iw);
                        if j1 > j0 {
                            let s0 = (r.x0 + j0) * sw + e - pw;
                            let vals = &src[r.q + j0..r.q + j1];
                            if sw == 1 {
                                for (d, v) in line[s0..s0 + (j1 - j0)].iter_mut().zip(vals) {
                                    *d += *v;
                                }
                            } else {
                                for (j, v) in vals.iter().enumerate() {
                                    line[s0 + j * sw] += *v;
                                }
                            }
                        }
                    });
                    row += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct definition of one column-matrix entry.
    fn entry(g: &Geom, x: &[f64], r: usize, p: usize) -> f64 {
        let [kd, kh, kw] = g.k;
        let (c, a, b, e) = (
            r / (kd * kh * kw),
            (r / (kh * kw)) % kd,
            (r / kw) % kh,
            r % kw,
        );
        let [_, oh, ow] = g.o;
        let (z, y, xx) = (p / (oh * ow), (p / ow) % oh, p % ow);
        let coord = |o: usize, s: usize, t: usize, pad: usize, len: usize| -> Option<usize> {
            let v = (o * s + t) as isize - pad as isize;
            (v >= 0 && (v as usize) < len).then_some(v as usize)
        };
        match (
            coord(z, g.s[0], a, g.p[0], g.i[0]),
            coord(y, g.s[1], b, g.p[1], g.i[1]),
            coord(xx, g.s[2], e, g.p[2], g.i[2]),
        ) {
            (Some(iz), Some(iy), Some(ix)) => x[c * g.ivol() + (iz * g.i[1] + iy) * g.i[2] + ix],
            _ => 0.0,
        }
    }

    #[test]
    fn im2col_matches_definition_and_col2im_is_its_adjoint() {
        let cases = [
            Geom::new(1, 2, 1, [1, 5, 7], [1, 3, 3], [1, 1, 1], [0, 1, 1]),
            Geom::new(1, 3, 1, [1, 6, 5], [1, 3, 3], [1, 2, 2], [0, 1, 1]),
            Geom::new(1, 2, 1, [3, 4, 5], [3, 3, 3], [2, 1, 2], [1, 0, 1]),
            Geom::new(1, 1, 1, [2, 4, 4], [2, 2, 2], [2, 2, 2], [0, 0, 0]),
            Geom::new(1, 2, 1, [1, 3, 2], [1, 1, 2], [1, 1, 1], [0, 0, 1]),
            // Stride 1 (the fast path), 3D, and padding wider than the input.
            Geom::new(1, 2, 1, [3, 4, 5], [3, 3, 3], [1, 1, 1], [1, 1, 1]),
            Geom::new(1, 2, 1, [2, 3, 2], [3, 3, 3], [1, 1, 1], [2, 1, 2]),
            Geom::new(1, 1, 1, [1, 1, 1], [1, 3, 3], [1, 1, 1], [0, 2, 2]),
        ];
        for g in cases {
            let g = g.expect("valid geometry");
            let x: Vec<f64> = (0..g.ci * g.ivol()).map(|v| v as f64 + 1.0).collect();
            let rows = g.kdim();
            let p_all = g.ovol();
            // Tiles of odd sizes cross row boundaries.
            for pt in [1, 3, p_all] {
                let mut p0 = 0;
                while p0 < p_all {
                    let len = pt.min(p_all - p0);
                    let mut col = vec![f64::NAN; rows * len];
                    im2col(&g, &x, 0, g.ci, p0, len, &mut col);
                    for r in 0..rows {
                        for q in 0..len {
                            assert_eq!(col[r * len + q], entry(&g, &x, r, p0 + q), "{g:?}");
                        }
                    }
                    p0 += len;
                }
            }
            // <im2col(x), c> == <x, col2im(c)> for a column matrix c.
            let c: Vec<f64> = (0..rows * p_all)
                .map(|v| ((v * 7) % 11) as f64 - 5.0)
                .collect();
            let mut col = vec![0.0; rows * p_all];
            im2col(&g, &x, 0, g.ci, 0, p_all, &mut col);
            let lhs: f64 = col.iter().zip(&c).map(|(a, b)| a * b).sum();
            let mut dx = vec![0.0; x.len()];
            // Channel by channel, to exercise the channel range.
            for ch in 0..g.ci {
                let kv = g.kvol();
                col2im_add(
                    &g,
                    &c[ch * kv * p_all..(ch + 1) * kv * p_all],
                    ch,
                    ch + 1,
                    0,
                    p_all,
                    &mut dx,
                );
            }
            let rhs: f64 = x.iter().zip(&dx).map(|(a, b)| a * b).sum();
            assert!((lhs - rhs).abs() < 1e-9 * lhs.abs().max(1.0), "{g:?}");
        }
    }
}
