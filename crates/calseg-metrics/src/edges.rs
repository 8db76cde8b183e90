//! Confidence bins: edges, interval conventions and the bin of a confidence.
//!
//! # Edges
//! The `n + 1` edges are **float32** values made exactly as
//! `torch.linspace(0, 1, n + 1, dtype=torch.float32)` makes them (torchmetrics' edges, also
//! used by the SVLS/MbLS/NACL evaluation code). They are *not* always `f32(k / n)`: with
//! `step = f32(1 / n)` (an f32 division),
//!
//! ```text
//! edge[k] = f32(step · k)            for k <  (n + 1) / 2   (integer division)
//! edge[k] = f32(1 − step · (n − k))  for k >= (n + 1) / 2
//! ```
//!
//! each product/difference computed exactly in f64 and rounded to f32 once. For `n = 15`
//! six edges differ from `f32(k / 15)` by 1–2 ulp, which moves confidences that sit on an
//! edge into another bin; [`torch_linspace_f32`] reproduces torch bit for bit.
//!
//! # Comparisons
//! For f32 input the f32 confidence is compared with the f32 edges (as torch does). For
//! f64 input the f64 confidence is compared with the f32 edges converted (exactly) to f64.
//!
//! # Interval conventions ([`EdgeConvention`])
//! | convention | bin `b` holds | `0.0` | `1.0` | confidence on an inner edge `e_k` |
//! |---|---|---|---|---|
//! | [`LeftClosed`](EdgeConvention::LeftClosed) (default) | `[e_b, e_{b+1})`, last bin `[e_{n−1}, 1]` | bin 0 | bin `n−1` | bin `k` (upper) |
//! | [`RightClosed`](EdgeConvention::RightClosed) (SVLS/MbLS/NACL code) | `(e_b, e_{b+1}]` | **no bin**, still counted in `N` | bin `n−1` | bin `k−1` (lower) |
//! | [`Torchmetrics`](EdgeConvention::Torchmetrics) | `[e_b, e_{b+1})` plus an extra bin `n` | bin 0 | extra bin `n` (holds only `1.0`) | bin `k` (upper) |
//! | [`Monai`](EdgeConvention::Monai) (edges `linspace(0, 1 + ε, n + 1)`) | `(e_b, e_{b+1}]`, bin 0 `[0, e_1]` | bin 0 | bin `n−1` | bin `k−1` (lower) |
//!
//! `Torchmetrics` reproduces torchmetrics 1.9 exactly, including its extra `(n+1)`-th bin
//! for confidence `== 1.0` (torchmetrics issue #3510); it exists to compare with published
//! torchmetrics numbers, not as a recommendation.
//!
//! **torchmetrics and confidence 0 (decision: reproduced, nothing to refuse).**
//! torchmetrics 1.9 bins with `bucketize(conf, edges, right=True) − 1`, i.e. the number of
//! edges `≤ conf` minus one: `0.0` has one such edge (`e_0 = 0`) and lands in bin 0, as
//! here (the reference case `conf_one_c3`, whose class probabilities are often exactly 0,
//! agrees with torchmetrics' own per-class numbers). The index `−1` arises only for a
//! *negative* confidence — which torchmetrics never bins (it softmaxes or sigmoids any
//! input outside `[0, 1]` first) and which calseg rejects as a typed error
//! ([`MetricsError::ProbabilityOutOfRange`]) instead of binning — or in older torchmetrics
//! releases (`bucketize(conf, edges) − 1` with `right=False` and `n` bins), where `0.0`
//! gave `−1` and torch's `scatter_add_` raised an out-of-bounds error (it does not wrap a
//! negative index around to the last bin). So no input calseg accepts has a torchmetrics
//! index of `−1`: nothing is put in a bin torch would not use, and nothing is refused that
//! torchmetrics 1.9 scores.
//!
//! **MONAI** (`monai.metrics.CalibrationErrorMetric`, MONAI 1.6): edges
//! `torch.linspace(0, 1 + ε, n + 1)` in float32 with `ε = 2⁻²³` (float32's machine
//! epsilon; [`torch_linspace_f32_to`] with `end = 1 + ε`) and the bin
//! `clamp(bucketize(x, edges[1:], right=False), max = n − 1)`: the number of inner edges
//! *strictly below* `x`. So a bin is `(e_b, e_{b+1}]` — right-closed, although MONAI's
//! docstring calls `right=False` "`[left, right)`" — bin 0 also holds `0.0`, and `1.0`
//! (below `e_n = 1 + ε`) lands in the last bin, never in an extra one.

