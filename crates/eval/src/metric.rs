//! The metrics, defined as `trec_eval` defines them.

use std::fmt;
use std::str::FromStr;

/// A per-query effectiveness measure; `k` is a rank cutoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// `ndcg@k` (`trec_eval`'s `ndcg_cut_k`), or `ndcg` over the whole ranking: graded gains,
    /// `log2(rank + 1)` discount, ideal ranking from all judged documents.
    Ndcg(Option<usize>),
    /// `map` (average precision) or `map@k` (`map_cut_k`, still divided by all relevant documents).
    AveragePrecision(Option<usize>),
    /// `mrr` or `mrr@k`: one over the rank of the first relevant document, 0 if none (in the
    /// top k).
    ReciprocalRank(Option<usize>),
    /// `recall@k`: relevant documents in the top k over all relevant documents.
    Recall(usize),
    /// `p@k`: relevant documents in the top k over k.
    Precision(usize),
    /// `judged@k`: judged documents (any grade) in the top k over k. Not a measure of quality
    /// but of how far the other measures can be trusted: unjudged documents count as not
    /// relevant, and a semantic ranking may retrieve many that no assessor saw.
    Judged(usize),
}

impl Metric {
    /// What `cloze eval` reports when no metrics are named.
    pub const DEFAULTS: [Metric; 4] = [
        Metric::Ndcg(Some(10)),
        Metric::Recall(100),
        Metric::ReciprocalRank(Some(10)),
        Metric::AveragePrecision(None),
    ];

    /// The metric's value for one query, given the grades of its retrieved documents in rank
    /// order (unjudged as 0) and whether each is judged, all of its judged grades sorted
    /// highest first, and the number of relevant (grade >= 1) documents.
    pub(crate) fn score(
        &self,
        ranked: &[i64],
        judged: &[bool],
        ideal: &[i64],
        num_relevant: usize,
    ) -> f64 {
        let top = |cutoff: Option<usize>| &ranked[..cutoff.unwrap_or(usize::MAX).min(ranked.len())];
        let is_relevant = |grade: &&i64| **grade >= 1;
        match *self {
            Metric::Ndcg(cutoff) => {
                let ideal_dcg = dcg(&ideal[..cutoff.unwrap_or(usize::MAX).min(ideal.len())]);
                if ideal_dcg > 0.0 {
                    dcg(top(cutoff)) / ideal_dcg
                } else {
                    0.0
                }
            }
            Metric::AveragePrecision(cutoff) => {
                if num_relevant == 0 {
                    return 0.0;
                }
                let mut found = 0usize;
                let mut sum = 0.0;
                for (index, grade) in top(cutoff).iter().enumerate() {
                    if *grade >= 1 {
                        found += 1;
                        sum += found as f64 / (index + 1) as f64;
                    }
                }
                sum / num_relevant as f64
            }
            Metric::ReciprocalRank(cutoff) => top(cutoff)
                .iter()
                .position(|grade| *grade >= 1)
                .map_or(0.0, |index| 1.0 / (index + 1) as f64),
            Metric::Recall(k) => {
                if num_relevant == 0 {
                    return 0.0;
                }
                top(Some(k)).iter().filter(is_relevant).count() as f64 / num_relevant as f64
            }
            Metric::Precision(k) => {
                top(Some(k)).iter().filter(is_relevant).count() as f64 / k as f64
            }
            Metric::Judged(k) => {
                judged[..k.min(judged.len())].iter().filter(|judged| **judged).count() as f64
                    / k as f64
            }
        }
    }
}

/// Discounted cumulative gain with the grades as gains; negative grades gain nothing.
fn dcg(grades: &[i64]) -> f64 {
    grades
        .iter()
        .enumerate()
        .filter(|(_, grade)| **grade > 0)
        .map(|(index, grade)| *grade as f64 / (index as f64 + 2.0).log2())
        .sum()
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, cutoff) = match *self {
            Metric::Ndcg(k) => ("ndcg", k),
            Metric::AveragePrecision(k) => ("map", k),
            Metric::ReciprocalRank(k) => ("mrr", k),
            Metric::Recall(k) => ("recall", Some(k)),
            Metric::Precision(k) => ("p", Some(k)),
            Metric::Judged(k) => ("judged", Some(k)),
        };
        match cutoff {
            Some(k) => write!(f, "{name}@{k}"),
            None => f.write_str(name),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "unknown metric \"{0}\": expected ndcg, ndcg@K, map, map@K, mrr, mrr@K, recall@K, p@K or \
     judged@K (K a whole number above 0)"
)]
pub struct ParseMetricError(String);

impl FromStr for Metric {
    type Err = ParseMetricError;

    /// Parses the names that [`Metric`]'s `Display` writes, in any case (`P@10` too).
    fn from_str(text: &str) -> Result<Metric, ParseMetricError> {
        let error = || ParseMetricError(text.to_string());
        let lower = text.trim().to_ascii_lowercase();
        let (name, cutoff) = match lower.split_once('@') {
            Some((name, k)) => match k.parse::<usize>() {
                Ok(k) if k > 0 => (name, Some(k)),
                _ => return Err(error()),
            },
            None => (lower.as_str(), None),
        };
        match (name, cutoff) {
            ("ndcg", k) => Ok(Metric::Ndcg(k)),
            ("map", k) => Ok(Metric::AveragePrecision(k)),
            ("mrr", k) => Ok(Metric::ReciprocalRank(k)),
            ("recall", Some(k)) => Ok(Metric::Recall(k)),
            ("p", Some(k)) => Ok(Metric::Precision(k)),
            ("judged", Some(k)) => Ok(Metric::Judged(k)),
            _ => Err(error()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for name in
            ["ndcg", "ndcg@10", "map", "map@100", "mrr", "mrr@10", "recall@100", "p@5", "judged@10"]
        {
            assert_eq!(name.parse::<Metric>().unwrap().to_string(), name);
        }
        assert_eq!("P@10".parse::<Metric>().unwrap(), Metric::Precision(10));
        for bad in ["recall", "p", "ndcg@0", "ndcg@x", "bleu", ""] {
            assert!(bad.parse::<Metric>().is_err(), "{bad}");
        }
    }
}
