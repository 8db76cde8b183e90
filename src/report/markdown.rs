//! The Markdown report: the comparison table with the best value of each column in bold,
//! per-class Dice, then configuration, split, soft-label quality, budget and machine.

use super::{MethodResult, MethodSummary};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt::Write as _;

/// The machine a result was computed on, for the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineInfo {
    /// CPU model (`model name` of `/proc/cpuinfo`), if known.
    pub cpu_model: Option<String>,
    /// Logical cores available to this process.
    pub cores: usize,
    /// Operating system: `PRETTY_NAME` of `/etc/os-release` if present, and the
    /// target OS and architecture.
    pub os: String,
}

impl MachineInfo {
    /// Reads what is available on this machine (never fails; unknowns are left out).
    pub fn detect() -> Self {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| cpu_model_of(&text));
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let pretty = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|text| {
                text.lines().find_map(|l| {
                    l.strip_prefix("PRETTY_NAME=")
                        .map(|v| v.trim_matches('"').to_owned())
                })
            });
        let target = format!("{} {}", std::env::consts::OS, std::env::consts::ARCH);
        MachineInfo {
            cpu_model,
            cores,
            os: match pretty {
                Some(p) => format!("{p} ({target})"),
                None => target,
            },
        }
    }
}

/// The CPU model in `/proc/cpuinfo` text: `model name` (x86), else `Model` or
/// `Hardware` (ARM boards).
pub(super) fn cpu_model_of(cpuinfo: &str) -> Option<String> {
    ["model name", "Model", "Hardware"].iter().find_map(|key| {
        cpuinfo.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == *key && !v.trim().is_empty()).then(|| v.trim().to_owned())
        })
    })
}

/// Which way a column is better.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Better {
    Lower,
    Higher,
    /// Not a quality measure (e.g. training time): nothing is bold.
    Neither,
}

/// One column of the comparison table.
struct Column {
    header: &'static str,
    value: fn(&MethodResult) -> Option<f64>,
    better: Better,
    decimals: usize,
}

/// A column: header, value of a run, which way is better, decimals shown.
const fn column(
    header: &'static str,
    value: fn(&MethodResult) -> Option<f64>,
    better: Better,
    decimals: usize,
) -> Column {
    Column {
        header,
        value,
        better,
        decimals,
    }
}

/// The comparison table's columns, in order.
const COLUMNS: [Column; 10] = [
    column("ECE", |r| Some(r.ece), Better::Lower, 4),
    column("ECE (fg)", |r| Some(r.ece_fg), Better::Lower, 4),
    column("MCE", |r| Some(r.mce), Better::Lower, 4),
    column("CECE", |r| Some(r.cece), Better::Lower, 4),
    column("ACE", |r| Some(r.ace), Better::Lower, 4),
    column("Brier", |r| Some(r.brier), Better::Lower, 4),
    column("NLL", |r| Some(r.nll), Better::Lower, 4),
    column("Dice (fg)", |r| Some(r.dice_mean_fg), Better::Higher, 4),
    column("HD95 (fg, mm)", |r| r.hd95_mean_fg, Better::Lower, 2),
    column("train (s)", |r| Some(r.train_seconds), Better::Neither, 1),
];

/// The best finite value of a column (`None` if no finite value or no direction).
fn best(values: &[Option<f64>], better: Better) -> Option<f64> {
    let finite = values.iter().flatten().copied().filter(|v| v.is_finite());
    match better {
        Better::Lower => finite.reduce(f64::min),
        Better::Higher => finite.reduce(f64::max),
        Better::Neither => None,
    }
}

/// A table cell: `mean` or `mean ± sd` at `decimals`, bold when `mean` equals the
/// column's best; `–` when missing.
fn cell(mean: Option<f64>, sd: Option<f64>, decimals: usize, best: Option<f64>) -> String {
    let Some(m) = mean.filter(|m| m.is_finite()) else {
        return "–".to_owned();
    };
    let mut text = format!("{m:.decimals$}");
    if let Some(s) = sd.filter(|s| s.is_finite()) {
        let _ = write!(text, " ± {s:.decimals$}");
    }
    if best == Some(m) {
        format!("**{text}**")
    } else {
        text
    }
}

