//! Runtime dispatch to AVX2 + FMA for the element-wise loops. The crate is built for baseline x86-64
//! (SSE2), so auto-vectorised loops use 4-wide vectors without FMA; matrixmultiply picks its kernels at
//! run time, and this does the same for retro's own loops: `with_avx2` runs a closure inside a function
//! compiled with AVX2 + FMA, where the (inlined) loop vectorises 8-wide, when the CPU has them.

use std::sync::LazyLock;

static AVX2_FMA: LazyLock<bool> = LazyLock::new(|| {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
});

/// Whether this CPU runs retro's loops with AVX2 + FMA.
pub fn avx2_fma() -> bool {
    *AVX2_FMA
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn in_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Runs `f` compiled for AVX2 + FMA when this CPU has them, else as built. `f` should be a loop over
/// slices with everything it calls `#[inline]`, so it is compiled inside the feature-enabled frame.
#[inline(always)]
pub fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if *AVX2_FMA {
        // SAFETY: the CPU supports AVX2 and FMA (checked above).
        return unsafe { in_avx2(f) };
    }
    f()
}
