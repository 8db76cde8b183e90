//! Runtime CPU-feature dispatch for the element-wise loops of the ops.
//!
//! The crate is built for the baseline x86-64 target (SSE2), so plain loops vectorise
//! 4 f32 wide at most, and loops with a branch (the ReLU mask) often not at all. The
//! GEMMs already dispatch at runtime (the `gemm` crate); [`avx2`] does the same for our
//! own loops: it runs an `#[inline(always)]` function inside a copy compiled with AVX2 + FMA when the CPU
//! has them, so the (inlined) body is vectorised 8 f32 wide.

/// Whether the CPU has AVX2 and FMA (cached by `std`).
#[inline(always)]
pub(crate) fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Defines `$name`, a function with the signature of `$inner` (an `#[inline(always)]`
/// function) that runs `$inner` compiled with AVX2 + FMA when the CPU has them (the
/// body is inlined into a `#[target_feature]` copy), and the baseline code otherwise.
macro_rules! avx2_dispatch {
    (
        $(#[$m:meta])*
        fn $name:ident <$t:ident: $b:path> ($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $inner:path
    ) => {
        $(#[$m])*
        fn $name<$t: $b>($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn fast<$t: $b>($($arg: $ty),*) $(-> $ret)? {
                    $inner($($arg),*)
                }
                if $crate::ops::simd::has_avx2_fma() {
                    // SAFETY: the target features of `fast` were detected at runtime.
                    return unsafe { fast($($arg),*) };
                }
            }
            $inner($($arg),*)
        }
    };
}
pub(crate) use avx2_dispatch;

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
