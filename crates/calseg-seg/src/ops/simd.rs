//! Runtime CPU-feature dispatch for the element-wise loops of the ops.
//!
//! The crate is built for the baseline x86-64 target (SSE2), so plain loops vectorise
//! 4 f32 wide at most, and loops with a branch (the ReLU mask) often not at all. The
//! GEMMs already dispatch at runtime (the `gemm` crate); [`avx2_dispatch`] does the same
//! for our own loops: it runs an `#[inline(always)]` function inside a copy compiled
//! with AVX-512 (F, BW, VL) or AVX2 + FMA, whichever is the best the CPU has and
//! [`simd_level`] allows, so the (inlined) body is vectorised 16 or 8 f32 wide.
//!
//! The level is the CPU's best, capped by the environment variable `CALSEG_SIMD`
//! (`avx512`, `avx2` or `baseline`, read once) and by [`set_simd_level`] — so the AVX2
//! and baseline paths stay reachable and testable on an AVX-512 machine
//! (`tests/simd_levels.rs` runs every level and compares). The `gemm` crate's own
//! dispatch is not affected.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};

/// The instruction sets calseg's own loops are compiled for, in increasing order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SimdLevel {
    /// The build target's baseline (SSE2 on x86-64).
    Baseline,
    /// AVX2 + FMA (8 f32 lanes).
    Avx2,
    /// AVX-512 F + BW + VL, with AVX2 + FMA (16 f32 lanes).
    Avx512,
}

impl SimdLevel {
    fn from_u8(v: u8) -> SimdLevel {
        match v {
            2 => SimdLevel::Avx512,
            1 => SimdLevel::Avx2,
            _ => SimdLevel::Baseline,
        }
    }

    /// The name (`baseline`, `avx2`, `avx512`), as `CALSEG_SIMD` takes it.
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Baseline => "baseline",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512",
        }
    }

    /// Parses a `CALSEG_SIMD` value (case-insensitive; `avx-512`, `scalar` accepted).
    pub fn parse(s: &str) -> Option<SimdLevel> {
        match s.trim().to_ascii_lowercase().as_str() {
            "avx512" | "avx-512" => Some(SimdLevel::Avx512),
            "avx2" => Some(SimdLevel::Avx2),
            "baseline" | "scalar" | "none" | "sse2" => Some(SimdLevel::Baseline),
            _ => None,
        }
    }
}

/// The best level this CPU supports (detected once).
pub fn detected_simd_level() -> SimdLevel {
    static DETECTED: OnceLock<SimdLevel> = OnceLock::new();
    *DETECTED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") {
                if has!("avx512f") && has!("avx512bw") && has!("avx512vl") {
                    return SimdLevel::Avx512;
                }
                return SimdLevel::Avx2;
            }
        }
        SimdLevel::Baseline
    })
}

/// 255: not initialised yet (then the detected level capped by `CALSEG_SIMD`).
static LEVEL: AtomicU8 = AtomicU8::new(u8::MAX);

/// The level the ops use now: [`detected_simd_level`], capped by `CALSEG_SIMD` and by
/// the last [`set_simd_level`].
#[inline]
pub fn simd_level() -> SimdLevel {
    let v = LEVEL.load(Ordering::Relaxed);
    if v != u8::MAX {
        return SimdLevel::from_u8(v);
    }
    let mut level = detected_simd_level();
    if let Some(cap) = std::env::var("CALSEG_SIMD")
        .ok()
        .and_then(|s| SimdLevel::parse(&s))
    {
        level = level.min(cap);
    }
    LEVEL.store(level as u8, Ordering::Relaxed);
    level
}

/// Caps the level of calseg's own loops at `level` (never above what the CPU has) for
/// the whole process, and returns the level now in force. For tests and benchmarks
/// comparing the paths; results agree within f32 rounding (different summation order).
pub fn set_simd_level(level: SimdLevel) -> SimdLevel {
    let l = level.min(detected_simd_level());
    LEVEL.store(l as u8, Ordering::Relaxed);
    l
}

/// Defines `$name`, a function with the signature of `$inner` (an `#[inline(always)]`
/// function) that runs `$inner` compiled with AVX-512 or AVX2 + FMA when the CPU has
/// them and [`simd_level`] allows (the body is inlined into a `#[target_feature]` copy),
/// and the baseline code otherwise.
macro_rules! avx2_dispatch {
    (
        $(#[$m:meta])*
        fn $name:ident <$t:ident: $b:path> ($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $inner:path
    ) => {
        $(#[$m])*
        fn $name<$t: $b>($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
                unsafe fn wide<$t: $b>($($arg: $ty),*) $(-> $ret)? {
                    $inner($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn fast<$t: $b>($($arg: $ty),*) $(-> $ret)? {
                    $inner($($arg),*)
                }
                match $crate::ops::simd::simd_level() {
                    // SAFETY: `simd_level` never exceeds the features detected at runtime.
                    $crate::ops::simd::SimdLevel::Avx512 => return unsafe { wide($($arg),*) },
                    // SAFETY: as above.
                    $crate::ops::simd::SimdLevel::Avx2 => return unsafe { fast($($arg),*) },
                    $crate::ops::simd::SimdLevel::Baseline => {}
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

#[cfg(test)]
mod tests {
    use super::SimdLevel;

    #[test]
    fn levels_parse_and_order() {
        assert_eq!(SimdLevel::parse("AVX512"), Some(SimdLevel::Avx512));
        assert_eq!(SimdLevel::parse(" avx2 "), Some(SimdLevel::Avx2));
        assert_eq!(SimdLevel::parse("scalar"), Some(SimdLevel::Baseline));
        assert_eq!(SimdLevel::parse("sse9"), None);
        assert!(SimdLevel::Baseline < SimdLevel::Avx2 && SimdLevel::Avx2 < SimdLevel::Avx512);
        for l in [SimdLevel::Baseline, SimdLevel::Avx2, SimdLevel::Avx512] {
            assert_eq!(SimdLevel::parse(l.name()), Some(l));
        }
    }
}
