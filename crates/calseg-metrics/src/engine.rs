//! The one-pass engine behind every accumulator.
//!
//! # Data flow
//! The voxels of an input are cut into fixed blocks of [`BLOCK`] voxels (parallel tasks,
//! rayon) and each block into chunks of [`CHUNK`] voxels. Per chunk, with the `K` channel
//! slices of the chunk in L1/L2:
//!
//! 1. labels → class indices (`u32`), checked `< K`;
//! 2. probabilities: read in place (standard layout) or gathered; renormalised or
//!    softmaxed into scratch if the [`InputMode`] says so;
//! 3. one channel-outer, voxel-inner loop computes confidence (max), prediction (first
//!    argmax), and the per-voxel sum and minimum used by the validation;
//! 4. histograms: bin slot of each confidence ([`SlotTable`]) and a scatter into four
//!    interleaved copies of the histogram (breaks the store-to-load dependency when most
//!    voxels land in the same bin), with counts and hits packed in one `u64` and
//!    confidence sums in `f64`;
//! 5. Dice counts (vectorised compares), Brier (f64) and NLL (product of clamped `p_y` in
//!    f64 with the exponent renormalised every 16 factors, one `ln` per lane per chunk).
//!
//! Every block produces a [`State`]; blocks are added in block order, so the results are
//! the same, bit for bit, whatever the number of threads, and whatever the memory layout
//! of the input.
//!
//! On x86-64 the block kernel is compiled twice, once for the baseline target and once with
//! AVX2 enabled, chosen at run time; both do the same operations in the same order (no
//! FMA contraction, no reassociation), so they give identical results.

use ndarray::{ArrayViewD, Axis};
use rayon::prelude::*;

use crate::MetricsError;
use crate::config::{InputMode, MetricConfig, Region};
use crate::edges::{BinEdges, SlotTable};
use crate::input::{ClassSource, Input, LabelPair, MaskSource, Probability, gather_map, unravel};

/// Voxels per chunk (the unit of the inner loops).
pub(crate) const CHUNK: usize = 2048;
/// Voxels per parallel task (a multiple of [`CHUNK`]; fixed, so results do not depend on
/// the number of threads).
pub(crate) const BLOCK: usize = 32 * CHUNK;
/// Blocks per wave: bounds the memory of the block results to `WAVE × state size`.
const WAVE: usize = 256;
/// Sentinel class of voxels the Foreground test never drops (no background).
const NO_CLASS: u32 = u32::MAX;
/// Interleaved histogram copies.
const LANES: usize = 4;

/// Which parts of the work an accumulator needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Needs {
    pub top: bool,
    pub classwise: bool,
    pub overlap: bool,
    pub scores: bool,
}

/// Per-bin sums: slot 0 = "no bin", slots `1..=n` = bins, slot `n+1` = torchmetrics' extra
/// bin (see [`SlotTable`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Hist {
    pub count: Vec<u64>,
    pub hits: Vec<u64>,
    pub sum: Vec<f64>,
}

impl Hist {
    fn new(slots: usize) -> Self {
        Hist {
            count: vec![0; slots],
            hits: vec![0; slots],
            sum: vec![0.0; slots],
        }
    }
    fn add(&mut self, o: &Hist) {
        for (a, b) in self.count.iter_mut().zip(&o.count) {
            *a += b;
        }
        for (a, b) in self.hits.iter_mut().zip(&o.hits) {
            *a += b;
        }
        for (a, b) in self.sum.iter_mut().zip(&o.sum) {
            *a += b;
        }
    }
}

/// Everything accumulated: exact integer counts and f64 sums.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct State {
    pub k: usize,
    /// Voxels in the calibration region.
    pub n_cal: u64,
    /// All voxels (the Dice/IoU domain).
    pub n_all: u64,
    pub top: Option<Hist>,
    pub class: Vec<Hist>,
    pub tp: Vec<u64>,
    pub pred_count: Vec<u64>,
    pub gt_count: Vec<u64>,
    pub brier: f64,
    pub nll: f64,
}

impl State {
    pub(crate) fn new(k: usize, slots: usize, needs: Needs) -> Self {
        let ov = if needs.overlap { k } else { 0 };
        State {
            k,
            n_cal: 0,
            n_all: 0,
            top: needs.top.then(|| Hist::new(slots)),
            class: if needs.classwise {
                vec![Hist::new(slots); k]
            } else {
                Vec::new()
            },
            tp: vec![0; ov],
            pred_count: vec![0; ov],
            gt_count: vec![0; ov],
            brier: 0.0,
            nll: 0.0,
        }
    }