/// A JSON value as Markdown: an object as a bullet list (`key`: value), strings bare,
/// other values as inline JSON, `null` as "none".
fn render_value(v: &Value) -> String {
    let scalar = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "none".to_owned(),
        other => format!("`{other}`"),
    };
    match v {
        Value::Object(o) if !o.is_empty() => o
            .iter()
            .map(|(k, v)| format!("- `{k}`: {}\n", scalar(v)))
            .collect(),
        other => format!("{}\n", scalar(other)),
    }
}

/// The Markdown report: the comparison table (methods × ECE, ECE (fg), MCE, CECE, ACE,
/// Brier, NLL, Dice (fg), HD95 (fg, mm) when any method has it, training time; best
/// value of each quality column in **bold** — lowest, except Dice, highest — ties all
/// bold; `mean ± sd` when a method has several seeds), a per-class Dice table, then the
/// sections Configuration, Split, Soft-label quality (unless `null`), Budget and Machine.
pub fn results_markdown(
    methods: &[MethodSummary],
    config: &Value,
    split: &Value,
    soft_label_quality: &Value,
    budget: &Value,
    machine: &MachineInfo,
) -> String {
    let mut s = String::from("# Results\n\n");
    s.push_str(&methods_table(methods));
    s.push_str(&seed_spread(methods));

    let k = methods.iter().map(|m| m.mean.dice.len()).max().unwrap_or(0);
    if k > 0 {
        s.push_str("\n## Dice per class\n\n| Method |");
        for c in 0..k {
            let _ = write!(s, " class {c} |");
        }
        s.push_str("\n|---|");
        for _ in 0..k {
            s.push_str("---:|");
        }
        s.push('\n');
        let at = |v: &[f64], c: usize| v.get(c).copied();
        let bests: Vec<Option<f64>> = (0..k)
            .map(|c| {
                let values: Vec<Option<f64>> =
                    methods.iter().map(|m| at(&m.mean.dice, c)).collect();
                best(&values, Better::Higher)
            })
            .collect();
        for m in methods {
            let _ = write!(s, "| {} |", m.name);
            for (c, b) in bests.iter().enumerate() {
                let sd = m.sd.as_ref().and_then(|sd| at(&sd.dice, c));
                let _ = write!(s, " {} |", cell(at(&m.mean.dice, c), sd, 4, *b));
            }
            s.push('\n');
        }
    }

    let _ = write!(s, "\n## Configuration\n\n{}", render_value(config));
    let _ = write!(s, "\n## Split\n\n{}", render_value(split));
    if !soft_label_quality.is_null() {
        let _ = write!(
            s,
            "\n## Soft-label quality\n\n{}",
            render_value(soft_label_quality)
        );
    }
    let _ = write!(s, "\n## Budget\n\n{}", render_value(budget));
    let _ = write!(
        s,
        "\n## Machine\n\n- CPU: {}\n- cores: {}\n- OS: {}\n",
        machine.cpu_model.as_deref().unwrap_or("unknown"),
        machine.cores,
        machine.os
    );
    s
}

/// The comparison table alone (see [`results_markdown`]): one row per method, the best
/// value of each quality column in bold, `mean ± sd` over seeds.
pub fn methods_table(methods: &[MethodSummary]) -> String {
    let mut s = String::new();
    let columns: Vec<&Column> = COLUMNS
        .iter()
        .filter(|c| {
            c.header != "HD95 (fg, mm)" || methods.iter().any(|m| m.mean.hd95_mean_fg.is_some())
        })
        .collect();
    let _ = write!(s, "| Method | seeds |");
    for c in &columns {
        let _ = write!(s, " {} |", c.header);
    }
    s.push_str("\n|---|---:|");
    for _ in &columns {
        s.push_str("---:|");
    }
    s.push('\n');
    let bests: Vec<Option<f64>> = columns
        .iter()
        .map(|c| {
            let values: Vec<Option<f64>> = methods.iter().map(|m| (c.value)(&m.mean)).collect();
            best(&values, c.better)
        })
        .collect();
    for m in methods {
        let _ = write!(s, "| {} | {} |", m.name, m.n_seeds);
        for (c, b) in columns.iter().zip(&bests) {
            let sd = m.sd.as_ref().and_then(|sd| (c.value)(sd));
            let _ = write!(s, " {} |", cell((c.value)(&m.mean), sd, c.decimals, *b));
        }
        s.push('\n');
    }
    s
}

