//! A bounded soak of `cloze serve`: searches in every mode and a stream of bulk writes (adds,
//! replacements, deletes over a fixed pool of ids, so the collection stays the same size) run
//! together on loopback. No request may fail, and the server's heap must stay flat.
//!
//! `CLOZE_SOAK_SECS` sets the length (default 45 s); the figures go to standard error and to
//! `target/bench-results/soak.json`. A longer run of the release build:
//! `CLOZE_SOAK_SECS=600 cargo test --release -p cloze --test soak -- --nocapture`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

mod common;
use common::{model, scifact_lines, Server};

const POOL: usize = 500;
const SEARCHERS: usize = 3;

/// The server's anonymous (heap) memory in KiB: file-backed pages (the mmapped index) come and
/// go with the page cache and say nothing about leaks.
fn heap_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("RssAnon:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("RssAnon in /proc/PID/status")
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn mixed_search_and_ingest_for_a_while_fails_nothing_and_keeps_memory_flat() {
    let seconds: u64 =
        std::env::var("CLOZE_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(45);
    let work = tempfile::tempdir().unwrap();
    let model = model(work.path());
    let server = Server::start(&work.path().join("index"), &[]);
    server.ok("PUT", "/collections/sf", Some(&json!({"model": model}).to_string()));
    let (corpus, _) = scifact_lines(0..POOL);
    let lines: Vec<&str> = corpus.lines().collect();
    server.ok("POST", "/collections/sf/_bulk", Some(&corpus));
    let queries = ["vitamin d", "cancer cells", "protein binding", "gene expression in mice"];

    let pid = server.child.id();
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let (searches, writes, heap) = std::thread::scope(|scope| {
        let searchers: Vec<_> = (0..SEARCHERS)
            .map(|i| {
                let (server, stop) = (&server, &stop);
                scope.spawn(move || {
                    let mut latencies = Vec::new();
                    let modes = ["keyword", "semantic", "hybrid"];
                    while !stop.load(Ordering::Relaxed) {
                        let n = latencies.len() + i;
                        let body =
                            json!({"q": queries[n % queries.len()], "mode": modes[n % 3], "k": 10});
                        let sent = Instant::now();
                        let (status, answer) =
                            server.call("POST", "/collections/sf/_search", Some(&body.to_string()));
                        assert_eq!(status, 200, "search {body}: {answer}");
                        latencies.push(sent.elapsed().as_secs_f64() * 1e3);
                    }
                    latencies
                })
            })
            .collect();
        let writer = scope.spawn(|| {
            let mut rng = ChaCha8Rng::seed_from_u64(5);
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                // 20 replacements and 5 deletes of the pool, then the deleted ones come back.
                let chosen: Vec<usize> = (0..25).map(|_| rng.random_range(0..POOL)).collect();
                let mut body: String =
                    chosen[..20].iter().map(|&i| format!("{}\n", lines[i])).collect();
                for &i in &chosen[20..] {
                    let id = serde_json::from_str::<Value>(lines[i]).unwrap()["_id"].clone();
                    body.push_str(&format!("{}\n", json!({"delete": {"_id": id}})));
                }
                let sent = Instant::now();
                let (status, answer) = server.call("POST", "/collections/sf/_bulk", Some(&body));
                assert_eq!(status, 200, "bulk: {answer}");
                let restore: String =
                    chosen[20..].iter().map(|&i| format!("{}\n", lines[i])).collect();
                server.ok("POST", "/collections/sf/_bulk", Some(&restore));
                latencies.push(sent.elapsed().as_secs_f64() * 1e3);
            }
            latencies
        });
        let mut heap = Vec::new();
        while Instant::now() < deadline {
            heap.push(heap_kib(pid) as f64 / 1024.0);
            std::thread::sleep(Duration::from_millis(500));
        }
        stop.store(true, Ordering::Relaxed);
        let searches: Vec<f64> = searchers.into_iter().flat_map(|s| s.join().unwrap()).collect();
        (searches, writer.join().unwrap(), heap)
    });
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(server.ok("GET", "/collections/sf", None)["documents"], POOL);

    // Flat: the heap in the last quarter of the run is not above the second quarter's, beyond
    // noise (allocator caches, the graph's compaction) of 25% or 16 MiB, whichever is more.
    let quarter = heap.len() / 4;
    let settled = median(&mut heap[quarter..2 * quarter].to_vec());
    let end = median(&mut heap[3 * quarter..].to_vec());
    let (mut searches, mut writes) = (searches, writes);
    let figures = json!({
        "seconds": elapsed,
        "searches": searches.len(),
        "searches_per_s": searches.len() as f64 / elapsed,
        "search_p50_ms": percentile(&mut searches, 0.5),
        "search_p99_ms": percentile(&mut searches, 0.99),
        "write_rounds": writes.len(),
        "bulk_p50_ms": percentile(&mut writes, 0.5),
        "bulk_p99_ms": percentile(&mut writes, 0.99),
        "heap_mib_second_quarter": settled,
        "heap_mib_last_quarter": end,
        "heap_mib_max": heap.iter().copied().fold(0.0, f64::max),
        // Every tenth sample (5 s apart), to see the shape of the curve.
        "heap_mib_every_5s": heap.iter().step_by(10).map(|mib| mib.round()).collect::<Vec<_>>(),
        "errors": 0,
    });
    eprintln!("soak: {figures}");
    cloze_tests::save_bench_result("soak", &figures);
    assert!(
        searches.len() > 100 && writes.len() > 10,
        "too little load to show anything: {figures}"
    );
    assert!(end <= (settled * 1.25).max(settled + 16.0), "the heap grew: {figures}");
    server.stop();
}
