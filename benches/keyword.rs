//! Keyword indexing rate and query latency on SciFact.
//!
//! `cargo bench -p cloze-benches --bench keyword` (release build). Indexing is timed end to end
//! as `cloze index` does it (read and parse the JSONL, analyse, write, commit) into a fresh
//! collection, several times; queries are every SciFact claim (test and train), timed one by
//! one after a warm-up pass, both as a person searches (top 10 with titles and snippets) and as
//! evaluation does (top 1000 ids). Prints a table and one JSON line; medians throughout.

use std::time::Instant;

use cloze_corpus::{read_queries, DocumentReader, FieldMapping};
use cloze_index::{AnalyzerSettings, DataDir};
use cloze_search::{search, Mode, SearchRequest};
use cloze_tests::{beir_collection, median};

const INDEX_REPETITIONS: usize = 5;
const QUERY_PASSES: usize = 3;

fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    let index = ((sorted.len() - 1) as f64 * fraction).round() as usize;
    sorted[index]
}

fn main() {
    let scifact = beir_collection("scifact");
    let corpus = &scifact.corpus;

    let mut rates = Vec::new();
    let mut documents = 0;
    for _ in 0..INDEX_REPETITIONS {
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let mut collection =
            DataDir::new(dir.path()).create("scifact", AnalyzerSettings::default(), None).unwrap();
        let reader = DocumentReader::open(corpus, FieldMapping::default()).unwrap();
        documents = collection.ingest(reader, || {}).unwrap().ingested;
        rates.push(documents as f64 / started.elapsed().as_secs_f64());
    }
    let index_rate = median(&mut rates);

    let dir = tempfile::tempdir().unwrap();
    let mut collection =
        DataDir::new(dir.path()).create("scifact", AnalyzerSettings::default(), None).unwrap();
    collection
        .ingest(DocumentReader::open(corpus, FieldMapping::default()).unwrap(), || {})
        .unwrap();
    let queries = read_queries(&scifact.queries).unwrap();

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
        (percentile(&micros, 0.5), percentile(&micros, 0.99))
    };
    let (top10_median, top10_p99) = latency(10, true);
    let (top1000_median, top1000_p99) = latency(1000, false);

    println!("SciFact: {documents} documents, {} queries", queries.len());
    println!("indexing (median of {INDEX_REPETITIONS})          {index_rate:>10.0} documents/s");
    println!(
        "query, top 10 with snippets     median {top10_median:>8.0} µs   p99 {top10_p99:>8.0} µs"
    );
    println!("query, top 1000 ids             median {top1000_median:>8.0} µs   p99 {top1000_p99:>8.0} µs");
    println!(
        "{}",
        serde_json::json!({
            "bench": "keyword",
            "collection": "scifact",
            "documents": documents,
            "queries": queries.len(),
            "index_documents_per_second_median": index_rate,
            "top10_snippets_latency_us": {"median": top10_median, "p99": top10_p99},
            "top1000_ids_latency_us": {"median": top1000_median, "p99": top1000_p99},
        })
    );
}
