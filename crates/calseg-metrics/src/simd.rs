//! AVX2 version of the fused loop of the engine, for f32 probabilities.
//!
//! It computes exactly what the portable loop (`engine::fused`) computes, lane for lane and
//! in the same order (no FMA, no reassociation), so results do not depend on which one
//! runs; unit tests check this bit for bit. The portable loop is what LLVM vectorises — or
//! not: it turns lane selects into masked stores (very slow on AMD CPUs) and does not
//! vectorise the bin guess or the packing of the histogram list; here they are written out.
//!
//! # Safety
//! Two things make the intrinsics here sound, and every `unsafe` block names which:
//! * **Target features.** The only entry point, [`Kernel::run`], is compiled with
//!   `#[target_feature(enable = "avx2,popcnt")]` and only called when
//!   `engine::simd_enabled()` found both features on this CPU at run time. Every other
//!   function here is an `#[inline(always)]` `unsafe fn` whose contract is "AVX2 and popcnt
//!   are enabled": it is inlined into `Kernel::run` and called from nowhere else.
//! * **Memory.** Loads and stores go through array references (`&[E; N]`), so an
//!   unaligned access of the array's size through its pointer stays inside it. Per-chunk
//!   accesses get them bounds-checked ([`group`]); the hot loop gets them unchecked
//!   ([`at`]), each use justified by the lengths `Kernel::run` checks once per chunk.

use std::arch::x86_64::*;

use crate::edges::SlotTable;
use crate::engine::{Fused, HOT_A, LaneHist, Sinks, W};
use crate::input::Probability;

/// Left-pack permutations: entry `mask` lists the lanes whose bit is set, in order.
const fn pack_table() -> [[u32; 8]; 256] {
    let mut t = [[0u32; 8]; 256];
    let mut m = 0;
    while m < 256 {
        let mut j = 0;
        let mut l = 0;
        while l < 8 {
            if m & (1 << l) != 0 {
                t[m][j] = l as u32;
                j += 1;
            }
            l += 1;
        }
        m += 1;
    }
    t
}
static PACK: [[u32; 8]; 256] = pack_table();

/// `s[i0 .. i0 + N]` as an array (bounds-checked: panics past the end, which the capacity
/// checks of [`Kernel::run`] rule out).
#[inline(always)]
fn group<E, const N: usize>(s: &[E], i0: usize) -> &[E; N] {
    match s[i0..].first_chunk::<N>() {
        Some(g) => g,
        None => panic!("SIMD group at {i0} past the end ({} elements)", s.len()),
    }
}

/// `s[i0 .. i0 + N]` as an array, without a bounds check (the hot loop's accesses).
///
/// # Safety
/// `i0 + N <= s.len()`.
#[inline(always)]
unsafe fn at<E, const N: usize>(s: &[E], i0: usize) -> &[E; N] {
    debug_assert!(i0 + N <= s.len());
    // SAFETY: the caller guarantees `i0 + N <= s.len()`, so the `N` elements from `i0`
    // lie inside `s`; `[E; N]` is laid out as `N` consecutive `E`.
    unsafe { &*s.as_ptr().add(i0).cast::<[E; N]>() }
}

/// Mutable [`at`].
///
/// # Safety
/// `i0 + N <= s.len()`.
#[inline(always)]
unsafe fn at_mut<E, const N: usize>(s: &mut [E], i0: usize) -> &mut [E; N] {
    debug_assert!(i0 + N <= s.len());
    // SAFETY: as in `at`; the borrow of `s` is exclusive.
    unsafe { &mut *s.as_mut_ptr().add(i0).cast::<[E; N]>() }
}

/// Mutable [`group`].
#[inline(always)]
fn group_mut<E, const N: usize>(s: &mut [E], i0: usize) -> &mut [E; N] {
    let len = s.len();
    match s[i0..].first_chunk_mut::<N>() {
        Some(g) => g,
        None => panic!("SIMD group at {i0} past the end ({len} elements)"),
    }
}

/// Eight f32 from memory.
#[inline(always)]
unsafe fn load_ps(a: &[f32; W]) -> __m256 {
    // SAFETY: AVX is enabled (module docs); `a` is exactly the 32 bytes read.
    unsafe { _mm256_loadu_ps(a.as_ptr()) }
}