    pub(crate) fn add(&mut self, o: &State) {
        self.n_cal += o.n_cal;
        self.n_all += o.n_all;
        if let (Some(a), Some(b)) = (self.top.as_mut(), o.top.as_ref()) {
            a.add(b);
        }
        for (a, b) in self.class.iter_mut().zip(&o.class) {
            a.add(b);
        }
        for (a, b) in self.tp.iter_mut().zip(&o.tp) {
            *a += b;
        }
        for (a, b) in self.pred_count.iter_mut().zip(&o.pred_count) {
            *a += b;
        }
        for (a, b) in self.gt_count.iter_mut().zip(&o.gt_count) {
            *a += b;
        }
        self.brier += o.brier;
        self.nll += o.nll;
    }
}

/// Configuration + accumulated state, shared by all accumulators.
#[derive(Debug, Clone)]
pub(crate) struct Engine {
    pub config: MetricConfig,
    pub needs: Needs,
    pub edges: BinEdges,
    pub state: Option<State>,
}

impl Engine {
    pub(crate) fn new(config: MetricConfig, needs: Needs) -> Result<Self, MetricsError> {
        config.validate()?;
        let edges = BinEdges::new(config.n_bins, config.edges)?;
        Ok(Engine {
            config,
            needs,
            edges,
            state: None,
        })
    }

    pub(crate) fn reset(&mut self) {
        self.state = None;
    }

    fn check_k(&self, k: usize) -> Result<(), MetricsError> {
        if let Some(s) = &self.state {
            if s.k != k {
                return Err(MetricsError::ClassCountMismatch {
                    expected: s.k,
                    got: k,
                });
            }
        }
        if let Some(b) = self.config.background {
            if b >= k {
                return Err(MetricsError::InvalidConfig(format!(
                    "background class {b} is not smaller than the number of classes {k}"
                )));
            }
        }
        Ok(())
    }

    fn check_mask(&self, has_mask: bool) -> Result<(), MetricsError> {
        match (self.config.region, has_mask) {
            (Region::Mask, false) => Err(MetricsError::MissingMask),
            (Region::Mask, true) | (_, false) => Ok(()),
            (r, true) => Err(MetricsError::UnexpectedMask {
                region: r.to_string(),
            }),
        }
    }

    fn absorb(&mut self, total: State) {
        match &mut self.state {
            Some(s) => s.add(&total),
            None => self.state = Some(total),
        }
    }

    /// Adds `other`'s state (same configuration required).
    pub(crate) fn merge(&mut self, other: &Engine) -> Result<(), MetricsError> {
        if self.config != other.config || self.needs != other.needs {
            return Err(MetricsError::ConfigMismatch {
                ours: format!("{:?}", self.config),
                theirs: format!("{:?}", other.config),
            });
        }
        if let Some(o) = &other.state {
            self.check_k(o.k)?;
            self.absorb(o.clone());
        }
        Ok(())
    }

    /// Accumulates one input; on error the state is unchanged.
    pub(crate) fn update<T: Probability>(
        &mut self,
        input: &Input<'_, T>,
    ) -> Result<(), MetricsError> {
        let k = input.n_classes();
        self.check_k(k)?;
        self.check_mask(input.mask.is_some())?;
        if input.pred.is_some() && !self.needs.overlap {
            // A hard prediction only feeds Dice/IoU; accepting it here would be a silent no-op.
            return Err(MetricsError::Invalid(
                "a hard prediction was given to an accumulator that computes no overlap".into(),
            ));
        }
        let table = SlotTable::<T>::new(&self.edges);
        let views: Vec<ArrayViewD<'_, T>> = (0..k)
            .map(|c| input.probs.clone().index_axis_move(Axis(0), c))
            .collect();
        let fast: Option<Vec<&[T]>> = views.iter().map(|v| v.to_slice()).collect();
        let ctx = Ctx {
            k,
            n: input.n_voxels(),
            spatial: &input.spatial,
            fast,
            views,
            labels: input.labels.as_ref(),
            mask: if self.config.region == Region::Mask {
                input.mask.as_deref()
            } else {
                None
            },
            pred: input.pred.as_deref(),
            table: &table,
            needs: self.needs,
            mode: self.config.input,
            region: self.config.region,
            background: match (self.config.region, self.config.background) {
                (Region::Foreground, Some(b)) => b as u32,
                _ => NO_CLASS,
            },
            nll_floor: self.config.nll_floor,
            simd: simd_enabled() && T::as_f32_slice(&[]).is_some(),
        };
        let total = run_all(&ctx, |c, b| run_block(c, b))?;
        self.absorb(total);
        Ok(())
    }

    /// Accumulates overlap counts from a hard prediction (no probabilities).
    pub(crate) fn update_labels(
        &mut self,
        pair: &LabelPair<'_>,
        k: usize,
    ) -> Result<(), MetricsError> {
        if k < 2 {
            return Err(MetricsError::TooFewClasses { n_classes: k });
        }
        self.check_k(k)?;
        let ctx = PairCtx {
            k,
            n: pair.spatial.iter().product(),
            spatial: &pair.spatial,
            labels: pair.labels.as_ref(),
            pred: pair.pred.as_ref(),
            slots: self.edges.n_bins() + 2,
            needs: self.needs,
        };
        let total = run_all(&ctx, |c, b| pair_block(c, b))?;
        self.absorb(total);
        Ok(())
    }
}

