//! Element types and arrays that keep the element type they were stored with.
//!
//! Files hold arrays of many element types; [`TypedArray`] keeps the stored type (so
//! that `calseg info` can report it and label maps stay exact) and converts on demand.
//! All arrays here are in standard (C, row-major) memory layout.

use ndarray::{ArrayBase, ArrayD, Data, Dimension, IxDyn};

/// Element type of a stored array. Names follow numpy (`"uint8"`, `"float32"`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    /// `bool` (npy `|b1`, safetensors `BOOL`).
    Bool,
    /// `uint8`.
    U8,
    /// `int8`.
    I8,
    /// `uint16`.
    U16,
    /// `int16`.
    I16,
    /// `uint32`.
    U32,
    /// `int32`.
    I32,
    /// `uint64`.
    U64,
    /// `int64`.
    I64,
    /// `float32`.
    F32,
    /// `float64`.
    F64,
}

impl DataType {
    /// The numpy name of the type, e.g. `"float32"`.
    pub fn name(self) -> &'static str {
        match self {
            DataType::Bool => "bool",
            DataType::U8 => "uint8",
            DataType::I8 => "int8",
            DataType::U16 => "uint16",
            DataType::I16 => "int16",
            DataType::U32 => "uint32",
            DataType::I32 => "int32",
            DataType::U64 => "uint64",
            DataType::I64 => "int64",
            DataType::F32 => "float32",
            DataType::F64 => "float64",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DataType::Bool | DataType::U8 | DataType::I8 => 1,
            DataType::U16 | DataType::I16 => 2,
            DataType::U32 | DataType::I32 | DataType::F32 => 4,
            DataType::U64 | DataType::I64 | DataType::F64 => 8,
        }
    }

    /// True for `float32` and `float64`.
    pub fn is_float(self) -> bool {
        matches!(self, DataType::F32 | DataType::F64)
    }
}

impl std::fmt::Display for DataType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A primitive element type this crate can store: the types of [`DataType`].
///
/// Sealed: implemented for `bool`, `u8`, `i8`, `u16`, `i16`, `u32`, `i32`, `u64`,
/// `i64`, `f32`, `f64`.
pub trait Element: Copy + Send + Sync + 'static + sealed::Sealed {
    /// The matching [`DataType`].
    const DTYPE: DataType;
    /// Converts to `f64` (exact except for 64-bit integers above 2^53).
    fn to_f64(self) -> f64;
    /// Appends the little-endian bytes of `self` to `out`.
    fn put_le(self, out: &mut Vec<u8>);
    /// Decodes one element from exactly `DTYPE.size()` bytes.
    fn from_bytes(chunk: &[u8], little_endian: bool) -> Self;
    /// Wraps an owned array into the matching [`TypedArray`] variant.
    fn wrap(array: ArrayD<Self>) -> TypedArray;
}

macro_rules! impl_element {
    ($t:ty, $variant:ident, $n:expr) => {
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const DTYPE: DataType = DataType::$variant;
            #[inline]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline]
            fn put_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            #[inline]
            fn from_bytes(chunk: &[u8], little_endian: bool) -> Self {
                let mut a = [0u8; $n];
                let n = chunk.len().min($n);
                a[..n].copy_from_slice(&chunk[..n]);
                if little_endian {
                    <$t>::from_le_bytes(a)
                } else {
                    <$t>::from_be_bytes(a)
                }
            }
            fn wrap(array: ArrayD<Self>) -> TypedArray {
                TypedArray::$variant(array)
            }
        }
    };
}

impl_element!(u8, U8, 1);
impl_element!(i8, I8, 1);
impl_element!(u16, U16, 2);
impl_element!(i16, I16, 2);
impl_element!(u32, U32, 4);
impl_element!(i32, I32, 4);
impl_element!(u64, U64, 8);
impl_element!(i64, I64, 8);
impl_element!(f32, F32, 4);
impl_element!(f64, F64, 8);

