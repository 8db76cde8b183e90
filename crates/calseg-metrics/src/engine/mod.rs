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
//!
//! # Files
//! * [`state`]: the accumulated [`State`] and how two are added;
//! * [`schedule`]: blocks, parallel waves, addition in block order;
//! * [`block`]: one block — scratch buffers, chunks, the choice of kernel;
//! * [`transform`]: per-chunk input checks and transforms (class indices, renormalising,
//!   softmax, locating an invalid probability);
//! * [`fused`]: the fused per-voxel loop and its compile-time [`Variant`]s;
//! * [`lanes`]: the lane histograms the fused loop fills;
//! * [`hard`]: overlap counts from hard predictions.

mod block;
mod fused;
mod hard;
mod lanes;
mod schedule;
mod state;
#[cfg(test)]
mod tests;
mod transform;

use ndarray::{ArrayViewD, Axis};

use crate::MetricsError;
use crate::config::{MetricConfig, Region};
use crate::edges::{BinEdges, SlotTable};
use crate::input::{Input, LabelPair, Probability};

use block::{Ctx, run_block};
pub(crate) use fused::{Fused, Sinks, renorm};
use hard::{PairCtx, pair_block};
pub(crate) use lanes::{HOT_A, LaneHist, W};
use schedule::run_all;
pub(crate) use state::{Hist, State};

/// Voxels per chunk (the unit of the inner loops).
pub(crate) const CHUNK: usize = 2048;
/// Voxels per parallel task (a multiple of [`CHUNK`]; fixed, so results do not depend on
/// the number of threads).
pub(crate) const BLOCK: usize = 32 * CHUNK;
/// Blocks per wave: bounds the memory of the block results to `WAVE × state size`.
pub(crate) const WAVE: usize = 256;
/// Sentinel class of voxels the Foreground test never drops (no background).
pub(crate) const NO_CLASS: u32 = u32::MAX;
/// Interleaved histogram copies.
pub(crate) const LANES: usize = 4;

/// Which parts of the work an accumulator needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Needs {
    pub top: bool,
    pub classwise: bool,
    pub overlap: bool,
    pub scores: bool,
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
        if let Some(s) = &self.state
            && s.k != k
        {
            return Err(MetricsError::ClassCountMismatch {
                expected: s.k,
                got: k,
            });
        }
        if let Some(b) = self.config.background
            && b >= k
        {
            return Err(MetricsError::InvalidConfig(format!(
                "background class {b} is not smaller than the number of classes {k}"
            )));
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