/// Whether the AVX2 kernels may run: the CPU has AVX2, and (tests only) they are not
/// switched off to exercise the portable loops.
pub(crate) fn simd_enabled() -> bool {
    #[cfg(test)]
    if FORCE_PORTABLE.with(|f| f.get()) {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("popcnt")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(test)]
thread_local! {
    /// Test switch: run the portable loops even on an AVX2 CPU.
    pub(crate) static FORCE_PORTABLE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

trait HasLen: Sync {
    fn n(&self) -> usize;
    fn empty_state(&self) -> State;
}

/// Runs `block` over all blocks (in parallel waves) and adds the results in block order.
/// The first error in voxel order wins; nothing is returned on error.
fn run_all<C: HasLen>(
    ctx: &C,
    block: impl Fn(&C, usize) -> Result<State, MetricsError> + Sync,
) -> Result<State, MetricsError> {
    let n_blocks = ctx.n().div_ceil(BLOCK);
    let mut total = ctx.empty_state();
    if n_blocks <= 1 {
        if n_blocks == 1 {
            total.add(&block(ctx, 0)?);
        }
        return Ok(total);
    }
    let mut w = 0;
    while w < n_blocks {
        let end = (w + WAVE).min(n_blocks);
        let results: Vec<Result<State, MetricsError>> =
            (w..end).into_par_iter().map(|b| block(ctx, b)).collect();
        for r in results {
            total.add(&r?);
        }
        w = end;
    }
    Ok(total)
}

struct Ctx<'a, 'b, T> {
    k: usize,
    n: usize,
    spatial: &'b [usize],
    fast: Option<Vec<&'a [T]>>,
    views: Vec<ArrayViewD<'a, T>>,
    labels: &'b dyn ClassSource,
    mask: Option<&'b dyn MaskSource>,
    pred: Option<&'b dyn ClassSource>,
    table: &'b SlotTable<T>,
    needs: Needs,
    mode: InputMode,
    region: Region,
    background: u32,
    nll_floor: f64,
    /// Use the AVX2 kernels (f32 input on a CPU with AVX2).
    simd: bool,
}

impl<T: Probability> HasLen for Ctx<'_, '_, T> {
    fn n(&self) -> usize {
        self.n
    }
    fn empty_state(&self) -> State {
        State::new(self.k, self.table.n_slots(), self.needs)
    }
}

/// Voxels per vector group in the fused loop (8 f32 = one AVX2 register).
pub(crate) const W: usize = 8;

/// Row of bin 0 without a hit (one of the two hot rows, see [`LaneHist`]).
pub(crate) const HOT_A: u32 = 2;

/// Histogram accumulators of one block, and the packed list of the current chunk.
///
/// Every voxel of the region has a row `2·slot + hit`. Two rows are "hot" — bin 0 without
/// a hit (`p_c ≈ 0`, `y ≠ c`) and the last bin with a hit (confident and right) — and hold
/// most voxels of a real segmentation: they are summed in eight vector lanes (voxel `i` →
/// lane `i % 8`). Every other voxel of the region is packed, in voxel order, into the list,
/// which is scattered at the end of the chunk into four interleaved histogram copies (list
/// position `j` → copy `j % 4`: four copies break the store-to-load dependency between
/// voxels of the same bin). Voxels outside the region (row `2·S`) are dropped. Counts are
/// `u32` (a block has < 2³² voxels), sums f64.
pub(crate) struct LaneHist<T> {
    slots: usize,
    cnt: Vec<u32>,
    sum: Vec<f64>,
    /// Hot row sums: lanes of row `HOT_A`, then lanes of row `hot_b`.
    pub(crate) hot: [f64; 2 * W],
    pub(crate) hot_cnt: [u32; 2 * W],
    pub(crate) list_row: Vec<u32>,
    pub(crate) list_x: Vec<T>,
    pub(crate) len: usize,
    /// Row of the last bin with a hit.
    pub(crate) hot_b: u32,
    /// Row of voxels outside the region.
    pub(crate) out: u32,
    /// Which hot row the last all-hot group of the SIMD kernel fell in (a hint only).
    pub(crate) last_b: bool,
}

impl<T: Probability> LaneHist<T> {
    fn new(slots: usize) -> Self {
        LaneHist {
            slots,
            cnt: vec![0; LANES * 2 * slots],
            sum: vec![0.0; LANES * 2 * slots],
            hot: [0.0; 2 * W],
            hot_cnt: [0; 2 * W],
            list_row: vec![0; CHUNK + W],
            list_x: vec![T::ZERO; CHUNK + W],
            len: 0,
            hot_b: 2 * (slots as u32).saturating_sub(2) + 1,
            out: 2 * slots as u32,
            last_b: false,
        }
    }

    /// One voxel (portable path): row, hot lanes or list.
    #[inline(always)]
    fn voxel(&mut self, tab: &SlotTable<T>, x: T, hit: bool, inside: bool, i: usize) {
        let (slot, need) = tab.guess(x);
        let slot = if need { tab.slot(x) as u32 } else { slot };
        let row = if inside {
            2 * slot + u32::from(hit)
        } else {
            self.out
        };
        let l = i % W;
        let a = row == HOT_A;
        let b = row == self.hot_b;
        self.hot[l] += if a { x.to_f64() } else { 0.0 };
        self.hot[W + l] += if b { x.to_f64() } else { 0.0 };
        self.hot_cnt[l] += u32::from(a);
        self.hot_cnt[W + l] += u32::from(b);
        self.list_row[self.len] = row;
        self.list_x[self.len] = x;
        self.len += usize::from(!(a | b | (row == self.out)));
    }

    /// Scatters the list (position `j` → copy `j % 4`) and empties it.
    #[inline(always)]
    fn flush(&mut self) {
        let m = self.len;
        let rows = 2 * self.slots;
        let (c0, rest) = self.cnt.split_at_mut(rows);
        let (c1, rest) = rest.split_at_mut(rows);
        let (c2, c3) = rest.split_at_mut(rows);
        let (f0, rest) = self.sum.split_at_mut(rows);
        let (f1, rest) = rest.split_at_mut(rows);
        let (f2, f3) = rest.split_at_mut(rows);
        let idx = &self.list_row[..m];
        let xs = &self.list_x[..m];
        let quads = m / LANES;
        for q in 0..quads {
            let i = q * LANES;
            let (j0, j1, j2, j3) = (
                idx[i] as usize,
                idx[i + 1] as usize,
                idx[i + 2] as usize,
                idx[i + 3] as usize,
            );
            c0[j0] += 1;
            f0[j0] += xs[i].to_f64();
            c1[j1] += 1;
            f1[j1] += xs[i + 1].to_f64();
            c2[j2] += 1;
            f2[j2] += xs[i + 2].to_f64();
            c3[j3] += 1;
            f3[j3] += xs[i + 3].to_f64();
        }
        for i in quads * LANES..m {
            let j = idx[i] as usize;
            c0[j] += 1;
            f0[j] += xs[i].to_f64();
        }
        self.len = 0;
    }

    /// Adds everything into `h` (fixed order) and clears it.
    fn drain_into(&mut self, h: &mut Hist) {
        let rows = 2 * self.slots;
        let hot_b = self.hot_b as usize;
        let lane_sum =
            |v: &[f64]| ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
        for slot in 0..self.slots {
            let mut cnt = 0u64;
            let mut hit = 0u64;
            let mut f = [0.0f64; LANES];
            for (l, fl) in f.iter_mut().enumerate() {
                let base = l * rows + 2 * slot;
                let miss = u64::from(self.cnt[base]);
                let hits = u64::from(self.cnt[base + 1]);
                cnt += miss + hits;
                hit += hits;
                *fl = self.sum[base] + self.sum[base + 1];
            }
            let mut sum = (f[0] + f[1]) + (f[2] + f[3]);
            for (half, row) in [(0usize, HOT_A as usize), (1, hot_b)] {
                if row / 2 == slot {
                    let c: u64 = self.hot_cnt[half * W..(half + 1) * W]
                        .iter()
                        .map(|&x| u64::from(x))
                        .sum();
                    cnt += c;
                    if row % 2 == 1 {
                        hit += c;
                    }
                    sum += lane_sum(&self.hot[half * W..(half + 1) * W]);
                }
            }
            h.count[slot] += cnt;
            h.hits[slot] += hit;
            h.sum[slot] += sum;
        }
        self.cnt.fill(0);
        self.sum.fill(0.0);
        self.hot = [0.0; 2 * W];
        self.hot_cnt = [0; 2 * W];
    }
}

/// Scratch buffers and accumulators of one block.
struct Scratch<T> {
    pbuf: Vec<T>,
    lbuf: Vec<f64>,
    cls: Vec<u32>,
    ins: Vec<u32>,
    hard: Vec<u32>,
    pred: Vec<u32>,
    top: LaneHist<T>,
    class: Vec<LaneHist<T>>,
    /// Brier sums per lane (voxel `i` → lane `i % W`).
    brier: [f64; W],
    /// NLL running products and exponents per lane.
    prod: [f64; W],
    ex: [i64; W],
}

impl<T: Probability> Scratch<T> {
    fn new(k: usize, slots: usize, needs: Needs, mode: InputMode, copy: bool) -> Self {
        Scratch {
            pbuf: if copy {
                vec![T::ZERO; k * CHUNK]
            } else {
                Vec::new()
            },
            lbuf: if mode == InputMode::Logits {
                vec![0.0; k * CHUNK]
            } else {
                Vec::new()
            },
            cls: vec![0; CHUNK],
            ins: vec![1; CHUNK],
            hard: vec![0; CHUNK],
            pred: vec![0; CHUNK],
            top: LaneHist::new(if needs.top { slots } else { 2 }),
            class: if needs.classwise {
                (0..k).map(|_| LaneHist::new(slots)).collect()
            } else {
                Vec::new()
            },
            brier: [0.0; W],
            prod: [1.0; W],
            ex: [0; W],
        }
    }
}

fn run_block<T: Probability>(ctx: &Ctx<'_, '_, T>, b: usize) -> Result<State, MetricsError> {
    #[cfg(target_arch = "x86_64")]
    {
        if ctx.simd {
            // SAFETY: `simd` is only set when the CPU has AVX2.
            return unsafe { block_avx2(ctx, b) };
        }
    }
    block_impl(ctx, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,popcnt")]
fn block_avx2<T: Probability>(ctx: &Ctx<'_, '_, T>, b: usize) -> Result<State, MetricsError> {
    block_impl(ctx, b)
}

#[inline(always)]
fn block_impl<T: Probability>(ctx: &Ctx<'_, '_, T>, b: usize) -> Result<State, MetricsError> {
    let mut st = ctx.empty_state();
    let copy = ctx.fast.is_none() || !matches!(ctx.mode, InputMode::Probabilities { .. });
    let mut scr = Scratch::<T>::new(ctx.k, ctx.table.n_slots(), ctx.needs, ctx.mode, copy);
    let start = b * BLOCK;
    let end = (start + BLOCK).min(ctx.n);
    let mut s = start;
    while s < end {
        let m = CHUNK.min(end - s);
        chunk(ctx, s, m, copy, &mut scr, &mut st)?;
        s += m;
    }
    if let Some(h) = st.top.as_mut() {
        scr.top.drain_into(h);
    }
    for (lanes, h) in scr.class.iter_mut().zip(st.class.iter_mut()) {
        lanes.drain_into(h);
    }
    if ctx.needs.scores {
        let b = &scr.brier;
        st.brier += ((b[0] + b[1]) + (b[2] + b[3])) + ((b[4] + b[5]) + (b[6] + b[7]));
        renorm(&mut scr.prod, &mut scr.ex);
        let mut s = 0.0;
        for l in 0..W {
            s += scr.ex[l] as f64 * std::f64::consts::LN_2 + scr.prod[l].ln();
        }
        st.nll -= s;
    }
    Ok(st)
}

/// Validates class indices `< k`; error names the first bad voxel.
#[inline(always)]
fn check_classes(
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

#[inline(always)]
fn chunk<T: Probability>(
    ctx: &Ctx<'_, '_, T>,
    start: usize,
    m: usize,
    copy: bool,
    scr: &mut Scratch<T>,
    st: &mut State,
) -> Result<(), MetricsError> {
    let k = ctx.k;
    let Scratch {
        pbuf,
        lbuf,
        cls,
        ins,
        hard,
        pred,
        top,
        class,
        brier,
        prod,
        ex,
    } = scr;
    let cls = &mut cls[..m];
    ctx.labels.fill(start, cls);
    check_classes(cls, k, start, ctx.labels, ctx.spatial, "labels")?;

    // --- probabilities -----------------------------------------------------------------
    if copy {
        for c in 0..k {
            let dst = &mut pbuf[c * CHUNK..c * CHUNK + m];
            match &ctx.fast {
                Some(f) => dst.copy_from_slice(&f[c][start..start + m]),
                None => gather_map(&ctx.views[c], start, dst, |v| v),
            }
        }
        match ctx.mode {
            InputMode::Probabilities { .. } => {}
            InputMode::Renormalise => renormalise(pbuf, k, m, start, ctx.spatial)?,
            InputMode::Logits => softmax(pbuf, lbuf, k, m, start, ctx.spatial)?,
        }
    }
    let pb: &[T] = pbuf;
    let chan = |c: usize| -> &[T] {
        if copy {
            &pb[c * CHUNK..c * CHUNK + m]
        } else {
            match &ctx.fast {
                Some(f) => &f[c][start..start + m],
                None => &[],
            }
        }
    };

    // --- region ---------------------------------------------------------------------------
    let masked = ctx.region != Region::All;
    let ins = &mut ins[..m];
    if masked {
        match ctx.mask {
            Some(src) => src.fill(start, ins),
            None => {
                let bg = ctx.background;
                for (w, &c) in ins.iter_mut().zip(cls.iter()) {
                    *w = u32::from(c != bg);
                }
            }
        }
        st.n_cal += ins.iter().map(|&w| u64::from(w)).sum::<u64>();
    } else {
        st.n_cal += m as u64;
    }
    st.n_all += m as u64;
    let ins: &[u32] = ins;
    let cls: &[u32] = cls;

    // --- the fused loop -------------------------------------------------------------------
    let (check, tol) = match ctx.mode {
        InputMode::Probabilities { tol } => (true, tol),
        _ => (false, 0.0),
    };
    let fz = Fused {
        cls,
        ins,
        tol: T::from_f64(tol),
        check,
        floor: ctx.nll_floor,
        table: ctx.table,
    };
    let mut sinks = Sinks {
        pred: &mut pred[..m],
        brier,
        prod,
        ex,
        top,
        class,
    };
    let groups = m / W;
    let n = ctx.needs;
    let bad = match (n.scores, masked, n.top, n.classwise) {
        (false, false, false, false) => {
            run_fused::<T, false, false, false, false>(ctx, &chan, groups, m, &fz, &mut sinks)
        }
        (false, false, true, false) => {
            run_fused::<T, false, false, true, false>(ctx, &chan, groups, m, &fz, &mut sinks)
        }
        (false, true, true, false) => {
            run_fused::<T, false, true, true, false>(ctx, &chan, groups, m, &fz, &mut sinks)
        }
        (false, false, false, true) => {
            run_fused::<T, false, false, false, true>(ctx, &chan, groups, m, &fz, &mut sinks)
        }
        (false, true, false, true) => {
            run_fused::<T, false, true, false, true>(ctx, &chan, groups, m, &fz, &mut sinks)
        }
        (true, false, false, false) => {
            run_fused::<T, true, false, false, false>(ctx, &chan, groups, m, &fz, &mut sinks)
        }
        (true, true, false, false) => {
            run_fused::<T, true, true, false, false>(ctx, &chan, groups, m, &fz, &mut sinks)
        }
        (true, false, true, true) => {
            run_fused::<T, true, false, true, true>(ctx, &chan, groups, m, &fz, &mut sinks)
        }
        (true, true, true, true) => {
            run_fused::<T, true, true, true, true>(ctx, &chan, groups, m, &fz, &mut sinks)
        }
        // Combinations no accumulator uses: the general instance.
        (_, false, _, _) => {
            run_fused::<T, true, false, true, true>(ctx, &chan, groups, m, &fz, &mut sinks)
        }
        (_, true, _, _) => {
            run_fused::<T, true, true, true, true>(ctx, &chan, groups, m, &fz, &mut sinks)
        }
    };
    if bad {
        return Err(first_bad_probability(&chan, k, m, start, ctx.spatial, tol));
    }
    if n.top {
        sinks.top.flush();
    }
    for h in sinks.class.iter_mut() {
        h.flush();
    }

    // --- overlap --------------------------------------------------------------------------
    if n.overlap {
        let pred: &[u32] = sinks.pred;
        let pr: &[u32] = match ctx.pred {
            Some(src) => {
                let h = &mut hard[..m];
                src.fill(start, h);
                check_classes(h, k, start, src, ctx.spatial, "pred")?;
                h
            }
            None => pred,
        };
        count_overlap(cls, pr, k, st);
    }
    Ok(())
}

/// Runs the fused loop over a chunk: AVX2 kernel for the full groups when enabled, the
/// portable loop otherwise and for the tail; NLL products renormalised every 16 groups.
#[inline(always)]
fn run_fused<
    'p,
    T: Probability,
    const SC: bool,
    const MASKED: bool,
    const TOP: bool,
    const CW: bool,
>(
    ctx: &Ctx<'_, '_, T>,
    chan: &impl Fn(usize) -> &'p [T],
    groups: usize,
    m: usize,
    fz: &Fused<'_, T>,
    out: &mut Sinks<'_, T>,
) -> bool {
    let k = ctx.k;
    let mut bad = false;
    let mut done = false;
    #[cfg(target_arch = "x86_64")]
    if ctx.simd {
        if let Some(kernel) = crate::simd::Kernel::new(fz, out) {
            let ch32 = |c: usize| T::as_f32_slice(chan(c)).unwrap_or(&[]);
            // SAFETY: `simd` is only set when the CPU has AVX2 and popcnt.
            bad |= unsafe { kernel.run::<SC, MASKED, TOP, CW>(&ch32, k, groups) };
            done = true;
        }
    }
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

#[inline(always)]
fn count_overlap(cls: &[u32], pr: &[u32], k: usize, st: &mut State) {
    for c in 0..k {
        let cu = c as u32;
        let (mut g, mut p, mut t) = (0u32, 0u32, 0u32);
        for (&y, &q) in cls.iter().zip(pr) {
            let a = y == cu;
            let b = q == cu;
            g += u32::from(a);
            p += u32::from(b);
            t += u32::from(a & b);
        }
        st.gt_count[c] += u64::from(g);
        st.pred_count[c] += u64::from(p);
        st.tp[c] += u64::from(t);
    }
}

/// Locates the first invalid voxel of a chunk (only called when there is one).
#[cold]
fn first_bad_probability<'p, T: Probability>(
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
            let vf = v.to_f64();
            if !vf.is_finite() {
                return MetricsError::NonFinite {
                    index: unravel(start + i, spatial),
                    class: c,
                    value: vf,
                };
            }
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
fn renormalise<T: Probability>(
    pbuf: &mut [T],
    k: usize,
    m: usize,
    start: usize,
    spatial: &[usize],
) -> Result<(), MetricsError> {
    for i in 0..m {
        let mut s = 0.0f64;
        for c in 0..k {
            let v = pbuf[c * CHUNK + i].to_f64();
            if !v.is_finite() {
                return Err(MetricsError::NonFinite {
                    index: unravel(start + i, spatial),
                    class: c,
                    value: v,
                });
            }
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
fn softmax<T: Probability>(
    pbuf: &mut [T],
    lbuf: &mut [f64],
    k: usize,
    m: usize,
    start: usize,
    spatial: &[usize],
) -> Result<(), MetricsError> {
    for i in 0..m {
        let mut mx = f64::NEG_INFINITY;
        for c in 0..k {
            let v = pbuf[c * CHUNK + i].to_f64();
            if !v.is_finite() {
                return Err(MetricsError::NonFinite {
                    index: unravel(start + i, spatial),
                    class: c,
                    value: v,
                });
            }
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

// --- hard prediction only (Overlap::update_labels) ------------------------------------------

struct PairCtx<'b> {
    k: usize,
    n: usize,
    spatial: &'b [usize],
    labels: &'b dyn ClassSource,
    pred: &'b dyn ClassSource,
    slots: usize,
    needs: Needs,
}

impl HasLen for PairCtx<'_> {
    fn n(&self) -> usize {
        self.n
    }
    fn empty_state(&self) -> State {
        State::new(self.k, self.slots, self.needs)
    }
}

fn pair_block(ctx: &PairCtx<'_>, b: usize) -> Result<State, MetricsError> {
    let mut st = ctx.empty_state();
    let mut cls = vec![0u32; CHUNK];
    let mut hard = vec![0u32; CHUNK];
    let start = b * BLOCK;
    let end = (start + BLOCK).min(ctx.n);
    let mut s = start;
    while s < end {
        let m = CHUNK.min(end - s);
        let c = &mut cls[..m];
        let h = &mut hard[..m];
        ctx.labels.fill(s, c);
        check_classes(c, ctx.k, s, ctx.labels, ctx.spatial, "labels")?;
        ctx.pred.fill(s, h);
        check_classes(h, ctx.k, s, ctx.pred, ctx.spatial, "pred")?;
        count_overlap(c, h, ctx.k, &mut st);
        st.n_all += m as u64;
        s += m;
    }
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EdgeConvention, Evaluator, Input, Report};
    use ndarray::{Array2, Array3};
    use rand::{Rng, SeedableRng, rngs::StdRng};

    #[test]
    fn renorm_keeps_the_value() {
        let mut prod = [1e-200, 0.75, 1.0, 3.0, 1e-5, 0.5, 2.0, 1e-300];
        let want: Vec<f64> = prod.iter().map(|v: &f64| v.ln()).collect();
        let mut ex = [0i64; W];
        renorm(&mut prod, &mut ex);
        for l in 0..W {
            assert!((1.0..2.0).contains(&prod[l]));
            let got = ex[l] as f64 * std::f64::consts::LN_2 + prod[l].ln();
            assert!((got - want[l]).abs() <= 1e-13 * want[l].abs().max(1.0));
        }
    }

    /// Probabilities with every kind of value the kernels special-case: exact 0 and 1,
    /// values on and next to bin edges, tiny values, confident and uncertain voxels, runs
    /// of identical voxels (whole groups in a hot row).
    fn tricky(k: usize, n: usize, seed: u64) -> (Array2<f32>, Vec<u8>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let edges = crate::edges::torch_linspace_f32(15);
        let mut p = Array2::<f32>::zeros((k, n));
        let mut y = vec![0u8; n];
        let mut i = 0;
        while i < n {
            let run = if rng.random_bool(0.3) {
                rng.random_range(8..40)
            } else {
                1
            };
            let kind = rng.random_range(0..6);
            let top = rng.random_range(0..k);
            let conf: f32 = match kind {
                0 => 1.0,
                1 => 1.0 - 1e-7 * rng.random::<f32>(),
                2 => {
                    let e = edges[rng.random_range(1..15)];
                    let d = rng.random_range(-2i32..=2);
                    f32::from_bits((e.to_bits() as i32 + d) as u32).max(1.0 / k as f32)
                }
                3 => rng.random_range(1.0 / k as f32..1.0),
                _ => 0.999,
            };
            let label = if rng.random_bool(0.8) {
                top
            } else {
                rng.random_range(0..k)
            };
            for _ in 0..run.min(n - i) {
                let rest = (1.0 - conf) / (k - 1) as f32;
                for c in 0..k {
                    p[[c, i]] = if c == top {
                        conf
                    } else if kind == 0 {
                        0.0
                    } else {
                        rest
                    };
                }
                y[i] = label as u8;
                i += 1;
            }
        }
        (p, y)
    }

    fn same(a: &Report, b: &Report) {
        let f = |r: &Report| {
            let mut v = vec![
                r.ece,
                r.mce,
                r.rmsce,
                r.ace,
                r.accuracy,
                r.mean_confidence,
                r.cece,
                r.brier,
                r.nll,
            ];
            v.extend(&r.class_ece);
            v.extend(&r.dice);
            v.extend(
                r.reliability
                    .iter()
                    .flat_map(|b| [b.confidence, b.accuracy, b.count as f64]),
            );
            v.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        };
        assert_eq!(f(a), f(b));
        assert_eq!((&a.tp, &a.fp, &a.fn_), (&b.tp, &b.fp, &b.fn_));
    }

    fn run(
        cfg: &crate::MetricConfig,
        p: &Array2<f32>,
        y: &[u8],
        mask: Option<&[bool]>,
        portable: bool,
    ) -> Report {
        FORCE_PORTABLE.with(|f| f.set(portable));
        let mut ev = Evaluator::new(cfg.clone()).unwrap();
        let yv = ndarray::ArrayView1::from(y);
        let input = Input::new(p.view(), yv).unwrap();
        let input = match mask {
            Some(m) => input.with_mask(ndarray::ArrayView1::from(m)).unwrap(),
            None => input,
        };
        ev.update_input(&input).unwrap();
        FORCE_PORTABLE.with(|f| f.set(false));
        ev.finish().unwrap()
    }

    #[test]
    fn simd_and_portable_loops_agree_bit_for_bit() {
        if !simd_enabled() {
            return; // nothing to compare on this CPU
        }
        for (k, n, seed) in [(2usize, 4099usize, 1u64), (3, 2048 * 3 + 5, 2), (5, 777, 3)] {
            let (p, y) = tricky(k, n, seed);
            let mask: Vec<bool> = (0..n).map(|i| (i / 5) % 3 != 0).collect();
            for conv in [
                EdgeConvention::LeftClosed,
                EdgeConvention::RightClosed,
                EdgeConvention::Torchmetrics,
            ] {
                for bins in [1, 10, 15] {
                    let base = crate::MetricConfig::default().bins(bins).edges(conv);
                    let a = run(&base, &p, &y, None, false);
                    let b = run(&base, &p, &y, None, true);
                    same(&a, &b);
                    let fg = base.clone().region(crate::Region::Foreground);
                    same(
                        &run(&fg, &p, &y, None, false),
                        &run(&fg, &p, &y, None, true),
                    );
                    let mk = base.clone().region(crate::Region::Mask);
                    same(
                        &run(&mk, &p, &y, Some(&mask), false),
                        &run(&mk, &p, &y, Some(&mask), true),
                    );
                }
            }
        }
    }

    #[test]
    fn results_do_not_depend_on_threads_or_layout() {
        // More than one block, so several rayon tasks.
        let (p, y) = tricky(3, BLOCK * 2 + 1234, 9);
        let cfg = crate::MetricConfig::default();
        let a = run(&cfg, &p, &y, None, false);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let b = pool.install(|| run(&cfg, &p, &y, None, false));
        same(&a, &b);
        // Channel-last storage, viewed channel-first: the gather path, same numbers.
        let pt = Array2::from_shape_fn((p.ncols(), p.nrows()), |(i, c)| p[[c, i]]); // (n, k)
        let view = pt.t(); // (k, n), not standard layout
        assert!(!view.is_standard_layout());
        let mut ev = Evaluator::new(cfg).unwrap();
        ev.update(view, ndarray::ArrayView1::from(&y[..])).unwrap();
        same(&a, &ev.finish().unwrap());
        // A 3-D volume split into two slabs along axis 1 (non-contiguous views) and merged.
        let v = Array3::from_shape_fn((3, 6, 7), |(c, i, j)| p[[c, i * 7 + j]]);
        let yv = ndarray::Array2::from_shape_fn((6, 7), |(i, j)| y[i * 7 + j]);
        let mut whole = Evaluator::new(crate::MetricConfig::default()).unwrap();
        whole.update(v.view(), yv.view()).unwrap();
        let mut parts = Evaluator::new(crate::MetricConfig::default()).unwrap();
        for (lo, hi) in [(0, 3), (3, 6)] {
            parts
                .update(
                    v.slice(ndarray::s![.., lo..hi, ..]),
                    yv.slice(ndarray::s![lo..hi, ..]),
                )
                .unwrap();
        }
        let (w, q) = (whole.finish().unwrap(), parts.finish().unwrap());
        assert_eq!(
            w.reliability.iter().map(|b| b.count).collect::<Vec<_>>(),
            q.reliability.iter().map(|b| b.count).collect::<Vec<_>>()
        );
        assert!((w.ece - q.ece).abs() < 1e-12 && (w.brier - q.brier).abs() < 1e-12);
    }
}
