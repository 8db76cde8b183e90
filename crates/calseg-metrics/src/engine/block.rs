//! One block of voxels: scratch buffers, the chunks of the block, and the block kernel
//! compiled twice (baseline and AVX2), chosen at run time.

use std::marker::PhantomData;

use ndarray::ArrayViewD;

use super::fused::{Fused, FusedRun, Sinks, Variant, renorm};
use super::hard::count_overlap;
use super::lanes::{LaneHist, W};
use super::schedule::HasLen;
use super::transform::{ChunkAt, check_classes, first_bad_probability, renormalise, softmax};
use super::{BLOCK, CHUNK, Needs, State};
use crate::MetricsError;
use crate::config::{InputMode, Region};
use crate::edges::SlotTable;
use crate::input::{ClassSource, MaskSource, Probability, gather_map};

/// One input, ready for the block kernel.
pub(crate) struct Ctx<'a, 'b, T> {
    pub(crate) k: usize,
    pub(crate) n: usize,
    pub(crate) spatial: &'b [usize],
    pub(crate) fast: Option<Vec<&'a [T]>>,
    pub(crate) views: Vec<ArrayViewD<'a, T>>,
    pub(crate) labels: &'b dyn ClassSource,
    pub(crate) mask: Option<&'b dyn MaskSource>,
    pub(crate) pred: Option<&'b dyn ClassSource>,
    pub(crate) table: &'b SlotTable<T>,
    pub(crate) needs: Needs,
    pub(crate) mode: InputMode,
    pub(crate) region: Region,
    pub(crate) background: u32,
    pub(crate) nll_floor: f64,
    /// Use the AVX2 kernels (f32 input on a CPU with AVX2).
    pub(crate) simd: bool,
}

impl<T: Probability> HasLen for Ctx<'_, '_, T> {
    fn n(&self) -> usize {
        self.n
    }
    fn empty_state(&self) -> State {
        State::new(self.k, self.table.n_slots(), self.needs)
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

/// One block: the AVX2 instance of the block kernel when enabled, else the portable one.
pub(crate) fn run_block<T: Probability>(
    ctx: &Ctx<'_, '_, T>,
    b: usize,
) -> Result<State, MetricsError> {
    #[cfg(target_arch = "x86_64")]
    {
        if ctx.simd {
            // SAFETY: `simd` is only set when `simd_enabled()` found AVX2 and popcnt on this
            // CPU at run time, the features `block_avx2` is compiled for.
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
        let at = ChunkAt {
            k,
            m,
            start,
            spatial: ctx.spatial,
        };
        match ctx.mode {
            InputMode::Probabilities { .. } => {}
            InputMode::Renormalise => renormalise(pbuf, at)?,
            InputMode::Logits => softmax(pbuf, lbuf, at)?,
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
    let variant = Variant {
        scores: n.scores,
        masked,
        top: n.top,
        classwise: n.classwise,
    };
    let bad = variant.dispatch(FusedRun {
        k,
        simd: ctx.simd,
        chan: &chan,
        groups,
        m,
        fz: &fz,
        out: &mut sinks,
        chans: PhantomData,
    });
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
