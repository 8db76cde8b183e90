//! Runtime CPU-feature dispatch for the element-wise loops of the ops.
//!
//! The crate is built for the baseline x86-64 target (SSE2), so plain loops vectorise
//! 4 f32 wide at most, and loops with a branch (the ReLU mask) often not at all. The
//! GEMMs already dispatch at runtime (the `gemm` crate); [`avx2`] does the same for our
//! own loops: it runs a closure inside a function compiled with AVX2 + FMA when the CPU
//! has them, so the (inlined) closure body is vectorised 8 f32 wide.

/// Runs `f`, compiled with AVX2 + FMA enabled when the CPU supports them.
///
/// `f` should call only `#[inline(always)]` helpers (or code LLVM inlines), since
/// functions it calls out of line keep the baseline target features.
#[inline(always)]
pub(crate) fn avx2<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the target features `with_avx2` enables were detected at runtime.
            return unsafe { with_avx2(f) };
        }
    }
    f()
}

/// Calls `f` in a function compiled with AVX2 + FMA (the closure is inlined into it).
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// `Σ f(x_i)` in f64 with 8 independent lanes, so the compiler can vectorise the
/// conversion and the adds (a single f64 accumulator would serialise them).
#[inline(always)]
pub(crate) fn lane_sum<T: candle_core::WithDType>(xs: &[T], f: impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0.0f64; 8];
    let mut it = xs.chunks_exact(8);
    for ch in &mut it {
        for (a, v) in acc.iter_mut().zip(ch) {
            *a += f(v.to_f64());
        }
    }
    let tail: f64 = it.remainder().iter().map(|v| f(v.to_f64())).sum();
    acc.iter().sum::<f64>() + tail
}
