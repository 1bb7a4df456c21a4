//! Vector search against hnswlib, on the same vectors with the same graph settings.
//!
//! `benches/vector_search.sh MODEL_DIR scifact|gutenberg` makes the vectors and runs this.
//! `CLOZE_PEER_PYTHON=PYTHON cargo bench -p cloze-benches --bench vector_search -- VECTORS
//! QUERIES LABEL` reads two files of `cloze embed` output (`{"id", "vector"}` lines): the
//! vectors to index and the query vectors. In one run it:
//! - takes every query's exact top 10 (each vector compared);
//! - builds Cloze's vector index (hnsw_rs, M 16, ef_construction 200, both cores), timed;
//! - has hnswlib (`vector_search_hnswlib.py`) build its graph with the same vectors and settings;
//! - then, five times over, for each ef_search, has each side in turn answer every query one
//!   after another on one thread, and scores recall@10 against the exact top 10 (queries/s is
//!   the median of the five).
//!
//! It prints, for each side, the build time and the queries/s at recall@10 0.95 and 0.99
//! (interpolated between the ef_search values around it), with the ratio (Cloze / hnswlib),
//! and writes all of it
//! to `target/bench-results/vector-search-LABEL.json`. The Python side needs `numpy` and
//! `hnswlib`: set `CLOZE_PEER_PYTHON` to an interpreter that has them (default `python3`).

use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::path::Path;
use std::time::Instant;

use cloze_index::{HnswSettings, VectorIndex};
use cloze_tests::{median, qps_at_recall as at_recall};
use rayon::prelude::*;
use serde_json::{json, Value};

const EF_SEARCH: [usize; 10] = [10, 16, 24, 32, 48, 64, 100, 200, 400, 800];
const K: usize = 10;
const REPETITIONS: usize = 5;
const TARGETS: [f64; 2] = [0.95, 0.99];

fn read_vectors(path: &Path) -> (Vec<String>, Vec<Vec<f32>>) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (mut ids, mut vectors) = (Vec::new(), Vec::new());
    for (number, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.unwrap();
        let value: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{}:{}: {e}", path.display(), number + 1));
        ids.push(value["id"].as_str().expect("an id").to_string());
        let vector = value["vector"].as_array().expect("a vector");
        vectors.push(vector.iter().map(|x| x.as_f64().unwrap() as f32).collect());
    }
    (ids, vectors)
}

