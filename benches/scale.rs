//! Collections at scale: what a write costs, and how searches fare, as a collection grows.
//!
//! `benches/scale.sh MODEL_DIR [SIZES...]` makes the inputs and runs this. `cargo bench -p
//! cloze-benches --bench scale -- MODEL_DIR INPUTS SIZE...` reads, from the folder INPUTS,
//! `passages.jsonl` (`{"_id", "text"}`) with `passages.vectors.jsonl` (their `cloze embed`
//! vectors, line for line) and `queries.jsonl` with `queries.vectors.jsonl`. For each SIZE it
//! runs the release `cloze serve` on a fresh data folder, creates a collection with MODEL_DIR
//! and, over HTTP:
//! - loads the first SIZE passages with their own vectors in `_bulk` requests of 1,000
//!   (ingest documents/s: acknowledged documents over the time to acknowledge them all), then
//!   waits until the background merges have left one segment (the time that took, too);
//! - reads the server's resident memory (now, and its peak) and the data folder's bytes;
//! - opens the collection in this process, as the server holds it, and measures recall@10
//!   against exact search and queries/s at the collection's default ef_search and at a grid of
//!   ef, one query after another on one thread, five times (the median); hnswlib
//!   (`vector_search_hnswlib.py`) builds its graph of the same vectors with the same settings
//!   and answers the same queries at the same grid, alternating with Cloze; each side's
//!   queries/s at recall@10 0.95 (and at Cloze's default recall) is interpolated on its grid;
//! - times 100 `_bulk` requests of 10 new documents without vectors (the server embeds them):
//!   p50 and p99;
//! - at the largest size, with `CLOZE_SCALE_STREAM_SECS` (default 600; 0 skips it), measures
//!   hybrid `_search` latency for a fifth of that time with no writes, then for all of it while
//!   10-document bulks with vectors stream in at 100 documents/s: p99 both ways.
//!
//! With `CLOZE_SCALE_REUSE=1`, a size whose collection an earlier run left in
//! `target/scale/runs/SIZE` is measured again as it is, from a server restarted on it, without
//! loading it (no ingest figures): to measure changes to searching and holding a collection
//! without building it again. Documents the earlier run wrote besides the first SIZE passages
//! are deleted first.
//!
//! Results go to `target/bench-results/scale-SIZE.json` and a table on standard output.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cloze_index::DataDir;
use cloze_tests::{median, qps_at_recall, save_bench_result, Peer};
use rayon::prelude::*;
use serde_json::{json, Value};

const K: usize = 10;
const BULK: usize = 1_000;
const SMALL_BULKS: usize = 100;
const REPETITIONS: usize = 5;
const PEER_EF: [usize; 9] = [10, 16, 24, 32, 48, 64, 100, 200, 400];
/// Bounds on waiting for the server: start, and the merges to settle.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const SETTLE_TIMEOUT: Duration = Duration::from_secs(3600);

struct Passage {
    id: String,
    text: String,
    vector: Vec<f32>,
}

fn lines(path: &Path) -> impl Iterator<Item = Value> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    BufReader::new(file).lines().map(|line| serde_json::from_str(&line.unwrap()).unwrap())
}

/// Passages (or queries) with their vectors: `NAME.jsonl` and `NAME.vectors.jsonl`, in step,
/// read a line at a time (the vectors of a million passages are gigabytes of JSON).
fn read_with_vectors(inputs: &Path, name: &str, limit: usize) -> Vec<Passage> {
    let texts = lines(&inputs.join(format!("{name}.jsonl")));
    let vectors = lines(&inputs.join(format!("{name}.vectors.jsonl")));
    texts
        .zip(vectors)
        .take(limit)
        .map(|(text, vector)| {
            let id = text["_id"].as_str().unwrap().to_string();
            assert_eq!(vector["id"].as_str(), Some(id.as_str()), "the vectors are out of step");
            let values = vector["vector"].as_array().expect("a vector");
            Passage {
                id,
                text: text["text"].as_str().unwrap().to_string(),
                vector: values.iter().map(|x| x.as_f64().unwrap() as f32).collect(),
            }
        })
        .collect()
}

struct Server {
    child: Child,
    base: String,
    agent: ureq::Agent,
}

