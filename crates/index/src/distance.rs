//! The distance kernels every vector search runs.
//!
//! Where the CPU has AVX2 and FMA (`cloze_mlm::cpu` checks, once) the kernels use them, and
//! elsewhere (other CPUs, other architectures) a portable version computes the same sums.
//! AVX-512 was slower on an AMD EPYC, so it is not used here.

use hnsw_rs::anndists::dist::Distance;

#[cfg(target_arch = "x86_64")]
use cloze_mlm::cpu::has_avx2_fma;

/// Cosine distance between unit vectors: 1 - dot. anndists' `DistDot` asserts the result is not
/// negative, which rounding breaks for near-identical vectors.
#[derive(Debug, Default, Clone, Copy)]
pub struct UnitCosine;

impl Distance<f32> for UnitCosine {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        (1.0 - dot(a, b)).max(0.0)
    }
}

/// The dot product: most of the time of building a graph, of exact search and of scoring what
/// a graph walk found.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { dot_fma(a, b) };
    }
    dot_lanes(a, b)
}

/// Four independent sums of eight lanes, each step a fused multiply-add: the compiler never
/// fuses a multiply and an add by itself (the rounding would differ), and one sum would wait on
/// the latency of the one before. Against the portable version it wins where the vector search
/// benchmark measured it (`benches/vector_search.sh`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_fma(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::{
        __m256, _mm256_add_ps, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_setzero_ps,
        _mm256_storeu_ps,
    };
    let n = a.len().min(b.len());
    let (a_ptr, b_ptr) = (a.as_ptr(), b.as_ptr());
    // SAFETY: every load reads 8 floats starting at `i + offset`, and `i + offset + 8 <= n`.
    let load = |i: usize| unsafe { (_mm256_loadu_ps(a_ptr.add(i)), _mm256_loadu_ps(b_ptr.add(i))) };
    let mut sums: [__m256; 4] = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (lane, sum) in sums.iter_mut().enumerate() {
            let (x, y) = load(i + 8 * lane);
            *sum = _mm256_fmadd_ps(x, y, *sum);
        }
        i += 32;
    }
    while i + 8 <= n {
        let (x, y) = load(i);
        sums[0] = _mm256_fmadd_ps(x, y, sums[0]);
        i += 8;
    }
    let total = _mm256_add_ps(_mm256_add_ps(sums[0], sums[1]), _mm256_add_ps(sums[2], sums[3]));
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` holds the 8 floats written.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), total) };
    let tail: f32 = a[i..n].iter().zip(&b[i..n]).map(|(x, y)| x * y).sum();
    lanes.iter().sum::<f32>() + tail
}

/// Sums in sixteen independent lanes: a single running sum must add in order, which keeps the
/// compiler from using SIMD registers.
#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a_chunks.remainder().iter().zip(b_chunks.remainder()).map(|(x, y)| x * y).sum();
    let mut lanes = [0f32; LANES];
    for (x, y) in a_chunks.zip(b_chunks) {
        for lane in 0..LANES {
            lanes[lane] += x[lane] * y[lane];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// The dot product of two vectors of signed bytes (stored as `u8` bit patterns, none -128),
/// exactly. Inlined, so that a caller compiled for AVX2 (the graph walk, see
/// [`with_avx2`]) gets the AVX2 product without a call per vector.
#[inline(always)]
pub(crate) fn dot_bytes(a: &[u8], b: &[u8]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has the feature the function is compiled for.
        return unsafe { dot_bytes_avx2(a, b) };
    }
    dot_bytes_plain(a, b)
}

fn dot_bytes_plain(a: &[u8], b: &[u8]) -> i32 {
    a.iter().zip(b).map(|(&x, &y)| i32::from(x as i8) * i32::from(y as i8)).sum()
}

/// 32 bytes per step, in two independent sums. The one instruction that multiplies bytes
/// (`maddubs`) takes one side unsigned, so `a`'s sign moves onto `b`: |a| × (b × sign a) = a × b.
/// Adjacent products are summed into 16 bits (at most 2 × 127 × 127, which fits), then into 32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn dot_bytes_avx2(a: &[u8], b: &[u8]) -> i32 {
    use std::arch::x86_64::{
        __m256i, _mm256_add_epi32, _mm256_loadu_si256, _mm256_madd_epi16, _mm256_maddubs_epi16,
        _mm256_set1_epi16, _mm256_setzero_si256, _mm256_sign_epi8, _mm256_storeu_si256,
    };
    let n = a.len().min(b.len());
    let ones = _mm256_set1_epi16(1);
    // SAFETY: the loads read 32 bytes starting at `i`, and callers keep `i + 32 <= n`.
    let load = |i: usize| unsafe {
        (
            _mm256_loadu_si256(a.as_ptr().add(i).cast::<__m256i>()),
            _mm256_loadu_si256(b.as_ptr().add(i).cast::<__m256i>()),
        )
    };
    let product = |(x, y): (__m256i, __m256i)| {
        _mm256_madd_epi16(
            _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x)),
            ones,
        )
    };
    let mut sums = [_mm256_setzero_si256(); 2];
    let mut i = 0;
    while i + 64 <= n {
        sums[0] = _mm256_add_epi32(sums[0], product(load(i)));
        sums[1] = _mm256_add_epi32(sums[1], product(load(i + 32)));
        i += 64;
    }
    if i + 32 <= n {
        sums[0] = _mm256_add_epi32(sums[0], product(load(i)));
        i += 32;
    }
    let mut lanes = [0i32; 8];
    // SAFETY: `lanes` holds the 8 integers written.
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), _mm256_add_epi32(sums[0], sums[1])) };
    lanes.iter().sum::<i32>() + dot_bytes_plain(&a[i..n], &b[i..n])
}

/// Runs `work` compiled for AVX2 where the CPU has it, so that the kernels it inlines (the
/// byte dot product above) become part of its loop rather than a call per vector. The graph
/// walk spends most of its time there: inlining it was worth a third of its time in a profile.
#[inline(always)]
pub(crate) fn with_avx2<T>(work: impl FnOnce() -> T) -> T {
    cloze_mlm::cpu::avx2_fma(work)
}

/// Asks the CPU to start loading `values` into its cache, so that the loads of several
/// far-apart places overlap instead of queueing.
#[inline(always)]
pub(crate) fn prefetch<T>(values: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        const CACHE_LINE: usize = 64;
        let first = values.as_ptr() as usize & !(CACHE_LINE - 1);
        let end = values.as_ptr() as usize + std::mem::size_of_val(values);
        for line in (first..end).step_by(CACHE_LINE) {
            // SAFETY: a prefetch only hints at an address; it cannot fault.
            unsafe {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                _mm_prefetch::<_MM_HINT_T0>(line as *const i8);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    #[test]
    fn the_dot_product_matches_a_plain_sum_at_every_length() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for length in (0..80).chain([127, 128, 384, 385]) {
            let a: Vec<f32> = (0..length).map(|_| rng.random_range(-1.0..1.0)).collect();
            let b: Vec<f32> = (0..length).map(|_| rng.random_range(-1.0..1.0)).collect();
            let plain: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
            assert!((f64::from(dot(&a, &b)) - plain).abs() < 1e-4, "length {length}");
            assert!((f64::from(dot_lanes(&a, &b)) - plain).abs() < 1e-4, "length {length}");
        }
    }

    #[test]
    fn the_byte_dot_product_is_exact_at_every_length() {
        for n in (0..80).chain([127, 128, 384, 385]) {
            // Runs of ±127 too: there 16-bit sums of products would overflow if they could.
            let byte = |i: usize, step: usize, extreme: i8| -> u8 {
                let value = if i % 7 < 2 { extreme as u8 } else { ((i * step) % 256) as u8 };
                if value == 0x80 {
                    0x81
                } else {
                    value
                }
            };
            let a: Vec<u8> = (0..n).map(|i| byte(i, 37, 127)).collect();
            let b: Vec<u8> = (0..n).map(|i| byte(i, 91, -127)).collect();
            assert_eq!(dot_bytes(&a, &b), dot_bytes_plain(&a, &b), "length {n}");
            assert_eq!(with_avx2(|| dot_bytes(&a, &b)), dot_bytes_plain(&a, &b), "length {n}");
        }
    }
}