/// With several seeds: for foreground ECE and mean foreground Dice, each method's
/// difference to the best method, and whether it is larger than the seed spread (the
/// sum of the two sample standard deviations). Empty with one seed.
pub fn seed_spread(methods: &[MethodSummary]) -> String {
    let with_sd: Vec<&MethodSummary> = methods.iter().filter(|m| m.sd.is_some()).collect();
    if with_sd.len() < 2 {
        return String::new();
    }
    let mut s = String::from(
        "\n**Differences and seed spread** (difference to the best method; `>` where it is larger \
         than the sum of the two seeds' standard deviations, `≈` where it is not):\n\n",
    );
    type Metric = (&'static str, fn(&MethodResult) -> f64, Better);
    let metrics: [Metric; 2] = [
        ("ECE (fg)", |r| r.ece_fg, Better::Lower),
        ("Dice (fg)", |r| r.dice_mean_fg, Better::Higher),
    ];
    for (name, value, better) in metrics {
        let best_m = with_sd.iter().copied().min_by(|a, b| {
            let (x, y) = (value(&a.mean), value(&b.mean));
            let o = x.total_cmp(&y);
            if better == Better::Higher {
                o.reverse()
            } else {
                o
            }
        });
        let Some(best_m) = best_m else { continue };
        let sd = |m: &MethodSummary| m.sd.as_ref().map_or(0.0, value);
        let _ = write!(
            s,
            "- {name}: best **{}** ({:.4});",
            best_m.name,
            value(&best_m.mean)
        );
        for m in &with_sd {
            if m.name == best_m.name {
                continue;
            }
            let d = value(&m.mean) - value(&best_m.mean);
            let sign = if d.abs() > sd(m) + sd(best_m) {
                ">"
            } else {
                "≈"
            };
            let _ = write!(s, " {} {:+.4} {sign},", m.name, d);
        }
        if s.ends_with(',') {
            s.pop();
        }
        s.push('\n');
    }
    s
}

/// The `results.md` section on the raters (empty when no method has rater metrics):
/// per method, ECE, Brier and NLL against the rater distribution, the generalised energy
/// distance and the Dice against each rater (mean, min–max over raters), seed means.
pub fn raters_section(methods: &[MethodSummary]) -> String {
    let key = |m: &MethodSummary, k: &str| {
        m.mean
            .extra
            .get(&format!("{}{k}", super::RATERS_PREFIX))
            .copied()
    };
    let rows: Vec<String> = methods
        .iter()
        .filter_map(|m| {
            let v = |k: &str| key(m, k).unwrap_or(f64::NAN);
            key(m, "ged")?;
            Some(format!(
                "| {} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} ({:.4}–{:.4}) |",
                m.name,
                v("ece_soft"),
                v("brier_soft"),
                v("nll_soft"),
                v("ged"),
                v("dice_per_rater_mean"),
                v("dice_per_rater_min"),
                v("dice_per_rater_max"),
            ))
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    format!(
        "\n## Against the raters\n\nThe test cases have several raters. Calibration against the rater \
         distribution q (the per-voxel mean of the raters' one-hot maps): ECE with accuracy = q at the \
         arg-max, Brier Σ_k (p_k − q_k)², NLL −Σ_k q_k ln p_k; the generalised energy distance \
         (Kohl et al. 2018, d = 1 − mean foreground IoU, lower is better) of the arg-max against the \
         raters; Dice of the arg-max against each rater (foreground mean; mean and min–max over raters).\n\n\
         | Method | ECE (soft) | Brier (soft) | NLL (soft) | GED | Dice per rater |\n|---|---:|---:|---:|---:|---:|\n{}\n",
        rows.join("\n")
    )
}
