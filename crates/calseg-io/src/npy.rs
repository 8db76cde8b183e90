//! numpy `.npy` files, read and written by this crate's own small codec.
//!
//! Format (numpy's `NEP 1`): the magic `\x93NUMPY`, a version byte pair (1.0: 2-byte
//! header length; 2.0 and 3.0: 4-byte), then a Python dict literal such as
//! `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }` padded with spaces to
//! a multiple of 64 bytes and ended by `\n`, then the raw elements.
//!
//! Read: `descr` `|b1 |u1 |i1 <u2 <i2 <u4 <i4 <u8 <i8 <f4 <f8` and their big-endian
//! `>` forms; `fortran_order: True` arrays are returned in the same logical index order
//! (so `a[[i, j]]` is numpy's `a[i, j]`), in standard layout. The data must have exactly
//! the size the shape needs. Object arrays (pickles), structured and other dtypes are
//! rejected with an error naming the file.
//!
//! Write: always C order, little-endian, version 1.0 (2.0 only if the header would not
//! fit), readable by `numpy.load`.

use crate::array::{DataType, Element, TypedArray, checked_product, to_le_bytes_c};
use crate::atomic::write_atomic;
use crate::error::{IoError, Result};
use ndarray::{ArrayBase, Data, Dimension};
use std::path::Path;

const MAGIC: &[u8] = b"\x93NUMPY";

/// Reads a `.npy` file.
pub fn read_npy(path: impl AsRef<Path>) -> Result<TypedArray> {
    let path = path.as_ref();
    let bytes = crate::mapped::file_bytes(path)?;
    npy_from_bytes(&bytes, path)
}

/// Parses `.npy` bytes held in memory; `path` names them in errors.
pub fn npy_from_bytes(bytes: &[u8], path: &Path) -> Result<TypedArray> {
    let layout = npy_layout(bytes, path)?;
    TypedArray::decode(
        layout.dtype,
        &layout.shape,
        &bytes[layout.data_start..],
        layout.fortran,
        layout.little_endian,
    )
    .ok_or_else(|| IoError::Npy {
        path: path.to_path_buf(),
        reason: "data does not match the shape".into(),
    })
}

/// Where and how the elements of a `.npy` file are stored (its checked header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NpyLayout {
    /// Element type.
    pub(crate) dtype: DataType,
    /// Byte order of the elements.
    pub(crate) little_endian: bool,
    /// `fortran_order` (first index fastest).
    pub(crate) fortran: bool,
    /// Shape in numpy's logical order.
    pub(crate) shape: Vec<usize>,
    /// Offset of the first element; the data run exactly to the end of the file.
    pub(crate) data_start: usize,
}

/// Parses and checks the header of `.npy` bytes, including that the data have exactly
/// the size the shape needs.
pub(crate) fn npy_layout(bytes: &[u8], path: &Path) -> Result<NpyLayout> {
    let err = |reason: String| IoError::Npy {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(err("missing the \\x93NUMPY magic".into()));
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (header_len, start) = match major {
        1 => (
            usize::from(u16::from_le_bytes([bytes[8], bytes[9]])),
            10usize,
        ),
        2 | 3 => {
            let Some(b) = bytes.get(8..12) else {
                return Err(err("truncated header length".into()));
            };
            let n = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            (n as usize, 12)
        }
        _ => return Err(err(format!("unsupported format version {major}.{minor}"))),
    };
    let end = start
        .checked_add(header_len)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| {
            err(format!(
                "header of {header_len} bytes runs past the end of the file"
            ))
        })?;
    let header =
        std::str::from_utf8(&bytes[start..end]).map_err(|_| err("header is not text".into()))?;
    let dict =
        parse_header(header).map_err(|r| err(format!("cannot parse header {header:?}: {r}")))?;
    let descr = dict
        .descr
        .ok_or_else(|| err("header has no 'descr'".into()))?;
    let fortran = dict
        .fortran_order
        .ok_or_else(|| err("header has no 'fortran_order'".into()))?;
    let shape = dict
        .shape
        .ok_or_else(|| err("header has no 'shape'".into()))?;
    let (dtype, little) = parse_descr(&descr).ok_or_else(|| IoError::UnsupportedDatatype {
        path: path.to_path_buf(),
        code: 0,
        name: format!("npy dtype {descr:?}"),
    })?;
    let data = &bytes[end..];
    let needed = checked_product(&shape)
        .and_then(|n| n.checked_mul(dtype.size()))
        .ok_or_else(|| err(format!("shape {shape:?} overflows")))?;
    if data.len() != needed {
        return Err(IoError::DataSize {
            path: path.to_path_buf(),
            shape,
            dtype: dtype.name().to_string(),
            expected: needed as u64,
            found: data.len() as u64,
        });
    }
    Ok(NpyLayout {
        dtype,
        little_endian: little,
        fortran,
        shape,
        data_start: end,
    })
}

