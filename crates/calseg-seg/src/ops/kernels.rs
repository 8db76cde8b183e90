//! The three convolution kernels — forward, input gradient, weight gradient — on plain
//! slices, built on [`im2col`]/[`col2im_add`] tiles and the `gemm` crate, parallel with
//! rayon over (image, tile) or (image, channel-chunk) tasks. Each task calls a
//! single-threaded GEMM on an L2-sized tile, so the threads never share a cache line of
//! output and the GEMM packing overhead stays small.
//!
//! For one image `n`, with `X_col` the column matrix (`ci·kvol × P`, see [`super::geom`]),
//! `W` the weight as a `co × ci·kvol` matrix and `P` the number of output positions:
//!
//! - forward:        `Y[n] = W · X_col[n] (+ b)`                     (`co × P`)
//! - input gradient: `dX[n] = col2im(Wᵀ · dY[n])`                    (`ci × ivol`)
//! - weight gradient: `dW = Σ_n dY[n] · X_col[n]ᵀ`                   (`co × ci·kvol`)
//! - bias gradient:  `db[o] = Σ_n Σ_p dY[n][o][p]`

use super::geom::{Geom, col2im_add, im2col};
use super::shifted::{Kernel, conv_fwd_shifted, conv_grad_weight_shifted, use_shifted};
use super::simd::{avx2_dispatch, lane_sum};

use candle_core::WithDType;
use rayon::prelude::*;

/// Target size (elements) of one column-matrix tile: 64 Ki elements = 256 KiB in f32,
/// half of a 512 KiB L2 cache.
pub(crate) const TILE_BUDGET: usize = 64 * 1024;

/// A raw pointer that may cross threads. Each task writes a disjoint region through it.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub(crate) *mut T);
// SAFETY: only used to write disjoint output regions from parallel tasks.
unsafe impl<T> Send for SendPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

/// Strided matrix view for [`gemm_acc`]: `ptr[r·rs + c·cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<T> {
    pub(crate) ptr: *const T,
    pub(crate) rs: isize,
    pub(crate) cs: isize,
}

