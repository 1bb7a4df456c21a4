//! Scoring a whole run: per query, then the mean over the judged queries.

use std::collections::BTreeMap;

use crate::metric::Metric;
use crate::qrels::Qrels;
use crate::run::Run;

/// The scores of one run: every metric for every judged query, and their means.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    metrics: Vec<Metric>,
    per_query: BTreeMap<String, Vec<f64>>,
}

impl Evaluation {
    pub fn metrics(&self) -> &[Metric] {
        &self.metrics
    }

    /// How many queries were scored: every judged query.
    pub fn num_queries(&self) -> usize {
        self.per_query.len()
    }

    /// Each query's values, in the order of [`Evaluation::metrics`].
    pub fn per_query(&self) -> &BTreeMap<String, Vec<f64>> {
        &self.per_query
    }

    /// The mean of each metric over the scored queries (0 when there are none), in order.
    pub fn means(&self) -> Vec<(Metric, f64)> {
        let count = self.per_query.len().max(1) as f64;
        self.metrics
            .iter()
            .enumerate()
            .map(|(i, metric)| {
                (*metric, self.per_query.values().map(|v| v[i]).sum::<f64>() / count)
            })
            .collect()
    }
}

/// Scores `run` against `qrels` on `metrics`; see the crate documentation for the conventions.
pub fn evaluate(qrels: &Qrels, run: &Run, metrics: &[Metric]) -> Evaluation {
    let mut per_query = BTreeMap::new();
    for query in qrels.queries() {
        let judgments = qrels.judgments(query).expect("listed queries are judged");
        let mut results: Vec<&(String, f64)> =
            run.results(query).unwrap_or_default().iter().collect();
        // trec_eval's order: score descending, then document id descending.
        results.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
        let ranked: Vec<i64> = results
            .iter()
            .map(|(document, _)| judgments.get(document).copied().unwrap_or(0))
            .collect();
        let judged: Vec<bool> =
            results.iter().map(|(document, _)| judgments.contains_key(document)).collect();
        let mut ideal: Vec<i64> = judgments.values().copied().filter(|grade| *grade > 0).collect();
        ideal.sort_unstable_by(|a, b| b.cmp(a));
        let num_relevant = ideal.iter().filter(|grade| **grade >= 1).count();
        let values = metrics
            .iter()
            .map(|metric| metric.score(&ranked, &judged, &ideal, num_relevant))
            .collect();
        per_query.insert(query.to_string(), values);
    }
    Evaluation { metrics: metrics.to_vec(), per_query }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPS: f64 = 1e-12;

    fn qrels(judgments: &[(&str, &str, i64)]) -> Qrels {
        let mut qrels = Qrels::default();
        for (query, document, grade) in judgments {
            qrels.insert(query, document, *grade);
        }
        qrels
    }

    fn run(results: &[(&str, &[(&str, f64)])]) -> Run {
        let mut run = Run::new();
        for (query, docs) in results {
            run.insert(query, docs.iter().map(|(d, s)| (d.to_string(), *s)).collect());
        }
        run
    }

    fn value(qrels: &Qrels, run: &Run, metric: &str, query: &str) -> f64 {
        let metric = metric.parse().unwrap();
        evaluate(qrels, run, &[metric]).per_query()[query][0]
    }

    fn assert_close(actual: f64, expected: f64) {
        assert!((actual - expected).abs() < EPS, "{actual} != {expected}");
    }

    #[test]
    fn binary_judgments_with_unjudged_documents() {
        // Relevant: a, c, e (e never retrieved). x and y are unjudged, b judged not relevant.
        let qrels = qrels(&[("q", "a", 1), ("q", "b", 0), ("q", "c", 1), ("q", "e", 1)]);
        let run = run(&[("q", &[("x", 5.0), ("a", 4.0), ("b", 3.0), ("y", 2.0), ("c", 1.0)])]);
        assert_close(value(&qrels, &run, "p@2", "q"), 0.5);
        assert_close(value(&qrels, &run, "p@10", "q"), 0.2);
        assert_close(value(&qrels, &run, "recall@2", "q"), 1.0 / 3.0);
        assert_close(value(&qrels, &run, "recall@100", "q"), 2.0 / 3.0);
        assert_close(value(&qrels, &run, "mrr", "q"), 0.5);
        assert_close(value(&qrels, &run, "mrr@1", "q"), 0.0);
        assert_close(value(&qrels, &run, "map", "q"), (1.0 / 2.0 + 2.0 / 5.0) / 3.0);
        assert_close(value(&qrels, &run, "map@3", "q"), (1.0 / 2.0) / 3.0);
        // a, b and c are judged; x and y are not.
        assert_close(value(&qrels, &run, "judged@2", "q"), 0.5);
        assert_close(value(&qrels, &run, "judged@5", "q"), 0.6);
        assert_close(value(&qrels, &run, "judged@10", "q"), 0.3);
        let dcg = 1.0 / 3f64.log2() + 1.0 / 6f64.log2();
        let ideal = 1.0 + 1.0 / 3f64.log2() + 1.0 / 4f64.log2();
        assert_close(value(&qrels, &run, "ndcg@10", "q"), dcg / ideal);
        assert_close(
            value(&qrels, &run, "ndcg@2", "q"),
            (1.0 / 3f64.log2()) / (1.0 + 1.0 / 3f64.log2()),
        );
    }

    #[test]
    fn graded_judgments_use_grades_as_gains() {
        let qrels = qrels(&[("q", "a", 3), ("q", "b", 1), ("q", "c", 2)]);
        let run = run(&[("q", &[("b", 3.0), ("a", 2.0), ("z", 1.0)])]);
        let dcg = 1.0 + 3.0 / 3f64.log2();
        let ideal = 3.0 + 2.0 / 3f64.log2() + 1.0 / 4f64.log2();
        assert_close(value(&qrels, &run, "ndcg", "q"), dcg / ideal);
        // Every grade >= 1 is relevant for the binary metrics.
        assert_close(value(&qrels, &run, "recall@2", "q"), 2.0 / 3.0);
        assert_close(value(&qrels, &run, "mrr", "q"), 1.0);
    }

    #[test]
    fn ties_are_broken_by_descending_document_id_and_ranks_ignored() {
        let qrels = qrels(&[("q", "a", 1)]);
        // Given order puts "a" first, but on a tie trec_eval puts "b" before "a".
        let tied = run(&[("q", &[("a", 1.0), ("b", 1.0)])]);
        assert_close(value(&qrels, &tied, "mrr", "q"), 0.5);
        let untied = run(&[("q", &[("b", 1.0), ("a", 2.0)])]);
        assert_close(value(&qrels, &untied, "mrr", "q"), 1.0);
    }

    #[test]
    fn queries_without_relevant_documents_or_results_score_zero() {
        let qrels = qrels(&[("none", "a", 0), ("missing", "a", 1), ("ok", "a", 1)]);
        let run =
            run(&[("none", &[("a", 1.0)]), ("ok", &[("a", 1.0)]), ("unjudged", &[("a", 1.0)])]);
        let evaluation = evaluate(&qrels, &run, &Metric::DEFAULTS);
        assert_eq!(evaluation.num_queries(), 3, "judged queries count, unjudged ones do not");
        for query in ["none", "missing"] {
            assert!(evaluation.per_query()[query].iter().all(|v| *v == 0.0), "{query}");
        }
        for (_, mean) in evaluation.means() {
            assert_close(mean, 1.0 / 3.0);
        }
    }

    #[test]
    fn no_judged_queries_means_zero() {
        let evaluation = evaluate(&Qrels::default(), &Run::new(), &Metric::DEFAULTS);
        assert_eq!(evaluation.num_queries(), 0);
        assert!(evaluation.means().iter().all(|(_, mean)| *mean == 0.0));
    }
}
