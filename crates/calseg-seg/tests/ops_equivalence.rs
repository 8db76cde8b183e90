//! The fast ops compute the same values as candle's reference ops (2D), or as a direct
//! loop / the depth-sliced stock composition (3D).

use calseg_seg::init::randn;
use calseg_seg::ops::{self, stock};
use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// max |a − b| / max |b| over all elements.
fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let a: Vec<f64> = a
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap();
    let b: Vec<f64> = b
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap();
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    a.iter()
        .zip(&b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

fn rnd(rng: &mut StdRng, shape: &[usize]) -> Tensor {
    randn(rng, shape, DType::F32, &Device::Cpu).unwrap()
}

#[test]
fn conv2d_forward_matches_candle() {
    let mut rng = StdRng::seed_from_u64(1);
    // (n, ci, co, h, w, k, stride, padding)
    let cases = [
        (1, 1, 1, 5, 5, 3, 1, 1),
        (2, 3, 4, 7, 9, 3, 1, 1),
        (1, 2, 5, 13, 6, 3, 2, 1),
        (3, 4, 2, 8, 8, 3, 1, 0),
        (2, 5, 3, 9, 11, 2, 2, 0),
        (1, 6, 7, 5, 4, 1, 1, 0),
        (2, 3, 3, 10, 7, 1, 2, 0),
        (1, 2, 2, 6, 6, 2, 1, 1),
        (2, 16, 32, 12, 12, 3, 1, 1),
        (1, 40, 8, 17, 19, 3, 2, 1),
    ];
    for (n, ci, co, h, w, k, s, p) in cases {
        let x = rnd(&mut rng, &[n, ci, h, w]);
        let wt = rnd(&mut rng, &[co, ci, k, k]);
        let b = rnd(&mut rng, &[co]);
        let fast = ops::conv(&x, &wt, Some(&b), s, p).unwrap();
        let reference = stock::conv(&x, &wt, Some(&b), s, p).unwrap();
        let e = rel_err(&fast, &reference);
        assert!(
            e < 1e-5,
            "case {:?}: rel err {e}",
            (n, ci, co, h, w, k, s, p)
        );
        let fast_nb = ops::conv(&x, &wt, None, s, p).unwrap();
        let ref_nb = x.conv2d(&wt, p, s, 1, 1).unwrap();
        assert!(rel_err(&fast_nb, &ref_nb) < 1e-5);
    }
}

#[test]
fn conv2d_accepts_non_contiguous_inputs() {
    let mut rng = StdRng::seed_from_u64(2);
    let x = rnd(&mut rng, &[2, 3, 6, 5]).transpose(2, 3).unwrap(); // (2, 3, 5, 6), strided
    let w = rnd(&mut rng, &[4, 3, 3, 3]);
    let fast = ops::conv(&x, &w, None, 1, 1).unwrap();
    let reference = x.contiguous().unwrap().conv2d(&w, 1, 1, 1, 1).unwrap();
    assert!(rel_err(&fast, &reference) < 1e-5);
}

/// Direct 3D convolution loop (f64) as the reference for 3D.
#[allow(clippy::too_many_arguments)]
fn conv3d_loop(x: &Tensor, w: &Tensor, b: &Tensor, s: usize, p: usize) -> Tensor {
    let (n, ci, d, h, wd) = x.dims5().unwrap();
    let (co, _, k, _, _) = w.dims5().unwrap();
    let xv: Vec<f64> = x
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap();
    let wv: Vec<f64> = w
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap();
    let bv: Vec<f64> = b.to_dtype(DType::F64).unwrap().to_vec1().unwrap();
    let o = |i: usize| (i + 2 * p - k) / s + 1;
    let (od, oh, ow) = (o(d), o(h), o(wd));
    let mut out = vec![0.0; n * co * od * oh * ow];
    let at = |v: usize, t: usize, len: usize| -> Option<usize> {
        let q = (v * s + t) as isize - p as isize;
        (q >= 0 && (q as usize) < len).then_some(q as usize)
    };
    for nn in 0..n {
        for c in 0..co {
            for z in 0..od {
                for y in 0..oh {
                    for xx in 0..ow {
                        let mut acc = bv[c];
                        for i in 0..ci {
                            for a in 0..k {
                                for bb in 0..k {
                                    for e in 0..k {
                                        if let (Some(iz), Some(iy), Some(ix)) =
                                            (at(z, a, d), at(y, bb, h), at(xx, e, wd))
                                        {
                                            acc += xv
                                                [(((nn * ci + i) * d + iz) * h + iy) * wd + ix]
                                                * wv[(((c * ci + i) * k + a) * k + bb) * k + e];
                                        }
                                    }
                                }
                            }
                        }
                        out[(((nn * co + c) * od + z) * oh + y) * ow + xx] = acc;
                    }
                }
            }
        }
    }
    Tensor::from_vec(out, (n, co, od, oh, ow), &Device::Cpu).unwrap()
}

#[test]
fn conv3d_forward_matches_loop_and_stock() {
    let mut rng = StdRng::seed_from_u64(3);
    let cases = [
        (1, 1, 1, 3, 4, 5, 3, 1, 1),
        (2, 3, 2, 5, 4, 6, 3, 2, 1),
        (1, 2, 3, 4, 4, 4, 2, 2, 0),
        (2, 4, 3, 3, 5, 2, 1, 1, 0),
        (1, 3, 2, 6, 5, 7, 3, 1, 0),
    ];
    for (n, ci, co, d, h, w, k, s, p) in cases {
        let x = rnd(&mut rng, &[n, ci, d, h, w]);
        let wt = rnd(&mut rng, &[co, ci, k, k, k]);
        let b = rnd(&mut rng, &[co]);
        let fast = ops::conv(&x, &wt, Some(&b), s, p).unwrap();
        let e = rel_err(&fast, &conv3d_loop(&x, &wt, &b, s, p));
        assert!(
            e < 1e-5,
            "loop, case {:?}: {e}",
            (n, ci, co, d, h, w, k, s, p)
        );
        let e = rel_err(&fast, &stock::conv(&x, &wt, Some(&b), s, p).unwrap());
        assert!(
            e < 1e-5,
            "stock, case {:?}: {e}",
            (n, ci, co, d, h, w, k, s, p)
        );
    }
}

#[test]
fn conv_transpose2d_matches_candle() {
    let mut rng = StdRng::seed_from_u64(4);
    // (n, ci, co, h, w, k, stride, padding)
    let cases = [
        (1, 1, 1, 3, 3, 2, 2, 0),
        (2, 8, 4, 5, 7, 2, 2, 0),
        (1, 3, 5, 4, 6, 3, 2, 1),
        (2, 4, 3, 5, 5, 3, 1, 1),
        (1, 2, 2, 3, 4, 3, 1, 0),
    ];
    for (n, ci, co, h, w, k, s, p) in cases {
        let x = rnd(&mut rng, &[n, ci, h, w]);
        let wt = rnd(&mut rng, &[ci, co, k, k]);
        let b = rnd(&mut rng, &[co]);
        let fast = ops::conv_transpose(&x, &wt, Some(&b), s, p).unwrap();
        let reference = x
            .conv_transpose2d(&wt, p, 0, s, 1)
            .unwrap()
            .broadcast_add(&b.reshape((1, co, 1, 1)).unwrap())
            .unwrap();
        let e = rel_err(&fast, &reference);
        assert!(e < 1e-5, "case {:?}: {e}", (n, ci, co, h, w, k, s, p));
    }
}

#[test]
fn conv_transpose3d_matches_stock_and_adjoint_loop() {
    let mut rng = StdRng::seed_from_u64(5);
    for (n, ci, co, d, h, w, k, s, p) in [(2, 4, 3, 2, 3, 4, 2, 2, 0), (1, 2, 3, 3, 3, 2, 3, 2, 1)]
    {
        let x = rnd(&mut rng, &[n, ci, d, h, w]);
        let wt = rnd(&mut rng, &[ci, co, k, k, k]);
        let b = rnd(&mut rng, &[co]);
        let fast = ops::conv_transpose(&x, &wt, Some(&b), s, p).unwrap();
        let e = rel_err(
            &fast,
            &stock::conv_transpose(&x, &wt, Some(&b), s, p).unwrap(),
        );
        assert!(e < 1e-5, "{e}");
        // Adjoint identity against the direct conv loop: <convT(x), y> = <x, conv(y)>.
        let y = rnd(&mut rng, fast.dims());
        let no_bias = ops::conv_transpose(&x, &wt, None, s, p).unwrap();
        let lhs = (no_bias.to_dtype(DType::F64).unwrap() * y.to_dtype(DType::F64).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let zero = Tensor::zeros(ci, DType::F32, &Device::Cpu).unwrap();
        let cy = conv3d_loop(&y, &wt, &zero, s, p);
        assert_eq!(cy.dims(), x.dims());
        let rhs = (cy * x.to_dtype(DType::F64).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let (l, r) = (
            lhs.to_scalar::<f64>().unwrap(),
            rhs.to_scalar::<f64>().unwrap(),
        );
        assert!((l - r).abs() < 1e-4 * l.abs().max(1.0), "{l} vs {r}");
    }
}

#[test]
fn group_norm_pool_and_loss_match_stock() {
    let mut rng = StdRng::seed_from_u64(6);
    for shape in [vec![2, 8, 5, 7], vec![1, 6, 3, 4, 5], vec![3, 4, 1, 1]] {
        let c = shape[1];
        let x = ((rnd(&mut rng, &shape) * 3.0).unwrap() + 1.5).unwrap();
        let g = rnd(&mut rng, &[c]);
        let b = rnd(&mut rng, &[c]);
        for (groups, relu) in [(2, true), (c, false), (1, true)] {
            let fast = ops::group_norm(&x, &g, &b, groups, 1e-5, relu).unwrap();
            let reference = stock::group_norm(&x, &g, &b, groups, 1e-5, relu).unwrap();
            assert!(
                rel_err(&fast, &reference) < 1e-5,
                "{shape:?} {groups} {relu}"
            );
        }
    }
    for shape in [vec![2, 3, 8, 6], vec![1, 2, 7, 5], vec![2, 3, 4, 6, 5]] {
        let x = rnd(&mut rng, &shape);
        let e = rel_err(
            &ops::avg_pool(&x, 2).unwrap(),
            &stock::avg_pool(&x, 2).unwrap(),
        );
        assert!(e < 1e-6, "{shape:?}");
    }
    for shape in [vec![2, 3, 5, 4], vec![1, 2, 3, 3, 3], vec![4, 5, 1]] {
        let l = (rnd(&mut rng, &shape) * 4.0).unwrap();
        let t = candle_nn::ops::softmax(&rnd(&mut rng, &shape), 1).unwrap();
        let fast = calseg_seg::loss::soft_ce(&l, &t).unwrap();
        let reference = calseg_seg::loss::soft_ce_stock(&l, &t).unwrap();
        assert!(rel_err(&fast, &reference) < 1e-6, "{shape:?}");
    }
}
