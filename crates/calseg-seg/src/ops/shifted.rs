//! Stride-1 convolutions without a column matrix: every kernel tap is one GEMM over a
//! *shifted view* of the zero-padded input ("shifted GEMMs", an implicit im2col).
//!
//! Lay the padded input of one image out as `ci` planes of `P = Dp·Hp·Wp` values
//! (`Dp = D + 2p_d`, …). For a stride-1 convolution an output voxel `(z, h, w)` reads tap
//! `t = (a, b, e)` at padded position `(z + a, h + b, w + e)`, i.e. at flat index
//! `q + off(t)` with `q = (z·Hp + h)·Wp + w` and `off(t) = (a·Hp + b)·Wp + e`. So if the
//! output is computed on the *extended* grid `q` (the padded grid's indexing, where the
//! positions with `h ≥ oh` or `w ≥ ow` are junk and dropped), each tap is one matrix
//! product with a constant shift:
//!
//! - forward:         `Y_ext[o, q] = Σ_t Σ_c W[o, c, t] · Xp[c, q + off(t)]`
//!   (`kvol` GEMMs of `co × ci` times `ci × Q`, accumulated in one output tile)
//! - weight gradient: `dW[o, c, t] = Σ_q dY_ext[o, q] · Xp[c, q + off(t)]`
//!   (`kvol` GEMMs of `co × Q` times `Q × ci`, with `dY_ext` zero at the junk positions)
//!
//! and the input gradient of a stride-1 convolution is itself a stride-1 convolution (of
//! `dY` with the flipped kernel, see `kernels::flipped`), so it takes the forward path.
//!
//! Compared with im2col, the only copies are the padded input tile (≈ 1× the input
//! instead of `kvol`×) and the extended output tile (≈ 1× the output); gemm's own packing
//! does the rest in cache. Work is tiled along the outermost axis (height in 2D, depth in
//! 3D) so one tile's input and output stay L2-sized, and parallel over (image, tile).

use super::geom::Geom;
use super::kernels::{Mat, SendPtr, TILE_BUDGET, gemm_acc};
use candle_core::WithDType;
use rayon::prelude::*;

/// Layout of the padded / extended grids of a stride-1 convolution.
#[derive(Clone, Copy, Debug)]
struct Ext {
    /// Padded sizes `(Dp, Hp, Wp)`.
    pad: [usize; 3],
    /// The outer (tiled) axis: 0 (depth) for 3D, 1 (height) for 2D.
    ax: usize,
    /// Values per step along the outer axis (`Hp·Wp` in 3D, `Wp` in 2D).
    unit: usize,
    /// Flat offset of every tap, in weight order `(a, b, e)`.
    offs: [usize; 27],
    /// Values the last tap may read past the tile's last padded row.
    extra: usize,
}

impl Ext {
    fn new(g: &Geom) -> Self {
        let pad = [
            g.i[0] + 2 * g.p[0],
            g.i[1] + 2 * g.p[1],
            g.i[2] + 2 * g.p[2],
        ];
        let ax = if g.i[0] > 1 || g.k[0] > 1 || g.p[0] > 0 {
            0
        } else {
            1
        };
        let unit = pad[ax + 1..].iter().product();
        let mut offs = [0; 27];
        let mut t = 0;
        for a in 0..g.k[0] {
            for b in 0..g.k[1] {
                for e in 0..g.k[2] {
                    offs[t] = (a * pad[1] + b) * pad[2] + e;
                    t += 1;
                }
            }
        }
        let max_off = offs[..g.kvol()].iter().copied().max().unwrap_or(0);
        let extra = (max_off + 1).saturating_sub((g.k[ax] - 1) * unit);
        Self {
            pad,
            ax,
            unit,
            offs,
            extra,
        }
    }

    /// Length of one channel's padded tile for `tt` outer output steps.
    fn plane(&self, g: &Geom, tt: usize) -> usize {
        (tt + g.k[self.ax] - 1) * self.unit + self.extra
    }

