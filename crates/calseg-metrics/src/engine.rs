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
}

impl<T: Probability> HasLen for Ctx<'_, '_, T> {
    fn n(&self) -> usize {
        self.n
    }
    fn empty_state(&self) -> State {
        State::new(self.k, self.table.n_slots(), self.needs)
    }
}

/// Scratch buffers of one block.
struct Scratch<T> {
    pbuf: Vec<T>,
    lbuf: Vec<f64>,
    cls: Vec<u32>,
    ins: Vec<u32>,
    hard: Vec<u32>,
    conf: Vec<T>,
    pred: Vec<u32>,
    psum: Vec<T>,
    pmin: Vec<T>,
    py: Vec<T>,
    bri: Vec<f64>,
    top_lanes: LaneHist,
    class_lanes: Vec<LaneHist>,
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
            conf: vec![T::ZERO; CHUNK],
            pred: vec![0; CHUNK],
            psum: vec![T::ZERO; CHUNK],
            pmin: vec![T::ZERO; CHUNK],
            py: vec![T::ZERO; CHUNK],
            bri: vec![0.0; CHUNK],
            top_lanes: LaneHist::new(if needs.top { slots } else { 0 }),
            class_lanes: if needs.classwise {
                (0..k).map(|_| LaneHist::new(slots)).collect()
            } else {
                Vec::new()
            },
        }
    }
}

/// Four interleaved histogram copies: `packed[lane·S + slot]` holds `count | hits << 32`
/// (a block has fewer than 2^32 voxels), `sum[lane·S + slot]` the f64 confidence sum.
struct LaneHist {
    slots: usize,
    packed: Vec<u64>,
    sum: Vec<f64>,
}

impl LaneHist {
    fn new(slots: usize) -> Self {
        LaneHist {
            slots,
            packed: vec![0; LANES * slots],
            sum: vec![0.0; LANES * slots],
        }
    }

    /// Adds the lanes into `h` (fixed order) and clears them.
    fn drain_into(&mut self, h: &mut Hist) {
        let s = self.slots;
        for slot in 0..s {
            let mut cnt = 0u64;
            let mut hit = 0u64;
            for l in 0..LANES {
                let v = self.packed[l * s + slot];
                cnt += v & 0xFFFF_FFFF;
                hit += v >> 32;
            }
            let f = &self.sum;
            let sum = (f[slot] + f[s + slot]) + (f[2 * s + slot] + f[3 * s + slot]);
            h.count[slot] += cnt;
            h.hits[slot] += hit;
            h.sum[slot] += sum;
        }
        self.packed.fill(0);
        self.sum.fill(0.0);
    }
}