/// Eight u32 from memory, as signed 32-bit lanes.
#[inline(always)]
unsafe fn load_epi32(a: &[u32; W]) -> __m256i {
    // SAFETY: AVX is enabled (module docs); `a` is exactly the 32 bytes read.
    unsafe { _mm256_loadu_si256(a.as_ptr().cast::<__m256i>()) }
}

/// `a += v`, four f64 lanes in memory.
#[inline(always)]
unsafe fn add_to_pd(a: &mut [f64; 4], v: __m256d) {
    let p = a.as_mut_ptr();
    // SAFETY: AVX is enabled (module docs); `p` points to exactly the 32 bytes of `a`.
    unsafe { _mm256_storeu_pd(p, _mm256_add_pd(_mm256_loadu_pd(p), v)) }
}

/// `a -= v`, eight u32 lanes in memory (`v = −1` in a lane adds one).
#[inline(always)]
unsafe fn sub_from_epi32(a: &mut [u32; W], v: __m256i) {
    let p = a.as_mut_ptr().cast::<__m256i>();
    // SAFETY: AVX2 is enabled (module docs); `p` points to exactly the 32 bytes of `a`.
    unsafe { _mm256_storeu_si256(p, _mm256_sub_epi32(_mm256_loadu_si256(p), v)) }
}

/// Broadcast constants of a slot table.
struct TabV {
    a_lo: __m256,
    a_hi: __m256,
    b_lo: __m256,
    b_hi: __m256,
    nf: __m256,
    delta: __m256,
    omd: __m256,
    n: __m256i,
    max_slot: __m256i,
    slot0: __m256i,
}

impl TabV {
    #[inline(always)]
    unsafe fn new(tab: &SlotTable<f32>) -> Self {
        // SAFETY: register-only broadcasts; AVX is enabled (module docs).
        unsafe {
            TabV {
                a_lo: _mm256_set1_ps(tab.a_lo),
                a_hi: _mm256_set1_ps(tab.a_hi),
                b_lo: _mm256_set1_ps(tab.b_lo),
                b_hi: _mm256_set1_ps(tab.b_hi),
                nf: _mm256_set1_ps(tab.nf),
                delta: _mm256_set1_ps(tab.delta),
                omd: _mm256_set1_ps(tab.one_minus_delta),
                n: _mm256_set1_epi32(tab.n as i32),
                max_slot: _mm256_set1_epi32(tab.max_slot as i32),
                slot0: _mm256_set1_epi32(tab.slot0 as i32),
            }
        }
    }
}

#[inline(always)]
unsafe fn widen(p: __m256) -> (__m256d, __m256d) {
    // SAFETY: register-only conversions; AVX is enabled (module docs).
    unsafe {
        (
            _mm256_cvtps_pd(_mm256_castps256_ps128(p)),
            _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(p)),
        )
    }
}

/// 32-bit lane mask → two 64-bit lane masks.
#[inline(always)]
unsafe fn mask_pd(m: __m256i) -> (__m256d, __m256d) {
    // SAFETY: register-only conversions; AVX2 is enabled (module docs).
    unsafe {
        (
            _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm256_castsi256_si128(m))),
            _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm256_extracti128_si256::<1>(m))),
        )
    }
}

/// Whether all eight voxels fall in the row of `x ∈ [lo, hi)` (`hi` inclusive with
/// `HI_CLOSED`) with hit mask `want` (all lanes of `hitp` equal to `want_hit`), inside.
#[inline(always)]
unsafe fn all_in<const HI_CLOSED: bool>(
    x: __m256,
    lo: __m256,
    hi: __m256,
    hit_lanes: __m256,
    inside: __m256,
) -> bool {
    // SAFETY: register-only compares; AVX is enabled (module docs).
    unsafe {
        let below = if HI_CLOSED {
            _mm256_cmp_ps::<_CMP_LE_OQ>(x, hi)
        } else {
            _mm256_cmp_ps::<_CMP_LT_OQ>(x, hi)
        };
        let range = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(x, lo), below);
        _mm256_movemask_ps(_mm256_and_ps(hit_lanes, _mm256_and_ps(range, inside))) == 0xFF
    }
}