impl Server {
    fn start(data_dir: &Path, log: &Path) -> Server {
        let binary = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/cloze");
        let mut child = Command::new(&binary)
            .env_remove("CLOZE_ADMIN_KEY")
            .env_remove("CLOZE_SEARCH_KEY")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["serve", "--bind", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e} (benches/scale.sh builds it)", binary.display()));
        let (sender, receiver) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = sender.send(line);
        });
        let line = receiver.recv_timeout(START_TIMEOUT).expect("the server did not start");
        let base = line.trim().strip_prefix("listening on ").expect("an address").to_string();
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(600)))
            .build();
        Server { child, base, agent: config.into() }
    }

    fn call(&self, method: &str, path: &str, body: Option<&str>) -> Value {
        let url = format!("{}{path}", self.base);
        let response = match method {
            "GET" => self.agent.get(&url).call(),
            "PUT" => self.agent.put(&url).send(body.unwrap_or("")),
            _ => self.agent.post(&url).send(body.unwrap_or("")),
        };
        let mut response = response.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let text = response.body_mut().with_config().limit(1 << 30).read_to_string().unwrap();
        assert!((200..300).contains(&status), "{method} {path}: {status} {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// Resident memory now and at its peak, in bytes.
    fn memory(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let field = |name: &str| -> u64 {
            let line = status.lines().find(|line| line.starts_with(name)).unwrap();
            line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bulk_body<'a>(passages: impl Iterator<Item = &'a Passage>, with_vectors: bool) -> String {
    passages
        .map(|p| {
            let mut document = json!({"_id": p.id, "text": p.text});
            if with_vectors {
                document["vector"] = json!(p.vector);
            }
            document.to_string() + "\n"
        })
        .collect()
}

fn bytes_under(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| match entry.file_type() {
                    Ok(kind) if kind.is_dir() => bytes_under(&entry.path()),
                    _ => entry.metadata().map_or(0, |m| m.len()),
                })
                .sum()
        })
        .unwrap_or(0)
}

