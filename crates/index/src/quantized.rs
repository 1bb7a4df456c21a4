//! Vectors at one byte per value, for walking the graph.
//!
//! A graph search computes a few hundred distances per query, each to a vector somewhere in
//! memory far from the last: it waits on memory, not on arithmetic (a 384-float vector is 24
//! cache lines). Walking the graph with each value rounded to one of 255 steps reads a quarter
//! of the bytes. The rounding can reorder near-ties, so the candidates a walk ends with are
//! scored again with the full vectors; only the route through the graph is approximate, never
//! a score a caller sees. This is scalar quantization with rescoring, as Qdrant and FAISS offer
//! it.
//!
//! A vector becomes `dimension` signed bytes (stored as `u8` bit patterns, so they can share a
//! block with other data) and one scale: value ≈ byte × scale, the scale being the vector's
//! largest magnitude over 127. No byte is -128, which the dot product below relies on.
//!
//! What is quantized is each vector less the mean of the vectors indexed. Encoders often put
//! every text in a narrow cone: vectors share a large common part and differ in small ones,
//! which a byte per value would round away. A query's dot product with the mean is the same for
//! every vector, so it is added back once per query.

/// Writes the bytes of `values` into `codes` and returns the scale (0 when all are 0).
fn quantize(values: impl Iterator<Item = f32> + Clone, codes: &mut [u8]) -> f32 {
    let largest = values.clone().fold(0f32, |largest, x| largest.max(x.abs()));
    if largest == 0.0 || !largest.is_finite() {
        codes.fill(0);
        return 0.0;
    }
    let scale = largest / 127.0;
    for (code, x) in codes.iter_mut().zip(values) {
        // Rounds half away from zero with a truncating cast: `f32::round` is a library call
        // on the baseline x86-64 target.
        let steps = x / scale;
        *code = ((steps + 0.5f32.copysign(steps)) as i32).clamp(-127, 127) as i8 as u8;
    }
    scale
}

/// How the vectors of one index are quantized: less their mean.
pub(crate) struct Quantizer {
    mean: Vec<f32>,
}

impl Quantizer {
    /// For `vectors` (`dimension` floats each); a quantizer of no vectors subtracts nothing.
    pub(crate) fn fit(vectors: &[f32], dimension: usize) -> Quantizer {
        let mut sums = vec![0f64; dimension];
        let mut count = 0usize;
        for vector in vectors.chunks_exact(dimension.max(1)) {
            for (sum, &x) in sums.iter_mut().zip(vector) {
                *sum += f64::from(x);
            }
            count += 1;
        }
        let mean = sums.iter().map(|sum| (sum / count.max(1) as f64) as f32).collect();
        Quantizer { mean }
    }

    /// Writes the bytes of `vector` into `codes` (as many as the dimension) and returns its
    /// scale.
    pub(crate) fn encode(&self, vector: &[f32], codes: &mut [u8]) -> f32 {
        quantize(vector.iter().zip(&self.mean).map(|(x, m)| x - m), codes)
    }

    /// The query in the form [`QuantizedQuery::dot`] compares with encoded vectors. The query
    /// itself is not centred: q·x = q·(x − mean) + q·mean.
    pub(crate) fn query(&self, query: &[f32]) -> QuantizedQuery {
        let mut codes = vec![0; query.len()];
        let scale = quantize(query.iter().copied(), &mut codes);
        let with_mean = query.iter().zip(&self.mean).map(|(q, m)| q * m).sum();
        QuantizedQuery { codes, scale, with_mean }
    }
}

/// A query quantized once per search.
pub(crate) struct QuantizedQuery {
    codes: Vec<u8>,
    scale: f32,
    /// The query's dot product with the mean that encoded vectors were centred on.
    with_mean: f32,
}

impl QuantizedQuery {
    /// The approximate dot product with the vector encoded as `codes` and `scale`. Inlined, so
    /// that a caller compiled for AVX2 gets the AVX2 product without a call per vector.
    #[inline(always)]
    pub(crate) fn dot(&self, codes: &[u8], scale: f32) -> f32 {
        self.with_mean + dot_bytes(&self.codes, codes) as f32 * self.scale * scale
    }
}

/// The dot product of two vectors of signed bytes, exactly.
#[inline(always)]
fn dot_bytes(a: &[u8], b: &[u8]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
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

#[cfg(test)]
mod tests {
    use super::*;

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
        }
    }

    #[test]
    fn quantized_dot_products_are_close_to_the_exact_ones() {
        let vector: Vec<f32> = (0..384).map(|i| ((i * 17 % 101) as f32 - 50.0) / 400.0).collect();
        let other: Vec<f32> = (0..384).map(|i| ((i * 29 % 97) as f32 - 48.0) / 380.0).collect();
        let quantizer = Quantizer::fit(&[vector.clone(), other.clone()].concat(), 384);
        let mut codes = vec![0; 384];
        let scale = quantizer.encode(&other, &mut codes);
        let exact: f32 = vector.iter().zip(&other).map(|(x, y)| x * y).sum();
        let approximate = quantizer.query(&vector).dot(&codes, scale);
        assert!((exact - approximate).abs() < 2e-3, "{exact} against {approximate}");
        // A zero vector has scale 0 rather than a division by zero.
        let uncentred = Quantizer::fit(&[], 384);
        assert_eq!(uncentred.encode(&[0.0; 384], &mut codes), 0.0);
        assert_eq!(uncentred.query(&vector).dot(&codes, 0.0), 0.0);
    }
}
