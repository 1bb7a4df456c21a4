//! Is one system better than another on the same queries, or is the difference noise?
//!
//! Smucker, Allan and Carterette ("A Comparison of Statistical Significance Tests for
//! Information Retrieval Evaluation", 2007) recommend the paired randomization (permutation)
//! test: under the null hypothesis the two systems are interchangeable, so each query's pair of
//! scores may be swapped. The p-value is the share of random swaps whose mean difference is at
//! least as large (in either direction) as the one observed.

/// The two-sided p-value of the paired randomization test on per-query scores `a` and `b`
/// (the same queries, in the same order), from `trials` random swaps. It is deterministic for a
/// given `seed`, and never 0: (swaps at least as extreme + 1) / (trials + 1).
///
/// Panics if `a` and `b` differ in length: they must score the same queries.
pub fn paired_randomization_test(a: &[f64], b: &[f64], trials: usize, seed: u64) -> f64 {
    assert_eq!(a.len(), b.len(), "paired scores must cover the same queries");
    let differences: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let observed = differences.iter().sum::<f64>().abs();
    // Sums within rounding of the observed one count as equal.
    let tolerance = 1e-9 * (1.0 + observed);
    let mut random = SplitMix64(seed);
    let mut extreme = 0;
    for _ in 0..trials {
        let mut sum = 0.0;
        for chunk in differences.chunks(64) {
            let signs = random.next();
            for (bit, difference) in chunk.iter().enumerate() {
                sum += if signs >> bit & 1 == 1 { *difference } else { -difference };
            }
        }
        if sum.abs() >= observed - tolerance {
            extreme += 1;
        }
    }
    (extreme + 1) as f64 / (trials + 1) as f64
}

/// A small, fast generator (Steele, Lea and Flood, 2014): the test needs random signs, not
/// cryptographic quality, and this crate depends on nothing.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consistent_difference_is_significant_and_noise_is_not() {
        // Better on all 30 queries: only the identity swap and its mirror are as extreme, so
        // p is about 2^-29, reported as its floor 1 / (trials + 1).
        let a: Vec<f64> = (0..30).map(|i| 0.5 + 0.01 * f64::from(i % 7)).collect();
        let b: Vec<f64> = a.iter().map(|x| x - 0.05).collect();
        assert!((paired_randomization_test(&a, &b, 9_999, 1) - 1e-4).abs() < 1e-12);

        // Differences of alternating sign that cancel: every swap is at least as extreme.
        let c: Vec<f64> =
            a.iter().enumerate().map(|(i, x)| if i % 2 == 0 { x + 0.1 } else { x - 0.1 }).collect();
        assert_eq!(paired_randomization_test(&a, &c, 999, 1), 1.0);

        // Identical systems.
        assert_eq!(paired_randomization_test(&a, &a, 999, 1), 1.0);
    }

    #[test]
    fn matches_the_exact_permutation_distribution_on_small_cases() {
        let cases: [(&[f64], &[f64]); 2] = [
            (&[1.0, 2.0, 3.0, 4.0], &[0.0; 4]),
            (&[2.0, 3.0, 4.0, 1.0, 0.5], &[1.0, 0.0, 0.0, 2.0, 0.0]),
        ];
        for (a, b) in cases {
            let differences: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
            let observed = differences.iter().sum::<f64>().abs();
            let patterns = 1u32 << differences.len();
            let extreme = (0..patterns)
                .filter(|signs| {
                    let sum: f64 = differences
                        .iter()
                        .enumerate()
                        .map(|(i, d)| if signs >> i & 1 == 1 { *d } else { -d })
                        .sum();
                    sum.abs() >= observed - 1e-12
                })
                .count();
            let exact = extreme as f64 / f64::from(patterns);
            let p = paired_randomization_test(a, b, 200_000, 7);
            assert!((p - exact).abs() < 0.005, "{p} vs exact {exact}");
        }
    }
}