use crate::MetricsError;

/// Default number of bins (torchmetrics' and MbLS' default).
pub const DEFAULT_BINS: usize = 15;

/// Largest accepted number of bins (keeps every edge computation exact in f64).
pub const MAX_BINS: usize = 1 << 20;

/// Which side of a bin is closed. See the [module docs](self) for the full table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum EdgeConvention {
    /// `[lo, hi)`, with confidence `1.0` in the last bin (numpy/netcal style; CLI
    /// `--edges left`). The default.
    #[default]
    LeftClosed,
    /// `(lo, hi]` as in the SVLS, MbLS and NACL evaluation code (CLI `--edges right`):
    /// a confidence of exactly `0.0` falls in no bin but still counts in `N`.
    RightClosed,
    /// torchmetrics' exact behaviour (CLI `--edges torchmetrics`): `[lo, hi)` and an extra
    /// `(n+1)`-th bin that holds only confidence `== 1.0`.
    Torchmetrics,
    /// MONAI's `CalibrationErrorMetric` (CLI `--edges monai`, part of `--convention
    /// monai`): edges `linspace(0, 1 + ε, n + 1)` (float32, `ε = 2⁻²³`), bins
    /// `(lo, hi]` with `0.0` in bin 0 and `1.0` in the last bin.
    Monai,
}

impl EdgeConvention {
    /// Number of reported bins for `n_bins` edges intervals: `n_bins`, or `n_bins + 1` for
    /// [`Torchmetrics`](EdgeConvention::Torchmetrics).
    pub fn n_reported_bins(self, n_bins: usize) -> usize {
        match self {
            EdgeConvention::Torchmetrics => n_bins + 1,
            _ => n_bins,
        }
    }
}

impl std::fmt::Display for EdgeConvention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EdgeConvention::LeftClosed => "left",
            EdgeConvention::RightClosed => "right",
            EdgeConvention::Torchmetrics => "torchmetrics",
            EdgeConvention::Monai => "monai",
        })
    }
}

impl std::str::FromStr for EdgeConvention {
    type Err = MetricsError;
    /// Parses the CLI spellings `left`, `right`, `torchmetrics`, `monai`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "left" => Ok(EdgeConvention::LeftClosed),
            "right" => Ok(EdgeConvention::RightClosed),
            "torchmetrics" => Ok(EdgeConvention::Torchmetrics),
            "monai" => Ok(EdgeConvention::Monai),
            _ => Err(MetricsError::InvalidConfig(format!(
                "unknown edge convention {s:?} (expected left, right, torchmetrics or monai)"
            ))),
        }
    }
}

/// The `n + 1` bin edges of `torch.linspace(0, 1, n + 1, dtype=torch.float32)`, bit for
/// bit (see the [module docs](self) for the rule).
///
/// ```
/// use calseg_metrics::edges::torch_linspace_f32;
/// let e = torch_linspace_f32(15);
/// assert_eq!(e.len(), 16);
/// assert_eq!((e[0], e[15]), (0.0, 1.0));
/// assert_ne!(e[3], (3.0f64 / 15.0) as f32); // torch's edge differs from f32(3/15) by 1 ulp
/// ```
pub fn torch_linspace_f32(n_bins: usize) -> Vec<f32> {
    torch_linspace_f32_to(1.0, n_bins)
}

