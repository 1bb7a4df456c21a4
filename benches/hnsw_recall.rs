//! HNSW recall against exact search, by ef_search, on a collection indexed with a model.
//!
//! `cargo bench -p cloze-benches --bench hnsw_recall -- DATA_DIR COLLECTION QUERIES_JSONL`
//! embeds every query with the collection's model, takes the exact top 10 (every vector
//! compared) and, for each ef_search, the HNSW top 10, and prints recall@10 (the share of the
//! exact top 10 that HNSW returns) with the median search time of both. One JSON line follows.

use std::path::Path;
use std::time::Instant;

use cloze_index::DataDir;
use cloze_tests::median;

const EF_SEARCH: [usize; 7] = [10, 20, 40, 64, 100, 200, 400];
const K: usize = 10;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let [data_dir, name, queries] = &args[..] else {
        panic!("usage: hnsw_recall DATA_DIR COLLECTION QUERIES_JSONL");
    };
    let collection = DataDir::new(data_dir).open(name).unwrap();
    let queries = cloze_corpus::read_queries(Path::new(queries)).unwrap();
    let texts: Vec<&str> = queries.iter().map(|q| q.text.as_str()).collect();
    let vectors = collection.encoder().unwrap().encode(&texts).unwrap();
    let default_ef = collection.manifest().semantic.as_ref().unwrap().hnsw.ef_search;

    let mut exact_times = Vec::new();
    let exact: Vec<Vec<String>> = vectors
        .iter()
        .map(|v| {
            let started = Instant::now();
            let ids = collection.exact_nearest(v, K).unwrap().into_iter().map(|n| n.id).collect();
            exact_times.push(started.elapsed().as_secs_f64() * 1e3);
            ids
        })
        .collect();
    println!(
        "{name}: {} vectors, {} queries; exact search {:.3} ms median",
        collection.vector_count(),
        vectors.len(),
        median(&mut exact_times)
    );
    println!("{:>9}  {:>9}  {:>9}", "ef_search", "recall@10", "ms");
    let mut rows = Vec::new();
    for ef in EF_SEARCH {
        let (mut found, mut wanted, mut times) = (0, 0, Vec::new());
        for (vector, exact) in vectors.iter().zip(&exact) {
            let started = Instant::now();
            let hits = collection.nearest(vector, K, Some(ef), None).unwrap();
            times.push(started.elapsed().as_secs_f64() * 1e3);
            found += hits.iter().filter(|n| exact.contains(&n.id)).count();
            wanted += exact.len();
        }
        let recall = found as f64 / wanted as f64;
        let ms = median(&mut times);
        let mark = if ef == default_ef { "  (default)" } else { "" };
        println!("{ef:>9}  {recall:>9.4}  {ms:>9.3}{mark}");
        rows.push(serde_json::json!({"ef_search": ef, "recall_at_10": recall, "median_ms": ms}));
    }
    println!(
        "{}",
        serde_json::json!({"collection": name, "vectors": collection.vector_count(),
            "queries": vectors.len(), "exact_median_ms": median(&mut exact_times),
            "default_ef_search": default_ef, "rows": rows})
    );
}
