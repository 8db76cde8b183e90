//! Benchmarks behind `calseg bench` and the criterion bench: one U-Net training step
//! (forward + soft-target CE, backward, AdamW) timed per phase, and the GFLOP/s of the
//! convolution kernels per layer shape against a plain matrix product.

use crate::init::randn;
use crate::loss::{soft_ce, soft_ce_stock};
use crate::net::{Backend, NormKind, PoolKind, UNet, UNetConfig};
use crate::ops::geom::Geom;
use crate::ops::kernels;
use crate::{Result, SegError};
use candle_core::{DType, Device, Module};
use candle_nn::{Optimizer, ParamsAdamW, VarMap};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;
use std::time::Instant;

/// The training step to time: a U-Net (GroupNorm(8), avg-pool, transposed-conv
/// upsampling) on a random batch with random soft targets, AdamW (lr 1e-3, wd 1e-4).
#[derive(Clone, Debug, Serialize)]
pub struct StepConfig {
    /// 2 or 3 spatial dimensions.
    pub dims: usize,
    /// U-Net base width.
    pub base: usize,
    /// U-Net depth (number of poolings).
    pub depth: usize,
    /// Batch size.
    pub batch: usize,
    /// Spatial size along every axis.
    pub size: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Classes.
    pub classes: usize,
    /// Timed iterations (medians are reported).
    pub iters: usize,
    /// Untimed iterations first.
    pub warmup: usize,
    /// Use candle's stock ops instead of the fast ones.
    pub stock: bool,
    /// Seed of the weights, the input and the targets.
    pub seed: u64,
    /// Where the step runs (`Device::Cpu` by default; a CUDA device in a `cuda` build).
    #[serde(skip)]
    pub device: Device,
}

impl Default for StepConfig {
    /// The reference 2D step: depth 4, base 16, batch 8 × 2 × 128 × 128, 2 classes.
    fn default() -> Self {
        Self {
            dims: 2,
            base: 16,
            depth: 4,
            batch: 8,
            size: 128,
            in_channels: 2,
            classes: 2,
            iters: 5,
            warmup: 1,
            stock: false,
            seed: 0,
            device: Device::Cpu,
        }
    }
}

/// Median seconds per phase of the timed iterations, and the loss of every iteration.
#[derive(Clone, Debug, Serialize)]
pub struct StepTimings {
    /// Forward pass including the loss.
    pub fwd_s: f64,
    /// `loss.backward()`.
    pub bwd_s: f64,
    /// Optimiser step.
    pub step_s: f64,
    /// Whole iteration.
    pub total_s: f64,
    /// Loss of every iteration (warm-up included).
    pub losses: Vec<f64>,
    /// Number of trainable parameters.
    pub params: usize,
    /// Rayon threads used by the fast ops.
    pub threads: usize,
    /// Where it ran (`cpu`, `cuda:0`).
    pub device: String,
    /// `"fast"` or `"stock"`.
    pub backend: String,
    /// SIMD level of calseg's own loops ([`crate::ops::simd_level`]: `avx512`, `avx2`,
    /// `baseline`; `CALSEG_SIMD` caps it).
    pub simd: String,
    /// The configuration that was run.
    pub config: StepConfig,
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        0.5 * (v[m - 1] + v[m])
    }
}

/// An optimiser step as a closure over the gradients.
type StepFn = Box<dyn FnMut(&candle_core::backprop::GradStore) -> candle_core::Result<()>>;

/// One U-Net training step, set up once and run repeatedly (used by [`unet_step`] and
/// the criterion bench).
pub struct Stepper {
    dev: Device,
    net: UNet,
    x: candle_core::Tensor,
    t: candle_core::Tensor,
    stock: bool,
    opt: StepFn,
    params: usize,
}

/// Seconds of the phases of one [`Stepper::step`], and its loss.
#[derive(Clone, Copy, Debug)]
pub struct Phases {
    /// Forward + loss.
    pub fwd_s: f64,
    /// Backward.
    pub bwd_s: f64,
    /// Optimiser.
    pub step_s: f64,
    /// Loss before the update.
    pub loss: f64,
}