    /// Outer output steps per tile: the padded input (`ci` planes) and the extended output
    /// (`co` planes) of a tile fill about the L2 budget.
    fn tile_steps(&self, g: &Geom) -> usize {
        let per = (g.ci + g.co) * self.unit;
        (TILE_BUDGET * 2 / per.max(1)).clamp(1, g.o[self.ax])
    }

    /// Calls `f(ext_index, out_index, len)` for every run of valid output positions of the
    /// outer steps `t0 .. t0 + tt` (a run is one output row along the width).
    fn valid_runs(&self, g: &Geom, t0: usize, tt: usize, mut f: impl FnMut(usize, usize, usize)) {
        let [_, oh, ow] = g.o;
        for t in 0..tt {
            if self.ax == 1 {
                f(t * self.unit, (t0 + t) * ow, ow);
            } else {
                for h in 0..oh {
                    f(
                        t * self.unit + h * self.pad[2],
                        ((t0 + t) * oh + h) * ow,
                        ow,
                    );
                }
            }
        }
    }
}

/// True when [`conv_fwd_shifted`] / [`conv_grad_weight_shifted`] can compute `g`: stride
/// 1, a kernel larger than 1×1×1 of at most 3 per axis, padding smaller than the kernel.
pub(crate) fn applies(g: &Geom) -> bool {
    g.s == [1, 1, 1] && !g.is_pointwise() && (0..3).all(|a| g.k[a] <= 3 && g.p[a] < g.k[a])
}

/// The two kernels with a shifted-GEMM variant (the input gradient of a stride-1
/// convolution is a forward convolution).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    Forward,
    GradWeight,
}

/// Which path a stride-1 convolution takes. Measured per layer (`calseg bench
/// conv-kernels`, `benches/RESULTS.md`, 2026-12-05): shifted GEMMs win on wide planes,
/// where im2col copies 9× a large input and the per-tap junk columns cost ≤ 3 % — e.g.
/// the weight gradient of a 16→16 3×3 conv at 128² takes 3.6 ms instead of 5.2 ms — and
/// lose on small planes (8²: 25 % junk, short GEMMs) and, in the forward pass, with few
/// input channels (K = ci per tap: 2 → 16 at 128² is 3.5× slower). The rule is a fixed
/// function of the geometry, so a run's numbers never depend on timing.
/// `CALSEG_CONV=im2col` or `=shifted` overrides it (for A/B measurements).
pub(crate) fn use_shifted(g: &Geom, kernel: Kernel) -> bool {
    #[derive(Clone, Copy, PartialEq)]
    enum Force {
        Auto,
        Im2col,
        Shifted,
    }
    static FORCE: std::sync::OnceLock<Force> = std::sync::OnceLock::new();
    let force = *FORCE.get_or_init(|| match std::env::var("CALSEG_CONV").as_deref() {
        Ok("im2col") => Force::Im2col,
        Ok("shifted") => Force::Shifted,
        _ => Force::Auto,
    });
    if !applies(g) {
        return false;
    }
    match force {
        Force::Im2col => false,
        Force::Shifted => true,
        Force::Auto => {
            // 2D: planes 128 wide and wider; 3D: 64² planes and larger (more junk per plane).
            let wide = if g.i[0] == 1 && g.k[0] == 1 {
                g.o[2] >= 128
            } else {
                g.o[2] >= 64 && g.o[1] >= 64
            };
            wide && (kernel == Kernel::GradWeight || g.ci >= 8)
        }
    }
}

