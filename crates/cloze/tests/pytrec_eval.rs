//! `cloze eval` agrees with pytrec_eval (the reference trec_eval code) to 1e-4 on every metric,
//! per query and on average, for real runs on two shared collections (one graded) and for a
//! hand-made run full of edge cases. Needs `python3` with `pytrec-eval-terrier` (`.ci/run`
//! installs it).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use cloze_eval::{evaluate, Metric, Qrels, Run};
use cloze_tests::beir_collection;

const METRICS: &str = "ndcg@10,ndcg,recall@100,p@10,map,map@100,mrr,mrr@10";
const TOLERANCE: f64 = 1e-4;

type PerQuery = BTreeMap<String, BTreeMap<String, f64>>;

fn pytrec_reference(qrels: &Path, run: &Path) -> PerQuery {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pytrec_reference.py");
    let output =
        Command::new("python3").arg(script).arg(qrels).arg(run).output().expect("python3 runs");
    assert!(
        output.status.success(),
        "the pytrec_eval reference failed (pip install pytrec-eval-terrier): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Compares Cloze's per-query scores of `run` with pytrec_eval's; returns how many queries
/// pytrec_eval scored.
fn assert_agrees_per_query(qrels: &Path, run: &Path) -> usize {
    let reference = pytrec_reference(qrels, run);
    let metrics: Vec<Metric> = METRICS.split(',').map(|m| m.parse().unwrap()).collect();
    let ours = evaluate(&Qrels::read(qrels).unwrap(), &Run::read(run).unwrap(), &metrics);
    for (query, expected) in &reference {
        let values = &ours.per_query()[query];
        for (metric, value) in metrics.iter().zip(values) {
            let want = expected[&metric.to_string()];
            assert!(
                (value - want).abs() < TOLERANCE,
                "query {query} {metric}: cloze {value}, pytrec_eval {want}"
            );
        }
    }
    reference.len()
}

#[test]
fn cloze_eval_matches_pytrec_eval_on_shared_collections() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["scifact", "cranfield"] {
        let collection = beir_collection(name);
        let cloze = |args: &[&str]| {
            let output = Command::new(env!("CARGO_BIN_EXE_cloze"))
                .args(args)
                .env("CLOZE_DATA_DIR", dir.path())
                .output()
                .unwrap();
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
            output.stdout
        };
        let (corpus, queries, qrels) =
            (&collection.corpus, &collection.queries, &collection.test_qrels);
        cloze(&["index", "--collection", name, "--corpus", corpus.to_str().unwrap()]);
        let run = dir.path().join(format!("{name}.run"));
        let report: serde_json::Value = serde_json::from_slice(&cloze(&[
            "eval",
            "--collection",
            name,
            "--queries",
            queries.to_str().unwrap(),
            "--qrels",
            qrels.to_str().unwrap(),
            "--json",
            "--metrics",
            METRICS,
            "--run-out",
            run.to_str().unwrap(),
        ]))
        .unwrap();

        let scored = assert_agrees_per_query(qrels, &run);
        assert_eq!(
            report["queries"].as_u64().unwrap() as usize,
            scored,
            "{name}: every judged query has results"
        );
        let reference = pytrec_reference(qrels, &run);
        for metric in METRICS.split(',') {
            let mean = reference.values().map(|values| values[metric]).sum::<f64>() / scored as f64;
            let ours = report[metric].as_f64().unwrap();
            assert!(
                (ours - mean).abs() < TOLERANCE,
                "{name} {metric}: cloze {ours}, pytrec_eval {mean}"
            );
        }
    }
}

#[test]
fn edge_cases_match_pytrec_eval() {
    let dir = tempfile::tempdir().unwrap();
    // Graded and binary grades, a grade-0 judgment, a query with no relevant document, ties on
    // score (broken by document id), unjudged documents, and fewer results than the cutoffs.
    let qrels = dir.path().join("qrels.txt");
    std::fs::write(
        &qrels,
        "graded 0 a 3\ngraded 0 b 1\ngraded 0 c 2\ngraded 0 z 0\n\
         ties 0 d2 1\ntties 0 d10 1\nnone 0 x 0\nnone 0 y 0\nshort 0 only 1\n",
    )
    .unwrap();
    let run = dir.path().join("run.txt");
    let mut lines = String::new();
    for (query, docs) in [
        ("graded", vec![("z", 9.0), ("b", 8.0), ("u1", 7.5), ("c", 7.5), ("a", 1.0)]),
        ("ties", vec![("d1", 1.0), ("d2", 1.0), ("d3", 1.0), ("d10", 1.0), ("d11", 0.5)]),
        ("tties", vec![("d10", 2.0), ("d2", 2.0)]),
        ("none", vec![("x", 3.0), ("w", 2.0)]),
        ("short", vec![("other", 5.0), ("only", 5.0)]),
    ] {
        for (rank, (doc, score)) in docs.iter().enumerate() {
            lines.push_str(&format!("{query} Q0 {doc} {} {score} test\n", rank + 1));
        }
    }
    std::fs::write(&run, lines).unwrap();
    assert_eq!(assert_agrees_per_query(&qrels, &run), 5);
}