/// The hot row (0: `HOT_A`, 1: `hot_b`) all eight voxels fall in, if any. The row that
/// matched last time is tested first (top-label and background histograms mostly hit the
/// last bin, the others bin 0).
#[inline(always)]
unsafe fn all_hot(
    tv: &TabV,
    x: __m256,
    hitm: __m256i,
    inside: __m256,
    last_b: bool,
) -> Option<usize> {
    // SAFETY: register-only operations; AVX is enabled (module docs).
    let (hitp, miss) = unsafe {
        let hitp = _mm256_castsi256_ps(hitm);
        (
            hitp,
            _mm256_andnot_ps(hitp, _mm256_castsi256_ps(_mm256_set1_epi32(-1))),
        )
    };
    // SAFETY: register-only compares; AVX is enabled (module docs).
    let a = || unsafe { all_in::<false>(x, tv.a_lo, tv.a_hi, miss, inside) };
    // SAFETY: as above.
    let b = || unsafe { all_in::<true>(x, tv.b_lo, tv.b_hi, hitp, inside) };
    if last_b {
        if b() {
            Some(1)
        } else if a() {
            Some(0)
        } else {
            None
        }
    } else if a() {
        Some(0)
    } else if b() {
        Some(1)
    } else {
        None
    }
}

/// The slot (see `SlotTable`) of each of eight values: the guess from `x · n`, exact
/// lookups for the whole group when a value lies near an inner edge (rare).
#[inline(always)]
unsafe fn slots(tv: &TabV, tab: &SlotTable<f32>, x: __m256) -> __m256i {
    // SAFETY: register-only arithmetic and compares; AVX2 is enabled (module docs).
    let (slot, near_edge) = unsafe {
        let t = _mm256_mul_ps(x, tv.nf);
        let gi = _mm256_cvttps_epi32(t);
        let fr = _mm256_sub_ps(t, _mm256_cvtepi32_ps(gi));
        let gp1 = _mm256_add_epi32(gi, _mm256_set1_epi32(1));
        let low = _mm256_and_ps(
            _mm256_and_ps(
                _mm256_castsi256_ps(_mm256_cmpgt_epi32(gi, _mm256_setzero_si256())),
                _mm256_cmp_ps::<_CMP_LT_OQ>(fr, tv.delta),
            ),
            _mm256_cmp_ps::<_CMP_NEQ_UQ>(x, _mm256_set1_ps(1.0)),
        );
        let high = _mm256_and_ps(
            _mm256_cmp_ps::<_CMP_GT_OQ>(fr, tv.omd),
            _mm256_castsi256_ps(_mm256_cmpgt_epi32(tv.n, gp1)),
        );
        let slot = _mm256_castps_si256(_mm256_blendv_ps(
            _mm256_castsi256_ps(_mm256_min_epu32(gp1, tv.max_slot)),
            _mm256_castsi256_ps(tv.slot0),
            _mm256_cmp_ps::<_CMP_EQ_OQ>(x, _mm256_setzero_ps()),
        ));
        (slot, _mm256_movemask_ps(_mm256_or_ps(low, high)) != 0)
    };
    if !near_edge {
        return slot;
    }
    let mut xa = [0f32; W];
    // SAFETY: AVX is enabled (module docs); `xa` is exactly the 32 bytes written.
    unsafe { _mm256_storeu_ps(xa.as_mut_ptr(), x) };
    let exact: [u32; W] = std::array::from_fn(|l| tab.slot(xa[l]) as u32);
    // SAFETY: AVX is enabled (module docs).
    unsafe { load_epi32(&exact) }
}

