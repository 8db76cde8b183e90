//! Behaviour of every calibration loss on hand-computed values (2D and 3D), their
//! gradients (backward works; finite differences in f64) and the method configuration.

use calseg_seg::SegError;
use calseg_seg::init::randn;
use calseg_seg::loss::{
    CrossEntropy, Focal, LabelSmoothing, LossConfig, Mbls, Method, Nacl, NaclNorm, NaclWindow,
    SegLoss, SoftDice, SoftTargetCe, Svls, nacl_proportions, soft_ce, soft_ce_stock, svls_smooth,
    svls_weights,
};
use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;
use rand::rngs::StdRng;

type R<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

fn dev() -> Device {
    Device::Cpu
}

/// `(n, k, *spatial)` tensor of f64 values.
fn t64(v: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape, &dev()).unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// One-hot `(n, k, *spatial)` of labels given per image in row-major spatial order.
fn one_hot(labels: &[usize], n: usize, k: usize, spatial: &[usize]) -> Tensor {
    let s: usize = spatial.iter().product();
    let mut v = vec![0.0f64; n * k * s];
    for i in 0..n {
        for j in 0..s {
            v[i * k * s + labels[i * s + j] * s + j] = 1.0;
        }
    }
    let mut shape = vec![n, k];
    shape.extend_from_slice(spatial);
    t64(&v, &shape)
}

fn close(a: f64, b: f64, tol: f64) {
    assert!((a - b).abs() <= tol, "{a} vs {b} (tol {tol})");
}

#[test]
fn ce_and_soft_are_soft_ce() -> R {
    // 2 voxels (1×2 image): logits (ln 3, 0) label 0, logits (0, 0) label 1.
    let l = t64(&[3f64.ln(), 0.0, 0.0, 0.0], &[1, 2, 1, 2]);
    let y = one_hot(&[0, 1], 1, 2, &[1, 2]);
    let want = 0.5 * (-(0.75f64.ln()) + 2f64.ln());
    close(scalar(&CrossEntropy.forward(&l, &y)?), want, 1e-12);
    // Soft target (0.5, 0.5) on the first voxel: −½ ln ¾ − ½ ln ¼.
    let t = t64(&[0.5, 0.0, 0.5, 1.0], &[1, 2, 1, 2]);
    let want = 0.5 * (-0.5 * 0.75f64.ln() - 0.5 * 0.25f64.ln() + 2f64.ln());
    close(scalar(&SoftTargetCe.forward(&l, &t)?), want, 1e-12);
    Ok(())
}

#[test]
fn label_smoothing_k2_hand_value_2d_and_3d() -> R {
    // K = 2, ε = 0.1: y_ls = (0.95, 0.05) for label 0, (0.05, 0.95) for label 1.
    let l = t64(&[3f64.ln(), 0.0, 0.0, 0.0], &[1, 2, 2, 1]);
    let y = one_hot(&[0, 1], 1, 2, &[2, 1]);
    let ls = LabelSmoothing { eps: 0.1 };
    let v1 = -(0.95 * 0.75f64.ln() + 0.05 * 0.25f64.ln());
    let v2 = 2f64.ln(); // equal logits
    close(scalar(&ls.forward(&l, &y)?), 0.5 * (v1 + v2), 1e-12);
    for (a, b) in flat(&ls.smooth(&y)?)
        .into_iter()
        .zip([0.95, 0.05, 0.05, 0.95])
    {
        close(a, b, 1e-15);
    }
    // The same voxels as a 3D (1, 2, 1, 1, 2) volume give the same loss.
    let l3 = l.reshape((1, 2, 1, 1, 2))?;
    let y3 = y.reshape((1, 2, 1, 1, 2))?;
    close(scalar(&ls.forward(&l3, &y3)?), 0.5 * (v1 + v2), 1e-12);
    // ε = 0 is CE.
    let ce = scalar(&CrossEntropy.forward(&l, &y)?);
    close(
        scalar(&LabelSmoothing { eps: 0.0 }.forward(&l, &y)?),
        ce,
        1e-15,
    );
    Ok(())
}