/// Maps a numpy `descr` to a type and byte order (true = little-endian).
fn parse_descr(descr: &str) -> Option<(DataType, bool)> {
    let mut chars = descr.chars();
    let order = chars.next()?;
    let code = chars.as_str();
    let dtype = match code {
        "b1" => DataType::Bool,
        "u1" => DataType::U8,
        "i1" => DataType::I8,
        "u2" => DataType::U16,
        "i2" => DataType::I16,
        "u4" => DataType::U32,
        "i4" => DataType::I32,
        "u8" => DataType::U64,
        "i8" => DataType::I64,
        "f4" => DataType::F32,
        "f8" => DataType::F64,
        _ => return None,
    };
    let little = match order {
        '<' | '|' => true,
        '=' => cfg!(target_endian = "little"),
        '>' => false,
        _ => return None,
    };
    if order == '|' && dtype.size() != 1 {
        return None;
    }
    Some((dtype, little))
}

/// The `descr` written for a type.
fn descr_of(dtype: DataType) -> &'static str {
    match dtype {
        DataType::Bool => "|b1",
        DataType::U8 => "|u1",
        DataType::I8 => "|i1",
        DataType::U16 => "<u2",
        DataType::I16 => "<i2",
        DataType::U32 => "<u4",
        DataType::I32 => "<i4",
        DataType::U64 => "<u8",
        DataType::I64 => "<i8",
        DataType::F32 => "<f4",
        DataType::F64 => "<f8",
    }
}

#[derive(Default)]
struct HeaderDict {
    descr: Option<String>,
    fortran_order: Option<bool>,
    shape: Option<Vec<usize>>,
}

/// Parses the Python dict literal of an npy header (the subset numpy writes:
/// string keys; string, boolean and tuple-of-int values).
fn parse_header(text: &str) -> std::result::Result<HeaderDict, String> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    let mut dict = HeaderDict::default();
    p.ws();
    p.expect(b'{')?;
    loop {
        p.ws();
        if p.eat(b'}') {
            break;
        }
        let key = p.string()?;
        p.ws();
        p.expect(b':')?;
        p.ws();
        match key.as_str() {
            "descr" => dict.descr = Some(p.string()?),
            "fortran_order" => dict.fortran_order = Some(p.boolean()?),
            "shape" => dict.shape = Some(p.tuple()?),
            other => return Err(format!("unexpected key {other:?}")),
        }
        p.ws();
        if p.eat(b',') {
            continue;
        }
        p.ws();
        p.expect(b'}')?;
        break;
    }
    p.ws();
    if p.i != p.s.len() {
        return Err("trailing characters after the dict".into());
    }
    Ok(dict)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\t' | b'\r')) {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, c: u8) -> std::result::Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("expected {:?} at byte {}", c as char, self.i))
        }
    }
    fn string(&mut self) -> std::result::Result<String, String> {
        let quote = match self.peek() {
            Some(q @ (b'\'' | b'"')) => q,
            _ => return Err(format!("expected a string at byte {}", self.i)),
        };
        self.i += 1;
        let start = self.i;
        while let Some(c) = self.peek() {
            if c == quote {
                let s = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                self.i += 1;
                return Ok(s);
            }
            self.i += 1;
        }
        Err("unterminated string".into())
    }
    fn boolean(&mut self) -> std::result::Result<bool, String> {
        if self.s[self.i..].starts_with(b"True") {
            self.i += 4;
            Ok(true)
        } else if self.s[self.i..].starts_with(b"False") {
            self.i += 5;
            Ok(false)
        } else {
            Err(format!("expected True or False at byte {}", self.i))
        }
    }
    fn tuple(&mut self) -> std::result::Result<Vec<usize>, String> {
        self.expect(b'(')?;
        let mut out = Vec::new();
        loop {
            self.ws();
            if self.eat(b')') {
                return Ok(out);
            }
            let start = self.i;
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.i += 1;
            }
            let digits = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
            // numpy may write Python 2 longs: "3L".
            if self.peek() == Some(b'L') {
                self.i += 1;
            }
            let n: usize = digits
                .parse()
                .map_err(|_| format!("expected a dimension at byte {start}"))?;
            out.push(n);
            self.ws();
            if !self.eat(b',') {
                self.ws();
                self.expect(b')')?;
                return Ok(out);
            }
        }
    }
}