/// One histogram step for 8 voxels (see `LaneHist::voxel`): row, hot lanes, packing.
#[inline(always)]
unsafe fn hist8<T: Probability, const MASKED: bool>(
    tv: &TabV,
    tab: &SlotTable<f32>,
    x: __m256,
    hitm: __m256i,
    insm: __m256i,
    lh: &mut LaneHist<T>,
) {
    // SAFETY: register-only cast and movemask; AVX is enabled (module docs).
    let (inside, none_inside) = unsafe {
        (
            _mm256_castsi256_ps(insm),
            _mm256_movemask_ps(_mm256_castsi256_ps(insm)) == 0,
        )
    };
    if MASKED && none_inside {
        return; // the whole group is outside the region (e.g. background)
    }
    // Fast path: all eight voxels in the same hot row (in a real volume most groups are).
    // Same sums as the general path, which would only add +0.0 to the other row.
    // SAFETY: AVX is enabled (module docs).
    if let Some(half) = unsafe { all_hot(tv, x, hitm, inside, lh.last_b) } {
        lh.last_b = half == 1;
        // SAFETY: AVX2 is enabled (module docs).
        unsafe { add_hot(lh, half, x, _mm256_set1_epi32(-1)) };
        return;
    }
    // SAFETY: AVX2 is enabled (module docs).
    unsafe {
        let row = rows::<MASKED>(slots(tv, tab, x), hitm, insm, lh.out);
        scatter_hot_and_pack(lh, row, x);
    }
}

/// Adds the eight voxels `x` to the lanes of hot row `half`, counting `−count` per lane.
#[inline(always)]
unsafe fn add_hot<T>(lh: &mut LaneHist<T>, half: usize, x: __m256, count: __m256i) {
    // SAFETY: AVX is enabled (module docs).
    let (lo, hi) = unsafe { widen(x) };
    debug_assert!(half <= 1);
    // SAFETY: AVX2 is enabled (module docs); `half` is 0 or 1 (callers pass the two hot
    // rows), so `8·half + 8 <= 16`, the length of `hot` and `hot_cnt`.
    unsafe {
        add_to_pd(at_mut(&mut lh.hot, 8 * half), lo);
        add_to_pd(at_mut(&mut lh.hot, 8 * half + 4), hi);
        sub_from_epi32(at_mut(&mut lh.hot_cnt, 8 * half), count);
    }
}

/// Row `2·slot + hit` of each voxel; with `MASKED`, row `out` for voxels outside.
#[inline(always)]
unsafe fn rows<const MASKED: bool>(
    slot: __m256i,
    hitm: __m256i,
    insm: __m256i,
    out: u32,
) -> __m256i {
    // SAFETY: register-only integer arithmetic and blends; AVX2 is enabled (module docs).
    unsafe {
        let row = _mm256_add_epi32(
            _mm256_add_epi32(slot, slot),
            _mm256_and_si256(hitm, _mm256_set1_epi32(1)),
        );
        if !MASKED {
            return row;
        }
        _mm256_castps_si256(_mm256_blendv_ps(
            _mm256_castsi256_ps(row),
            _mm256_castsi256_ps(_mm256_set1_epi32(out as i32)),
            _mm256_castsi256_ps(_mm256_cmpeq_epi32(insm, _mm256_setzero_si256())),
        ))
    }
}

/// The general histogram step: voxels of the hot rows into their lanes, the others
/// (except those outside the region) packed, in voxel order, onto the list.
#[inline(always)]
unsafe fn scatter_hot_and_pack<T: Probability>(lh: &mut LaneHist<T>, row: __m256i, x: __m256) {
    // SAFETY: register-only compares and masks; AVX2 is enabled (module docs).
    let (ma, mb, keep) = unsafe {
        let ma = _mm256_cmpeq_epi32(row, _mm256_set1_epi32(HOT_A as i32));
        let mb = _mm256_cmpeq_epi32(row, _mm256_set1_epi32(lh.hot_b as i32));
        let mo = _mm256_cmpeq_epi32(row, _mm256_set1_epi32(lh.out as i32));
        let drop = _mm256_or_si256(_mm256_or_si256(ma, mb), mo);
        (
            ma,
            mb,
            (!_mm256_movemask_ps(_mm256_castsi256_ps(drop))) & 0xFF,
        )
    };
    // SAFETY: AVX2 is enabled (module docs).
    unsafe {
        add_hot(lh, 0, _mm256_and_ps(x, _mm256_castsi256_ps(ma)), ma);
        add_hot(lh, 1, _mm256_and_ps(x, _mm256_castsi256_ps(mb)), mb);
    }
    let len = lh.len;
    // SAFETY: AVX2 is enabled (module docs); `keep < 256` indexes `PACK`.
    let perm = unsafe { load_epi32(&PACK[keep as usize]) };
    // The list grows by at most 8 per group and is empty at the start of the chunk, so
    // `len + 8 <= m8 + 8`, within both lists' length (checked once in `Kernel::run`).
    // SAFETY: AVX2 is enabled (module docs); `len + 8 <= list_row.len()` (above).
    unsafe {
        let rows_out = at_mut::<u32, W>(&mut lh.list_row, len).as_mut_ptr();
        _mm256_storeu_si256(rows_out.cast(), _mm256_permutevar8x32_epi32(row, perm));
    }
    if let Some(lx) = T::as_f32_slice_mut(&mut lh.list_x) {
        // SAFETY: as above, `len + 8 <= list_x.len()`.
        unsafe {
            let xs_out = at_mut::<f32, W>(lx, len).as_mut_ptr();
            _mm256_storeu_ps(xs_out, _mm256_permutevar8x32_ps(x, perm));
        }
    }
    lh.len = len + keep.count_ones() as usize;
}

