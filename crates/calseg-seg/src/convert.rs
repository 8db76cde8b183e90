//! Conversions between ndarray arrays (what calseg-io reads and calseg-metrics scores)
//! and candle tensors (what the networks run on).
//!
//! They live here, not in calseg-io, so that the I/O and metrics crates never depend on
//! candle. Both directions copy: ndarray and candle do not share buffers. Shapes are kept
//! as they are (`(K, *spatial)` stays `(K, *spatial)`); layouts are made standard (C order)
//! on the way.

use crate::{Result, SegError};
use candle_core::{DType, Device, Tensor, WithDType};
use ndarray::{ArrayD, ArrayViewD};

/// Copies an ndarray view (any layout) into a tensor of the same shape and element type
/// on `device`.
///
/// ```
/// use calseg_seg::convert::{array_to_tensor, tensor_to_array};
/// use candle_core::Device;
/// use ndarray::ArrayD;
/// let a = ArrayD::from_shape_fn(vec![2, 3, 4], |i| (i[0] * 100 + i[1] * 10 + i[2]) as f32);
/// let t = array_to_tensor(a.view(), &Device::Cpu)?;
/// assert_eq!(t.dims(), &[2, 3, 4]);
/// let back: ArrayD<f32> = tensor_to_array(&t)?;
/// assert_eq!(back, a);
/// # Ok::<(), calseg_seg::SegError>(())
/// ```
///
/// # Errors
/// [`SegError::Candle`] if the tensor cannot be created on `device`.
pub fn array_to_tensor<T: WithDType>(array: ArrayViewD<'_, T>, device: &Device) -> Result<Tensor> {
    let shape = array.shape().to_vec();
    let data: Vec<T> = match array.as_slice() {
        Some(s) => s.to_vec(),
        None => array.iter().copied().collect(),
    };
    Ok(Tensor::from_vec(data, shape, device)?)
}

/// Copies a tensor (any device, any layout) into an ndarray array of the same shape.
///
/// # Errors
/// [`SegError::Shape`] if the tensor's element type is not `T` (no silent casts: call
/// `to_dtype` first); [`SegError::Candle`] if it cannot be brought to the CPU.
pub fn tensor_to_array<T: WithDType>(tensor: &Tensor) -> Result<ArrayD<T>> {
    if tensor.dtype() != T::DTYPE {
        return Err(SegError::Shape(format!(
            "tensor has element type {:?}, asked for {:?}",
            tensor.dtype(),
            T::DTYPE
        )));
    }
    let shape = tensor.dims().to_vec();
    let flat = tensor
        .flatten_all()?
        .to_device(&Device::Cpu)?
        .to_vec1::<T>()?;
    ArrayD::from_shape_vec(shape, flat)
        .map_err(|e| SegError::Shape(format!("tensor to array: {e}")))
}

/// Element type of candle that holds an ndarray element type, for messages.
pub fn dtype_of<T: WithDType>() -> DType {
    T::DTYPE
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Axis;

    #[test]
    fn round_trip_keeps_values_and_shape_for_non_standard_layouts() {
        let a = ArrayD::from_shape_fn(vec![3, 5, 7], |i| (i[0] * 1000 + i[1] * 10 + i[2]) as f64);
        // A transposed (Fortran-order) view must come out in logical order.
        let t = array_to_tensor(a.t(), &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[7, 5, 3]);
        let back: ArrayD<f64> = tensor_to_array(&t).unwrap();
        assert_eq!(back, a.t().to_owned());
        // A sliced view with a stride.
        let s = a.slice_axis(Axis(2), ndarray::Slice::new(0, None, 2));
        let back: ArrayD<f64> =
            tensor_to_array(&array_to_tensor(s.clone(), &Device::Cpu).unwrap()).unwrap();
        assert_eq!(back, s.to_owned());
        // A non-contiguous tensor (transposed in candle) comes back in logical order too.
        let tt = t.t().unwrap();
        let back: ArrayD<f64> = tensor_to_array(&tt).unwrap();
        assert_eq!(back.shape(), &[7, 3, 5]);
        assert_eq!(back[[6, 2, 4]], a[[2, 4, 6]]);
    }

    #[test]
    fn wrong_element_type_is_an_error_not_a_cast() {
        let a = ArrayD::<f32>::zeros(vec![2, 2]);
        let t = array_to_tensor(a.view(), &Device::Cpu).unwrap();
        let r: Result<ArrayD<f64>> = tensor_to_array(&t);
        assert!(matches!(r, Err(SegError::Shape(_))));
        assert_eq!(dtype_of::<f32>(), DType::F32);
    }
}
