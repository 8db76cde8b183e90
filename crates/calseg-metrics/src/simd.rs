//! AVX2 version of the fused loop of the engine, for f32 probabilities.
//!
//! It computes exactly what the portable loop (`engine::fused`) computes, lane for lane and
//! in the same order (no FMA, no reassociation), so results do not depend on which one
//! runs; unit tests check this bit for bit. The portable loop is what LLVM vectorises — or
//! not: it turns lane selects into masked stores (very slow on AMD CPUs) and does not
//! vectorise the bin guess or the packing of the histogram list; here they are written out.

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

#[inline(always)]
unsafe fn widen(p: __m256) -> (__m256d, __m256d) {
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
    unsafe {
        (
            _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm256_castsi256_si128(m))),
            _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm256_extracti128_si256::<1>(m))),
        )
    }
}

/// One histogram step for 8 voxels (see `LaneHist::voxel`): row, hot lanes, packing.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn hist8<T: Probability, const MASKED: bool>(
    tv: &TabV,
    tab: &SlotTable<f32>,
    x: __m256,
    hitm: __m256i,
    insm: __m256i,
    lh: &mut LaneHist<T>,
) {
    unsafe {
        // Fast paths: all eight voxels in the same hot row (in a real volume most groups
        // are). Same sums as the general path, which would only add +0.0 to the other row.
        // The row that matched last time is tested first (top-label and background
        // histograms mostly hit the last bin, the others bin 0).
        let inside = _mm256_castsi256_ps(insm);
        if MASKED && _mm256_movemask_ps(inside) == 0 {
            return; // the whole group is outside the region (e.g. background)
        }
        let hitp = _mm256_castsi256_ps(hitm);
        let all_a = || {
            let in_a = _mm256_andnot_ps(
                hitp,
                _mm256_and_ps(
                    _mm256_and_ps(
                        _mm256_cmp_ps::<_CMP_GE_OQ>(x, tv.a_lo),
                        _mm256_cmp_ps::<_CMP_LT_OQ>(x, tv.a_hi),
                    ),
                    inside,
                ),
            );
            _mm256_movemask_ps(in_a) == 0xFF
        };
        let all_b = || {
            let in_b = _mm256_and_ps(
                hitp,
                _mm256_and_ps(
                    _mm256_and_ps(
                        _mm256_cmp_ps::<_CMP_GE_OQ>(x, tv.b_lo),
                        _mm256_cmp_ps::<_CMP_LE_OQ>(x, tv.b_hi),
                    ),
                    inside,
                ),
            );
            _mm256_movemask_ps(in_b) == 0xFF
        };
        let hot = if lh.last_b {
            if all_b() {
                Some(1)
            } else if all_a() {
                Some(0)
            } else {
                None
            }
        } else if all_a() {
            Some(0)
        } else if all_b() {
            Some(1)
        } else {
            None
        };
        if let Some(half) = hot {
            lh.last_b = half == 1;
            let (lo, hi) = widen(x);
            let h = lh.hot.as_mut_ptr().add(8 * half);
            _mm256_storeu_pd(h, _mm256_add_pd(_mm256_loadu_pd(h), lo));
            _mm256_storeu_pd(h.add(4), _mm256_add_pd(_mm256_loadu_pd(h.add(4)), hi));
            let hc = (lh.hot_cnt.as_mut_ptr() as *mut __m256i).add(half);
            _mm256_storeu_si256(
                hc,
                _mm256_add_epi32(_mm256_loadu_si256(hc), _mm256_set1_epi32(1)),
            );
            return;
        }
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
        let mut slot = _mm256_min_epu32(gp1, tv.max_slot);
        slot = _mm256_castps_si256(_mm256_blendv_ps(
            _mm256_castsi256_ps(slot),
            _mm256_castsi256_ps(tv.slot0),
            _mm256_cmp_ps::<_CMP_EQ_OQ>(x, _mm256_setzero_ps()),
        ));
        if _mm256_movemask_ps(_mm256_or_ps(low, high)) != 0 {
            // A value near an inner edge: exact lookup for the group (rare).
            let mut xa = [0f32; W];
            _mm256_storeu_ps(xa.as_mut_ptr(), x);
            let sl: [u32; W] = std::array::from_fn(|l| tab.slot(xa[l]) as u32);
            slot = _mm256_loadu_si256(sl.as_ptr() as *const __m256i);
        }
        let mut row = _mm256_add_epi32(
            _mm256_add_epi32(slot, slot),
            _mm256_and_si256(hitm, _mm256_set1_epi32(1)),
        );
        let out = _mm256_set1_epi32(lh.out as i32);
        if MASKED {
            row = _mm256_castps_si256(_mm256_blendv_ps(
                _mm256_castsi256_ps(row),
                _mm256_castsi256_ps(out),
                _mm256_castsi256_ps(_mm256_cmpeq_epi32(insm, _mm256_setzero_si256())),
            ));
        }
        let ma = _mm256_cmpeq_epi32(row, _mm256_set1_epi32(HOT_A as i32));
        let mb = _mm256_cmpeq_epi32(row, _mm256_set1_epi32(lh.hot_b as i32));
        let mo = _mm256_cmpeq_epi32(row, out);
        let (xa_lo, xa_hi) = widen(_mm256_and_ps(x, _mm256_castsi256_ps(ma)));
        let (xb_lo, xb_hi) = widen(_mm256_and_ps(x, _mm256_castsi256_ps(mb)));
        let h = lh.hot.as_mut_ptr();
        _mm256_storeu_pd(h, _mm256_add_pd(_mm256_loadu_pd(h), xa_lo));
        _mm256_storeu_pd(h.add(4), _mm256_add_pd(_mm256_loadu_pd(h.add(4)), xa_hi));
        _mm256_storeu_pd(h.add(8), _mm256_add_pd(_mm256_loadu_pd(h.add(8)), xb_lo));
        _mm256_storeu_pd(h.add(12), _mm256_add_pd(_mm256_loadu_pd(h.add(12)), xb_hi));
        let hc = lh.hot_cnt.as_mut_ptr() as *mut __m256i;
        _mm256_storeu_si256(hc, _mm256_sub_epi32(_mm256_loadu_si256(hc), ma));
        _mm256_storeu_si256(
            hc.add(1),
            _mm256_sub_epi32(_mm256_loadu_si256(hc.add(1)), mb),
        );
        let drop = _mm256_or_si256(_mm256_or_si256(ma, mb), mo);
        let keep = (!_mm256_movemask_ps(_mm256_castsi256_ps(drop))) & 0xFF;
        let perm = _mm256_loadu_si256(PACK[keep as usize].as_ptr() as *const __m256i);
        let len = lh.len;
        // Capacity (len + 8 ≤ list length) is checked by `Kernel::run` for the whole chunk.
        _mm256_storeu_si256(
            lh.list_row.as_mut_ptr().add(len) as *mut __m256i,
            _mm256_permutevar8x32_epi32(row, perm),
        );
        if let Some(lx) = T::as_f32_slice_mut(&mut lh.list_x) {
            _mm256_storeu_ps(lx.as_mut_ptr().add(len), _mm256_permutevar8x32_ps(x, perm));
        }
        lh.len = len + keep.count_ones() as usize;
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
    #[allow(clippy::needless_range_loop)] // `c` is the class index, not only an index
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
        assert!(fz.cls.len() >= m8 && out.pred.len() >= m8);
        assert!(!MASKED || fz.ins.len() >= m8);
        assert!((0..k).all(|c| chan(c).len() >= m8));
        // Channel base pointers once per chunk (the closure re-slices on every call).
        let ptrs: Vec<*const f32> = (0..k).map(|c| chan(c).as_ptr()).collect();
        let cap_ok =
            |h: &LaneHist<T>| h.len == 0 && h.list_row.len() >= m8 + W && h.list_x.len() >= m8 + W;
        assert!(!TOP || cap_ok(out.top));
        assert!(!CW || (out.class.len() == k && out.class.iter().all(cap_ok)));
        unsafe {
            let tv = TabV {
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
            };
            let tol32 = fz.tol.to_f64() as f32;
            let tol = _mm256_set1_ps(tol32);
            let ntol = _mm256_set1_ps(0.0 - tol32);
            let one_ps = _mm256_set1_ps(1.0);
            let zero_ps = _mm256_setzero_ps();
            let floor = _mm256_set1_pd(fz.floor);
            let one_pd = _mm256_set1_pd(1.0);
            let all = _mm256_set1_epi32(-1);
            let mut b_lo = _mm256_loadu_pd(out.brier.as_ptr());
            let mut b_hi = _mm256_loadu_pd(out.brier.as_ptr().add(4));
            let mut q_lo = _mm256_loadu_pd(out.prod.as_ptr());
            let mut q_hi = _mm256_loadu_pd(out.prod.as_ptr().add(4));
            let mut bad = 0i32;
            for g in 0..groups {
                let i0 = g * W;
                let y = _mm256_loadu_si256(fz.cls.as_ptr().add(i0) as *const __m256i);
                let insm = if MASKED {
                    let w = _mm256_loadu_si256(fz.ins.as_ptr().add(i0) as *const __m256i);
                    _mm256_xor_si256(_mm256_cmpeq_epi32(w, _mm256_setzero_si256()), all)
                } else {
                    all
                };
                let p0 = _mm256_loadu_ps(ptrs[0].add(i0));
                let mut cf = p0;
                let mut pr = _mm256_setzero_si256();
                let mut s = p0;
                let mut mn = p0;
                let (mut br_lo, mut br_hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
                let mut py = _mm256_setzero_ps();
                let e0 = _mm256_cmpeq_epi32(y, _mm256_setzero_si256());
                if SC {
                    let (qa, qb) = widen(_mm256_andnot_ps(_mm256_castsi256_ps(e0), p0));
                    br_lo = _mm256_mul_pd(qa, qa);
                    br_hi = _mm256_mul_pd(qb, qb);
                    py = _mm256_and_ps(_mm256_castsi256_ps(e0), p0);
                }
                if CW {
                    hist8::<T, MASKED>(&tv, tab, p0, e0, insm, &mut out.class[0]);
                }
                for c in 1..k {
                    let cv = _mm256_set1_epi32(c as i32);
                    let p = _mm256_loadu_ps(ptrs[c].add(i0));
                    let gt = _mm256_cmp_ps::<_CMP_GT_OQ>(p, cf);
                    cf = _mm256_blendv_ps(cf, p, gt);
                    pr = _mm256_castps_si256(_mm256_blendv_ps(
                        _mm256_castsi256_ps(pr),
                        _mm256_castsi256_ps(cv),
                        gt,
                    ));
                    s = _mm256_add_ps(s, p);
                    mn = _mm256_min_ps(p, mn);
                    let ec = _mm256_cmpeq_epi32(y, cv);
                    if SC {
                        let (qa, qb) = widen(_mm256_andnot_ps(_mm256_castsi256_ps(ec), p));
                        br_lo = _mm256_add_pd(br_lo, _mm256_mul_pd(qa, qa));
                        br_hi = _mm256_add_pd(br_hi, _mm256_mul_pd(qb, qb));
                        py = _mm256_blendv_ps(py, p, _mm256_castsi256_ps(ec));
                    }
                    if CW {
                        hist8::<T, MASKED>(&tv, tab, p, ec, insm, &mut out.class[c]);
                    }
                }
                _mm256_storeu_si256(out.pred.as_mut_ptr().add(i0) as *mut __m256i, pr);
                if TOP {
                    let hit = _mm256_cmpeq_epi32(pr, y);
                    hist8::<T, MASKED>(&tv, tab, cf, hit, insm, out.top);
                }
                if fz.check {
                    let d = _mm256_sub_ps(s, one_ps);
                    let ok = _mm256_and_ps(
                        _mm256_and_ps(
                            _mm256_cmp_ps::<_CMP_LE_OQ>(d, tol),
                            _mm256_cmp_ps::<_CMP_GE_OQ>(d, ntol),
                        ),
                        _mm256_and_ps(
                            _mm256_cmp_ps::<_CMP_GE_OQ>(mn, zero_ps),
                            _mm256_cmp_ps::<_CMP_LE_OQ>(cf, one_ps),
                        ),
                    );
                    bad |= (_mm256_movemask_ps(ok) != 0xFF) as i32;
                }
                if SC {
                    let (py_lo, py_hi) = widen(py);
                    let d_lo = _mm256_sub_pd(py_lo, one_pd);
                    let d_hi = _mm256_sub_pd(py_hi, one_pd);
                    let t_lo = _mm256_add_pd(br_lo, _mm256_mul_pd(d_lo, d_lo));
                    let t_hi = _mm256_add_pd(br_hi, _mm256_mul_pd(d_hi, d_hi));
                    let (in_lo, in_hi) = mask_pd(insm);
                    let zero_pd = _mm256_setzero_pd();
                    b_lo = _mm256_add_pd(b_lo, _mm256_blendv_pd(zero_pd, t_lo, in_lo));
                    b_hi = _mm256_add_pd(b_hi, _mm256_blendv_pd(zero_pd, t_hi, in_hi));
                    let f_lo = _mm256_blendv_pd(one_pd, _mm256_max_pd(py_lo, floor), in_lo);
                    let f_hi = _mm256_blendv_pd(one_pd, _mm256_max_pd(py_hi, floor), in_hi);
                    q_lo = _mm256_mul_pd(q_lo, f_lo);
                    q_hi = _mm256_mul_pd(q_hi, f_hi);
                    if g % 16 == 15 {
                        _mm256_storeu_pd(out.prod.as_mut_ptr(), q_lo);
                        _mm256_storeu_pd(out.prod.as_mut_ptr().add(4), q_hi);
                        crate::engine::renorm(out.prod, out.ex);
                        q_lo = _mm256_loadu_pd(out.prod.as_ptr());
                        q_hi = _mm256_loadu_pd(out.prod.as_ptr().add(4));
                    }
                }
            }
            _mm256_storeu_pd(out.brier.as_mut_ptr(), b_lo);
            _mm256_storeu_pd(out.brier.as_mut_ptr().add(4), b_hi);
            _mm256_storeu_pd(out.prod.as_mut_ptr(), q_lo);
            _mm256_storeu_pd(out.prod.as_mut_ptr().add(4), q_hi);
            bad != 0
        }
    }
}