impl Stepper {
    /// Builds the net (seed `cfg.seed`), a N(0, 1) input and softmax-of-N(0, 1) targets
    /// (seed `cfg.seed + 1`), and AdamW (lr 1e-3, weight decay 1e-4): candle-nn's with
    /// `stock`, the fused [`crate::optim::AdamW`] otherwise (same update).
    pub fn new(cfg: &StepConfig) -> Result<Self> {
        let dev = cfg.device.clone();
        let backend = if cfg.stock {
            Backend::Stock
        } else {
            Backend::Fast
        };
        let ucfg = UNetConfig {
            dims: cfg.dims,
            in_channels: cfg.in_channels,
            classes: cfg.classes,
            base: cfg.base,
            depth: cfg.depth,
            norm: NormKind::Group(8),
            pool: PoolKind::Avg,
            backend,
            dropout: 0.0,
        };
        let vm = VarMap::new();
        let net = UNet::new(&ucfg, &vm, cfg.seed, DType::F32, &dev)?;
        let mut rng = StdRng::seed_from_u64(cfg.seed.wrapping_add(1));
        let mut shape = vec![cfg.batch, cfg.in_channels];
        shape.extend(std::iter::repeat_n(cfg.size, cfg.dims));
        let x = randn(&mut rng, &shape, DType::F32, &dev)?;
        shape[1] = cfg.classes;
        let t = candle_nn::ops::softmax(&randn(&mut rng, &shape, DType::F32, &dev)?, 1)?;
        let vars = vm.all_vars();
        let params = vars.iter().map(|v| v.elem_count()).sum();
        let hp = ParamsAdamW {
            lr: 1e-3,
            weight_decay: 1e-4,
            ..Default::default()
        };
        let opt: StepFn = if cfg.stock {
            let mut o = candle_nn::AdamW::new(vars, hp)?;
            Box::new(move |g| o.step(g))
        } else {
            let mut o = crate::optim::AdamW::new(vars, hp)?;
            Box::new(move |g| o.step(g))
        };
        Ok(Self {
            dev,
            net,
            x,
            t,
            stock: cfg.stock,
            opt,
            params,
        })
    }

    /// Number of trainable parameters.
    pub fn params(&self) -> usize {
        self.params
    }

    /// Forward + soft-target CE, backward, optimiser step.
    pub fn step(&mut self) -> Result<Phases> {
        let t0 = Instant::now();
        let logits = self.net.forward(&self.x)?;
        let loss = if self.stock {
            soft_ce_stock(&logits, &self.t)?
        } else {
            soft_ce(&logits, &self.t)?
        };
        let lv = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        // A GPU runs asynchronously: wait for it before reading the clock (no-op on CPU).
        self.dev.synchronize()?;
        let t2 = Instant::now();
        (self.opt)(&grads)?;
        drop(grads);
        self.dev.synchronize()?;
        let t3 = Instant::now();
        Ok(Phases {
            fwd_s: (t1 - t0).as_secs_f64(),
            bwd_s: (t2 - t1).as_secs_f64(),
            step_s: (t3 - t2).as_secs_f64(),
            loss: lv,
        })
    }
}

/// Runs `warmup + iters` training steps and returns the median timings.
pub fn unet_step(cfg: &StepConfig) -> Result<StepTimings> {
    if cfg.iters == 0 {
        return Err(SegError::Config("iters must be at least 1".into()));
    }
    let mut st = Stepper::new(cfg)?;
    let params = st.params();
    let (mut tf, mut tb, mut ts, mut tt) = (vec![], vec![], vec![], vec![]);
    let mut losses = Vec::new();
    for it in 0..cfg.warmup + cfg.iters {
        let p = st.step()?;
        losses.push(p.loss);
        if it >= cfg.warmup {
            tf.push(p.fwd_s);
            tb.push(p.bwd_s);
            ts.push(p.step_s);
            tt.push(p.fwd_s + p.bwd_s + p.step_s);
        }
    }
    Ok(StepTimings {
        fwd_s: median(&mut tf),
        bwd_s: median(&mut tb),
        step_s: median(&mut ts),
        total_s: median(&mut tt),
        losses,
        params,
        threads: rayon::current_num_threads(),
        device: crate::device_name(&cfg.device),
        backend: if cfg.stock { "stock" } else { "fast" }.into(),
        simd: crate::ops::simd_level().name().into(),
        config: cfg.clone(),
    })
}

/// Throughput of the three convolution kernels on one layer shape (f32).
#[derive(Clone, Debug, Serialize)]
pub struct KernelRate {
    /// `"conv k3 16→32 @64²"`-style description.
    pub layer: String,
    /// GFLOP of one forward pass (= of each backward kernel).
    pub gflop: f64,
    /// Forward GFLOP/s.
    pub fwd_gflops: f64,
    /// Input-gradient GFLOP/s.
    pub grad_input_gflops: f64,
    /// Weight-gradient GFLOP/s.
    pub grad_weight_gflops: f64,
}

/// Kernel throughput for every distinct convolution of the benchmark U-Net, plus
/// `"matmul"` rows: candle's f32 matmul and gemm (all threads) on `n × n` matrices.
#[derive(Clone, Debug, Serialize)]
pub struct KernelReport {
    /// One row per layer shape.
    pub layers: Vec<KernelRate>,
    /// candle `Tensor::matmul`, square f32, GFLOP/s.
    pub candle_matmul_gflops: f64,
    /// Size of the square matmul.
    pub matmul_n: usize,
}