#[test]
fn focal_hand_values_and_gamma_zero_is_ce() -> R {
    let l = t64(&[3f64.ln(), 0.0], &[1, 2, 1]);
    let y = t64(&[1.0, 0.0], &[1, 2, 1]);
    let want = -(0.25f64.powi(3)) * 0.75f64.ln();
    close(scalar(&Focal::default().forward(&l, &y)?), want, 1e-14);
    // Non-integer γ goes through powf.
    let want = -(0.25f64.powf(1.5)) * 0.75f64.ln();
    close(scalar(&Focal { gamma: 1.5 }.forward(&l, &y)?), want, 1e-14);
    // Soft target (½, ½): ½·(¼)³·(−ln ¾) + ½·(¾)³·(−ln ¼).
    let t = t64(&[0.5, 0.5], &[1, 2, 1]);
    let want = 0.5 * 0.25f64.powi(3) * -(0.75f64.ln()) + 0.5 * 0.75f64.powi(3) * -(0.25f64.ln());
    close(scalar(&Focal { gamma: 3.0 }.forward(&l, &t)?), want, 1e-14);
    // γ = 0: CE, on random 2D and 3D logits.
    let mut rng = StdRng::seed_from_u64(3);
    for shape in [[2usize, 3, 4, 5].as_slice(), &[1, 3, 2, 3, 4]] {
        let l = randn(&mut rng, shape, DType::F64, &dev())?;
        let y = candle_nn::ops::softmax(&randn(&mut rng, shape, DType::F64, &dev())?, 1)?;
        let f = scalar(&Focal { gamma: 0.0 }.forward(&l, &y)?);
        close(f, scalar(&soft_ce(&l, &y)?), 1e-12);
        // γ > 0 only shrinks every term.
        assert!(scalar(&Focal::default().forward(&l, &y)?) < f);
    }
    Ok(())
}

#[test]
fn svls_weights_interior_2d_and_3d() {
    let (e1, e2, e3) = ((-0.5f64).exp(), (-1.0f64).exp(), (-1.5f64).exp());
    let s2 = 4.0 * e1 + 4.0 * e2;
    let w = svls_weights(3, 1.0, 2);
    assert_eq!(w.len(), 9);
    let want = [e2, e1, e2, e1, 0.0, e1, e2, e1, e2].map(|g| 0.5 * g / s2);
    for (i, (a, b)) in w.iter().zip(want).enumerate() {
        close(*a, if i == 4 { 0.5 } else { b }, 1e-15);
    }
    close(w.iter().sum(), 1.0, 1e-15);
    let s3 = 6.0 * e1 + 12.0 * e2 + 8.0 * e3;
    let w3 = svls_weights(3, 1.0, 3);
    close(w3[13], 0.5, 1e-15);
    close(w3[4], 0.5 * e1 / s3, 1e-15); // face neighbour (0, 1, 1)
    close(w3[1], 0.5 * e2 / s3, 1e-15); // edge neighbour (0, 0, 1)
    close(w3[0], 0.5 * e3 / s3, 1e-15); // corner
}

