//! `calseg info FILE [--json]`: shape, data type, spacing, affine and value range of any
//! file calseg reads (.nii, .nii.gz, .npy, .safetensors — each tensor —, .png).

use super::{CliError, CliResult};
use calseg_io::{DataType, Image, read_images};
use clap::Args;
use serde_json::{Map, Value, json};
use std::fmt::Write as _;
use std::path::PathBuf;

/// Arguments of `calseg info`.
#[derive(Args, Debug)]
pub struct InfoArgs {
    /// The file: .nii, .nii.gz, .npy, .safetensors or .png.
    pub file: PathBuf,
    /// Print JSON: `{"file", "format", "shape", "datatype", "spacing", "affine", "min",
    /// "max", "nan_count", "scaling"}`; for .safetensors the per-tensor objects are under
    /// `"tensors": {NAME: {...}}`. Values are after scl_slope/scl_inter.
    #[arg(long)]
    pub json: bool,
}

/// Runs `calseg info`.
pub fn run(args: InfoArgs) -> CliResult {
    let images = read_images(&args.file).map_err(|e| CliError::BadInput(e.to_string()))?;
    let file = args.file.display().to_string();
    let out = if args.json {
        let v = to_json(&file, &images);
        serde_json::to_string_pretty(&v)
            .map_err(|e| CliError::Failed(format!("cannot format JSON: {e}")))?
    } else {
        to_text(&file, &images)
    };
    println!("{out}");
    Ok(())
}

/// Number of NaN values (after scaling; only float types can hold NaN).
fn nan_count(image: &Image) -> usize {
    if matches!(image.datatype(), DataType::F32 | DataType::F64) {
        image.data.to_f64().iter().filter(|v| v.is_nan()).count()
    } else {
        0
    }
}

/// The per-array JSON object.
fn describe(image: &Image) -> Map<String, Value> {
    let (min, max) = match image.value_range() {
        Some((lo, hi)) => (json!(lo), json!(hi)),
        None => (Value::Null, Value::Null),
    };
    let mut m = Map::new();
    m.insert("shape".into(), json!(image.shape()));
    m.insert("datatype".into(), json!(image.datatype().name()));
    m.insert("spacing".into(), json!(image.geometry.spacing));
    m.insert(
        "affine".into(),
        image.geometry.affine.map_or(Value::Null, |a| json!(a)),
    );
    m.insert("min".into(), min);
    m.insert("max".into(), max);
    m.insert("nan_count".into(), json!(nan_count(image)));
    m.insert(
        "scaling".into(),
        image
            .scaling
            .map_or(Value::Null, |(s, i)| json!({"slope": s, "inter": i})),
    );
    m
}

fn format_name(images: &[Image]) -> &'static str {
    images.first().map_or("unknown", |i| i.format.description())
}

fn is_multi(images: &[Image]) -> bool {
    images.iter().any(|i| i.name.is_some())
}

fn to_json(file: &str, images: &[Image]) -> Value {
    let mut top = Map::new();
    top.insert("file".into(), json!(file));
    top.insert("format".into(), json!(format_name(images)));
    if is_multi(images) {
        let mut tensors = Map::new();
        for img in images {
            tensors.insert(
                img.name.clone().unwrap_or_default(),
                Value::Object(describe(img)),
            );
        }
        top.insert("tensors".into(), Value::Object(tensors));
    } else if let Some(img) = images.first() {
        top.extend(describe(img));
    }
    Value::Object(top)
}

fn join_dims<T: std::fmt::Display>(v: &[T]) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(" × ")
}

fn describe_text(out: &mut String, image: &Image, indent: &str) {
    let _ = writeln!(out, "{indent}shape     {}", join_dims(image.shape()));
    let _ = writeln!(out, "{indent}datatype  {}", image.datatype());
    let _ = writeln!(
        out,
        "{indent}spacing   {}",
        join_dims(&image.geometry.spacing)
    );
    match &image.geometry.affine {
        Some(a) => {
            for (r, row) in a.iter().enumerate() {
                let label = if r == 0 { "affine" } else { "" };
                let cells: Vec<String> = row.iter().map(|v| format!("{v:10.4}")).collect();
                let _ = writeln!(out, "{indent}{label:<9} [{} ]", cells.join(""));
            }
        }
        None => {
            let _ = writeln!(out, "{indent}affine    none");
        }
    }
    if let Some((s, i)) = image.scaling {
        let _ = writeln!(out, "{indent}scaling   value = stored × {s} + {i}");
    }
    match image.value_range() {
        Some((lo, hi)) => {
            let _ = writeln!(out, "{indent}range     {lo} … {hi}");
        }
        None => {
            let _ = writeln!(out, "{indent}range     (no values)");
        }
    }
    let nans = nan_count(image);
    if nans > 0 {
        let _ = writeln!(out, "{indent}NaN       {nans} values");
    }
}

fn to_text(file: &str, images: &[Image]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "file      {file}");
    let _ = writeln!(out, "format    {}", format_name(images));
    if is_multi(images) {
        for img in images {
            let _ = writeln!(out, "tensor    {}", img.name.as_deref().unwrap_or(""));
            describe_text(&mut out, img, "  ");
        }
    } else if let Some(img) = images.first() {
        describe_text(&mut out, img, "");
    }
    out.trim_end().to_string()
}