/// Float32 machine epsilon `2⁻²³` (`torch.finfo(torch.float32).eps`): MONAI's last edge is
/// `1 + MONAI_EPS`.
pub const MONAI_EPS: f32 = f32::EPSILON;

/// The `n + 1` edges of `torch.linspace(0, end, n + 1, dtype=torch.float32)`: the rule of
/// the [module docs](self) with `step = f32(end / n)` and `end` in place of 1 (`end` in
/// `[1, 2]`; every product and difference is exact in f64 before its one rounding).
/// MONAI's edges are `torch_linspace_f32_to(1.0 + MONAI_EPS, n)`.
///
/// ```
/// use calseg_metrics::edges::{MONAI_EPS, torch_linspace_f32_to};
/// let e = torch_linspace_f32_to(1.0 + MONAI_EPS, 20);
/// assert_eq!((e[0], e[20]), (0.0, 1.0 + MONAI_EPS));
/// // 19·(1 + ε)/20 to float32: just above 0.95, whose float32 lands in the bin below it.
/// assert!((f64::from(e[19]) - 19.0 * (1.0 + f64::from(MONAI_EPS)) / 20.0).abs() < 6e-8);
/// assert!(e[19] > 0.95f32);
/// ```
pub fn torch_linspace_f32_to(end: f32, n_bins: usize) -> Vec<f32> {
    let steps = n_bins + 1;
    let step = end / n_bins as f32; // f32 division, as torch
    let s = f64::from(step);
    let end = f64::from(end);
    let half = steps / 2;
    (0..steps)
        .map(|k| {
            if k < half {
                (s * k as f64) as f32 // exact product in f64, one rounding
            } else {
                (end - s * (n_bins - k) as f64) as f32 // exact in f64, one rounding (= fma)
            }
        })
        .collect()
}

/// Validated bin edges plus the convention: everything needed to map a confidence to a bin.
#[derive(Debug, Clone, PartialEq)]
pub struct BinEdges {
    n_bins: usize,
    convention: EdgeConvention,
    edges: Vec<f32>,
}

impl BinEdges {
    /// Edges for `n_bins` bins (`1..=MAX_BINS`) under `convention`.
    ///
    /// # Errors
    /// [`MetricsError::InvalidConfig`] when `n_bins` is 0 or larger than [`MAX_BINS`].
    pub fn new(n_bins: usize, convention: EdgeConvention) -> Result<Self, MetricsError> {
        if n_bins == 0 || n_bins > MAX_BINS {
            return Err(MetricsError::InvalidConfig(format!(
                "number of bins must be in 1..={MAX_BINS}, got {n_bins}"
            )));
        }
        let end = match convention {
            EdgeConvention::Monai => 1.0 + MONAI_EPS,
            _ => 1.0,
        };
        Ok(BinEdges {
            n_bins,
            convention,
            edges: torch_linspace_f32_to(end, n_bins),
        })
    }

    /// Number of equal-width bins `n`.
    pub fn n_bins(&self) -> usize {
        self.n_bins
    }

    /// The interval convention.
    pub fn convention(&self) -> EdgeConvention {
        self.convention
    }

    /// The `n + 1` float32 edges.
    pub fn edges(&self) -> &[f32] {
        &self.edges
    }

    /// Number of reported bins (`n`, or `n + 1` for torchmetrics).
    pub fn n_reported_bins(&self) -> usize {
        self.convention.n_reported_bins(self.n_bins)
    }

    /// `(lower, upper)` of reported bin `b` as f64 (the f32 edges, exactly). The extra
    /// torchmetrics bin `n` is `(1.0, 1.0)`.
    pub fn bounds(&self, b: usize) -> (f64, f64) {
        if b >= self.n_bins {
            (1.0, 1.0)
        } else {
            (f64::from(self.edges[b]), f64::from(self.edges[b + 1]))
        }
    }

