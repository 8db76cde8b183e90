//! The accumulated state of an engine: exact integer counts and f64 sums, and how two
//! states are added (blocks of one input, inputs of one accumulator, merged accumulators).

use std::ops::AddAssign;

use super::Needs;

/// Per-bin sums: slot 0 = "no bin", slots `1..=n` = bins, slot `n+1` = torchmetrics' extra
/// bin (see [`SlotTable`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Hist {
    pub count: Vec<u64>,
    pub hits: Vec<u64>,
    pub sum: Vec<f64>,
}

impl Hist {
    pub(crate) fn new(slots: usize) -> Self {
        Hist {
            count: vec![0; slots],
            hits: vec![0; slots],
            sum: vec![0.0; slots],
        }
    }
    pub(crate) fn add(&mut self, o: &Hist) {
        add_all(&mut self.count, &o.count);
        add_all(&mut self.hits, &o.hits);
        add_all(&mut self.sum, &o.sum);
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
        add_all(&mut self.tp, &o.tp);
        add_all(&mut self.pred_count, &o.pred_count);
        add_all(&mut self.gt_count, &o.gt_count);
        self.brier += o.brier;
        self.nll += o.nll;
    }
}

/// `a[i] += b[i]` for every `i` (the shorter length).
fn add_all<T: AddAssign + Copy>(a: &mut [T], b: &[T]) {
    for (x, &y) in a.iter_mut().zip(b) {
        *x += y;
    }
}