#[test]
fn svls_smoothing_corner_replicate_and_interior() -> R {
    // 3×3 image, K = 2, class 1 only at the corner (0, 0).
    let mut lab = vec![0usize; 9];
    lab[0] = 1;
    let y = one_hot(&lab, 1, 2, &[3, 3]);
    let ys = flat(&svls_smooth(&y, 3, 1.0)?);
    let (e1, e2) = ((-0.5f64).exp(), (-1.0f64).exp());
    let s = 4.0 * e1 + 4.0 * e2;
    let c1 = &ys[9..];
    // Corner: itself (½) plus the replicated copies at offsets (−1,−1), (−1,0), (0,−1).
    close(c1[0], 0.5 + 0.5 * (e2 + 2.0 * e1) / s, 1e-14);
    // (0, 1): offsets (−1,−1) and (0,−1) clamp onto (0, 0).
    close(c1[1], 0.5 * (e2 + e1) / s, 1e-14);
    // Interior (1, 1): (0, 0) is a diagonal neighbour.
    close(c1[4], 0.5 * e2 / s, 1e-14);
    close(c1[8], 0.0, 1e-15);
    // Still a distribution per voxel.
    for v in 0..9 {
        close(ys[v] + ys[9 + v], 1.0, 1e-14);
    }
    // The loss is the soft CE against that target.
    let mut rng = StdRng::seed_from_u64(5);
    let l = randn(&mut rng, &[1, 2, 3, 3], DType::F64, &dev())?;
    let want = scalar(&soft_ce_stock(&l, &t64(&ys, &[1, 2, 3, 3]))?);
    close(scalar(&Svls::default().forward(&l, &y)?), want, 1e-12);
    Ok(())
}

#[test]
fn svls_smoothing_3d_centre_voxel() -> R {
    let mut lab = vec![0usize; 27];
    lab[13] = 1;
    let y = one_hot(&lab, 1, 2, &[3, 3, 3]);
    let ys = flat(&svls_smooth(&y.to_dtype(DType::F32)?, 3, 1.0)?);
    let w = svls_weights(3, 1.0, 3);
    for v in 0..27 {
        // Class 1 is at the centre only, so y_svls(v) = w(centre − v) = w(v) (symmetric).
        close(ys[27 + v], w[v], 1e-6);
        close(ys[v] + ys[27 + v], 1.0, 1e-6);
    }
    Ok(())
}

#[test]
fn mbls_penalty_zero_below_margin_and_hand_value() -> R {
    let mb = Mbls::default();
    assert_eq!((mb.margin, mb.lambda), (5.0, 0.1));
    // 2 voxels of a (1, 3, 1, 2) image, all gaps ≤ 2 < 10: MbLS = CE.
    let l = t64(&[1.0, 0.0, 0.0, 2.0, -1.0, 0.5], &[1, 3, 1, 2]);
    let y = one_hot(&[0, 1], 1, 3, &[1, 2]);
    close(scalar(&mb.penalty(&l)?), 0.0, 0.0);
    close(
        scalar(&mb.forward(&l, &y)?),
        scalar(&soft_ce(&l, &y)?),
        1e-15,
    );
    // m = 10 (classification setting). Voxel 0 logits (12, 0, 1): gaps 0, 12, 11 →
    // ReLU(gap − 10) = 0, 2, 1;
    // voxel 1 logits (0, 0, 0): 0. Mean over 6 entries = 0.5.
    let mb = Mbls {
        margin: 10.0,
        lambda: 0.1,
    };
    let l = t64(&[12.0, 0.0, 0.0, 0.0, 1.0, 0.0], &[1, 3, 1, 2]);
    close(scalar(&mb.penalty(&l)?), 0.5, 1e-15);
    let want = scalar(&soft_ce(&l, &y)?) + 0.1 * 0.5;
    close(scalar(&mb.forward(&l, &y)?), want, 1e-12);
    // m = 5 (segmentation setting): (7 + 6) / 6.
    let m5 = Mbls {
        margin: 5.0,
        lambda: 1.0,
    };
    close(scalar(&m5.penalty(&l)?), 13.0 / 6.0, 1e-14);
    Ok(())
}

/// 3×3 image, K = 2, class 1 on the left column.
fn left_column() -> Tensor {
    one_hot(&[1, 0, 0, 1, 0, 0, 1, 0, 0], 1, 2, &[3, 3])
}

