//! Several runs on the same judgments: each metric's mean with its confidence interval, and for
//! every run after the first (the baseline) the difference, the queries it wins, ties and
//! loses, and whether the difference is more than chance (paired t-test and paired
//! randomization test, optionally Holm-Bonferroni corrected across the runs).

use serde::Serialize;

use crate::evaluate::evaluate;
use crate::metric::Metric;
use crate::qrels::Qrels;
use crate::run::Run;
use crate::significance::{
    confidence_interval_95, holm_bonferroni, paired_randomization_test, paired_t_test,
};

/// Per-query differences smaller than this are ties (scores are sums of a few fractions).
const TIE: f64 = 1e-12;

/// How the significance tests run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CompareOptions {
    /// Random swaps per randomization test.
    pub trials: usize,
    /// The randomization tests' seed: the same seed gives the same p-values.
    pub seed: u64,
    /// Correct the p-values for testing several runs against the baseline (Holm-Bonferroni,
    /// per metric).
    pub holm: bool,
}

impl Default for CompareOptions {
    fn default() -> CompareOptions {
        CompareOptions { trials: 10_000, seed: 0, holm: false }
    }
}

/// Every run scored on the same judged queries; the first is the baseline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub metrics: Vec<String>,
    /// How many judged queries each run was scored on.
    pub queries: usize,
    pub baseline: String,
    pub options: CompareOptions,
    pub runs: Vec<RunResult>,
    /// The judged queries, in the order of the per-query scores.
    #[serde(skip)]
    query_ids: Vec<String>,
    /// `[run][metric][query]`.
    #[serde(skip)]
    scores: Vec<Vec<Vec<f64>>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunResult {
    pub name: String,
    /// In the order of [`Comparison::metrics`].
    pub metrics: Vec<MetricResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricResult {
    pub metric: String,
    pub mean: f64,
    /// The 95% confidence interval of the mean over queries (Student's t).
    pub ci95: [f64; 2],
    /// Absent for the baseline itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub versus_baseline: Option<Versus>,
}

/// One run against the baseline on one metric.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Versus {
    /// This run's mean minus the baseline's.
    pub difference: f64,
    /// Queries where this run scores higher, the same, lower.
    pub wins: usize,
    pub ties: usize,
    pub losses: usize,
    /// Two-sided paired t-test.
    pub t_test_p: f64,
    /// Two-sided paired randomization test.
    pub randomization_p: f64,
    /// Holm-Bonferroni adjusted, across the runs compared with the baseline (with `holm`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub t_test_p_holm: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub randomization_p_holm: Option<f64>,
}

/// Scores every run on `metrics` and compares each with the first.
///
/// Panics if `runs` is empty.
pub fn compare(
    qrels: &Qrels,
    runs: &[(String, &Run)],
    metrics: &[Metric],
    options: CompareOptions,
) -> Comparison {
    assert!(!runs.is_empty(), "compare needs at least one run");
    let evaluations: Vec<_> = runs.iter().map(|(_, run)| evaluate(qrels, run, metrics)).collect();
    let query_ids: Vec<String> = evaluations[0].per_query().keys().cloned().collect();
    let scores: Vec<Vec<Vec<f64>>> = evaluations
        .iter()
        .map(|evaluation| {
            (0..metrics.len())
                .map(|m| evaluation.per_query().values().map(|values| values[m]).collect())
                .collect()
        })
        .collect();
    let mut results: Vec<RunResult> = runs
        .iter()
        .enumerate()
        .map(|(r, (name, _))| RunResult {
            name: name.clone(),
            metrics: metrics
                .iter()
                .enumerate()
                .map(|(m, metric)| {
                    let values = &scores[r][m];
                    let (low, high) = confidence_interval_95(values);
                    let versus = (r > 0).then(|| versus(values, &scores[0][m], options));
                    MetricResult {
                        metric: metric.to_string(),
                        mean: values.iter().sum::<f64>() / values.len().max(1) as f64,
                        ci95: [low, high],
                        versus_baseline: versus,
                    }
                })
                .collect(),
        })
        .collect();
    if options.holm && runs.len() > 2 {
        for m in 0..metrics.len() {
            let tests: Vec<&Versus> =
                results[1..].iter().filter_map(|r| r.metrics[m].versus_baseline.as_ref()).collect();
            let t = holm_bonferroni(&tests.iter().map(|v| v.t_test_p).collect::<Vec<_>>());
            let random =
                holm_bonferroni(&tests.iter().map(|v| v.randomization_p).collect::<Vec<_>>());
            for (i, result) in results[1..].iter_mut().enumerate() {
                let versus = result.metrics[m].versus_baseline.as_mut().expect("set above");
                versus.t_test_p_holm = Some(t[i]);
                versus.randomization_p_holm = Some(random[i]);
            }
        }
    } else if options.holm {
        // One comparison: nothing to correct for.
        for versus in results[1..]
            .iter_mut()
            .flat_map(|r| &mut r.metrics)
            .flat_map(|m| &mut m.versus_baseline)
        {
            versus.t_test_p_holm = Some(versus.t_test_p);
            versus.randomization_p_holm = Some(versus.randomization_p);
        }
    }
    Comparison {
        metrics: metrics.iter().map(Metric::to_string).collect(),
        queries: query_ids.len(),
        baseline: runs[0].0.clone(),
        options,
        runs: results,
        query_ids,
        scores,
    }
}

