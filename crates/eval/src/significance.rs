//! Is one system better than another on the same queries, or is the difference noise?
//!
//! Smucker, Allan and Carterette ("A Comparison of Statistical Significance Tests for
//! Information Retrieval Evaluation", 2007) recommend the paired randomization (permutation)
//! test: under the null hypothesis the two systems are interchangeable, so each query's pair of
//! scores may be swapped. The p-value is the share of random swaps whose mean difference is at
//! least as large (in either direction) as the one observed. The paired t-test, which they
//! found to agree with it closely, is here too (as scipy's `ttest_rel`), with Holm-Bonferroni
//! correction for comparing several systems against one baseline; Student's t distribution
//! comes from `statrs`.

use statrs::distribution::{ContinuousCDF, StudentsT};

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

/// The two-sided p-value of the paired t-test on per-query scores `a` and `b`, as scipy's
/// `ttest_rel(a, b)`: t = mean(d) / (sd(d) / sqrt(n)) over the differences d, with n - 1
/// degrees of freedom. Where scipy answers NaN, this answers 1 (fewer than two queries, or no
/// difference at all); differences that are all equal and not zero give 0.
///
/// Panics if `a` and `b` differ in length.
pub fn paired_t_test(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "paired scores must cover the same queries");
    let n = a.len();
    if n < 2 {
        return 1.0;
    }
    let differences: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let (mean, sd) = mean_and_sd(&differences);
    if sd == 0.0 {
        return if mean == 0.0 { 1.0 } else { 0.0 };
    }
    let t = mean / (sd / (n as f64).sqrt());
    student_t_two_sided(t, (n - 1) as f64)
}

/// The mean of `values` and their sample standard deviation (n - 1 in the denominator).
pub fn mean_and_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n.max(1.0);
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, variance.sqrt())
}

/// The 95% confidence interval of the mean of `values`, from Student's t distribution.
pub fn confidence_interval_95(values: &[f64]) -> (f64, f64) {
    let (mean, sd) = mean_and_sd(values);
    if values.len() < 2 {
        return (mean, mean);
    }
    // The t value with 2.5% beyond it on each side.
    let quantile = student_t((values.len() - 1) as f64).inverse_cdf(0.975);
    let half_width = quantile * sd / (values.len() as f64).sqrt();
    (mean - half_width, mean + half_width)
}

/// Holm-Bonferroni adjusted p-values, in the order given: controls the chance of any false
/// positive among the tests at the level they are compared with, less conservatively than
/// Bonferroni.
pub fn holm_bonferroni(p_values: &[f64]) -> Vec<f64> {
    let m = p_values.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&i, &j| p_values[i].total_cmp(&p_values[j]));
    let mut adjusted = vec![0.0; m];
    let mut running_max: f64 = 0.0;
    for (rank, &index) in order.iter().enumerate() {
        running_max = running_max.max(((m - rank) as f64 * p_values[index]).min(1.0));
        adjusted[index] = running_max;
    }
    adjusted
}

/// P(|T| >= |t|) for Student's t with `df` degrees of freedom.
fn student_t_two_sided(t: f64, df: f64) -> f64 {
    2.0 * student_t(df).sf(t.abs())
}

/// Student's t distribution, centred and unscaled, with `df` (> 0) degrees of freedom.
fn student_t(df: f64) -> StudentsT {
    StudentsT::new(0.0, 1.0, df).expect("degrees of freedom are positive")
}

/// A small, fast generator (Steele, Lea and Flood, 2014): the test needs random signs, not
/// cryptographic quality, and the same seed must give the same p-values everywhere.
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
    fn the_t_test_matches_known_values() {
        // scipy.stats.ttest_rel([1, 2, 3, 4, 5], [1.5, 1.9, 3.8, 3.1, 6.2]).pvalue
        let p = paired_t_test(&[1.0, 2.0, 3.0, 4.0, 5.0], &[1.5, 1.9, 3.8, 3.1, 6.2]);
        assert!((p - 0.460_050_752_843_960_96).abs() < 1e-12, "{p}");
        // Student's t with 1 degree of freedom is Cauchy: P(|T| >= 1) = 1/2.
        assert!((student_t_two_sided(1.0, 1.0) - 0.5).abs() < 1e-14);
        assert!((student_t_two_sided(0.0, 5.0) - 1.0).abs() < 1e-14);
        assert_eq!(paired_t_test(&[1.0, 2.0], &[1.0, 2.0]), 1.0);
        assert_eq!(paired_t_test(&[1.0, 2.0], &[0.0, 1.0]), 0.0);
    }

    #[test]
    fn confidence_intervals_and_holm() {
        // The 97.5% quantile of t with 4 degrees of freedom is 2.776445105.
        let (low, high) = confidence_interval_95(&[1.0, 2.0, 3.0, 4.0, 5.0]);
        let half = 2.776_445_105_197_793 * (2.5f64).sqrt() / 5f64.sqrt();
        assert!((low - (3.0 - half)).abs() < 1e-9 && (high - (3.0 + half)).abs() < 1e-9);
        let adjusted = holm_bonferroni(&[0.01, 0.04, 0.03, 0.5]);
        let expected = [0.04, 0.09, 0.09, 0.5];
        for (a, e) in adjusted.iter().zip(expected) {
            assert!((a - e).abs() < 1e-12, "{adjusted:?}");
        }
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
