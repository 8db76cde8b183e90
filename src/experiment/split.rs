//! How an experiment divides a dataset into training, validation and test parts.
//!
//! Rules (every choice is written to `split.json` and into the report):
//! - **test**: the dataset's own test cases (`imagesTs`/`labelsTs`) when they have labels
//!   (a different scanner or site there is the domain-shift test); otherwise, with at
//!   least [`SplitConfig::min_cases`] training cases, the last `test_fraction` of them;
//!   otherwise (one or two volumes, such as the embedded ICBM template) a **slab split**:
//!   the slices `index ≥ ⌊test_fraction·n⌋`… along `axis` of every case are test data.
//! - **validation** (where every tuned hyper-parameter is chosen: α, τ, m for CALSeg,
//!   T for temperature scaling): the last `val_fraction` of the remaining training cases,
//!   or, with too few cases, the top `val_fraction` of each remaining slab.
//!
//! - **development split** (`development = f`, `calseg experiment --development f`): the
//!   test part above is dropped — never loaded, never scored — and the training and
//!   validation data that remain are split again by the same rules: their top fraction
//!   `f` (cases, or slices of each slab) becomes a *development test* part, validation is
//!   taken out of the rest. A design choice (a CALSeg variant, a loss, a budget) compared
//!   on a development split is made on the real split's training and validation data
//!   alone; the real test part then scores the chosen design once.
//!
//! Slabs are contiguous along `axis` (axial for RAS volumes): neighbouring slices are
//! strongly correlated, so interleaving them would leak the test data into training.

use calseg_io::preprocess::crop;
use calseg_io::{Case, Dataset};
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// Parameters of the split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SplitConfig {
    /// Spatial axis of slab splits (2 = axial for RAS-oriented volumes).
    pub axis: usize,
    /// Fraction of cases (or of each volume's slices) held out for testing when the
    /// dataset has no labelled test set.
    pub test_fraction: f64,
    /// Fraction of the training cases (or slices) used for validation.
    pub val_fraction: f64,
    /// Fewest cases for a split by cases rather than by slabs.
    pub min_cases: usize,
    /// A development split: drop the test part and hold out this fraction of the
    /// remaining data (cases, or the top slices of each slab) as the test part instead
    /// (see the module docs). `None`: the ordinary split.
    pub development: Option<f64>,
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self {
            axis: 2,
            test_fraction: 0.5,
            val_fraction: 0.2,
            min_cases: 5,
            development: None,
        }
    }
}

impl SplitConfig {
    /// Checks that every fraction (`test_fraction`, `val_fraction`, `development` when
    /// set) lies in (0, 1).
    ///
    /// # Errors
    /// A message naming the first fraction out of range.
    pub fn validate(&self) -> Result<(), String> {
        for (name, f) in [
            ("test_fraction", Some(self.test_fraction)),
            ("val_fraction", Some(self.val_fraction)),
            ("development", self.development),
        ] {
            if let Some(f) = f.filter(|f| !(*f > 0.0 && *f < 1.0)) {
                return Err(format!("split.{name} must be in (0, 1), got {f}"));
            }
        }
        Ok(())
    }
}

/// One part of a case: the whole volume, or the slab `range` along `axis`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Part {
    /// Identifier of the part (the case id, suffixed with the slab for slab parts).
    pub id: String,
    /// The dataset case it comes from.
    pub case: String,
    /// The slab, if only part of the case is used.
    pub slab: Option<Slab>,
}

/// A contiguous range of slices along a spatial axis.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slab {
    /// Spatial axis.
    pub axis: usize,
    /// Slice range `[start, end)`.
    pub range: Range<usize>,
}

/// The three parts of an experiment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitPlan {
    /// `"dataset test set"`, `"held-out cases"` or `"axial slabs"`: how the test part
    /// was chosen.
    pub kind: String,
    /// A sentence a report can print.
    pub description: String,
    /// Training parts.
    pub train: Vec<Part>,
    /// Validation parts (tuning only).
    pub val: Vec<Part>,
    /// Test parts (scored once, never used for choices).
    pub test: Vec<Part>,
}

/// Errors of planning a split.
#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    /// The dataset cannot be split as asked.
    #[error("{0}")]
    Invalid(String),
    /// A case could not be read.
    #[error(transparent)]
    Io(#[from] calseg_io::IoError),
}

fn whole(id: &str) -> Part {
    Part {
        id: id.to_string(),
        case: id.to_string(),
        slab: None,
    }
}

fn slab(id: &str, axis: usize, range: Range<usize>, tag: &str) -> Part {
    Part {
        id: format!("{id}_{tag}"),
        case: id.to_string(),
        slab: Some(Slab { axis, range }),
    }
}

/// Number of items out of `n` that a fraction selects, at least one and leaving one.
fn held_out(n: usize, fraction: f64) -> usize {
    ((n as f64 * fraction).round() as usize).clamp(1, n.saturating_sub(1).max(1))
}

