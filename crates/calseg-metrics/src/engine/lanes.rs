//! Lane histograms: the per-block histogram accumulators the fused loop writes to, with
//! two "hot" rows summed in vector lanes and a packed list for the other voxels.

use super::{CHUNK, Hist, LANES};
use crate::edges::SlotTable;
use crate::input::Probability;

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
    pub(crate) fn new(slots: usize) -> Self {
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
    pub(crate) fn voxel(&mut self, tab: &SlotTable<T>, x: T, hit: bool, inside: bool, i: usize) {
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
    pub(crate) fn flush(&mut self) {
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
    pub(crate) fn drain_into(&mut self, h: &mut Hist) {
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