fn percentile(values: &mut [f64], share: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let rank = ((values.len() as f64 * share).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

fn write_f32(path: &Path, vectors: impl Iterator<Item = impl AsRef<[f32]>>) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for vector in vectors {
        for value in vector.as_ref() {
            file.write_all(&value.to_le_bytes()).unwrap();
        }
    }
}

/// Hybrid search latencies (seconds) for `duration`, one query after another.
fn search_latencies(server: &Server, queries: &[Passage], duration: Duration) -> Vec<f64> {
    let started = Instant::now();
    let mut latencies = Vec::new();
    for query in queries.iter().cycle() {
        if started.elapsed() >= duration {
            break;
        }
        // The server takes at most 4,096 bytes of query text (max_query_bytes).
        let words: Vec<&str> = query.text.split_whitespace().take(64).collect();
        let body = json!({"q": words.join(" "), "mode": "hybrid", "k": K}).to_string();
        let asked = Instant::now();
        server.call("POST", "/collections/g/_search", Some(&body));
        latencies.push(asked.elapsed().as_secs_f64());
    }
    latencies
}

fn run(
    model: &Path,
    inputs: &Path,
    size: usize,
    passages: &[Passage],
    queries: &[Passage],
    stream: Duration,
) -> Value {
    let work = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../target/scale/runs/{size}"));
    let data = work.join("index");
    let reuse = std::env::var("CLOZE_SCALE_REUSE").is_ok_and(|v| v == "1")
        && data.join("g").join("manifest.json").is_file();
    if !reuse {
        if work.exists() {
            std::fs::remove_dir_all(&work).unwrap();
        }
        std::fs::create_dir_all(&work).unwrap();
    }
    let server = Server::start(&data, &work.join("server.log"));
    let started = Instant::now();
    let (ingest_seconds, segments_after_load) = if reuse {
        eprintln!("{size}: measuring the collection an earlier run left ...");
        let kept: std::collections::HashSet<&str> =
            passages[..size].iter().map(|p| p.id.as_str()).collect();
        let extra: Vec<String> = DataDir::new(&data)
            .open("g")
            .unwrap()
            .document_ids()
            .unwrap()
            .into_iter()
            .filter(|id| !kept.contains(id.as_str()))
            .collect();
        for chunk in extra.chunks(BULK) {
            let body: String =
                chunk.iter().map(|id| format!("{}\n", json!({"delete": {"_id": id}}))).collect();
            server.call("POST", "/collections/g/_bulk", Some(&body));
        }
        (None, None)
    } else {
        server.call("PUT", "/collections/g", Some(&json!({"model": model}).to_string()));
        eprintln!("{size}: loading {size} passages with their vectors ...");
        for chunk in passages[..size].chunks(BULK) {
            server.call("POST", "/collections/g/_bulk", Some(&bulk_body(chunk.iter(), true)));
        }
        let ingest_seconds = started.elapsed().as_secs_f64();
        (Some(ingest_seconds), server.call("GET", "/collections/g", None)["segments"].as_u64())
    };
    let mut described;
    loop {
        described = server.call("GET", "/collections/g", None);
        if described["segments"] == 1 || started.elapsed() > SETTLE_TIMEOUT {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let settled_seconds = started.elapsed().as_secs_f64();
    assert_eq!(described["documents"], size, "{described}");
    let (rss, peak_rss) = server.memory();
    let disk = bytes_under(&data);
    eprintln!(
        "{size}: {:.0} documents/s acknowledged, one segment after {settled_seconds:.0} s; RSS {} MB",
        ingest_seconds.map_or(f64::NAN, |seconds| size as f64 / seconds),
        rss >> 20
    );

    // Vector search, on the collection as the server wrote it.
    let collection = DataDir::new(&data).open("g").unwrap();
    let query_vectors: Vec<&[f32]> = queries.iter().map(|q| q.vector.as_slice()).collect();
    let truth: Vec<Vec<String>> = query_vectors
        .par_iter()
        .map(|q| collection.exact_nearest(q, K).unwrap().into_iter().map(|n| n.id).collect())
        .collect();
    let recall = |found: &[Vec<String>]| -> f64 {
        let hits: usize = found
            .iter()
            .zip(&truth)
            .map(|(found, truth)| found.iter().filter(|id| truth.contains(id)).count())
            .sum();
        hits as f64 / (truth.len() * K) as f64
    };
    let peer_dir = work.join("hnswlib");
    std::fs::create_dir_all(&peer_dir).unwrap();
    write_f32(&peer_dir.join("vectors.f32"), passages[..size].iter().map(|p| &p.vector));
    write_f32(&peer_dir.join("queries.f32"), query_vectors.iter());
    let row: std::collections::HashMap<&str, usize> =
        passages[..size].iter().enumerate().map(|(i, p)| (p.id.as_str(), i)).collect();
    let truth_rows: Vec<Vec<usize>> =
        truth.iter().map(|ids| ids.iter().map(|id| row[id.as_str()]).collect()).collect();
    let hnsw = collection.manifest().semantic.as_ref().unwrap().hnsw;
    let request = json!({"dimension": query_vectors[0].len(), "m": hnsw.m,
        "ef_construction": hnsw.ef_construction, "k": K, "build_threads": 2, "truth": truth_rows});
    std::fs::write(peer_dir.join("request.json"), request.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("vector_search_hnswlib.py");
    eprintln!("{size}: hnswlib builds its graph ...");
    let mut peer = Peer::spawn(&script, &[peer_dir.as_os_str()]);
    let peer_build = peer.read()["build_seconds"].as_f64().unwrap();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    // Each side's seconds per repetition and recall, at the collection's default ef_search
    // (None) and at each ef of the grid.
    let our_efs: Vec<Option<usize>> = std::iter::once(None).chain(PEER_EF.map(Some)).collect();
    let mut our_seconds = vec![Vec::new(); our_efs.len()];
    let mut our_recall = vec![0.0; our_efs.len()];
    let mut peer_seconds = vec![Vec::new(); PEER_EF.len()];
    let mut peer_recall = vec![0.0; PEER_EF.len()];
    for _ in 0..REPETITIONS {
        for (i, &ef) in our_efs.iter().enumerate() {
            let asked = Instant::now();
            let found: Vec<Vec<String>> = pool.install(|| {
                query_vectors
                    .iter()
                    .map(|q| {
                        let found = collection.nearest(q, K, ef, None).unwrap();
                        found.into_iter().map(|n| n.id).collect()
                    })
                    .collect()
            });
            our_seconds[i].push(asked.elapsed().as_secs_f64());
            our_recall[i] = recall(&found);
        }
        for (i, ef) in PEER_EF.iter().enumerate() {
            let answer = peer.ask(&ef.to_string());
            peer_seconds[i].push(answer["seconds"].as_f64().unwrap());
            peer_recall[i] = answer["recall"].as_f64().unwrap();
        }
    }
    peer.finish();
    drop(collection);
    let qps = |seconds: &mut Vec<f64>| queries.len() as f64 / median(seconds);
    let (default_recall, default_qps) = (our_recall[0], qps(&mut our_seconds[0]));
    let our_curve: Vec<(usize, f64, f64)> = PEER_EF
        .iter()
        .zip(our_seconds[1..].iter_mut().zip(&our_recall[1..]))
        .map(|(&ef, (seconds, &recall))| (ef, recall, qps(seconds)))
        .collect();
    let peer_curve: Vec<(usize, f64, f64)> = PEER_EF
        .iter()
        .zip(peer_seconds.iter_mut().zip(&peer_recall))
        .map(|(&ef, (seconds, &recall))| (ef, recall, qps(seconds)))
        .collect();
    let point = |p: Option<(usize, f64, f64)>| {
        p.map(|(ef, recall, qps)| json!({"ef": ef, "recall": recall, "qps": qps}))
    };
    let at = |target: f64| {
        let (ours, peer) = (qps_at_recall(&our_curve, target), qps_at_recall(&peer_curve, target));
        let ratio = ours.zip(peer).map(|(a, b)| a.2 / b.2);
        json!({"recall": target, "cloze": point(ours), "hnswlib": point(peer), "qps_ratio": ratio})
    };
    let at_default = at(default_recall);
    let at_95 = at(0.95);
    eprintln!(
        "{size}: default ef recall@10 {default_recall:.4} at {default_qps:.0} q/s; at recall \
         0.95 Cloze {} hnswlib {} (ratio {})",
        at_95["cloze"]["qps"], at_95["hnswlib"]["qps"], at_95["qps_ratio"]
    );

    // Small writes that the server embeds, while it holds the whole collection.
    let mut bulk_seconds = Vec::new();
    for request in 0..SMALL_BULKS {
        let documents: Vec<Passage> = (0..10)
            .map(|i| {
                let query = &queries[(request * 10 + i) % queries.len()];
                Passage {
                    id: format!("e{request}-{i}"),
                    text: query.text.clone(),
                    vector: Vec::new(),
                }
            })
            .collect();
        let body = bulk_body(documents.iter(), false);
        let asked = Instant::now();
        server.call("POST", "/collections/g/_bulk", Some(&body));
        bulk_seconds.push(asked.elapsed().as_secs_f64());
    }
    let bulk_p50 = percentile(&mut bulk_seconds.clone(), 0.5);
    let bulk_p99 = percentile(&mut bulk_seconds, 0.99);
    eprintln!(
        "{size}: 10-document _bulk with embedding p50 {:.1} ms, p99 {:.1} ms",
        bulk_p50 * 1e3,
        bulk_p99 * 1e3
    );

    let streaming = (!stream.is_zero()).then(|| {
        eprintln!("{size}: hybrid searches, {:?} without writes, then {stream:?} with 100 documents/s ...", stream / 5);
        let mut quiet = search_latencies(&server, queries, stream / 5);
        let writing = AtomicBool::new(true);
        let extra = &passages[size..];
        let (mut busy, written) = std::thread::scope(|scope| {
            let writer = scope.spawn(|| {
                let started = Instant::now();
                let mut written = 0usize;
                for (tick, chunk) in extra.chunks(10).enumerate() {
                    if started.elapsed() >= stream {
                        break;
                    }
                    let due = Duration::from_millis(100 * tick as u64);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                    server.call("POST", "/collections/g/_bulk", Some(&bulk_body(chunk.iter(), true)));
                    written += chunk.len();
                }
                writing.store(false, Ordering::Relaxed);
                written
            });
            let latencies = search_latencies(&server, queries, stream);
            (latencies, writer.join().unwrap())
        });
        let quiet_p99 = percentile(&mut quiet, 0.99);
        let busy_p99 = percentile(&mut busy, 0.99);
        eprintln!(
            "{size}: search p99 {:.1} ms without writes, {:.1} ms while {written} documents streamed in",
            quiet_p99 * 1e3,
            busy_p99 * 1e3
        );
        json!({"seconds": stream.as_secs(), "documents_written": written,
            "write_rate": written as f64 / stream.as_secs_f64(),
            "searches_quiet": quiet.len(), "searches_while_writing": busy.len(),
            "p50_quiet_ms": percentile(&mut quiet, 0.5) * 1e3, "p99_quiet_ms": quiet_p99 * 1e3,
            "p50_writing_ms": percentile(&mut busy, 0.5) * 1e3, "p99_writing_ms": busy_p99 * 1e3,
            "p99_ratio": busy_p99 / quiet_p99})
    });
    let result = json!({
        "bench": "scale", "documents": size, "inputs": inputs, "model": model,
        "reused": reuse,
        "ingest": {"seconds": ingest_seconds,
            "documents_per_second": ingest_seconds.map(|seconds| size as f64 / seconds),
            "segments_when_acknowledged": segments_after_load,
            "seconds_until_one_segment": settled_seconds},
        "memory": {"rss_bytes": rss, "peak_rss_bytes": peak_rss}, "disk_bytes": disk,
        "vector_search": {"ef_search": hnsw.ef_search, "recall_at_10": default_recall,
            "qps": default_qps, "at_default_recall": at_default, "at_recall_0_95": at_95,
            "hnswlib_build_seconds": peer_build},
        "bulk_10_with_embedding": {"requests": SMALL_BULKS, "p50_ms": bulk_p50 * 1e3, "p99_ms": bulk_p99 * 1e3},
        "streaming": streaming,
    });
    save_bench_result(&format!("scale-{size}"), &result);
    drop(server);
    result
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let [model, inputs, sizes @ ..] = &args[..] else {
        panic!("usage: scale MODEL_DIR INPUTS SIZE...");
    };
    let (model, inputs) = (PathBuf::from(model), PathBuf::from(inputs));
    let sizes: Vec<usize> = sizes.iter().map(|s| s.parse().expect("a size")).collect();
    let largest = *sizes.iter().max().expect("at least one size");
    let stream = Duration::from_secs(
        std::env::var("CLOZE_SCALE_STREAM_SECS").map_or(600, |s| s.parse().expect("seconds")),
    );
    // Enough passages for the largest size and the streaming writes after it.
    let passages =
        read_with_vectors(&inputs, "passages", largest + 100 * stream.as_secs() as usize + 10);
    assert!(passages.len() >= largest, "{} passages, fewer than {largest}", passages.len());
    let queries = read_with_vectors(&inputs, "queries", usize::MAX);
    let mut rows = Vec::new();
    for &size in &sizes {
        let stream = if size == largest { stream } else { Duration::ZERO };
        rows.push(run(&model, &inputs, size, &passages, &queries, stream));
    }
    println!(
        "{:>10} {:>12} {:>10} {:>12} {:>12} {:>9} {:>9} {:>8} {:>9} {:>9} {:>7}",
        "documents",
        "ingest d/s",
        "settle s",
        "bulk p50 ms",
        "bulk p99 ms",
        "RSS MB",
        "disk MB",
        "recall",
        "q/s",
        "hnswlib",
        "ratio"
    );
    for row in &rows {
        let vector = &row["vector_search"];
        println!("{:>10} {:>12.0} {:>10.0} {:>12.1} {:>12.1} {:>9} {:>9} {:>8.4} {:>9.0} {:>9.0} {:>9.0} {:>7.2}",
            row["documents"], row["ingest"]["documents_per_second"].as_f64().unwrap_or(f64::NAN),
            row["ingest"]["seconds_until_one_segment"].as_f64().unwrap(),
            row["bulk_10_with_embedding"]["p50_ms"].as_f64().unwrap(),
            row["bulk_10_with_embedding"]["p99_ms"].as_f64().unwrap(),
            row["memory"]["rss_bytes"].as_u64().unwrap() >> 20, row["disk_bytes"].as_u64().unwrap() >> 20,
            vector["recall_at_10"].as_f64().unwrap(), vector["qps"].as_f64().unwrap(),
            vector["at_recall_0_95"]["cloze"]["qps"].as_f64().unwrap_or(f64::NAN),
            vector["at_recall_0_95"]["hnswlib"]["qps"].as_f64().unwrap_or(f64::NAN),
            vector["at_recall_0_95"]["qps_ratio"].as_f64().unwrap_or(f64::NAN));
    }
    if let Some(streaming) = rows.last().map(|row| &row["streaming"]).filter(|s| !s.is_null()) {
        println!("streaming at {largest}: {streaming}");
    }
}