/// `dst (m × n, strides dst_rs/dst_cs) = [dst +] lhs (m × k) · rhs (k × n)`, single-threaded.
///
/// # Safety
/// All three views must be valid for the given sizes and strides, and `dst` must not
/// alias `lhs` or `rhs` nor be written concurrently by another thread.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_acc<T: WithDType>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    dst_rs: isize,
    dst_cs: isize,
    accumulate: bool,
    lhs: Mat<T>,
    rhs: Mat<T>,
) {
    if m == 0 || n == 0 {
        return;
    }
    let one = T::from_f64(1.0);
    // SAFETY: forwarded from the caller's contract; gemm reads lhs/rhs and writes dst only.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs,
            dst_rs,
            accumulate,
            lhs.ptr,
            lhs.cs,
            lhs.rs,
            rhs.ptr,
            rhs.cs,
            rhs.rs,
            one,
            one,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Splits `0..len` into consecutive `(start, size)` chunks of at most `chunk`.
fn chunks(len: usize, chunk: usize) -> impl Iterator<Item = (usize, usize)> {
    let chunk = chunk.max(1);
    (0..len.div_ceil(chunk)).map(move |t| (t * chunk, chunk.min(len - t * chunk)))
}

/// Forward convolution: `y (n, co, o) = x (n, ci, i) ⊛ w (co, ci, k) + b`.
/// `y` must have `n·co·ovol` elements; it is fully overwritten.
pub(crate) fn conv_fwd<T: WithDType>(g: &Geom, x: &[T], w: &[T], b: Option<&[T]>, y: &mut [T]) {
    conv_fwd_srcs(g, &[(x, g.ci)], w, b, y)
}

/// Forward convolution of the channel concatenation of `srcs` (each `(data, channels)`,
/// data `(n, channels, i)`, channels summing to `g.ci`) without materialising it: each
/// source contributes `W[:, its columns] · X_col(source)`, accumulated in the output.
pub(crate) fn conv_fwd_srcs<T: WithDType>(
    g: &Geom,
    srcs: &[(&[T], usize)],
    w: &[T],
    b: Option<&[T]>,
    y: &mut [T],
) {
    if use_shifted(g, Kernel::Forward) {
        conv_fwd_shifted(g, srcs, w, b, y)
    } else {
        conv_fwd_im2col(g, srcs, w, b, y)
    }
}

/// [`conv_fwd_srcs`] through column-matrix tiles (any stride and padding).
pub(crate) fn conv_fwd_im2col<T: WithDType>(
    g: &Geom,
    srcs: &[(&[T], usize)],
    w: &[T],
    b: Option<&[T]>,
    y: &mut [T],
) {
    let (kdim, kvol, p_all, ivol) = (g.kdim(), g.kvol(), g.ovol(), g.ivol());
    let max_rows = srcs.iter().map(|s| s.1).max().unwrap_or(0) * kvol;
    let pt = g.tile_cols(kdim, TILE_BUDGET);
    let tasks: Vec<(usize, usize, usize)> = (0..g.n)
        .flat_map(|n| chunks(p_all, pt).map(move |(p0, len)| (n, p0, len)))
        .collect();
    let yp = SendPtr(y.as_mut_ptr());
    let pointwise = g.is_pointwise();
    tasks.par_iter().for_each_init(
        || {
            if pointwise {
                Vec::new()
            } else {
                vec![T::from_f64(0.0); max_rows * pt]
            }
        },
        |col, &(n, p0, len)| {
            // SAFETY: the tile (n, all co, p0..p0+len) of y is written by this task only.
            let dst = unsafe { yp.get().add(n * g.co * p_all + p0) };
            if let Some(b) = b {
                for (o, bo) in b.iter().enumerate().take(g.co) {
                    // SAFETY: row o of the tile, in bounds, owned by this task.
                    unsafe { std::slice::from_raw_parts_mut(dst.add(o * p_all), len) }.fill(*bo);
                }
            }
            let mut c_off = 0;
            for (si, &(src, cs)) in srcs.iter().enumerate() {
                let rows = cs * kvol;
                let xn = &src[n * cs * ivol..(n + 1) * cs * ivol];
                let rhs = if pointwise {
                    Mat {
                        ptr: xn[p0..].as_ptr(),
                        rs: ivol as isize,
                        cs: 1,
                    }
                } else {
                    im2col(g, xn, 0, cs, p0, len, &mut col[..rows * len]);
                    Mat {
                        ptr: col.as_ptr(),
                        rs: len as isize,
                        cs: 1,
                    }
                };
                let lhs = Mat {
                    ptr: w[c_off * kvol..].as_ptr(),
                    rs: kdim as isize,
                    cs: 1,
                };
                // SAFETY: dst is this task's tile (co rows of stride p_all, len columns);
                // lhs is the co × rows column block of w; rhs holds rows × len values.
                unsafe {
                    gemm_acc(
                        g.co,
                        len,
                        rows,
                        dst,
                        p_all as isize,
                        1,
                        b.is_some() || si > 0,
                        lhs,
                        rhs,
                    );
                }
                c_off += cs;
            }
        },
    );
}

/// Input gradient: `dx (n, ci, i) = col2im(Wᵀ · dy)` for `dy (n, co, o)`.
/// `dx` must have `n·ci·ivol` elements; it is fully overwritten.
///
/// Tasks are (image, input-channel chunk): a chunk owns its rows of `Wᵀ · dy` and hence a
/// disjoint slice of `dx`, so col2im needs no synchronisation.
pub(crate) fn conv_grad_input<T: WithDType>(g: &Geom, dy: &[T], w: &[T], dx: &mut [T]) {
    if let Some((gf, wf)) = flipped(g, w) {
        // Stride 1: dx = dy ⊛ flip(w)ᵀ with padding k − 1 − p, a forward convolution
        // (GEMM reduction over co·kvol instead of co, and no scatter-add).
        conv_fwd(&gf, dy, &wf, None, dx);
        return;
    }
    let (kdim, kvol, p_all, ivol) = (g.kdim(), g.kvol(), g.ovol(), g.ivol());
    dx.fill(T::from_f64(0.0));
    let threads = rayon::current_num_threads().max(1);
    // Enough tasks to balance the threads, but chunks of ≥ 8 channels when possible.
    let want = (2 * threads).div_ceil(g.n.max(1));
    let cchunk = g.ci.div_ceil(want).max(8.min(g.ci)).max(1);
    let pointwise = g.is_pointwise();
    let tasks: Vec<(usize, usize, usize)> = (0..g.n)
        .flat_map(|n| chunks(g.ci, cchunk).map(move |(c0, cn)| (n, c0, cn)))
        .collect();
    let dxp = SendPtr(dx.as_mut_ptr());
    tasks
        .par_iter()
        .for_each_init(Vec::new, |col: &mut Vec<T>, &(n, c0, cn)| {
            let rows = cn * kvol;
            let pt = g.tile_cols(rows, TILE_BUDGET);
            let dyn_ = &dy[n * g.co * p_all..(n + 1) * g.co * p_all];
            // Wᵀ rows c0·kvol .. (c0+cn)·kvol: element (r, o) = w[o·kdim + r].
            let lhs = Mat {
                ptr: w[c0 * kvol..].as_ptr(),
                rs: 1,
                cs: kdim as isize,
            };
            // SAFETY: this task owns dx[n, c0..c0+cn, :].
            let dxn = unsafe {
                std::slice::from_raw_parts_mut(dxp.get().add(n * g.ci * ivol), g.ci * ivol)
            };
            if pointwise {
                // dx rows are the GEMM output directly (P = ivol).
                let rhs = Mat {
                    ptr: dyn_.as_ptr(),
                    rs: p_all as isize,
                    cs: 1,
                };
                // SAFETY: dst = dx[n, c0..c0+cn, :], in bounds, owned by this task.
                unsafe {
                    gemm_acc(
                        rows,
                        p_all,
                        g.co,
                        dxn[c0 * ivol..].as_mut_ptr(),
                        ivol as isize,
                        1,
                        false,
                        lhs,
                        rhs,
                    );
                }
                return;
            }
            if col.len() < rows * pt {
                col.resize(rows * pt, T::from_f64(0.0));
            }
            for (p0, len) in chunks(p_all, pt) {
                let rhs = Mat {
                    ptr: dyn_[p0..].as_ptr(),
                    rs: p_all as isize,
                    cs: 1,
                };
                // SAFETY: col holds rows × len elements; lhs/rhs are in bounds.
                unsafe {
                    gemm_acc(
                        rows,
                        len,
                        g.co,
                        col.as_mut_ptr(),
                        len as isize,
                        1,
                        false,
                        lhs,
                        rhs,
                    )
                };
                col2im_add(g, &col[..rows * len], c0, c0 + cn, p0, len, dxn);
            }
        });
}

/// For a stride-1 convolution with `p < k` (and a kernel larger than 1), the geometry
/// and weight of the forward convolution that computes its input gradient:
/// `w'[c, o, a, b, e] = w[o, c, kd−1−a, kh−1−b, kw−1−e]`, padding `k − 1 − p`.
fn flipped<T: WithDType>(g: &Geom, w: &[T]) -> Option<(Geom, Vec<T>)> {
    if g.s != [1, 1, 1] || g.is_pointwise() || (0..3).any(|a| g.p[a] >= g.k[a]) {
        return None;
    }
    let p = [
        g.k[0] - 1 - g.p[0],
        g.k[1] - 1 - g.p[1],
        g.k[2] - 1 - g.p[2],
    ];
    let gf = Geom::new(g.n, g.co, g.ci, g.o, g.k, [1, 1, 1], p).filter(|gf| gf.o == g.i)?;
    let kv = g.kvol();
    let mut wf = vec![T::from_f64(0.0); w.len()];
    for o in 0..g.co {
        for c in 0..g.ci {
            let src = &w[(o * g.ci + c) * kv..(o * g.ci + c + 1) * kv];
            let dst = &mut wf[(c * g.co + o) * kv..(c * g.co + o + 1) * kv];
            // Reversing the flat (a, b, e) index reverses all three axes at once.
            for (d, s) in dst.iter_mut().zip(src.iter().rev()) {
                *d = *s;
            }
        }
    }
    Some((gf, wf))
}

/// Weight gradient: `dw (co, ci, k) = Σ_n dy[n] · X_col[n]ᵀ`. `dw` is overwritten.
pub(crate) fn conv_grad_weight<T: WithDType>(g: &Geom, x: &[T], dy: &[T], dw: &mut [T]) {
    conv_grad_weight_srcs(g, &[(x, g.ci)], dy, dw)
}

/// [`conv_grad_weight`] for the channel concatenation of `srcs` (as [`conv_fwd_srcs`]):
/// each source fills its own column block of `dw`.
///
/// Tasks are (image, tile); each thread accumulates into its own `co × ci·kvol` buffer
/// and the buffers are summed at the end.
pub(crate) fn conv_grad_weight_srcs<T: WithDType>(
    g: &Geom,
    srcs: &[(&[T], usize)],
    dy: &[T],
    dw: &mut [T],
) {
    if use_shifted(g, Kernel::GradWeight) {
        conv_grad_weight_shifted(g, srcs, dy, dw)
    } else {
        conv_grad_weight_im2col(g, srcs, dy, dw)
    }
}

/// [`conv_grad_weight_srcs`] through column-matrix tiles (any stride and padding).
pub(crate) fn conv_grad_weight_im2col<T: WithDType>(
    g: &Geom,
    srcs: &[(&[T], usize)],
    dy: &[T],
    dw: &mut [T],
) {
    let (kdim, kvol, p_all, ivol) = (g.kdim(), g.kvol(), g.ovol(), g.ivol());
    let max_rows = srcs.iter().map(|s| s.1).max().unwrap_or(0) * kvol;
    let pt = g.tile_cols(kdim, TILE_BUDGET);
    let tasks: Vec<(usize, usize, usize)> = (0..g.n)
        .flat_map(|n| chunks(p_all, pt).map(move |(p0, len)| (n, p0, len)))
        .collect();
    let threads = rayon::current_num_threads().max(1);
    let per = tasks.len().div_ceil(threads).max(1);
    let pointwise = g.is_pointwise();
    let zero = T::from_f64(0.0);
    let partials: Vec<Vec<T>> = tasks
        .par_chunks(per)
        .map(|mine| {
            let mut acc = vec![zero; g.co * kdim];
            let mut col = if pointwise {
                Vec::new()
            } else {
                vec![zero; max_rows * pt]
            };
            let mut first = true;
            for &(n, p0, len) in mine {
                let lhs = Mat {
                    ptr: dy[n * g.co * p_all + p0..].as_ptr(),
                    rs: p_all as isize,
                    cs: 1,
                };
                let mut c_off = 0;
                for &(src, cs) in srcs {
                    let rows = cs * kvol;
                    let xn = &src[n * cs * ivol..(n + 1) * cs * ivol];
                    let rhs = if pointwise {
                        // X_colᵀ element (q, r) = x[r·ivol + p0 + q]
                        Mat {
                            ptr: xn[p0..].as_ptr(),
                            rs: 1,
                            cs: ivol as isize,
                        }
                    } else {
                        im2col(g, xn, 0, cs, p0, len, &mut col[..rows * len]);
                        Mat {
                            ptr: col.as_ptr(),
                            rs: 1,
                            cs: len as isize,
                        }
                    };
                    // SAFETY: acc is this task's own co × kdim buffer; the destination is
                    // its column block c_off·kvol .. + rows; views are in bounds.
                    unsafe {
                        gemm_acc(
                            g.co,
                            rows,
                            len,
                            acc.as_mut_ptr().add(c_off * kvol),
                            kdim as isize,
                            1,
                            !first,
                            lhs,
                            rhs,
                        )
                    };
                    c_off += cs;
                }
                first = false;
            }
            acc
        })
        .collect();
    dw.fill(zero);
    for part in &partials {
        for (d, v) in dw.iter_mut().zip(part) {
            *d += *v;
        }
    }
}

/// `Σ row` in f64 lanes.
#[inline(always)]
fn row_sum<T: WithDType>(row: &[T]) -> f64 {
    lane_sum(row, |v| v)
}

avx2_dispatch! {
    /// [`row_sum`], with AVX2 + FMA when available.
    fn row_sum_d<T: WithDType>(row: &[T]) -> f64 => row_sum
}

/// Bias gradient: `db[o] = Σ_n Σ_p dy[n][o][p]` for `dy (n, c, P)`.
pub(crate) fn bias_grad<T: WithDType>(n: usize, c: usize, p_all: usize, dy: &[T], db: &mut [T]) {
    db.par_iter_mut().enumerate().for_each(|(o, d)| {
        let s: f64 = (0..n)
            .map(|img| {
                let row = &dy[(img * c + o) * p_all..(img * c + o + 1) * p_all];
                row_sum_d(row)
            })
            .sum();
        *d = T::from_f64(s);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct 7-loop convolution.
    fn naive(g: &Geom, x: &[f64], w: &[f64], b: &[f64]) -> Vec<f64> {
        let mut y = vec![0.0; g.n * g.co * g.ovol()];
        let [od, oh, ow] = g.o;
        let [kd, kh, kw] = g.k;
        for n in 0..g.n {
            for o in 0..g.co {
                for z in 0..od {
                    for yy in 0..oh {
                        for xx in 0..ow {
                            let mut s = b[o];
                            for c in 0..g.ci {
                                for a in 0..kd {
                                    for bb in 0..kh {
                                        for e in 0..kw {
                                            let iz = (z * g.s[0] + a) as isize - g.p[0] as isize;
                                            let iy = (yy * g.s[1] + bb) as isize - g.p[1] as isize;
                                            let ix = (xx * g.s[2] + e) as isize - g.p[2] as isize;
                                            if iz < 0 || iy < 0 || ix < 0 {
                                                continue;
                                            }
                                            let (iz, iy, ix) =
                                                (iz as usize, iy as usize, ix as usize);
                                            if iz >= g.i[0] || iy >= g.i[1] || ix >= g.i[2] {
                                                continue;
                                            }
                                            s += x[((n * g.ci + c) * g.i[0] + iz)
                                                * g.i[1]
                                                * g.i[2]
                                                + iy * g.i[2]
                                                + ix]
                                                * w[(((o * g.ci + c) * kd + a) * kh + bb) * kw + e];
                                        }
                                    }
                                }
                            }
                            y[((n * g.co + o) * od + z) * oh * ow + yy * ow + xx] = s;
                        }
                    }
                }
            }
        }
        y
    }

    fn data(len: usize, seed: usize) -> Vec<f64> {
        (0..len)
            .map(|v| (((v * 37 + seed * 11) % 23) as f64 - 11.0) / 7.0)
            .collect()
    }

    /// The shifted-GEMM kernels against the naive convolution (forward) and the im2col
    /// kernel (weight gradient), on every stride-1 geometry they accept, including
    /// channel-concatenated sources and tiles that split the outer axis.
    #[test]
    fn shifted_kernels_match_naive_and_im2col() {
        use super::super::shifted::{applies, conv_fwd_shifted, conv_grad_weight_shifted};
        let cases = [
            Geom::new(2, 3, 4, [1, 9, 7], [1, 3, 3], [1, 1, 1], [0, 1, 1]),
            Geom::new(2, 3, 4, [1, 9, 7], [1, 3, 3], [1, 1, 1], [0, 0, 0]),
            Geom::new(1, 2, 3, [1, 6, 5], [1, 3, 3], [1, 1, 1], [0, 2, 2]),
            Geom::new(1, 2, 3, [1, 6, 5], [1, 2, 2], [1, 1, 1], [0, 1, 1]),
            Geom::new(2, 3, 2, [4, 5, 6], [3, 3, 3], [1, 1, 1], [1, 1, 1]),
            Geom::new(1, 2, 3, [3, 4, 5], [3, 3, 3], [1, 1, 1], [0, 0, 0]),
            // Several tiles along the outer axis (height in 2D, depth in 3D).
            Geom::new(1, 9, 40, [1, 130, 60], [1, 3, 3], [1, 1, 1], [0, 1, 1]),
            Geom::new(1, 4, 30, [6, 40, 40], [3, 3, 3], [1, 1, 1], [1, 1, 1]),
        ];
        for g in cases {
            let g = g.expect("valid geometry");
            assert!(applies(&g), "{g:?}");
            if g.co >= 30 {
                assert!(super::super::shifted::tile_count(&g) > 1, "{g:?}");
            }
            let x = data(g.n * g.ci * g.ivol(), 1);
            let w = data(g.co * g.kdim(), 2);
            let b = data(g.co, 3);
            let mut y = vec![f64::NAN; g.n * g.co * g.ovol()];
            // Two sources: channels 0..1 and 1..ci, as conv_cat passes them.
            let split = g.n * g.ivol();
            let (xa, xb): (Vec<f64>, Vec<f64>) = {
                let (mut a, mut bb) = (Vec::new(), Vec::new());
                for n in 0..g.n {
                    let img = &x[n * g.ci * g.ivol()..(n + 1) * g.ci * g.ivol()];
                    a.extend_from_slice(&img[..g.ivol()]);
                    bb.extend_from_slice(&img[g.ivol()..]);
                }
                (a, bb)
            };
            assert_eq!(xa.len(), split);
            let srcs = [(&xa[..], 1), (&xb[..], g.ci - 1)];
            conv_fwd_shifted(&g, &srcs, &w, Some(&b), &mut y);
            let r = naive(&g, &x, &w, &b);
            for (a, e) in y.iter().zip(&r) {
                assert!((a - e).abs() < 1e-10, "{g:?}: {a} vs {e}");
            }
            let dy = data(y.len(), 4);
            let mut dw = vec![f64::NAN; w.len()];
            conv_grad_weight_shifted(&g, &srcs, &dy, &mut dw);
            let mut dw_ref = vec![0.0; w.len()];
            conv_grad_weight_im2col(&g, &[(&x[..], g.ci)], &dy, &mut dw_ref);
            for (a, e) in dw.iter().zip(&dw_ref) {
                assert!((a - e).abs() < 1e-9 * e.abs().max(1.0), "{g:?}: {a} vs {e}");
            }
        }
    }

    #[test]
    fn kernels_match_naive_and_are_adjoint() {
        let cases = [
            Geom::new(2, 3, 4, [1, 9, 7], [1, 3, 3], [1, 1, 1], [0, 1, 1]),
            Geom::new(1, 2, 3, [3, 5, 6], [3, 3, 3], [2, 2, 2], [1, 1, 1]),
            Geom::new(3, 5, 2, [1, 4, 4], [1, 1, 1], [1, 1, 1], [0, 0, 0]),
            Geom::new(2, 3, 2, [2, 6, 4], [2, 2, 2], [2, 2, 2], [0, 0, 0]),
        ];
        for g in cases {
            let g = g.expect("valid geometry");
            let x = data(g.n * g.ci * g.ivol(), 1);
            let w = data(g.co * g.kdim(), 2);
            let b = data(g.co, 3);
            let mut y = vec![0.0; g.n * g.co * g.ovol()];
            conv_fwd(&g, &x, &w, Some(&b), &mut y);
            let r = naive(&g, &x, &w, &b);
            for (a, e) in y.iter().zip(&r) {
                assert!((a - e).abs() < 1e-10, "{g:?}: {a} vs {e}");
            }
            // Adjoint identities: <conv(x), dy> = <x, grad_input(dy)> = <w, grad_weight(x, dy)>.
            let dy = data(y.len(), 4);
            let mut y0 = vec![0.0; y.len()];
            conv_fwd(&g, &x, &w, None, &mut y0);
            let lhs: f64 = y0.iter().zip(&dy).map(|(a, b)| a * b).sum();
            let mut dx = vec![1.0; x.len()];
            conv_grad_input(&g, &dy, &w, &mut dx);
            let via_x: f64 = x.iter().zip(&dx).map(|(a, b)| a * b).sum();
            let mut dw = vec![1.0; w.len()];
            conv_grad_weight(&g, &x, &dy, &mut dw);
            let via_w: f64 = w.iter().zip(&dw).map(|(a, b)| a * b).sum();
            assert!((lhs - via_x).abs() < 1e-9 * lhs.abs().max(1.0), "{g:?}");
            assert!((lhs - via_w).abs() < 1e-9 * lhs.abs().max(1.0), "{g:?}");
            let mut db = vec![0.0; g.co];
            bias_grad(g.n, g.co, g.ovol(), &dy, &mut db);
            let via_b: f64 = db.iter().sum();
            assert!((via_b - dy.iter().sum::<f64>()).abs() < 1e-9);
        }
    }
}