#[test]
fn nacl_proportions_3x3_in_image_borders() -> R {
    let tau = flat(&nacl_proportions(&left_column(), 3, NaclWindow::Mean)?);
    // Column 0: windows of 4 or 6 in-image voxels, half class 1; column 1: a third;
    // column 2: none.
    for r in 0..3 {
        close(tau[9 + 3 * r], 0.5, 1e-15);
        close(tau[9 + 3 * r + 1], 1.0 / 3.0, 1e-15);
        close(tau[9 + 3 * r + 2], 0.0, 1e-15);
        for c in 0..3 {
            close(tau[3 * r + c] + tau[9 + 3 * r + c], 1.0, 1e-15);
        }
    }
    // Gaussian window σ = 1 at the centre: column weights e^{-1/2}, 1, e^{-1/2}.
    let g = flat(&nacl_proportions(
        &left_column(),
        3,
        NaclWindow::Gaussian { sigma: 1.0 },
    )?);
    let e1 = (-0.5f64).exp();
    close(g[9 + 4], e1 / (1.0 + 2.0 * e1), 1e-15);
    // Soft targets use their argmax: (0.6, 0.4) counts as class 0.
    let soft = t64(&[0.6, 0.4], &[1, 2, 1, 1]);
    assert_eq!(
        flat(&nacl_proportions(&soft, 3, NaclWindow::Mean)?),
        vec![1.0, 0.0]
    );
    Ok(())
}

#[test]
fn nacl_loss_3x3_hand_values_and_3d() -> R {
    let y = left_column();
    let l = Tensor::zeros((1, 2, 3, 3), DType::F64, &dev())?;
    // Zero logits: CE = ln 2; L1 penalty = mean τ = 9 / 18.
    let nacl = Nacl::default();
    close(scalar(&nacl.forward(&l, &y)?), 2f64.ln() + 0.1 * 0.5, 1e-12);
    // L2: class 1 column values ½, ⅓, 0 (class 0: ½, ⅔, 1), each 3 times, over 18.
    let sq = 3.0 * (0.25 + 1.0 / 9.0 + 0.0 + 0.25 + 4.0 / 9.0 + 1.0) / 18.0;
    let l2 = Nacl {
        norm: NaclNorm::L2,
        alpha: 1.0,
        ..Nacl::default()
    };
    close(scalar(&l2.forward(&l, &y)?), 2f64.ln() + sq, 1e-12);
    // 3D: one class-1 voxel at the centre of 3×3×3: τ_1 = 1/27 at the centre.
    let mut lab = vec![0usize; 27];
    lab[13] = 1;
    let y3 = one_hot(&lab, 1, 2, &[3, 3, 3]);
    let tau = flat(&nacl_proportions(&y3, 3, NaclWindow::Mean)?);
    close(tau[27 + 13], 1.0 / 27.0, 1e-15);
    close(tau[27], 1.0 / 8.0, 1e-15); // corner: 8 in-image voxels
    Ok(())
}

#[test]
fn dice_perfect_is_zero_and_hand_value() -> R {
    // 2 images of 2 voxels, K = 2.
    let y = one_hot(&[0, 1, 1, 0], 2, 2, &[2]);
    let perfect = (&y * 40.0)?;
    assert!(scalar(&SoftDice::default().forward(&perfect, &y)?) < 1e-9);
    // Uniform prediction: p = ½, Σp_1 = 2, Σt_1 = 2, Σp_1 t_1 = 1 → Dice 2/4.
    let l = Tensor::zeros((2, 2, 2), DType::F64, &dev())?;
    close(scalar(&SoftDice::default().forward(&l, &y)?), 0.5, 1e-5);
    let all = SoftDice {
        include_background: true,
        smooth: 0.0,
    };
    close(scalar(&all.forward(&l, &y)?), 0.5, 1e-15);
    // CE + Dice through the configuration.
    let combo = LossConfig {
        method: Method::Ce,
        dice_weight: 2.0,
    }
    .build()?;
    close(scalar(&combo.forward(&l, &y)?), 2f64.ln() + 2.0 * 0.5, 1e-5);
    // K = 1 without background has no class to average.
    let one = Tensor::zeros((1, 1, 2), DType::F64, &dev())?;
    assert!(SoftDice::default().forward(&one, &one).is_err());
    Ok(())
}

