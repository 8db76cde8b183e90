//! Named tensors to and from safetensors files, written atomically (temporary file +
//! rename, via [`calseg_io::atomic::write_atomic`]), with errors that name the file.
//!
//! Used for training checkpoints (parameters + AdamW moments + the run state as JSON
//! in the safetensors metadata, so that one atomic rename publishes all of it) and for
//! model directories.

use crate::{Result, SegError};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::Path;

/// Little-endian bytes and safetensors dtype of a tensor (f32, f64 or u32).
fn tensor_bytes(t: &Tensor) -> Result<(Dtype, Vec<u8>)> {
    let flat = t.flatten_all()?.to_device(&Device::Cpu)?;
    Ok(match t.dtype() {
        DType::F32 => (
            Dtype::F32,
            flat.to_vec1::<f32>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        DType::F64 => (
            Dtype::F64,
            flat.to_vec1::<f64>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        DType::U32 => (
            Dtype::U32,
            flat.to_vec1::<u32>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        other => {
            return Err(SegError::Config(format!(
                "cannot save tensors of type {other:?}"
            )));
        }
    })
}

/// Writes `tensors` (name → tensor) and string `metadata` to `path` atomically: a
/// failed write leaves any previous file at `path` untouched.
pub fn save_tensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let raw: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| {
            let (d, b) = tensor_bytes(t)?;
            Ok((n.clone(), d, t.dims().to_vec(), b))
        })
        .collect::<Result<_>>()?;
    let views = raw
        .iter()
        .map(|(n, d, s, b)| {
            TensorView::new(*d, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| SegError::checkpoint(path, format!("tensor {n}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, metadata)
        .map_err(|e| SegError::checkpoint(path, format!("cannot encode: {e}")))?;
    calseg_io::atomic::write_atomic(path, &bytes)?;
    Ok(())
}

/// The tensors and metadata of a safetensors file, on `device`.
///
/// # Errors
/// [`SegError::Checkpoint`] naming the file when it is missing, unreadable or corrupt.
pub fn load_tensors(
    path: &Path,
    device: &Device,
) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| SegError::checkpoint(path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| SegError::checkpoint(path, format!("not a valid safetensors file: {e}")))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| SegError::checkpoint(path, format!("not a valid safetensors file: {e}")))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let dtype = match view.dtype() {
            Dtype::F32 => DType::F32,
            Dtype::F64 => DType::F64,
            Dtype::U32 => DType::U32,
            other => {
                return Err(SegError::checkpoint(
                    path,
                    format!("tensor {name} has unsupported type {other:?}"),
                ));
            }
        };
        let t = Tensor::from_raw_buffer(view.data(), dtype, view.shape(), device)
            .map_err(|e| SegError::checkpoint(path, format!("tensor {name}: {e}")))?;
        out.insert(name, t);
    }
    Ok((out, meta.metadata().clone().unwrap_or_default()))
}

/// The parameters of `varmap`, sorted by name.
pub fn named_vars(varmap: &VarMap) -> Result<Vec<(String, candle_core::Var)>> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| SegError::Config("parameter map lock poisoned".into()))?;
    let mut v: Vec<(String, candle_core::Var)> =
        data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(v)
}

/// Sets every parameter of `varmap` from `tensors` (same names, shapes; cast to the
/// parameter's dtype).
///
/// # Errors
/// [`SegError::Checkpoint`] naming `path` and the tensor when one is missing or has
/// another shape.
pub fn load_into_varmap(
    varmap: &VarMap,
    tensors: &HashMap<String, Tensor>,
    path: &Path,
) -> Result<()> {
    load_into_vars(&named_vars(varmap)?, tensors, path)
}

/// [`load_into_varmap`] for a list of named variables.
pub fn load_into_vars(
    named: &[(String, candle_core::Var)],
    tensors: &HashMap<String, Tensor>,
    path: &Path,
) -> Result<()> {
    for (name, var) in named {
        let t = tensors
            .get(name)
            .ok_or_else(|| SegError::checkpoint(path, format!("missing parameter {name}")))?;
        if t.dims() != var.dims() {
            return Err(SegError::checkpoint(
                path,
                format!(
                    "parameter {name} has shape {:?}, the model needs {:?}",
                    t.dims(),
                    var.dims()
                ),
            ));
        }
        var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
    }
    Ok(())
}