impl sealed::Sealed for bool {}
impl Element for bool {
    const DTYPE: DataType = DataType::Bool;
    fn to_f64(self) -> f64 {
        if self { 1.0 } else { 0.0 }
    }
    fn put_le(self, out: &mut Vec<u8>) {
        out.push(u8::from(self));
    }
    fn from_bytes(chunk: &[u8], _little_endian: bool) -> Self {
        chunk.first().is_some_and(|&b| b != 0)
    }
    fn wrap(array: ArrayD<Self>) -> TypedArray {
        TypedArray::Bool(array)
    }
}

/// Serialises an array's elements in C (row-major) order as little-endian bytes,
/// whatever its memory layout.
pub(crate) fn to_le_bytes_c<T: Element, S: Data<Elem = T>, D: Dimension>(
    a: &ArrayBase<S, D>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(a.len() * T::DTYPE.size());
    for &v in a.iter() {
        v.put_le(&mut out);
    }
    out
}

/// Decodes `bytes` (exactly `shape.product() * size` of them) into an array of
/// `shape`, stored in C order or, if `fortran`, in Fortran (column-major) order.
/// The result is always in standard layout. Returns `None` if the length is wrong.
pub(crate) fn decode_array<T: Element>(
    bytes: &[u8],
    shape: &[usize],
    fortran: bool,
    little_endian: bool,
) -> Option<ArrayD<T>> {
    let size = T::DTYPE.size();
    let n = checked_product(shape)?;
    if bytes.len() != n.checked_mul(size)? {
        return None;
    }
    let values: Vec<T> = bytes
        .chunks_exact(size)
        .map(|c| T::from_bytes(c, little_endian))
        .collect();
    from_vec(values, shape, fortran)
}

/// Builds a standard-layout array from values in C or Fortran order.
pub(crate) fn from_vec<T: Copy>(
    values: Vec<T>,
    shape: &[usize],
    fortran: bool,
) -> Option<ArrayD<T>> {
    if fortran {
        let c = fortran_to_c(&values, shape)?;
        ArrayD::from_shape_vec(IxDyn(shape), c).ok()
    } else {
        ArrayD::from_shape_vec(IxDyn(shape), values).ok()
    }
}

/// Side of the square tiles of [`fortran_to_c`]: 32 × 32 elements of up to 8 bytes touch
/// 64 source and 32 destination cache lines, well inside L1.
const TILE: usize = 32;

/// The values of an array stored first-index-fastest (Fortran order, as NIfTI stores its
/// voxels) rearranged into standard (C) order; `None` if `src` does not have the shape's
/// size.
///
/// Element `(i_0, …, i_{n−1})` moves from `Σ i_d·F_d` (`F_d = Π_{e<d} s_e`) to
/// `Σ i_d·C_d` (`C_d = Π_{e>d} s_e`). For every index of the middle axes `1..n−1` this is a
/// 2-D transpose between axis 0 (contiguous in the source) and axis `n−1` (contiguous in
/// the destination), done in [`TILE`]-sized tiles so that both sides stay in cache: one
/// pass over the data, where an element-by-element strided copy misses the cache on
/// nearly every read (10–30× slower on a BraTS-sized volume).
pub(crate) fn fortran_to_c<T: Copy>(src: &[T], shape: &[usize]) -> Option<Vec<T>> {
    let n = checked_product(shape)?;
    if src.len() != n {
        return None;
    }
    let nd = shape.len();
    if nd < 2 || n == 0 {
        return Some(src.to_vec());
    }
    let mut f_stride = vec![1usize; nd];
    for d in 1..nd {
        f_stride[d] = f_stride[d - 1] * shape[d - 1];
    }
    let mut c_stride = vec![1usize; nd];
    for d in (0..nd - 1).rev() {
        c_stride[d] = c_stride[d + 1] * shape[d + 1];
    }
    let (rows, cols) = (shape[0], shape[nd - 1]);
    let (row_out, col_src) = (c_stride[0], f_stride[nd - 1]);
    let mut out = src.to_vec();
    let middle = &shape[1..nd - 1];
    let mut m = vec![0usize; middle.len()];
    loop {
        let base_src: usize = m
            .iter()
            .enumerate()
            .map(|(i, &v)| v * f_stride[i + 1])
            .sum();
        let base_out: usize = m
            .iter()
            .enumerate()
            .map(|(i, &v)| v * c_stride[i + 1])
            .sum();
        for r0 in (0..rows).step_by(TILE) {
            for c0 in (0..cols).step_by(TILE) {
                for r in r0..(r0 + TILE).min(rows) {
                    let o = base_out + r * row_out;
                    let s = base_src + r;
                    for c in c0..(c0 + TILE).min(cols) {
                        out[o + c] = src[s + c * col_src];
                    }
                }
            }
        }
        // Next middle index (odometer, last axis fastest).
        let mut d = middle.len();
        loop {
            if d == 0 {
                return Some(out);
            }
            d -= 1;
            m[d] += 1;
            if m[d] < middle[d] {
                break;
            }
            m[d] = 0;
        }
    }
}