fn time_best(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// Measures [`KernelRate`]s for the convolutions of the U-Net of `cfg` (3×3 block convs
/// at every level, the transposed convs, the 1×1 head), best of `reps`.
pub fn conv_kernels(cfg: &StepConfig, reps: usize) -> Result<KernelReport> {
    let d3 = cfg.dims == 3;
    let mut shapes: Vec<(String, Geom)> = Vec::new();
    let geom = |ci: usize, co: usize, size: usize, k: usize, s: usize, p: usize| {
        let sp = if d3 { [size; 3] } else { [1, size, size] };
        let kk = if d3 { [k; 3] } else { [1, k, k] };
        let ss = if d3 { [s; 3] } else { [1, s, s] };
        let pp = if d3 { [p; 3] } else { [0, p, p] };
        Geom::new(cfg.batch, ci, co, sp, kk, ss, pp)
            .ok_or_else(|| SegError::Config(format!("bad layer {ci}->{co} at {size}")))
    };
    let sq = if d3 { "³" } else { "²" };
    for i in 0..=cfg.depth {
        let size = cfg.size >> i;
        let c = cfg.base << i;
        let cin = if i == 0 { cfg.in_channels } else { c / 2 };
        shapes.push((
            format!("conv3 {cin}→{c} @{size}{sq}"),
            geom(cin, c, size, 3, 1, 1)?,
        ));
        shapes.push((
            format!("conv3 {c}→{c} @{size}{sq}"),
            geom(c, c, size, 3, 1, 1)?,
        ));
        if i < cfg.depth {
            shapes.push((
                format!("conv3 {}→{c} @{size}{sq}", 2 * c),
                geom(2 * c, c, size, 3, 1, 1)?,
            ));
            // Transposed conv 2c → c up to `size`: its adjoint conv maps c@size → 2c@size/2.
            shapes.push((
                format!("convT2 {}→{c} @{}{sq}", 2 * c, size / 2),
                geom(c, 2 * c, size, 2, 2, 0)?,
            ));
        }
    }
    shapes.push((
        format!("conv1 {}→{} @{}{sq}", cfg.base, cfg.classes, cfg.size),
        geom(cfg.base, cfg.classes, cfg.size, 1, 1, 0)?,
    ));
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut rand_vec = |n: usize| -> Vec<f32> {
        use rand::Rng;
        (0..n).map(|_| rng.random::<f32>() - 0.5).collect()
    };
    let mut layers = Vec::new();
    for (name, g) in shapes {
        let x = rand_vec(g.n * g.ci * g.ivol());
        let w = rand_vec(g.co * g.kdim());
        let dy = rand_vec(g.n * g.co * g.ovol());
        let mut y = vec![0f32; dy.len()];
        let mut dx = vec![0f32; x.len()];
        let mut dw = vec![0f32; w.len()];
        let flop = g.flops();
        let tf = time_best(reps, || kernels::conv_fwd(&g, &x, &w, None, &mut y));
        let ti = time_best(reps, || kernels::conv_grad_input(&g, &dy, &w, &mut dx));
        let tw = time_best(reps, || kernels::conv_grad_weight(&g, &x, &dy, &mut dw));
        layers.push(KernelRate {
            layer: name,
            gflop: flop / 1e9,
            fwd_gflops: flop / tf / 1e9,
            grad_input_gflops: flop / ti / 1e9,
            grad_weight_gflops: flop / tw / 1e9,
        });
    }
    let n = 1024;
    let a = randn(
        &mut StdRng::seed_from_u64(cfg.seed),
        &[n, n],
        DType::F32,
        &Device::Cpu,
    )?;
    let mut err = None;
    let tm = time_best(reps, || {
        if let Err(e) = a.matmul(&a) {
            err = Some(e);
        }
    });
    if let Some(e) = err {
        return Err(e.into());
    }
    Ok(KernelReport {
        layers,
        candle_matmul_gflops: 2.0 * (n * n * n) as f64 / tm / 1e9,
        matmul_n: n,
    })
}

/// Pretty JSON of a benchmark result.
pub fn to_json<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string_pretty(v).map_err(|e| SegError::Config(format!("JSON: {e}")))
}

/// Renders a [`StepTimings`] as one human-readable line.
pub fn format_step(t: &StepTimings) -> String {
    format!(
        "{} U-Net {}D base {} depth {} batch {}×{}×{}^{}: fwd {:.3}s bwd {:.3}s step {:.3}s total {:.3}s \
         (median of {}, {} threads, SIMD {}, {} params, loss {:.5} → {:.5})",
        t.backend,
        t.config.dims,
        t.config.base,
        t.config.depth,
        t.config.batch,
        t.config.in_channels,
        t.config.size,
        t.config.dims,
        t.fwd_s,
        t.bwd_s,
        t.step_s,
        t.total_s,
        t.config.iters,
        t.threads,
        t.simd,
        t.params,
        t.losses.first().copied().unwrap_or(f64::NAN),
        t.losses.last().copied().unwrap_or(f64::NAN),
    )
}
