//! Reference implementations from candle's own ops (differentiable by candle's autograd).
//!
//! They are the `--stock` backend of the U-Net and the references of the equivalence
//! tests, and the fallback on non-CPU devices. Candle 0.11 has no 3D convolution, 3D
//! transposed convolution or 3D pooling, so those are composed from 2D ops over depth
//! slices: `y[:, :, z] = Σ_a conv2d(x[:, :, z·s + a − p], w[:, :, a])`.

use candle_core::{D, Result, Tensor};

fn add_bias(y: Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    match b {
        None => Ok(y),
        Some(b) => {
            let mut shape = vec![1; y.rank()];
            shape[1] = b.dim(0)?;
            y.broadcast_add(&b.reshape(shape)?)
        }
    }
}

/// Convolution with candle's `conv2d` (rank 4) or a depth-sliced composition (rank 5).
pub fn conv(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let y = match x.rank() {
        4 => x.conv2d(w, padding, stride, 1, 1)?,
        5 => {
            let (_, _, d, _, _) = x.dims5()?;
            let kd = w.dim(2)?;
            let xp = if padding > 0 {
                x.pad_with_zeros(2, padding, padding)?
            } else {
                x.clone()
            };
            let od = (d + 2 * padding - kd) / stride + 1;
            let mut outs = Vec::with_capacity(od);
            for z in 0..od {
                let mut acc: Option<Tensor> = None;
                for a in 0..kd {
                    let xs = xp.narrow(2, z * stride + a, 1)?.squeeze(2)?;
                    let ws = w.narrow(2, a, 1)?.squeeze(2)?;
                    let t = xs.conv2d(&ws, padding, stride, 1, 1)?;
                    acc = Some(match acc {
                        None => t,
                        Some(s) => (s + t)?,
                    });
                }
                match acc {
                    Some(t) => outs.push(t),
                    None => candle_core::bail!("conv3d: empty kernel"),
                }
            }
            Tensor::stack(&outs, 2)?
        }
        r => candle_core::bail!("conv: rank {r} not supported"),
    };
    add_bias(y, b)
}

/// Transposed convolution with candle's `conv_transpose2d` (rank 4) or a depth-sliced
/// composition (rank 5): output slice `zo` sums `conv_transpose2d(x[:, :, zi], w[:, :, a])`
/// over `zo = zi·s + a − p`.
pub fn conv_transpose(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let y = match x.rank() {
        4 => x.conv_transpose2d(w, padding, 0, stride, 1)?,
        5 => {
            let (_, _, d, _, _) = x.dims5()?;
            let kd = w.dim(2)?;
            let od = (d - 1) * stride + kd - 2 * padding;
            let mut outs = Vec::with_capacity(od);
            let mut first_shape = None;
            for zo in 0..od {
                let mut acc: Option<Tensor> = None;
                for zi in 0..d {
                    for a in 0..kd {
                        if zi * stride + a != zo + padding {
                            continue;
                        }
                        let xs = x.narrow(2, zi, 1)?.squeeze(2)?;
                        let ws = w.narrow(2, a, 1)?.squeeze(2)?;
                        let t = xs.conv_transpose2d(&ws, padding, 0, stride, 1)?;
                        first_shape.get_or_insert(t.shape().clone());
                        acc = Some(match acc {
                            None => t,
                            Some(s) => (s + t)?,
                        });
                    }
                }
                outs.push(acc);
            }
            let Some(shape) = first_shape else {
                candle_core::bail!("conv_transpose3d: empty")
            };
            let outs = outs
                .into_iter()
                .map(|t| match t {
                    Some(t) => Ok(t),
                    None => Tensor::zeros(&shape, x.dtype(), x.device()),
                })
                .collect::<Result<Vec<_>>>()?;
            Tensor::stack(&outs, 2)?
        }
        r => candle_core::bail!("conv-transpose: rank {r} not supported"),
    };
    add_bias(y, b)
}

/// Average pooling with kernel = stride = `k` along every spatial axis (floor sizes).
pub fn avg_pool(x: &Tensor, k: usize) -> Result<Tensor> {
    match x.rank() {
        4 => x.avg_pool2d(k),
        5 => {
            let (n, c, d, h, w) = x.dims5()?;
            let od = d / k;
            let x = x.narrow(2, 0, od * k)?;
            // Mean over depth windows, then 2D pooling of each slice.
            let x = x.reshape((n, c, od, k, h, w))?.mean(3)?;
            let y = x.reshape((n, c * od, h, w))?.avg_pool2d(k)?;
            let (_, _, oh, ow) = y.dims4()?;
            y.reshape((n, c, od, oh, ow))
        }
        r => candle_core::bail!("avg-pool: rank {r} not supported"),
    }
}

/// Group normalisation `y = (x − μ_g) / √(σ²_g + ε) · γ_c + β_c` from candle ops, as in
/// candle-nn, for any rank ≥ 3, optionally followed by ReLU.
pub fn group_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
    eps: f64,
    relu: bool,
) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let (n, c) = (dims[0], dims[1]);
    let xg = x.reshape((n, groups, ()))?;
    let mean = xg.mean_keepdim(D::Minus1)?;
    let xc = xg.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = xc
        .broadcast_div(&(var + eps)?.sqrt()?)?
        .reshape(dims.as_slice())?;
    let mut shape = vec![1; dims.len()];
    shape[1] = c;
    let y = xn
        .broadcast_mul(&gamma.reshape(shape.as_slice())?)?
        .broadcast_add(&beta.reshape(shape.as_slice())?)?;
    if relu { y.relu() } else { Ok(y) }
}