/// Loop constants of a chunk, in registers.
struct Consts {
    tv: TabV,
    tol: __m256,
    ntol: __m256,
    one_ps: __m256,
    zero_ps: __m256,
    floor: __m256d,
    one_pd: __m256d,
    all: __m256i,
}

impl Consts {
    #[inline(always)]
    unsafe fn new<T: Probability>(tab: &SlotTable<f32>, fz: &Fused<'_, T>) -> Self {
        let tol = fz.tol.to_f64() as f32;
        // SAFETY: register-only broadcasts; AVX2 is enabled (module docs).
        unsafe {
            Consts {
                tv: TabV::new(tab),
                tol: _mm256_set1_ps(tol),
                ntol: _mm256_set1_ps(0.0 - tol),
                one_ps: _mm256_set1_ps(1.0),
                zero_ps: _mm256_setzero_ps(),
                floor: _mm256_set1_pd(fz.floor),
                one_pd: _mm256_set1_pd(1.0),
                all: _mm256_set1_epi32(-1),
            }
        }
    }
}

/// What the channel loop computes for a group of 8 voxels: confidence (max), first
/// argmax, sum and minimum over the channels; with scores, the Brier terms of the
/// channels other than the label's (f64, lanes 0–3 and 4–7) and `p_y`.
struct Lanes {
    cf: __m256,
    pr: __m256i,
    s: __m256,
    mn: __m256,
    br_lo: __m256d,
    br_hi: __m256d,
    py: __m256,
}

impl Lanes {
    /// The values after channel 0 (`p0`), and the mask of voxels labelled 0.
    #[inline(always)]
    unsafe fn first<const SC: bool>(p0: __m256, y: __m256i) -> (Self, __m256i) {
        // SAFETY: register-only arithmetic and masks; AVX2 is enabled (module docs).
        unsafe {
            let e0 = _mm256_cmpeq_epi32(y, _mm256_setzero_si256());
            let mut v = Lanes {
                cf: p0,
                pr: _mm256_setzero_si256(),
                s: p0,
                mn: p0,
                br_lo: _mm256_setzero_pd(),
                br_hi: _mm256_setzero_pd(),
                py: _mm256_setzero_ps(),
            };
            if SC {
                let (qa, qb) = widen(_mm256_andnot_ps(_mm256_castsi256_ps(e0), p0));
                v.br_lo = _mm256_mul_pd(qa, qa);
                v.br_hi = _mm256_mul_pd(qb, qb);
                v.py = _mm256_and_ps(_mm256_castsi256_ps(e0), p0);
            }
            (v, e0)
        }
    }