fn write_f32(path: &Path, vectors: &[Vec<f32>]) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for value in vectors.iter().flatten() {
        file.write_all(&value.to_le_bytes()).unwrap();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let [vectors_file, queries_file, label] = &args[..] else {
        panic!("usage: vector_search VECTORS.jsonl QUERIES.jsonl LABEL");
    };
    let (ids, vectors) = read_vectors(Path::new(vectors_file));
    let (_, queries) = read_vectors(Path::new(queries_file));
    let dimension = vectors[0].len();
    let settings = HnswSettings::default();
    eprintln!("{label}: {} vectors of {dimension}, {} queries", vectors.len(), queries.len());

    let started = Instant::now();
    let mut index = VectorIndex::empty(dimension, settings);
    index.insert(ids.iter().cloned().zip(vectors.iter().map(|v| vec![v.clone()])).collect());
    index.build_graph().expect("an index in memory builds");
    let build_seconds = started.elapsed().as_secs_f64();
    eprintln!("Cloze built its graph in {build_seconds:.1} s; exact search for the truth ...");

    let truth: Vec<Vec<String>> = queries
        .par_iter()
        .map(|q| index.exact_nearest(q, K).into_iter().map(|n| n.id).collect())
        .collect();
    let recall = |found: &[Vec<String>]| {
        let hits: usize = found
            .iter()
            .zip(&truth)
            .map(|(found, truth)| {
                let truth: HashSet<&String> = truth.iter().collect();
                found.iter().filter(|id| truth.contains(id)).count()
            })
            .sum();
        hits as f64 / (truth.len() * K) as f64
    };

    eprintln!("hnswlib builds its graph ...");
    let work = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/vector-search").join(label);
    std::fs::create_dir_all(&work).unwrap();
    write_f32(&work.join("vectors.f32"), &vectors);
    write_f32(&work.join("queries.f32"), &queries);
    let position: std::collections::HashMap<&str, usize> =
        ids.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
    let truth_rows: Vec<Vec<usize>> =
        truth.iter().map(|row| row.iter().map(|id| position[id.as_str()]).collect()).collect();
    let request = json!({
        "dimension": dimension, "m": settings.m, "ef_construction": settings.ef_construction,
        "k": K, "build_threads": 2, "truth": truth_rows,
    });
    std::fs::write(work.join("request.json"), request.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("vector_search_hnswlib.py");
    let mut peer = cloze_tests::Peer::spawn(&script, &[work.as_os_str()]);
    let built = peer.read();
    let peer_build = built["build_seconds"].as_f64().unwrap();

    // The two sides take turns at each ef_search, repetition after repetition, so a slow
    // spell of this machine falls on both. One thread, as a service answers one query per
    // worker.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    // Per ef_search: each side's seconds per repetition, and its recall (the same every time).
    let (mut our_seconds, mut peer_seconds) =
        (vec![Vec::new(); EF_SEARCH.len()], vec![Vec::new(); EF_SEARCH.len()]);
    let (mut our_recall, mut peer_recall) =
        (vec![0.0; EF_SEARCH.len()], vec![0.0; EF_SEARCH.len()]);
    for _ in 0..REPETITIONS {
        for (i, &ef) in EF_SEARCH.iter().enumerate() {
            let started = Instant::now();
            let found = pool.install(|| {
                queries
                    .iter()
                    .map(|q| index.nearest(q, K, ef, None).into_iter().map(|n| n.id).collect())
                    .collect::<Vec<Vec<String>>>()
            });
            our_seconds[i].push(started.elapsed().as_secs_f64());
            our_recall[i] = recall(&found);
            let answer = peer.ask(&ef.to_string());
            peer_seconds[i].push(answer["seconds"].as_f64().unwrap());
            peer_recall[i] = answer["recall"].as_f64().unwrap();
        }
    }
    peer.finish();
    // (ef_search, recall, queries/s of the median repetition) for one side.
    let curve = |seconds: &mut [Vec<f64>], recalls: &[f64]| -> Vec<(usize, f64, f64)> {
        EF_SEARCH
            .iter()
            .zip(seconds.iter_mut().zip(recalls))
            .map(|(&ef, (times, &recall))| (ef, recall, queries.len() as f64 / median(times)))
            .collect()
    };
    let ours = curve(&mut our_seconds, &our_recall);
    let peer_curve = curve(&mut peer_seconds, &peer_recall);

    println!(
        "Vector search, {label}: {} vectors of {dimension}, {} queries",
        ids.len(),
        queries.len()
    );
    println!(
        "{:>10} {:>14} {:>10} {:>14} {:>10}",
        "ef", "Cloze recall", "q/s", "hnswlib recall", "q/s"
    );
    for (a, b) in ours.iter().zip(&peer_curve) {
        println!("{:>10} {:>14.4} {:>10.0} {:>14.4} {:>10.0}", a.0, a.1, a.2, b.1, b.2);
    }
    println!("build seconds: Cloze {build_seconds:.2}, hnswlib {peer_build:.2}");
    let mut summary = Vec::new();
    for target in TARGETS {
        let (a, b) = (at_recall(&ours, target), at_recall(&peer_curve, target));
        let ratio = match (a, b) {
            (Some(a), Some(b)) => Some(a.2 / b.2),
            _ => None,
        };
        println!(
            "recall@10 >= {target}: Cloze {a:?}, hnswlib {b:?} (ef, recall, q/s); q/s ratio {}",
            ratio.map_or("n/a".to_string(), |r| format!("{r:.2}"))
        );
        summary.push(json!({
            "recall_target": target,
            "cloze": a.map(|(ef, recall, qps)| json!({"ef": ef, "recall": recall, "qps": qps})),
            "hnswlib": b.map(|(ef, recall, qps)| json!({"ef": ef, "recall": recall, "qps": qps})),
            "qps_ratio": ratio,
        }));
    }
    let result = json!({
        "bench": "vector_search", "label": label, "vectors": ids.len(), "dimension": dimension,
        "queries": queries.len(), "m": settings.m, "ef_construction": settings.ef_construction,
        "build_seconds": {"cloze": build_seconds, "hnswlib": peer_build,
                          "speed_ratio": peer_build / build_seconds},
        "curve": {
            "cloze": ours.iter().map(|&(ef, recall, qps)| json!({"ef": ef, "recall": recall, "qps": qps})).collect::<Vec<_>>(),
            "hnswlib": peer_curve.iter().map(|&(ef, recall, qps)| json!({"ef": ef, "recall": recall, "qps": qps})).collect::<Vec<_>>(),
        },
        "at_recall": summary,
        "hnswlib_version": built["version"],
    });
    cloze_tests::save_bench_result(&format!("vector-search-{label}"), &result);
}