    /// Bin of an f32 confidence: `Some(b)` with `b < n_reported_bins()`, or `None` when it
    /// falls in no bin (`0.0` under right-closed bins, or a value outside `[0, 1]`).
    ///
    /// ```
    /// use calseg_metrics::edges::{BinEdges, EdgeConvention};
    /// let left = BinEdges::new(10, EdgeConvention::LeftClosed)?;
    /// let right = BinEdges::new(10, EdgeConvention::RightClosed)?;
    /// let tm = BinEdges::new(10, EdgeConvention::Torchmetrics)?;
    /// assert_eq!(left.bin_f32(0.5), Some(5)); // on an edge: upper bin
    /// assert_eq!(right.bin_f32(0.5), Some(4)); // on an edge: lower bin
    /// assert_eq!((left.bin_f32(1.0), right.bin_f32(1.0), tm.bin_f32(1.0)), (Some(9), Some(9), Some(10)));
    /// assert_eq!((left.bin_f32(0.0), right.bin_f32(0.0)), (Some(0), None));
    /// # Ok::<(), calseg_metrics::MetricsError>(())
    /// ```
    pub fn bin_f32(&self, x: f32) -> Option<usize> {
        slot_to_bin(SlotTable::<f32>::new(self).slot(x), self)
    }

    /// Bin of an f64 confidence, compared with the f32 edges converted to f64.
    pub fn bin_f64(&self, x: f64) -> Option<usize> {
        slot_to_bin(SlotTable::<f64>::new(self).slot(x), self)
    }
}

fn slot_to_bin(slot: usize, e: &BinEdges) -> Option<usize> {
    if slot == 0 || slot > e.n_reported_bins() {
        None
    } else {
        Some(slot - 1)
    }
}