/// Writes the padded input of outer steps `t0 .. t0 + tt` of one channel `xc` (`ivol`
/// values) into `dst` (`ext.plane(g, tt)` values; the trailing `extra` are left alone).
fn pad_tile<T: WithDType>(g: &Geom, ext: &Ext, xc: &[T], t0: usize, tt: usize, dst: &mut [T]) {
    let zero = T::from_f64(0.0);
    let [_, ih, iw] = g.i;
    let [_, _, wp] = ext.pad;
    let (ph, pw) = (g.p[1], g.p[2]);
    let rows = tt + g.k[ext.ax] - 1;
    for r in 0..rows {
        let row = &mut dst[r * ext.unit..(r + 1) * ext.unit];
        // Padded outer coordinate t0 + r → input coordinate t0 + r − p.
        let src = (t0 + r)
            .checked_sub(g.p[ext.ax])
            .filter(|&v| v < g.i[ext.ax]);
        let Some(s) = src else {
            row.fill(zero);
            continue;
        };
        if ext.ax == 1 {
            row[..pw].fill(zero);
            row[pw..pw + iw].copy_from_slice(&xc[s * iw..(s + 1) * iw]);
            row[pw + iw..].fill(zero);
        } else {
            let slice = &xc[s * ih * iw..(s + 1) * ih * iw];
            row[..ph * wp].fill(zero);
            for h in 0..ih {
                let r0 = (ph + h) * wp;
                row[r0..r0 + pw].fill(zero);
                row[r0 + pw..r0 + pw + iw].copy_from_slice(&slice[h * iw..(h + 1) * iw]);
                row[r0 + pw + iw..r0 + wp].fill(zero);
            }
            row[(ph + ih) * wp..].fill(zero);
        }
    }
    // Junk outputs read past the last row: keep it finite (0) so that a zero of dY there
    // contributes exactly nothing to the weight gradient.
    dst[rows * ext.unit..].fill(zero);
}

/// Number of outer-axis tiles of one image (tests check that multi-tile cases exist).
#[cfg(test)]
pub(crate) fn tile_count(g: &Geom) -> usize {
    let ext = Ext::new(g);
    g.o[ext.ax].div_ceil(ext.tile_steps(g))
}

/// Outer-axis tiles `(image, t0, tt)` of all images.
fn tasks(g: &Geom, ext: &Ext) -> Vec<(usize, usize, usize)> {
    let tt = ext.tile_steps(g);
    let steps = g.o[ext.ax];
    (0..g.n)
        .flat_map(|n| (0..steps.div_ceil(tt)).map(move |i| (n, i * tt, tt.min(steps - i * tt))))
        .collect()
}

/// Pads the channels of all `srcs` (each `(data, channels)`, data `(n, channels, i)`) for
/// the tile `(n, t0, tt)` — image `n`, outer steps `t0 .. t0 + tt` — into `xp` (`ci`
/// planes of `plane` values).
fn pad_sources<T: WithDType>(
    g: &Geom,
    ext: &Ext,
    srcs: &[(&[T], usize)],
    (n, t0, tt): (usize, usize, usize),
    plane: usize,
    xp: &mut [T],
) {
    let ivol = g.ivol();
    let mut c = 0;
    for &(src, cs) in srcs {
        for k in 0..cs {
            let xc = &src[(n * cs + k) * ivol..(n * cs + k + 1) * ivol];
            pad_tile(g, ext, xc, t0, tt, &mut xp[c * plane..(c + 1) * plane]);
            c += 1;
        }
    }
}

