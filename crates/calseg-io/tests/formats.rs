//! Round trips of the npy, safetensors and PNG codecs, and `read_image` on each format.

use calseg_io::{
    DataType, Format, NamedTensor, TypedArray, read_image, read_images, read_labels, read_npy,
    read_png, read_probs, read_safetensors, to_grey8, write_npy, write_png, write_safetensors,
};
use ndarray::{Array2, ArrayD, IxDyn, ShapeBuilder};
use std::path::PathBuf;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("calseg-io-fmt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn npy_every_type_and_layout() {
    let d = scratch("npy");
    macro_rules! rt {
        ($t:ty, $f:expr) => {{
            let a = ArrayD::from_shape_fn(IxDyn(&[2, 3, 4]), |i| $f(i[0] * 12 + i[1] * 4 + i[2]));
            let p = d.join(format!("{}.npy", stringify!($t)));
            write_npy(&p, &a).unwrap();
            let back = read_npy(&p).unwrap();
            assert_eq!(back.dtype(), <$t as calseg_io::Element>::DTYPE);
            assert_eq!(back, TypedArray::from(a.clone()));
            // A transposed (non-standard layout) view is written in its logical order.
            let t = a.t();
            write_npy(&p, &t).unwrap();
            assert_eq!(read_npy(&p).unwrap(), TypedArray::from(t.to_owned()));
        }};
    }
    rt!(f32, |n: usize| n as f32 * 0.5 - 3.0);
    rt!(f64, |n: usize| n as f64 / 3.0);
    rt!(u8, |n: usize| n as u8);
    rt!(i8, |n: usize| n as i8 - 12);
    rt!(u16, |n: usize| n as u16 * 1000);
    rt!(i16, |n: usize| n as i16 - 12);
    rt!(u32, |n: usize| n as u32 * 100_000);
    rt!(i32, |n: usize| n as i32 - 12);
    rt!(u64, |n: usize| n as u64 * (1 << 40));
    rt!(i64, |n: usize| n as i64 - (1 << 40));
    rt!(bool, |n: usize| n.is_multiple_of(3));
    // Fortran-ordered source array in memory: written C order, same values.
    let f = Array2::from_shape_vec((3, 2).f(), vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
    write_npy(d.join("f.npy"), &f).unwrap();
    assert_eq!(
        read_npy(d.join("f.npy")).unwrap(),
        TypedArray::F32(f.into_dyn())
    );
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn npy_versions_and_0d() {
    let d = scratch("npy2");
    // Our writer uses version 1.0 for ordinary headers.
    let a = ArrayD::from_shape_fn(IxDyn(&[1, 2, 1, 2, 1, 2, 1, 2]), |i| {
        (i[0] + 2 * i[1] + 3 * i[3] + 5 * i[7]) as u8
    });
    write_npy(d.join("a.npy"), &a).unwrap();
    let bytes = std::fs::read(d.join("a.npy")).unwrap();
    assert_eq!((bytes[6], bytes[7]), (1, 0));
    assert_eq!(
        read_npy(d.join("a.npy")).unwrap(),
        TypedArray::U8(a.clone())
    );
    // Versions 2.0 and 3.0 have a 4-byte header length: rebuild the same file that way.
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = &bytes[10..10 + hlen];
    for major in [2u8, 3] {
        let mut v = b"\x93NUMPY".to_vec();
        v.extend_from_slice(&[major, 0]);
        v.extend_from_slice(&(hlen as u32).to_le_bytes());
        v.extend_from_slice(header);
        v.extend_from_slice(&bytes[10 + hlen..]);
        let p = d.join(format!("v{major}.npy"));
        std::fs::write(&p, v).unwrap();
        assert_eq!(
            read_npy(&p).unwrap(),
            TypedArray::U8(a.clone()),
            "version {major}"
        );
    }
    let s = ndarray::arr0(2.5f64).into_dyn();
    write_npy(d.join("s.npy"), &s).unwrap();
    assert_eq!(read_npy(d.join("s.npy")).unwrap(), TypedArray::F64(s));
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn safetensors_round_trip_and_read_image() {
    let d = scratch("st");
    let soft = ArrayD::from_shape_fn(IxDyn(&[3, 4, 5]), |i| (i[0] + i[1] * i[2]) as f32 / 20.0);
    let labels = ArrayD::from_shape_fn(IxDyn(&[4, 5]), |i| ((i[0] + i[1]) % 3) as u8);
    let p = d.join("t.safetensors");
    write_safetensors(
        &p,
        &[
            NamedTensor::new("soft_labels", &soft),
            NamedTensor::new("labels", &labels),
            NamedTensor::new("probs", &soft.mapv(f64::from)),
        ],
    )
    .unwrap();
    let t = read_safetensors(&p).unwrap();
    assert_eq!(t.len(), 3);
    let get = |n: &str| t.iter().find(|(name, _)| name == n).unwrap().1.clone();
    assert_eq!(get("soft_labels"), TypedArray::F32(soft.clone()));
    assert_eq!(get("labels"), TypedArray::U8(labels.clone()));
    let probs = read_probs(&p).unwrap();
    assert_eq!(probs.probs.dtype(), DataType::F64);
    assert_eq!(probs.probs.into_f32(), soft);
    assert_eq!(read_labels(&p).unwrap().labels, labels.mapv(u32::from));
    let imgs = read_images(&p).unwrap();
    assert_eq!(imgs.len(), 3);
    assert!(
        imgs.iter()
            .all(|i| i.format == Format::Safetensors && i.name.is_some())
    );
    assert!(read_image(&p).is_err(), "three tensors are not one image");
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn png_grey_8_and_16_bit() {
    let d = scratch("png");
    let a8 = Array2::from_shape_fn((5, 7), |(r, c)| (r * 40 + c) as u8);
    let a16 = Array2::from_shape_fn((3, 2), |(r, c)| (r * 20000 + c * 300) as u16);
    write_png(d.join("a8.png"), &a8).unwrap();
    write_png(d.join("a16.png"), &a16).unwrap();
    assert_eq!(
        read_png(d.join("a8.png")).unwrap(),
        TypedArray::U8(a8.clone().into_dyn())
    );
    assert_eq!(
        read_png(d.join("a16.png")).unwrap(),
        TypedArray::U16(a16.clone().into_dyn())
    );
    let img = read_image(d.join("a16.png")).unwrap();
    assert_eq!(img.geometry.spacing, vec![1.0, 1.0]);
    assert_eq!(img.value_range(), Some((0.0, 40300.0)));
    // Label map as PNG, read back as labels.
    assert_eq!(
        read_labels(d.join("a8.png")).unwrap().labels,
        a8.mapv(u32::from).into_dyn()
    );
    // Quick-look scaling.
    let f = Array2::from_shape_fn((2, 3), |(r, c)| (r * 3 + c) as f32);
    let g = to_grey8(f.view(), None);
    assert_eq!(g[[0, 0]], 0);
    assert_eq!(g[[1, 2]], 255);
    assert_eq!(to_grey8(f.view(), Some((0.0, 2.0)))[[1, 0]], 255);
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn png_palette_low_depth_and_rgb() {
    // Hand-built PNGs through the png encoder: palette (label) images, 4-bit grey, RGB.
    let d = scratch("png2");
    let encode = |w: u32,
                  h: u32,
                  color: png::ColorType,
                  depth: png::BitDepth,
                  pal: Option<Vec<u8>>,
                  data: &[u8]| {
        let mut out = Vec::new();
        {
            let mut e = png::Encoder::new(&mut out, w, h);
            e.set_color(color);
            e.set_depth(depth);
            if let Some(p) = pal {
                e.set_palette(p);
            }
            let mut wr = e.write_header().unwrap();
            wr.write_image_data(data).unwrap();
            wr.finish().unwrap();
        }
        out
    };
    // 3×2 palette image, indices 0..5.
    let pal = encode(
        3,
        2,
        png::ColorType::Indexed,
        png::BitDepth::Eight,
        Some(vec![0; 18]),
        &[0, 1, 2, 3, 4, 5],
    );
    std::fs::write(d.join("pal.png"), pal).unwrap();
    let want = Array2::from_shape_vec((2, 3), vec![0u8, 1, 2, 3, 4, 5])
        .unwrap()
        .into_dyn();
    assert_eq!(read_png(d.join("pal.png")).unwrap(), TypedArray::U8(want));
    // 4-bit grey, 3×1: nibbles 0x1, 0x2, 0xF (row padded to 2 bytes).
    let g4 = encode(
        3,
        1,
        png::ColorType::Grayscale,
        png::BitDepth::Four,
        None,
        &[0x12, 0xF0],
    );
    std::fs::write(d.join("g4.png"), g4).unwrap();
    assert_eq!(
        read_png(d.join("g4.png")).unwrap(),
        TypedArray::U8(ndarray::arr2(&[[1u8, 2, 15]]).into_dyn())
    );
    // Grey saved as RGB is accepted; real colour is not.
    let grey_rgb = encode(
        2,
        1,
        png::ColorType::Rgb,
        png::BitDepth::Eight,
        None,
        &[9, 9, 9, 200, 200, 200],
    );
    std::fs::write(d.join("greyrgb.png"), grey_rgb).unwrap();
    assert_eq!(
        read_png(d.join("greyrgb.png")).unwrap(),
        TypedArray::U8(ndarray::arr2(&[[9u8, 200]]).into_dyn())
    );
    let colour = encode(
        2,
        1,
        png::ColorType::Rgb,
        png::BitDepth::Eight,
        None,
        &[9, 9, 9, 200, 0, 200],
    );
    std::fs::write(d.join("colour.png"), colour).unwrap();
    let e = read_png(d.join("colour.png")).unwrap_err();
    assert!(
        e.to_string().contains("colour.png") && e.to_string().contains("column 1"),
        "{e}"
    );
    std::fs::remove_dir_all(d).unwrap();
}