impl SplitPlan {
    /// The axis along which every validation part directly continues the training part
    /// of the same index (same case, its slab starting where the training slab ends):
    /// the one-volume slab split, whose 3D smoother is calibrated in context
    /// ([`calseg_vls::pipeline::Calseg::with_held_out_slabs`]). `None` for any other split.
    pub fn held_out_slab_axis(&self) -> Option<usize> {
        if self.train.is_empty() || self.train.len() != self.val.len() {
            return None;
        }
        let mut axis = None;
        for (t, v) in self.train.iter().zip(&self.val) {
            let (Some(ts), Some(vs)) = (&t.slab, &v.slab) else {
                return None;
            };
            if t.case != v.case || ts.axis != vs.axis || ts.range.end != vs.range.start {
                return None;
            }
            if axis.is_some_and(|a| a != ts.axis) {
                return None;
            }
            axis = Some(ts.axis);
        }
        axis
    }

    /// Plans the split of `ds` (reads each case's header-sized shape only for slab
    /// splits, by loading it).
    pub fn plan(ds: &Dataset, cfg: &SplitConfig) -> Result<SplitPlan, SplitError> {
        cfg.validate().map_err(SplitError::Invalid)?;
        let train_ids: Vec<String> = ds.training_cases().iter().map(|c| c.id.clone()).collect();
        if train_ids.is_empty() {
            return Err(SplitError::Invalid(
                "the dataset has no training cases".into(),
            ));
        }
        let test_ids: Vec<String> = ds.test_cases().iter().map(|c| c.id.clone()).collect();
        let test_labelled = !test_ids.is_empty()
            && test_ids
                .iter()
                .all(|id| ds.load(id).map(|c| c.label.is_some()).unwrap_or(false));
        let by_cases = train_ids.len() >= cfg.min_cases.max(2);
        let (kind, test, remaining) = if test_labelled {
            let test = test_ids.iter().map(|s| whole(s)).collect();
            (
                "dataset test set",
                test,
                train_ids.iter().map(|s| whole(s)).collect(),
            )
        } else if by_cases {
            let k = held_out(train_ids.len(), cfg.test_fraction);
            let (tr, te) = train_ids.split_at(train_ids.len() - k);
            (
                "held-out cases",
                te.iter().map(|s| whole(s)).collect(),
                tr.iter().map(|s| whole(s)).collect::<Vec<_>>(),
            )
        } else {
            let (mut train, mut test) = (Vec::new(), Vec::new());
            for id in &train_ids {
                let n = slices_along(ds, id, cfg.axis)?;
                if n < 3 {
                    return Err(SplitError::Invalid(format!(
                        "case {id}: {n} slices along axis {} are too few to split into slabs",
                        cfg.axis
                    )));
                }
                let cut = n - held_out(n, cfg.test_fraction);
                train.push(slab(id, cfg.axis, 0..cut, "trainslab"));
                test.push(slab(id, cfg.axis, cut..n, "test"));
            }
            ("axial slabs", test, train)
        };
        // A development split: the test part is dropped and re-drawn from the rest.
        let (kind, test, remaining) = match cfg.development {
            None => (kind.to_string(), test, remaining),
            Some(f) => {
                let (rest, dev_test) =
                    hold_out_top(ds, &remaining, f, cfg, ("devtrain", "devtest"))?;
                (
                    format!("{kind}, development split (the test part is not used)"),
                    dev_test,
                    rest,
                )
            }
        };
        // Validation out of what remains for training.
        let (train, val) = hold_out_top(ds, &remaining, cfg.val_fraction, cfg, ("train", "val"))?;
        let description = describe(&kind, &train, &val, &test);
        Ok(SplitPlan {
            kind,
            description,
            train,
            val,
            test,
        })
    }
}

/// Splits `parts` into (kept, held out): the last `fraction` of them when there are at
/// least `min_cases` (at least two), else the top `fraction` of each one's slices along
/// `cfg.axis`, the slabs tagged `tags.0` and `tags.1`.
fn hold_out_top(
    ds: &Dataset,
    parts: &[Part],
    fraction: f64,
    cfg: &SplitConfig,
    tags: (&str, &str),
) -> Result<(Vec<Part>, Vec<Part>), SplitError> {
    if parts.len() >= cfg.min_cases.max(2) {
        let k = held_out(parts.len(), fraction);
        let (kept, held) = parts.split_at(parts.len() - k);
        return Ok((kept.to_vec(), held.to_vec()));
    }
    let (mut kept, mut held) = (Vec::new(), Vec::new());
    for p in parts {
        let range = match &p.slab {
            Some(s) => s.range.clone(),
            None => 0..slices_along(ds, &p.case, cfg.axis)?,
        };
        let n = range.len();
        if n < 2 {
            return Err(SplitError::Invalid(format!(
                "case {}: {n} slices along axis {} are too few to hold out {} slices",
                p.case, cfg.axis, tags.1
            )));
        }
        let cut = range.end - held_out(n, fraction);
        kept.push(slab(&p.case, cfg.axis, range.start..cut, tags.0));
        held.push(slab(&p.case, cfg.axis, cut..range.end, tags.1));
    }
    Ok((kept, held))
}

