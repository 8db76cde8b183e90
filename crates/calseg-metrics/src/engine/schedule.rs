//! The scheduler: the voxels cut into fixed blocks, run in parallel waves, their states
//! added in block order (so the result does not depend on the number of threads).

use rayon::prelude::*;

use super::{BLOCK, State, WAVE};
use crate::MetricsError;

/// A unit of work the scheduler can cut into blocks.
pub(crate) trait HasLen: Sync {
    /// Voxels in the input.
    fn n(&self) -> usize;
    /// The state of no voxel.
    fn empty_state(&self) -> State;
}

/// Runs `block` over all blocks (in parallel waves) and adds the results in block order.
/// The first error in voxel order wins; nothing is returned on error.
pub(crate) fn run_all<C: HasLen>(
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
