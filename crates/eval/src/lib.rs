//! Relevance evaluation: scores a ranked run against relevance judgments.
//!
//! The metric definitions follow `trec_eval` (and so `pytrec_eval` and BEIR), so numbers from Cloze
//! can be put beside published ones:
//! - a run's own rank column is ignored: each query's documents are ordered by score, highest
//!   first, and ties are broken by document id in *descending* byte order, as `trec_eval` does;
//! - a document is relevant when its judged grade is at least 1; unjudged documents count as not
//!   relevant; nDCG uses the grades themselves as gains (`log2` discount);
//! - every judged query is scored, and a judged query the run has no documents for scores 0 on
//!   every metric (`trec_eval -c`), so a system cannot look better by answering fewer queries.
//!
//! Runs are compared with [`compare`] (means with confidence intervals, differences, paired
//! significance tests) and written out for people with [`write_report`].
//!
//! This crate is a leaf: it reads TREC runs from anywhere, not only from Cloze.

mod compare;
mod error;
mod evaluate;
mod metric;
mod qrels;
mod report;
mod run;
mod significance;

pub use compare::{compare, CompareOptions, Comparison, MetricResult, RunResult, Versus};
pub use error::{EvalError, EvalErrorKind};
pub use evaluate::{evaluate, Evaluation};
pub use metric::{Metric, ParseMetricError};
pub use qrels::Qrels;
pub use report::{format_p, write_report, ReportError};
pub use run::Run;
pub use significance::{
    confidence_interval_95, holm_bonferroni, mean_and_sd, paired_randomization_test, paired_t_test,
};