    /// Adds channel `c` (`p`); returns the mask of voxels labelled `c`.
    #[inline(always)]
    unsafe fn next<const SC: bool>(&mut self, p: __m256, c: usize, y: __m256i) -> __m256i {
        // SAFETY: register-only arithmetic, compares and blends; AVX2 is enabled (module
        // docs).
        unsafe {
            let cv = _mm256_set1_epi32(c as i32);
            let gt = _mm256_cmp_ps::<_CMP_GT_OQ>(p, self.cf);
            self.cf = _mm256_blendv_ps(self.cf, p, gt);
            let pr = _mm256_blendv_ps(_mm256_castsi256_ps(self.pr), _mm256_castsi256_ps(cv), gt);
            self.pr = _mm256_castps_si256(pr);
            self.s = _mm256_add_ps(self.s, p);
            self.mn = _mm256_min_ps(p, self.mn);
            let ec = _mm256_cmpeq_epi32(y, cv);
            if SC {
                let (qa, qb) = widen(_mm256_andnot_ps(_mm256_castsi256_ps(ec), p));
                self.br_lo = _mm256_add_pd(self.br_lo, _mm256_mul_pd(qa, qa));
                self.br_hi = _mm256_add_pd(self.br_hi, _mm256_mul_pd(qb, qb));
                self.py = _mm256_blendv_ps(self.py, p, _mm256_castsi256_ps(ec));
            }
            ec
        }
    }

    /// Whether a voxel fails validation: sum within `tol` of 1, min ≥ 0, max ≤ 1.
    #[inline(always)]
    unsafe fn invalid(&self, c: &Consts) -> bool {
        // SAFETY: register-only arithmetic and compares; AVX is enabled (module docs).
        unsafe {
            let d = _mm256_sub_ps(self.s, c.one_ps);
            let ok = _mm256_and_ps(
                _mm256_and_ps(
                    _mm256_cmp_ps::<_CMP_LE_OQ>(d, c.tol),
                    _mm256_cmp_ps::<_CMP_GE_OQ>(d, c.ntol),
                ),
                _mm256_and_ps(
                    _mm256_cmp_ps::<_CMP_GE_OQ>(self.mn, c.zero_ps),
                    _mm256_cmp_ps::<_CMP_LE_OQ>(self.cf, c.one_ps),
                ),
            );
            _mm256_movemask_ps(ok) != 0xFF
        }
    }
}

/// Brier sums and NLL products of the chunk, in registers (lanes 0–3 and 4–7).
struct Scores {
    b_lo: __m256d,
    b_hi: __m256d,
    q_lo: __m256d,
    q_hi: __m256d,
}

/// Four f64 from memory.
#[inline(always)]
unsafe fn load_pd(a: &[f64; 4]) -> __m256d {
    // SAFETY: AVX is enabled (module docs); `a` is exactly the 32 bytes read.
    unsafe { _mm256_loadu_pd(a.as_ptr()) }
}

/// Four f64 to memory.
#[inline(always)]
unsafe fn store_pd(a: &mut [f64; 4], v: __m256d) {
    // SAFETY: AVX is enabled (module docs); `a` is exactly the 32 bytes written.
    unsafe { _mm256_storeu_pd(a.as_mut_ptr(), v) }
}

impl Scores {
    #[inline(always)]
    unsafe fn load<T>(out: &Sinks<'_, T>) -> Self {
        // SAFETY: AVX is enabled (module docs); `group` bounds-checks every load.
        unsafe {
            Scores {
                b_lo: load_pd(group(out.brier, 0)),
                b_hi: load_pd(group(out.brier, 4)),
                q_lo: load_pd(group(out.prod, 0)),
                q_hi: load_pd(group(out.prod, 4)),
            }
        }
    }

    #[inline(always)]
    unsafe fn store<T>(&self, out: &mut Sinks<'_, T>) {
        // SAFETY: AVX is enabled (module docs); `group_mut` bounds-checks every store.
        unsafe {
            store_pd(group_mut(out.brier, 0), self.b_lo);
            store_pd(group_mut(out.brier, 4), self.b_hi);
            store_pd(group_mut(out.prod, 0), self.q_lo);
            store_pd(group_mut(out.prod, 4), self.q_hi);
        }
    }

    /// Moves the products' exponents into `out.ex` (see `engine::renorm`).
    #[inline(always)]
    unsafe fn renorm<T>(&mut self, out: &mut Sinks<'_, T>) {
        // SAFETY: AVX is enabled (module docs); `group_mut` bounds-checks every store.
        unsafe {
            store_pd(group_mut(out.prod, 0), self.q_lo);
            store_pd(group_mut(out.prod, 4), self.q_hi);
        }
        crate::engine::renorm(out.prod, out.ex);
        // SAFETY: as above, for the loads.
        unsafe {
            self.q_lo = load_pd(group(out.prod, 0));
            self.q_hi = load_pd(group(out.prod, 4));
        }
    }

