//! The one place that chooses CPU instructions at run time.
//!
//! Release builds target any x86-64, whose vectors are 4-wide SSE. Loops that gain from wider
//! vectors run inside [`widest`] or [`avx2_fma`], which compile the closure they are given
//! (and everything it inlines) for the wider target when the CPU has it, checked once. Every
//! other CPU, x86 without the features or another architecture, runs the same closure as
//! plain code: the results are the same sums, only slower.

/// Whether this CPU has AVX2 and FMA. Detected once: the check is a few instructions, but
/// it sits in loops that run millions of times.
#[inline(always)]
pub fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static DETECTED: OnceLock<bool> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether this CPU has AVX-512 (the foundation set), detected once.
#[inline(always)]
pub fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static DETECTED: OnceLock<bool> = OnceLock::new();
        *DETECTED.get_or_init(|| std::arch::is_x86_feature_detected!("avx512f"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Runs `work` compiled for AVX2 and FMA where the CPU has them, else as it is.
#[inline(always)]
pub fn avx2_fma<R>(work: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        #[target_feature(enable = "avx2,fma")]
        fn compiled_for_avx2<R>(work: impl FnOnce() -> R) -> R {
            work()
        }
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { compiled_for_avx2(work) };
    }
    work()
}

/// Runs `work` compiled for the widest vectors the CPU has: AVX-512, else AVX2 and FMA, else
/// as it is.
#[inline(always)]
pub fn widest<R>(work: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        #[target_feature(enable = "avx512f")]
        fn compiled_for_avx512<R>(work: impl FnOnce() -> R) -> R {
            work()
        }
        // SAFETY: the CPU has the feature the function is compiled for.
        return unsafe { compiled_for_avx512(work) };
    }
    avx2_fma(work)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_computes_the_same_thing() {
        let values: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin()).collect();
        let sum = || values.iter().map(|x| x * x).sum::<f32>();
        // The same code, whichever target the CPU allows: the same value.
        assert_eq!(widest(sum), sum());
        assert_eq!(avx2_fma(sum), sum());
    }
}
