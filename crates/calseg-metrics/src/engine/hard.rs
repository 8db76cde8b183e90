//! Hard predictions: Dice/IoU counts of a label map against the ground truth, as the last
//! step of a chunk and as the whole work of `Overlap::update_labels` (no probabilities).

use super::schedule::HasLen;
use super::transform::check_classes;
use super::{BLOCK, CHUNK, Needs, State};
use crate::MetricsError;
use crate::input::ClassSource;

/// Above this many classes the overlap counts are scattered per voxel run
/// ([`count_overlap_runs`], cost independent of `K`) instead of compared per class
/// (`K` vectorised passes over the chunk, faster for few classes).
pub(crate) const SCATTER_FROM_K: usize = 16;

/// Adds the per-class ground-truth, predicted and true-positive counts of one chunk
/// (class indices already checked `< k`).
#[inline(always)]
pub(crate) fn count_overlap(cls: &[u32], pr: &[u32], k: usize, st: &mut State) {
    if k >= SCATTER_FROM_K {
        count_overlap_runs(cls, pr, st);
        return;
    }
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

/// The same counts as [`count_overlap`] in one pass over the voxels, whatever `K`: runs
/// of equal `(label, prediction)` pairs (long in segmentations) are counted and added
/// once per run: `|y = a| += r`, `|pred = b| += r`, and `tp_a += r` when `a = b`.
fn count_overlap_runs(cls: &[u32], pr: &[u32], st: &mut State) {
    let mut flush = |y: u32, q: u32, run: u64| {
        let (y, q) = (y as usize, q as usize);
        if let Some(g) = st.gt_count.get_mut(y) {
            *g += run;
        }
        if let Some(p) = st.pred_count.get_mut(q) {
            *p += run;
        }
        if y == q
            && let Some(t) = st.tp.get_mut(y)
        {
            *t += run;
        }
    };
    let mut pairs = cls.iter().copied().zip(pr.iter().copied());
    let Some((mut y, mut q)) = pairs.next() else {
        return;
    };
    let mut run = 1u64;
    for (a, b) in pairs {
        if a == y && b == q {
            run += 1;
        } else {
            flush(y, q, run);
            (y, q, run) = (a, b, 1);
        }
    }
    flush(y, q, run);
}

/// Inputs of the labels-only path.
pub(crate) struct PairCtx<'b> {
    pub(crate) k: usize,
    pub(crate) n: usize,
    pub(crate) spatial: &'b [usize],
    pub(crate) labels: &'b dyn ClassSource,
    pub(crate) pred: &'b dyn ClassSource,
    pub(crate) slots: usize,
    pub(crate) needs: Needs,
}

impl HasLen for PairCtx<'_> {
    fn n(&self) -> usize {
        self.n
    }
    fn empty_state(&self) -> State {
        State::new(self.k, self.slots, self.needs)
    }
}

/// One block of the labels-only path.
pub(crate) fn pair_block(ctx: &PairCtx<'_>, b: usize) -> Result<State, MetricsError> {
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