fn all_losses() -> Vec<(String, Box<dyn SegLoss>)> {
    let mut v: Vec<(String, Box<dyn SegLoss>)> = Method::all_baselines()
        .into_iter()
        .chain([Method::Soft])
        .map(|m| (m.name().to_string(), m.build().unwrap()))
        .collect();
    v.push(("dice".into(), Box::new(SoftDice::default())));
    v.push((
        "mbls-m1".into(),
        Box::new(Mbls {
            margin: 1.0,
            lambda: 1.0,
        }),
    ));
    v.push((
        "nacl-l2-gauss".into(),
        Box::new(Nacl {
            norm: NaclNorm::L2,
            window: NaclWindow::Gaussian { sigma: 0.8 },
            ..Nacl::default()
        }),
    ));
    v.push(("focal-1.5".into(), Box::new(Focal { gamma: 1.5 })));
    v
}

#[test]
fn every_loss_backpropagates_2d_and_3d() -> R {
    let mut rng = StdRng::seed_from_u64(7);
    for shape in [[2usize, 3, 4, 5].as_slice(), &[1, 3, 2, 3, 4]] {
        let s: usize = shape[2..].iter().product();
        let labels: Vec<usize> = (0..shape[0] * s).map(|i| (i * 7 + i / 3) % 3).collect();
        let y = one_hot(&labels, shape[0], 3, &shape[2..]).to_dtype(DType::F32)?;
        let x = Var::from_tensor(&randn(&mut rng, shape, DType::F32, &dev())?)?;
        for (name, loss) in all_losses() {
            let v = loss.forward(x.as_tensor(), &y)?;
            assert_eq!(v.dims(), &[] as &[usize], "{name}");
            assert!(scalar(&v).is_finite(), "{name}");
            let grads = v.backward()?;
            let g = grads.get(x.as_tensor()).ok_or("no gradient")?;
            assert_eq!(g.dims(), shape, "{name}");
            let gv = flat(g);
            assert!(gv.iter().all(|x| x.is_finite()), "{name}");
            assert!(gv.iter().any(|x| x.abs() > 1e-8), "{name}: zero gradient");
        }
    }
    Ok(())
}

#[test]
fn gradients_match_finite_differences_f64() -> R {
    let mut rng = StdRng::seed_from_u64(11);
    let shape = [1usize, 3, 3, 3];
    let labels = [0usize, 1, 2, 2, 1, 0, 1, 1, 2];
    let y = one_hot(&labels, 1, 3, &shape[2..]);
    let base = randn(&mut rng, &shape, DType::F64, &dev())?;
    for (name, loss) in all_losses() {
        let x = Var::from_tensor(&base)?;
        let g = flat(
            loss.forward(x.as_tensor(), &y)?
                .backward()?
                .get(x.as_tensor())
                .ok_or("no gradient")?,
        );
        let b = flat(&base);
        let h = 1e-6;
        for i in [0usize, 4, 13, 26] {
            let mut p = b.clone();
            p[i] += h;
            let mut m = b.clone();
            m[i] -= h;
            let fp = scalar(&loss.forward(&t64(&p, &shape), &y)?);
            let fm = scalar(&loss.forward(&t64(&m, &shape), &y)?);
            let fd = (fp - fm) / (2.0 * h);
            assert!(
                (fd - g[i]).abs() <= 1e-6 * (1.0 + fd.abs()),
                "{name} entry {i}: autograd {} vs finite difference {fd}",
                g[i]
            );
        }
    }
    Ok(())
}