fn versus(values: &[f64], baseline: &[f64], options: CompareOptions) -> Versus {
    let count =
        |keep: fn(f64) -> bool| values.iter().zip(baseline).filter(|(v, b)| keep(*v - *b)).count();
    let mean = |values: &[f64]| values.iter().sum::<f64>() / values.len().max(1) as f64;
    Versus {
        difference: mean(values) - mean(baseline),
        wins: count(|d| d > TIE),
        ties: count(|d| d.abs() <= TIE),
        losses: count(|d| d < -TIE),
        t_test_p: paired_t_test(values, baseline),
        randomization_p: paired_randomization_test(values, baseline, options.trials, options.seed),
        t_test_p_holm: None,
        randomization_p_holm: None,
    }
}

impl Comparison {
    /// The judged queries, in the order of [`Comparison::scores`].
    pub fn query_ids(&self) -> &[String] {
        &self.query_ids
    }

    /// Run `run`'s score on metric `metric` (indexes into [`Comparison::runs`] and
    /// [`Comparison::metrics`]) for every query, in the order of [`Comparison::query_ids`].
    pub fn scores(&self, run: usize, metric: usize) -> &[f64] {
        &self.scores[run][metric]
    }

    /// Query indexes ordered by the largest difference from the baseline on `metric`, over
    /// all other runs, largest first: where a change helps or hurts most.
    pub fn queries_by_difference(&self, metric: usize) -> Vec<usize> {
        let largest = |q: usize| {
            (1..self.runs.len())
                .map(|r| (self.scores[r][metric][q] - self.scores[0][metric][q]).abs())
                .fold(0.0, f64::max)
        };
        let mut order: Vec<usize> = (0..self.query_ids.len()).collect();
        order.sort_by(|&a, &b| largest(b).total_cmp(&largest(a)).then(a.cmp(&b)));
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(results: &[(&str, &[(&str, f64)])]) -> Run {
        let mut run = Run::new();
        for (query, docs) in results {
            run.insert(query, docs.iter().map(|(d, s)| (d.to_string(), *s)).collect());
        }
        run
    }

    #[test]
    fn compares_each_run_with_the_first() {
        let mut qrels = Qrels::default();
        for q in ["q1", "q2", "q3"] {
            qrels.insert(q, "good", 1);
        }
        let base = run(&[("q1", &[("good", 1.0)]), ("q2", &[("bad", 2.0), ("good", 1.0)])]);
        let better = run(&[
            ("q1", &[("good", 1.0)]),
            ("q2", &[("good", 2.0), ("bad", 1.0)]),
            ("q3", &[("good", 1.0)]),
        ]);
        let worse = run(&[("q1", &[("bad", 1.0)])]);
        let runs =
            [("base".to_string(), &base), ("better".into(), &better), ("worse".into(), &worse)];
        let options = CompareOptions { trials: 1000, seed: 3, holm: true };
        let comparison = compare(&qrels, &runs, &[Metric::ReciprocalRank(None)], options);
        assert_eq!((comparison.queries, comparison.baseline.as_str()), (3, "base"));
        let means: Vec<f64> = comparison.runs.iter().map(|r| r.metrics[0].mean).collect();
        assert_eq!(means, [0.5, 1.0, 0.0]);
        assert!(comparison.runs[0].metrics[0].versus_baseline.is_none());
        let better = comparison.runs[1].metrics[0].versus_baseline.as_ref().unwrap();
        assert_eq!((better.difference, better.wins, better.ties, better.losses), (0.5, 2, 1, 0));
        let worse = comparison.runs[2].metrics[0].versus_baseline.as_ref().unwrap();
        assert_eq!((worse.wins, worse.ties, worse.losses), (0, 1, 2));
        assert!(better.t_test_p_holm.unwrap() >= better.t_test_p);
        assert_eq!(comparison.scores(1, 0), [1.0, 1.0, 1.0]);
        // q2 and q3 differ by 1 from the baseline in some run; q1 by 1 too (the worse run).
        assert_eq!(comparison.queries_by_difference(0).len(), 3);
        let json = serde_json::to_value(&comparison).unwrap();
        assert_eq!(json["runs"][1]["metrics"][0]["versus_baseline"]["wins"], 2);
    }
}