    /// Adds the Brier term `Σ_{c≠y} p_c² + (p_y − 1)²` of the voxels inside and multiplies
    /// the NLL products by their clamped `p_y`.
    #[inline(always)]
    unsafe fn add(&mut self, c: &Consts, v: &Lanes, insm: __m256i) {
        // SAFETY: register-only arithmetic and blends; AVX2 is enabled (module docs).
        unsafe {
            let (py_lo, py_hi) = widen(v.py);
            let d_lo = _mm256_sub_pd(py_lo, c.one_pd);
            let d_hi = _mm256_sub_pd(py_hi, c.one_pd);
            let t_lo = _mm256_add_pd(v.br_lo, _mm256_mul_pd(d_lo, d_lo));
            let t_hi = _mm256_add_pd(v.br_hi, _mm256_mul_pd(d_hi, d_hi));
            let (in_lo, in_hi) = mask_pd(insm);
            let zero_pd = _mm256_setzero_pd();
            self.b_lo = _mm256_add_pd(self.b_lo, _mm256_blendv_pd(zero_pd, t_lo, in_lo));
            self.b_hi = _mm256_add_pd(self.b_hi, _mm256_blendv_pd(zero_pd, t_hi, in_hi));
            let f_lo = _mm256_blendv_pd(c.one_pd, _mm256_max_pd(py_lo, c.floor), in_lo);
            let f_hi = _mm256_blendv_pd(c.one_pd, _mm256_max_pd(py_hi, c.floor), in_hi);
            self.q_lo = _mm256_mul_pd(self.q_lo, f_lo);
            self.q_hi = _mm256_mul_pd(self.q_hi, f_hi);
        }
    }
}

/// All-ones lanes for the voxels of group `i0` inside the region (all lanes unless
/// `MASKED`).
///
/// # Safety
/// AVX2 is enabled; with `MASKED`, `i0 + 8 <= ins.len()`.
#[inline(always)]
unsafe fn inside_mask<const MASKED: bool>(ins: &[u32], i0: usize, all: __m256i) -> __m256i {
    if !MASKED {
        return all;
    }
    // SAFETY: AVX2 is enabled (module docs); `i0 + 8 <= ins.len()` (caller's contract).
    unsafe {
        let w = load_epi32(at(ins, i0));
        _mm256_xor_si256(_mm256_cmpeq_epi32(w, _mm256_setzero_si256()), all)
    }
}

/// The AVX2 fused loop, bound to one chunk's inputs and accumulators.
pub(crate) struct Kernel<'a, 'b, 's, 't, T> {
    fz: &'a Fused<'s, T>,
    out: &'b mut Sinks<'t, T>,
    tab: &'a SlotTable<f32>,
}

impl<'a, 'b, 's, 't, T: Probability> Kernel<'a, 'b, 's, 't, T> {
    /// `None` unless `T` is f32.
    pub(crate) fn new(fz: &'a Fused<'s, T>, out: &'b mut Sinks<'t, T>) -> Option<Self> {
        let tab = fz.table.as_f32()?;
        Some(Kernel { fz, out, tab })
    }