/// Product of the dimensions, `None` on overflow.
pub(crate) fn checked_product(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// An array that remembers the element type it was stored with.
///
/// Index order is the file's logical order (for NIfTI `(x, y, z[, t])` exactly as
/// nibabel returns it; for npy/safetensors/PNG the numpy order); memory layout is
/// standard (C order).
#[derive(Debug, Clone, PartialEq)]
pub enum TypedArray {
    /// `bool`
    Bool(ArrayD<bool>),
    /// `uint8`
    U8(ArrayD<u8>),
    /// `int8`
    I8(ArrayD<i8>),
    /// `uint16`
    U16(ArrayD<u16>),
    /// `int16`
    I16(ArrayD<i16>),
    /// `uint32`
    U32(ArrayD<u32>),
    /// `int32`
    I32(ArrayD<i32>),
    /// `uint64`
    U64(ArrayD<u64>),
    /// `int64`
    I64(ArrayD<i64>),
    /// `float32`
    F32(ArrayD<f32>),
    /// `float64`
    F64(ArrayD<f64>),
}

/// Runs `$body` with `$a` bound to the inner array of any variant.
macro_rules! with_array {
    ($self:expr, $a:ident => $body:expr) => {
        match $self {
            TypedArray::Bool($a) => $body,
            TypedArray::U8($a) => $body,
            TypedArray::I8($a) => $body,
            TypedArray::U16($a) => $body,
            TypedArray::I16($a) => $body,
            TypedArray::U32($a) => $body,
            TypedArray::I32($a) => $body,
            TypedArray::U64($a) => $body,
            TypedArray::I64($a) => $body,
            TypedArray::F32($a) => $body,
            TypedArray::F64($a) => $body,
        }
    };
}
pub(crate) use with_array;

impl TypedArray {
    /// The stored element type.
    pub fn dtype(&self) -> DataType {
        match self {
            TypedArray::Bool(_) => DataType::Bool,
            TypedArray::U8(_) => DataType::U8,
            TypedArray::I8(_) => DataType::I8,
            TypedArray::U16(_) => DataType::U16,
            TypedArray::I16(_) => DataType::I16,
            TypedArray::U32(_) => DataType::U32,
            TypedArray::I32(_) => DataType::I32,
            TypedArray::U64(_) => DataType::U64,
            TypedArray::I64(_) => DataType::I64,
            TypedArray::F32(_) => DataType::F32,
            TypedArray::F64(_) => DataType::F64,
        }
    }

    /// The shape, in the file's logical index order.
    pub fn shape(&self) -> &[usize] {
        with_array!(self, a => a.shape())
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        with_array!(self, a => a.len())
    }

    /// True if the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All values as `f64` (exact except for 64-bit integers above 2^53).
    pub fn to_f64(&self) -> ArrayD<f64> {
        with_array!(self, a => a.mapv(Element::to_f64))
    }

    /// All values as `f32` (rounded).
    pub fn to_f32(&self) -> ArrayD<f32> {
        with_array!(self, a => a.mapv(|v| Element::to_f64(v) as f32))
    }

    /// Smallest and largest value, ignoring NaN; `None` if there is no non-NaN value.
    pub fn min_max(&self) -> Option<(f64, f64)> {
        with_array!(self, a => min_max_iter(a.iter().map(|&v| Element::to_f64(v))))
    }

    /// The elements in C order as little-endian bytes.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        with_array!(self, a => to_le_bytes_c(a))
    }

    /// Decodes `bytes` into an array of `dtype` and `shape` (C order unless `fortran`).
    /// `None` if the byte count does not match.
    pub(crate) fn decode(
        dtype: DataType,
        shape: &[usize],
        bytes: &[u8],
        fortran: bool,
        little_endian: bool,
    ) -> Option<TypedArray> {
        Some(match dtype {
            DataType::Bool => TypedArray::Bool(decode_array(bytes, shape, fortran, little_endian)?),
            DataType::U8 => TypedArray::U8(decode_array(bytes, shape, fortran, little_endian)?),
            DataType::I8 => TypedArray::I8(decode_array(bytes, shape, fortran, little_endian)?),
            DataType::U16 => TypedArray::U16(decode_array(bytes, shape, fortran, little_endian)?),
            DataType::I16 => TypedArray::I16(decode_array(bytes, shape, fortran, little_endian)?),
            DataType::U32 => TypedArray::U32(decode_array(bytes, shape, fortran, little_endian)?),
            DataType::I32 => TypedArray::I32(decode_array(bytes, shape, fortran, little_endian)?),
            DataType::U64 => TypedArray::U64(decode_array(bytes, shape, fortran, little_endian)?),
            DataType::I64 => TypedArray::I64(decode_array(bytes, shape, fortran, little_endian)?),
            DataType::F32 => TypedArray::F32(decode_array(bytes, shape, fortran, little_endian)?),
            DataType::F64 => TypedArray::F64(decode_array(bytes, shape, fortran, little_endian)?),
        })
    }
}