fn run_block<T: Probability>(ctx: &Ctx<'_, '_, T>, b: usize) -> Result<State, MetricsError> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { block_avx2(ctx, b) };
        }
    }
    block_impl(ctx, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
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
        scr.top_lanes.drain_into(h);
    }
    for (lanes, h) in scr.class_lanes.iter_mut().zip(st.class.iter_mut()) {
        lanes.drain_into(h);
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
        conf,
        pred,
        psum,
        pmin,
        py,
        bri,
        top_lanes,
        class_lanes,
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

    // --- confidence, first argmax, validation sums --------------------------------------
    let conf = &mut conf[..m];
    let pred = &mut pred[..m];
    let psum = &mut psum[..m];
    let pmin = &mut pmin[..m];
    {
        let p0 = chan(0);
        conf.copy_from_slice(p0);
        psum.copy_from_slice(p0);
        pmin.copy_from_slice(p0);
        pred.fill(0);
        for c in 1..k {
            let cu = c as u32;
            let p = chan(c);
            for ((((cf, pr), s), mn), &v) in conf
                .iter_mut()
                .zip(pred.iter_mut())
                .zip(psum.iter_mut())
                .zip(pmin.iter_mut())
                .zip(p)
            {
                let gt = v > *cf;
                *cf = if gt { v } else { *cf };
                *pr = if gt { cu } else { *pr };
                *s = *s + v;
                *mn = if v < *mn { v } else { *mn };
            }
        }
    }
    if let InputMode::Probabilities { tol } = ctx.mode {
        let t = T::from_f64(tol);
        let one = T::ONE;
        let zero = T::ZERO;
        let mut bad = false;
        for ((&s, &mn), &cf) in psum.iter().zip(pmin.iter()).zip(conf.iter()) {
            let d = s - one;
            let ok = d <= t && d >= zero - t && mn >= zero && cf <= one;
            bad |= !ok;
        }
        if bad {
            return Err(first_bad_probability(&chan, k, m, start, ctx.spatial, tol));
        }
    }

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

    // --- histograms -----------------------------------------------------------------------
    if ctx.needs.top {
        let pred: &[u32] = pred;
        let hit = |i: usize| u64::from(pred[i] == cls[i]);
        if masked {
            scatter::<T, true>(ctx.table, conf, ins, hit, top_lanes);
        } else {
            scatter::<T, false>(ctx.table, conf, ins, hit, top_lanes);
        }
    }
    if ctx.needs.classwise {
        for (c, lanes) in class_lanes.iter_mut().enumerate() {
            let cu = c as u32;
            let hit = |i: usize| u64::from(cls[i] == cu);
            if masked {
                scatter::<T, true>(ctx.table, chan(c), ins, hit, lanes);
            } else {
                scatter::<T, false>(ctx.table, chan(c), ins, hit, lanes);
            }
        }
    }

    // --- overlap --------------------------------------------------------------------------
    if ctx.needs.overlap {
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

    // --- proper scores --------------------------------------------------------------------
    if ctx.needs.scores {
        let bri = &mut bri[..m];
        let py = &mut py[..m];
        bri.fill(0.0);
        py.fill(T::ZERO);
        for c in 0..k {
            let cu = c as u32;
            for (((b, y), &v), &l) in bri.iter_mut().zip(py.iter_mut()).zip(chan(c)).zip(cls) {
                let is = l == cu;
                let d = v.to_f64() - if is { 1.0 } else { 0.0 };
                *b += d * d;
                *y = if is { v } else { *y };
            }
        }
        let mut acc = [0.0f64; LANES];
        let floor = ctx.nll_floor;
        if masked {
            for (i, &b) in bri.iter().enumerate() {
                acc[i % LANES] += if ins[i] != 0 { b } else { 0.0 };
            }
            st.nll += neg_log_sum(m, |i| {
                if ins[i] != 0 {
                    py[i].to_f64().max(floor)
                } else {
                    1.0
                }
            });
        } else {
            for (i, &b) in bri.iter().enumerate() {
                acc[i % LANES] += b;
            }
            st.nll += neg_log_sum(m, |i| py[i].to_f64().max(floor));
        }
        st.brier += (acc[0] + acc[1]) + (acc[2] + acc[3]);
    }
    Ok(())
}

/// The histogram scatter (see [`LaneHist`]): voxel `i` goes to lane `i % 4`.
#[inline(always)]
fn scatter<T: Probability, const MASKED: bool>(
    tab: &SlotTable<T>,
    xs: &[T],
    ins: &[u32],
    hit: impl Fn(usize) -> u64,
    lanes: &mut LaneHist,
) {
    let s = lanes.slots;
    let (c0, rest) = lanes.packed.split_at_mut(s);
    let (c1, rest) = rest.split_at_mut(s);
    let (c2, c3) = rest.split_at_mut(s);
    let (f0, rest) = lanes.sum.split_at_mut(s);
    let (f1, rest) = rest.split_at_mut(s);
    let (f2, f3) = rest.split_at_mut(s);
    let m = xs.len();
    let one = |i: usize, c: &mut [u64], f: &mut [f64]| {
        let x = xs[i];
        let sl = tab.slot(x);
        let mut v = 1 | (hit(i) << 32);
        let mut xf = x.to_f64();
        if MASKED {
            let w = u64::from(ins[i]);
            v *= w;
            xf = if w != 0 { xf } else { 0.0 };
        }
        c[sl] += v;
        f[sl] += xf;
    };
    let quads = m / LANES;
    for q in 0..quads {
        let i = q * LANES;
        one(i, c0, f0);
        one(i + 1, c1, f1);
        one(i + 2, c2, f2);
        one(i + 3, c3, f3);
    }
    for i in quads * LANES..m {
        one(i, c0, f0);
    }
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

/// `−Σ ln q(i)` for `i < m`, all `q(i)` in `[1e-18, 1]`.
///
/// Four f64 product lanes; after every 16 factors per lane the exponent of each product is
/// moved into an integer (`m ∈ [1, 2)` stays), so no underflow is possible (16 factors ≥
/// 1e-288) and one `ln` per lane per chunk suffices: `−(E·ln 2 + ln m)`. Each product step
/// has relative error ≤ 2⁻⁵³, so the result differs from the sum of exact logarithms by at
/// most ≈ `m · 2⁻⁵³` absolute, i.e. ≈ 1.1e-16 per voxel.
#[inline(always)]
fn neg_log_sum(m: usize, q: impl Fn(usize) -> f64) -> f64 {
    const MANT: u64 = 0x000F_FFFF_FFFF_FFFF;
    const ONE_EXP: u64 = 1023 << 52;
    let mut prod = [1.0f64; LANES];
    let mut ex = [0i64; LANES];
    let renorm = |prod: &mut [f64; LANES], ex: &mut [i64; LANES]| {
        for l in 0..LANES {
            let bits = prod[l].to_bits();
            ex[l] += ((bits >> 52) & 0x7FF) as i64 - 1023;
            prod[l] = f64::from_bits((bits & MANT) | ONE_EXP);
        }
    };
    const STEP: usize = 16 * LANES;
    let full = m / STEP;
    for blk in 0..full {
        let base = blk * STEP;
        for j in 0..16 {
            for l in 0..LANES {
                prod[l] *= q(base + j * LANES + l);
            }
        }
        renorm(&mut prod, &mut ex);
    }
    for i in full * STEP..m {
        prod[i % LANES] *= q(i);
    }
    renorm(&mut prod, &mut ex);
    let mut s = 0.0;
    for l in 0..LANES {
        s += ex[l] as f64 * std::f64::consts::LN_2 + prod[l].ln();
    }
    -s
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
        if !(d.abs() <= T::from_f64(tol).to_f64()) {
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

    #[test]
    fn neg_log_sum_matches_libm() {
        for &m in &[1usize, 3, 63, 64, 65, 200, 2048] {
            let q = |i: usize| 1e-12f64.max(((i * 7919) % 1000) as f64 / 1000.0);
            let want: f64 = -(0..m).map(|i| q(i).ln()).sum::<f64>();
            let got = neg_log_sum(m, q);
            assert!(
                (got - want).abs() <= 1e-13 * want.abs().max(1.0),
                "{m}: {got} {want}"
            );
        }
        // Tiny floors: no underflow.
        let got = neg_log_sum(2048, |_| 1e-18);
        let want = 2048.0 * -(1e-18f64.ln());
        assert!((got - want).abs() / want < 1e-14);
        assert_eq!(neg_log_sum(100, |_| 1.0), 0.0);
    }
}
