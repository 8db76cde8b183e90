//! `.safetensors` files (named tensors, the format of PyTorch/HuggingFace checkpoints)
//! through the `safetensors` crate.
//!
//! Conventions of calseg: soft labels are stored `(K, *spatial)` float32 under the name
//! `soft_labels`, probabilities under `probs`, label maps under `labels`.
//! Tensors are C order, as in PyTorch and numpy. `F16` and `BF16` tensors are widened
//! to `float32` on reading; other exotic types (fp8, complex) are an error.

use crate::array::{DataType, Element, TypedArray, to_le_bytes_c};
use crate::atomic::write_atomic;
use crate::error::{IoError, Result};
use ndarray::{ArrayBase, ArrayD, Data, Dimension, IxDyn};
use safetensors::tensor::{Dtype, SafeTensors, View};
use std::borrow::Cow;
use std::path::Path;

/// A tensor ready to be written: a name, a type, a shape and its little-endian bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    name: String,
    dtype: DataType,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl NamedTensor {
    /// Copies `array` (any layout; stored in C order) under `name`.
    pub fn new<T: Element, S: Data<Elem = T>, D: Dimension>(
        name: impl Into<String>,
        array: &ArrayBase<S, D>,
    ) -> Self {
        NamedTensor {
            name: name.into(),
            dtype: T::DTYPE,
            shape: array.shape().to_vec(),
            bytes: to_le_bytes_c(array),
        }
    }

    /// The tensor's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

fn to_st_dtype(d: DataType) -> Dtype {
    match d {
        DataType::Bool => Dtype::BOOL,
        DataType::U8 => Dtype::U8,
        DataType::I8 => Dtype::I8,
        DataType::U16 => Dtype::U16,
        DataType::I16 => Dtype::I16,
        DataType::U32 => Dtype::U32,
        DataType::I32 => Dtype::I32,
        DataType::U64 => Dtype::U64,
        DataType::I64 => Dtype::I64,
        DataType::F32 => Dtype::F32,
        DataType::F64 => Dtype::F64,
    }
}

impl View for &NamedTensor {
    fn dtype(&self) -> Dtype {
        to_st_dtype(self.dtype)
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Encodes tensors as `.safetensors` bytes. Names must be unique.
pub fn encode_safetensors(tensors: &[NamedTensor], path: &Path) -> Result<Vec<u8>> {
    let mut names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(IoError::invalid(
            path,
            format!("tensor name {:?} given twice", w[0]),
        ));
    }
    safetensors::tensor::serialize(tensors.iter().map(|t| (t.name.as_str(), t)), None).map_err(
        |e| IoError::Safetensors {
            path: path.to_path_buf(),
            reason: e.to_string(),
        },
    )
}

/// Writes named tensors to a `.safetensors` file, atomically.
///
/// ```
/// use calseg_io::{NamedTensor, read_safetensors, write_safetensors};
/// use ndarray::Array3;
/// let dir = std::env::temp_dir().join(format!("calseg-doc-st-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let path = dir.join("soft.safetensors");
/// let soft = Array3::<f32>::from_elem((3, 4, 5), 1.0 / 3.0); // (K, H, W)
/// write_safetensors(&path, &[NamedTensor::new("soft_labels", &soft)])?;
/// let tensors = read_safetensors(&path)?;
/// assert_eq!(tensors[0].0, "soft_labels");
/// assert_eq!(tensors[0].1.shape(), &[3, 4, 5]);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn write_safetensors(path: impl AsRef<Path>, tensors: &[NamedTensor]) -> Result<()> {
    let path = path.as_ref();
    let bytes = encode_safetensors(tensors, path)?;
    write_atomic(path, &bytes)
}

/// Reads every tensor of a `.safetensors` file, in the order of their data in the file.
pub fn read_safetensors(path: impl AsRef<Path>) -> Result<Vec<(String, TypedArray)>> {
    let path = path.as_ref();
    let bytes = crate::mapped::file_bytes(path)?;
    safetensors_from_bytes(&bytes, path)
}

/// Parses `.safetensors` bytes held in memory; `path` names them in errors.
pub fn safetensors_from_bytes(bytes: &[u8], path: &Path) -> Result<Vec<(String, TypedArray)>> {
    let err = |reason: String| IoError::Safetensors {
        path: path.to_path_buf(),
        reason,
    };
    let st = SafeTensors::deserialize(bytes).map_err(|e| err(e.to_string()))?;
    let mut tensors: Vec<(String, safetensors::tensor::TensorView<'_>)> = st.tensors();
    // File order: by the address of the data.
    tensors.sort_by_key(|(_, v)| v.data().as_ptr() as usize);
    let mut out = Vec::with_capacity(tensors.len());
    for (name, view) in tensors {
        let shape = view.shape().to_vec();
        let data = view.data();
        let dtype = match view.dtype() {
            Dtype::BOOL => DataType::Bool,
            Dtype::U8 => DataType::U8,
            Dtype::I8 => DataType::I8,
            Dtype::U16 => DataType::U16,
            Dtype::I16 => DataType::I16,
            Dtype::U32 => DataType::U32,
            Dtype::I32 => DataType::I32,
            Dtype::U64 => DataType::U64,
            Dtype::I64 => DataType::I64,
            Dtype::F32 => DataType::F32,
            Dtype::F64 => DataType::F64,
            Dtype::F16 | Dtype::BF16 => {
                let half = view.dtype() == Dtype::F16;
                let values: Vec<f32> = data
                    .chunks_exact(2)
                    .map(|c| {
                        let bits = u16::from_le_bytes([c[0], c[1]]);
                        if half {
                            f16_to_f32(bits)
                        } else {
                            f32::from_bits(u32::from(bits) << 16)
                        }
                    })
                    .collect();
                let a = ArrayD::from_shape_vec(IxDyn(&shape), values).map_err(|_| {
                    err(format!(
                        "tensor {name:?}: data does not match shape {shape:?}"
                    ))
                })?;
                out.push((name, TypedArray::F32(a)));
                continue;
            }
            other => {
                return Err(IoError::UnsupportedDatatype {
                    path: path.to_path_buf(),
                    code: 0,
                    name: format!("safetensors dtype {other:?} (tensor {name:?})"),
                });
            }
        };
        let a = TypedArray::decode(dtype, &shape, data, false, true).ok_or_else(|| {
            err(format!(
                "tensor {name:?}: data does not match shape {shape:?}"
            ))
        })?;
        out.push((name, a));
    }
    Ok(out)
}

/// IEEE half precision to single precision.
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: value = m · 2^-24.
            let v = m as f32 * f32::powi(2.0, -24);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_precision_values() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x3800), 0.5);
        assert_eq!(f16_to_f32(0x0001), f32::powi(2.0, -24));
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
    }

    #[test]
    fn duplicate_names_rejected() {
        let a = ndarray::arr1(&[1.0f32]);
        let e = encode_safetensors(
            &[NamedTensor::new("x", &a), NamedTensor::new("x", &a)],
            Path::new("dup.safetensors"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("dup.safetensors"));
    }
}