impl<T: Element> From<ArrayD<T>> for TypedArray {
    fn from(a: ArrayD<T>) -> Self {
        T::wrap(a)
    }
}

/// Min and max of an iterator of floats, ignoring NaN.
pub(crate) fn min_max_iter(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let mut range: Option<(f64, f64)> = None;
    for v in values {
        if v.is_nan() {
            continue;
        }
        range = Some(match range {
            None => (v, v),
            Some((lo, hi)) => (lo.min(v), hi.max(v)),
        });
    }
    range
}

/// A floating-point array that keeps the precision it was stored with: probability
/// maps are returned this way so that `float64` inputs are not rounded.
#[derive(Debug, Clone, PartialEq)]
pub enum FloatArray {
    /// `float32`
    F32(ArrayD<f32>),
    /// `float64`
    F64(ArrayD<f64>),
}

impl FloatArray {
    /// The shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            FloatArray::F32(a) => a.shape(),
            FloatArray::F64(a) => a.shape(),
        }
    }

    /// The stored element type ([`DataType::F32`] or [`DataType::F64`]).
    pub fn dtype(&self) -> DataType {
        match self {
            FloatArray::F32(_) => DataType::F32,
            FloatArray::F64(_) => DataType::F64,
        }
    }

    /// Converts to `f64` (no-op for `F64`).
    pub fn into_f64(self) -> ArrayD<f64> {
        match self {
            FloatArray::F32(a) => a.mapv(f64::from),
            FloatArray::F64(a) => a,
        }
    }

    /// Converts to `f32` (no-op for `F32`; rounds `F64`).
    pub fn into_f32(self) -> ArrayD<f32> {
        match self {
            FloatArray::F32(a) => a,
            FloatArray::F64(a) => a.mapv(|v| v as f32),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fortran_to_c_matches_ndarray() {
        use ndarray::ShapeBuilder;
        for shape in [
            vec![7],
            vec![3, 5],
            vec![33, 2, 40],
            vec![5, 1, 70, 3],
            vec![2, 3, 4, 5, 6],
        ] {
            let n: usize = shape.iter().product();
            let values: Vec<u32> = (0..n as u32).collect();
            let want = ArrayD::from_shape_vec(IxDyn(&shape).f(), values.clone())
                .unwrap()
                .as_standard_layout()
                .into_owned();
            let got = fortran_to_c(&values, &shape).unwrap();
            assert_eq!(got, want.into_raw_vec_and_offset().0, "{shape:?}");
        }
        assert!(fortran_to_c(&[1u8, 2, 3], &[2, 2]).is_none());
    }
}
