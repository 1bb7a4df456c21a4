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

use crate::distance::dot_bytes;

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

#[cfg(test)]
mod tests {
    use super::*;

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