    /// The fused loop (see `engine::fused`) over the `groups` full groups of 8 voxels of
    /// the chunk; `chan(c)` is channel `c` of the chunk. Returns whether a voxel failed
    /// validation. NLL products are renormalised every 16 groups, as in the portable loop.
    ///
    /// # Safety
    /// The CPU must support AVX2 and popcnt. (Every slice length is checked here.)
    #[target_feature(enable = "avx2,popcnt")]
    pub(crate) unsafe fn run<
        'p,
        const SC: bool,
        const MASKED: bool,
        const TOP: bool,
        const CW: bool,
    >(
        self,
        chan: &impl Fn(usize) -> &'p [f32],
        k: usize,
        groups: usize,
    ) -> bool {
        let Kernel { fz, out, tab } = self;
        let m8 = groups * W;
        // Slicing checks the lengths once; the accesses below are checked again.
        let cls = &fz.cls[..m8];
        let ins = if MASKED { &fz.ins[..m8] } else { &[][..] };
        let chans: Vec<&[f32]> = (0..k).map(|c| &chan(c)[..m8]).collect();
        let cap_ok =
            |h: &LaneHist<T>| h.len == 0 && h.list_row.len() >= m8 + W && h.list_x.len() >= m8 + W;
        assert!(out.pred.len() >= m8);
        assert!(!TOP || cap_ok(out.top));
        assert!(!CW || (out.class.len() == k && out.class.iter().all(cap_ok)));
        // Every `unsafe` block below: this function is compiled with AVX2 and popcnt, which
        // its caller checked at run time (module docs); every group `i0 .. i0 + 8` lies
        // within `m8 = groups · 8`, the length of `cls`, `ins` (masked), each of `chans`
        // and at most that of `out.pred` (checked above).
        // SAFETY: see the comment above.
        let c = unsafe { Consts::new(tab, fz) };
        // SAFETY: see above.
        let mut scores = unsafe { Scores::load(out) };
        let mut bad = false;
        for g in 0..groups {
            let i0 = g * W;
            // SAFETY: see above.
            let (y, insm) = unsafe {
                (
                    load_epi32(at(cls, i0)),
                    inside_mask::<MASKED>(ins, i0, c.all),
                )
            };
            // SAFETY: see above.
            let v =
                unsafe { channels::<T, SC, MASKED, CW>(&c, tab, &chans, i0, y, insm, out.class) };
            // SAFETY: see above; `i0 + 8 <= m8 <= out.pred.len()`.
            unsafe {
                _mm256_storeu_si256(at_mut::<u32, W>(out.pred, i0).as_mut_ptr().cast(), v.pr)
            };
            if TOP {
                // SAFETY: see above.
                unsafe {
                    let hit = _mm256_cmpeq_epi32(v.pr, y);
                    hist8::<T, MASKED>(&c.tv, tab, v.cf, hit, insm, out.top);
                }
            }
            if fz.check {
                // SAFETY: see above.
                bad |= unsafe { v.invalid(&c) };
            }
            if SC {
                // SAFETY: see above.
                unsafe { scores.add(&c, &v, insm) };
                if g % 16 == 15 {
                    // SAFETY: see above.
                    unsafe { scores.renorm(out) };
                }
            }
        }
        // SAFETY: see above.
        unsafe { scores.store(out) };
        bad
    }
}

/// The channel loop of one group: [`Lanes`], and the class-wise histogram voxels.
///
/// # Safety
/// AVX2 and popcnt are enabled; `i0 + 8 <=` the length of every slice of `chans`; with
/// `CW`, `class` has one histogram per channel with list capacity for the chunk.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn channels<T: Probability, const SC: bool, const MASKED: bool, const CW: bool>(
    c: &Consts,
    tab: &SlotTable<f32>,
    chans: &[&[f32]],
    i0: usize,
    y: __m256i,
    insm: __m256i,
    class: &mut [LaneHist<T>],
) -> Lanes {
    // SAFETY: AVX2 is enabled (module docs); `i0 + 8 <=` every channel's length (caller's
    // contract).
    let p0 = unsafe { load_ps(at(chans[0], i0)) };
    // SAFETY: AVX2 is enabled (module docs).
    let (mut v, e0) = unsafe { Lanes::first::<SC>(p0, y) };
    if CW {
        // SAFETY: AVX2 is enabled (module docs).
        unsafe { hist8::<T, MASKED>(&c.tv, tab, p0, e0, insm, &mut class[0]) };
    }
    for (ci, ch) in chans.iter().enumerate().skip(1) {
        // SAFETY: as for `p0`.
        let p = unsafe { load_ps(at(ch, i0)) };
        // SAFETY: AVX2 is enabled (module docs).
        let ec = unsafe { v.next::<SC>(p, ci, y) };
        if CW {
            // SAFETY: AVX2 is enabled (module docs).
            unsafe { hist8::<T, MASKED>(&c.tv, tab, p, ec, insm, &mut class[ci]) };
        }
    }
    v
}
