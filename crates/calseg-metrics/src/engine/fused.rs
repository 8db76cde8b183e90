//! The fused per-voxel loop: over the channels of a group of voxels, confidence, first
//! argmax, validation, Brier and NLL terms and the histogram voxels, in one pass; and the
//! choice, once per chunk, of its compile-time [`Variant`].

use std::marker::PhantomData;

use super::lanes::{LaneHist, W};
use crate::edges::SlotTable;
use crate::input::Probability;

/// Moves the binary exponent of each product into `ex`, leaving a mantissa in `[1, 2)`.
#[inline(always)]
pub(crate) fn renorm(prod: &mut [f64; W], ex: &mut [i64; W]) {
    const MANT: u64 = 0x000F_FFFF_FFFF_FFFF;
    const ONE_EXP: u64 = 1023 << 52;
    for l in 0..W {
        let bits = prod[l].to_bits();
        ex[l] += ((bits >> 52) & 0x7FF) as i64 - 1023;
        prod[l] = f64::from_bits((bits & MANT) | ONE_EXP);
    }
}

/// Per-chunk inputs of the fused loop.
pub(crate) struct Fused<'s, T> {
    pub cls: &'s [u32],
    pub ins: &'s [u32],
    pub tol: T,
    pub check: bool,
    pub floor: f64,
    pub table: &'s SlotTable<T>,
}

/// Accumulators the fused loop writes to.
pub(crate) struct Sinks<'s, T> {
    pub pred: &'s mut [u32],
    pub brier: &'s mut [f64; W],
    pub prod: &'s mut [f64; W],
    pub ex: &'s mut [i64; W],
    pub top: &'s mut LaneHist<T>,
    pub class: &'s mut [LaneHist<T>],
}

/// The fused loop for voxels `i0 .. i0 + N` of the chunk (`N = W` for full groups, `1` for
/// the tail; the arithmetic per voxel is the same): over the channels, the confidence
/// (max), first argmax and the validation sum and minimum; with `SC` the Brier term
/// `Σ_{c≠y} p_c² + (p_y − 1)²` (squares of f32 values, exact in f64) and `p_y`; with `CW` the
/// class-wise histogram voxel of every channel; with `TOP` the top-label histogram voxel.
/// Returns whether a voxel failed validation (sum within `tol`, min ≥ 0, max ≤ 1).
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn fused<
    'p,
    T: Probability,
    const N: usize,
    const SC: bool,
    const MASKED: bool,
    const TOP: bool,
    const CW: bool,
>(
    chan: &impl Fn(usize) -> &'p [T],
    k: usize,
    i0: usize,
    f: &Fused<'_, T>,
    out: &mut Sinks<'_, T>,
) -> bool {
    // Value arrays (new arrays, never a conditional store into an old one): in-place
    // `a[l] = if c { x } else { a[l] }` is turned into masked stores, very slow on AMD.
    use std::array::from_fn;
    let load = |c: usize| -> [T; N] {
        let p = &chan(c)[i0..i0 + N];
        from_fn(|l| p[l])
    };
    let y: [u32; N] = from_fn(|l| f.cls[i0 + l]);
    let inside: [bool; N] = from_fn(|l| !MASKED || f.ins[i0 + l] != 0);
    let p0 = load(0);
    let mut cf = p0;
    let mut pr = [0u32; N];
    let mut s = p0;
    let mut mn = p0;
    let mut br = [0.0f64; N];
    let mut py = [T::ZERO; N];
    if SC {
        br = from_fn(|l| {
            let q = if y[l] == 0 { 0.0 } else { p0[l].to_f64() };
            q * q
        });
        py = from_fn(|l| if y[l] == 0 { p0[l] } else { T::ZERO });
    }
    if CW {
        for l in 0..N {
            out.class[0].voxel(f.table, p0[l], y[l] == 0, inside[l], i0 + l);
        }
    }
    for c in 1..k {
        let cu = c as u32;
        let p = load(c);
        let gt: [bool; N] = from_fn(|l| p[l] > cf[l]);
        cf = from_fn(|l| if gt[l] { p[l] } else { cf[l] });
        pr = from_fn(|l| if gt[l] { cu } else { pr[l] });
        s = from_fn(|l| s[l] + p[l]);
        mn = from_fn(|l| if p[l] < mn[l] { p[l] } else { mn[l] });
        if SC {
            br = from_fn(|l| {
                let q = if y[l] == cu { 0.0 } else { p[l].to_f64() };
                br[l] + q * q
            });
            py = from_fn(|l| if y[l] == cu { p[l] } else { py[l] });
        }
        if CW {
            for l in 0..N {
                out.class[c].voxel(f.table, p[l], y[l] == cu, inside[l], i0 + l);
            }
        }
    }
    out.pred[i0..i0 + N].copy_from_slice(&pr);
    if TOP {
        for l in 0..N {
            out.top
                .voxel(f.table, cf[l], pr[l] == y[l], inside[l], i0 + l);
        }
    }
    let mut bad = false;
    if f.check {
        for l in 0..N {
            let d = s[l] - T::ONE;
            let ok = d <= f.tol && d >= T::ZERO - f.tol && mn[l] >= T::ZERO && cf[l] <= T::ONE;
            bad |= !ok;
        }
    }
    if SC {
        for l in 0..N {
            let d = py[l].to_f64() - 1.0;
            let b = br[l] + d * d;
            let lane = (i0 + l) % W;
            out.brier[lane] += if inside[l] { b } else { 0.0 };
            out.prod[lane] *= if inside[l] {
                py[l].to_f64().max(f.floor)
            } else {
                1.0
            };
        }
    }
    bad
}