/// Encodes an array as `.npy` bytes (C order, little-endian).
pub fn encode_npy<T: Element, S: Data<Elem = T>, D: Dimension>(a: &ArrayBase<S, D>) -> Vec<u8> {
    let shape = match a.shape() {
        [] => "()".to_string(),
        [n] => format!("({n},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let dict = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}",
        descr_of(T::DTYPE)
    );
    // Pad so that magic + version + length + header is a multiple of 64, ending in '\n'.
    let build = |len_bytes: usize| {
        let unpadded = MAGIC.len() + 2 + len_bytes + dict.len() + 1;
        let pad = (64 - unpadded % 64) % 64;
        let mut h = dict.clone();
        h.extend(std::iter::repeat_n(' ', pad));
        h.push('\n');
        h
    };
    let header = build(2);
    let mut out = Vec::with_capacity(header.len() + 12 + a.len() * T::DTYPE.size());
    out.extend_from_slice(MAGIC);
    if let Ok(n) = u16::try_from(header.len()) {
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(header.as_bytes());
    } else {
        let header = build(4);
        out.extend_from_slice(&[2, 0]);
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
    }
    out.extend_from_slice(&to_le_bytes_c(a));
    out
}

/// Writes an array as `.npy` (C order, little-endian), atomically.
///
/// ```
/// use ndarray::{ArrayD, IxDyn};
/// let dir = std::env::temp_dir().join(format!("calseg-doc-npy-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let path = dir.join("probs.npy");
/// let a = ArrayD::from_shape_fn(IxDyn(&[2, 3, 4]), |i| (i[0] * 12 + i[1] * 4 + i[2]) as f32);
/// calseg_io::write_npy(&path, &a)?;
/// match calseg_io::read_npy(&path)? {
///     calseg_io::TypedArray::F32(b) => assert_eq!(a, b),
///     other => panic!("unexpected type {}", other.dtype()),
/// }
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn write_npy<T: Element, S: Data<Elem = T>, D: Dimension>(
    path: impl AsRef<Path>,
    a: &ArrayBase<S, D>,
) -> Result<()> {
    write_atomic(path.as_ref(), &encode_npy(a))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{ArrayD, IxDyn};

    #[test]
    fn header_is_aligned_and_parsable() {
        for shape in [vec![], vec![5], vec![2, 3], vec![1, 2, 3, 4]] {
            let a = ArrayD::<f64>::zeros(IxDyn(&shape));
            let b = encode_npy(&a);
            let hl = u16::from_le_bytes([b[8], b[9]]) as usize;
            assert_eq!((10 + hl) % 64, 0);
            assert_eq!(b[10 + hl - 1], b'\n');
            let back = npy_from_bytes(&b, Path::new("t.npy")).unwrap();
            assert_eq!(back.shape(), &shape[..]);
        }
    }

    #[test]
    fn parses_python2_and_odd_spacing() {
        let d = parse_header("{'descr':'>i2','fortran_order':True,'shape':(3L, 4L)}").unwrap();
        assert_eq!(d.descr.as_deref(), Some(">i2"));
        assert_eq!(d.fortran_order, Some(true));
        assert_eq!(d.shape, Some(vec![3, 4]));
    }

    #[test]
    fn rejects_object_arrays() {
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        let h = "{'descr': '|O', 'fortran_order': False, 'shape': (2,), }\n";
        b.extend_from_slice(&(h.len() as u16).to_le_bytes());
        b.extend_from_slice(h.as_bytes());
        b.extend_from_slice(&[0; 16]);
        let e = npy_from_bytes(&b, Path::new("obj.npy")).unwrap_err();
        assert!(matches!(e, IoError::UnsupportedDatatype { .. }), "{e}");
        assert!(e.to_string().contains("obj.npy"));
    }
}