/// Forward convolution of the channel concatenation of `srcs` (as
/// `kernels::conv_fwd_srcs`) for a geometry where [`applies`] holds. `y` (`n·co·ovol`)
/// is fully overwritten.
pub(crate) fn conv_fwd_shifted<T: WithDType>(
    g: &Geom,
    srcs: &[(&[T], usize)],
    w: &[T],
    b: Option<&[T]>,
    y: &mut [T],
) {
    let ext = Ext::new(g);
    let (kdim, kvol, ovol) = (g.kdim(), g.kvol(), g.ovol());
    let tasks = tasks(g, &ext);
    let yp = SendPtr(y.as_mut_ptr());
    let zero = T::from_f64(0.0);
    tasks.par_iter().for_each_init(
        || (Vec::new(), Vec::new()),
        |(xp, acc): &mut (Vec<T>, Vec<T>), &(n, t0, tt)| {
            let plane = ext.plane(g, tt);
            let q = tt * ext.unit;
            if xp.len() < g.ci * plane {
                xp.resize(g.ci * plane, zero);
            }
            if acc.len() < g.co * q {
                acc.resize(g.co * q, zero);
            }
            pad_sources(g, &ext, srcs, (n, t0, tt), plane, xp);
            for (t, &off) in ext.offs[..kvol].iter().enumerate() {
                let lhs = Mat {
                    ptr: w[t..].as_ptr(),
                    rs: kdim as isize,
                    cs: kvol as isize,
                };
                let rhs = Mat {
                    ptr: xp[off..].as_ptr(),
                    rs: plane as isize,
                    cs: 1,
                };
                // SAFETY: acc holds co × q values; lhs reads w[o·kdim + c·kvol + t] < w.len();
                // rhs reads xp[c·plane + off + j] with off + j < plane (Ext::extra).
                unsafe {
                    gemm_acc(
                        g.co,
                        q,
                        g.ci,
                        acc.as_mut_ptr(),
                        q as isize,
                        1,
                        t > 0,
                        lhs,
                        rhs,
                    )
                };
            }
            for o in 0..g.co {
                let bo = b.map_or(zero, |b| b[o]);
                let src = &acc[o * q..(o + 1) * q];
                // SAFETY: rows (n, o) of the outer steps t0..t0+tt belong to this task.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(yp.get().add((n * g.co + o) * ovol), ovol)
                };
                ext.valid_runs(g, t0, tt, |e, d, len| {
                    for (v, s) in dst[d..d + len].iter_mut().zip(&src[e..e + len]) {
                        *v = *s + bo;
                    }
                });
            }
        },
    );
}

/// Weight gradient `dw (co, ci, k) = Σ_n Σ_q dY_ext[n] · shift_t(Xp[n])ᵀ` of the channel
/// concatenation of `srcs` (as `kernels::conv_grad_weight_srcs`) for a geometry where
/// [`applies`] holds. `dw` is overwritten.
pub(crate) fn conv_grad_weight_shifted<T: WithDType>(
    g: &Geom,
    srcs: &[(&[T], usize)],
    dy: &[T],
    dw: &mut [T],
) {
    let ext = Ext::new(g);
    let (kdim, kvol, ovol) = (g.kdim(), g.kvol(), g.ovol());
    let tasks = tasks(g, &ext);
    let threads = rayon::current_num_threads().max(1);
    let per = tasks.len().div_ceil(threads).max(1);
    let zero = T::from_f64(0.0);
    let partials: Vec<Vec<T>> = tasks
        .par_chunks(per)
        .map(|mine| {
            let mut acc = vec![zero; g.co * kdim];
            let (mut xp, mut dye) = (Vec::new(), Vec::new());
            for &(n, t0, tt) in mine {
                let plane = ext.plane(g, tt);
                let q = tt * ext.unit;
                if xp.len() < g.ci * plane {
                    xp.resize(g.ci * plane, zero);
                }
                pad_sources(g, &ext, srcs, (n, t0, tt), plane, &mut xp);
                // dY on the extended grid, zero at the junk positions.
                dye.clear();
                dye.resize(g.co * q, zero);
                for o in 0..g.co {
                    let src = &dy[(n * g.co + o) * ovol..(n * g.co + o + 1) * ovol];
                    let dst = &mut dye[o * q..(o + 1) * q];
                    ext.valid_runs(g, t0, tt, |e, d, len| {
                        dst[e..e + len].copy_from_slice(&src[d..d + len]);
                    });
                }
                for (t, &off) in ext.offs[..kvol].iter().enumerate() {
                    let lhs = Mat {
                        ptr: dye.as_ptr(),
                        rs: q as isize,
                        cs: 1,
                    };
                    let rhs = Mat {
                        ptr: xp[off..].as_ptr(),
                        rs: 1,
                        cs: plane as isize,
                    };
                    // SAFETY: acc is this task's co × kdim buffer, written at
                    // o·kdim + c·kvol + t; lhs holds co × q values; rhs reads
                    // xp[c·plane + off + j] with off + j < plane.
                    unsafe {
                        gemm_acc(
                            g.co,
                            g.ci,
                            q,
                            acc.as_mut_ptr().add(t),
                            kdim as isize,
                            kvol as isize,
                            true,
                            lhs,
                            rhs,
                        )
                    };
                }
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