#[test]
fn shape_mismatch_is_an_error() {
    let l = Tensor::zeros((1, 2, 3, 3), DType::F32, &dev()).unwrap();
    let t = Tensor::zeros((1, 2, 3, 4), DType::F32, &dev()).unwrap();
    for (name, loss) in all_losses() {
        assert!(loss.forward(&l, &t).is_err(), "{name}");
    }
}

#[test]
fn methods_parse_validate_and_serialise() -> R {
    let names = ["ce", "ls", "focal", "svls", "mbls", "nacl", "soft"];
    for n in names {
        let m: Method = n.parse()?;
        assert_eq!(m.name(), n);
        m.validate()?;
        let back: Method = serde_json::from_str(&serde_json::to_string(&m)?)?;
        assert_eq!(back, m);
    }
    assert_eq!("LS".parse::<Method>()?, Method::Ls { eps: 0.1 });
    assert_eq!(
        "mbls".parse::<Method>()?,
        Method::Mbls {
            margin: 5.0,
            lambda: 0.1
        }
    );
    assert!(matches!("dice".parse::<Method>(), Err(SegError::Config(_))));
    assert_eq!(Method::all_baselines().len(), 6);
    let m: Method = serde_json::from_str(r#"{"name":"svls","kernel":5,"sigma":2.0}"#)?;
    assert_eq!(
        m,
        Method::Svls {
            kernel: 5,
            sigma: 2.0
        }
    );
    let bad = [
        Method::Ls { eps: 1.5 },
        Method::Ls { eps: -0.1 },
        Method::Focal { gamma: -1.0 },
        Method::Svls {
            kernel: 4,
            sigma: 1.0,
        },
        Method::Svls {
            kernel: 3,
            sigma: 0.0,
        },
        Method::Mbls {
            margin: f64::NAN,
            lambda: 0.1,
        },
        Method::Nacl {
            kernel: 0,
            alpha: 0.1,
            norm: NaclNorm::L1,
            window: NaclWindow::Mean,
        },
        Method::Nacl {
            kernel: 3,
            alpha: 0.1,
            norm: NaclNorm::L1,
            window: NaclWindow::Gaussian { sigma: -1.0 },
        },
    ];
    for m in bad {
        assert!(matches!(m.validate(), Err(SegError::Config(_))), "{m:?}");
        let cfg = LossConfig {
            method: m,
            dice_weight: 0.0,
        };
        assert!(matches!(cfg.build(), Err(SegError::Config(_))), "{m:?}");
    }
    let neg = LossConfig {
        method: Method::Ce,
        dice_weight: -1.0,
    };
    assert!(matches!(neg.build_arc(), Err(SegError::Config(_))));
    let cfg: LossConfig = serde_json::from_str(r#"{"method":{"name":"focal","gamma":2.0}}"#)?;
    assert_eq!(cfg.dice_weight, 0.0);
    assert_eq!(cfg.method, Method::Focal { gamma: 2.0 });
    Ok(())
}

#[test]
fn soft_target_receives_gradient() -> R {
    // ∂/∂t of mean_v −Σ_k t_k log p_k is −log p / V: here V = 2 voxels.
    let l = t64(&[3f64.ln(), 0.0, 0.0, 0.0], &[1, 2, 2]);
    let t = Var::from_tensor(&t64(&[0.5, 0.0, 0.5, 1.0], &[1, 2, 2]))?;
    for loss in [
        Box::new(SoftTargetCe) as Box<dyn SegLoss>,
        Box::new(LabelSmoothing { eps: 0.0 }),
        Box::new(Focal { gamma: 0.0 }),
    ] {
        let g = loss.forward(&l, t.as_tensor())?.backward()?;
        let gt = flat(g.get(t.as_tensor()).ok_or("no target gradient")?);
        let want = [-(0.75f64.ln()), 2f64.ln(), -(0.25f64.ln()), 2f64.ln()].map(|v| v / 2.0);
        for (a, b) in gt.iter().zip(want) {
            close(*a, b, 1e-12);
        }
    }
    Ok(())
}