fn describe(kind: &str, train: &[Part], val: &[Part], test: &[Part]) -> String {
    let list = |ps: &[Part]| {
        ps.iter()
            .map(|p| match &p.slab {
                Some(s) => format!(
                    "{} [{}..{}) along axis {}",
                    p.case, s.range.start, s.range.end, s.axis
                ),
                None => p.case.clone(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "split by {kind}: train {}; validation {}; test {}",
        list(train),
        list(val),
        list(test)
    )
}

fn slices_along(ds: &Dataset, id: &str, axis: usize) -> Result<usize, SplitError> {
    let case = ds.load(id)?;
    let spatial = &case.image.shape()[1..];
    spatial.get(axis).copied().ok_or_else(|| {
        SplitError::Invalid(format!(
            "case {id}: axis {axis} is outside its spatial shape {spatial:?}"
        ))
    })
}

/// Loads one part: the case, cropped to its slab.
pub fn load_part(ds: &Dataset, part: &Part) -> Result<Case, SplitError> {
    let case = ds.load(&part.case)?;
    let mut out = match &part.slab {
        None => case,
        Some(s) => {
            let spatial = &case.image.shape()[1..];
            let bbox: Vec<Range<usize>> = spatial
                .iter()
                .enumerate()
                .map(|(a, &d)| if a == s.axis { s.range.clone() } else { 0..d })
                .collect();
            crop(&case, &bbox)?
        }
    };
    out.id = part.id.clone();
    Ok(out)
}

/// The cases of a planned split, loaded (slabs cropped).
///
/// ```no_run
/// use calseg::experiment::{Split, SplitConfig};
/// let brain = calseg::io::icbm152::open()?;
/// let data = Split::load(&brain, &SplitConfig::default())?; // axial slabs of one volume
/// assert!(!data.train.is_empty() && !data.val.is_empty() && !data.test.is_empty());
/// # Ok::<(), calseg::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Split {
    /// The plan the cases were loaded from.
    pub plan: SplitPlan,
    /// Training cases (or slabs).
    pub train: Vec<Case>,
    /// Validation cases (tuning only).
    pub val: Vec<Case>,
    /// Test cases.
    pub test: Vec<Case>,
}

impl Split {
    /// Plans the split of `ds` and loads every part.
    ///
    /// # Errors
    /// A split that cannot be made, or a case that cannot be read.
    pub fn load(ds: &Dataset, cfg: &SplitConfig) -> Result<Split, SplitError> {
        let plan = SplitPlan::plan(ds, cfg)?;
        let load = |ps: &[Part]| -> Result<Vec<Case>, SplitError> {
            ps.iter().map(|p| load_part(ds, p)).collect()
        };
        Ok(Split {
            train: load(&plan.train)?,
            val: load(&plan.val)?,
            test: load(&plan.test)?,
            plan,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(p: &Part) -> Range<usize> {
        p.slab.as_ref().map(|s| s.range.clone()).unwrap_or(0..0)
    }

    #[test]
    fn a_development_split_never_touches_the_test_slab() {
        let brain = calseg_io::icbm152::open().unwrap();
        let full = SplitPlan::plan(&brain, &SplitConfig::default()).unwrap();
        let test_start = range(&full.test[0]).start;
        let cfg = SplitConfig {
            development: Some(0.3),
            val_fraction: 0.25,
            ..SplitConfig::default()
        };
        let dev = SplitPlan::plan(&brain, &cfg).unwrap();
        let (tr, va, te) = (
            range(&dev.train[0]),
            range(&dev.val[0]),
            range(&dev.test[0]),
        );
        // train | val | development test, contiguous, all below the real test slab
        assert_eq!(
            (tr.start, tr.end, va.end, te.end),
            (0, va.start, te.start, test_start)
        );
        assert_eq!(te.len(), (test_start as f64 * 0.3).round() as usize);
        assert!(dev.kind.contains("development split") && dev.test[0].id.ends_with("devtest"));
        // the ordinary split is what it was
        assert_eq!(full.kind, "axial slabs");
        // Validation continues training along axis 2 in both: the 3D smoother's
        // calibration context.
        assert_eq!(full.held_out_slab_axis(), Some(2));
        assert_eq!(dev.held_out_slab_axis(), Some(2));
        let mut gap = full.clone();
        if let Some(s) = gap.val[0].slab.as_mut() {
            s.range.start += 1;
        }
        assert_eq!(gap.held_out_slab_axis(), None);
        for bad in [0.0, 1.0, f64::NAN] {
            let cfg = SplitConfig {
                development: Some(bad),
                ..SplitConfig::default()
            };
            assert!(SplitPlan::plan(&brain, &cfg).is_err(), "{bad}");
        }
    }
}
