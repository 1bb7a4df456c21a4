//! Keyword indexing rate and query latency, against bm25s, on SciFact and NPL.
//!
//! `CLOZE_PEER_PYTHON=PYTHON cargo bench -p cloze-benches --bench keyword [-- COLLECTION...]`
//! (release build; default collections: scifact npl). Indexing is timed end to end as `cloze
//! index` does it (read and parse the JSONL, analyse, write, commit) into a fresh collection,
//! several times; queries are every query of the collection, timed one by one after a warm-up
//! pass: top 10 ids (what bm25s answers), top 10 with titles and snippets (as a person
//! searches) and top 1000 ids (as evaluation does). bm25s (`keyword_bm25s.py`, with the same
//! stop words, stemmer and BM25 parameters) indexes the same documents in memory and answers
//! the same queries one by one. Prints a table per collection and saves the results with the
//! ratios (Cloze / bm25s: indexing rate, and median latency as bm25s's over ours, so above 1 is
//! faster) to `target/bench-results/keyword-COLLECTION.json`. The Python side needs `bm25s`
//! and `PyStemmer` (default interpreter `python3`).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use cloze_corpus::{read_queries, DocumentReader, FieldMapping};
use cloze_index::{AnalyzerSettings, DataDir};
use cloze_search::{search, Mode, SearchRequest};
use cloze_tests::{beir_collection, median, save_bench_result};
use serde_json::{json, Value};

const INDEX_REPETITIONS: usize = 5;
const QUERY_PASSES: usize = 3;

fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    let index = ((sorted.len() - 1) as f64 * fraction).round() as usize;
    sorted[index]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let names = if args.is_empty() { vec!["scifact".to_string(), "npl".to_string()] } else { args };
    for name in names {
        bench(Box::leak(name.into_boxed_str()));
    }
}

fn bench(name: &'static str) {
    let beir = beir_collection(name);
    let corpus = &beir.corpus;

    let mut rates = Vec::new();
    let mut documents = 0;
    for _ in 0..INDEX_REPETITIONS {
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let mut collection =
            DataDir::new(dir.path()).create(name, AnalyzerSettings::default(), None).unwrap();
        let reader = DocumentReader::open(corpus, FieldMapping::default()).unwrap();
        documents = collection.ingest(reader, |_| {}).unwrap().ingested;
        rates.push(documents as f64 / started.elapsed().as_secs_f64());
    }
    let index_rate = median(&mut rates);

    let dir = tempfile::tempdir().unwrap();
    let mut collection =
        DataDir::new(dir.path()).create(name, AnalyzerSettings::default(), None).unwrap();
    collection
        .ingest(DocumentReader::open(corpus, FieldMapping::default()).unwrap(), |_| {})
        .unwrap();
    let queries = read_queries(&beir.queries).unwrap();

    let latency = |limit: usize, with_documents: bool| {
        let mut micros = Vec::new();
        for pass in 0..=QUERY_PASSES {
            for query in &queries {
                let mut request = SearchRequest::new(query.text.as_str(), Mode::Keyword, limit);
                request.with_documents = with_documents;
                let started = Instant::now();
                let hits = search(&collection, &request).unwrap();
                let elapsed = started.elapsed().as_secs_f64() * 1e6;
                std::hint::black_box(hits);
                if pass > 0 {
                    micros.push(elapsed);
                }
            }
        }
        micros.sort_by(f64::total_cmp);
        json!({"median": percentile(&micros, 0.5), "p99": percentile(&micros, 0.99)})
    };
    let top10_ids = latency(10, false);
    let top10_snippets = latency(10, true);
    let top1000_ids = latency(1000, false);

    let python = cloze_tests::peer_python();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("keyword_bm25s.py");
    let output = Command::new(&python)
        .arg(&script)
        .arg(corpus)
        .arg(&beir.queries)
        .arg(INDEX_REPETITIONS.to_string())
        .arg(QUERY_PASSES.to_string())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let peer: Value = serde_json::from_slice(&output.stdout).unwrap();
    let peer_rate = peer["index_documents_per_second_median"].as_f64().unwrap();
    let peer_median = peer["top10_ids_latency_us"]["median"].as_f64().unwrap();
    let ours_median = top10_ids["median"].as_f64().unwrap();

    println!("{name}: {documents} documents, {} queries", queries.len());
    println!("{:<36} {:>14} {:>14}", "", "Cloze", "bm25s");
    println!("{:<36} {:>14.0} {:>14.0}", "indexing, documents/s (median)", index_rate, peer_rate);
    let row = |label: &str, ours: &Value, peer: Option<&Value>| {
        let cell = |v: Option<&Value>, key: &str| {
            v.and_then(|v| v[key].as_f64()).map_or("-".to_string(), |x| format!("{x:.0}"))
        };
        println!(
            "{label:<36} {:>6} / {:>5} {:>6} / {:>5}",
            cell(Some(ours), "median"),
            cell(Some(ours), "p99"),
            cell(peer, "median"),
            cell(peer, "p99")
        );
    };
    println!("query latency, µs (median / p99):");
    row("  top 10 ids", &top10_ids, Some(&peer["top10_ids_latency_us"]));
    row("  top 10 with snippets", &top10_snippets, None);
    row("  top 1000 ids", &top1000_ids, None);
    save_bench_result(
        &format!("keyword-{name}"),
        &json!({
            "bench": "keyword",
            "collection": name,
            "documents": documents,
            "queries": queries.len(),
            "cloze": {
                "index_documents_per_second_median": index_rate,
                "top10_ids_latency_us": top10_ids,
                "top10_snippets_latency_us": top10_snippets,
                "top1000_ids_latency_us": top1000_ids,
            },
            "bm25s": peer,
            "index_rate_ratio": index_rate / peer_rate,
            "latency_speed_ratio": peer_median / ours_median,
        }),
    );
}