/// Float types confidences are binned in: f32 and f64. Sealed.
pub trait EdgeFloat:
    Copy
    + PartialOrd
    + std::ops::Mul<Output = Self>
    + std::ops::Sub<Output = Self>
    + sealed::Sealed
    + 'static
{
    /// `+∞`.
    const INFINITY: Self;
    /// `0`.
    const ZERO_: Self;
    /// `1`.
    const ONE_: Self;
    /// An f64 constant in this type (rounded).
    fn from_f64_edge(v: f64) -> Self;
    /// An f32 edge in this type (exact).
    fn from_edge(e: f32) -> Self;
    /// The next representable value above a non-negative finite `self`.
    fn next_up_nonneg(self) -> Self;
    /// The next representable value below a positive finite `self`.
    fn prev_pos(self) -> Self;
    /// `n` as this type (exact for `n <= MAX_BINS`).
    fn from_count(n: usize) -> Self;
    /// Truncation towards zero, saturating (`NaN` → 0).
    fn trunc_index(self) -> usize;
    /// Truncation towards zero to `i32`, saturating (`NaN` → 0); vectorises.
    fn trunc_i32(self) -> i32;
    /// `i` as this type.
    fn from_i32(i: i32) -> Self;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// The f32 and f64 implementations are the same code up to the type: exact conversions
/// (`as` from f32/i32 to f64 is exact; f64 → f32 rounds once, which is how the edges are
/// defined) and the bit-level neighbours of a finite value.
macro_rules! impl_edge_float {
    ($t:ty) => {
        impl EdgeFloat for $t {
            const INFINITY: Self = <$t>::INFINITY;
            const ZERO_: Self = 0.0;
            const ONE_: Self = 1.0;
            #[inline(always)]
            fn from_f64_edge(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn from_edge(e: f32) -> Self {
                e as $t
            }
            #[inline(always)]
            fn next_up_nonneg(self) -> Self {
                <$t>::from_bits(self.to_bits() + 1)
            }
            #[inline(always)]
            fn prev_pos(self) -> Self {
                <$t>::from_bits(self.to_bits() - 1)
            }
            #[inline(always)]
            fn from_count(n: usize) -> Self {
                n as $t
            }
            #[inline(always)]
            fn trunc_index(self) -> usize {
                self as usize
            }
            #[inline(always)]
            fn trunc_i32(self) -> i32 {
                self as i32
            }
            #[inline(always)]
            fn from_i32(i: i32) -> Self {
                i as $t
            }
        }
    };
}

impl_edge_float!(f32);
impl_edge_float!(f64);

/// Branch-free bin lookup used by the hot loops.
///
/// Slots: `0` = "no bin" (trash), `1..=n` = bins `0..n`, `n + 1` = torchmetrics' extra bin.
/// A guess `g = ⌊x·n⌋` is off by at most one from the true bin, so the slot is
/// `g + 1 + [x ≥ E[g+1]] − [x < E[g]]`, clamped to the last slot of the convention. A
/// right-closed comparison `x > e` is the left-closed `x ≥ next_up(e)`, so right-closed
/// bins use the edges moved up by one ulp (`E[0] = next_up(0)` sends `0.0` to the trash);
/// `E[n + 1] = +∞`.
#[derive(Debug, Clone)]
pub(crate) struct SlotTable<T> {
    e: Vec<T>,
    pub(crate) nf: T,
    pub(crate) n: usize,
    pub(crate) max_slot: usize,
    /// Fast path: fractional parts of `x·n` closer than this to an integer need the exact
    /// lookup (edges are within 2.5 ulp of `k/n`, `x·n` within 1 ulp: `n·2⁻²⁰` is 4× that).
    pub(crate) delta: T,
    pub(crate) one_minus_delta: T,
    /// Slot of `x == 0` (1, or 0 = no bin for right-closed bins).
    pub(crate) slot0: u32,
    /// `x ∈ [a_lo, a_hi)` ⟺ slot 1 (bin 0).
    pub(crate) a_lo: T,
    pub(crate) a_hi: T,
    /// `x ∈ [b_lo, b_hi]` ⟺ slot `n` (the last bin).
    pub(crate) b_lo: T,
    pub(crate) b_hi: T,
}

impl<T: EdgeFloat> SlotTable<T> {
    pub(crate) fn new(b: &BinEdges) -> Self {
        let n = b.n_bins;
        let mut e: Vec<T> = b
            .edges
            .iter()
            .enumerate()
            .map(|(k, &x)| {
                let v = T::from_edge(x);
                // `x > e` is `x ≥ next_up(e)`; MONAI's bin 0 is closed at 0 too.
                match b.convention {
                    EdgeConvention::RightClosed => v.next_up_nonneg(),
                    EdgeConvention::Monai if k > 0 => v.next_up_nonneg(),
                    _ => v,
                }
            })
            .collect();
        e.push(T::INFINITY);
        let max_slot = match b.convention {
            EdgeConvention::Torchmetrics => n + 1,
            _ => n,
        };
        let delta = n as f64 * 2f64.powi(-20);
        let (a_lo, a_hi, b_lo) = (e[0], e[1], e[n - 1]);
        let b_hi = if b.convention == EdgeConvention::Torchmetrics {
            T::ONE_.prev_pos() // 1.0 itself goes to the extra bin
        } else {
            T::ONE_
        };
        SlotTable {
            a_lo,
            a_hi,
            b_lo,
            b_hi,
            e,
            nf: T::from_count(n),
            n,
            max_slot,
            delta: T::from_f64_edge(delta),
            one_minus_delta: T::from_f64_edge(1.0 - delta),
            slot0: if b.convention == EdgeConvention::RightClosed {
                0
            } else {
                1
            },
        }
    }

    /// Branch-free guess of the slot of `x ∈ [0, 1]` from `⌊x·n⌋` alone, and whether it
    /// needs the exact lookup ([`slot`](Self::slot)): only when `x·n` is within `delta` of
    /// an inner edge. `x = 0`, `x = 1`, tiny `x` (below the first inner edge) and `x` just
    /// below 1 (above the last inner edge) are right without it — these are the common
    /// values of saturated softmax outputs. Vectorises (no table lookup).
    #[inline(always)]
    pub(crate) fn guess(&self, x: T) -> (u32, bool) {
        let t = x * self.nf;
        let g = t.trunc_i32();
        let fr = t - T::from_i32(g);
        // Near the top edge (x·n → n from below) nothing is to fix: 1.0 itself is exact
        // (clamped below) and anything below it is in the last bin.
        // `&`/`|` on bools, not `&&`/`||`: no branches.
        let need = ((g > 0) & (fr < self.delta) & (x != T::ONE_))
            | ((fr > self.one_minus_delta) & (g < self.n as i32 - 1));
        // (`max(0)`/saturating: garbage in — a NaN or negative value that validation is
        // about to reject — must not overflow.)
        let slot = (g.max(0) as u32)
            .saturating_add(1)
            .min(self.max_slot as u32);
        let slot = if x == T::ZERO_ { self.slot0 } else { slot };
        (slot, need)
    }

    /// This table as an f32 table, when `T` is f32.
    pub(crate) fn as_f32(&self) -> Option<&SlotTable<f32>> {
        (self as &dyn std::any::Any).downcast_ref::<SlotTable<f32>>()
    }

    /// Number of slots (`n + 2`).
    #[inline(always)]
    pub(crate) fn n_slots(&self) -> usize {
        self.n + 2
    }

    /// Slot of `x` (see the type docs). Any input (even NaN or out of range) gives a slot
    /// `< n_slots()`; callers only pass validated confidences.
    #[inline(always)]
    pub(crate) fn slot(&self, x: T) -> usize {
        let g = (x * self.nf).trunc_index().min(self.n);
        let up = (x >= self.e[g + 1]) as usize;
        let down = (x < self.e[g]) as usize;
        (g + 1 + up - down).min(self.max_slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference: numpy's searchsorted rule, straight from the definition.
    fn reference_bin(x: f64, edges: &[f64], conv: EdgeConvention) -> Option<usize> {
        let n = edges.len() - 1;
        match conv {
            EdgeConvention::LeftClosed | EdgeConvention::Torchmetrics => {
                let cnt = edges.iter().filter(|&&e| e <= x).count();
                if cnt == 0 {
                    return None;
                }
                let b = cnt - 1;
                if b == n {
                    if conv == EdgeConvention::LeftClosed {
                        Some(n - 1)
                    } else {
                        Some(n)
                    }
                } else {
                    Some(b)
                }
            }
            EdgeConvention::RightClosed => {
                let cnt = edges.iter().filter(|&&e| e < x).count();
                if cnt == 0 || cnt > n {
                    None
                } else {
                    Some(cnt - 1)
                }
            }
            // torch.bucketize(x, edges[1:], right=False).clamp(max=n-1): inner and last
            // edges strictly below x.
            EdgeConvention::Monai => {
                let cnt = edges[1..].iter().filter(|&&e| e < x).count();
                Some(cnt.min(n - 1))
            }
        }
    }

    #[test]
    fn linspace_matches_known_torch_values() {
        // From ref.json (edges_f32_hex, n = 15): torch differs from f32(k/15) at these k.
        let e = torch_linspace_f32(15);
        let differ: Vec<usize> = (0..16)
            .filter(|&k| e[k] != (k as f64 / 15.0) as f32)
            .collect();
        assert_eq!(differ, vec![3, 6, 7, 8, 9, 10]);
        let e10 = torch_linspace_f32(10);
        assert_eq!(e10[7], 0.7f32);
        assert_eq!(e10[10], 1.0);
        for n in 1..=300 {
            let e = torch_linspace_f32(n);
            assert_eq!(e[0], 0.0);
            assert_eq!(e[n], 1.0);
            assert!(e.windows(2).all(|w| w[0] < w[1]), "n = {n}");
        }
    }

    #[test]
    fn fast_slot_agrees_with_searchsorted_near_every_edge() {
        for conv in [
            EdgeConvention::LeftClosed,
            EdgeConvention::RightClosed,
            EdgeConvention::Torchmetrics,
            EdgeConvention::Monai,
        ] {
            for n in (1..=64).chain([100, 128, 200, 255, 1000]) {
                let b = BinEdges::new(n, conv).unwrap();
                let ef: Vec<f64> = b.edges().iter().map(|&x| f64::from(x)).collect();
                let mut xs: Vec<f32> = vec![0.0, 1.0, f32::from_bits(1), 1e-30, 0.5];
                for &e in b.edges() {
                    let mut lo = e;
                    let mut hi = e;
                    for _ in 0..4 {
                        xs.push(lo);
                        xs.push(hi);
                        lo = f32::from_bits(lo.to_bits().saturating_sub(1));
                        hi = f32::from_bits(hi.to_bits() + 1);
                    }
                    xs.push((f64::from(e) + 0.3 / n as f64) as f32);
                }
                let t32 = SlotTable::<f32>::new(&b);
                for &x in xs.iter().filter(|&&x| (0.0..=1.0).contains(&x)) {
                    let exact = t32.slot(x);
                    let (g, need) = t32.guess(x);
                    assert!(need || g as usize == exact, "guess n={n} {conv:?} x={x:e}");
                    // The hot-row fast paths: range ⇒ slot (1 = bin 0, n = last bin).
                    if x >= t32.a_lo && x < t32.a_hi {
                        assert_eq!(exact, 1, "A n={n} {conv:?} x={x:e}");
                    }
                    if x >= t32.b_lo && x <= t32.b_hi {
                        assert_eq!(exact, n, "B n={n} {conv:?} x={x:e}");
                    }
                    assert_eq!(
                        b.bin_f32(x),
                        reference_bin(f64::from(x), &ef, conv),
                        "f32 n={n} {conv:?} x={x:e}"
                    );
                    let xd = f64::from(x);
                    for y in [xd, xd + 1e-12, xd - 1e-12] {
                        if (0.0..=1.0).contains(&y) {
                            assert_eq!(
                                b.bin_f64(y),
                                reference_bin(y, &ef, conv),
                                "f64 n={n} {conv:?} x={y:e}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn conventions_at_zero_one_and_edges() {
        let l = BinEdges::new(15, EdgeConvention::LeftClosed).unwrap();
        let r = BinEdges::new(15, EdgeConvention::RightClosed).unwrap();
        let t = BinEdges::new(15, EdgeConvention::Torchmetrics).unwrap();
        assert_eq!(l.n_reported_bins(), 15);
        assert_eq!(t.n_reported_bins(), 16);
        assert_eq!(t.bounds(15), (1.0, 1.0));
        assert_eq!(l.bin_f32(0.0), Some(0));
        assert_eq!(r.bin_f32(0.0), None);
        assert_eq!(t.bin_f32(0.0), Some(0));
        assert_eq!(l.bin_f32(1.0), Some(14));
        assert_eq!(r.bin_f32(1.0), Some(14));
        assert_eq!(t.bin_f32(1.0), Some(15));
        let e3 = l.edges()[3];
        assert_eq!(l.bin_f32(e3), Some(3));
        assert_eq!(r.bin_f32(e3), Some(2));
        // f32(3/15) is one ulp away from torch's edge: it lands on the other side.
        let naive = (3.0f64 / 15.0) as f32;
        assert_ne!(naive, e3);
        assert_eq!(l.bin_f32(naive), if naive < e3 { Some(2) } else { Some(3) });
        // f64 confidence 0.7 is above the f32 edge 0.699999988: bin 7 for both conventions
        let l10 = BinEdges::new(10, EdgeConvention::LeftClosed).unwrap();
        let r10 = BinEdges::new(10, EdgeConvention::RightClosed).unwrap();
        assert_eq!(l10.bin_f64(0.7), Some(7));
        assert_eq!(r10.bin_f64(0.7), Some(7));
        assert_eq!(l10.bin_f32(0.7), Some(7));
        assert_eq!(r10.bin_f32(0.7), Some(6));
    }

    #[test]
    fn monai_edges_and_bins() {
        let m = BinEdges::new(20, EdgeConvention::Monai).unwrap();
        let e = m.edges();
        assert_eq!(e.len(), 21);
        assert_eq!((e[0], e[20]), (0.0, 1.0 + f32::EPSILON));
        // Each edge within 2 ulp of k·(1 + ε)/20, increasing.
        for (k, &x) in e.iter().enumerate() {
            let exact = k as f64 * (1.0 + f64::from(f32::EPSILON)) / 20.0;
            assert!(
                (f64::from(x) - exact).abs() <= 2.0 * 2f64.powi(-24),
                "k = {k}"
            );
        }
        assert!(e.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(m.n_reported_bins(), 20);
        // 0 in bin 0, 1 in the last bin, an edge in the bin below it, just above it: above.
        assert_eq!(m.bin_f32(0.0), Some(0));
        assert_eq!(m.bin_f32(1.0), Some(19));
        assert_eq!(m.bin_f32(e[1]), Some(0));
        assert_eq!(m.bin_f32(f32::from_bits(e[1].to_bits() + 1)), Some(1));
        assert_eq!(m.bin_f32(e[10]), Some(9));
        assert_eq!(m.bin_f32(e[19]), Some(18));
        assert_eq!(m.bin_f32(0.95), Some(18)); // 0.95 < e[19] = 19(1 + ε)/20
        assert_eq!(
            m.bin_f64(0.5),
            if f64::from(e[10]) < 0.5 {
                Some(10)
            } else {
                Some(9)
            }
        );
        assert_eq!(m.bounds(19).1, 1.0 + f64::from(f32::EPSILON));
        assert_eq!(
            "monai".parse::<EdgeConvention>().unwrap(),
            EdgeConvention::Monai
        );
        assert_eq!(EdgeConvention::Monai.to_string(), "monai");
    }

    /// torchmetrics' confidence-0 and confidence-1 edge cases (module docs): 0.0 lands in
    /// bin 0 (`bucketize(0, edges, right=True) − 1 = 0`, never −1) and 1.0 alone in the
    /// extra bin `n`; a negative confidence (torch's −1) is no bin here and is rejected by
    /// the input checks before any binning.
    #[test]
    fn torchmetrics_zero_and_one() {
        for n in [1, 10, 15, 20] {
            let t = BinEdges::new(n, EdgeConvention::Torchmetrics).unwrap();
            assert_eq!(t.bin_f32(0.0), Some(0));
            assert_eq!(t.bin_f64(0.0), Some(0));
            assert_eq!(t.bin_f32(f32::from_bits(1)), Some(0));
            assert_eq!(t.bin_f32(1.0), Some(n));
            assert_eq!(t.bin_f32(f32::from_bits(1.0f32.to_bits() - 1)), Some(n - 1));
            assert_eq!(t.bin_f32(-0.5), None);
        }
        let p = ndarray::Array2::from_shape_vec((2, 1), vec![-0.25f32, 1.25]).unwrap();
        let cfg = crate::MetricConfig::default().edges(EdgeConvention::Torchmetrics);
        assert!(matches!(
            crate::evaluate(p.view(), ndarray::array![1u8].view(), &cfg),
            Err(MetricsError::ProbabilityOutOfRange { .. })
        ));
    }

    #[test]
    fn bad_bin_counts_are_errors() {
        assert!(matches!(
            BinEdges::new(0, EdgeConvention::LeftClosed),
            Err(MetricsError::InvalidConfig(_))
        ));
        assert!(BinEdges::new(MAX_BINS + 1, EdgeConvention::LeftClosed).is_err());
        assert!("left".parse::<EdgeConvention>().is_ok());
        assert!("middle".parse::<EdgeConvention>().is_err());
    }
}