/// Which optional parts the fused loop computes. Each combination is compiled as its own
/// instance of the loop, so the loop itself tests none of them; [`Variant::dispatch`]
/// picks the instance once per chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Variant {
    /// Brier and NLL terms (`SC`).
    pub scores: bool,
    /// Only the voxels of the region feed the histograms and scores (`MASKED`).
    pub masked: bool,
    /// The top-label histogram (`TOP`).
    pub top: bool,
    /// The class-wise histograms (`CW`).
    pub classwise: bool,
}

/// Code written once, generic over the four switches of a [`Variant`].
pub(crate) trait Monomorphic {
    /// Runs the instance for these switches.
    fn call<const SC: bool, const MASKED: bool, const TOP: bool, const CW: bool>(self) -> bool;
}

impl Variant {
    /// Calls `f` with the switches of `self` as compile-time constants: four two-way
    /// branches, one per switch (the compiler emits one instance per combination).
    #[inline(always)]
    pub(crate) fn dispatch<F: Monomorphic>(self, f: F) -> bool {
        if self.scores {
            self.with_scores::<true, F>(f)
        } else {
            self.with_scores::<false, F>(f)
        }
    }

    #[inline(always)]
    fn with_scores<const SC: bool, F: Monomorphic>(self, f: F) -> bool {
        if self.masked {
            self.with_mask::<SC, true, F>(f)
        } else {
            self.with_mask::<SC, false, F>(f)
        }
    }

    #[inline(always)]
    fn with_mask<const SC: bool, const MASKED: bool, F: Monomorphic>(self, f: F) -> bool {
        if self.top {
            self.with_top::<SC, MASKED, true, F>(f)
        } else {
            self.with_top::<SC, MASKED, false, F>(f)
        }
    }

    #[inline(always)]
    fn with_top<const SC: bool, const MASKED: bool, const TOP: bool, F: Monomorphic>(
        self,
        f: F,
    ) -> bool {
        if self.classwise {
            f.call::<SC, MASKED, TOP, true>()
        } else {
            f.call::<SC, MASKED, TOP, false>()
        }
    }
}

/// The fused loop over one chunk, waiting for its [`Variant`]: `groups` full groups of
/// [`W`] voxels, then the tail up to `m`; `chan(c)` is channel `c` of the chunk.
pub(crate) struct FusedRun<'r, 'p, 's, 't, T, C> {
    /// Classes.
    pub k: usize,
    /// Use the AVX2 kernel for the full groups.
    pub simd: bool,
    /// Channel `c` of the chunk.
    pub chan: &'r C,
    /// Full groups of [`W`] voxels.
    pub groups: usize,
    /// Voxels in the chunk.
    pub m: usize,
    /// Per-chunk inputs.
    pub fz: &'r Fused<'s, T>,
    /// Accumulators.
    pub out: &'r mut Sinks<'t, T>,
    /// The lifetime of the channel slices.
    pub chans: PhantomData<&'p [T]>,
}

impl<'p, T: Probability, C: Fn(usize) -> &'p [T]> Monomorphic for FusedRun<'_, 'p, '_, '_, T, C> {
    /// AVX2 kernel for the full groups when enabled, the portable loop otherwise and for
    /// the tail; NLL products renormalised every 16 groups. Returns whether a voxel
    /// failed validation.
    #[inline(always)]
    fn call<const SC: bool, const MASKED: bool, const TOP: bool, const CW: bool>(self) -> bool {
        let FusedRun {
            k,
            simd,
            chan,
            groups,
            m,
            fz,
            out,
            ..
        } = self;
        let mut bad = false;
        let mut done = false;
        #[cfg(target_arch = "x86_64")]
        if simd && let Some(kernel) = crate::simd::Kernel::new(fz, out) {
            let ch32 = |c: usize| T::as_f32_slice(chan(c)).unwrap_or(&[]);
            // SAFETY: `simd` is only set when `simd_enabled()` found AVX2 and popcnt on
            // this CPU at run time, the features `Kernel::run` is compiled for.
            bad |= unsafe { kernel.run::<SC, MASKED, TOP, CW>(&ch32, k, groups) };
            done = true;
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = simd;
        if !done {
            for g in 0..groups {
                bad |= fused::<T, W, SC, MASKED, TOP, CW>(chan, k, g * W, fz, out);
                if SC && g % 16 == 15 {
                    renorm(out.prod, out.ex);
                }
            }
        }
        for i in groups * W..m {
            bad |= fused::<T, 1, SC, MASKED, TOP, CW>(chan, k, i, fz, out);
        }
        if SC {
            renorm(out.prod, out.ex);
        }
        bad
    }
}
