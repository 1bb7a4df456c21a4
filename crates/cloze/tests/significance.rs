//! `cloze eval`'s comparisons agree with reference implementations on real runs: the paired
//! t-test with scipy's `ttest_rel` to 1e-6, and the paired randomization test with a numpy one
//! within sampling error. The runs are BM25 with the English analyzer against BM25 with the
//! standard one (no stemming, no stop words) on three shared collections. Also checks the
//! report's files. Needs `python3` with numpy and scipy (`tests/install-deps.sh`).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use cloze_tests::beir_collection;
use serde_json::{json, Value};

fn cloze(data_dir: &Path, args: &[&str]) -> Vec<u8> {
    let output = Command::new(env!("CARGO_BIN_EXE_cloze"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "cloze {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    output.stdout
}

/// scipy's and numpy's p-values for each pair of per-query scores.
fn reference(pairs: &Value) -> Vec<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/significance_reference.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child.stdin.take().unwrap().write_all(pairs.to_string().as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the reference failed (pip install numpy scipy): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Per-query values of `metric` for each run, from the report's per_query.csv.
fn per_query(csv: &str, metric: &str) -> std::collections::BTreeMap<String, Vec<f64>> {
    let mut runs: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for line in csv.lines().skip(1) {
        // query,run,metric,value,difference,text: the first five are never multi-line.
        let fields: Vec<&str> = line.splitn(6, ',').collect();
        if fields[2] == metric {
            runs.entry(fields[1].trim_matches('"').to_string())
                .or_default()
                .push(fields[3].parse().unwrap());
        }
    }
    runs
}

#[test]
fn p_values_match_scipy_and_a_numpy_randomization_test_on_real_runs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("index");
    let mut pairs = Vec::new();
    let mut ours = Vec::new();
    for name in ["scifact", "cranfield", "npl"] {
        let collection = beir_collection(name);
        let (corpus, queries, qrels) = (
            collection.corpus.to_str().unwrap(),
            collection.queries.to_str().unwrap(),
            collection.test_qrels.to_str().unwrap(),
        );
        let mut runs = Vec::new();
        for analyzer in ["english", "standard"] {
            let collection_name = format!("{name}-{analyzer}");
            cloze(
                &data,
                &[
                    "index",
                    "--collection",
                    &collection_name,
                    "--corpus",
                    corpus,
                    "--analyzer",
                    analyzer,
                ],
            );
            let run = dir.path().join(format!("{name}-{analyzer}.run"));
            cloze(
                &data,
                &[
                    "eval",
                    "--collection",
                    &collection_name,
                    "--queries",
                    queries,
                    "--qrels",
                    qrels,
                    "--run-out",
                    run.to_str().unwrap(),
                ],
            );
            runs.push(run);
        }
        let report = dir.path().join(format!("report-{name}"));
        let compared: Value = serde_json::from_slice(&cloze(
            &data,
            &[
                "eval",
                "--run",
                runs[0].to_str().unwrap(),
                "--run",
                runs[1].to_str().unwrap(),
                "--qrels",
                qrels,
                "--queries",
                queries,
                "--metrics",
                "ndcg@10,recall@100",
                "--json",
                "--report",
                report.to_str().unwrap(),
            ],
        ))
        .unwrap();
        for file in ["report.md", "results.json", "per_query.csv", "metrics.png"] {
            assert!(report.join(file).is_file(), "{file} missing");
        }
        let chart =
            std::fs::read(report.join(format!("difference-{name}-standard_run.png"))).unwrap();
        assert_eq!(&chart[..8], b"\x89PNG\r\n\x1a\n");
        let csv = std::fs::read_to_string(report.join("per_query.csv")).unwrap();
        for (m, metric) in ["ndcg@10", "recall@100"].iter().enumerate() {
            let scores = per_query(&csv, metric);
            let (a, b) =
                (&scores[&format!("{name}-standard.run")], &scores[&format!("{name}-english.run")]);
            pairs.push(json!({"a": a, "b": b}));
            ours.push(compared["runs"][1]["metrics"][m]["versus_baseline"].clone());
        }
    }
    let references = reference(&Value::Array(pairs));
    let mut checked = 0;
    for (ours, reference) in ours.iter().zip(&references) {
        let (t, t_reference) =
            (ours["t_test_p"].as_f64().unwrap(), reference["t_test_p"].as_f64().unwrap());
        assert!((t - t_reference).abs() < 1e-6, "t-test: cloze {t}, scipy {t_reference}");
        // Ours uses 10,000 trials: allow four of its standard errors.
        let (r, r_reference) = (
            ours["randomization_p"].as_f64().unwrap(),
            reference["randomization_p"].as_f64().unwrap(),
        );
        let tolerance = 4.0 * (r_reference * (1.0 - r_reference) / 10_000.0).sqrt() + 2e-4;
        assert!(
            (r - r_reference).abs() < tolerance,
            "randomization: cloze {r}, numpy {r_reference}"
        );
        checked += 1;
    }
    assert_eq!(checked, 6);
    // The collections were chosen so that the pairs are not all trivially significant.
    assert!(ours.iter().any(|v| v["t_test_p"].as_f64().unwrap() > 0.01), "{ours:?}");
}
