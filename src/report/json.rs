//! `results.json`: one object per method, then the configuration, split and soft-label
//! quality; `NaN` and absent values are `null`.

use super::{MethodResult, MethodSummary, RATERS_PREFIX, ReportError};
use serde_json::{Map, Value, json};
use std::path::Path;

/// A JSON number, or `null` for `NaN`/∞.
fn num(x: f64) -> Value {
    if x.is_finite() { json!(x) } else { Value::Null }
}

fn nums(xs: &[f64]) -> Value {
    Value::Array(xs.iter().map(|&x| num(x)).collect())
}

impl MethodSummary {
    /// The method's object in `results.json`: the mean values under the field names,
    /// `n_seeds`, `extra` (an object), and with several seeds a sibling `NAME_sd` for
    /// every number (`dice_sd` per class; inside `extra`, `KEY_sd`). The `extra` keys
    /// that start with [`RATERS_PREFIX`] go to an object `raters` instead, without the
    /// prefix (`{"raters": {"ece_soft": …, "ged": …, "ged_sd": …}}`).
    pub fn to_json(&self) -> Value {
        let m = &self.mean;
        let mut o = Map::new();
        let scalars = |r: &MethodResult| -> [(&'static str, f64); 9] {
            [
                ("ece", r.ece),
                ("ece_fg", r.ece_fg),
                ("mce", r.mce),
                ("cece", r.cece),
                ("ace", r.ace),
                ("brier", r.brier),
                ("nll", r.nll),
                ("dice_mean_fg", r.dice_mean_fg),
                ("train_seconds", r.train_seconds),
            ]
        };
        for (k, v) in scalars(m) {
            o.insert(k.to_owned(), num(v));
        }
        o.insert("dice".into(), nums(&m.dice));
        o.insert(
            "hd95_mean_fg".into(),
            m.hd95_mean_fg.map_or(Value::Null, num),
        );
        o.insert("n_seeds".into(), json!(self.n_seeds));
        let mut extra: Map<String, Value> =
            m.extra.iter().map(|(k, &v)| (k.clone(), num(v))).collect();
        if let Some(sd) = &self.sd {
            for (k, v) in scalars(sd) {
                o.insert(format!("{k}_sd"), num(v));
            }
            o.insert("dice_sd".into(), nums(&sd.dice));
            o.insert(
                "hd95_mean_fg_sd".into(),
                sd.hd95_mean_fg.map_or(Value::Null, num),
            );
            for (k, &v) in &sd.extra {
                extra.insert(format!("{k}_sd"), num(v));
            }
        }
        // Rater-based numbers have their own object: `"raters": {"ged": …, "ged_sd": …}`.
        let rater_keys: Vec<String> = extra
            .keys()
            .filter(|k| k.starts_with(RATERS_PREFIX))
            .cloned()
            .collect();
        if !rater_keys.is_empty() {
            let mut raters = Map::new();
            for k in rater_keys {
                if let Some(v) = extra.remove(&k) {
                    raters.insert(k[RATERS_PREFIX.len()..].to_string(), v);
                }
            }
            o.insert("raters".into(), Value::Object(raters));
        }
        o.insert("extra".into(), Value::Object(extra));
        Value::Object(o)
    }
}

/// The whole `results.json` document (see the [module docs](crate::report)).
///
/// # Errors
/// [`ReportError::Invalid`] when two summaries have the same name.
pub fn results_json(
    methods: &[MethodSummary],
    config: Value,
    split: Value,
    soft_label_quality: Value,
) -> Result<Value, ReportError> {
    let mut by_name = Map::new();
    for m in methods {
        if by_name.insert(m.name.clone(), m.to_json()).is_some() {
            return Err(ReportError::Invalid(format!(
                "method {} appears twice; aggregate its seeds with group_by_method",
                m.name
            )));
        }
    }
    Ok(json!({
        "methods": by_name,
        "config": config,
        "split": split,
        "soft_label_quality": soft_label_quality,
    }))
}

/// Writes [`results_json`] to `path` (pretty-printed, atomically).
///
/// # Errors
/// As [`results_json`], plus [`ReportError::Io`] when writing fails.
pub fn write_results_json(
    path: &Path,
    methods: &[MethodSummary],
    config: Value,
    split: Value,
    soft_label_quality: Value,
) -> Result<(), ReportError> {
    let doc = results_json(methods, config, split, soft_label_quality)?;
    let mut text = serde_json::to_string_pretty(&doc).map_err(|e| ReportError::Render {
        what: path.display().to_string(),
        reason: e.to_string(),
    })?;
    text.push('\n');
    calseg_io::atomic::write_atomic(path, text.as_bytes())?;
    Ok(())
}
